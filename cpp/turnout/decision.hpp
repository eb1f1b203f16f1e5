#pragma once
// The words of a routing decision: what a worker asks (Request), what the core answers (Decision) and
// what the worker reports afterwards (Outcome).

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "turnout/config.hpp"
#include "turnout/money.hpp"
#include "turnout/time.hpp"

namespace turnout {

struct Request {
  std::uint32_t scenario = kNone;
  std::string_view key;                      ///< sticky key (user, conversation); empty = none
  std::uint32_t data_class = kNone;          ///< extra data class of this request (kNone = scenario's only)
  std::int64_t input_tokens = -1;            ///< -1 = unknown
  std::int64_t max_output_tokens = -1;       ///< -1 = the scenario's max_output_tokens
  std::int64_t expected_cached_tokens = 0;   ///< a caller's own estimate; the directory's wins when larger
  std::span<const std::uint32_t> token_ids;  ///< the prompt's token ids, if known (prefix affinity)
  std::string_view text;                     ///< else its canonical text
  TimeMs now = 0;
};

/// Blocks of a MaaS prefix for the MaaS cache directory: providers cache in 128-token steps.
inline constexpr std::int64_t kMaasBlockTokens = 128;

/// Why a decision looks the way it does. `target` says which target a reason is about.
enum class ReasonCode : std::uint8_t {
  weight,           ///< picked by the weighted, sticky split (value: weight %)
  spillover,        ///< the self-hosted pool was at its in-flight threshold (value: in-flight per mille)
  fallback,         ///< no route was eligible; the fallback chain supplied the target
  boundary,         ///< filtered: data class not allowed there
  region,           ///< filtered: outside the scenario's regions
  context_window,   ///< filtered: prompt + max output does not fit (value: tokens needed)
  breaker_open,     ///< filtered: circuit breaker open
  half_open_probe,  ///< chosen as the half-open breaker's single probe
  saturated,        ///< filtered: every replica at max_inflight
  budget,           ///< filtered: the scenario's daily budget cannot cover the worst case
  least_loaded,     ///< replica picked by lowest in-flight ratio (value: replica index)
  prefix_overlap,   ///< replica picked by cached prefix against load (value: replica index)
  affinity,         ///< the target holds a warm prefix of this prompt (value: cached tokens)
};

[[nodiscard]] const char* to_string(ReasonCode code) noexcept;

struct Reason {
  ReasonCode code;
  std::uint32_t target = kNone;
  std::int64_t value = 0;
};

/// A reason as people read it, with its target's name and value ("weight:llama-70b (90%)"): the text
/// of Decision.reasons in Python and of `reasons` on the wire.
[[nodiscard]] std::string reason_text(const Config& config, const Reason& reason);

/// A place to send the request: a target, and for self-hosted targets one replica of its pool.
struct Placement {
  std::uint32_t target = kNone;
  std::uint32_t replica = kNone;  ///< index into Target::replicas, kNone for MaaS
};

struct Decision {
  std::uint64_t id = 0;
  std::uint32_t scenario = kNone;
  Placement placement;
  std::vector<Placement> fallbacks;  ///< ordered, already filtered by the same constraints
  std::vector<Reason> reasons;
  Money predicted_cost;  ///< expected: input (its warm part as cache reads) + max output
  Money
      reserved_cost;  ///< what the budget reserved: the worst case (cache writes at their dearest); 0 without a budget
  std::int64_t expected_cached_tokens = 0;
  std::uint64_t cache_key = 0;        ///< prefix family (first <= 1024 tokens): provider cache key; 0 = none
  std::vector<std::uint64_t> prefix;  ///< the chosen target's block chain, for the directory to learn
  std::int64_t active_blocks = 0;     ///< this request's blocks, counted as load on its replica
  bool spilled = false;               ///< the target is the spillover target, taken because the pool was full
  std::uint64_t config_version = 0;
  TimeMs at = 0;
};

/// How a call to a target ended, as the worker saw it.
enum class Status : std::uint8_t { ok, error, timeout, rate_limited, context_overflow, content_filter };
inline constexpr std::size_t kStatusCount = 6;

[[nodiscard]] const char* to_string(Status status) noexcept;
[[nodiscard]] std::optional<Status> status_from_string(std::string_view name) noexcept;
/// Failures that speak about the target's health (and so feed its circuit breaker).
[[nodiscard]] constexpr bool counts_against_breaker(Status s) noexcept {
  return s == Status::error || s == Status::timeout || s == Status::rate_limited;
}

}  // namespace turnout
