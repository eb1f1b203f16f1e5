#pragma once
// A simulated MaaS provider endpoint: the ground truth a MaaS target behaves by, independent of what
// the router predicts. Its prompt cache is keyed by the request's true prefix (Prompt::chain) with the
// provider's documented rules (minimum prefix, hit increments, TTL refreshed on use, Anthropic's
// cache_control breakpoints and write prices); it answers with the usage object the provider really
// returns (msgpack, parsed by the Router's own normalize_usage), draws TTFT and decode rate from
// lognormals, enforces RPM/TPM token buckets with Retry-After, and fails on an outage schedule.
// docs/replay.md ("Simulated providers") gives the rules and their sources.

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "turnout/config.hpp"
#include "turnout/decision.hpp"
#include "turnout/result.hpp"
#include "turnout/sim/prompt.hpp"

namespace turnout::sim {

/// Time to first token and decode rate of a provider, as percentiles over calls (lognormal).
struct LatencySpec {
  double ttft_p50_ms = 400;
  double ttft_p95_ms = 1200;  ///< >= ttft_p50_ms
  double tokens_per_s_p50 = 80;
  double tokens_per_s_p95 = 40;  ///< the slow tail: 5 % of calls decode slower than this (<= p50)
};

/// A window of injected failures: a call in [from, to) fails with probability error_rate, with `status`.
struct Outage {
  SimTime from = 0;
  SimTime to = 0;
  double error_rate = 1.0;
  Status status = Status::error;
};

/// The prompt-cache rules a Provider applies (derived by cache_rules(); tests and docs read them).
struct CacheRules {
  bool enabled = true;
  bool breakpoints = false;            ///< Anthropic: entries only where cache_control sits; writes billed
  std::int64_t granularity = 16;       ///< hits and entries in multiples of this many tokens
  std::int64_t min_prefix_tokens = 0;  ///< shorter prompts (Anthropic: prefixes) are never cached
  SimTime ttl = 0;                     ///< of inactivity: a hit refreshes it (Anthropic: the 5-minute TTL)
  SimTime ttl_1h = 0;                  ///< Anthropic's 1-hour TTL
};

/// How a simulated MaaS endpoint behaves. Every field has a documented default.
struct ProviderSpec {
  LatencySpec latency;
  std::int64_t rpm = 0;  ///< requests per minute (token bucket); 0 = no limit
  std::int64_t tpm = 0;  ///< input + output tokens per minute (token bucket); 0 = no limit
  double error_rate = 0.0;
  std::vector<Outage> outages;
  std::int64_t timeout_ms = 600'000;  ///< how long a call that times out takes (the SDKs' 10-minute default); <= a day
  /// The cache TTL in seconds; -1: the target's cache.ttl_s when the table sets it, else the provider's
  /// documented default.
  std::int64_t cache_ttl_s = -1;
  /// The minimum cacheable prompt; -1: the target's cache.min_prefix_tokens when the table sets it, else
  /// the provider's documented minimum for the model.
  std::int64_t cache_min_prefix_tokens = -1;
  /// Cache entries held at most (24 bytes each). The table starts at 512 entries and doubles whenever a
  /// write would evict a live entry; at the cap the entry closest to expiry is evicted instead.
  std::int64_t cache_entries = std::int64_t{1} << 20;
  /// TTFT saved by a fully cached prompt, as a share (a half-cached prompt saves half of it).
  double cache_hit_ttft_saving = 0.5;
};

/// Anthropic's cache_control TTLs.
enum class CacheTtl : std::uint8_t { five_minutes, one_hour };

/// One Anthropic cache_control breakpoint: the prompt's first `tokens` tokens form a cache entry.
struct Breakpoint {
  std::int64_t tokens = 0;
  CacheTtl ttl = CacheTtl::five_minutes;
};

/// At most this many breakpoints per request (Anthropic refuses more).
inline constexpr std::size_t kMaxBreakpoints = 4;

/// What one call to the endpoint did.
struct Attempt {
  Status status = Status::ok;
  /// With rate_limited: when the buckets have room again (Retry-After, ms); -1: never (the request is
  /// larger than the TPM bucket, OpenAI's "request too large").
  std::int64_t retry_after_ms = -1;
  SimTime first_token_at = 0;           ///< ok only
  SimTime done_at = 0;                  ///< when the answer (or the failure) arrived
  std::int64_t cached_tokens = 0;       ///< read from the true cache
  std::int64_t cache_write_tokens = 0;  ///< billed as cache writes (Anthropic; 0 where writes are free)
  /// The provider's NATIVE usage object as msgpack (what Router::report parses); empty when the call
  /// failed (providers return an error object without usage).
  std::string usage;
};

/// The cache rules a provider applies to `target` under `spec`.
[[nodiscard]] CacheRules cache_rules(const Target& target, const ProviderSpec& spec);

/// Checks a spec for `target` (a MaaS target; percentiles ordered and positive, rates in [0, 1],
/// outages ordered windows...): invalid_argument naming the field.
[[nodiscard]] Result<Ok> check_provider(const Target& target, const ProviderSpec& spec);

/// One MaaS target's endpoint. Deterministic for a seed and a sequence of calls.
class Provider {
 public:
  /// Throws std::invalid_argument with check_provider's message when the spec is invalid.
  Provider(const Target& target, ProviderSpec spec, std::uint64_t seed);

  /// Calls the endpoint at `now` with a prompt of `input_tokens` tokens (its chain may cover fewer:
  /// tokens past it are never cached) that answers `output_tokens` tokens. `breakpoints` (Anthropic
  /// only, in prompt order: one at or before an earlier one adds nothing) say where cache_control sits;
  /// none: one 5-minute breakpoint at the end of the prompt. More than kMaxBreakpoints, or a 1-hour one after a
  /// 5-minute one, fails as the API does (Status::error). Throws std::invalid_argument for a token count
  /// outside 0 to 2^40. Times saturate at kNever (a draw from a very wide latency tail).
  [[nodiscard]] Attempt call(const Prompt& prompt, std::int64_t input_tokens, std::int64_t output_tokens, SimTime now,
                             ProcessingMode mode = ProcessingMode::online,
                             std::span<const Breakpoint> breakpoints = {});

  [[nodiscard]] const CacheRules& rules() const noexcept { return rules_; }
  /// Cache entries held: expired ones count until a write reuses their place (expiry is lazy).
  [[nodiscard]] std::int64_t cache_entries() const noexcept { return held_entries_; }

 private:
  struct Entry {
    std::uint64_t key = 0;  ///< the prefix's chain link; 0 = empty
    SimTime expires = 0;
    SimTime ttl = 0;
  };
  /// A continuously refilled token bucket, in fixed point: units of 1 / 60e6 token (a minute in us).
  struct Bucket {
    std::int64_t per_minute = 0;  ///< 0 = no limit
    std::int64_t level = 0;       ///< scaled
    SimTime at = 0;
  };

  [[nodiscard]] Entry* find(std::uint64_t key, SimTime now);
  void store(std::uint64_t key, SimTime now, SimTime ttl);
  void allocate(std::uint64_t sets);
  void grow(SimTime now);
  [[nodiscard]] std::int64_t automatic_cache(const Prompt& prompt, std::int64_t input_tokens, SimTime now);
  struct Written {
    std::int64_t read = 0, write_5m = 0, write_1h = 0;
  };
  [[nodiscard]] Written breakpoint_cache(const Prompt& prompt, std::int64_t input_tokens, SimTime now,
                                         std::span<const Breakpoint> breakpoints);
  [[nodiscard]] std::int64_t retry_after_ms(std::int64_t tokens, SimTime now);
  [[nodiscard]] double uniform();
  [[nodiscard]] std::pair<double, double> normals();
  void encode_usage(Attempt& a, std::int64_t input, std::int64_t output, const Written& w, ProcessingMode mode) const;

  turnout::Provider kind_;
  ProviderSpec spec_;
  CacheRules rules_;
  std::uint64_t seed_;
  std::uint64_t draws_ = 0;
  Bucket requests_;
  Bucket tokens_;
  std::vector<Entry> entries_;  // sets of kWays entries, allocated on the first write
  std::uint64_t bucket_mask_ = 0;
  std::uint64_t max_sets_ = 1;  // the cap, in sets
  std::int64_t held_entries_ = 0;
  double ttft_mu_ = 0, ttft_sigma_ = 0, rate_mu_ = 0, rate_sigma_ = 0;
};

}  // namespace turnout::sim
