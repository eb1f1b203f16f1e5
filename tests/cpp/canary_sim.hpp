#pragma once
// A small canary simulator for the migration's state machine (migration_test and canary_bench): synthetic
// traffic of N requests per analysis interval, split between the arms by the run's candidate percent,
// with Bernoulli errors, over-SLO answers and rejections and a random cost drawn per arm, and
// analyze() at the end of each interval until the run is promoted or aborted.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "turnout/config.hpp"
#include "turnout/migration.hpp"

namespace turnout::test {

/// How one arm's requests behave.
struct ArmModel {
  double error = 0.01;                         ///< P(status not ok)
  double ttft_over = 0.03;                     ///< P(an answer's TTFT is over the SLO)
  double latency_over = 0.03;                  ///< P(an answer's latency is over the SLO)
  double reject = 0.03;                        ///< P(an answer's verdict rejects it)
  std::int64_t cost_lo_picos = 500'000'000;    ///< an answer's cost is uniform in [lo, hi] picodollars
  std::int64_t cost_hi_picos = 3'500'000'000;  ///< (mean $0.002, coefficient of variation 0.43)
};

/// The scenario the simulated canaries run on: every stop criterion is live.
inline Scenario canary_scenario() {
  Scenario s;
  s.name = "support-summarization";
  s.ttft_p95_ms = 800;
  s.latency_p95_ms = 4000;
  s.min_accept_rate = 0.95;
  return s;
}

/// The migration block they run: the defaults of the table, with cost_per_accepted at 1.2 x baseline.
inline MigrationSpec canary_spec() {
  MigrationSpec m;
  m.baseline = 0;
  m.candidate = 1;
  m.stage = MigrationStage::canary;
  m.steps = {1, 5, 25, 50, 100};
  m.min_samples = 200;
  m.max_step_ms = 3'600'000;
  m.interval_ms = 60'000;
  m.incident_owner = "support-oncall";
  m.delta = 0.05;
  m.stop = {{StopMetric::errors, 0.02},
            {StopMetric::ttft, 0.05},
            {StopMetric::latency, 0.05},
            {StopMetric::acceptance, 0.03},
            {StopMetric::cost, 0.10}};
  m.cost_max_ratio = 1.2;
  m.guardrails.error_rate = 0.25;
  m.guardrails.latency_p99_ms = 20'000;
  m.guardrails.min_samples = 20;
  m.identity = 0x5eed;
  return m;
}

/// The candidate with a regression of exactly the criterion's minimum effect on one metric.
inline ArmModel regressed(const ArmModel& baseline, const MigrationSpec& spec, StopMetric metric) {
  ArmModel c = baseline;
  double effect = 0.0;
  for (const auto& s : spec.stop) {
    if (s.metric == metric) effect = s.min_effect;
  }
  switch (metric) {
    case StopMetric::errors: c.error += effect; break;
    case StopMetric::ttft: c.ttft_over += effect; break;
    case StopMetric::latency: c.latency_over += effect; break;
    case StopMetric::acceptance: c.reject += effect; break;
    case StopMetric::cost: {
      // The same acceptance, so a cost per accepted outcome of ratio x (1 + effect) x the baseline's.
      const double scale = spec.cost_max_ratio * (1.0 + effect);
      c.cost_lo_picos = static_cast<std::int64_t>(static_cast<double>(baseline.cost_lo_picos) * scale);
      c.cost_hi_picos = static_cast<std::int64_t>(static_cast<double>(baseline.cost_hi_picos) * scale);
      break;
    }
  }
  return c;
}

/// SplitMix64: fast, and the same draws on every platform (std::*_distribution are not).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// true with probability p.
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }
  std::int64_t uniform(std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(next() % static_cast<std::uint64_t>(hi - lo + 1));
  }

 private:
  std::uint64_t state_;
};

/// How a simulated canary ended.
struct CanaryResult {
  MigrationPhase phase = MigrationPhase::pending;  ///< promoted or aborted (or where it stood at the cap)
  TransitionCause cause = TransitionCause::started;
  std::uint64_t requests = 0;            ///< all requests until the run ended
  std::uint64_t candidate_requests = 0;  ///< of them, on the candidate
  bool paused = false;                   ///< it went through a pause
  MigrationRun run;
};

/// Runs one canary: `requests_per_interval` requests per analysis interval, at most `max_intervals`.
inline CanaryResult simulate_canary(const MigrationSpec& spec, const Scenario& scenario, const ArmModel& baseline,
                                    const ArmModel& candidate, std::uint32_t requests_per_interval, std::uint64_t seed,
                                    int max_intervals = 100'000) {
  Rng rng(seed);
  CanaryResult result;
  MigrationRun run = start_run(spec);
  TimeMs now = 1'700'000'000'000;
  (void)analyze(run, spec, scenario, now);  // stage canary: ramp, step 0
  for (int i = 0; i < max_intervals; ++i) {
    const double share = static_cast<double>(candidate_percent(spec, run)) / 100.0;
    for (std::uint32_t r = 0; r < requests_per_interval; ++r) {
      const bool on_candidate = rng.chance(share);
      const ArmModel& model = on_candidate ? candidate : baseline;
      const Arm arm = on_candidate ? Arm::candidate : Arm::baseline;
      ++result.requests;
      if (on_candidate) ++result.candidate_requests;
      if (rng.chance(model.error)) {
        observe_outcome(run, spec, scenario, arm, false, -1, -1, std::nullopt);
        continue;
      }
      const std::int64_t ttft = rng.chance(model.ttft_over) ? scenario.ttft_p95_ms + 1 : scenario.ttft_p95_ms / 2;
      const std::int64_t latency =
          rng.chance(model.latency_over) ? scenario.latency_p95_ms + 1 : scenario.latency_p95_ms / 2;
      const Money cost = Money::from_picos(rng.uniform(model.cost_lo_picos, model.cost_hi_picos));
      observe_outcome(run, spec, scenario, arm, true, ttft, latency, cost);
      observe_verdict(run, arm, !rng.chance(model.reject));
    }
    now += spec.interval_ms;
    if (const auto t = analyze(run, spec, scenario, now)) {
      result.cause = t->cause;
      if (t->to == MigrationPhase::paused) result.paused = true;
    }
    if (run.phase == MigrationPhase::promoted || run.phase == MigrationPhase::aborted) break;
  }
  result.phase = run.phase;
  result.run = std::move(run);
  return result;
}

/// The value at quantile q (nearest rank) of a sample; 0 if it is empty.
template <class T>
T quantile_of(std::vector<T> v, double q) {
  if (v.empty()) return T{};
  std::sort(v.begin(), v.end());
  const auto idx = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

/// Many canaries of one scenario, summed up.
struct CanaryStats {
  int trials = 0;
  int promoted = 0, aborted = 0, still_open = 0;
  int failed = 0, guardrail = 0, pause_expired = 0, other_abort = 0;    ///< aborts by cause
  int paused = 0;                                                       ///< runs that went through a pause
  std::vector<std::uint64_t> requests_to_abort, requests_to_promotion;  ///< all requests (both arms)
  std::vector<std::uint64_t> candidate_requests_to_abort;               ///< the candidate's of them
};

inline CanaryStats run_canaries(const MigrationSpec& spec, const Scenario& scenario, const ArmModel& baseline,
                                const ArmModel& candidate, std::uint32_t requests_per_interval, int trials,
                                std::uint64_t seed) {
  CanaryStats s;
  s.trials = trials;
  for (int i = 0; i < trials; ++i) {
    const CanaryResult r = simulate_canary(spec, scenario, baseline, candidate, requests_per_interval,
                                           seed * 1'000'003ULL + static_cast<std::uint64_t>(i));
    if (r.paused) ++s.paused;
    if (r.phase == MigrationPhase::promoted) {
      ++s.promoted;
      s.requests_to_promotion.push_back(r.requests);
    } else if (r.phase == MigrationPhase::aborted) {
      ++s.aborted;
      s.requests_to_abort.push_back(r.requests);
      s.candidate_requests_to_abort.push_back(r.candidate_requests);
      switch (r.cause) {
        case TransitionCause::failed: ++s.failed; break;
        case TransitionCause::guardrail: ++s.guardrail; break;
        case TransitionCause::pause_expired: ++s.pause_expired; break;
        default: ++s.other_abort; break;
      }
    } else {
      ++s.still_open;
    }
  }
  return s;
}

}  // namespace turnout::test
