#pragma once
// Exact prices: MaaS token pricing with cache reads/writes, tiers and batch discount, and self-hosted
// GPU cost (marginal per request, and fully loaded per month). All money is integer picodollars.

#include <cstdint>

#include "turnout/config.hpp"
#include "turnout/money.hpp"
#include "turnout/result.hpp"
#include "turnout/usage.hpp"

namespace turnout {

/// Cost of a normalized usage on a MaaS price catalog. The tier is chosen by the whole prompt size
/// (usage.input_tokens()). Batch mode (or a usage the provider billed at batch prices, usage.batch_tier)
/// prices at the catalog's batch prices per token kind when it states them, else applies its batch
/// discount (rounded down to a picodollar).
[[nodiscard]] Result<Money> price_usage(const PriceCatalog& price, const Usage& usage,
                                        ProcessingMode mode = ProcessingMode::online);

/// Marginal GPU cost of one request on a self-hosted pool: GPU-seconds of prefill (tokens not served
/// from the prefix cache) and decode at the configured throughputs, times $/GPU-hour. Zero when the
/// throughputs are unknown.
[[nodiscard]] Money self_hosted_marginal_cost(const SelfHostedCost& cost, std::int64_t prefill_tokens,
                                              std::int64_t cached_prefill_tokens, std::int64_t output_tokens);

/// Cost the decision predicts (and the budget reserves) for a request on `target`: every input token
/// priced as uncached input (minus `expected_cached_tokens` priced as cache reads), plus max output.
[[nodiscard]] Money predicted_cost(const Target& target, std::int64_t input_tokens, std::int64_t expected_cached_tokens,
                                   std::int64_t max_output_tokens, ProcessingMode mode);

/// What a budget reserves for a request on `target`: the worst case. Like predicted_cost, but every
/// input token not expected from the cache is priced at the dearest of input, 5 min and 1 h cache
/// write (a worker may ask the provider to cache the prompt). Saturates at the int64 maximum.
[[nodiscard]] Money reserved_cost(const Target& target, std::int64_t input_tokens, std::int64_t expected_cached_tokens,
                                  std::int64_t max_output_tokens, ProcessingMode mode);

/// Cost of what actually happened on `target`: price_usage for MaaS, marginal GPU cost for self-hosted.
[[nodiscard]] Result<Money> actual_cost(const Target& target, const Usage& usage, ProcessingMode mode);

/// Capacity-planning figure: GPU cost of one million output tokens on a pool whose replicas (each of
/// cost.gpus_per_replica GPUs) sustain `replica_output_tokens_per_s` at full load and are busy
/// `utilisation_ppm` millionths of the time: gpus × usd_per_gpu_hour × 10^6 / (3600 × tokens/s ×
/// utilisation). Rounded to the nearest picodollar (halves up). Errors (invalid_argument) when the
/// throughput is not positive or utilisation is not in 1..10^6 ppm.
[[nodiscard]] Result<Money> self_hosted_cost_per_mtok(const SelfHostedCost& cost,
                                                      std::int64_t replica_output_tokens_per_s,
                                                      std::int64_t utilisation_ppm);

/// Provisioned cost of a self-hosted pool over a period, the fully loaded view: every replica's GPUs
/// for the whole period (busy or not), plus the monthly overheads (staging, canary, engineering, ...)
/// prorated with a month of 730 hours. Never mixed with the marginal per-request cost.
struct PoolPeriodCost {
  Money gpu;
  Money overheads;
  [[nodiscard]] Money fully_loaded() const { return gpu + overheads; }
};
[[nodiscard]] PoolPeriodCost self_hosted_period_cost(const Target& target, std::int64_t period_ms);

/// Explicit-cache storage (Gemini `cachedContents`): tokens held x time x the catalog's storage price
/// per token-hour, rounded to the nearest picodollar.
[[nodiscard]] Money cache_storage_cost(const PriceCatalog& price, std::int64_t tokens, std::int64_t held_ms);

}  // namespace turnout
