#pragma once
// Python shapes shared by module.cpp, sidecar.cpp and ledger.cpp: Decimal money, usage dicts and
// ledger rows (their columns come from the ledger's field list, turnout/ledger.hpp).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "turnout/config.hpp"
#include "turnout/ledger.hpp"
#include "turnout/money.hpp"
#include "turnout/usage.hpp"

namespace turnout::bindings {

namespace py = pybind11;

/// What turnout._core.Config wraps (module.cpp binds it; sim.cpp takes one).
struct ConfigHandle {
  ConfigPtr ptr;
};

inline py::object decimal_usd(const std::string& text) {
  static py::object decimal = py::module_::import("decimal").attr("Decimal");
  return decimal(text);
}
inline py::object money(Money m) { return decimal_usd(m.to_usd_string()); }
inline py::object money(const MoneyTotal& m) { return decimal_usd(m.to_usd_string()); }

inline py::dict usage_dict(const Usage& u) {
  py::dict d;
  for (const TokenKind& k : kTokenKinds) d[py::str(k.column.data(), k.column.size())] = u.*k.tokens;
  return d;
}

/// The columns of a ledger row dict, in order: `f(column, kind, value)` with kind "label" for the
/// names, a FieldKind's name for the ledger's own columns (ledger.hpp), "money" for the one derived
/// here, and a DerivedKind's name ("share", "gate") for those the core derives against the scenario's
/// objectives `o`. Router.counters(), turnout.attach(...).counters() and the DataFrames are built
/// from it, and counter_columns() lists it for Python.
template <class F>
void row_columns(std::string_view scenario, std::string_view target, std::string_view kind, std::string_view provider,
                 const Counters& c, const Objectives& o, F&& f) {
  f("scenario", "label", py::str(scenario.data(), scenario.size()));
  f("target", "label", py::str(target.data(), target.size()));
  f("kind", "label", py::str(kind.data(), kind.size()));
  f("provider", "label", py::str(provider.data(), provider.size()));
  visit_columns(c, [&f](const CounterField& field, std::string_view column, const auto& value) {
    using T = std::remove_cvref_t<decltype(value)>;
    py::object v;
    if constexpr (std::is_same_v<T, MoneyTotal>) {
      v = money(value);  // exact Decimal
    } else if constexpr (std::is_integral_v<T>) {
      v = py::int_(value);
    } else {
      py::list buckets;
      for (const auto n : value) buckets.append(n);
      v = std::move(buckets);
    }
    f(column, to_string(field.kind), std::move(v));
  });
  f("cost_per_accepted_usd", "money",
    c.accepted == 0 ? py::object(py::none()) : money(c.cost).attr("__truediv__")(py::int_(c.accepted)));
  visit_derived(c, o, [&f](const DerivedColumn& column, const auto& value) {
    py::object v = py::none();
    if (value) v = py::cast(*value);  // a float, or "pass" / "fail"
    f(column.name, to_string(column.kind), std::move(v));
  });
}

/// One ledger row as Router.counters() and turnout.attach(...).counters() return it.
inline py::dict counter_row_dict(std::string_view scenario, std::string_view target, std::string_view kind,
                                 std::string_view provider, const Counters& c, const Objectives& o) {
  py::dict d;
  row_columns(scenario, target, kind, provider, c, o, [&d](std::string_view column, std::string_view, py::object v) {
    d[py::str(column.data(), column.size())] = std::move(v);
  });
  return d;
}

}  // namespace turnout::bindings
