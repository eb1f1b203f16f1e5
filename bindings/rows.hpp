#pragma once
// Python shapes shared by module.cpp and sidecar.cpp: Decimal money, usage dicts and ledger rows.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>

#include "turnout/money.hpp"
#include "turnout/state.hpp"
#include "turnout/usage.hpp"

namespace turnout::bindings {

namespace py = pybind11;

inline py::object decimal_usd(const std::string& text) {
  static py::object decimal = py::module_::import("decimal").attr("Decimal");
  return decimal(text);
}
inline py::object money(Money m) { return decimal_usd(m.to_usd_string()); }
inline py::object money(const MoneyTotal& m) { return decimal_usd(m.to_usd_string()); }

inline py::dict usage_dict(const Usage& u) {
  py::dict d;
  d["uncached_input_tokens"] = u.uncached_input_tokens;
  d["cache_read_tokens"] = u.cache_read_tokens;
  d["cache_write_5m_tokens"] = u.cache_write_5m_tokens;
  d["cache_write_1h_tokens"] = u.cache_write_1h_tokens;
  d["output_tokens"] = u.output_tokens;
  d["reasoning_tokens"] = u.reasoning_tokens;
  return d;
}

inline py::list histogram(const Histogram& h) {
  py::list l;
  for (auto b : h.buckets) l.append(b);
  return l;
}

/// One ledger row as Router.counters() and turnout.attach(...).counters() return it.
inline py::dict counter_row_dict(std::string_view scenario, std::string_view target, std::string_view kind,
                                 std::string_view provider, const Counters& c) {
  py::dict d;
  d["scenario"] = scenario;
  d["target"] = target;
  d["kind"] = kind;
  d["provider"] = provider;
  d["requests"] = c.requests;
  d["spillovers"] = c.spillovers;
  d["outcomes"] = c.outcomes;
  d["fallbacks"] = c.fallbacks;
  for (std::size_t i = 0; i < kStatusCount; ++i) d[to_string(static_cast<Status>(i))] = c.by_status[i];
  d["unpriced"] = c.unpriced;
  d["accepted"] = c.accepted;
  d["rejected"] = c.rejected;
  for (auto item : usage_dict(c.tokens)) d[item.first] = item.second;
  d["cost_usd"] = money(c.cost);
  d["accepted_cost_usd"] = money(c.accepted_cost);
  d["cost_per_accepted_usd"] =
      c.accepted == 0 ? py::object(py::none()) : money(c.cost).attr("__truediv__")(py::int_(c.accepted));
  d["ttft_count"] = c.ttft.count;
  d["ttft_sum_ms"] = c.ttft.sum_ms;
  d["ttft_buckets"] = histogram(c.ttft);
  d["latency_count"] = c.latency.count;
  d["latency_sum_ms"] = c.latency.sum_ms;
  d["latency_buckets"] = histogram(c.latency);
  return d;
}

}  // namespace turnout::bindings
