// The ledger's field list for Python (turnout.ledger): what each counter is, its columns in the row
// dicts and its /metrics families, so Python code and tests iterate the list instead of retyping it.
// Registered by module.cpp.

#include <pybind11/pybind11.h>

#include <string>
#include <string_view>

#include "rows.hpp"
#include "turnout/ledger.hpp"

namespace py = pybind11;
using namespace turnout;
using namespace turnout::bindings;

namespace {

py::str text(std::string_view s) { return {s.data(), s.size()}; }

py::dict field_dict(const CounterField& field) {
  py::dict d;
  d["name"] = text(field.name);
  d["kind"] = to_string(field.kind);
  d["help"] = text(field.help);
  py::list columns;
  visit_columns(Counters{}, [&](const CounterField& f, std::string_view column, const auto&) {
    if (f.name == field.name) columns.append(text(column));
  });
  d["columns"] = columns;
  py::list metrics;
  for (const auto& family : metric_families(field)) metrics.append(family.name);
  d["metrics"] = metrics;
  return d;
}

}  // namespace

void bind_ledger(py::module_& m) {
  m.def(
      "counter_fields",
      [] {
        py::list out;
        for (const CounterField& field : kCounterFields) out.append(field_dict(field));
        return out;
      },
      "The ledger's fields in order (ledger.hpp's list): name, kind (count, by_status, tokens, money, "
      "histogram), help, the columns it fills in a row dict and the /metrics families it is exported as.");
  m.def(
      "counter_columns",
      [] {
        py::list out;
        row_columns("", "", "", "", Counters{}, Objectives{},
                    [&out](std::string_view column, std::string_view kind, const py::object&) {
                      out.append(py::make_tuple(text(column), text(kind)));
                    });
        return out;
      },
      "(column, kind) for every key of a ledger row dict, in order; kind is 'label', a field kind, "
      "'money' for the derived cost_per_accepted_usd, or 'share' / 'gate' for the columns derived against "
      "the scenario's slo and quality_gate.");
}
