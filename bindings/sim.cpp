// The what-if engine's binding: turnout._core.Simulation (turnout/sim/simulator.hpp) and the one
// retry/fallback policy, turnout._core.AttemptPolicy (turnout/attempts.hpp), which the worker SDK uses
// too. Registered by module.cpp. Thin: argument conversion, numpy columns, one raise().

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "rows.hpp"
#include "turnout/attempts.hpp"
#include "turnout/sim/simulator.hpp"

namespace py = pybind11;
using namespace turnout;
using namespace turnout::bindings;

namespace {

[[noreturn]] void bad(const std::string& message) { raise({ErrorCode::invalid_argument, message}); }

/// Refuses keys of `d` outside `allowed`: a misspelt option must not silently keep its default.
void only_keys(const py::dict& d, std::initializer_list<const char*> allowed, const std::string& where) {
  for (auto item : d) {
    const auto key = py::str(item.first).cast<std::string>();
    bool known = false;
    for (const char* a : allowed) known = known || key == a;
    if (!known) {
      std::string expected;
      for (const char* a : allowed) expected += std::string(expected.empty() ? "" : ", ") + a;
      bad(where + ": unknown key '" + key + "'; expected " + expected);
    }
  }
}

double number(const py::dict& d, const char* key, double fallback, const std::string& where) {
  if (!d.contains(key)) return fallback;
  try {
    return d[key].cast<double>();
  } catch (const py::cast_error&) {
    bad(where + "." + key + ": expected a number");
  }
}

std::int64_t integer(const py::dict& d, const char* key, std::int64_t fallback, const std::string& where) {
  if (!d.contains(key)) return fallback;
  try {
    return d[key].cast<std::int64_t>();
  } catch (const py::cast_error&) {
    bad(where + "." + key + ": expected an integer");
  }
}

py::dict sub_dict(const py::dict& d, const char* key, const std::string& where) {
  if (!d.contains(key)) return {};
  if (!py::isinstance<py::dict>(d[key])) bad(where + "." + key + ": expected a dict");
  return d[key].cast<py::dict>();
}

sim::SimTime seconds_to_sim(double s, const std::string& where) {
  if (!std::isfinite(s) || s < 0 || s > static_cast<double>(kMaxTimeMs) / 1000.0) {
    bad(where + ": expected a finite time in seconds within 0..253402300800");
  }
  return static_cast<sim::SimTime>(std::llround(s * 1e6));
}

sim::TargetModel maas_model(const py::dict& d, const std::string& where) {
  only_keys(d,
            {"ttft_ms", "output_tokens_per_s", "rpm", "tpm", "error_rate", "outages", "accept_rate", "timeout_ms",
             "output_scale"},
            where);
  sim::TargetModel m;
  sim::ProviderSpec& p = m.provider;
  const py::dict ttft = sub_dict(d, "ttft_ms", where);
  only_keys(ttft, {"p50", "p95"}, where + ".ttft_ms");
  p.latency.ttft_p50_ms = number(ttft, "p50", p.latency.ttft_p50_ms, where + ".ttft_ms");
  p.latency.ttft_p95_ms = number(ttft, "p95", p.latency.ttft_p95_ms, where + ".ttft_ms");
  const py::dict rate = sub_dict(d, "output_tokens_per_s", where);
  only_keys(rate, {"p50", "p95"}, where + ".output_tokens_per_s");
  p.latency.tokens_per_s_p50 = number(rate, "p50", p.latency.tokens_per_s_p50, where + ".output_tokens_per_s");
  p.latency.tokens_per_s_p95 = number(rate, "p95", p.latency.tokens_per_s_p95, where + ".output_tokens_per_s");
  p.rpm = integer(d, "rpm", p.rpm, where);
  p.tpm = integer(d, "tpm", p.tpm, where);
  p.error_rate = number(d, "error_rate", p.error_rate, where);
  p.timeout_ms = integer(d, "timeout_ms", p.timeout_ms, where);
  m.accept_rate = number(d, "accept_rate", m.accept_rate, where);
  m.output_scale = number(d, "output_scale", m.output_scale, where);
  if (d.contains("outages")) {
    if (!py::isinstance<py::list>(d["outages"])) bad(where + ".outages: expected a list of dicts");
    std::size_t i = 0;
    for (auto o : d["outages"].cast<py::list>()) {
      const std::string at = where + ".outages[" + std::to_string(i++) + "]";
      if (!py::isinstance<py::dict>(o)) bad(at + ": expected a dict");
      const auto od = o.cast<py::dict>();
      only_keys(od, {"from_s", "to_s", "error_rate", "status"}, at);
      if (!od.contains("from_s") || !od.contains("to_s")) bad(at + ": from_s and to_s are required");
      sim::Outage out;
      out.from = seconds_to_sim(number(od, "from_s", 0, at), at + ".from_s");
      out.to = seconds_to_sim(number(od, "to_s", 0, at), at + ".to_s");
      out.error_rate = number(od, "error_rate", out.error_rate, at);
      if (od.contains("status")) {
        const auto name = py::str(od["status"]).cast<std::string>();
        const auto status = status_from_string(name);
        if (!status || *status == Status::ok) bad(at + ".status: '" + name + "' is not a failure status");
        out.status = *status;
      }
      p.outages.push_back(out);
    }
  }
  return m;
}

sim::TargetModel engine_model(const py::dict& d, const Target& target, const std::string& where) {
  only_keys(d,
            {"step", "throughput", "max_batched_tokens", "max_seqs", "capacity_blocks", "accept_rate", "output_scale"},
            where);
  sim::TargetModel m;
  sim::EngineSpec& e = m.engine;
  e.max_batched_tokens = integer(d, "max_batched_tokens", e.max_batched_tokens, where);
  e.max_seqs = integer(d, "max_seqs", e.max_seqs, where);
  e.capacity_blocks = integer(d, "capacity_blocks", target.kv.capacity_blocks, where);
  e.block_size = target.kv.block_size;  // as the simulator will run it (calibrate on the same shape)
  e.gpus = target.cost.gpus_per_replica;
  m.accept_rate = number(d, "accept_rate", m.accept_rate, where);
  m.output_scale = number(d, "output_scale", m.output_scale, where);
  if (d.contains("step") && d.contains("throughput")) bad(where + ": give step or throughput, not both");
  if (d.contains("step")) {
    const py::dict s = sub_dict(d, "step", where);
    only_keys(s, {"overhead_ms", "ms_per_prefill_token", "ms_per_decode_seq"}, where + ".step");
    e.step.overhead_ms = number(s, "overhead_ms", e.step.overhead_ms, where + ".step");
    e.step.ms_per_prefill_token = number(s, "ms_per_prefill_token", e.step.ms_per_prefill_token, where + ".step");
    e.step.ms_per_decode_seq = number(s, "ms_per_decode_seq", e.step.ms_per_decode_seq, where + ".step");
  }
  if (d.contains("throughput")) {
    const py::dict t = sub_dict(d, "throughput", where);
    const std::string at = where + ".throughput";
    only_keys(t, {"output_tokens_per_s", "input_tokens", "output_tokens", "concurrency"}, at);
    for (const char* k : {"output_tokens_per_s", "input_tokens", "output_tokens", "concurrency"}) {
      if (!t.contains(k)) bad(at + ": " + k + " is required");
    }
    sim::ThroughputRow row{number(t, "output_tokens_per_s", 0, at), integer(t, "input_tokens", 0, at),
                           integer(t, "output_tokens", 0, at), integer(t, "concurrency", 0, at)};
    unwrap(sim::check_spec(e));
    if (auto v = sim::check_row(e, row); !v) bad(at + ": " + v.error().message);
    e.step = sim::calibrate(e, row);  // throws only for what the two checks above refuse
  }
  return m;
}

std::unordered_map<std::string, sim::TargetModel> target_models(const Config& config, const py::dict& models) {
  std::unordered_map<std::string, sim::TargetModel> out;
  for (auto item : models) {
    const auto name = py::str(item.first).cast<std::string>();
    const std::uint32_t ti = config.find_target(name);
    if (ti == kNone) raise({ErrorCode::unknown_target, "models: the table has no target '" + name + "'"});
    const std::string where = "models['" + name + "']";
    if (!py::isinstance<py::dict>(item.second)) bad(where + ": expected a dict");
    const auto d = item.second.cast<py::dict>();
    const Target& t = config.targets[ti];
    out[name] = t.kind == TargetKind::maas ? maas_model(d, where) : engine_model(d, t, where);
  }
  return out;
}

RetrySpec retry_spec(const py::dict& d) {
  only_keys(d,
            {"max_retries", "base_backoff_ms", "backoff_multiplier", "max_backoff_ms", "jitter", "max_retry_after_ms",
             "max_route_retries", "max_attempts"},
            "retry");
  RetrySpec s;
  auto count = [&](const char* key, std::uint32_t fallback) {
    const std::int64_t v = integer(d, key, fallback, "retry");
    if (v < 0 || v > 1'000'000) bad(std::string("retry.") + key + ": expected 0..1000000");
    return static_cast<std::uint32_t>(v);
  };
  s.max_retries = count("max_retries", s.max_retries);
  s.base_backoff_ms = integer(d, "base_backoff_ms", s.base_backoff_ms, "retry");
  s.backoff_multiplier = number(d, "backoff_multiplier", s.backoff_multiplier, "retry");
  s.max_backoff_ms = integer(d, "max_backoff_ms", s.max_backoff_ms, "retry");
  s.jitter = number(d, "jitter", s.jitter, "retry");
  s.max_retry_after_ms = integer(d, "max_retry_after_ms", s.max_retry_after_ms, "retry");
  s.max_route_retries = count("max_route_retries", s.max_route_retries);
  s.max_attempts = count("max_attempts", s.max_attempts);
  unwrap(s.validate());
  return s;
}

template <class T>
using Column = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
Column<T> column(const py::object& obj, const char* name, std::optional<std::size_t> n) {
  Column<T> a;
  try {
    a = obj.cast<Column<T>>();
  } catch (const py::cast_error&) {
    bad(std::string(name) + ": expected a 1-d array of numbers");
  }
  if (a.ndim() != 1) bad(std::string(name) + ": expected a 1-d array");
  if (n && static_cast<std::size_t>(a.shape(0)) != *n) {
    bad(std::string(name) + ": expected " + std::to_string(*n) + " values, got " + std::to_string(a.shape(0)));
  }
  return a;
}

/// Optional names: one str or None per request.
std::vector<std::optional<std::string>> names(const py::object& obj, const char* name, std::size_t n) {
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj)) bad(std::string(name) + ": expected a list");
  auto seq = obj.cast<py::sequence>();
  if (seq.size() != n) {
    bad(std::string(name) + ": expected " + std::to_string(n) + " values, got " + std::to_string(seq.size()));
  }
  std::vector<std::optional<std::string>> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const py::object v = seq[i];
    if (v.is_none()) continue;
    if (!py::isinstance<py::str>(v)) bad(std::string(name) + "[" + std::to_string(i) + "]: expected str or None");
    out[i] = v.cast<std::string>();
  }
  return out;
}

void check_offsets(const Column<std::int64_t>& off, std::size_t n, std::size_t values, const char* name) {
  auto o = off.unchecked<1>();
  if (o(0) != 0 || static_cast<std::size_t>(o(static_cast<py::ssize_t>(n))) != values) {
    bad(std::string(name) + ": expected offsets from 0 to the values' length (" + std::to_string(values) + ")");
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (o(static_cast<py::ssize_t>(i + 1)) < o(static_cast<py::ssize_t>(i))) {
      bad(std::string(name) + ": offsets must not decrease (at " + std::to_string(i) + ")");
    }
  }
}

/// The Python object: a Simulator and the names its rows refer to.
class Simulation {
 public:
  Simulation(const ConfigHandle& config, const py::dict& models, std::uint64_t seed, bool precise_kv,
             double series_interval_s, bool admission_queue, const std::optional<py::dict>& retry)
      : config_(config.ptr) {
    sim::SimOptions o;
    o.seed = seed;
    o.precise_kv = precise_kv;
    if (!(series_interval_s > 0) || !std::isfinite(series_interval_s)) bad("series_interval_s must be > 0");
    o.series_interval = static_cast<sim::SimTime>(std::llround(series_interval_s * 1e6));
    o.admission_queue = admission_queue;
    if (retry) o.retry = retry_spec(*retry);
    sim_ = unwrap(sim::Simulator::create(config_, target_models(*config_, models), o));
  }

  void add(const py::object& arrival_s, const py::object& scenario, const py::object& key, const py::object& data_class,
           const py::object& input_tokens, const py::object& output_tokens, const py::object& accepted,
           const py::object& token_offsets, const py::object& token_ids, const py::object& block_offsets,
           const py::object& blocks, std::int64_t block_tokens) {
    const auto arrivals = column<double>(arrival_s, "arrival_s", std::nullopt);
    const auto n = static_cast<std::size_t>(arrivals.shape(0));
    const auto scenarios = names(scenario, "scenario", n);
    const auto keys = key.is_none() ? std::vector<std::optional<std::string>>(n) : names(key, "key", n);
    const auto classes =
        data_class.is_none() ? std::vector<std::optional<std::string>>(n) : names(data_class, "data_class", n);
    const auto inputs = column<std::int64_t>(input_tokens, "input_tokens", n);
    const auto outputs = column<std::int64_t>(output_tokens, "output_tokens", n);
    std::optional<Column<std::int8_t>> labels;
    if (!accepted.is_none()) labels = column<std::int8_t>(accepted, "accepted", n);
    const bool as_tokens = !token_ids.is_none() || !token_offsets.is_none();
    const bool as_blocks = !blocks.is_none() || !block_offsets.is_none();
    if (as_tokens && as_blocks) bad("give the prompts as token_ids or as blocks, not both");
    std::optional<Column<std::int64_t>> offsets;
    std::optional<Column<std::uint32_t>> tokens;
    std::optional<Column<std::uint64_t>> hashes;
    if (as_tokens) {
      if (token_ids.is_none() || token_offsets.is_none()) bad("token_ids needs token_offsets (n + 1 values)");
      tokens = column<std::uint32_t>(token_ids, "token_ids", std::nullopt);
      offsets = column<std::int64_t>(token_offsets, "token_offsets", n + 1);
      check_offsets(*offsets, n, static_cast<std::size_t>(tokens->shape(0)), "token_offsets");
    }
    if (as_blocks) {
      if (blocks.is_none() || block_offsets.is_none()) bad("blocks needs block_offsets (n + 1 values)");
      hashes = column<std::uint64_t>(blocks, "blocks", std::nullopt);
      offsets = column<std::int64_t>(block_offsets, "block_offsets", n + 1);
      check_offsets(*offsets, n, static_cast<std::size_t>(hashes->shape(0)), "block_offsets");
    }
    const auto at = arrivals.unchecked<1>();
    const auto in = inputs.unchecked<1>();
    const auto out = outputs.unchecked<1>();
    for (std::size_t i = 0; i < n; ++i) {
      const auto k = static_cast<py::ssize_t>(i);
      sim::TraceRequest r;
      r.arrival = seconds_to_sim(at(k), "arrival_s[" + std::to_string(i) + "]");
      if (!scenarios[i]) bad("scenario[" + std::to_string(i) + "]: every request needs a scenario");
      r.scenario = *scenarios[i];
      if (keys[i]) r.key = *keys[i];
      if (classes[i]) r.data_class = *classes[i];
      r.input_tokens = in(k);
      r.output_tokens = out(k);
      if (labels) r.accepted = labels->at(k);
      if (hashes) {
        const auto b = offsets->at(k);
        const std::span<const std::uint64_t> prompt(hashes->data() + b,
                                                    static_cast<std::size_t>(offsets->at(k + 1) - b));
        unwrap(sim_->add_blocks(r, prompt, block_tokens));
      } else if (tokens) {
        const auto b = offsets->at(k);
        const std::span<const std::uint32_t> prompt(tokens->data() + b,
                                                    static_cast<std::size_t>(offsets->at(k + 1) - b));
        unwrap(sim_->add(r, prompt));
      } else {
        unwrap(sim_->add(r, {}));
      }
    }
  }

  py::dict run(const py::object& progress) {
    // The core runs without the GIL; every ~1 % it takes it back to check for Ctrl-C and report progress.
    // An exception (KeyboardInterrupt from the check or the callback's own) stops the run and is re-raised.
    std::optional<py::error_already_set> failure;
    const sim::Progress on_progress = [&](std::size_t done, std::size_t total) {
      py::gil_scoped_acquire gil;
      try {
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        if (!progress.is_none()) progress(done, total);
      } catch (py::error_already_set& e) {
        failure.emplace(std::move(e));
        return false;
      }
      return true;
    };
    Result<sim::SimResult> r = make_error(ErrorCode::internal, "not run");
    {
      py::gil_scoped_release release;
      r = sim_->run(on_progress);
    }
    if (failure) throw std::move(*failure);
    return frames(unwrap(std::move(r)));
  }

 private:
  py::dict frames(const sim::SimResult& res) const {
    const Config& c = *config_;
    const std::size_t n = res.requests.size();
    py::module_ np = py::module_::import("numpy");
    Column<double> arrival(n), queue(n), ttft(n), latency(n);
    Column<std::int64_t> replica(n), attempts(n), predicted(n), realized(n), input(n), output(n), cost(n);
    Column<std::int8_t> accepted(n);
    py::list scenario(n), target(n), outcome(n), error(n);
    std::vector<py::object> scenario_names, target_names;
    for (const auto& s : c.scenarios) scenario_names.emplace_back(py::str(s.name));
    for (const auto& t : c.targets) target_names.emplace_back(py::str(t.name));
    const py::object outcome_names[] = {py::str("served"), py::str("fallback"), py::str("failed")};
    auto ms = [](sim::SimTime t) { return static_cast<double>(t) / 1000.0; };
    for (std::size_t i = 0; i < n; ++i) {
      const sim::RequestRow& row = res.requests[i];
      const auto k = static_cast<py::ssize_t>(i);
      arrival.mutable_at(k) = static_cast<double>(row.arrival) / 1e6;
      scenario[i] = row.scenario == kNone ? py::none() : scenario_names[row.scenario];
      target[i] = row.target == kNone ? py::none() : target_names[row.target];
      replica.mutable_at(k) = row.replica == kNone ? -1 : static_cast<std::int64_t>(row.replica);
      outcome[i] = outcome_names[static_cast<std::size_t>(row.outcome)];
      attempts.mutable_at(k) = row.attempts;
      queue.mutable_at(k) = ms(row.queue);
      ttft.mutable_at(k) = row.ttft < 0 ? std::nan("") : ms(row.ttft);
      latency.mutable_at(k) = ms(row.latency);
      predicted.mutable_at(k) = row.cached_predicted;
      realized.mutable_at(k) = row.cached_realized;
      input.mutable_at(k) = row.input_tokens;
      output.mutable_at(k) = row.output_tokens;
      cost.mutable_at(k) = row.cost_picos;
      accepted.mutable_at(k) = row.accepted;
      error[i] = row.error == nullptr ? py::object(py::none()) : py::object(py::str(row.error));
    }
    auto objects = [&](const py::list& l) { return np.attr("array")(l, py::arg("dtype") = "object"); };
    py::dict requests;
    requests["arrival_s"] = arrival;
    requests["scenario"] = objects(scenario);
    requests["target"] = objects(target);
    requests["replica"] = replica;
    requests["outcome"] = objects(outcome);
    requests["attempts"] = attempts;
    requests["queue_ms"] = queue;
    requests["ttft_ms"] = ttft;
    requests["latency_ms"] = latency;
    requests["cached_predicted"] = predicted;
    requests["cached_realized"] = realized;
    requests["input_tokens"] = input;
    requests["output_tokens"] = output;
    requests["cost_picos"] = cost;
    requests["accepted"] = accepted;
    requests["error"] = objects(error);

    const std::size_t m = res.series.size();
    Column<double> t_s(m), in_flight(m), queue_depth(m), utilization(m);
    Column<std::int64_t> arrivals(m), series_cost(m);
    for (std::size_t i = 0; i < m; ++i) {
      const sim::SeriesRow& row = res.series[i];
      const auto k = static_cast<py::ssize_t>(i);
      t_s.mutable_at(k) = static_cast<double>(res.summary.start + row.start) / 1e6;
      arrivals.mutable_at(k) = static_cast<std::int64_t>(row.arrivals);
      in_flight.mutable_at(k) = row.in_flight;
      queue_depth.mutable_at(k) = row.queue_depth;
      utilization.mutable_at(k) = row.utilization;
      series_cost.mutable_at(k) = row.cost_picos;
    }
    py::dict series;
    series["t_s"] = t_s;
    series["arrivals"] = arrivals;
    series["in_flight"] = in_flight;
    series["queue_depth"] = queue_depth;
    series["utilization"] = utilization;
    series["cost_picos"] = series_cost;

    const sim::Summary& s = res.summary;
    py::dict targets;
    for (std::size_t i = 0; i < s.targets.size(); ++i) {
      const sim::TargetStats& t = s.targets[i];
      py::dict d;
      d["attempts"] = t.attempts;
      d["served"] = t.served;
      d["failed_attempts"] = t.failed_attempts;
      d["input_tokens"] = t.input_tokens;
      d["cached_predicted"] = t.cached_predicted;
      d["cached_realized"] = t.cached_realized;
      d["cost_picos"] = t.cost_picos;
      targets[target_names[i]] = d;
    }
    py::dict summary;
    summary["requests"] = s.requests;
    summary["served"] = s.served;
    summary["fallback"] = s.fallback;
    summary["failed"] = s.failed;
    summary["gpu_hours"] = s.gpu_hours;
    summary["simulated_s"] = static_cast<double>(s.end - s.start) / 1e6;
    summary["mean_in_flight"] = s.mean_in_flight;
    summary["targets"] = targets;

    py::dict out;
    out["requests"] = requests;
    out["series"] = series;
    out["summary"] = summary;
    out["migrations"] = migrations(res);
    return out;
  }

  /// Every migration of the table (scenario -> its spec's names and steps, and its moves in the replay).
  py::dict migrations(const sim::SimResult& res) const {
    const Config& c = *config_;
    py::dict out;
    for (const Scenario& sc : c.scenarios) {
      if (!sc.migration) continue;
      const MigrationSpec& m = *sc.migration;
      py::dict d;
      d["baseline"] = c.targets[m.baseline].name;
      d["candidate"] = c.targets[m.candidate].name;
      d["stage"] = std::string(to_string(m.stage));
      d["steps"] = m.steps;
      d["min_samples"] = m.min_samples;
      d["interval_s"] = static_cast<double>(m.interval_ms) / 1000.0;
      d["max_step_s"] = static_cast<double>(m.max_step_ms) / 1000.0;
      d["transitions"] = py::list();
      out[py::str(sc.name)] = d;
    }
    auto arm = [](const sim::ArmTally& a) {
      py::dict d;
      d["requests"] = a.requests;
      d["outcomes"] = a.outcomes;
      d["errors"] = a.errors;
      d["answered"] = a.answered;
      d["rejected"] = a.rejected;
      d["cost_picos"] = a.cost_picos;
      return d;
    };
    for (const sim::MigrationEvent& e : res.migrations) {
      const MigrationTransition& t = e.transition;
      py::dict d;
      // From the first arrival's millisecond: the analyses run on the Router's millisecond clock.
      d["at_s"] = static_cast<double>(t.at - res.summary.start / sim::kMicrosPerMs) / 1000.0;
      d["from"] = std::string(to_string(t.from));
      d["to"] = std::string(to_string(t.to));
      d["step"] = t.step;
      d["percent"] = e.candidate_percent;
      d["cause"] = std::string(to_string(t.cause));
      d["detail"] = t.detail;
      d["requests"] = e.requests;
      d["baseline"] = arm(e.baseline);
      d["candidate"] = arm(e.candidate);
      d["analyzed"] = py::dict(py::arg("baseline") = t.baseline_outcomes, py::arg("candidate") = t.candidate_outcomes);
      d["baseline_equivalent_picos"] = e.baseline_equivalent_picos;
      out[py::str(c.scenarios[e.scenario].name)]["transitions"].cast<py::list>().append(d);
    }
    return out;
  }

  ConfigPtr config_;
  std::unique_ptr<sim::Simulator> sim_;
};

py::tuple step_tuple(const Step& s) {
  return py::make_tuple(to_string(s.next), s.candidate, static_cast<double>(s.at) / 1000.0);
}

void bind_attempt_policy(py::module_& m) {
  py::class_<AttemptPolicy>(m, "AttemptPolicy",
                            "The one retry/fallback policy (the simulator's and the worker SDK's). Per request: "
                            "start(candidates), then after each call to candidate `candidate` "
                            "(0 = the decision's target, i = its fallbacks[i - 1]) after_attempt(status, now, "
                            "retry_after_ms) answers (next, candidate, at): next is 'served', 'retry' (call "
                            "the same candidate again at `at`, seconds), 'fail_over' (call `candidate` now) or "
                            "'give_up'. rate_limited honours Retry-After; error backs off exponentially with "
                            "jitter; timeout and context_overflow fail over; content_filter gives up. No clock "
                            "and no I/O: deterministic for a seed.")
      .def(py::init([](std::uint32_t max_retries, std::int64_t base_backoff_ms, double backoff_multiplier,
                       std::int64_t max_backoff_ms, double jitter, std::int64_t max_retry_after_ms,
                       std::uint32_t max_route_retries, std::uint32_t max_attempts, std::uint64_t seed) {
             const RetrySpec spec{max_retries, base_backoff_ms,    backoff_multiplier, max_backoff_ms,
                                  jitter,      max_retry_after_ms, max_route_retries,  max_attempts};
             unwrap(spec.validate());
             return AttemptPolicy(spec, seed);
           }),
           py::kw_only(), py::arg("max_retries") = RetrySpec{}.max_retries,
           py::arg("base_backoff_ms") = RetrySpec{}.base_backoff_ms,
           py::arg("backoff_multiplier") = RetrySpec{}.backoff_multiplier,
           py::arg("max_backoff_ms") = RetrySpec{}.max_backoff_ms, py::arg("jitter") = RetrySpec{}.jitter,
           py::arg("max_retry_after_ms") = RetrySpec{}.max_retry_after_ms,
           py::arg("max_route_retries") = RetrySpec{}.max_route_retries,
           py::arg("max_attempts") = RetrySpec{}.max_attempts, py::arg("seed") = 0)
      .def(
          "start",
          [](AttemptPolicy& p, std::size_t candidates) {
            if (candidates == 0) bad("a decision has at least one candidate (its target)");
            p.start(candidates);
          },
          py::arg("candidates"), "A new request whose decision has `candidates` places (1 + its fallbacks).")
      .def(
          "after_attempt",
          [](AttemptPolicy& p, const std::string& status, double now, std::optional<std::int64_t> retry_after_ms) {
            const auto s = status_from_string(status);
            if (!s) bad("unknown status '" + status + "'");
            return step_tuple(p.after_attempt(*s, retry_after_ms.value_or(-1), unwrap(time_from_seconds(now))));
          },
          py::arg("status"), py::arg("now"), py::arg("retry_after_ms") = py::none(),
          "What to do after a call ended with `status` at `now` (seconds): (next, candidate, at_s).")
      .def(
          "after_failure",
          [](AttemptPolicy& p, const std::string& failure, double now, std::optional<std::int64_t> retry_after_ms) {
            const auto c = failure_class_from_string(failure);
            if (!c) bad("unknown failure class '" + failure + "'");
            return step_tuple(p.after_failure(*c, retry_after_ms.value_or(-1), unwrap(time_from_seconds(now))));
          },
          py::arg("failure"), py::arg("now"), py::arg("retry_after_ms") = py::none(),
          "What to do after a call failed with class `failure` (failure_classes()) at `now`: auth and billing "
          "fail over at once, invalid_request gives up; the others act as after_attempt's statuses do.")
      .def(
          "after_refusal",
          [](AttemptPolicy& p, const std::string& code, double now) {
            const auto c = error_code_from_string(code);
            if (!c) bad("unknown error code '" + code + "'");
            return step_tuple(p.after_refusal(*c, unwrap(time_from_seconds(now))));
          },
          py::arg("code"), py::arg("now"),
          "What to do after the router refused to route (`code`, e.g. 'no_eligible_target'): retry or give_up.")
      .def_property_readonly("candidate", &AttemptPolicy::candidate, "The candidate to call now.")
      .def_property_readonly("attempts", &AttemptPolicy::attempts, "Calls made so far (retries included).")
      .def_property_readonly("on_fallback", &AttemptPolicy::on_fallback, "Whether a fallback is being called.")
      .def("backoff_ms", &AttemptPolicy::backoff_ms, py::arg("retry"),
           "The backoff before retry number `retry` (1-based) of one target, before jitter.");
}

}  // namespace

void bind_sim(py::module_& m) {
  bind_attempt_policy(m);
  m.def(
      "failure_classes",
      [] {
        py::dict out;
        for (std::size_t i = 0; i < kFailureClassCount; ++i) {
          const auto c = static_cast<FailureClass>(i);
          out[py::str(to_string(c))] = to_string(failure_status(c));
        }
        return out;
      },
      "The retry policy's failure classes, each with the status the ledger counts for it.");
  m.def(
      "published_rows",
      [] {
        py::list out;
        for (const sim::PublishedRow& p : sim::kPublishedRows) {
          out.append(py::dict(py::arg("name") = std::string(p.name), py::arg("source") = std::string(p.source),
                              py::arg("gpus") = p.gpus, py::arg("output_tokens_per_s") = p.row.output_tokens_per_s,
                              py::arg("input_tokens") = p.row.input_tokens,
                              py::arg("output_tokens") = p.row.output_tokens,
                              py::arg("concurrency") = p.row.concurrency));
        }
        return out;
      },
      "Published replica throughputs (sim::kPublishedRows): each row's output_tokens_per_s, input_tokens, "
      "output_tokens and concurrency are a self-hosted model's `throughput` for a replay.");
  py::class_<Simulation>(m, "Simulation",
                         "The what-if engine: a discrete-event simulation of a trace through the real Router "
                         "against simulated providers and GPUs. add() the requests, then run() once.")
      .def(py::init<const ConfigHandle&, const py::dict&, std::uint64_t, bool, double, bool,
                    const std::optional<py::dict>&>(),
           py::arg("config"), py::arg("models") = py::dict(), py::kw_only(), py::arg("seed") = 0,
           py::arg("precise_kv") = true, py::arg("series_interval_s") = 60.0, py::arg("admission_queue") = false,
           py::arg("retry") = py::none(),
           "models: by target name (MaaS: ttft_ms {p50, p95}, output_tokens_per_s {p50, p95}, rpm, tpm, "
           "error_rate, outages [{from_s, to_s, error_rate, status}], accept_rate, timeout_ms, output_scale; "
           "self-hosted: step {overhead_ms, ms_per_prefill_token, ms_per_decode_seq} or throughput "
           "{output_tokens_per_s, input_tokens, output_tokens, concurrency}, max_batched_tokens, max_seqs, "
           "capacity_blocks, accept_rate, output_scale). retry: the AttemptPolicy's keyword arguments (without seed). "
           "Unknown keys are errors.")
      .def("add", &Simulation::add, py::kw_only(), py::arg("arrival_s"), py::arg("scenario"),
           py::arg("key") = py::none(), py::arg("data_class") = py::none(), py::arg("input_tokens"),
           py::arg("output_tokens"), py::arg("accepted") = py::none(), py::arg("token_offsets") = py::none(),
           py::arg("token_ids") = py::none(), py::arg("block_offsets") = py::none(), py::arg("blocks") = py::none(),
           py::arg("block_tokens") = 16,
           "Adds n requests as columns. Prompts as token_ids (request i: token_ids[token_offsets[i]: "
           "token_offsets[i + 1]]) or as trace block hashes (blocks, block_offsets, block_tokens), or neither. "
           "Raises on the first bad request (the ones before it stay added).")
      .def("run", &Simulation::run, py::arg("progress") = py::none(),
           "Runs every request; progress(done, total) about every 1 %. Ctrl-C (or an exception from progress) "
           "stops the run and is raised. Returns {'requests', 'series', 'summary'} (dicts of numpy columns) and "
           "'migrations': per scenario with a migration, its baseline, candidate, stage, steps, min_samples, "
           "interval_s, max_step_s and transitions [{at_s (from the first arrival), from, to, step, percent, "
           "cause, detail, requests, baseline and candidate {requests, outcomes, errors, answered, rejected, "
           "cost_picos}, analyzed {baseline, candidate}, baseline_equivalent_picos}].");
}
