// Bindings of the sidecar's client-side pieces (shared-memory view). Registered by module.cpp.

#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_sidecar(py::module_& m) { (void)m; }
