// STAND-IN for turnout._core.protocol (issue 9): the interface the Python client is written against,
// until the real submodule (its names read from the sidecar's protocol definition) replaces this file.
// Registered by module.cpp.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "sidecar/server.hpp"
#include "turnout/result.hpp"

namespace py = pybind11;

namespace {

// The wire's field names the client uses (the envelope first), space-separated.
constexpr const char* kFields =
    "v op id ok error code message "
    "scenario key data_class input_tokens max_output_tokens token_ids text now "
    "decision_id target endpoint fallbacks reasons predicted_cost_usd reserved_cost_usd expected_cached_tokens "
    "cache_key config_version at "
    "status usage ttft_ms latency_ms accepted cost_usd duplicate fallback priced";

}  // namespace

void bind_protocol(py::module_& m) {
  auto p = m.def_submodule("protocol", "The wire protocol's names (stand-in).");
  p.attr("VERSION") = turnout::sidecar::kProtocolVersion;
  p.attr("MAX_MESSAGE_BYTES") = turnout::sidecar::kMaxMessageBytes;
  p.attr("OPS") = py::make_tuple("route", "explain", "report", "verdict", "stats", "health", "reload", "adopt");
  p.attr("RING_OPS") = py::make_tuple("adopt", "report", "verdict");
  py::dict fields;
  for (auto name : py::str(kFields).attr("split")()) fields[name] = name;
  p.attr("FIELD") = py::module_::import("types").attr("SimpleNamespace")(**fields);
  py::dict codes;
  for (const auto& e : turnout::kErrorCodes) codes[py::str(std::string(e.name))] = std::string(e.what);
  p.attr("ERROR_CODES") = codes;
}
