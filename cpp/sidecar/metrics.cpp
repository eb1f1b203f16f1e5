#include "sidecar/metrics.hpp"

#include <array>
#include <cstdio>
#include <string_view>
#include <type_traits>
#include <utility>

namespace turnout::sidecar {

namespace {

/// A label value with \, " and newlines escaped.
std::string label_value(std::string_view v) {
  std::string out;
  for (const char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string int128_string(Int128 v) {
  if (v == 0) return "0";
  const bool neg = v < 0;
  UInt128 u = neg ? static_cast<UInt128>(-(v + 1)) + 1 : static_cast<UInt128>(v);
  std::string s;
  while (u != 0) {
    s.push_back(static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  }
  if (neg) s.push_back('-');
  return {s.rbegin(), s.rend()};
}

std::string usd_float(const MoneyTotal& m) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.12g", static_cast<double>(m.picos()) / 1e12);
  return buf;
}

/// The text being written: family headers, then their samples.
class Exposition {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  /// `name{labels} value`; no braces when there are no labels.
  void sample(std::string_view name, std::string_view labels, std::string_view value) {
    out_ += name;
    if (!labels.empty()) {
      out_ += '{';
      out_ += labels;
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  [[nodiscard]] std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

/// The samples of one ledger field of one row in one of its families.
class FieldSamples {
 public:
  FieldSamples(Exposition& x, const MetricFamily& family, const std::string& labels)
      : x_(x), family_(family), labels_(labels) {}

  void operator()(std::uint64_t n) const { x_.sample(family_.name, labels_, std::to_string(n)); }
  void operator()(const StatusCounts& by_status) const {
    for (std::size_t i = 0; i < kStatusCount; ++i) {
      x_.sample(family_.name, labels_ + ",status=\"" + to_string(static_cast<Status>(i)) + "\"",
                std::to_string(by_status[i]));
    }
  }
  void operator()(const Usage& tokens) const {
    for (const TokenKind& k : kTokenKinds) {
      x_.sample(family_.name, labels_ + ",kind=\"" + std::string(k.label()) + "\"", std::to_string(tokens.*k.tokens));
    }
  }
  void operator()(const MoneyTotal& m) const {
    x_.sample(family_.name, labels_, family_.value == MetricValue::usd_float ? usd_float(m) : int128_string(m.picos()));
  }
  void operator()(const Histogram& h) const {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < h.buckets.size(); ++i) {
      cumulative += h.buckets[i];
      const std::string le = i < kLatencyBoundsMs.size() ? std::to_string(kLatencyBoundsMs[i]) : "+Inf";
      x_.sample(family_.name + "_bucket", labels_ + ",le=\"" + le + "\"", std::to_string(cumulative));
    }
    x_.sample(family_.name + "_sum", labels_, std::to_string(h.sum_ms));
    x_.sample(family_.name + "_count", labels_, std::to_string(h.count));
  }

 private:
  Exposition& x_;
  const MetricFamily& family_;
  const std::string& labels_;
};

/// Calls `f(value)` for field number `index` of the list on `row`.
template <class F>
void with_field(const Counters& row, std::size_t index, F&& f) {
  std::size_t i = 0;
  visit_fields(
      [&](const CounterField&, const auto& value) {
        if (i++ == index) f(value);
      },
      row);
}

}  // namespace

std::string metrics_text(const Router& router, const SidecarGauges& sidecar, TimeMs now_ms) {
  const Config& c = *router.config();
  Exposition x;
  x.family("turnout_up", "gauge", "1 while the sidecar serves.");
  x.sample("turnout_up", "", "1");
  x.family("turnout_generation", "gauge", "Segment generation (bumped on start and reload).");
  x.sample("turnout_generation", "", std::to_string(sidecar.generation));
  x.family("turnout_config_info", "gauge", "The routing table being served.");
  // Every local user can read the loopback port: no file path and no endpoint (docs/operations.md).
  x.sample("turnout_config_info", "version=\"" + label_value(sidecar.config_version) + "\"", "1");
  x.family("turnout_uptime_seconds", "gauge", "Seconds since the sidecar started.");
  x.sample("turnout_uptime_seconds", "", std::to_string(sidecar.uptime_s));
  x.family("turnout_reload_failures_total", "counter", "Reloads that failed (the old table kept serving).");
  x.sample("turnout_reload_failures_total", "", std::to_string(sidecar.last_reload.failures));
  x.family("turnout_last_reload_ok", "gauge", "1 if the last reload took (or none was tried), 0 if it failed.");
  x.sample("turnout_last_reload_ok", "", sidecar.last_reload.ok ? "1" : "0");
  x.family("turnout_last_reload_timestamp_seconds", "gauge", "When the last reload was tried (0: none yet).");
  x.sample("turnout_last_reload_timestamp_seconds", "", std::to_string(sidecar.last_reload.at / 1000));
  x.family("turnout_state_snapshot_ok", "gauge", "1 if the last state snapshot was written, 0 if it failed.");
  x.sample("turnout_state_snapshot_ok", "", sidecar.snapshot_ok ? "1" : "0");
  x.family("turnout_unjournaled_records_total", "counter",
           "Ring records applied while the journal was full (a crash before the next snapshot loses them).");
  x.sample("turnout_unjournaled_records_total", "", std::to_string(sidecar.unjournaled));
  x.family("turnout_unsent_replies_total", "counter",
           "Replies dropped because the peer did not read them (its queue was full) or was gone.");
  x.sample("turnout_unsent_replies_total", "", std::to_string(sidecar.unsent_replies));
  x.family("turnout_trace_records_total", "counter", "Lines written to the --record trace file.");
  x.sample("turnout_trace_records_total", "", std::to_string(sidecar.trace.records));
  x.family("turnout_trace_records_dropped_total", "counter",
           "Recording events dropped because the --record buffer was full (the serving thread never waits).");
  x.sample("turnout_trace_records_dropped_total", "", std::to_string(sidecar.trace.dropped));
  x.family("turnout_trace_write_errors_total", "counter",
           "Trace lines lost because writing the --record file failed (disk full...).");
  x.sample("turnout_trace_write_errors_total", "", std::to_string(sidecar.trace.write_errors));
  x.family("turnout_pending_decisions", "gauge", "Decisions waiting for their outcome or verdict.");
  x.sample("turnout_pending_decisions", "", std::to_string(router.pending_decisions()));

  const auto rows = router.counters();
  std::vector<std::string> labels;
  labels.reserve(rows.size());
  for (const auto& row : rows) {
    labels.push_back("scenario=\"" + label_value(c.scenarios[row.scenario].name) + "\",target=\"" +
                     label_value(c.targets[row.target].name) + "\"");
  }
  for (std::size_t i = 0; i < kCounterFields.size(); ++i) {
    for (const MetricFamily& family : metric_families(kCounterFields[i])) {
      x.family(family.name, family.type, family.help);
      for (std::size_t r = 0; r < rows.size(); ++r) with_field(rows[r].counters, i, FieldSamples(x, family, labels[r]));
    }
  }

  const auto breakers = router.breakers(now_ms);
  const auto unit_labels = [&c](const BreakerRow& b) {
    const Target& t = c.targets[b.target];
    return "target=\"" + label_value(t.name) + "\",replica=\"" +
           (b.replica == kNone ? std::string() : std::to_string(b.replica)) + "\"";
  };
  x.family("turnout_breaker_state", "gauge", "Circuit breaker phase: 0 closed, 1 open, 2 half-open.");
  for (const auto& b : breakers) {
    x.sample("turnout_breaker_state", unit_labels(b), std::to_string(static_cast<int>(b.phase)));
  }
  x.family("turnout_inflight", "gauge", "Requests in flight per target replica.");
  for (const auto& b : breakers) x.sample("turnout_inflight", unit_labels(b), std::to_string(b.inflight));

  const auto migrations = router.migrations();
  const auto scenario_label = [&c](const MigrationStatus& m) {
    return "scenario=\"" + label_value(c.scenarios[m.scenario].name) + "\"";
  };
  x.family("turnout_migration_candidate_percent", "gauge",
           "The migration candidate's share of its scenario's traffic, in percent (0 pending or aborted).");
  for (const auto& m : migrations) {
    x.sample("turnout_migration_candidate_percent", scenario_label(m), std::to_string(m.candidate_percent));
  }
  x.family(
      "turnout_migration_phase", "gauge",
      "1 for the phase the scenario's migration is in (pending, ramp, paused, promoted, aborted), 0 for the others.");
  for (const auto& m : migrations) {
    for (std::size_t p = 0; p < kMigrationPhases.size(); ++p) {
      x.sample("turnout_migration_phase", scenario_label(m) + ",phase=\"" + std::string(kMigrationPhases[p]) + "\"",
               static_cast<std::size_t>(m.run.phase) == p ? "1" : "0");
    }
  }
  x.family("turnout_migration_transitions_total", "counter",
           "Moves of the scenario's migration run by cause (its persisted transitions; a new attempt starts over).");
  for (const auto& m : migrations) {
    std::array<std::uint64_t, kTransitionCauses.size()> by_cause{};
    for (const auto& t : m.run.transitions) ++by_cause[static_cast<std::size_t>(t.cause)];
    for (std::size_t i = 0; i < by_cause.size(); ++i) {
      x.sample("turnout_migration_transitions_total",
               scenario_label(m) + ",cause=\"" + std::string(kTransitionCauses[i]) + "\"", std::to_string(by_cause[i]));
    }
  }
  return x.take();
}

}  // namespace turnout::sidecar
