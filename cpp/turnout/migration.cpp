// The migration's state machine and its sequential statistics. Pure and clock-free: every time is
// passed in, so the sidecar and the what-if engine run the very same canary.

#include "turnout/migration.hpp"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numbers>
#include <string>
#include <utility>

#include "turnout/config.hpp"

namespace turnout {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kPicosPerUsd = static_cast<double>(Money::kPerUsd);
constexpr std::size_t kMaxTransitions = 64;    // kept per run: the first and the latest
constexpr std::uint64_t kMinCostSamples = 30;  // the fewest priced outcomes the cost criterion judges

double usd(Money m) { return static_cast<double>(m.picos()) / kPicosPerUsd; }

template <class E, std::size_t N>
std::string_view name_of(const std::array<std::string_view, N>& names, E value) {
  const auto i = static_cast<std::size_t>(value);
  return i < N ? names[i] : std::string_view("unknown");
}

// ---- the statistics ------------------------------------------------------------------------------

// log of the beta-binomial mixture's likelihood ratio against p (Jeffreys prior; B(1/2,1/2) = pi).
double log_lr(double log_mixture, double s, double f, double p) {
  return log_mixture - s * std::log(p) - f * std::log1p(-p);
}

// The point where log LR crosses c, between a point inside the set (log LR < c) and one outside.
// log LR is convex in p, so Newton's steps from the outside side stay outside and converge from it;
// a step that leaves the bracket (or an infinite log LR at 0 or 1) bisects instead. Returns an
// outside point within 1e-10 of c in log LR: the interval is never narrower than the exact one.
double endpoint(double log_mixture, double s, double f, double c, double inside, double outside) {
  double gap = log_lr(log_mixture, s, f, outside) - c;
  for (int i = 0; i < 200 && gap > 1e-10 && std::abs(outside - inside) > 1e-15; ++i) {
    double next = 0.5 * (inside + outside);
    if (std::isfinite(gap)) {
      const double slope = -s / outside + f / (1.0 - outside);
      const double newton = outside - gap / slope;
      if ((newton - inside) * (outside - newton) > 0.0) next = newton;  // strictly inside the bracket
    }
    const double next_gap = log_lr(log_mixture, s, f, next) - c;
    if (next_gap < 0.0) {
      inside = next;
    } else {
      outside = next;
      gap = next_gap;
    }
  }
  return outside;
}

// The number with thousands separators ("9,801"): counts in a detail are read by a person.
std::string count_text(std::uint64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  out.reserve(digits.size() + digits.size() / 3);
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

// ---- one criterion ---------------------------------------------------------------------------------

struct RateCounts {
  std::uint64_t hits = 0, trials = 0;
};

RateCounts rate_counts(const ArmCounts& arm, StopMetric metric) {
  switch (metric) {
    case StopMetric::errors: return {arm.errors, arm.outcomes};
    case StopMetric::ttft: return {arm.ttft_over, arm.ttft_checked};
    case StopMetric::latency: return {arm.latency_over, arm.latency_checked};
    case StopMetric::acceptance: return {arm.rejected, arm.verdicts};
    case StopMetric::cost: break;
  }
  return {};
}

// Trials behind a criterion's estimate on one arm (its n in a detail).
std::uint64_t sample_size(const ArmCounts& arm, StopMetric metric) {
  return metric == StopMetric::cost ? arm.priced : rate_counts(arm, metric).trials;
}

struct Span {
  double point = 0.0, lo = 0.0, hi = kInf;
  bool data = false;
};

// One arm's cost per accepted outcome: the mean cost per priced outcome over the acceptance, each at
// alpha / 2 so the ratio's interval holds at alpha.
Span cost_per_accepted(const ArmCounts& arm, const Scenario& scenario, double alpha, std::uint64_t planned) {
  const bool gated = scenario.min_accept_rate > 0.0;
  const std::uint64_t accepted = gated ? arm.verdicts - arm.rejected : arm.outcomes - arm.errors;
  const std::uint64_t judged = gated ? arm.verdicts : arm.outcomes;
  Span s;
  // The mean's interval is asymptotic: before `planned` (min_samples, at least 30) priced outcomes its
  // variance estimate is too rough to trust (a few equal costs give a zero width), so no data yet.
  if (arm.priced < std::max<std::uint64_t>(planned, kMinCostSamples) || judged == 0) return s;
  const auto [mean_lo, mean_hi] = mean_interval(arm.priced, usd(arm.cost), arm.cost_sq_usd, alpha / 2, planned);
  const auto [accept_lo, accept_hi] = rate_interval(accepted, judged, alpha / 2);
  const double mean = usd(arm.cost) / static_cast<double>(arm.priced);
  const double accept = static_cast<double>(accepted) / static_cast<double>(judged);
  s.data = true;
  s.point = accept > 0.0 ? mean / accept : kInf;
  s.lo = accept_hi > 0.0 ? std::max(0.0, mean_lo) / accept_hi : kInf;
  s.hi = accept_lo > 0.0 ? mean_hi / accept_lo : kInf;
  return s;
}

double divide_or_inf(double a, double b) { return b > 0.0 ? a / b : kInf; }

// a / b for a ratio of costs that may both be 0 (free targets): 0 / 0 is no regression.
double cost_ratio(double a, double b) { return a == 0.0 ? 0.0 : divide_or_inf(a, b); }

CriterionResult evaluate(const MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario,
                         const StopCriterion& criterion, double alpha) {
  CriterionResult r;
  r.metric = criterion.metric;
  r.min_effect = criterion.min_effect;
  r.lo = -kInf;
  r.hi = kInf;
  if (criterion.metric == StopMetric::cost) {
    const Span c = cost_per_accepted(run.candidate, scenario, alpha, spec.min_samples);
    const Span b = cost_per_accepted(run.baseline, scenario, alpha, spec.min_samples);
    r.candidate = c.point;
    r.baseline = b.point;
    if (spec.cost_max_ratio > 0.0) {
      if (c.data && b.data) {
        r.lo = cost_ratio(c.lo, spec.cost_max_ratio * b.hi) - 1.0;
        r.hi = cost_ratio(c.hi, spec.cost_max_ratio * b.lo) - 1.0;
      }
    } else if (spec.cost_ceiling && spec.cost_ceiling->picos() > 0 && c.data) {
      const double ceiling = usd(*spec.cost_ceiling);
      r.lo = c.lo / ceiling - 1.0;
      r.hi = c.hi / ceiling - 1.0;
    }
  } else {
    const RateCounts c = rate_counts(run.candidate, criterion.metric);
    const RateCounts b = rate_counts(run.baseline, criterion.metric);
    if (c.trials > 0) r.candidate = static_cast<double>(c.hits) / static_cast<double>(c.trials);
    if (b.trials > 0) r.baseline = static_cast<double>(b.hits) / static_cast<double>(b.trials);
    if (c.trials > 0 && b.trials > 0) {
      const auto [c_lo, c_hi] = rate_interval(c.hits, c.trials, alpha);
      const auto [b_lo, b_hi] = rate_interval(b.hits, b.trials, alpha);
      r.lo = c_lo - b_hi;
      r.hi = c_hi - b_lo;
    }
  }
  if (r.lo > 0.0) {
    r.verdict = CriterionResult::Verdict::fail;
  } else if (r.hi < r.min_effect) {
    r.verdict = CriterionResult::Verdict::pass;
  } else {
    r.verdict = CriterionResult::Verdict::inconclusive;
  }
  return r;
}

// Each arm's interval at delta / (2 x criteria): P(any false fail, ever) <= delta (Bonferroni).
double arm_alpha(const MigrationSpec& spec) {
  return spec.stop.empty() ? spec.delta : spec.delta / (2.0 * static_cast<double>(spec.stop.size()));
}

struct Evaluation {
  std::array<CriterionResult, kStopMetrics.size()> results{};
  std::size_t count = 0;
};

Evaluation evaluate_all(const MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario) {
  Evaluation e;
  const double alpha = arm_alpha(spec);
  for (const StopCriterion& c : spec.stop) {
    if (e.count == e.results.size()) break;  // the loader allows each metric once
    e.results[e.count++] = evaluate(run, spec, scenario, c, alpha);
  }
  return e;
}

// ---- the texts ---------------------------------------------------------------------------------------

// "errors: candidate 7.9 % failed (n=412) vs baseline 1.0 % (n=9,801); regression [+4.1, +11.0] pp" or, for
// the cost, "cost_per_accepted: candidate $0.00213 (n=412) vs baseline $0.00161 (n=9,801), allowed
// 1.2 x baseline; regression [+3.1, +18.0] %".
std::string criterion_text(const CriterionResult& r, const MigrationRun& run, const MigrationSpec& spec) {
  char buf[384];
  const std::string nc = count_text(sample_size(run.candidate, r.metric));
  const std::string nb = count_text(sample_size(run.baseline, r.metric));
  const std::string_view name = to_string(r.metric);
  if (r.metric == StopMetric::cost) {
    char allowed[64];
    if (spec.cost_max_ratio > 0.0) {
      std::snprintf(allowed, sizeof allowed, "%.2f x baseline", spec.cost_max_ratio);
    } else {
      const std::string ceiling = spec.cost_ceiling ? spec.cost_ceiling->to_usd_string() : std::string("?");
      std::snprintf(allowed, sizeof allowed, "$%s", ceiling.c_str());
    }
    std::snprintf(buf, sizeof buf,
                  "%.*s: candidate $%.6g per accepted (n=%s) vs baseline $%.6g (n=%s), allowed %s; regression "
                  "[%+.1f, %+.1f] %%",
                  static_cast<int>(name.size()), name.data(), r.candidate, nc.c_str(), r.baseline, nb.c_str(), allowed,
                  r.lo * 100.0, r.hi * 100.0);
  } else {
    // What the rate counts, so "acceptance: candidate 40.0 % rejected" is not read as accepted.
    static constexpr std::array<const char*, 4> kCounted{"failed", "over the TTFT bound", "over the latency bound",
                                                         "rejected"};
    std::snprintf(
        buf, sizeof buf, "%.*s: candidate %.1f %% %s (n=%s) vs baseline %.1f %% (n=%s); regression [%+.1f, %+.1f] pp",
        static_cast<int>(name.size()), name.data(), r.candidate * 100.0, kCounted[static_cast<std::size_t>(r.metric)],
        nc.c_str(), r.baseline * 100.0, nb.c_str(), r.lo * 100.0, r.hi * 100.0);
  }
  return buf;
}

std::string effect_text(const CriterionResult& r) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f %s", r.min_effect * 100.0, r.metric == StopMetric::cost ? "%" : "pp");
  return buf;
}

std::string step_text(const MigrationSpec& spec, std::uint32_t step) {
  char buf[64];
  const std::uint32_t percent = step < spec.steps.size() ? spec.steps[step] : 0;
  std::snprintf(buf, sizeof buf, "step %" PRIu32 " (%" PRIu32 " %%)", step, percent);
  return buf;
}

std::string_view phase_word(MigrationPhase phase) {
  switch (phase) {
    case MigrationPhase::pending: return "pending";
    case MigrationPhase::ramp: return "ramping";
    case MigrationPhase::paused: return "paused";
    case MigrationPhase::promoted: return "promoted";
    case MigrationPhase::aborted: return "aborted";
  }
  return "unknown";
}

MigrationTransition move(MigrationRun& run, MigrationPhase to, TransitionCause cause, TimeMs now, std::string detail) {
  MigrationTransition t;
  t.at = now;
  t.from = run.phase;
  t.to = to;
  t.step = run.step;
  t.cause = cause;
  t.detail = std::move(detail);
  t.candidate_outcomes = run.candidate.outcomes;
  t.baseline_outcomes = run.baseline.outcomes;
  run.phase = to;
  if (to == MigrationPhase::paused) run.paused_at = now;
  // Bounded: the first move and the latest ones (a flapping pause/resume script cannot grow a status
  // reply or a snapshot without end).
  if (run.transitions.size() >= kMaxTransitions) run.transitions.erase(run.transitions.begin() + 1);
  run.transitions.push_back(t);
  return t;
}

bool counting(const MigrationRun& run) {
  return run.phase == MigrationPhase::ramp || run.phase == MigrationPhase::paused;
}

// The hard guardrails on the interval's candidate outcomes and the budget; the detail if one trips.
std::optional<std::string> guardrail_tripped(const MigrationRun& run, const MigrationSpec& spec) {
  const Guardrails& g = spec.guardrails;
  const IntervalCounts& in = run.interval;
  char buf[256];
  if (in.outcomes > 0 && in.outcomes >= g.min_samples) {
    const auto n = static_cast<double>(in.outcomes);
    if (g.error_rate > 0.0 && static_cast<double>(in.errors) >= g.error_rate * n) {
      std::snprintf(
          buf, sizeof buf,
          "guardrail error_rate: %s of %s candidate outcomes in the last interval failed (%.1f %% >= %.1f %%)",
          count_text(in.errors).c_str(), count_text(in.outcomes).c_str(), 100.0 * static_cast<double>(in.errors) / n,
          100.0 * g.error_rate);
      return std::string(buf);
    }
    if (g.latency_p99_ms > 0 && in.over_p99 * 100 > in.outcomes) {
      std::snprintf(buf, sizeof buf,
                    "guardrail latency_p99_ms: %s of %s candidate outcomes in the last interval took over %" PRId64
                    " ms (%.1f %% > 1 %%)",
                    count_text(in.over_p99).c_str(), count_text(in.outcomes).c_str(), g.latency_p99_ms,
                    100.0 * static_cast<double>(in.over_p99) / n);
      return std::string(buf);
    }
  }
  if (g.budget && run.candidate.cost >= *g.budget) {
    return "guardrail budget_usd: the candidate's cost since the canary began, $" + run.candidate.cost.to_usd_string() +
           ", reached the budget $" + g.budget->to_usd_string();
  }
  return std::nullopt;
}

// "212 candidate outcomes (min 200)": the step's samples.
std::string samples_text(const MigrationRun& run, const MigrationSpec& spec) {
  return count_text(run.step_outcomes) + " candidate outcomes (min " + count_text(spec.min_samples) + ")";
}

std::string alpha_text(const MigrationSpec& spec) {
  char buf[96];
  std::snprintf(buf, sizeof buf, " (delta %.3g, each arm at alpha %.3g)", spec.delta, arm_alpha(spec));
  return buf;
}

}  // namespace

// ---- names -------------------------------------------------------------------------------------------

std::string_view to_string(MigrationPhase phase) noexcept { return name_of(kMigrationPhases, phase); }
std::string_view to_string(MigrationStage stage) noexcept { return name_of(kMigrationStages, stage); }
std::string_view to_string(StopMetric metric) noexcept { return name_of(kStopMetrics, metric); }
std::string_view to_string(TransitionCause cause) noexcept { return name_of(kTransitionCauses, cause); }
std::string_view to_string(MigrationCommand cmd) noexcept { return name_of(kMigrationCommands, cmd); }
std::string_view to_string(CriterionResult::Verdict verdict) noexcept {
  switch (verdict) {
    case CriterionResult::Verdict::fail: return "fail";
    case CriterionResult::Verdict::pass: return "pass";
    case CriterionResult::Verdict::inconclusive: return "inconclusive";
  }
  return "unknown";
}

std::optional<MigrationCommand> migration_command_from_string(std::string_view name) noexcept {
  for (std::size_t i = 0; i < kMigrationCommands.size(); ++i) {
    if (kMigrationCommands[i] == name) return static_cast<MigrationCommand>(i);
  }
  return std::nullopt;
}

// ---- the statistics ----------------------------------------------------------------------------------

std::pair<double, double> rate_interval(std::uint64_t successes, std::uint64_t trials, double alpha) {
  if (trials == 0 || !(alpha > 0.0 && alpha < 1.0)) return {0.0, 1.0};
  successes = std::min(successes, trials);
  const auto s = static_cast<double>(successes);
  const auto f = static_cast<double>(trials - successes);
  const double log_mixture =
      std::lgamma(s + 0.5) + std::lgamma(f + 0.5) - std::lgamma(s + f + 1.0) - std::log(std::numbers::pi);
  const double c = -std::log(alpha);
  const double estimate = s / (s + f);  // log LR <= 0 there (the mixture never beats the maximum)
  const double lo = successes == 0 ? 0.0 : endpoint(log_mixture, s, f, c, estimate, 0.0);
  const double hi = successes == trials ? 1.0 : endpoint(log_mixture, s, f, c, estimate, 1.0);
  return {lo, hi};
}

std::pair<double, double> mean_interval(std::uint64_t n, double sum, double sum_sq, double alpha,
                                        std::uint64_t planned) {
  if (n < 2 || !(alpha > 0.0 && alpha < 1.0)) return {-kInf, kInf};
  const auto t = static_cast<double>(n);
  const double mean = sum / t;
  const double variance = std::max(0.0, (sum_sq - t * mean * mean) / (t - 1.0));
  const double log_alpha = std::log(alpha);
  const double rho2 =
      (-2.0 * log_alpha + std::log(-2.0 * log_alpha + 1.0)) / static_cast<double>(std::max<std::uint64_t>(planned, 1));
  const double margin = std::sqrt(variance) * std::sqrt(2.0 * (t * rho2 + 1.0) / (t * t * rho2) *
                                                        std::log(std::sqrt(t * rho2 + 1.0) / alpha));
  return {mean - margin, mean + margin};
}

// ---- the run -----------------------------------------------------------------------------------------

std::uint32_t candidate_percent(const MigrationSpec& spec, const MigrationRun& run) noexcept {
  switch (run.phase) {
    case MigrationPhase::pending:
    case MigrationPhase::aborted: return 0;
    case MigrationPhase::promoted: return 100;
    case MigrationPhase::ramp:
    case MigrationPhase::paused:
      // A stage moved back before canary holds a live run: no traffic, no analysis, until it is canary again.
      if (spec.stage != MigrationStage::canary) return 0;
      return run.step < spec.steps.size() ? spec.steps[run.step] : 0;
  }
  return 0;
}

MigrationRun start_run(const MigrationSpec& spec) {
  MigrationRun run;
  run.identity = spec.identity;
  return run;
}

MigrationRun adopt_run(const MigrationSpec& spec, MigrationRun carried) {
  if (carried.identity == spec.identity) return carried;
  return start_run(spec);
}

void observe_outcome(MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario, Arm arm, bool ok,
                     std::int64_t ttft_ms, std::int64_t latency_ms, std::optional<Money> cost) {
  if (!counting(run)) return;
  ArmCounts& a = arm == Arm::candidate ? run.candidate : run.baseline;
  ++a.outcomes;
  if (!ok) ++a.errors;
  if (ok && scenario.ttft_p95_ms > 0 && ttft_ms >= 0) {
    ++a.ttft_checked;
    if (ttft_ms > scenario.ttft_p95_ms) ++a.ttft_over;
  }
  if (ok && scenario.latency_p95_ms > 0 && latency_ms >= 0) {
    ++a.latency_checked;
    if (latency_ms > scenario.latency_p95_ms) ++a.latency_over;
  }
  if (cost) {
    ++a.priced;
    a.cost += *cost;
    const double c = usd(*cost);
    a.cost_sq_usd += c * c;
  }
  if (arm != Arm::candidate) return;
  ++run.step_outcomes;
  ++run.interval.outcomes;
  if (!ok) ++run.interval.errors;
  if (spec.guardrails.latency_p99_ms > 0 && latency_ms > spec.guardrails.latency_p99_ms) ++run.interval.over_p99;
}

void observe_verdict(MigrationRun& run, Arm arm, bool accepted) {
  if (!counting(run)) return;
  ArmCounts& a = arm == Arm::candidate ? run.candidate : run.baseline;
  ++a.verdicts;
  if (!accepted) ++a.rejected;
}

bool analysis_due(const MigrationRun& run, const MigrationSpec& spec, TimeMs now) noexcept {
  if (run.phase == MigrationPhase::pending) return spec.stage == MigrationStage::canary;
  if (!counting(run) || spec.stage != MigrationStage::canary) return false;  // ended, or held by its stage
  if (now >= run.next_analysis_at) return true;
  // A clock that stepped back by more than an interval does not hold the guardrails off until it
  // catches up: the analysis runs now and counts its intervals from here.
  if (run.next_analysis_at - now > 2 * spec.interval_ms) return true;
  // A deadline is kept to the millisecond, not rounded up to the next interval.
  const TimeMs since = run.phase == MigrationPhase::paused ? run.paused_at : run.step_started_at;
  return now >= since + spec.max_step_ms;
}

std::vector<CriterionResult> criteria(const MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario) {
  const Evaluation e = evaluate_all(run, spec, scenario);
  return {e.results.begin(), e.results.begin() + static_cast<std::ptrdiff_t>(e.count)};
}

std::optional<MigrationTransition> analyze(MigrationRun& run, const MigrationSpec& spec, const Scenario& scenario,
                                           TimeMs now) {
  if (!analysis_due(run, spec, now)) return std::nullopt;
  const std::int64_t interval = std::max<std::int64_t>(spec.interval_ms, 1);
  if (run.phase == MigrationPhase::pending) {
    run.step = 0;
    run.started_at = run.step_started_at = now;
    run.next_analysis_at = now + interval;
    run.step_outcomes = 0;
    run.interval = {};
    char detail[96];
    std::snprintf(detail, sizeof detail, "stage canary: the candidate takes %" PRIu32 " %% (step 0 of %zu)",
                  spec.steps.empty() ? 0U : spec.steps[0], spec.steps.size());
    return move(run, MigrationPhase::ramp, TransitionCause::started, now, detail);
  }
  run.next_analysis_at = now >= run.next_analysis_at
                             ? run.next_analysis_at + ((now - run.next_analysis_at) / interval + 1) * interval
                             : now + interval;  // the clock stepped back

  // 1. The guardrails, on this interval's candidate outcomes; then the interval starts over.
  const std::optional<std::string> tripped = guardrail_tripped(run, spec);
  run.interval = {};
  if (tripped) return move(run, MigrationPhase::aborted, TransitionCause::guardrail, now, *tripped);

  // 2. The criteria, on everything since the canary began: any regression above 0 aborts.
  const Evaluation e = evaluate_all(run, spec, scenario);
  const CriterionResult* first_open = nullptr;  // the first criterion not proven
  const CriterionResult* nearest_fail = nullptr;
  const CriterionResult* tightest_pass = nullptr;
  for (std::size_t i = 0; i < e.count; ++i) {
    const CriterionResult& r = e.results[i];
    if (r.verdict == CriterionResult::Verdict::fail) {
      return move(run, MigrationPhase::aborted, TransitionCause::failed, now,
                  criterion_text(r, run, spec) + " lies above 0" + alpha_text(spec));
    }
    if (r.verdict != CriterionResult::Verdict::pass && first_open == nullptr) first_open = &r;
    if (nearest_fail == nullptr || r.lo > nearest_fail->lo) nearest_fail = &r;
    if (tightest_pass == nullptr || r.hi / r.min_effect > tightest_pass->hi / tightest_pass->min_effect) {
      tightest_pass = &r;
    }
  }

  if (run.phase == MigrationPhase::paused) {
    if (now >= run.paused_at + spec.max_step_ms) {
      return move(run, MigrationPhase::aborted, TransitionCause::pause_expired, now,
                  "paused at " + step_text(spec, run.step) + " for " + std::to_string(spec.max_step_ms / 1000) +
                      " s (max_step) without a resume: the traffic goes back to the baseline");
    }
    return std::nullopt;
  }

  // 3. The step's end: its samples are in.
  const bool last = run.step + 1 >= spec.steps.size();
  if (run.step_outcomes >= spec.min_samples) {
    if (!last) {
      std::string detail =
          step_text(spec, run.step) + " passed with " + samples_text(run, spec) + ", no criterion failed";
      if (nearest_fail != nullptr) detail += "; nearest to failing: " + criterion_text(*nearest_fail, run, spec);
      ++run.step;
      run.step_outcomes = 0;
      run.step_started_at = now;
      return move(run, MigrationPhase::ramp, TransitionCause::step_passed, now, std::move(detail));
    }
    if (first_open == nullptr) {
      std::string detail = step_text(spec, run.step) + " with " + samples_text(run, spec) +
                           ": every criterion lies below its minimum effect";
      if (tightest_pass != nullptr) {
        detail += "; tightest: " + criterion_text(*tightest_pass, run, spec) + " < " + effect_text(*tightest_pass);
      }
      return move(run, MigrationPhase::promoted, TransitionCause::proven, now, std::move(detail) + alpha_text(spec));
    }
  }

  // 4. The step's deadline: no data never passes, nothing proven never promotes.
  if (now >= run.step_started_at + spec.max_step_ms) {
    const std::string deadline = " by its deadline (" + std::to_string(spec.max_step_ms / 1000) + " s)";
    if (run.step_outcomes < spec.min_samples) {
      return move(run, MigrationPhase::paused, TransitionCause::no_data, now,
                  step_text(spec, run.step) + " had " + count_text(run.step_outcomes) + " of its " +
                      count_text(spec.min_samples) + " candidate outcomes" + deadline + ": no data never passes");
    }
    std::string detail =
        step_text(spec, run.step) + " had " + samples_text(run, spec) + " but proved nothing" + deadline;
    if (first_open != nullptr) {
      detail += ": " + criterion_text(*first_open, run, spec) + " not below " + effect_text(*first_open);
    }
    return move(run, MigrationPhase::paused, TransitionCause::inconclusive, now, std::move(detail));
  }
  return std::nullopt;
}

Result<MigrationTransition> command(MigrationRun& run, const MigrationSpec& spec, MigrationCommand cmd, TimeMs now) {
  const MigrationPhase phase = run.phase;
  const bool live =
      phase == MigrationPhase::pending || phase == MigrationPhase::ramp || phase == MigrationPhase::paused;
  const std::string at =
      phase == MigrationPhase::pending ? std::string("while pending") : "at " + step_text(spec, run.step);
  const std::string verb(to_string(cmd));
  switch (cmd) {
    case MigrationCommand::promote:
      if (live) return move(run, MigrationPhase::promoted, TransitionCause::command, now, "operator promote " + at);
      break;
    case MigrationCommand::abort:
      if (live) return move(run, MigrationPhase::aborted, TransitionCause::command, now, "operator abort " + at);
      break;
    case MigrationCommand::pause:
      if (phase == MigrationPhase::ramp) {
        return move(run, MigrationPhase::paused, TransitionCause::command, now, "operator pause " + at);
      }
      return make_error(ErrorCode::migration_conflict,
                        "cannot pause: the migration is " + std::string(phase_word(phase)) + ", not ramping");
    case MigrationCommand::resume:
      if (phase == MigrationPhase::paused) {
        run.step_started_at = now;
        return move(run, MigrationPhase::ramp, TransitionCause::command, now,
                    "operator resume " + at + " (its deadline counts from now)");
      }
      return make_error(ErrorCode::migration_conflict,
                        "cannot resume: the migration is " + std::string(phase_word(phase)) + ", not paused");
  }
  return make_error(ErrorCode::migration_conflict,
                    "cannot " + verb + ": the migration was already " + std::string(phase_word(phase)));
}

}  // namespace turnout
