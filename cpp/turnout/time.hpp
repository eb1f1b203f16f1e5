#pragma once
// Time as the core sees it: milliseconds since the epoch, always passed in, never read.

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "turnout/result.hpp"

namespace turnout {

/// Milliseconds since the Unix epoch. Time is always passed in, never read inside the core.
using TimeMs = std::int64_t;

/// The latest time a caller may give (the start of the year 10000): a time plus any window, TTL or
/// lease stays far inside 64 bits.
inline constexpr TimeMs kMaxTimeMs = 253'402'300'800'000;

/// A caller's time in seconds since the epoch (the wire's `now`, the Python API's `now=`) as TimeMs;
/// invalid_argument unless it is finite and within 0..kMaxTimeMs. Every edge that reads one uses this.
[[nodiscard]] inline Result<TimeMs> time_from_seconds(double seconds) {
  constexpr double kMaxSeconds = static_cast<double>(kMaxTimeMs) / 1000.0;
  if (!std::isfinite(seconds) || seconds < 0 || seconds > kMaxSeconds) {
    return make_error(ErrorCode::invalid_argument,
                      "now must be a finite time in seconds since the epoch, within 0..253402300800 (year 10000)");
  }
  return static_cast<TimeMs>(std::llround(seconds * 1000.0));
}

/// The longest outcome time (ttft_ms, latency_ms) a caller may report: a week. Anything longer is a
/// unit slip (seconds, microseconds) or hostile, and would overflow the ledger's sums of times.
inline constexpr std::int64_t kMaxOutcomeMs = 604'800'000;

/// A reported duration in ms as an integer; invalid_argument unless it is finite and within
/// 0..kMaxOutcomeMs. Every edge that reads one (the wire, the binding) uses this.
[[nodiscard]] inline Result<std::int64_t> duration_ms(double ms, std::string_view name) {
  if (!std::isfinite(ms) || ms < 0 || ms > static_cast<double>(kMaxOutcomeMs)) {
    return make_error(ErrorCode::invalid_argument,
                      std::string(name) + " must be a duration in ms within 0..604800000 (a week)");
  }
  return static_cast<std::int64_t>(std::llround(ms));
}

}  // namespace turnout
