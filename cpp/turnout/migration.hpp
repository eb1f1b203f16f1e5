#pragma once
// A scenario's migration from a baseline target to a candidate, run as a canary: the stages before
// it, the traffic steps, the sequential analysis that ends each step (pass, fail or inconclusive),
// the hard guardrails, and the state machine pending -> ramp(step k) -> paused -> promoted | aborted.
// Clock-free like the rest of the core: the sidecar and the what-if engine pass `now` in, so a replay
// of a trace runs the very same canary the sidecar would.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "turnout/money.hpp"
#include "turnout/result.hpp"
#include "turnout/time.hpp"

namespace turnout {

struct Scenario;

/// Where the migration stands in the team's process. Before `canary` the candidate takes no traffic
/// (the run is pending); `canary` starts the state machine.
enum class MigrationStage : std::uint8_t { discovery, draft, baseline, evals, canary };
inline constexpr std::array<std::string_view, 5> kMigrationStages{"discovery", "draft", "baseline", "evals", "canary"};

/// The state machine's phases.
enum class MigrationPhase : std::uint8_t { pending, ramp, paused, promoted, aborted };
inline constexpr std::array<std::string_view, 5> kMigrationPhases{"pending", "ramp", "paused", "promoted", "aborted"};

/// What a stop criterion compares. The rates are shares of a Bernoulli outcome per request:
/// `errors` a failed outcome (status not ok), `ttft` / `latency` an answered outcome over the
/// scenario's slo bound, `acceptance` a verdict that rejected the answer. `cost` is the cost per
/// accepted outcome against a ceiling or a ratio to the baseline.
enum class StopMetric : std::uint8_t { errors, ttft, latency, acceptance, cost };
inline constexpr std::array<std::string_view, 5> kStopMetrics{"errors", "ttft", "latency", "acceptance",
                                                              "cost_per_accepted"};

/// One stop criterion. Its regression is candidate minus baseline (for the rates) or the candidate's
/// cost per accepted outcome over what is allowed, minus 1 (cost). The step fails when the
/// regression's confidence interval lies above 0; the last step proves the candidate when it lies
/// below `min_effect`.
struct StopCriterion {
  StopMetric metric = StopMetric::errors;
  double min_effect = 0.0;
};

/// Hard guardrails: checked on the candidate's outcomes of each analysis interval, apart from the
/// statistics, and abort at once.
struct Guardrails {
  double error_rate = 0.0;          ///< abort when an interval's error share reaches it (0 = off)
  std::int64_t latency_p99_ms = 0;  ///< abort when over 1 % of an interval's answers took longer (0 = off)
  std::optional<Money> budget;      ///< abort when the candidate's cost since the canary began reaches it
  std::uint32_t min_samples = 20;   ///< an interval with fewer candidate outcomes judges no share
};

/// A scenario's `migration` block, validated.
struct MigrationSpec {
  std::uint32_t baseline = 0xFFFFFFFFu;   ///< target index; the scenario's routes[0]
  std::uint32_t candidate = 0xFFFFFFFFu;  ///< target index; the scenario's routes[1]
  MigrationStage stage = MigrationStage::discovery;
  std::vector<std::uint32_t> steps;      ///< the candidate's traffic percent per step, increasing, 1..100
  std::uint32_t min_samples = 200;       ///< candidate outcomes a step needs before it may pass
  std::int64_t max_step_ms = 3'600'000;  ///< a step's longest time; a pause lasts at most as long
  std::int64_t interval_ms = 60'000;     ///< how often the analysis and the guardrails run
  std::string incident_owner;            ///< who is paged; required
  double delta = 0.05;                   ///< bound on the chance of aborting a candidate without regression
  std::vector<StopCriterion> stop;       ///< in kStopMetrics order, each metric at most once
  std::optional<Money> cost_ceiling;     ///< cost per accepted outcome (criterion cost), or
  double cost_max_ratio = 0.0;           ///< ... at most this times the baseline's (0 = use the ceiling)
  Guardrails guardrails;
  std::uint32_t attempt = 1;  ///< a new attempt of the same migration starts a new run
  /// XXH3 of baseline, candidate, steps and attempt (names, not indices): a run carried over a reload
  /// or restart continues only under the same identity; the stage and the thresholds may change.
  std::uint64_t identity = 0;
  int line = 0;  ///< of the block, for messages
};

/// Which side of the comparison an outcome belongs to.
enum class Arm : std::uint8_t { baseline, candidate };

/// The counts one arm's statistics are computed from, since the canary began (integers and one sum
/// of squares, so a snapshot carries them exactly).
struct ArmCounts {
  std::uint64_t outcomes = 0;  ///< outcomes of decisions placed on this arm's target (not fallbacks)
  std::uint64_t errors = 0;
  std::uint64_t ttft_checked = 0, ttft_over = 0;
  std::uint64_t latency_checked = 0, latency_over = 0;
  std::uint64_t verdicts = 0, rejected = 0;
  std::uint64_t priced = 0;  ///< outcomes with a cost
  Money cost;                ///< their cost
  double cost_sq_usd = 0.0;  ///< sum of squared cost in USD^2 (the cost criterion's variance)
  friend bool operator==(const ArmCounts&, const ArmCounts&) = default;
};

/// The candidate's outcomes in the current analysis interval (the guardrails').
struct IntervalCounts {
  std::uint64_t outcomes = 0, errors = 0, over_p99 = 0;
  friend bool operator==(const IntervalCounts&, const IntervalCounts&) = default;
};

/// A confidence interval on one criterion's regression, valid at every time at once.
struct CriterionResult {
  StopMetric metric = StopMetric::errors;
  double candidate = 0.0, baseline = 0.0;  ///< point estimates (rates; USD per accepted outcome)
  double lo = 0.0, hi = 0.0;               ///< the regression's interval (-inf / +inf without data)
  double min_effect = 0.0;
  enum class Verdict : std::uint8_t { fail, pass, inconclusive } verdict = Verdict::inconclusive;
};

/// Why the state machine moved.
enum class TransitionCause : std::uint8_t {
  started,        ///< the stage became canary: ramp(step 0)
  step_passed,    ///< a step had its samples and no criterion failed: the next step
  proven,         ///< the last step proved every criterion within its minimum effect: promoted
  failed,         ///< a criterion's regression lies above 0: aborted
  guardrail,      ///< a hard guardrail tripped: aborted
  no_data,        ///< a step lacked its minimum samples by its deadline: paused
  inconclusive,   ///< the last step had its samples but proved nothing by its deadline: paused
  pause_expired,  ///< paused for max_step without a resume: aborted
  command,        ///< an operator's promote, pause, resume or abort
};
inline constexpr std::array<std::string_view, 9> kTransitionCauses{
    "started", "step_passed", "proven", "failed", "guardrail", "no_data", "inconclusive", "pause_expired", "command"};

/// One move of the state machine, with the statistic that drove it.
struct MigrationTransition {
  TimeMs at = 0;
  MigrationPhase from = MigrationPhase::pending, to = MigrationPhase::pending;
  std::uint32_t step = 0;  ///< the step after the move (index into steps)
  TransitionCause cause = TransitionCause::started;
  std::string
      detail;  ///< the statistic, e.g. "errors: candidate 7.90 % vs baseline 1.00 %, regression [+5.1, +9.2] pp > 0"
  std::uint64_t candidate_outcomes = 0, baseline_outcomes = 0;
  friend bool operator==(const MigrationTransition&, const MigrationTransition&) = default;
};

/// An operator's command.
enum class MigrationCommand : std::uint8_t { promote, pause, resume, abort };
inline constexpr std::array<std::string_view, 4> kMigrationCommands{"promote", "pause", "resume", "abort"};

/// One scenario's run of its migration: everything a reload, restart or snapshot carries over.
struct MigrationRun {
  std::uint64_t identity = 0;  ///< MigrationSpec::identity it belongs to
  MigrationPhase phase = MigrationPhase::pending;
  std::uint32_t step = 0;
  TimeMs started_at = 0;       ///< when the canary began (ramp step 0)
  TimeMs step_started_at = 0;  ///< when the current step (or resume) began: its deadline counts from here
  TimeMs paused_at = 0;
  TimeMs next_analysis_at = 0;
  std::uint64_t step_outcomes = 0;  ///< candidate outcomes in the current step
  ArmCounts baseline, candidate;
  IntervalCounts interval;
  std::vector<MigrationTransition> transitions;  ///< the first move and the latest 63, oldest first
  friend bool operator==(const MigrationRun&, const MigrationRun&) = default;
};

/// A scenario's migration run, by name (what a reload, a restart or a snapshot carries).
struct MigrationEntry {
  std::string scenario;
  MigrationRun run;
  friend bool operator==(const MigrationEntry&, const MigrationEntry&) = default;
};

/// The candidate's traffic percent in a phase and step: 0 pending or aborted, steps[step] while
/// ramping or paused, 100 promoted.
[[nodiscard]] std::uint32_t candidate_percent(const MigrationSpec& spec, const MigrationRun& run) noexcept;

/// A new run of `spec`, pending: the first analysis of a canary stage starts it (ramp, step 0).
[[nodiscard]] MigrationRun start_run(const MigrationSpec& spec);

/// Takes a run carried over (a reload, a restart) into `spec`: the same run if the identity matches,
/// else a new one (start_run).
[[nodiscard]] MigrationRun adopt_run(const MigrationSpec& spec, MigrationRun carried);

/// Counts one outcome of a decision placed on `arm`'s target (fallback outcomes are not counted).
/// ttft_ms / latency_ms < 0: not reported. `cost` none: unpriced.
void observe_outcome(MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario, Arm arm, bool ok,
                     std::int64_t ttft_ms, std::int64_t latency_ms, std::optional<Money> cost);
/// Counts one verdict of an answer from `arm`'s target.
void observe_verdict(MigrationRun& run, Arm arm, bool accepted);

/// Whether an analysis is due (cheap: the sidecar asks every turn of its loop): a pending run whose
/// stage is canary, a ramping or paused run at its next_analysis_at.
[[nodiscard]] bool analysis_due(const MigrationRun& run, const MigrationSpec& spec, TimeMs now) noexcept;
/// Runs the analysis due at `now`: guardrails, the criteria, the step's end. Returns the move it
/// made, if any (also appended to run.transitions). Deterministic in (run, spec, scenario, now).
std::optional<MigrationTransition> analyze(MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario,
                                           TimeMs now);
/// The criteria's intervals now, without moving (status, stats).
[[nodiscard]] std::vector<CriterionResult> criteria(const MigrationRun& run, const MigrationSpec& spec,
                                                    const Scenario& scenario);
/// Applies an operator's command; migration_conflict if the phase does not allow it.
[[nodiscard]] Result<MigrationTransition> command(MigrationRun& run, const MigrationSpec& spec, MigrationCommand cmd,
                                                  TimeMs now);

/// The time-uniform confidence interval of a Bernoulli rate after `successes` of `trials`, at level
/// `alpha` (the beta-binomial mixture martingale with a Jeffreys prior and Ville's inequality):
/// it holds at every `trials` at once with probability at least 1 - alpha. {0, 1} without trials.
[[nodiscard]] std::pair<double, double> rate_interval(std::uint64_t successes, std::uint64_t trials, double alpha);
/// The asymptotic time-uniform confidence interval of a mean (Gaussian-mixture AsympCS, tuned for
/// `planned` samples) from n, the sum and the sum of squares. {-inf, +inf} below two samples.
[[nodiscard]] std::pair<double, double> mean_interval(std::uint64_t n, double sum, double sum_sq, double alpha,
                                                      std::uint64_t planned);

/// Parses wire/CLI names; nullopt if unknown.
[[nodiscard]] std::optional<MigrationCommand> migration_command_from_string(std::string_view name) noexcept;
[[nodiscard]] std::string_view to_string(MigrationPhase phase) noexcept;
[[nodiscard]] std::string_view to_string(MigrationStage stage) noexcept;
[[nodiscard]] std::string_view to_string(StopMetric metric) noexcept;
[[nodiscard]] std::string_view to_string(TransitionCause cause) noexcept;
[[nodiscard]] std::string_view to_string(MigrationCommand cmd) noexcept;
[[nodiscard]] std::string_view to_string(CriterionResult::Verdict verdict) noexcept;

}  // namespace turnout
