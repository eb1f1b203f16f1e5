#pragma once
// The one retry/fallback policy: after each attempt at a decision's target (then its fallbacks, in
// order) it says what the worker does next. The simulator and the production worker SDK both call it,
// so a replay's fallbacks are the ones production would make. No I/O and no clock: times are passed in.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "turnout/decision.hpp"
#include "turnout/result.hpp"

namespace turnout {

/// What an attempt's outcome means for the policy (one class per way of acting on it).
enum class FailureClass : std::uint8_t {
  none,              ///< ok: the request is served
  rate_limited,      ///< 429: wait its Retry-After (or back off), retry the same target
  transient,         ///< overloaded / server error: back off, retry the same target, then fail over
  timeout,           ///< fail over at once (the attempt already took the whole timeout)
  context_overflow,  ///< this target's window is too small: fail over; give up when none is left
  content_filter,    ///< the prompt itself is refused: give up (pass the refusal through)
  auth,              ///< 401/403: this target's key is wrong: fail over at once, never retry it
  billing,           ///< 402, quota or credit exhausted: the account, not the request: fail over at once
  invalid_request,   ///< any other 4xx: the request itself is wrong: give up (pass the error through)
  not_found,         ///< 404, a redirect, a target this worker's table lacks: this target cannot take it:
                     ///< fail over at once
};
inline constexpr std::size_t kFailureClassCount = 10;

/// The class of an attempt's status (a simulated attempt knows only its status).
[[nodiscard]] FailureClass classify(Status status) noexcept;
/// The status the ledger counts for an attempt that failed with `c` (auth, billing, transient and
/// invalid_request are errors; the others have a status of their own).
[[nodiscard]] Status failure_status(FailureClass c) noexcept;
[[nodiscard]] const char* to_string(FailureClass c) noexcept;
[[nodiscard]] std::optional<FailureClass> failure_class_from_string(std::string_view name) noexcept;

/// Documented defaults of the retry policy.
struct RetrySpec {
  std::uint32_t max_retries = 2;             ///< retries of the same target after rate_limited / transient
  std::int64_t base_backoff_ms = 250;        ///< first backoff
  double backoff_multiplier = 2.0;           ///< each retry of a target waits this much longer
  std::int64_t max_backoff_ms = 10'000;      ///< cap of one backoff (before jitter)
  double jitter = 0.5;                       ///< a backoff is drawn uniformly in [(1 - jitter) x b, b]
  std::int64_t max_retry_after_ms = 60'000;  ///< a longer Retry-After fails over instead of waiting
  std::uint32_t max_route_retries = 3;       ///< retries of a route the router refused (saturated, breakers)
  std::uint32_t max_attempts = 16;           ///< attempts at targets per request, over all targets

  /// invalid_argument naming the first field out of range.
  [[nodiscard]] Result<Ok> validate() const;
};

/// What the worker does next.
enum class NextStep : std::uint8_t {
  served,     ///< the last attempt succeeded: done
  retry,      ///< wait until `at`, then call the same target again (or route again after a refusal)
  fail_over,  ///< call the next candidate (`candidate`) now
  give_up,    ///< done, unserved: the last failure is the request's answer
};

[[nodiscard]] const char* to_string(NextStep s) noexcept;

struct Step {
  NextStep next = NextStep::served;
  std::size_t candidate = 0;  ///< the candidate to call: 0 = the decision's placement, i = fallbacks[i - 1]
  TimeMs at = 0;              ///< when to call it
};

/// The policy's state for one request. Reusable: start() resets it (no allocation, ever).
class AttemptPolicy {
 public:
  explicit AttemptPolicy(RetrySpec spec = {}, std::uint64_t seed = 0) noexcept;

  /// A new request whose decision offers `candidates` places (its placement + its fallbacks).
  void start(std::size_t candidates) noexcept;
  /// After an attempt at the current candidate ended with `status` at `now` (`retry_after_ms` >= 0 when
  /// a 429 said how long to wait): what to do next. The current candidate moves on with fail_over.
  /// A retry never spends the attempts the remaining candidates need (one each, under max_attempts).
  [[nodiscard]] Step after_attempt(Status status, std::int64_t retry_after_ms, TimeMs now) noexcept {
    return after_failure(classify(status), retry_after_ms, now);
  }
  /// The same, for a worker that knows the failure's class (an HTTP status and body say more than a
  /// Status: auth, billing and invalid_request have no Status of their own).
  [[nodiscard]] Step after_failure(FailureClass failure, std::int64_t retry_after_ms, TimeMs now) noexcept;
  /// After the router refused to route (`code`) at `now`: retry (a full pool or open breakers clear
  /// with time) or give up (budget, a request no target can take, bad input).
  [[nodiscard]] Step after_refusal(ErrorCode code, TimeMs now) noexcept;

  [[nodiscard]] std::size_t candidate() const noexcept { return candidate_; }
  /// Attempts made at targets so far (retries included).
  [[nodiscard]] std::uint32_t attempts() const noexcept { return attempts_; }
  /// Whether the current candidate is not the decision's own placement (a fallback serves it).
  [[nodiscard]] bool on_fallback() const noexcept { return candidate_ > 0; }
  [[nodiscard]] const RetrySpec& spec() const noexcept { return spec_; }
  /// The backoff before retry number `retry` (1-based) of one target, before jitter.
  [[nodiscard]] std::int64_t backoff_ms(std::uint32_t retry) const noexcept;

 private:
  [[nodiscard]] Step fail_over(TimeMs now) noexcept;
  [[nodiscard]] bool may_retry() const noexcept;
  [[nodiscard]] TimeMs jittered(std::int64_t backoff, TimeMs now) noexcept;
  [[nodiscard]] double uniform() noexcept;

  RetrySpec spec_;
  std::uint64_t rng_;
  std::size_t candidates_ = 0;
  std::size_t candidate_ = 0;
  std::uint32_t retries_ = 0;  // of the current candidate (or of the route, before any decision)
  std::uint32_t attempts_ = 0;
};

/// The place candidate `i` of a decision stands for (0 = its placement, i = fallbacks[i - 1]).
[[nodiscard]] inline const Placement& candidate_placement(const Decision& d, std::size_t i) noexcept {
  return i == 0 ? d.placement : d.fallbacks[i - 1];
}

}  // namespace turnout
