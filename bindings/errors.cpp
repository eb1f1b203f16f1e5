#include "errors.hpp"

#include <string>

namespace turnout::bindings {

void raise(const Error& e) {
  py::object exc = py::module_::import("turnout._errors").attr("error_for")(to_string(e.code), e.message);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

void bind_errors(py::module_& m) {
  m.def(
      "error_codes",
      [] {
        py::dict out;
        for (const auto& e : kErrorCodes) out[py::str(std::string(e.name))] = std::string(e.what);
        return out;
      },
      "The core's error table, in order: wire code -> what it means. turnout._errors maps each to a class.");
}

}  // namespace turnout::bindings
