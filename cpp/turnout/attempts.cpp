#include "turnout/attempts.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace turnout {

static_assert(static_cast<std::size_t>(FailureClass::not_found) + 1 == kFailureClassCount,
              "a FailureClass is missing from kFailureClassCount");

FailureClass classify(Status status) noexcept {
  switch (status) {
    case Status::ok: return FailureClass::none;
    case Status::rate_limited: return FailureClass::rate_limited;
    case Status::error: return FailureClass::transient;
    case Status::timeout: return FailureClass::timeout;
    case Status::context_overflow: return FailureClass::context_overflow;
    case Status::content_filter: return FailureClass::content_filter;
  }
  return FailureClass::transient;
}

Status failure_status(FailureClass c) noexcept {
  switch (c) {
    case FailureClass::none: return Status::ok;
    case FailureClass::rate_limited: return Status::rate_limited;
    case FailureClass::timeout: return Status::timeout;
    case FailureClass::context_overflow: return Status::context_overflow;
    case FailureClass::content_filter: return Status::content_filter;
    case FailureClass::transient:
    case FailureClass::auth:
    case FailureClass::billing:
    case FailureClass::invalid_request:
    case FailureClass::not_found: return Status::error;
  }
  return Status::error;
}

const char* to_string(FailureClass c) noexcept {
  switch (c) {
    case FailureClass::none: return "none";
    case FailureClass::rate_limited: return "rate_limited";
    case FailureClass::transient: return "transient";
    case FailureClass::timeout: return "timeout";
    case FailureClass::context_overflow: return "context_overflow";
    case FailureClass::content_filter: return "content_filter";
    case FailureClass::auth: return "auth";
    case FailureClass::billing: return "billing";
    case FailureClass::invalid_request: return "invalid_request";
    case FailureClass::not_found: return "not_found";
  }
  return "?";
}

std::optional<FailureClass> failure_class_from_string(std::string_view name) noexcept {
  for (std::size_t i = 0; i < kFailureClassCount; ++i) {
    const auto c = static_cast<FailureClass>(i);
    if (name == to_string(c)) return c;
  }
  return std::nullopt;
}

const char* to_string(NextStep s) noexcept {
  switch (s) {
    case NextStep::served: return "served";
    case NextStep::retry: return "retry";
    case NextStep::fail_over: return "fail_over";
    case NextStep::give_up: return "give_up";
  }
  return "?";
}

Result<Ok> RetrySpec::validate() const {
  auto bad = [](const char* what) { return make_error(ErrorCode::invalid_argument, std::string("retry: ") + what); };
  if (base_backoff_ms < 0) return bad("base_backoff_ms must be >= 0");
  if (!(backoff_multiplier >= 1.0) || !std::isfinite(backoff_multiplier)) {
    return bad("backoff_multiplier must be a finite number >= 1");
  }
  if (max_backoff_ms < base_backoff_ms) return bad("max_backoff_ms must be >= base_backoff_ms");
  if (!(jitter >= 0.0 && jitter <= 1.0)) return bad("jitter must be within 0..1");
  if (max_retry_after_ms < 0) return bad("max_retry_after_ms must be >= 0");
  if (max_attempts == 0) return bad("max_attempts must be >= 1");
  return Ok{};
}

namespace {
// splitmix64: a tiny, well-mixed generator; the policy needs only jitter, deterministic per seed.
std::uint64_t next_random(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31U);
}
}  // namespace

AttemptPolicy::AttemptPolicy(RetrySpec spec, std::uint64_t seed) noexcept : spec_(spec), rng_(seed) {}

void AttemptPolicy::start(std::size_t candidates) noexcept {
  candidates_ = candidates;
  candidate_ = 0;
  retries_ = 0;
  attempts_ = 0;
}

double AttemptPolicy::uniform() noexcept {
  return static_cast<double>(next_random(rng_) >> 11U) * 0x1.0p-53;  // [0, 1)
}

std::int64_t AttemptPolicy::backoff_ms(std::uint32_t retry) const noexcept {
  const double b =
      static_cast<double>(spec_.base_backoff_ms) * std::pow(spec_.backoff_multiplier, retry > 0 ? retry - 1 : 0);
  return b >= static_cast<double>(spec_.max_backoff_ms) ? spec_.max_backoff_ms : static_cast<std::int64_t>(b);
}

TimeMs AttemptPolicy::jittered(std::int64_t backoff, TimeMs now) noexcept {
  const double scale = 1.0 - spec_.jitter * uniform();  // (1 - jitter, 1]
  return now + static_cast<std::int64_t>(std::llround(static_cast<double>(backoff) * scale));
}

bool AttemptPolicy::may_retry() const noexcept {
  // Each candidate after this one keeps one attempt of the request's max_attempts.
  const std::size_t later = candidates_ - candidate_ - 1;
  return retries_ < spec_.max_retries && attempts_ + later < spec_.max_attempts;
}

Step AttemptPolicy::fail_over(TimeMs now) noexcept {
  if (candidate_ + 1 >= candidates_ || attempts_ >= spec_.max_attempts) {
    return {NextStep::give_up, candidate_, now};
  }
  ++candidate_;
  retries_ = 0;
  return {NextStep::fail_over, candidate_, now};
}

Step AttemptPolicy::after_failure(FailureClass failure, std::int64_t retry_after_ms, TimeMs now) noexcept {
  ++attempts_;
  switch (failure) {
    case FailureClass::none: return {NextStep::served, candidate_, now};
    case FailureClass::content_filter:
    case FailureClass::invalid_request: return {NextStep::give_up, candidate_, now};
    case FailureClass::timeout:
    case FailureClass::context_overflow:
    case FailureClass::auth:
    case FailureClass::billing:
    case FailureClass::not_found: return fail_over(now);
    case FailureClass::rate_limited:
      if (may_retry()) {
        if (retry_after_ms > spec_.max_retry_after_ms) return fail_over(now);  // waiting costs more than moving
        ++retries_;
        if (retry_after_ms >= 0) return {NextStep::retry, candidate_, now + retry_after_ms};
        return {NextStep::retry, candidate_, jittered(backoff_ms(retries_), now)};
      }
      return fail_over(now);
    case FailureClass::transient:
      if (may_retry()) {
        ++retries_;
        return {NextStep::retry, candidate_, jittered(backoff_ms(retries_), now)};
      }
      return fail_over(now);
  }
  return fail_over(now);
}

Step AttemptPolicy::after_refusal(ErrorCode code, TimeMs now) noexcept {
  // Full pools and open breakers clear with time; a budget, an unknown name or a bad request do not.
  if (code == ErrorCode::no_eligible_target && retries_ < spec_.max_route_retries) {
    ++retries_;
    return {NextStep::retry, 0, jittered(backoff_ms(retries_), now)};
  }
  return {NextStep::give_up, 0, now};
}

}  // namespace turnout
