#include "turnout/sim/provider.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <stdexcept>
#include <string_view>
#include <utility>

// Rules and sources: docs/replay.md, "Simulated providers". Hot path: call() allocates only the usage
// string; the cache is a set-associative table allocated once, so memory is bounded by construction.

namespace turnout::sim {
namespace {

constexpr SimTime kMinuteUs = 60 * kMicrosPerS;
constexpr std::uint64_t kWays = 8;          // entries per cache set
constexpr std::uint64_t kInitialSets = 64;  // the table doubles from 512 entries up to its cap
/// z of the 95th percentile of the standard normal.
constexpr double kZ95 = 1.6448536269514722;
/// The largest RPM or TPM a spec may set: keeps the buckets' fixed-point levels inside 64 bits.
constexpr std::int64_t kMaxPerMinute = std::int64_t{1} << 36;
constexpr std::int64_t kMaxCacheTtlS = std::int64_t{7} * 86'400;  // as the table's cache.ttl_s
constexpr std::int64_t kMaxCacheEntries = std::int64_t{1} << 32;
constexpr std::int64_t kMaxTimeoutMs = std::int64_t{86'400'000};  // a day
/// The most tokens a call may have each way: their sum and the TPM bucket's arithmetic stay in 64 bits.
constexpr std::int64_t kMaxCallTokens = std::int64_t{1} << 40;

/// `now` plus `us` microseconds drawn from a distribution: rounded, and held on the clock (a draw from
/// a wide tail can be astronomically long, or even infinite; the sum saturates at kNever).
SimTime after(SimTime now, double us) {
  constexpr double kLongest = 0x1p62;                                                           // about 146,000 years
  const SimTime d = us < kLongest ? std::max<SimTime>(0, std::llround(us)) : SimTime{1} << 62;  // also inf
  SimTime end = 0;
  return __builtin_add_overflow(now, d, &end) ? kNever : end;
}

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

/// Anthropic's minimum cacheable prompt per model (docs/replay.md lists the table).
std::int64_t anthropic_min_prefix(std::string_view model) {
  if (contains(model, "opus-4-5") || contains(model, "opus-4-6") || contains(model, "haiku-4-5")) return 4096;
  if (contains(model, "sonnet-4-6") || contains(model, "haiku")) return 2048;  // Haiku 3 and 3.5
  return 1024;
}

/// Gemini's minimum prompt for implicit caching per model.
std::int64_t gemini_min_prefix(std::string_view model) {
  if (contains(model, "pro")) return 4096;
  if (contains(model, "flash-lite")) return 2048;
  return 1024;
}

std::int64_t round_up(std::int64_t n, std::int64_t m) { return (n + m - 1) / m * m; }

// ---- msgpack, written by hand: no buffer object, no allocation past the string's one reserve -----

void put_map(std::string& out, unsigned n) { out += static_cast<char>(0x80U | n); }  // n <= 15
void put_str(std::string& out, std::string_view s) {                                 // size <= 31
  out += static_cast<char>(0xa0U | static_cast<unsigned>(s.size()));
  out += s;
}
void put_uint(std::string& out, std::int64_t v) {
  const auto u = static_cast<std::uint64_t>(v);
  auto bytes = [&](unsigned char tag, int n) {
    out += static_cast<char>(tag);
    for (int i = n - 1; i >= 0; --i) out += static_cast<char>((u >> (8 * i)) & 0xffU);
  };
  if (u < 0x80U) {
    out += static_cast<char>(u);
  } else if (u <= 0xffU) {
    bytes(0xcc, 1);
  } else if (u <= 0xffffU) {
    bytes(0xcd, 2);
  } else if (u <= 0xffffffffU) {
    bytes(0xce, 4);
  } else {
    bytes(0xcf, 8);
  }
}
void put_field(std::string& out, std::string_view key, std::int64_t v) {
  put_str(out, key);
  put_uint(out, v);
}

Error bad(std::string message) { return make_error(ErrorCode::invalid_argument, std::move(message)); }

}  // namespace

CacheRules cache_rules(const Target& target, const ProviderSpec& spec) {
  CacheRules r;
  std::int64_t ttl_s = 300;
  switch (target.provider) {
    case turnout::Provider::anthropic:
      r.breakpoints = true;
      r.granularity = kChainTokens;
      r.min_prefix_tokens = anthropic_min_prefix(target.model);
      break;
    case turnout::Provider::gemini:
      r.granularity = kChainTokens;
      r.min_prefix_tokens = gemini_min_prefix(target.model);
      break;
    case turnout::Provider::deepseek:
      r.granularity = 64;
      r.min_prefix_tokens = 64;
      ttl_s = std::int64_t{3} * 3600;  // "cleared within a few hours to a few days" when unused
      break;
    case turnout::Provider::openai:
    case turnout::Provider::openrouter:  // the underlying provider's rules; OpenAI's by default
    case turnout::Provider::vllm:
    case turnout::Provider::sglang:
      r.granularity = 128;
      r.min_prefix_tokens = 1024;
      break;
  }
  // A table's cache: block that differs from the CacheSpec defaults was set by the table.
  const CacheSpec defaults;
  if (target.cache.ttl_s != defaults.ttl_s) ttl_s = target.cache.ttl_s;
  if (target.cache.min_prefix_tokens != defaults.min_prefix_tokens)
    r.min_prefix_tokens = target.cache.min_prefix_tokens;
  if (spec.cache_ttl_s >= 0) ttl_s = spec.cache_ttl_s;
  if (spec.cache_min_prefix_tokens >= 0) r.min_prefix_tokens = spec.cache_min_prefix_tokens;
  r.ttl = ttl_s * kMicrosPerS;
  r.ttl_1h = 3600 * kMicrosPerS;
  r.enabled = spec.cache_entries > 0;
  return r;
}

Result<Ok> check_provider(const Target& target, const ProviderSpec& spec) {
  const std::string at = "target '" + target.name + "': ";
  if (target.kind != TargetKind::maas) return bad(at + "a simulated provider serves MaaS targets only");
  const LatencySpec& l = spec.latency;
  if (!(l.ttft_p50_ms > 0) || !std::isfinite(l.ttft_p50_ms) || !(l.ttft_p95_ms >= l.ttft_p50_ms) ||
      !std::isfinite(l.ttft_p95_ms)) {
    return bad(at + "ttft_ms: expected 0 < p50 <= p95, got p50 " + std::to_string(l.ttft_p50_ms) + ", p95 " +
               std::to_string(l.ttft_p95_ms));
  }
  if (!(l.tokens_per_s_p95 > 0) || !(l.tokens_per_s_p50 >= l.tokens_per_s_p95) || !std::isfinite(l.tokens_per_s_p50)) {
    return bad(at + "output_tokens_per_s: expected 0 < p95 <= p50 (p95 is the slow tail), got p50 " +
               std::to_string(l.tokens_per_s_p50) + ", p95 " + std::to_string(l.tokens_per_s_p95));
  }
  if (spec.rpm < 0 || spec.rpm > kMaxPerMinute || spec.tpm < 0 || spec.tpm > kMaxPerMinute) {
    return bad(at + "rpm and tpm: expected 0 (no limit) to 2^36, got " + std::to_string(spec.rpm) + " and " +
               std::to_string(spec.tpm));
  }
  if (!(spec.error_rate >= 0.0 && spec.error_rate <= 1.0)) {
    return bad(at + "error_rate: expected 0 to 1, got " + std::to_string(spec.error_rate));
  }
  if (spec.timeout_ms <= 0 || spec.timeout_ms > kMaxTimeoutMs) {
    return bad(at + "timeout_ms: expected 1 to 86400000 (a day), got " + std::to_string(spec.timeout_ms));
  }
  if (!(spec.cache_hit_ttft_saving >= 0.0 && spec.cache_hit_ttft_saving < 1.0)) {
    return bad(at + "cache_hit_ttft_saving: expected 0 <= saving < 1, got " +
               std::to_string(spec.cache_hit_ttft_saving));
  }
  if (spec.cache_ttl_s < -1 || spec.cache_ttl_s > kMaxCacheTtlS || spec.cache_min_prefix_tokens < -1 ||
      spec.cache_entries < 0 || spec.cache_entries > kMaxCacheEntries) {
    return bad(at + "cache: expected cache_ttl_s -1 (derived) to 7 days, cache_min_prefix_tokens >= -1 (derived), " +
               "cache_entries 0 to 2^32; got " + std::to_string(spec.cache_ttl_s) + ", " +
               std::to_string(spec.cache_min_prefix_tokens) + ", " + std::to_string(spec.cache_entries));
  }
  for (std::size_t i = 0; i < spec.outages.size(); ++i) {
    const Outage& o = spec.outages[i];
    const std::string where = at + "outages[" + std::to_string(i) + "]: ";
    if (o.to <= o.from) return bad(where + "expected from < to");
    if (!(o.error_rate >= 0.0 && o.error_rate <= 1.0)) return bad(where + "error_rate: expected 0 to 1");
    if (o.status == Status::ok) return bad(where + "status: expected a failure, got ok");
  }
  return Ok{};
}

Provider::Provider(const Target& target, ProviderSpec spec, std::uint64_t seed)
    : kind_(target.provider), spec_(std::move(spec)), seed_(seed * 0xD1B54A32D192ED03ULL + 0x8CB92BA72F3D8DD7ULL) {
  if (auto ok = check_provider(target, spec_); !ok) throw std::invalid_argument(ok.error().message);
  rules_ = cache_rules(target, spec_);
  while (max_sets_ * kWays < static_cast<std::uint64_t>(spec_.cache_entries)) max_sets_ <<= 1U;
  requests_.per_minute = spec_.rpm;
  requests_.level = spec_.rpm * kMinuteUs;
  tokens_.per_minute = spec_.tpm;
  tokens_.level = spec_.tpm * kMinuteUs;
  const LatencySpec& l = spec_.latency;
  ttft_mu_ = std::log(l.ttft_p50_ms);
  ttft_sigma_ = (std::log(l.ttft_p95_ms) - ttft_mu_) / kZ95;
  rate_mu_ = std::log(l.tokens_per_s_p50);
  rate_sigma_ = (rate_mu_ - std::log(l.tokens_per_s_p95)) / kZ95;
}

// ---- The cache ------------------------------------------------------------------------------------

Provider::Entry* Provider::find(std::uint64_t key, SimTime now) {
  if (entries_.empty()) return nullptr;
  key = key == 0 ? 1 : key;
  Entry* set = &entries_[(key & bucket_mask_) * kWays];
  for (std::uint64_t i = 0; i < kWays && set[i].key != 0; ++i) {  // sets fill from the front
    if (set[i].key == key) return set[i].expires > now ? &set[i] : nullptr;
  }
  return nullptr;
}

void Provider::allocate(std::uint64_t sets) {
  entries_.assign(sets * kWays, Entry{});
  bucket_mask_ = sets - 1;
  held_entries_ = 0;
}

void Provider::grow(SimTime now) {
  std::vector<Entry> old = std::move(entries_);
  allocate((bucket_mask_ + 1) * 2);
  // A set splits into two: its live entries always fit, each at the front of its new set.
  for (const Entry& e : old) {
    if (e.key == 0 || e.expires <= now) continue;
    Entry* set = &entries_[(e.key & bucket_mask_) * kWays];
    std::uint64_t i = 0;
    while (set[i].key != 0) ++i;
    set[i] = e;
    ++held_entries_;
  }
}

void Provider::store(std::uint64_t key, SimTime now, SimTime ttl) {
  if (entries_.empty()) allocate(std::min(max_sets_, kInitialSets));
  key = key == 0 ? 1 : key;
  Entry* set = &entries_[(key & bucket_mask_) * kWays];
  Entry* victim = &set[0];
  for (std::uint64_t i = 0; i < kWays; ++i) {
    Entry& e = set[i];
    if (e.key == key) {  // a live entry keeps its longer TTL (an Anthropic 1 h entry read as 5 min)
      e.ttl = e.expires > now ? std::max(e.ttl, ttl) : ttl;
      e.expires = now + e.ttl;
      return;
    }
    if (e.key == 0 || e.expires < victim->expires) victim = &e;  // empty first, else the nearest expiry
    if (e.key == 0) break;
  }
  if (victim->key != 0 && victim->expires > now && bucket_mask_ + 1 < max_sets_) {
    grow(now);  // below the cap a live entry is never evicted
    store(key, now, ttl);
    return;
  }
  if (victim->key == 0) ++held_entries_;
  *victim = Entry{key, now + ttl, ttl};
}

std::int64_t Provider::automatic_cache(const Prompt& prompt, std::int64_t input_tokens, SimTime now) {
  const std::int64_t g = rules_.granularity;
  const std::int64_t chained = static_cast<std::int64_t>(prompt.chain.size()) * kChainTokens;
  const std::int64_t usable = std::min(input_tokens, chained) / g * g;
  const std::int64_t first = round_up(std::max(rules_.min_prefix_tokens, g), g);
  if (input_tokens < rules_.min_prefix_tokens || usable < first) return 0;
  std::int64_t hit = 0;
  bool missed = false;
  for (std::int64_t p = first; p <= usable; p += g) {
    const std::uint64_t key = prompt.chain[static_cast<std::size_t>(p / kChainTokens - 1)];
    if (!missed) {
      if (Entry* e = find(key, now)) {
        e->expires = now + e->ttl;  // a hit refreshes the TTL
        hit = p;
        continue;
      }
      missed = true;
    }
    store(key, now, rules_.ttl);
  }
  return hit;
}

Provider::Written Provider::breakpoint_cache(const Prompt& prompt, std::int64_t input_tokens, SimTime now,
                                             std::span<const Breakpoint> breakpoints) {
  const Breakpoint at_end{input_tokens, CacheTtl::five_minutes};
  if (breakpoints.empty()) breakpoints = std::span<const Breakpoint>(&at_end, 1);
  const std::int64_t chained = static_cast<std::int64_t>(prompt.chain.size()) * kChainTokens;
  const std::int64_t lowest = round_up(std::max(rules_.min_prefix_tokens, kChainTokens), kChainTokens);
  auto reach = [&](const Breakpoint& b) {
    return std::min({b.tokens, input_tokens, chained}) / kChainTokens * kChainTokens;
  };
  auto entry = [&](std::int64_t tokens) {
    return find(prompt.chain[static_cast<std::size_t>(tokens / kChainTokens - 1)], now);
  };
  // The read is the longest cached prefix at or before the furthest breakpoint, whichever call wrote it:
  // Anthropic reads the longest match, looking back past the earlier breakpoints. Its TTL is refreshed.
  std::int64_t furthest = 0;
  for (const Breakpoint& b : breakpoints) {
    if (const std::int64_t t = reach(b); t >= lowest) furthest = std::max(furthest, t);
  }
  Written w;
  for (std::int64_t p = furthest; p >= lowest; p -= kChainTokens) {
    if (Entry* e = entry(p)) {
      e->expires = now + e->ttl;
      w.read = p;
      break;
    }
  }
  // A breakpoint inside the read refreshes its own entry (it was used); one past it writes from the last
  // position covered, with its TTL. Too short a prefix is neither read nor written.
  std::int64_t covered = w.read;
  for (const Breakpoint& b : breakpoints) {
    const std::int64_t t = reach(b);
    if (t < lowest) continue;
    if (t < w.read) {
      if (Entry* e = entry(t)) e->expires = now + e->ttl;
      continue;
    }
    if (t <= covered) continue;
    const bool hour = b.ttl == CacheTtl::one_hour;
    store(prompt.chain[static_cast<std::size_t>(t / kChainTokens - 1)], now, hour ? rules_.ttl_1h : rules_.ttl);
    (hour ? w.write_1h : w.write_5m) += t - covered;
    covered = t;
  }
  return w;
}

// ---- Rate limits, randomness, usage ---------------------------------------------------------------

std::int64_t Provider::retry_after_ms(std::int64_t tokens, SimTime now) {
  std::int64_t wait_us = 0;
  bool fits = true;
  auto refill_and_wait = [&](Bucket& b, std::int64_t need) {
    if (b.per_minute == 0) return;
    if (now > b.at) {
      const SimTime elapsed = std::min(now - b.at, kMinuteUs);  // a minute refills a bucket fully
      b.level = std::min(b.per_minute * kMinuteUs, b.level + (elapsed * b.per_minute));
      b.at = now;
    }
    if (need > b.per_minute) {
      fits = false;
      return;
    }
    const std::int64_t deficit = (need * kMinuteUs) - b.level;
    if (deficit > 0) wait_us = std::max(wait_us, (deficit + b.per_minute - 1) / b.per_minute);
  };
  refill_and_wait(requests_, 1);
  refill_and_wait(tokens_, tokens);
  if (!fits) return -1;
  if (wait_us > 0) return (wait_us + kMicrosPerMs - 1) / kMicrosPerMs;
  requests_.level -= requests_.per_minute > 0 ? kMinuteUs : 0;
  tokens_.level -= tokens_.per_minute > 0 ? tokens * kMinuteUs : 0;
  return 0;
}

double Provider::uniform() {
  // SplitMix64 over a counter: the k-th draw of a seed is the same whatever else happened.
  std::uint64_t z = seed_ + (++draws_ * 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  z ^= z >> 31U;
  return static_cast<double>(z >> 11U) * 0x1.0p-53;  // [0, 1)
}

std::pair<double, double> Provider::normals() {
  // Box-Muller: two independent standard normals from two uniforms.
  const double radius = std::sqrt(-2.0 * std::log(1.0 - uniform()));  // 1 - [0, 1) is never 0
  const double angle = 2.0 * std::numbers::pi * uniform();
  return {radius * std::cos(angle), radius * std::sin(angle)};
}

void Provider::encode_usage(Attempt& a, std::int64_t input, std::int64_t output, const Written& w,
                            ProcessingMode mode) const {
  std::string& u = a.usage;
  u.reserve(192);
  switch (kind_) {
    case turnout::Provider::anthropic:  // input_tokens is the part after the last cache hit or write
      put_map(u, 6);
      put_field(u, "input_tokens", input - w.read - w.write_5m - w.write_1h);
      put_field(u, "cache_read_input_tokens", w.read);
      put_field(u, "cache_creation_input_tokens", w.write_5m + w.write_1h);
      put_str(u, "cache_creation");
      put_map(u, 2);
      put_field(u, "ephemeral_5m_input_tokens", w.write_5m);
      put_field(u, "ephemeral_1h_input_tokens", w.write_1h);
      put_field(u, "output_tokens", output);
      put_str(u, "service_tier");
      put_str(u, mode == ProcessingMode::batch ? "batch" : "standard");
      return;
    case turnout::Provider::gemini:  // proto3 JSON omits zero counts
      put_map(u, a.cached_tokens > 0 ? 4 : 3);
      put_field(u, "promptTokenCount", input);
      if (a.cached_tokens > 0) put_field(u, "cachedContentTokenCount", a.cached_tokens);
      put_field(u, "candidatesTokenCount", output);
      put_field(u, "totalTokenCount", input + output);
      return;
    case turnout::Provider::deepseek:
      put_map(u, 6);
      put_field(u, "prompt_tokens", input);
      put_field(u, "completion_tokens", output);
      put_field(u, "total_tokens", input + output);
      put_field(u, "prompt_cache_hit_tokens", a.cached_tokens);
      put_field(u, "prompt_cache_miss_tokens", input - a.cached_tokens);
      put_str(u, "prompt_tokens_details");
      put_map(u, 1);
      put_field(u, "cached_tokens", a.cached_tokens);
      return;
    case turnout::Provider::openrouter:
    case turnout::Provider::openai:
    case turnout::Provider::vllm:
    case turnout::Provider::sglang: {
      const bool openrouter = kind_ == turnout::Provider::openrouter;
      put_map(u, 4);
      put_field(u, "prompt_tokens", input);
      put_field(u, "completion_tokens", output);
      put_field(u, "total_tokens", input + output);
      put_str(u, "prompt_tokens_details");
      put_map(u, openrouter ? 2 : 1);
      put_field(u, "cached_tokens", a.cached_tokens);
      if (openrouter) put_field(u, "cache_write_tokens", 0);
      return;
    }
  }
}

// ---- A call ----------------------------------------------------------------------------------------

Attempt Provider::call(const Prompt& prompt, std::int64_t input_tokens, std::int64_t output_tokens, SimTime now,
                       ProcessingMode mode, std::span<const Breakpoint> breakpoints) {
  if (input_tokens < 0 || output_tokens < 0 || input_tokens > kMaxCallTokens || output_tokens > kMaxCallTokens) {
    throw std::invalid_argument("Provider::call: expected 0 to 2^40 tokens each way, got " +
                                std::to_string(input_tokens) + " in and " + std::to_string(output_tokens) + " out");
  }
  Attempt a;
  a.done_at = now;

  // 429 first: a rejected call reaches neither the model nor its cache, and costs nothing.
  if (const std::int64_t wait = retry_after_ms(input_tokens + output_tokens, now); wait != 0) {
    a.status = Status::rate_limited;
    a.retry_after_ms = wait;
    return a;
  }
  if (rules_.breakpoints) {  // the API's 400 invalid_request_error
    bool hour_after_five = false;
    for (std::size_t i = 1; i < breakpoints.size(); ++i) {
      hour_after_five |= breakpoints[i].ttl == CacheTtl::one_hour && breakpoints[i - 1].ttl == CacheTtl::five_minutes;
    }
    if (breakpoints.size() > kMaxBreakpoints || hour_after_five) {
      a.status = Status::error;
      return a;
    }
  }
  const std::pair<double, double> z = normals();  // drawn for every call: the draw sequence never branches
  const double ttft_z = z.first;
  const double rate_z = z.second;
  auto fail = [&](Status status, SimTime window_end) {
    a.status = status;
    if (status == Status::timeout) {
      a.done_at = after(now, static_cast<double>(spec_.timeout_ms * kMicrosPerMs));
    } else if (status == Status::rate_limited) {  // a provider shedding load: come back after the window
      a.retry_after_ms = std::max<std::int64_t>(1, (window_end - now + kMicrosPerMs - 1) / kMicrosPerMs);
    } else {  // an error arrives about when a first token would have
      a.done_at = after(now, std::exp(ttft_mu_ + (ttft_sigma_ * ttft_z)) * kMicrosPerMs);
    }
  };
  for (const Outage& o : spec_.outages) {
    if (now >= o.from && now < o.to && uniform() < o.error_rate) {
      fail(o.status, o.to);
      return a;
    }
  }
  if (spec_.error_rate > 0.0 && uniform() < spec_.error_rate) {
    fail(Status::error, now);
    return a;
  }

  Written w;
  if (rules_.enabled) {
    if (rules_.breakpoints) {
      w = breakpoint_cache(prompt, input_tokens, now, breakpoints);
    } else {
      w.read = automatic_cache(prompt, input_tokens, now);
    }
  }
  a.cached_tokens = w.read;
  a.cache_write_tokens = w.write_5m + w.write_1h;

  const double cached_share = input_tokens > 0 ? static_cast<double>(w.read) / static_cast<double>(input_tokens) : 0;
  const double ttft_ms = std::exp(ttft_mu_ + ttft_sigma_ * ttft_z) * (1.0 - spec_.cache_hit_ttft_saving * cached_share);
  const double rate = std::exp(rate_mu_ + rate_sigma_ * rate_z);
  a.first_token_at = after(now, ttft_ms * kMicrosPerMs);
  a.done_at = after(a.first_token_at, static_cast<double>(output_tokens) / rate * kMicrosPerS);
  encode_usage(a, input_tokens, output_tokens, w, mode);
  return a;
}

}  // namespace turnout::sim
