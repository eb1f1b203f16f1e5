#include "turnout/pricing.hpp"

#include <algorithm>
#include <limits>
#include <string>

namespace turnout {
namespace {

constexpr std::int64_t kMaxTokens = kMaxTokensPerCall;  // the bound normalize_usage enforces
constexpr std::int64_t kInt64Max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kSecondsPerHour = 3600;

/// Usage values can come from callers other than normalize_usage (Python, replays): check the bounds
/// that make the arithmetic below safe.
Result<Ok> check_usage(const Usage& usage) {
  for (const TokenKind& kind : kTokenKinds) {
    const std::int64_t tokens = usage.*kind.tokens;
    if (tokens < 0 || tokens > kMaxTokens) {
      return make_error(ErrorCode::usage_invalid, "usage." + std::string(kind.column) + " (" + std::to_string(tokens) +
                                                      ") is outside 0.." + std::string(kMaxTokensPerCallText));
    }
  }
  return Ok{};
}

/// a × b / c rounded to the nearest integer (halves up), all non-negative; saturates at int64 max.
std::int64_t mul_div_round(UInt128 a, UInt128 b, UInt128 c) {
  UInt128 product = 0;
  if (c == 0 || __builtin_mul_overflow(a, b, &product)) return kInt64Max;
  const UInt128 q = product / c;
  const UInt128 r = product % c;
  const UInt128 rounded = q + (r >= c - r ? 1 : 0);  // r ≥ c/2 without overflowing 2r
  return rounded > static_cast<UInt128>(kInt64Max) ? kInt64Max : static_cast<std::int64_t>(rounded);
}

}  // namespace

const PriceRates& PriceCatalog::rates_for(std::int64_t input_tokens, ProcessingMode mode) const noexcept {
  // Highest threshold strictly below the prompt size ("> 200k tokens" prices start at 200,001). Does
  // not rely on the tiers being sorted.
  const bool batched = mode == ProcessingMode::batch && batch_rates;
  const PriceRates* rates = batched ? &batch : &base;
  std::int64_t threshold = std::numeric_limits<std::int64_t>::min();
  for (const PriceTier& tier : tiers) {
    if (tier.above_input_tokens < input_tokens && tier.above_input_tokens >= threshold) {
      threshold = tier.above_input_tokens;
      rates = batched ? &tier.batch : &tier.rates;
    }
  }
  return *rates;
}

Result<Money> price_usage(const PriceCatalog& price, const Usage& usage, ProcessingMode mode) {
  if (!price.present) return make_error(ErrorCode::price_missing, "the target has no token price");
  if (auto s = check_usage(usage); !s) return std::move(s).error();
  if (price.batch_discount_pct < 0 || price.batch_discount_pct > 100) {
    return make_error(ErrorCode::invalid_argument,
                      "batch_discount_pct (" + std::to_string(price.batch_discount_pct) + ") is outside 0..100");
  }
  // A provider that says it billed the call at its batch prices (Anthropic's service_tier) is believed.
  if (usage.batch_tier) mode = ProcessingMode::batch;
  const PriceRates& rates = price.rates_for(usage.input_tokens(), mode);
  Int128 total = 0;  // ≤ 6 × 2^31 × int64 max: far inside 128 bits
  for (const TokenKind& kind : kTokenKinds) {
    if (kind.rate == nullptr) continue;  // informative: its tokens are billed as another kind
    const std::int64_t picos = (rates.*kind.rate).picos_per_token();
    if (picos < 0) {
      return make_error(ErrorCode::invalid_argument, "price " + std::string(kind.price) + " is negative");
    }
    total += static_cast<Int128>(usage.*kind.tokens) * picos;
  }
  if (mode == ProcessingMode::batch && !price.batch_rates) {
    total = total * (100 - price.batch_discount_pct) / 100;  // non-negative: truncation rounds down
  }
  if (total > kInt64Max) {
    return make_error(ErrorCode::invalid_argument, "request cost exceeds the per-request Money range");
  }
  return Money::from_picos(static_cast<std::int64_t>(total));
}

Money self_hosted_marginal_cost(const SelfHostedCost& cost, std::int64_t prefill_tokens,
                                std::int64_t cached_prefill_tokens, std::int64_t output_tokens) {
  const std::int64_t prefill_tps = cost.prefill_tokens_per_s;
  const std::int64_t decode_tps = cost.decode_tokens_per_s;
  if (prefill_tps <= 0 || decode_tps <= 0 || cost.gpus_per_replica <= 0 || cost.usd_per_gpu_hour.picos() <= 0) {
    return Money{};
  }
  // `prefill_tokens` is the whole prompt; the part served from the prefix cache skips prefill compute
  // (its cost — KV memory held — is already in the replica's hourly price).
  const std::int64_t prompt = std::clamp<std::int64_t>(prefill_tokens, 0, kMaxTokens);
  const std::int64_t cached = std::clamp<std::int64_t>(cached_prefill_tokens, 0, prompt);
  const std::int64_t output = std::clamp<std::int64_t>(output_tokens, 0, kMaxTokens);

  // replica-seconds = uncached / prefill_tps + output / decode_tps
  //                 = (uncached × decode_tps + output × prefill_tps) / (prefill_tps × decode_tps)
  // cost = replica-seconds × gpus × $/GPU-hour / 3600, rounded to the nearest picodollar.
  const UInt128 seconds_num = static_cast<UInt128>(prompt - cached) * static_cast<UInt128>(decode_tps) +
                              static_cast<UInt128>(output) * static_cast<UInt128>(prefill_tps);
  const UInt128 seconds_den = static_cast<UInt128>(prefill_tps) * static_cast<UInt128>(decode_tps);
  const UInt128 picos_per_replica_hour =
      static_cast<UInt128>(cost.gpus_per_replica) * static_cast<UInt128>(cost.usd_per_gpu_hour.picos());
  UInt128 divisor = 0;
  if (__builtin_mul_overflow(seconds_den, static_cast<UInt128>(kSecondsPerHour), &divisor)) {
    return Money{};  // throughputs beyond 10^17 tok/s: not a real pool
  }
  return Money::from_picos(mul_div_round(picos_per_replica_hour, seconds_num, divisor));
}

Money predicted_cost(const Target& target, std::int64_t input_tokens, std::int64_t expected_cached_tokens,
                     std::int64_t max_output_tokens, ProcessingMode mode) {
  const std::int64_t input = std::clamp<std::int64_t>(input_tokens, 0, kMaxTokens);
  const std::int64_t cached = std::clamp<std::int64_t>(expected_cached_tokens, 0, input);
  const std::int64_t output = std::clamp<std::int64_t>(max_output_tokens, 0, kMaxTokens);
  if (target.kind == TargetKind::self_hosted) {
    return self_hosted_marginal_cost(target.cost, input, cached, output);
  }
  Usage usage;
  usage.uncached_input_tokens = input - cached;
  usage.cache_read_tokens = cached;
  usage.output_tokens = output;
  if (!target.price.present) return Money{};  // a provider that reports its own cost: nothing to predict
  if (auto cost = price_usage(target.price, usage, mode)) return *cost;
  // Beyond the 64-bit range: predict the most there is, so a budget refuses rather than waves through.
  return Money::from_picos(std::numeric_limits<std::int64_t>::max());
}

Money reserved_cost(const Target& target, std::int64_t input_tokens, std::int64_t expected_cached_tokens,
                    std::int64_t max_output_tokens, ProcessingMode mode) {
  if (target.kind == TargetKind::self_hosted || !target.price.present) {
    return predicted_cost(target, input_tokens, expected_cached_tokens, max_output_tokens, mode);
  }
  const std::int64_t input = std::clamp<std::int64_t>(input_tokens, 0, kMaxTokens);
  const std::int64_t cached = std::clamp<std::int64_t>(expected_cached_tokens, 0, input);
  const std::int64_t output = std::clamp<std::int64_t>(max_output_tokens, 0, kMaxTokens);
  const PriceRates& rates = target.price.rates_for(input, mode);
  Usage usage;
  usage.cache_read_tokens = cached;
  usage.output_tokens = output;
  // The uncached part at the dearest way a provider may bill it.
  const std::int64_t uncached = input - cached;
  const auto dearest = std::max({rates.input, rates.cache_write_5m, rates.cache_write_1h});
  if (dearest == rates.input)
    return predicted_cost(target, input_tokens, expected_cached_tokens, max_output_tokens, mode);
  if (dearest == rates.cache_write_1h) {
    usage.cache_write_1h_tokens = uncached;
  } else if (dearest == rates.cache_write_5m) {
    usage.cache_write_5m_tokens = uncached;
  } else {
    usage.uncached_input_tokens = uncached;
  }
  if (auto cost = price_usage(target.price, usage, mode)) return *cost;
  return Money::from_picos(std::numeric_limits<std::int64_t>::max());
}

Result<Money> actual_cost(const Target& target, const Usage& usage, ProcessingMode mode) {
  if (target.kind == TargetKind::self_hosted) {
    if (auto s = check_usage(usage); !s) return std::move(s).error();
    return self_hosted_marginal_cost(target.cost, usage.input_tokens(), usage.cache_read_tokens, usage.output_tokens);
  }
  if (target.price.present) {
    // The catalog wins over a provider-reported cost: it is what budgets and predictions use, so actual
    // and predicted stay comparable. usage.reported_cost stays available as information.
    auto cost = price_usage(target.price, usage, mode);
    if (!cost) {
      Error e = std::move(cost).error();
      e.message = "target '" + target.name + "': " + e.message;
      return e;
    }
    return cost;
  }
  if (usage.reported_cost) {
    if (usage.reported_cost->picos() < 0) {
      return make_error(ErrorCode::usage_invalid, "target '" + target.name + "': reported cost is negative");
    }
    return *usage.reported_cost;  // already what was charged, discounts included
  }
  return make_error(ErrorCode::price_missing,
                    "target '" + target.name + "' has no price catalog and the provider reported no cost");
}

Result<Money> self_hosted_cost_per_mtok(const SelfHostedCost& cost, std::int64_t replica_output_tokens_per_s,
                                        std::int64_t utilisation_ppm) {
  constexpr std::int64_t kPpm = 1'000'000;
  if (replica_output_tokens_per_s <= 0) {
    return make_error(
        ErrorCode::invalid_argument,
        "output tokens/s per replica (" + std::to_string(replica_output_tokens_per_s) + ") must be positive");
  }
  if (utilisation_ppm < 1 || utilisation_ppm > kPpm) {
    return make_error(ErrorCode::invalid_argument, "utilisation (" + std::to_string(utilisation_ppm) +
                                                       " ppm) must be within 1..1000000 ppm (0..100 %)");
  }
  if (cost.usd_per_gpu_hour.picos() < 0 || cost.gpus_per_replica < 1) {
    return make_error(ErrorCode::invalid_argument, "usd_per_gpu_hour is negative or gpus_per_replica below 1");
  }
  // picos/Mtok = gpus × picos per GPU-hour × 10^6 tokens × 10^6 / (3600 s × tokens/s × utilisation ppm)
  constexpr std::int64_t kTokensPerMtok = 1'000'000;
  const auto per_hour =
      static_cast<UInt128>(cost.usd_per_gpu_hour.picos()) * static_cast<UInt128>(cost.gpus_per_replica);
  const UInt128 scale = static_cast<UInt128>(kTokensPerMtok) * kPpm;
  const UInt128 divisor = static_cast<UInt128>(kSecondsPerHour) * static_cast<UInt128>(replica_output_tokens_per_s) *
                          static_cast<UInt128>(utilisation_ppm);
  const std::int64_t picos = mul_div_round(per_hour, scale, divisor);
  if (picos == kInt64Max) {
    return make_error(ErrorCode::invalid_argument, "cost per Mtok exceeds the Money range");
  }
  return Money::from_picos(picos);
}

PoolPeriodCost self_hosted_period_cost(const Target& target, std::int64_t period_ms) {
  constexpr std::int64_t kMsPerHour = 3'600'000;
  constexpr std::int64_t kMsPerMonth = 730 * kMsPerHour;
  PoolPeriodCost out;
  if (target.kind != TargetKind::self_hosted || period_ms <= 0) return out;
  const auto gpus = static_cast<UInt128>(target.replicas.size()) * static_cast<UInt128>(target.cost.gpus_per_replica);
  out.gpu = Money::from_picos(mul_div_round(gpus * static_cast<UInt128>(target.cost.usd_per_gpu_hour.picos()),
                                            static_cast<UInt128>(period_ms), kMsPerHour));
  for (const auto& [name, monthly] : target.cost.monthly_overheads) {
    out.overheads += Money::from_picos(
        mul_div_round(static_cast<UInt128>(monthly.picos()), static_cast<UInt128>(period_ms), kMsPerMonth));
  }
  return out;
}

Money cache_storage_cost(const PriceCatalog& price, std::int64_t tokens, std::int64_t held_ms) {
  constexpr std::int64_t kMsPerHour = 3'600'000;
  if (tokens <= 0 || held_ms <= 0) return Money{};
  return Money::from_picos(
      mul_div_round(static_cast<UInt128>(price.cache_storage_per_hour.picos_per_token()) * static_cast<UInt128>(tokens),
                    static_cast<UInt128>(held_ms), kMsPerHour));
}

}  // namespace turnout
