#pragma once
// Errors are values inside the core: every fallible call returns Result<T>.

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace switchyard {

/// What went wrong, as a stable code the bindings and the wire map to exceptions / error replies.
enum class ErrorCode {
  config_invalid,      ///< the routing table is malformed (message starts with file:line:col)
  unknown_scenario,    ///< route() named a scenario the table does not have
  unknown_target,      ///< a target name that the table does not have
  no_eligible_target,  ///< every target was filtered out (data class, context, breaker, ...)
  budget_exhausted,    ///< the scenario's budget cannot cover the worst-case cost
  invalid_argument,    ///< a request or outcome field is out of range
  unknown_decision,    ///< report() for a decision id the router does not know (or expired)
  target_not_allowed,  ///< report() names a target that was not the decision or its fallbacks
  usage_invalid,       ///< a provider usage object is missing fields or inconsistent
  price_missing,       ///< a usage needs a price the catalog does not have
  unavailable,         ///< the sidecar's fast path cannot take this now (no table mapped, ring full)
};

[[nodiscard]] const char* to_string(ErrorCode code) noexcept;

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

}  // namespace switchyard
