// turnout._core.protocol: the wire protocol's names as cpp/turnout/protocol.hpp defines them, so the
// Python client never retypes a field, an op or an error code. Registered by module.cpp.

#include <pybind11/pybind11.h>

#include <string>

#include "turnout/protocol.hpp"

namespace py = pybind11;
using namespace turnout;

namespace {

/// The class of FIELD: one read-only attribute per wire field, whose value is the field's wire name.
struct WireFields {};

py::object field_names(py::module_& m) {
  py::class_<WireFields> cls(m, "WireFields", "The wire name of every field: FIELD.decision_id == 'decision_id'.");
  for (const std::string_view name : protocol::kFields) {
    const std::string value(name);
    cls.def_property_readonly(value.c_str(), [value](const WireFields&) { return value; });
  }
  cls.def("__iter__", [](const WireFields&) {
    py::list names;
    for (const std::string_view name : protocol::kFields) names.append(py::str(name.data(), name.size()));
    return py::iter(names);
  });
  cls.def("__repr__", [](const WireFields&) { return std::string("<turnout._core.protocol.FIELD>"); });
  return py::cast(WireFields{});
}

}  // namespace

void bind_protocol(py::module_& m) {
  py::module_ p = m.def_submodule("protocol", "The sidecar's wire protocol (docs/protocol.md): names and limits.");
  p.attr("VERSION") = protocol::kVersion;
  p.attr("MAX_MESSAGE_BYTES") = protocol::kMaxMessageBytes;
  // A client's fallback Router numbers its decisions LOCAL_ID_BIT | tag << LOCAL_TAG_SHIFT | sequence.
  p.attr("LOCAL_ID_BIT") = protocol::kLocalIdBit;
  p.attr("LOCAL_TAG_SHIFT") = protocol::kLocalTagShift;
  p.attr("LOCAL_TAG_MASK") = protocol::kLocalTagMask;
  py::list ops;
  py::list ring_ops;
  py::list read_only_ops;
  for (const auto& op : protocol::kOps) {
    ops.append(py::str(op.name.data(), op.name.size()));
    if (op.ring) ring_ops.append(py::str(op.name.data(), op.name.size()));
    if (op.socket && !op.writes) read_only_ops.append(py::str(op.name.data(), op.name.size()));
  }
  p.attr("OPS") = py::tuple(ops);
  p.attr("RING_OPS") = py::tuple(ring_ops);
  p.attr("READ_ONLY_OPS") = py::tuple(read_only_ops);
  p.attr("FIELD") = field_names(p);
  p.attr("ERROR_CODES") = m.attr("error_codes")();  // the one table, as bind_errors exports it
  // `import turnout._core.protocol` and `from turnout._core.protocol import FIELD` work too.
  py::module_::import("sys").attr("modules")["turnout._core.protocol"] = p;
}
