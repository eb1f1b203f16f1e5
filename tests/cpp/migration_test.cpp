// The migration's core: the time-uniform intervals (hand-checked values, shrinking, coverage under
// continuous monitoring), every move and cause of the state machine, the operator's commands and their
// conflicts, and the must-show of issue 13 on simulated canaries: without a regression the false-abort
// rate stays at or under delta; with one of the minimum effect, the detection rate and the requests it
// took; with too little traffic, paused then aborted, never promoted.

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "canary_sim.hpp"
#include "turnout/config.hpp"
#include "turnout/migration.hpp"

namespace turnout {
namespace {

using test::ArmModel;
using test::canary_scenario;
using test::canary_spec;
using Verdict = CriterionResult::Verdict;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr TimeMs kT0 = 1'700'000'000'000;

// ---- names -------------------------------------------------------------------------------------------

TEST(MigrationNames, EveryEnumHasItsTableName) {
  for (std::size_t i = 0; i < kMigrationPhases.size(); ++i) {
    EXPECT_EQ(to_string(static_cast<MigrationPhase>(i)), kMigrationPhases[i]);
  }
  for (std::size_t i = 0; i < kMigrationStages.size(); ++i) {
    EXPECT_EQ(to_string(static_cast<MigrationStage>(i)), kMigrationStages[i]);
  }
  for (std::size_t i = 0; i < kStopMetrics.size(); ++i)
    EXPECT_EQ(to_string(static_cast<StopMetric>(i)), kStopMetrics[i]);
  for (std::size_t i = 0; i < kTransitionCauses.size(); ++i) {
    EXPECT_EQ(to_string(static_cast<TransitionCause>(i)), kTransitionCauses[i]);
  }
  for (std::size_t i = 0; i < kMigrationCommands.size(); ++i) {
    const auto cmd = static_cast<MigrationCommand>(i);
    EXPECT_EQ(to_string(cmd), kMigrationCommands[i]);
    EXPECT_EQ(migration_command_from_string(kMigrationCommands[i]), cmd);
  }
  EXPECT_EQ(to_string(Verdict::fail), "fail");
  EXPECT_EQ(to_string(Verdict::pass), "pass");
  EXPECT_EQ(to_string(Verdict::inconclusive), "inconclusive");
}

TEST(MigrationNames, UnknownCommandIsNone) {
  EXPECT_EQ(migration_command_from_string("status"), std::nullopt);
  EXPECT_EQ(migration_command_from_string("Promote"), std::nullopt);
  EXPECT_EQ(migration_command_from_string(""), std::nullopt);
}

// ---- rate_interval -----------------------------------------------------------------------------------

TEST(RateInterval, ClosedFormAfterOneSuccess) {
  // One success in one trial: LR(p) = [B(3/2, 1/2) / B(1/2, 1/2)] / p = 1 / (2p), so the interval is
  // {p : 1 / (2p) < 1 / alpha} = (alpha / 2, 1].
  const auto [lo, hi] = rate_interval(1, 1, 0.05);
  EXPECT_NEAR(lo, 0.025, 1e-9);
  EXPECT_GE(0.025, lo - 1e-12);  // never narrower than the exact set
  EXPECT_EQ(hi, 1.0);
}

TEST(RateInterval, HandCheckedValues) {
  // Reference endpoints from an independent bisection to 1e-15 on log LR (Python, math.lgamma).
  struct Case {
    std::uint64_t s, n;
    double alpha, lo, hi;
  };
  for (const Case& c :
       {Case{7, 100, 0.05, 0.0147561105, 0.1857681136}, Case{0, 50, 0.05, 0.0, 0.1046424771},
        Case{50, 50, 0.05, 0.8953575229, 1.0}, Case{10, 1000, 0.005, 0.0017998864, 0.0296550006},
        Case{500, 1000, 0.05, 0.4424183857, 0.5575816143}, Case{5000, 10000, 0.05, 0.4802255262, 0.5197744738}}) {
    SCOPED_TRACE(std::to_string(c.s) + " of " + std::to_string(c.n));
    const auto [lo, hi] = rate_interval(c.s, c.n, c.alpha);
    EXPECT_NEAR(lo, c.lo, 1e-8);
    EXPECT_NEAR(hi, c.hi, 1e-8);
  }
}

TEST(RateInterval, NoTrialsOrNoLevelIsEverything) {
  EXPECT_EQ(rate_interval(0, 0, 0.05), std::make_pair(0.0, 1.0));
  EXPECT_EQ(rate_interval(3, 10, 0.0), std::make_pair(0.0, 1.0));
  EXPECT_EQ(rate_interval(3, 10, 1.0), std::make_pair(0.0, 1.0));
}

TEST(RateInterval, ShrinksAroundTheRateAsTrialsGrow) {
  double width = 2.0;
  for (std::uint64_t n : {10ULL, 100ULL, 1'000ULL, 10'000ULL, 100'000ULL, 1'000'000ULL}) {
    const auto [lo, hi] = rate_interval(n / 10, n, 0.005);
    EXPECT_LT(lo, 0.1);
    EXPECT_GT(hi, 0.1);
    EXPECT_LT(hi - lo, width) << n;
    width = hi - lo;
  }
  EXPECT_LT(width, 0.003);
  // A smaller alpha, a wider interval.
  const auto [lo1, hi1] = rate_interval(30, 300, 0.05);
  const auto [lo2, hi2] = rate_interval(30, 300, 0.005);
  EXPECT_LT(lo2, lo1);
  EXPECT_GT(hi2, hi1);
}

TEST(RateInterval, CoversTheRateUnderContinuousMonitoring) {
  // 2,000 sequences of 2,000 Bernoulli draws, the interval checked after every draw: a sequence misses
  // when any of its 2,000 intervals leaves the true rate out. Ville's inequality: at most alpha of them.
  // The interval depends on (successes, trials) only: each pair is computed once.
  constexpr int kSequences = 2'000;
  constexpr std::uint64_t kDraws = 2'000;
  constexpr double kAlpha = 0.05;
  for (const double p : {0.05, 0.5}) {
    std::unordered_map<std::uint64_t, std::pair<double, double>> seen;
    int missed = 0;
    test::Rng rng(p < 0.1 ? 17 : 23);
    for (int seq = 0; seq < kSequences; ++seq) {
      std::uint64_t s = 0;
      for (std::uint64_t n = 1; n <= kDraws; ++n) {
        if (rng.chance(p)) ++s;
        auto [it, inserted] = seen.try_emplace(n * (kDraws + 1) + s);
        if (inserted) it->second = rate_interval(s, n, kAlpha);
        if (p < it->second.first || p > it->second.second) {
          ++missed;
          break;
        }
      }
    }
    const double miss_rate = static_cast<double>(missed) / kSequences;
    std::printf("rate_interval coverage: p=%.2f alpha=%.2f: %d of %d sequences missed once (%.4f)\n", p, kAlpha, missed,
                kSequences, miss_rate);
    EXPECT_LE(miss_rate, kAlpha) << p;
  }
}

// ---- mean_interval -----------------------------------------------------------------------------------

double sum_of_squares_1_to_100() {
  double s = 0;
  for (int x = 1; x <= 100; ++x) s += static_cast<double>(x) * x;
  return s;
}

TEST(MeanInterval, HandCheckedValues) {
  // 1..100: mean 50.5, sample variance 841.67. rho^2 = (-2 log a + log(-2 log a + 1)) / 200 and the
  // margin sigma * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / a)), by Python.
  const double sq = sum_of_squares_1_to_100();
  const auto [lo, hi] = mean_interval(100, 5050.0, sq, 0.05, 200);
  EXPECT_NEAR(lo, 41.5541070986, 1e-8);
  EXPECT_NEAR(hi, 59.4458929014, 1e-8);
  // The same values four times over: the same mean, a narrower interval.
  const auto [lo4, hi4] = mean_interval(400, 4 * 5050.0, 4 * sq, 0.05, 200);
  EXPECT_NEAR(lo4, 46.0758255287, 1e-8);
  EXPECT_NEAR(hi4, 54.9241744713, 1e-8);
}

TEST(MeanInterval, BelowTwoSamplesIsEverything) {
  EXPECT_EQ(mean_interval(0, 0.0, 0.0, 0.05, 200), std::make_pair(-kInf, kInf));
  EXPECT_EQ(mean_interval(1, 3.0, 9.0, 0.05, 200), std::make_pair(-kInf, kInf));
}

TEST(MeanInterval, ShrinksAsSamplesGrow) {
  const double sq = sum_of_squares_1_to_100();
  double width = kInf;
  for (std::uint64_t k = 1; k <= 1'000; k *= 10) {
    const double kd = static_cast<double>(k);
    const auto [lo, hi] = mean_interval(100 * k, 5050.0 * kd, sq * kd, 0.005, 200);
    EXPECT_LT(lo, 50.5);
    EXPECT_GT(hi, 50.5);
    EXPECT_LT(hi - lo, width);
    width = hi - lo;
  }
}

TEST(MeanInterval, CoversTheMeanUnderContinuousMonitoringFromItsPlannedSize) {
  // 2,000 sequences of uniform costs in [0.0005, 0.0035], each checked after every draw from the
  // planned 200 on (the cost criterion trusts the asymptotic interval from min_samples on).
  constexpr double kAlpha = 0.05;
  constexpr std::uint64_t kPlanned = 200;
  std::uint64_t state = 7;
  auto uniform = [&state] {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return static_cast<double>((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  };
  int missed = 0;
  constexpr int kSequences = 2'000;
  for (int seq = 0; seq < kSequences; ++seq) {
    double sum = 0, sum_sq = 0;
    for (std::uint64_t n = 1; n <= 2'000; ++n) {
      const double x = 0.0005 + 0.003 * uniform();
      sum += x;
      sum_sq += x * x;
      if (n < kPlanned) continue;
      const auto [lo, hi] = mean_interval(n, sum, sum_sq, kAlpha, kPlanned);
      if (lo > 0.002 || hi < 0.002) {
        ++missed;
        break;
      }
    }
  }
  EXPECT_LE(static_cast<double>(missed) / kSequences, kAlpha);
}

// ---- the state machine -------------------------------------------------------------------------------

// A run started at kT0 (ramp, step 0) on the canary spec.
struct Canary {
  MigrationSpec spec = canary_spec();
  Scenario scenario = canary_scenario();
  MigrationRun run;

  Canary() : run(start_run(spec)) {}
  explicit Canary(MigrationSpec s) : spec(std::move(s)), run(start_run(spec)) {}

  void start() {
    const auto t = analyze(run, spec, scenario, kT0);
    ASSERT_TRUE(t);
    ASSERT_EQ(t->cause, TransitionCause::started);
  }
  // n outcomes on an arm: `errors` of them failed, the rest ok and inside the SLO, each accepted.
  void feed(Arm arm, std::uint64_t n, std::uint64_t errors = 0, std::int64_t latency_ms = 100,
            std::optional<Money> cost = Money::from_picos(2'000'000'000)) {
    for (std::uint64_t i = 0; i < n; ++i) {
      const bool ok = i >= errors;
      observe_outcome(run, spec, scenario, arm, ok, 50, latency_ms, ok ? cost : std::nullopt);
      if (ok) observe_verdict(run, arm, true);
    }
  }
  std::optional<MigrationTransition> analyze_at(TimeMs now) { return analyze(run, spec, scenario, now); }
  [[nodiscard]] TimeMs next() const { return run.next_analysis_at; }
};

TEST(MigrationRun, FreeTargetsOnBothArmsAreNoCostRegression) {
  Canary c;
  c.start();
  c.feed(Arm::baseline, 300, 0, 100, Money::from_picos(0));
  c.feed(Arm::candidate, 300, 0, 100, Money::from_picos(0));
  for (const CriterionResult& r : criteria(c.run, c.spec, c.scenario)) {
    EXPECT_NE(r.verdict, CriterionResult::Verdict::fail) << to_string(r.metric);
    EXPECT_FALSE(std::isnan(r.lo) || std::isnan(r.hi)) << to_string(r.metric);
  }
  const auto t = c.analyze_at(c.next());
  EXPECT_TRUE(!t || t->cause != TransitionCause::failed) << (t ? t->detail : "");
}

TEST(MigrationRun, TheCostCriterionJudgesNothingBeforeItsMinimumSamples) {
  Canary c;
  c.start();
  // Two equal costs would give the asymptotic interval zero width: a dearer candidate would "fail".
  c.feed(Arm::baseline, c.spec.min_samples - 1, 0, 100, Money::from_picos(1'000'000'000));
  c.feed(Arm::candidate, c.spec.min_samples - 1, 0, 100, Money::from_picos(5'000'000'000));
  for (const CriterionResult& r : criteria(c.run, c.spec, c.scenario)) {
    if (r.metric != StopMetric::cost) continue;
    EXPECT_EQ(r.verdict, CriterionResult::Verdict::inconclusive);
    EXPECT_EQ(r.lo, -kInf);
  }
}

TEST(MigrationRun, AClockThatStepsBackDoesNotHoldTheGuardrailsOff) {
  Canary c;
  c.start();
  const TimeMs back = kT0 - 3'600'000;  // an hour back: next_analysis_at is now far ahead
  EXPECT_TRUE(analysis_due(c.run, c.spec, back));
  c.feed(Arm::candidate, 50, 50);  // every candidate outcome failed
  const auto t = c.analyze_at(back);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::guardrail);
  EXPECT_EQ(t->at, back);
}

TEST(MigrationRun, AClockThatStepsBackReanchorsTheNextAnalysis) {
  Canary c;
  c.start();
  const TimeMs back = kT0 - 3'600'000;
  EXPECT_FALSE(c.analyze_at(back));
  EXPECT_EQ(c.next(), back + c.spec.interval_ms);
  EXPECT_FALSE(analysis_due(c.run, c.spec, back + 1));
}

TEST(MigrationRun, APauseExpiresAtItsDeadlineToTheMillisecond) {
  Canary c;
  c.start();
  ASSERT_TRUE(command(c.run, c.spec, MigrationCommand::pause, kT0 + 1'234).ok());
  const TimeMs expiry = kT0 + 1'234 + c.spec.max_step_ms;  // off the interval grid
  ASSERT_TRUE(analysis_due(c.run, c.spec, expiry));
  std::optional<MigrationTransition> t;
  for (TimeMs now = c.next(); now < expiry && !t; now = c.next()) t = c.analyze_at(now);
  ASSERT_FALSE(t) << t->detail;
  t = c.analyze_at(expiry);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::pause_expired);
  EXPECT_EQ(t->at, expiry);
}

TEST(MigrationRun, TransitionsAreBoundedToTheFirstAndTheLatest) {
  Canary c;
  c.start();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(command(c.run, c.spec, MigrationCommand::pause, kT0 + 2 * i + 1).ok());
    ASSERT_TRUE(command(c.run, c.spec, MigrationCommand::resume, kT0 + 2 * i + 2).ok());
  }
  ASSERT_EQ(c.run.transitions.size(), 64U);
  EXPECT_EQ(c.run.transitions.front().cause, TransitionCause::started);
  EXPECT_EQ(c.run.transitions.back().at, kT0 + 200);
}

TEST(MigrationRun, PendingBeforeCanaryTakesNoTrafficAndIgnoresOutcomes) {
  Canary c;
  c.spec.stage = MigrationStage::evals;
  c.run = start_run(c.spec);
  EXPECT_EQ(c.run.identity, c.spec.identity);
  EXPECT_EQ(c.run.phase, MigrationPhase::pending);
  EXPECT_EQ(candidate_percent(c.spec, c.run), 0U);
  EXPECT_FALSE(analysis_due(c.run, c.spec, kT0));
  EXPECT_FALSE(c.analyze_at(kT0));
  c.feed(Arm::candidate, 10, 3);
  observe_verdict(c.run, Arm::baseline, false);
  EXPECT_EQ(c.run.candidate, ArmCounts{});
  EXPECT_EQ(c.run.baseline, ArmCounts{});
  EXPECT_EQ(c.run.interval, IntervalCounts{});
  EXPECT_TRUE(c.run.transitions.empty());
}

TEST(MigrationRun, APendingRunStartsWhenTheStageIsCanary) {
  Canary c;
  EXPECT_TRUE(analysis_due(c.run, c.spec, kT0));
  const auto t = c.analyze_at(kT0);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->from, MigrationPhase::pending);
  EXPECT_EQ(t->to, MigrationPhase::ramp);
  EXPECT_EQ(t->cause, TransitionCause::started);
  EXPECT_EQ(t->step, 0U);
  EXPECT_EQ(t->at, kT0);
  EXPECT_NE(t->detail.find("1 %"), std::string::npos) << t->detail;
  EXPECT_EQ(c.run.started_at, kT0);
  EXPECT_EQ(c.run.step_started_at, kT0);
  EXPECT_EQ(c.run.next_analysis_at, kT0 + c.spec.interval_ms);
  EXPECT_EQ(candidate_percent(c.spec, c.run), 1U);
  ASSERT_EQ(c.run.transitions.size(), 1U);
  EXPECT_EQ(c.run.transitions[0], *t);
  // Not due again before the interval.
  EXPECT_FALSE(analysis_due(c.run, c.spec, kT0 + c.spec.interval_ms - 1));
  EXPECT_FALSE(c.analyze_at(kT0 + c.spec.interval_ms - 1));
  EXPECT_TRUE(analysis_due(c.run, c.spec, kT0 + c.spec.interval_ms));
}

TEST(MigrationRun, CountsOutcomesOfBothArmsAndTheCandidatesInterval) {
  Canary c;
  c.start();
  observe_outcome(c.run, c.spec, c.scenario, Arm::candidate, true, 900, 4001, Money::from_picos(1'000'000'000'000));
  observe_outcome(c.run, c.spec, c.scenario, Arm::candidate, true, 800, 25'000, std::nullopt);
  observe_outcome(c.run, c.spec, c.scenario, Arm::candidate, false, -1, -1, std::nullopt);
  observe_outcome(c.run, c.spec, c.scenario, Arm::baseline, true, -1, -1, Money::from_picos(3'000'000'000'000));
  observe_verdict(c.run, Arm::candidate, false);
  observe_verdict(c.run, Arm::candidate, true);
  const ArmCounts& a = c.run.candidate;
  EXPECT_EQ(a.outcomes, 3U);
  EXPECT_EQ(a.errors, 1U);
  EXPECT_EQ(a.ttft_checked, 2U);  // the failed outcome is not an answer
  EXPECT_EQ(a.ttft_over, 1U);     // 900 > 800; 800 is not over
  EXPECT_EQ(a.latency_checked, 2U);
  EXPECT_EQ(a.latency_over, 2U);
  EXPECT_EQ(a.verdicts, 2U);
  EXPECT_EQ(a.rejected, 1U);
  EXPECT_EQ(a.priced, 1U);
  EXPECT_EQ(a.cost, Money::from_picos(1'000'000'000'000));
  EXPECT_DOUBLE_EQ(a.cost_sq_usd, 1.0);
  EXPECT_EQ(c.run.baseline.outcomes, 1U);
  EXPECT_EQ(c.run.baseline.ttft_checked, 0U);  // not reported
  EXPECT_DOUBLE_EQ(c.run.baseline.cost_sq_usd, 9.0);
  EXPECT_EQ(c.run.step_outcomes, 3U);
  EXPECT_EQ(c.run.interval, (IntervalCounts{3, 1, 1}));  // 25,000 ms > latency_p99_ms 20,000
}

TEST(MigrationRun, AStepWithItsSamplesPassesToTheNextAndTheIntervalStartsOver) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 200);
  c.feed(Arm::baseline, 5'000);
  const TimeMs at = c.next();
  const auto t = c.analyze_at(at);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::step_passed);
  EXPECT_EQ(t->from, MigrationPhase::ramp);
  EXPECT_EQ(t->to, MigrationPhase::ramp);
  EXPECT_EQ(t->step, 1U);
  EXPECT_EQ(t->candidate_outcomes, 200U);
  EXPECT_EQ(t->baseline_outcomes, 5'000U);
  EXPECT_NE(t->detail.find("step 0 (1 %) passed with 200 candidate outcomes (min 200)"), std::string::npos)
      << t->detail;
  EXPECT_EQ(c.run.step_outcomes, 0U);
  EXPECT_EQ(c.run.step_started_at, at);
  EXPECT_EQ(c.run.interval, IntervalCounts{});
  EXPECT_EQ(c.run.next_analysis_at, at + c.spec.interval_ms);
  EXPECT_EQ(candidate_percent(c.spec, c.run), 5U);
  // The arms keep counting since the canary began.
  EXPECT_EQ(c.run.candidate.outcomes, 200U);
}

TEST(MigrationRun, FewerThanItsSamplesTheStepWaits) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 199);
  c.feed(Arm::baseline, 5'000);
  EXPECT_FALSE(c.analyze_at(c.next()));
  EXPECT_EQ(c.run.step, 0U);
  EXPECT_EQ(c.run.step_outcomes, 199U);
}

TEST(MigrationRun, ALateAnalysisSchedulesTheNextPastNow) {
  Canary c;
  c.start();
  const TimeMs late = kT0 + 5 * c.spec.interval_ms + 7;
  EXPECT_FALSE(c.analyze_at(late));
  EXPECT_EQ(c.run.next_analysis_at, kT0 + 6 * c.spec.interval_ms);
}

TEST(MigrationRun, TheLastStepProvenPromotes) {
  MigrationSpec spec = canary_spec();
  spec.steps = {50, 100};
  spec.stop = {{StopMetric::errors, 0.02}};
  Canary c(spec);
  c.start();
  c.feed(Arm::candidate, 200);
  c.feed(Arm::baseline, 200);
  ASSERT_EQ(c.analyze_at(c.next())->cause, TransitionCause::step_passed);
  c.feed(Arm::candidate, 3'000);
  c.feed(Arm::baseline, 3'000);
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::proven);
  EXPECT_EQ(t->to, MigrationPhase::promoted);
  EXPECT_NE(t->detail.find("every criterion lies below its minimum effect"), std::string::npos) << t->detail;
  EXPECT_NE(t->detail.find("errors: candidate 0.0 % failed (n=3,200) vs baseline 0.0 % (n=3,200)"), std::string::npos)
      << t->detail;
  EXPECT_EQ(candidate_percent(c.spec, c.run), 100U);
  EXPECT_FALSE(analysis_due(c.run, c.spec, c.next() + 10 * c.spec.interval_ms));
  // A promoted run ignores observations.
  const MigrationRun before = c.run;
  c.feed(Arm::candidate, 10, 10);
  EXPECT_EQ(c.run, before);
}

TEST(MigrationRun, TheLastStepWithoutProofWaitsThenPausesInconclusive) {
  MigrationSpec spec = canary_spec();
  spec.steps = {100};
  spec.min_samples = 10;
  Canary c(spec);
  c.start();
  c.feed(Arm::candidate, 10);
  c.feed(Arm::baseline, 10);
  EXPECT_FALSE(c.analyze_at(c.next()));  // samples in, nothing proven, deadline ahead
  const TimeMs deadline = kT0 + c.spec.max_step_ms;
  const auto t = c.analyze_at(deadline);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::inconclusive);
  EXPECT_EQ(t->to, MigrationPhase::paused);
  EXPECT_NE(t->detail.find("proved nothing by its deadline (3600 s)"), std::string::npos) << t->detail;
  EXPECT_NE(t->detail.find("not below"), std::string::npos) << t->detail;
  EXPECT_EQ(c.run.paused_at, deadline);
  EXPECT_EQ(candidate_percent(c.spec, c.run), 100U);  // the weight stays at the step's
}

TEST(MigrationRun, NoDataPausesThenThePauseExpiresIntoAnAbort) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 57);
  c.feed(Arm::baseline, 5'000);
  const TimeMs deadline = kT0 + c.spec.max_step_ms;
  EXPECT_FALSE(c.analyze_at(deadline - 1));
  const auto paused = c.analyze_at(deadline);
  ASSERT_TRUE(paused);
  EXPECT_EQ(paused->cause, TransitionCause::no_data);
  EXPECT_EQ(paused->to, MigrationPhase::paused);
  EXPECT_EQ(paused->detail,
            "step 0 (1 %) had 57 of its 200 candidate outcomes by its deadline (3600 s): "
            "no data never passes");
  EXPECT_EQ(candidate_percent(c.spec, c.run), 1U);
  // Paused: analyses go on, but the samples that come in now do not move it on.
  c.feed(Arm::candidate, 500);
  c.feed(Arm::baseline, 5'000);
  EXPECT_TRUE(analysis_due(c.run, c.spec, c.next()));
  EXPECT_FALSE(c.analyze_at(c.next()));
  EXPECT_EQ(c.run.phase, MigrationPhase::paused);
  EXPECT_EQ(c.run.step, 0U);
  const auto aborted = c.analyze_at(deadline + c.spec.max_step_ms);
  ASSERT_TRUE(aborted);
  EXPECT_EQ(aborted->cause, TransitionCause::pause_expired);
  EXPECT_EQ(aborted->from, MigrationPhase::paused);
  EXPECT_EQ(aborted->to, MigrationPhase::aborted);
  EXPECT_EQ(candidate_percent(c.spec, c.run), 0U);
  EXPECT_FALSE(analysis_due(c.run, c.spec, deadline + 100 * c.spec.max_step_ms));
  const std::vector<TransitionCause> causes{TransitionCause::started, TransitionCause::no_data,
                                            TransitionCause::pause_expired};
  ASSERT_EQ(c.run.transitions.size(), causes.size());
  for (std::size_t i = 0; i < causes.size(); ++i) EXPECT_EQ(c.run.transitions[i].cause, causes[i]);
  // An aborted run ignores observations.
  const MigrationRun before = c.run;
  c.feed(Arm::candidate, 10, 10);
  EXPECT_EQ(c.run, before);
}

TEST(MigrationRun, ARegressionAboveZeroFailsAndTheDetailNamesTheStatistic) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 412, 33);
  c.feed(Arm::baseline, 9'801, 98);
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::failed);
  EXPECT_EQ(t->to, MigrationPhase::aborted);
  EXPECT_EQ(t->step, 0U);
  EXPECT_EQ(t->detail.rfind("errors: candidate 8.0 % failed (n=412) vs baseline 1.0 % (n=9,801); regression [+", 0), 0U)
      << t->detail;
  EXPECT_NE(t->detail.find("] pp lies above 0 (delta 0.05, each arm at alpha 0.005)"), std::string::npos) << t->detail;
  EXPECT_EQ(candidate_percent(c.spec, c.run), 0U);
}

TEST(MigrationRun, AFailedCriterionAbortsAPausedRunToo) {
  Canary c;
  c.start();
  ASSERT_TRUE(command(c.run, c.spec, MigrationCommand::pause, kT0 + 1));
  c.feed(Arm::candidate, 412, 33);
  c.feed(Arm::baseline, 9'801, 98);
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::failed);
  EXPECT_EQ(t->from, MigrationPhase::paused);
}

TEST(MigrationRun, GuardrailErrorRateAbortsBeforeTheStatistics) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 40, 10);  // 25 %: reaches error_rate 0.25
  c.feed(Arm::baseline, 1'000);
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::guardrail);
  EXPECT_EQ(t->to, MigrationPhase::aborted);
  EXPECT_EQ(t->detail,
            "guardrail error_rate: 10 of 40 candidate outcomes in the last interval failed (25.0 % >= 25.0 %)");
}

TEST(MigrationRun, GuardrailsJudgeNoShareBelowTheirMinimumSamples) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 19, 19);  // every one failed, but 19 < guardrails.min_samples
  EXPECT_FALSE(c.analyze_at(c.next()));
  // The next interval starts over: 19 more are again too few to judge.
  c.feed(Arm::candidate, 19, 19);
  EXPECT_EQ(c.run.interval.outcomes, 19U);
  EXPECT_FALSE(c.analyze_at(c.next()));
  EXPECT_EQ(c.run.phase, MigrationPhase::ramp);
}

TEST(MigrationRun, GuardrailLatencyP99AbortsOverOnePercent) {
  Canary c;
  c.start();
  c.feed(Arm::baseline, 1'000);
  c.feed(Arm::candidate, 100);
  c.feed(Arm::candidate, 1, 0, 20'000);  // at the ceiling: not over
  c.feed(Arm::candidate, 1, 0, 20'001);  // 1 of 102: under 1 %
  EXPECT_FALSE(c.analyze_at(c.next()));
  c.feed(Arm::candidate, 98);
  c.feed(Arm::candidate, 2, 0, 20'001);  // 2 of 100: over 1 %
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::guardrail);
  EXPECT_EQ(t->detail,
            "guardrail latency_p99_ms: 2 of 100 candidate outcomes in the last interval took over "
            "20000 ms (2.0 % > 1 %)");
}

TEST(MigrationRun, GuardrailBudgetAbortsWithoutAMinimum) {
  Canary c;
  c.spec.guardrails.budget = Money::from_picos(5'000'000'000'000);  // $5
  c.start();
  c.feed(Arm::candidate, 1, 0, 100, Money::from_picos(4'999'999'999'999));
  EXPECT_FALSE(c.analyze_at(c.next()));
  c.feed(Arm::candidate, 1, 0, 100, Money::from_picos(1));
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::guardrail);
  EXPECT_EQ(t->detail,
            "guardrail budget_usd: the candidate's cost since the canary began, $5.0, reached the budget $5.0");
}

// ---- the criteria ------------------------------------------------------------------------------------

TEST(MigrationCriteria, WithoutDataEveryIntervalIsEverythingAndInconclusive) {
  Canary c;
  c.start();
  const auto results = criteria(c.run, c.spec, c.scenario);
  ASSERT_EQ(results.size(), c.spec.stop.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    EXPECT_EQ(results[i].metric, c.spec.stop[i].metric);
    EXPECT_EQ(results[i].min_effect, c.spec.stop[i].min_effect);
    EXPECT_EQ(results[i].lo, -kInf);
    EXPECT_EQ(results[i].hi, kInf);
    EXPECT_EQ(results[i].verdict, Verdict::inconclusive);
  }
}

TEST(MigrationCriteria, ARateRegressionIsCandidateMinusBaselineAtDeltaOverTwiceTheCriteria) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 300, 6);
  c.feed(Arm::baseline, 3'000, 30);
  const auto results = criteria(c.run, c.spec, c.scenario);
  const double alpha = 0.05 / (2 * 5);
  const auto [c_lo, c_hi] = rate_interval(6, 300, alpha);
  const auto [b_lo, b_hi] = rate_interval(30, 3'000, alpha);
  EXPECT_EQ(results[0].metric, StopMetric::errors);
  EXPECT_DOUBLE_EQ(results[0].candidate, 0.02);
  EXPECT_DOUBLE_EQ(results[0].baseline, 0.01);
  EXPECT_DOUBLE_EQ(results[0].lo, c_lo - b_hi);
  EXPECT_DOUBLE_EQ(results[0].hi, c_hi - b_lo);
  EXPECT_EQ(results[0].verdict, Verdict::inconclusive);
}

TEST(MigrationCriteria, CostPerAcceptedAgainstACeiling) {
  Canary c;
  c.spec.cost_max_ratio = 0.0;
  c.spec.cost_ceiling = Money::from_picos(1'000'000'000);  // $0.001 per accepted outcome
  c.start();
  // Costs alternate $0.002 / $0.004 (mean $0.003), every answer accepted, 10 rejected of 410 verdicts.
  for (int i = 0; i < 400; ++i) {
    observe_outcome(c.run, c.spec, c.scenario, Arm::candidate, true, 10, 10,
                    Money::from_picos(i % 2 == 0 ? 2'000'000'000 : 4'000'000'000));
    observe_verdict(c.run, Arm::candidate, true);
  }
  for (int i = 0; i < 10; ++i) observe_verdict(c.run, Arm::candidate, false);
  const auto results = criteria(c.run, c.spec, c.scenario);
  const CriterionResult& cost = results[4];
  ASSERT_EQ(cost.metric, StopMetric::cost);
  const double alpha = 0.05 / 10;
  const auto [m_lo, m_hi] = mean_interval(400, 400 * 0.003, 200 * (4e-6 + 16e-6), alpha / 2, 200);
  const auto [a_lo, a_hi] = rate_interval(400, 410, alpha / 2);
  EXPECT_NEAR(cost.candidate, 0.003 / (400.0 / 410.0), 1e-12);
  EXPECT_NEAR(cost.lo, m_lo / a_hi / 0.001 - 1, 1e-9);
  EXPECT_NEAR(cost.hi, m_hi / a_lo / 0.001 - 1, 1e-9);
  EXPECT_EQ(cost.verdict, Verdict::fail);  // $0.003 against $0.001
  const auto t = c.analyze_at(c.next());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->cause, TransitionCause::failed);
  EXPECT_NE(t->detail.find("cost_per_accepted: candidate $0.00307"), std::string::npos) << t->detail;
  EXPECT_NE(t->detail.find("allowed $0.001"), std::string::npos) << t->detail;
}

TEST(MigrationCriteria, CostPerAcceptedAgainstARatioToTheBaseline) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 300, 0, 100, Money::from_picos(2'000'000'000));
  c.feed(Arm::candidate, 300, 0, 100, Money::from_picos(3'000'000'000));
  c.feed(Arm::baseline, 300, 0, 100, Money::from_picos(1'000'000'000));
  c.feed(Arm::baseline, 300, 0, 100, Money::from_picos(2'000'000'000));
  const auto results = criteria(c.run, c.spec, c.scenario);
  const CriterionResult& cost = results[4];
  // Candidate $0.0025 vs baseline $0.0015 per accepted: 1.67 x, over the allowed 1.2 x.
  EXPECT_NEAR(cost.candidate, 0.0025, 1e-12);
  EXPECT_NEAR(cost.baseline, 0.0015, 1e-12);
  EXPECT_GT(cost.lo, 0.0);
  EXPECT_LT(cost.lo, 0.0025 / (1.2 * 0.0015) - 1);
  EXPECT_GT(cost.hi, 0.0025 / (1.2 * 0.0015) - 1);
  EXPECT_EQ(cost.verdict, Verdict::fail);
}

// ---- commands ----------------------------------------------------------------------------------------

TEST(MigrationCommands, EveryAllowedMove) {
  struct Case {
    MigrationPhase from;
    MigrationCommand cmd;
    MigrationPhase to;
  };
  for (const Case& k : {Case{MigrationPhase::pending, MigrationCommand::promote, MigrationPhase::promoted},
                        Case{MigrationPhase::ramp, MigrationCommand::promote, MigrationPhase::promoted},
                        Case{MigrationPhase::paused, MigrationCommand::promote, MigrationPhase::promoted},
                        Case{MigrationPhase::ramp, MigrationCommand::pause, MigrationPhase::paused},
                        Case{MigrationPhase::paused, MigrationCommand::resume, MigrationPhase::ramp},
                        Case{MigrationPhase::pending, MigrationCommand::abort, MigrationPhase::aborted},
                        Case{MigrationPhase::ramp, MigrationCommand::abort, MigrationPhase::aborted},
                        Case{MigrationPhase::paused, MigrationCommand::abort, MigrationPhase::aborted}}) {
    SCOPED_TRACE(std::string(to_string(k.cmd)) + " from " + std::string(to_string(k.from)));
    Canary c;
    c.run.phase = k.from;
    c.run.step = k.from == MigrationPhase::pending ? 0 : 2;
    const TimeMs now = kT0 + 123;
    const auto t = command(c.run, c.spec, k.cmd, now);
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_EQ(t->from, k.from);
    EXPECT_EQ(t->to, k.to);
    EXPECT_EQ(t->cause, TransitionCause::command);
    EXPECT_EQ(t->at, now);
    EXPECT_EQ(t->step, c.run.step);
    EXPECT_NE(t->detail.find("operator " + std::string(to_string(k.cmd))), std::string::npos) << t->detail;
    EXPECT_EQ(c.run.phase, k.to);
    ASSERT_EQ(c.run.transitions.size(), 1U);
    EXPECT_EQ(c.run.transitions.back(), *t);
  }
}

TEST(MigrationCommands, PauseThenResumeKeepsTheStepAndRestartsItsDeadline) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 200);
  c.feed(Arm::baseline, 5'000);
  ASSERT_EQ(c.analyze_at(c.next())->cause, TransitionCause::step_passed);
  ASSERT_TRUE(command(c.run, c.spec, MigrationCommand::pause, kT0 + 100'000));
  EXPECT_EQ(c.run.paused_at, kT0 + 100'000);
  EXPECT_EQ(candidate_percent(c.spec, c.run), 5U);
  const TimeMs resume_at = kT0 + 2'000'000;
  const auto t = command(c.run, c.spec, MigrationCommand::resume, resume_at);
  ASSERT_TRUE(t);
  EXPECT_EQ(c.run.phase, MigrationPhase::ramp);
  EXPECT_EQ(c.run.step, 1U);
  EXPECT_EQ(c.run.step_started_at, resume_at);
  // The deadline counts from the resume: no pause for lack of data before it.
  const TimeMs old_deadline = kT0 + 60'000 + c.spec.max_step_ms;
  c.run.next_analysis_at = old_deadline;
  EXPECT_FALSE(c.analyze_at(old_deadline));
  EXPECT_EQ(c.run.phase, MigrationPhase::ramp);
}

TEST(MigrationCommands, ConflictsSayWhatThePhaseIs) {
  struct Case {
    MigrationPhase phase;
    MigrationCommand cmd;
    const char* message;
  };
  for (const Case& k : {
           Case{MigrationPhase::ramp, MigrationCommand::resume, "cannot resume: the migration is ramping, not paused"},
           Case{MigrationPhase::pending, MigrationCommand::resume,
                "cannot resume: the migration is pending, not paused"},
           Case{MigrationPhase::pending, MigrationCommand::pause,
                "cannot pause: the migration is pending, not ramping"},
           Case{MigrationPhase::paused, MigrationCommand::pause, "cannot pause: the migration is paused, not ramping"},
           Case{MigrationPhase::promoted, MigrationCommand::promote,
                "cannot promote: the migration was already promoted"},
           Case{MigrationPhase::promoted, MigrationCommand::abort, "cannot abort: the migration was already promoted"},
           Case{MigrationPhase::promoted, MigrationCommand::pause,
                "cannot pause: the migration is promoted, not ramping"},
           Case{MigrationPhase::promoted, MigrationCommand::resume,
                "cannot resume: the migration is promoted, not paused"},
           Case{MigrationPhase::aborted, MigrationCommand::promote,
                "cannot promote: the migration was already aborted"},
           Case{MigrationPhase::aborted, MigrationCommand::abort, "cannot abort: the migration was already aborted"},
           Case{MigrationPhase::aborted, MigrationCommand::pause,
                "cannot pause: the migration is aborted, not ramping"},
           Case{MigrationPhase::aborted, MigrationCommand::resume,
                "cannot resume: the migration is aborted, not paused"},
       }) {
    Canary c;
    c.run.phase = k.phase;
    const MigrationRun before = c.run;
    const auto t = command(c.run, c.spec, k.cmd, kT0);
    ASSERT_FALSE(t) << k.message;
    EXPECT_EQ(t.error().code, ErrorCode::migration_conflict);
    EXPECT_EQ(t.error().message, k.message);
    EXPECT_EQ(c.run, before);  // a refused command changes nothing
  }
}

// ---- carried runs and determinism --------------------------------------------------------------------

TEST(MigrationRun, AdoptKeepsARunOfTheSameIdentityAndReplacesAnother) {
  Canary c;
  c.start();
  c.feed(Arm::candidate, 50, 2);
  const MigrationRun carried = c.run;
  MigrationSpec changed = c.spec;
  changed.min_samples = 500;  // thresholds may change under the same identity
  changed.stage = MigrationStage::evals;
  EXPECT_EQ(adopt_run(changed, carried), carried);
  changed.identity = c.spec.identity + 1;  // a new attempt, other steps or targets
  const MigrationRun fresh = adopt_run(changed, carried);
  EXPECT_EQ(fresh, start_run(changed));
  EXPECT_EQ(fresh.identity, changed.identity);
  EXPECT_EQ(fresh.phase, MigrationPhase::pending);
}

TEST(MigrationRun, TheSameInputsMakeTheSameRun) {
  const MigrationSpec spec = canary_spec();
  const Scenario scenario = canary_scenario();
  const ArmModel base;
  const ArmModel worse = test::regressed(base, spec, StopMetric::errors);
  const auto a = test::simulate_canary(spec, scenario, base, worse, 1'000, 99);
  const auto b = test::simulate_canary(spec, scenario, base, worse, 1'000, 99);
  EXPECT_EQ(a.run, b.run);
  EXPECT_EQ(a.requests, b.requests);
  EXPECT_GE(a.run.transitions.size(), 2U);
  // The same analysis of copies of a run moves them alike.
  Canary c;
  c.start();
  c.feed(Arm::candidate, 200);
  c.feed(Arm::baseline, 2'000, 20);
  MigrationRun copy = c.run;
  const auto t1 = analyze(c.run, c.spec, c.scenario, c.next());
  const auto t2 = analyze(copy, c.spec, c.scenario, copy.next_analysis_at);
  EXPECT_EQ(t1, t2);
  EXPECT_EQ(c.run, copy);
}

// ---- the must-show: simulated canaries ---------------------------------------------------------------

std::uint32_t requests_per_interval() {
  const char* env = std::getenv("TURNOUT_CANARY_REQUESTS");
  const long v = env != nullptr ? std::strtol(env, nullptr, 10) : 0;
  return v >= 1'000 ? static_cast<std::uint32_t>(v) : 1'000;  // raise only: fewer starve the 1 % step
}

int canary_trials() {
  const char* env = std::getenv("TURNOUT_CANARY_TRIALS");
  const long v = env != nullptr ? std::strtol(env, nullptr, 10) : 0;
  return v >= 1'000 ? static_cast<int>(v) : 1'000;
}

void report(const char* scenario, const test::CanaryStats& s) {
  std::printf(
      "canary %-12s trials=%d promoted=%d aborted=%d (failed=%d guardrail=%d pause_expired=%d other=%d) open=%d "
      "paused=%d; requests to abort median=%llu p99=%llu (candidate's median=%llu); to promotion median=%llu "
      "p99=%llu\n",
      scenario, s.trials, s.promoted, s.aborted, s.failed, s.guardrail, s.pause_expired, s.other_abort, s.still_open,
      s.paused, static_cast<unsigned long long>(test::quantile_of(s.requests_to_abort, 0.5)),
      static_cast<unsigned long long>(test::quantile_of(s.requests_to_abort, 0.99)),
      static_cast<unsigned long long>(test::quantile_of(s.candidate_requests_to_abort, 0.5)),
      static_cast<unsigned long long>(test::quantile_of(s.requests_to_promotion, 0.5)),
      static_cast<unsigned long long>(test::quantile_of(s.requests_to_promotion, 0.99)));
  const std::string key = std::string("canary_") + scenario;
  ::testing::Test::RecordProperty(key + "_aborted", s.aborted);
  ::testing::Test::RecordProperty(key + "_promoted", s.promoted);
  ::testing::Test::RecordProperty(key + "_median_requests_to_abort",
                                  std::to_string(test::quantile_of(s.requests_to_abort, 0.5)));
}

TEST(MigrationCanaries, WithoutARegressionTheFalseAbortRateStaysAtOrUnderDelta) {
  const MigrationSpec spec = canary_spec();
  const ArmModel base;
  const auto s = test::run_canaries(spec, canary_scenario(), base, base, requests_per_interval(), canary_trials(), 1);
  report("none", s);
  EXPECT_EQ(s.still_open, 0);
  EXPECT_LE(static_cast<double>(s.aborted) / s.trials, spec.delta);
  // And the candidate without a regression is promoted, not left paused then aborted.
  EXPECT_GE(static_cast<double>(s.promoted) / s.trials, 1.0 - spec.delta);
}

TEST(MigrationCanaries, ARegressionOfTheMinimumEffectIsDetectedAndNeverPromotedBeyondDelta) {
  const MigrationSpec spec = canary_spec();
  const ArmModel base;
  std::uint64_t seed = 100;
  for (std::size_t m = 0; m < kStopMetrics.size(); ++m) {
    const auto metric = static_cast<StopMetric>(m);
    const auto s = test::run_canaries(spec, canary_scenario(), base, test::regressed(base, spec, metric),
                                      requests_per_interval(), canary_trials(), ++seed);
    report(std::string(to_string(metric)).c_str(), s);
    EXPECT_EQ(s.still_open, 0) << to_string(metric);
    // At exactly the minimum effect, "proven within it" is a miss of the candidate's interval.
    EXPECT_LE(static_cast<double>(s.promoted) / s.trials, spec.delta) << to_string(metric);
    // And it is caught by the test, not left to the pause's deadline.
    EXPECT_GE(static_cast<double>(s.failed) / s.trials, 0.95) << to_string(metric);
  }
}

TEST(MigrationCanaries, TooLittleTrafficPausesThenAbortsAndNeverPromotes) {
  const MigrationSpec spec = canary_spec();
  const ArmModel base;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    // 100 requests a minute: the 1 % step sees about 60 candidate outcomes in its hour, not 200.
    const auto r = test::simulate_canary(spec, canary_scenario(), base, base, 100, seed);
    ASSERT_EQ(r.phase, MigrationPhase::aborted);
    const auto& t = r.run.transitions;
    ASSERT_EQ(t.size(), 3U);
    EXPECT_EQ(t[0].cause, TransitionCause::started);
    EXPECT_EQ(t[1].cause, TransitionCause::no_data);
    EXPECT_EQ(t[1].at, t[0].at + spec.max_step_ms);
    EXPECT_EQ(t[2].cause, TransitionCause::pause_expired);
    EXPECT_EQ(t[2].at, t[1].at + spec.max_step_ms);
  }
}

}  // namespace
}  // namespace turnout
