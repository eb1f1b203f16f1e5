// Bindings of the sidecar's client-side pieces: the read-only view of its shared-memory segment
// (turnout.attach). Registered by module.cpp.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "rows.hpp"
#include "turnout/client/counters.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/shm/private_file.hpp"

namespace py = pybind11;
using namespace turnout;
using namespace turnout::bindings;

void bind_sidecar(py::module_& m) {
  py::class_<client::SegmentReader>(m, "SegmentView",
                                    "A read-only mapping of a sidecar's shared-memory segment (no round trip).")
      .def_property_readonly("name", &client::SegmentReader::name)
      .def(
          "counters",
          [](client::SegmentReader& r, double timeout_s) {
            Result<std::vector<client::NamedCounters>> rows = [&] {
              py::gil_scoped_release release;
              return r.counters(static_cast<int>(timeout_s * 1000.0));
            }();
            if (!rows) raise(rows.error());
            py::list out;
            for (const auto& row : rows.value()) {
              out.append(
                  counter_row_dict(row.scenario, row.target, row.kind, row.provider, row.counters, row.objectives));
            }
            return out;
          },
          py::arg("timeout_s") = 1.0,
          "Ledger rows per scenario x target, the same dicts as Router.counters(); a consistent snapshot "
          "of each row (seqlock).")
      .def(
          "info",
          [](const client::SegmentReader& r) {
            const auto h = r.header();
            py::dict d;
            d["pid"] = h.creator_pid;
            d["generation"] = h.generation;
            d["heartbeat"] = static_cast<double>(h.heartbeat_ms) / 1000.0;
            char buf[17];
            std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h.config_version));
            d["config_version"] = std::string(buf);
            d["ready"] = h.ready;
            return d;
          },
          "The segment header: owner pid, generation, last heartbeat (seconds), config version, ready.");

  // FastPath is bound by module.cpp; what the sidecar tells its ring is added here.
  py::reinterpret_borrow<py::class_<client::FastClient>>(m.attr("FastPath"))
      .def(
          "feedback",
          [](client::FastClient& f) {
            const client::RingFeedback fb = f.feedback();
            py::list rejected;
            for (const auto& r : fb.rejected) {
              py::dict x;
              x["record"] = r.record;
              x["decision_id"] = r.decision_id;
              x["op"] = r.op ? py::object(py::str(std::string(protocol::to_string(*r.op)))) : py::object(py::none());
              x["code"] = std::string(to_string(r.code));
              rejected.append(x);
            }
            py::dict d;
            d["posted"] = fb.posted;
            d["settled"] = fb.settled;
            d["missed"] = fb.missed;
            d["rejected"] = rejected;
            return d;
          },
          "What the sidecar made of this ring's records: `posted` (the last record's number), `settled` "
          "(records up to it are applied or refused), the records it refused since the last call "
          "(record, decision_id, op, code) and `missed` (refusals overwritten before they were read).");

  m.def(
      "default_endpoint", [] { return unwrap(shm::default_endpoint(false)); },
      "The sidecar's default ipc endpoint, the daemon's own rule (never a shared directory such as /tmp).");
  m.def(
      "check_private_socket", [](const std::string& path) { unwrap(shm::check_private_socket(path)); }, py::arg("path"),
      "Raises PermissionError unless the ipc socket `path` (if it exists) is ours, mode 0600, in a directory "
      "no other user can write.");
  m.def(
      "attach_segment", [](const std::string& name) { return unwrap(client::SegmentReader::attach(name)); },
      py::arg("name"), "Maps the sidecar segment `name` read-only.");
}
