// The migration's canary on simulated traffic (issue 13's must-show) and the cost of one analysis.
//
// Prints one JSON document on stdout:
// - "scenarios": per scenario (no regression; a regression of exactly the minimum effect on each stop
//   metric in turn) the trials, the false-abort rate (none) or the detection rate (the others), aborts
//   by cause, and the median and p99 requests (both arms) to detection or to promotion. The canaries
//   are tests/cpp/canary_sim.hpp's: 1,000 requests a minute split by the run's candidate percent, steps
//   1/5/25/50/100 %, min_samples 200, every stop criterion live, delta 0.05.
// - "benchmarks": analyze() of a ramping run with every criterion live (no move) and, as the baseline
//   measured in the same run, analyze() of a pending run before its canary stage (returns at once);
//   "ratios": the first over the second.
// TURNOUT_CANARY_TRIALS (default 1,000) and TURNOUT_CANARY_REQUESTS (per minute, default 1,000).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <utility>

#include "bench_json.hpp"
#include "canary_sim.hpp"
#include "turnout/config.hpp"
#include "turnout/migration.hpp"

namespace {

using turnout::MigrationPhase;
using turnout::MigrationRun;
using turnout::MigrationSpec;
using turnout::Scenario;
using turnout::StopMetric;
using turnout::TimeMs;

constexpr int kRepetitions = 30;
constexpr double kMinTimeSeconds = 0.05;
constexpr TimeMs kNow = 1'700'000'000'000;

long env_or(const char* name, long fallback) {
  const char* v = std::getenv(name);
  const long n = v != nullptr ? std::strtol(v, nullptr, 10) : 0;
  return n > 0 ? n : fallback;
}

// A ramping run at step 0 with 150 of its 200 candidate outcomes and 15,000 baseline ones: every
// criterion has data, none fails, the step waits (analyze makes no move).
MigrationRun ramping_run(const MigrationSpec& spec, const Scenario& scenario) {
  MigrationRun run = turnout::start_run(spec);
  (void)turnout::analyze(run, spec, scenario, kNow);
  turnout::test::Rng rng(7);
  const turnout::test::ArmModel model;
  for (int i = 0; i < 15'150; ++i) {
    const auto arm = i < 150 ? turnout::Arm::candidate : turnout::Arm::baseline;
    const bool ok = !rng.chance(model.error);
    const std::int64_t ttft = rng.chance(model.ttft_over) ? 801 : 400;
    const std::int64_t latency = rng.chance(model.latency_over) ? 4'001 : 2'000;
    turnout::observe_outcome(run, spec, scenario, arm, ok, ttft, latency,
                             turnout::Money::from_picos(rng.uniform(model.cost_lo_picos, model.cost_hi_picos)));
    if (ok) turnout::observe_verdict(run, arm, !rng.chance(model.reject));
  }
  return run;
}

void analyze_ramping(benchmark::State& state) {
  const MigrationSpec spec = turnout::test::canary_spec();
  const Scenario scenario = turnout::test::canary_scenario();
  MigrationRun run = ramping_run(spec, scenario);
  for (auto _ : state) {
    run.next_analysis_at = kNow + 60'000;
    auto moved = turnout::analyze(run, spec, scenario, kNow + 60'000);
    benchmark::DoNotOptimize(moved);
  }
  if (run.phase != MigrationPhase::ramp || run.transitions.size() != 1) state.SkipWithError("the run moved");
}

// Baseline: the analysis of a run that is not due (pending before its canary stage).
void analyze_pending(benchmark::State& state) {
  MigrationSpec spec = turnout::test::canary_spec();
  spec.stage = turnout::MigrationStage::evals;
  const Scenario scenario = turnout::test::canary_scenario();
  MigrationRun run = turnout::start_run(spec);
  for (auto _ : state) {
    benchmark::DoNotOptimize(&run);
    auto moved = turnout::analyze(run, spec, scenario, kNow);
    benchmark::DoNotOptimize(moved);
  }
}

BENCHMARK(analyze_ramping)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds)->ReportAggregatesOnly(false);
BENCHMARK(analyze_pending)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds)->ReportAggregatesOnly(false);

double quantile_u64(const std::vector<std::uint64_t>& v, double q) {
  return static_cast<double>(turnout::test::quantile_of(v, q));
}

void print_scenario(const char* name, const turnout::test::CanaryStats& s, bool regression, bool first) {
  const double rate = static_cast<double>(s.aborted) / s.trials;
  std::printf(
      "%s\n    \"%s\": {\"trials\": %d, \"%s\": %.4f, \"promoted\": %d, \"aborted\": %d, \"failed\": %d, "
      "\"guardrail\": %d, \"pause_expired\": %d, \"still_open\": %d, \"median_requests_to_detection\": %.0f, "
      "\"p99_requests_to_detection\": %.0f, \"median_candidate_requests_to_detection\": %.0f, "
      "\"median_requests_to_promotion\": %.0f, \"p99_requests_to_promotion\": %.0f}",
      first ? "" : ",", name, s.trials, regression ? "detection_rate" : "false_abort_rate", rate, s.promoted, s.aborted,
      s.failed, s.guardrail, s.pause_expired, s.still_open, quantile_u64(s.requests_to_abort, 0.5),
      quantile_u64(s.requests_to_abort, 0.99), quantile_u64(s.candidate_requests_to_abort, 0.5),
      quantile_u64(s.requests_to_promotion, 0.5), quantile_u64(s.requests_to_promotion, 0.99));
}

}  // namespace

int main(int argc, char** argv) {
  const int trials = static_cast<int>(env_or("TURNOUT_CANARY_TRIALS", 1'000));
  const auto requests = static_cast<std::uint32_t>(env_or("TURNOUT_CANARY_REQUESTS", 1'000));
  const MigrationSpec spec = turnout::test::canary_spec();
  const Scenario scenario = turnout::test::canary_scenario();
  const turnout::test::ArmModel base;

  benchmark::Initialize(&argc, argv);
  turnout::bench::CollectingReporter reporter;
  reporter.SetOutputStream(&std::cerr);
  reporter.SetErrorStream(&std::cerr);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  std::printf("{\n  \"unit\": \"ns\",\n  \"requests_per_minute\": %u,\n  \"delta\": %.3f,\n  \"scenarios\": {",
              requests, spec.delta);
  print_scenario("none", turnout::test::run_canaries(spec, scenario, base, base, requests, trials, 1), false, true);
  std::uint64_t seed = 100;
  for (std::size_t m = 0; m < turnout::kStopMetrics.size(); ++m) {
    const auto metric = static_cast<StopMetric>(m);
    const auto s = turnout::test::run_canaries(spec, scenario, base, turnout::test::regressed(base, spec, metric),
                                               requests, trials, ++seed);
    print_scenario(std::string(turnout::to_string(metric)).c_str(), s, true, false);
  }
  std::printf("\n  },\n  \"benchmarks\": {");
  std::map<std::string, std::pair<double, double>> stats;
  bool first = true;
  for (const auto& [name, v] : reporter.samples()) {
    const double median = turnout::bench::quantile(v, 0.5);
    const double p99 = turnout::bench::quantile(v, 0.99);
    stats[name] = {median, p99};
    std::printf("%s\n    \"%s\": {\"median\": %.2f, \"p99\": %.2f, \"repetitions\": %zu}", first ? "" : ",",
                name.c_str(), median, p99, v.size());
    first = false;
  }
  std::printf("\n  },\n  \"ratios\": {");
  const auto a = stats.find("analyze_ramping");
  const auto b = stats.find("analyze_pending");
  if (a != stats.end() && b != stats.end()) {
    std::printf("\n    \"analyze_vs_pending\": {\"median\": %.3f, \"p99\": %.3f, \"target\": 0.000}",
                a->second.first / b->second.first, a->second.second / b->second.second);
  }
  std::printf("\n  }\n}\n");
  return 0;
}
