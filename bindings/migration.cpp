// The in-process Router's migration calls (turnout.Router.migrations, migration_command,
// migration_tick). Each status and transition is encoded by the wire's own encoders
// (turnout/protocol.hpp) and handed over as the same dicts a sidecar's `migration` reply gives, so
// a field is named once. Registered by module.cpp, after the Router class.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "errors.hpp"
#include "turnout/protocol.hpp"
#include "turnout/router.hpp"

namespace py = pybind11;
using namespace turnout;
using namespace turnout::bindings;

namespace {

/// A msgpack value as Python: maps to dicts, arrays to lists (what the encoders write: no bin, no ext).
py::object to_python(const msgpack::object& o) {
  switch (o.type) {
    case msgpack::type::NIL: return py::none();
    case msgpack::type::BOOLEAN: return py::bool_(o.via.boolean);
    case msgpack::type::POSITIVE_INTEGER: return py::int_(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return py::int_(o.via.i64);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return py::float_(o.via.f64);
    case msgpack::type::STR: return py::str(o.via.str.ptr, o.via.str.size);
    case msgpack::type::ARRAY: {
      py::list items;
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) items.append(to_python(o.via.array.ptr[i]));
      return items;
    }
    case msgpack::type::MAP: {
      py::dict d;
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        d[to_python(o.via.map.ptr[i].key)] = to_python(o.via.map.ptr[i].val);
      }
      return d;
    }
    default: raise({ErrorCode::internal, "bindings/migration.cpp: an encoder wrote a msgpack type it never writes"});
  }
}

/// The dict of the map `m` writes.
py::dict to_dict(const protocol::MapWriter& m) {
  msgpack::sbuffer bytes;
  m.emit(bytes);
  const auto handle = msgpack::unpack(bytes.data(), bytes.size());
  return to_python(handle.get());
}

TimeMs at(const std::optional<double>& now) {
  if (now) return unwrap(time_from_seconds(*now));
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

py::list migrations(const Router& r) {
  py::list out;
  const Config& config = *r.config();
  for (const MigrationStatus& s : r.migrations()) {
    protocol::MapWriter m;
    protocol::encode_migration_status(m, config, s);
    out.append(to_dict(m));
  }
  return out;
}

py::dict migration_command(Router& r, const std::string& scenario, const std::string& action,
                           const std::optional<double>& now) {
  const auto command = migration_command_from_string(action);
  if (!command) {
    raise({ErrorCode::invalid_argument, "unknown migration action '" + action +
                                            "'; expected promote, pause, resume or "
                                            "abort"});
  }
  const auto t = unwrap(r.migration_command(scenario, *command, at(now)));
  protocol::MapWriter body;
  for (const MigrationStatus& s : r.migrations()) {
    if (r.config()->scenarios[s.scenario].name == scenario) {
      protocol::encode_migration_command_reply(body, *r.config(), t, s);
    }
  }
  return to_dict(body);
}

py::list migration_tick(Router& r, const std::optional<double>& now) {
  py::list out;
  for (const auto& [scenario, t] : r.migration_tick(at(now))) {
    protocol::MapWriter m;
    m.str(protocol::field::scenario, r.config()->scenarios[scenario].name);
    protocol::MapWriter tm;
    protocol::encode_migration_transition(tm, t);
    m.sub(protocol::field::transition, tm);
    out.append(to_dict(m));
  }
  return out;
}

}  // namespace

void bind_migration(py::module_& m) {
  auto router = py::reinterpret_borrow<py::class_<Router>>(m.attr("Router"));
  router
      .def("migrations", &migrations,
           "Every scenario's migration as a status dict (the sidecar's `migration` reply's maps), in table order.")
      .def("migration_command", &migration_command, py::arg("scenario"), py::arg("action"), py::arg("now") = py::none(),
           "An operator's promote, pause, resume or abort: {'transition': ..., 'migration': status}. Raises "
           "NoMigrationError, MigrationConflictError or UnknownScenarioError.")
      .def("migration_tick", &migration_tick, py::arg("now") = py::none(),
           "Runs every migration analysis due at `now` (seconds; default the clock): the moves made, as "
           "[{'scenario', 'transition'}].");
}
