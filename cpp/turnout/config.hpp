#pragma once
// The routing table: targets, scenarios and their policies, validated and immutable once loaded.
// A Config is shared read-only (std::shared_ptr<const Config>) by every decision made against it.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "turnout/migration.hpp"
#include "turnout/money.hpp"
#include "turnout/result.hpp"

namespace turnout {

inline constexpr std::uint32_t kNone = 0xFFFFFFFFu;  ///< "no index" in index fields

enum class TargetKind : std::uint8_t { maas, self_hosted };

/// Whose usage object and cache semantics a target speaks.
enum class Provider : std::uint8_t { openai, anthropic, gemini, deepseek, openrouter, vllm, sglang };

[[nodiscard]] const char* to_string(TargetKind kind) noexcept;
[[nodiscard]] const char* to_string(Provider provider) noexcept;
[[nodiscard]] std::optional<Provider> provider_from_string(std::string_view name) noexcept;

/// Token prices of one tier (picodollars per token).
struct PriceRates {
  TokenPrice input;
  TokenPrice output;
  TokenPrice cache_read;
  TokenPrice cache_write_5m;
  TokenPrice cache_write_1h;
};

/// Whether a request is served online or through a provider's batch API (priced at its batch prices).
enum class ProcessingMode : std::uint8_t { online, batch };

/// A higher-rate tier applied when the prompt (all input tokens, cached or not) exceeds a size.
struct PriceTier {
  std::int64_t above_input_tokens = 0;
  PriceRates rates;
  PriceRates batch;  ///< its batch prices, when the catalog has them (PriceCatalog::batch_rates)
};

/// Everything needed to price one MaaS request exactly. Units in config are always USD per Mtok.
struct PriceCatalog {
  bool present = false;  ///< false: the target has no token price (self-hosted)
  PriceRates base;
  PriceRates batch;  ///< batch prices per token kind (batch_rates): a price list that states them
  /// true: batch mode prices at `batch` (and each tier's `batch`); false: at the online rates less
  /// batch_discount_pct.
  bool batch_rates = false;
  std::vector<PriceTier> tiers;         ///< ascending by above_input_tokens
  TokenPrice cache_storage_per_hour;    ///< explicit-cache storage, per token per hour (Gemini)
  std::int64_t batch_discount_pct = 0;  ///< applied to batch-mode requests without batch_rates (0..100)

  /// Rates in force for a prompt of `input_tokens` tokens (highest tier whose threshold is exceeded),
  /// in `mode` (the batch prices when the catalog states them; else the online ones).
  [[nodiscard]] const PriceRates& rates_for(std::int64_t input_tokens,
                                            ProcessingMode mode = ProcessingMode::online) const noexcept;
};

/// Provider prompt-cache behaviour, used to model MaaS cache holders.
struct CacheSpec {
  std::int64_t ttl_s = 300;
  std::int64_t min_prefix_tokens = 1024;
};

/// Consecutive-failure and error-rate thresholds of a target's (or replica's) circuit breaker.
struct BreakerSpec {
  std::uint32_t consecutive_failures = 5;
  double error_rate = 0.5;          ///< open when errors / outcomes in the window reaches this
  std::uint32_t min_requests = 20;  ///< ... and at least this many outcomes were seen in the window
  std::int64_t window_ms = 60'000;
  std::int64_t cooldown_ms = 30'000;  ///< open -> half-open after this long
};

/// GPU cost of a self-hosted pool and the throughput that turns it into a marginal cost per request.
struct SelfHostedCost {
  std::int64_t gpus_per_replica = 1;
  Money usd_per_gpu_hour;                 ///< as Money per GPU-hour
  std::int64_t prefill_tokens_per_s = 0;  ///< per replica; 0 = unknown (marginal cost not predicted)
  std::int64_t decode_tokens_per_s = 0;   ///< per replica, aggregate over concurrent streams
  /// Fully loaded extras, per month: staging, test/debug, canary, reserve, engineering, ...
  std::vector<std::pair<std::string, Money>> monthly_overheads;
};

/// A pool's KV cache as the cache directory models it, and the cache-aware ranking's weight.
struct KvSpec {
  std::int64_t block_size = 16;
  std::int64_t capacity_blocks = 0;  ///< per replica; 0 = unknown (the directory bounds it at 2^18)
  std::int64_t ttl_s = 120;          ///< approximate mode: forget a learned block after this long
  /// Replica cost = overlap_weight x blocks still to prefill + active blocks (Dynamo's form). Dynamo's
  /// default 1.0 lets load dominate; 8 (with the slack guard) measured best in bench/routing_quality.
  double overlap_weight = 8.0;
  /// Only replicas within this many in-flight requests of the least busy compete on cost (-1: off).
  std::int64_t balance_slack = 3;
  /// ... and only those within this many placements of the pool's mean recent load (placements over
  /// the last kRecentWindowPerReplica x replicas, decayed; RouterState::recent_load) (-1: off). What
  /// spreads sequential traffic, which leaves every in-flight count at 0.
  std::int64_t recent_slack = 6;
  bool precise = false;  ///< every replica names a kv_events publisher
};

struct Replica {
  std::string endpoint;
  std::string kv_events;  ///< ZeroMQ PUB endpoint of the engine's KV events ("" = approximate mode)
  std::string kv_replay;
  std::int64_t max_inflight = 1;
};

/// How the worker SDK calls a target (routing never reads it). Credentials never sit in the table:
/// only the name of the environment variable or of the file that holds the key.
struct CallSpec {
  std::string api;                    ///< chat_completions | responses | messages | generate_content
  std::string base_url;               ///< MaaS: the API root as the provider's SDK takes it; "" for self-hosted
  std::string api_key_env;            ///< the variable holding the key ("" = none: a self-hosted pool without keys)
  std::string api_key_file;           ///< or an absolute path to a file holding it (takes precedence when set)
  std::int64_t timeout_ms = 600'000;  ///< a whole attempt (the common provider SDKs' 10 minutes)
  std::int64_t first_token_timeout_ms = 60'000;  ///< a stream's first text, a non-stream's reply headers
};

/// A provider's own API, base URL and key variable: a MaaS target's defaults.
struct ProviderDefaults {
  std::string_view api;
  std::string_view base_url;
  std::string_view api_key_env;
};
[[nodiscard]] ProviderDefaults provider_defaults(Provider provider) noexcept;
/// The APIs the SDK speaks for a provider ("chat_completions" first: the default when it has several).
[[nodiscard]] std::vector<std::string_view> provider_apis(Provider provider);

struct Target {
  std::string name;
  std::uint64_t name_hash = 0;  ///< XXH3 of the name: the target's identity in sticky hashing
  TargetKind kind = TargetKind::maas;
  Provider provider = Provider::openai;
  std::string model;
  std::uint32_t region = kNone;       ///< index into Config::regions, kNone when unset
  std::uint64_t data_class_mask = 0;  ///< bit i set: Config::data_classes[i] may be sent here
  std::int64_t context_window = 0;
  PriceCatalog price;
  CacheSpec cache;
  BreakerSpec breaker;
  SelfHostedCost cost;
  KvSpec kv;
  std::vector<Replica> replicas;  ///< self-hosted only
  CallSpec call;
  int line = 0;  ///< where it was declared, for messages
};

struct Route {
  std::uint32_t target = kNone;
  std::uint32_t weight = 0;
};

struct Spillover {
  std::uint32_t target = kNone;
  double when_inflight_ratio = 0.9;
};

struct Scenario {
  std::string name;
  std::string owner;                 ///< the team that owns it ("" = unset): decision records and ledgers name it
  std::string description;           ///< free text ("" = unset)
  std::uint32_t data_class = kNone;  ///< index into Config::data_classes
  std::uint64_t region_mask = 0;     ///< 0 = any region; else the target's region bit must be set
  std::int64_t ttft_p95_ms = 0;
  std::int64_t latency_p95_ms = 0;
  double min_accept_rate = 0.0;
  ProcessingMode mode = ProcessingMode::online;
  std::int64_t max_output_tokens = 1024;  ///< assumed when a request does not say (budget worst case)
  std::vector<Route> routes;              ///< weights sum to 100
  std::vector<std::uint32_t> fallback;    ///< ordered target indices
  std::optional<Spillover> spillover;
  std::optional<Money> budget_per_day;
  bool prefix_affinity = false;
  /// How long a decision holds its in-flight slot (and probe, active blocks, budget reservation)
  /// without an outcome; 0 = derived (inflight_lease_ms()). Its verdict window is decision_ttl.
  std::int64_t inflight_lease_ms = 0;
  /// Its migration from a baseline to a candidate target (routes are then [baseline, candidate],
  /// weighted by the run's phase and step, not by the table).
  std::optional<MigrationSpec> migration;
};

/// Lease of an unreported decision when the table does not set one: a request still running past it
/// would have outlived the 10-minute default timeout of the common provider SDKs.
inline constexpr std::int64_t kDefaultInflightLeaseMs = 600'000;
/// Shortest derived lease: a latency SLO of a few seconds must not free slots of requests still queued.
inline constexpr std::int64_t kMinDerivedLeaseMs = 30'000;

/// A scenario's in-flight lease: its `inflight_lease_ms`, else max(4 x latency_p95_ms, 30 s) when it
/// has a latency SLO, else kDefaultInflightLeaseMs.
[[nodiscard]] constexpr std::int64_t inflight_lease_ms(const Scenario& s) noexcept {
  if (s.inflight_lease_ms > 0) return s.inflight_lease_ms;
  if (s.latency_p95_ms > 0)
    return s.latency_p95_ms * 4 > kMinDerivedLeaseMs ? s.latency_p95_ms * 4 : kMinDerivedLeaseMs;
  return kDefaultInflightLeaseMs;
}

struct Config {
  int schema_version = 1;
  std::uint64_t content_hash = 0;  ///< XXH3 of the file bytes: the config version decisions carry
  std::string source;              ///< path it was loaded from
  std::string text;                ///< the bytes it was loaded from (the sidecar publishes them to clients)
  std::vector<std::string> data_classes;
  std::vector<std::string> regions;
  std::vector<Target> targets;
  std::vector<Scenario> scenarios;
  std::unordered_map<std::string, std::uint32_t> target_index;
  std::unordered_map<std::string, std::uint32_t> scenario_index;
  std::unordered_map<std::string, std::uint32_t> data_class_index;
  /// What the loader accepted only after changing it ("path:line:col: what it did"), e.g. a LiteLLM
  /// price with float noise rounded to the picodollar. The sidecar logs them; Python: Config.warnings.
  std::vector<std::string> warnings;

  [[nodiscard]] std::uint32_t find_target(std::string_view name) const;    ///< kNone if absent
  [[nodiscard]] std::uint32_t find_scenario(std::string_view name) const;  ///< kNone if absent
  [[nodiscard]] std::uint32_t find_data_class(std::string_view name) const;
  [[nodiscard]] std::size_t replica_count() const;  ///< over all targets
};

using ConfigPtr = std::shared_ptr<const Config>;

/// Loads and validates a YAML routing table. A malformed one is config_invalid, "path:line:col: what is
/// wrong; what is expected"; a file that cannot be read is not_found, permission_denied or io_error,
/// "path: cannot open: <the OS reason>".
[[nodiscard]] Result<ConfigPtr> load_config_file(const std::string& path);
/// Same, from text (`source` names it in messages).
[[nodiscard]] Result<ConfigPtr> load_config_text(std::string_view text, const std::string& source);

}  // namespace turnout
