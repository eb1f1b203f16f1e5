#pragma once
// The one translator from the core's Error to a Python exception: the class comes from the one
// mapping, turnout._errors.ERRORS (wire code -> class), so every binding module raises alike.

#include <pybind11/pybind11.h>

#include <utility>

#include "turnout/result.hpp"

namespace turnout::bindings {

namespace py = pybind11;

/// Raises turnout._errors.error_for(code, message): the class of the Error's code, with `.code` set.
[[noreturn]] void raise(const Error& e);

/// The value of `r`, or raises its Error.
template <class T>
T unwrap(Result<T>&& r) {
  if (!r) raise(r.error());
  return std::move(r).value();
}

/// Registers `error_codes()`: the core's error table (kErrorCodes), wire name -> what it means.
void bind_errors(py::module_& m);

}  // namespace turnout::bindings
