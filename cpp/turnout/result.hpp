#pragma once
// Errors are values inside the core: every fallible call returns Result<T>.

#include <array>
#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace turnout {

/// What went wrong, as a stable code. Its name is the wire's error code and the key of the one Python
/// mapping (`turnout._errors`); kErrorCodes below is the table every edge reads.
enum class ErrorCode : std::uint8_t {
  config_invalid,
  unknown_scenario,
  unknown_target,
  no_eligible_target,
  budget_exhausted,
  invalid_argument,
  unknown_decision,
  target_not_allowed,
  usage_invalid,
  price_missing,
  unavailable,
  not_found,
  io_error,
  permission_denied,
  busy,
  incompatible_layout,
  bad_message,
  unknown_op,
  too_large,
  too_deep,
  no_migration,
  migration_conflict,
  internal,
};

struct ErrorCodeInfo {
  ErrorCode code;
  std::string_view name;  ///< the wire code
  std::string_view what;  ///< what failed, for docs and --help
};

/// The one error table, in enum order (checked below).
inline constexpr std::array kErrorCodes{
    ErrorCodeInfo{ErrorCode::config_invalid, "config_invalid", "the routing table is malformed (file:line:col)"},
    ErrorCodeInfo{ErrorCode::unknown_scenario, "unknown_scenario", "a scenario the table does not have"},
    ErrorCodeInfo{ErrorCode::unknown_target, "unknown_target", "a target the table does not have"},
    ErrorCodeInfo{ErrorCode::no_eligible_target, "no_eligible_target",
                  "every target was filtered out (data class, context, breaker, capacity)"},
    ErrorCodeInfo{ErrorCode::budget_exhausted, "budget_exhausted",
                  "the scenario's budget cannot cover the worst-case cost"},
    ErrorCodeInfo{ErrorCode::invalid_argument, "invalid_argument", "a request or outcome field is out of range"},
    ErrorCodeInfo{ErrorCode::unknown_decision, "unknown_decision",
                  "a report or verdict for a decision that is not known (or expired)"},
    ErrorCodeInfo{ErrorCode::target_not_allowed, "target_not_allowed",
                  "a report names a target that was not the decision's or a fallback"},
    ErrorCodeInfo{ErrorCode::usage_invalid, "usage_invalid",
                  "a provider usage object is missing fields or inconsistent"},
    ErrorCodeInfo{ErrorCode::price_missing, "price_missing", "a usage needs a price the catalog does not have"},
    ErrorCodeInfo{ErrorCode::unavailable, "unavailable",
                  "the sidecar or its fast path cannot take this now (not running, no table, ring full)"},
    ErrorCodeInfo{ErrorCode::not_found, "not_found", "a file or shared-memory segment does not exist"},
    ErrorCodeInfo{ErrorCode::io_error, "io_error",
                  "an OS call failed: open, read, ftruncate, mmap, a socket or a thread (the OS reason follows)"},
    ErrorCodeInfo{ErrorCode::permission_denied, "permission_denied",
                  "a file, segment or socket is not ours, or its mode lets others in; or an op that writes, on a "
                  "read-only endpoint"},
    ErrorCodeInfo{ErrorCode::busy, "busy",
                  "it is held or running already (a live sidecar's lock, a started subscriber)"},
    ErrorCodeInfo{ErrorCode::incompatible_layout, "incompatible_layout",
                  "a segment written by another build or layout version"},
    ErrorCodeInfo{ErrorCode::bad_message, "bad_message", "a wire message is not a valid request (type, field)"},
    ErrorCodeInfo{ErrorCode::unknown_op, "unknown_op", "a wire request names an op the protocol does not have"},
    ErrorCodeInfo{ErrorCode::too_large, "too_large", "a wire message or one of its fields is over its limit"},
    ErrorCodeInfo{ErrorCode::too_deep, "too_deep", "a wire message nests deeper than the limit"},
    ErrorCodeInfo{ErrorCode::no_migration, "no_migration",
                  "a migration command for a scenario with no migration block"},
    ErrorCodeInfo{ErrorCode::migration_conflict, "migration_conflict",
                  "the migration's phase does not allow the command (resume of a canary that is not paused; "
                  "anything but status once it was promoted or aborted)"},
    ErrorCodeInfo{ErrorCode::internal, "internal", "a bug: the message says where"},
};

[[nodiscard]] constexpr bool error_table_in_order() noexcept {
  for (std::size_t i = 0; i < kErrorCodes.size(); ++i) {
    if (static_cast<std::size_t>(kErrorCodes[i].code) != i) return false;
  }
  return static_cast<std::size_t>(ErrorCode::internal) + 1 == kErrorCodes.size();
}
static_assert(error_table_in_order(), "kErrorCodes must list every ErrorCode once, in enum order");

/// The code's wire name ("unknown_scenario").
[[nodiscard]] constexpr const char* to_string(ErrorCode code) noexcept {
  return kErrorCodes[static_cast<std::size_t>(code)].name.data();
}

/// The code of a wire name, if it is one.
[[nodiscard]] constexpr std::optional<ErrorCode> error_code_from_string(std::string_view name) noexcept {
  for (const auto& e : kErrorCodes) {
    if (e.name == name) return e.code;
  }
  return std::nullopt;
}

struct Error {
  ErrorCode code;
  std::string message;
};

/// A value or an Error. Small on purpose: C++20 has no std::expected.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor): implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  [[nodiscard]] T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  [[nodiscard]] const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  [[nodiscard]] T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  [[nodiscard]] const Error& error() const& {
    assert(!ok());
    return std::get<1>(v_);
  }
  [[nodiscard]] Error&& error() && {
    assert(!ok());
    return std::get<1>(std::move(v_));
  }

  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> v_;
};

/// The value of an operation that has nothing to return.
struct Ok {};

inline Error make_error(ErrorCode code, std::string message) { return Error{code, std::move(message)}; }

/// The code an OS error number stands for: a missing file is not_found, a refused one
/// permission_denied, anything else io_error.
[[nodiscard]] constexpr ErrorCode error_code_of_errno(int err) noexcept {
  switch (err) {
    case ENOENT: return ErrorCode::not_found;
    case EACCES:
    case EPERM: return ErrorCode::permission_denied;
    default: return ErrorCode::io_error;
  }
}

/// A failed OS call: "<what>: <the OS reason>" under the code its error number stands for.
inline Error os_error(int err, std::string what) {
  return make_error(error_code_of_errno(err), std::move(what) + ": " + std::strerror(err));
}

}  // namespace turnout
