#include "turnout/router.hpp"

#include <algorithm>
#include <functional>

#include "turnout/detail/fast_path_access.hpp"
#include "turnout/prefix.hpp"
#include "turnout/pricing.hpp"
#include "turnout/protocol.hpp"

namespace turnout {
namespace {

void roll_budget(BudgetState& b, TimeMs now) {
  const std::int64_t day = budget_day(now);
  if (b.day != day) b = BudgetState{day, Money{}, Money{}};
}

/// Stale ids (settled decisions, ended leases) a queue may hold before it is swept: amortized O(1).
constexpr std::size_t kSweepSlack = 1024;
constexpr auto kLeaseOrder = std::greater<>{};  // std::*_heap with it: a min-heap on lease_until

/// Calls `f(scenario, target)` for each ledger row a table lists: the rows a scenario routes to (in
/// its order: routes, spillover, fallbacks), then any other row with activity or carried over.
template <class F>
void for_each_listed_row(const Config& config, const RouterState& state, F&& f) {
  std::vector<std::uint8_t> seen(config.targets.size(), 0);
  for (std::uint32_t si = 0; si < config.scenarios.size(); ++si) {
    const Scenario& s = config.scenarios[si];
    std::fill(seen.begin(), seen.end(), 0);
    const auto visit = [&](std::uint32_t ti) {
      if (seen[ti] != 0) return;
      seen[ti] = 1;
      f(si, ti);
    };
    for (const auto& r : s.routes) visit(r.target);
    if (s.spillover) visit(s.spillover->target);
    for (std::uint32_t ti : s.fallback) visit(ti);
    for (std::uint32_t ti = 0; ti < config.targets.size(); ++ti) {
      const std::size_t row = static_cast<std::size_t>(si) * state.target_count + ti;
      if (state.listed[row] != 0 || !(state.ledger[row] == Counters{})) visit(ti);
    }
  }
}

/// The error of a scenario name this table does not have, listing those it has.
Error unknown_scenario(const Config& config, std::string_view name) {
  std::string known;
  for (const auto& s : config.scenarios) known += (known.empty() ? "" : ", ") + s.name;
  return make_error(ErrorCode::unknown_scenario,
                    "unknown scenario '" + std::string(name) + "'; known scenarios: " + known);
}

/// Whether a decision made at `decided_at` belongs to `run`: decided while it ran, not under the run
/// before it (another attempt) nor while it was pending (another split).
bool in_run(const MigrationRun& run, TimeMs decided_at) {
  return run.phase != MigrationPhase::pending && decided_at >= run.started_at;
}

/// The arm of a migration `target` belongs to: none if the scenario has no migration, or the target
/// is neither its baseline nor its candidate.
std::optional<Arm> migration_arm(const Scenario& s, std::uint32_t target) {
  if (!s.migration) return std::nullopt;
  if (target == s.migration->baseline) return Arm::baseline;
  if (target == s.migration->candidate) return Arm::candidate;
  return std::nullopt;
}

/// When the run's current step (ramp) or pause (paused) runs out; 0 in the other phases.
TimeMs migration_deadline(const MigrationSpec& spec, const MigrationRun& run) {
  switch (run.phase) {
    case MigrationPhase::ramp: return run.step_started_at + spec.max_step_ms;
    case MigrationPhase::paused: return run.paused_at + spec.max_step_ms;
    default: return 0;
  }
}

}  // namespace

Router::Router(ConfigPtr config, RouterOptions options)
    : config_(std::move(config)), options_(options), state_(*config_), next_id_(options.first_decision_id) {}

Result<Request> Router::resolve(const RouteRequest& r) const {
  Request req;
  req.scenario = config_->find_scenario(r.scenario);
  if (req.scenario == kNone) return unknown_scenario(*config_, r.scenario);
  if (!r.data_class.empty()) {
    req.data_class = config_->find_data_class(r.data_class);
    // An unknown data class cannot be proven allowed anywhere: fail closed.
    if (req.data_class == kNone) {
      return make_error(ErrorCode::invalid_argument, "unknown data class '" + std::string(r.data_class) + "'");
    }
  }
  if (r.input_tokens < -1 || r.max_output_tokens < -1 || r.expected_cached_tokens < 0) {
    return make_error(ErrorCode::invalid_argument, "token counts must be non-negative");
  }
  req.key = r.key;
  req.input_tokens = r.input_tokens;
  req.max_output_tokens = r.max_output_tokens;
  req.expected_cached_tokens = r.expected_cached_tokens;
  req.token_ids = r.token_ids;
  req.text = r.text;
  req.now = r.now;
  return req;
}

Result<Decision> Router::explain(const RouteRequest& request) {
  auto req = resolve(request);
  if (!req) return std::move(req).error();
  std::lock_guard lock(mu_);
  expire(req->now);  // housekeeping only, so explain() sees the state route() would see
  return decide(*config_, state_, *req, options_.seed, next_id_);
}

Result<Decision> Router::route(const RouteRequest& request) {
  auto req = resolve(request);
  if (!req) return std::move(req).error();
  std::lock_guard lock(mu_);
  expire(req->now, 1);
  auto decision = decide(*config_, state_, *req, options_.seed, next_id_);
  if (!decision) return decision;
  ++next_id_;
  commit(*decision, req->now);
  return decision;
}

Result<Decision> Router::dispatch(const RouteRequest& request) {
  auto req = resolve(request);
  if (!req) return std::move(req).error();
  std::lock_guard lock(mu_);
  auto d = decide(*config_, state_, *req, options_.seed, next_id_);
  if (!d) return d;
  ++next_id_;
  const Target& t = config_->targets[d->placement.target];
  const std::size_t unit = state_.unit(d->placement.target, d->placement.replica);
  ++state_.inflight[unit];
  state_.active_blocks[unit] += d->active_blocks;
  state_.note_placement(t, d->placement.target, d->placement.replica);
  state_.breakers[unit].on_dispatch(t.breaker, req->now);
  if (config_->scenarios[d->scenario].budget_per_day) {
    BudgetState& budget = state_.budgets[d->scenario];
    roll_budget(budget, req->now);
    budget.reserved += d->reserved_cost;
  }
  return d;
}

Result<ReportReceipt> Router::price_outcome(std::uint32_t scenario, std::uint32_t placed_target,
                                            const OutcomeReport& r) const {
  const std::uint32_t target = config_->find_target(r.target);
  if (target == kNone) return make_error(ErrorCode::unknown_target, "unknown target '" + std::string(r.target) + "'");
  if (scenario >= config_->scenarios.size()) return make_error(ErrorCode::unknown_scenario, "unknown scenario index");
  ReportReceipt receipt;
  receipt.fallback = target != placed_target;
  if (r.usage != nullptr && r.usage->type != msgpack::type::NIL) {
    const Target& t = config_->targets[target];
    auto usage = normalize_usage(t.provider, *r.usage);
    if (!usage) return std::move(usage).error();
    auto cost = actual_cost(t, *usage, config_->scenarios[scenario].mode);
    if (!cost) return std::move(cost).error();
    receipt.priced = true;
    receipt.usage = *usage;
    receipt.cost = *cost;
  }
  return receipt;
}

Result<Ok> Router::adopt(Decision d) {
  const Config& c = *config_;
  if (d.config_version != c.content_hash) {
    return make_error(ErrorCode::invalid_argument, "decision " + std::to_string(d.id) + " was made from another table");
  }
  auto valid = [&](const Placement& pl) {
    if (pl.target >= c.targets.size()) return false;
    const Target& t = c.targets[pl.target];
    return t.kind == TargetKind::maas ? pl.replica == kNone : pl.replica < t.replicas.size();
  };
  if (d.scenario >= c.scenarios.size() || !valid(d.placement) ||
      !std::all_of(d.fallbacks.begin(), d.fallbacks.end(), valid)) {
    return make_error(ErrorCode::invalid_argument,
                      "decision " + std::to_string(d.id) + " names no place of this table");
  }
  if (d.active_blocks < 0 || d.reserved_cost.picos() < 0) {
    return make_error(ErrorCode::invalid_argument, "decision " + std::to_string(d.id) + " has negative figures");
  }
  std::lock_guard lock(mu_);
  expire(d.at, 1);
  if (state_.pending.contains(d.id)) {
    return make_error(ErrorCode::invalid_argument, "decision " + std::to_string(d.id) + " is already pending");
  }
  commit(d, d.at);
  return Ok{};
}

void Router::commit(Decision& d, TimeMs now) {
  const Target& t = config_->targets[d.placement.target];
  const std::size_t unit = state_.unit(d.placement.target, d.placement.replica);
  if (!d.prefix.empty() && learn_) {
    if (t.kind == TargetKind::self_hosted) {
      state_.pools[d.placement.target]->store(d.placement.replica, d.prefix, now);
      state_.note_held(d.placement.target);
    } else {
      state_.maas->store(state_.maas_holder[d.placement.target], d.prefix, now);
    }
  }
  // The pending entry keeps neither the prefix nor the reasons.
  std::vector<std::uint64_t> learned = std::move(d.prefix);
  std::vector<Reason> reasons = std::move(d.reasons);
  PendingDecision p;
  p.decision = d;
  d.prefix = std::move(learned);
  d.reasons = std::move(reasons);
  p.lease_until = now + std::min(inflight_lease_ms(config_->scenarios[d.scenario]), options_.decision_ttl_ms);
  ++state_.inflight[unit];
  p.active_blocks = d.active_blocks;
  state_.active_blocks[unit] += d.active_blocks;
  state_.note_placement(t, d.placement.target, d.placement.replica);
  p.probe = state_.breakers[unit].on_dispatch(t.breaker, now);
  BudgetState& budget = state_.budgets[d.scenario];
  roll_budget(budget, now);
  const bool budgeted = config_->scenarios[d.scenario].budget_per_day.has_value();
  if (budgeted) budget.reserved += d.reserved_cost;  // only a budget needs the reservation
  p.budget_day = budget.day;

  Counters& c = state_.counters(d.scenario, d.placement.target);
  ++c.requests;
  if (d.spilled) ++c.spillovers;
  state_.leases.emplace_back(p.lease_until, d.id);
  std::push_heap(state_.leases.begin(), state_.leases.end(), kLeaseOrder);
  state_.pending.emplace(d.id, std::move(p));
  state_.pending_order.push_back(d.id);
}

void Router::release(PendingDecision& p) {
  if (!p.lease_open) return;
  p.lease_open = false;
  const Placement& pl = p.decision.placement;
  const std::size_t unit = state_.unit(pl.target, pl.replica);
  --state_.inflight[unit];
  state_.active_blocks[unit] -= p.active_blocks;
  if (p.probe) {
    // A probe that ends without its own outcome (expired, or answered by a fallback) frees the slot.
    state_.breakers[unit].on_abandoned();
    p.probe = false;
  }
  BudgetState& budget = state_.budgets[p.decision.scenario];
  if (budget.day == p.budget_day && config_->scenarios[p.decision.scenario].budget_per_day) {
    budget.reserved -= p.decision.reserved_cost;
  }
}

void Router::settle_if_done(std::unordered_map<std::uint64_t, PendingDecision>::iterator it) {
  const PendingDecision& p = it->second;
  if (p.lease_open || p.served_target == kNone) return;
  state_.settled.emplace(it->first, SettledDecision{.at = p.decision.at,
                                                    .served_cost = p.served_cost,
                                                    .scenario = p.decision.scenario,
                                                    .served_target = p.served_target,
                                                    .verdict_given = p.verdict_given,
                                                    .placed = p.served_target == p.decision.placement.target});
  state_.settled_order.push_back(it->first);
  state_.pending.erase(it);  // its id stays in pending_order until swept or expired
}

void Router::expire_leases(TimeMs now) {
  auto& heap = state_.leases;
  while (!heap.empty() && heap.front().first <= now) {
    const auto [until, id] = heap.front();
    std::pop_heap(heap.begin(), heap.end(), kLeaseOrder);
    heap.pop_back();
    auto it = state_.pending.find(id);
    if (it == state_.pending.end() || !it->second.lease_open || it->second.lease_until != until) continue;
    release(it->second);  // the decision stays pending: a late report still counts, once
    settle_if_done(it);
  }
  if (heap.size() > 2 * state_.pending.size() + kSweepSlack) {
    std::erase_if(heap, [&](const auto& lease) {
      auto it = state_.pending.find(lease.second);
      return it == state_.pending.end() || !it->second.lease_open || it->second.lease_until != lease.first;
    });
    std::make_heap(heap.begin(), heap.end(), kLeaseOrder);
  }
}

void Router::expire(TimeMs now, std::size_t room) {
  expire_leases(now);
  while (!state_.pending_order.empty()) {
    const std::uint64_t id = state_.pending_order.front();
    auto it = state_.pending.find(id);
    if (it != state_.pending.end()) {
      const bool old = now - it->second.decision.at >= options_.decision_ttl_ms;
      if (!old && state_.pending.size() + room <= options_.max_pending) break;
      release(it->second);
      state_.pending.erase(it);
    }
    state_.pending_order.pop_front();
  }
  if (state_.pending_order.size() > 2 * state_.pending.size() + kSweepSlack) {
    std::erase_if(state_.pending_order, [&](std::uint64_t id) { return !state_.pending.contains(id); });
  }
  while (!state_.settled_order.empty()) {
    auto it = state_.settled.find(state_.settled_order.front());
    if (it != state_.settled.end()) {
      const bool old = now - it->second.at >= options_.decision_ttl_ms;
      if (!old && state_.settled.size() <= options_.max_settled) break;
      state_.settled.erase(it);
    }
    state_.settled_order.pop_front();
  }
}

SettledDecision* Router::find_settled(std::uint64_t id, TimeMs now) {
  auto it = state_.settled.find(id);
  // Settled in settle order, so one decided earlier may wait behind a newer one: check its age here.
  if (it == state_.settled.end() || now - it->second.at >= options_.decision_ttl_ms) return nullptr;
  return &it->second;
}

Counters& Router::verdict_row(const SettledDecision& s) {
  return s.scenario == kNone ? state_.retired[s.served_target].counters : state_.counters(s.scenario, s.served_target);
}

Result<ReportReceipt> Router::report_settled(SettledDecision& s, std::uint64_t id, std::uint32_t target,
                                             const OutcomeReport& r) {
  const std::string& served =
      s.scenario == kNone ? state_.retired[s.served_target].target : config_->targets[s.served_target].name;
  if (served != config_->targets[target].name) {
    return make_error(ErrorCode::target_not_allowed, "decision " + std::to_string(id) + " was answered by '" + served +
                                                         "' and its lease has ended: no other outcome is taken for it");
  }
  ReportReceipt receipt;
  receipt.duplicate = true;
  if (r.accepted && !s.verdict_given) {
    if (auto v = apply_verdict(s, id, *r.accepted); !v) return std::move(v).error();
  }
  return receipt;
}

Result<ReportReceipt> Router::report(const OutcomeReport& r) {
  if (r.ttft_ms < -1 || r.latency_ms < -1 || r.ttft_ms > kMaxOutcomeMs || r.latency_ms > kMaxOutcomeMs) {
    return make_error(ErrorCode::invalid_argument,
                      "ttft_ms and latency_ms must be durations in ms within 0..604800000");
  }
  const std::uint32_t target = config_->find_target(r.target);
  if (target == kNone) {
    return make_error(ErrorCode::unknown_target, "unknown target '" + std::string(r.target) + "'");
  }
  const Target& t = config_->targets[target];

  std::lock_guard lock(mu_);
  expire(r.now);
  auto it = state_.pending.find(r.decision_id);
  if (it == state_.pending.end()) {
    if (SettledDecision* s = find_settled(r.decision_id, r.now)) return report_settled(*s, r.decision_id, target, r);
    return make_error(ErrorCode::unknown_decision,
                      "unknown decision id " + std::to_string(r.decision_id) + " (never issued, or expired)");
  }
  PendingDecision& p = it->second;
  const Decision& d = p.decision;
  std::uint32_t replica = d.placement.replica;
  const bool fallback = target != d.placement.target;
  if (fallback) {
    auto f =
        std::find_if(d.fallbacks.begin(), d.fallbacks.end(), [&](const Placement& pl) { return pl.target == target; });
    if (f == d.fallbacks.end()) {
      return make_error(ErrorCode::target_not_allowed, "target '" + t.name + "' is neither decision " +
                                                           std::to_string(d.id) + "'s target nor one of its fallbacks");
    }
    replica = f->replica;
  }

  ReportReceipt receipt;
  receipt.fallback = fallback;
  if (std::find(p.reported_targets.begin(), p.reported_targets.end(), target) != p.reported_targets.end()) {
    receipt.duplicate = true;
    if (r.accepted && !p.verdict_given) {
      if (auto s = apply_verdict(p, *r.accepted); !s) return std::move(s).error();
    }
    return receipt;
  }

  if (r.accepted && !p.verdict_given && p.served_target == kNone && r.status != Status::ok) {
    return make_error(ErrorCode::invalid_argument, "decision " + std::to_string(d.id) +
                                                       " has no ok outcome to give a verdict on (status " +
                                                       to_string(r.status) + ")");
  }
  const Scenario& s = config_->scenarios[d.scenario];
  if (r.usage != nullptr && r.usage->type != msgpack::type::NIL) {
    auto usage = normalize_usage(t.provider, *r.usage);
    if (!usage) return std::move(usage).error();
    auto cost = actual_cost(t, *usage, s.mode);
    if (!cost) return std::move(cost).error();
    receipt.priced = true;
    receipt.usage = *usage;
    receipt.cost = *cost;
  }

  // Validated: from here on nothing fails.
  p.reported_targets.push_back(target);
  Counters& c = state_.counters(d.scenario, target);
  ++c.outcomes;
  if (fallback) ++c.fallbacks;
  ++c.by_status[static_cast<std::size_t>(r.status)];
  if (receipt.priced) {
    add_tokens(c.tokens, receipt.usage);
    c.cost += receipt.cost;
  } else if (r.status == Status::ok) {
    ++c.unpriced;
  }
  observe_times(c, objectives(s), r.ttft_ms, r.latency_ms);  // once: a duplicate returned above
  // A migration compares the decisions placed on its arms: a fallback's outcome is not its arm's.
  if (const auto arm = migration_arm(s, target); arm && !fallback && in_run(state_.migration_runs[d.scenario], d.at)) {
    observe_outcome(state_.migration_runs[d.scenario], *s.migration, s, *arm, r.status == Status::ok, r.ttft_ms,
                    r.latency_ms, receipt.priced ? std::optional<Money>(receipt.cost) : std::nullopt);
  }

  // The probe's outcome decides a half-open breaker. A fallback never claims the probe when it is
  // handed out, so an outcome on a half-open unit with no probe in flight serves as its probe:
  // otherwise a target used only as a fallback would stay half-open, its failures ignored.
  const Breaker& unit_breaker = state_.breakers[state_.unit(target, replica)];
  const bool probe =
      fallback ? unit_breaker.phase(t.breaker, r.now) == Breaker::Phase::half_open && !unit_breaker.probe_inflight()
               : p.probe;
  state_.breakers[state_.unit(target, replica)].on_outcome(t.breaker, counts_against_breaker(r.status), probe, r.now);
  release(p);
  BudgetState& budget = state_.budgets[d.scenario];
  roll_budget(budget, r.now);
  budget.spent += receipt.cost;

  if (r.status == Status::ok && p.served_target == kNone) {
    p.served_target = target;
    p.served_cost = receipt.cost;
  }
  if (r.accepted && !p.verdict_given) {
    if (auto v = apply_verdict(p, *r.accepted); !v) return std::move(v).error();
  }
  settle_if_done(it);
  return receipt;
}

Result<Ok> Router::apply_verdict(PendingDecision& p, bool accepted) {
  if (p.served_target == kNone) {
    return make_error(ErrorCode::invalid_argument,
                      "decision " + std::to_string(p.decision.id) + " has no ok outcome to give a verdict on");
  }
  p.verdict_given = true;
  Counters& c = state_.counters(p.decision.scenario, p.served_target);
  if (accepted) {
    ++c.accepted;
    c.accepted_cost += p.served_cost;
  } else {
    ++c.rejected;
  }
  observe_migration_verdict(p.decision.scenario, p.served_target, p.served_target == p.decision.placement.target,
                            p.decision.at, accepted);
  return Ok{};
}

Result<Ok> Router::apply_verdict(SettledDecision& s, std::uint64_t id, bool accepted) {
  if (s.served_target == kNone) {
    return make_error(ErrorCode::invalid_argument,
                      "decision " + std::to_string(id) + " has no ok outcome to give a verdict on");
  }
  s.verdict_given = true;
  Counters& c = verdict_row(s);
  if (accepted) {
    ++c.accepted;
    c.accepted_cost += s.served_cost;
  } else {
    ++c.rejected;
  }
  if (s.scenario != kNone) observe_migration_verdict(s.scenario, s.served_target, s.placed, s.at, accepted);
  return Ok{};
}

void Router::observe_migration_verdict(std::uint32_t scenario, std::uint32_t served_target, bool placed,
                                       TimeMs decided_at, bool accepted) {
  const auto arm = migration_arm(config_->scenarios[scenario], served_target);
  MigrationRun& run = state_.migration_runs[scenario];
  if (arm && placed && in_run(run, decided_at)) observe_verdict(run, *arm, accepted);
}

Result<Ok> Router::verdict(std::uint64_t decision_id, bool accepted, TimeMs now) {
  std::lock_guard lock(mu_);
  expire(now);
  auto it = state_.pending.find(decision_id);
  if (it == state_.pending.end()) {
    SettledDecision* s = find_settled(decision_id, now);
    if (s == nullptr) {
      return make_error(ErrorCode::unknown_decision,
                        "unknown decision id " + std::to_string(decision_id) + " (never issued, or expired)");
    }
    if (s->verdict_given) return Ok{};  // idempotent
    return apply_verdict(*s, decision_id, accepted);
  }
  if (it->second.verdict_given) return Ok{};  // idempotent
  return apply_verdict(it->second, accepted);
}

Counters Router::counter(std::uint32_t scenario, std::uint32_t target) const {
  std::lock_guard lock(mu_);
  if (scenario >= config_->scenarios.size() || target >= config_->targets.size()) return {};
  return state_.ledger[static_cast<std::size_t>(scenario) * state_.target_count + target];
}

std::vector<CounterRow> Router::counters() const {
  std::lock_guard lock(mu_);
  std::vector<CounterRow> rows;
  for_each_listed_row(*config_, state_, [&](std::uint32_t si, std::uint32_t ti) {
    rows.push_back({si, ti, state_.ledger[static_cast<std::size_t>(si) * state_.target_count + ti]});
  });
  return rows;
}

std::vector<LedgerEntry> Router::retired_counters() const {
  std::lock_guard lock(mu_);
  std::vector<LedgerEntry> rows;
  for (const RetiredRow& r : state_.retired) rows.push_back({r.scenario, r.target, r.counters});
  return rows;
}

Result<Ok> Router::restore_counters(const std::vector<CounterRow>& rows) {
  for (const auto& row : rows) {
    if (row.scenario >= config_->scenarios.size() || row.target >= config_->targets.size()) {
      return make_error(ErrorCode::invalid_argument, "counter row outside this routing table");
    }
  }
  std::lock_guard lock(mu_);
  for (const auto& row : rows) {
    state_.counters(row.scenario, row.target) = row.counters;
    state_.listed[static_cast<std::size_t>(row.scenario) * state_.target_count + row.target] = 1;
  }
  return Ok{};
}

std::vector<BreakerRow> Router::breakers(TimeMs now) const {
  std::lock_guard lock(mu_);
  std::vector<BreakerRow> rows;
  for (std::uint32_t ti = 0; ti < config_->targets.size(); ++ti) {
    const Target& t = config_->targets[ti];
    const std::uint32_t n = t.kind == TargetKind::maas ? 1 : static_cast<std::uint32_t>(t.replicas.size());
    for (std::uint32_t r = 0; r < n; ++r) {
      const std::uint32_t replica = t.kind == TargetKind::maas ? kNone : r;
      const std::size_t u = state_.unit(ti, replica);
      const Breaker& b = state_.breakers[u];
      rows.push_back(
          {ti, replica, b.phase(t.breaker, now), b.consecutive_failures(), b.times_opened(), state_.inflight[u]});
    }
  }
  return rows;
}

std::vector<BudgetRow> Router::budgets(TimeMs now) const {
  std::lock_guard lock(mu_);
  std::vector<BudgetRow> rows;
  for (std::uint32_t si = 0; si < config_->scenarios.size(); ++si) {
    const Scenario& s = config_->scenarios[si];
    if (!s.budget_per_day) continue;
    const BudgetState& b = state_.budgets[si];
    const bool today = b.day == budget_day(now);
    rows.push_back({si, *s.budget_per_day, today ? b.spent : Money{}, today ? b.reserved : Money{}});
  }
  return rows;
}

std::vector<PoolCostRow> Router::self_hosted_costs(TimeMs period_ms) const {
  std::lock_guard lock(mu_);
  std::vector<PoolCostRow> rows;
  for (std::uint32_t ti = 0; ti < config_->targets.size(); ++ti) {
    const Target& t = config_->targets[ti];
    if (t.kind != TargetKind::self_hosted) continue;
    PoolCostRow row{ti, self_hosted_period_cost(t, period_ms), {}, 0, 0};
    for (std::uint32_t si = 0; si < config_->scenarios.size(); ++si) {
      const Counters& c = state_.ledger[static_cast<std::size_t>(si) * state_.target_count + ti];
      row.marginal += c.cost;
      row.outcomes += c.outcomes;
      row.accepted += c.accepted;
    }
    rows.push_back(row);
  }
  return rows;
}

Result<KvIngestStats> Router::apply_kv_events(std::uint32_t target, std::uint32_t replica, const KvEventBatch& batch,
                                              TimeMs now) {
  if (target >= config_->targets.size() || !state_.pools[target] ||
      replica >= config_->targets[target].replicas.size()) {
    return make_error(ErrorCode::invalid_argument, "KV events need a self-hosted target and one of its replicas");
  }
  const Target& t = config_->targets[target];
  std::lock_guard lock(mu_);
  CacheDirectory& dir = *state_.pools[target];
  KvCacheGroups& groups = state_.pool_groups[target][replica];
  KvIngestStats delta;
  delta.batches = 1;
  delta.unusable = batch.unusable;
  std::vector<std::uint64_t> chain;
  for (const KvEvent& event : batch.events) {
    if (!groups.admit(event)) {
      ++delta.skipped;  // a group that holds no whole prefixes (sliding window, Mamba...)
      continue;
    }
    if (const auto* stored = std::get_if<BlockStored>(&event)) {
      if (stored->block_size != t.kv.block_size) {
        ++delta.rejected;  // another block size: these hashes could never match our requests
        continue;
      }
      std::uint64_t parent = PrefixHasher::root_seed(t.model, stored->lora_name);
      if (stored->parent_block_hash) {
        auto own = dir.own_hash(replica, *stored->parent_block_hash);
        if (!own) {
          delta.orphans += stored->block_hashes.size();  // its parent came before we listened
          continue;
        }
        parent = *own;
      }
      if (stored->token_ids.size() != stored->block_hashes.size() * static_cast<std::size_t>(t.kv.block_size)) {
        ++delta.rejected;  // the decoder guarantees this; a hand-built batch may not
        continue;
      }
      chain.clear();
      PrefixHasher::hash_tokens(stored->token_ids, static_cast<std::size_t>(t.kv.block_size), parent, chain);
      dir.store(replica, chain, now, stored->block_hashes, medium_tier(stored->medium));
      delta.stored += chain.size();
    } else if (const auto* removed = std::get_if<BlockRemoved>(&event)) {
      const CacheTier tier = medium_tier(removed->medium);
      for (EngineHash h : removed->block_hashes) delta.removed += dir.remove_engine(replica, h, tier) ? 1 : 0;
    } else {
      dir.clear(replica);
      ++delta.cleared;
    }
  }
  KvIngestStats& total = state_.pool_events[target][replica];
  total.batches += delta.batches;
  total.stored += delta.stored;
  total.removed += delta.removed;
  total.cleared += delta.cleared;
  total.orphans += delta.orphans;
  total.rejected += delta.rejected;
  total.skipped += delta.skipped;
  total.unusable += delta.unusable;
  state_.note_held(target);
  return delta;
}

Result<Ok> Router::reset_kv(std::uint32_t target, std::uint32_t replica) {
  if (target >= config_->targets.size() || !state_.pools[target] ||
      replica >= config_->targets[target].replicas.size()) {
    return make_error(ErrorCode::invalid_argument, "reset_kv needs a self-hosted target and one of its replicas");
  }
  std::lock_guard lock(mu_);
  state_.pools[target]->clear(replica);
  state_.note_held(target);
  state_.pool_groups[target][replica].reset();  // a restarted engine may number its groups anew
  ++state_.pool_events[target][replica].cleared;
  return Ok{};
}

std::vector<DirectoryRow> Router::directory_stats() const {
  std::lock_guard lock(mu_);
  std::vector<DirectoryRow> rows;
  for (std::uint32_t ti = 0; ti < config_->targets.size(); ++ti) {
    if (state_.pools[ti]) rows.push_back({ti, state_.pools[ti]->stats(), state_.pool_events.at(ti)});
  }
  if (state_.maas) rows.push_back({kNone, state_.maas->stats(), {}});
  return rows;
}

std::size_t Router::pending_decisions() const {
  std::lock_guard lock(mu_);
  return state_.pending.size() + state_.settled.size();
}

void Router::live_state(std::vector<detail::LiveUnit>& units, std::vector<detail::LiveBudget>& budgets) const {
  std::lock_guard lock(mu_);
  units.resize(state_.breakers.size());
  for (std::size_t u = 0; u < units.size(); ++u) {
    const Breaker& b = state_.breakers[u];
    units[u] = {b.stored_phase(),        b.probe_inflight(),    b.opened_at(),       state_.inflight[u],
                state_.active_blocks[u], state_.recent_load[u], state_.cache_held[u]};
  }
  budgets.resize(state_.budgets.size());
  for (std::size_t s = 0; s < budgets.size(); ++s) {
    const BudgetState& b = state_.budgets[s];
    budgets[s] = {b.day, b.spent, b.reserved, state_.candidate_percent[s]};
  }
}

void Router::set_live_state(std::span<const detail::LiveUnit> units, std::span<const detail::LiveBudget> budgets) {
  std::lock_guard lock(mu_);
  for (std::size_t u = 0; u < units.size() && u < state_.breakers.size(); ++u) {
    state_.breakers[u].mirror(units[u].phase, units[u].probe_inflight, units[u].opened_at);
    state_.inflight[u] = units[u].inflight;
    state_.active_blocks[u] = units[u].active_blocks;
    state_.recent_load[u] = units[u].recent_load;
    state_.cache_held[u] = units[u].cache_held;
  }
  for (std::size_t s = 0; s < budgets.size() && s < state_.budgets.size(); ++s) {
    state_.budgets[s].day = budgets[s].day;
    state_.budgets[s].spent = budgets[s].spent;
    state_.budgets[s].reserved = budgets[s].reserved;
    state_.candidate_percent[s] = std::min<std::uint32_t>(budgets[s].candidate_percent, 100);
  }
}

void Router::set_prefix_index(std::vector<const PrefixIndex*> pools, const PrefixIndex* maas) {
  std::lock_guard lock(mu_);
  pools.resize(state_.pool_index.size(), nullptr);
  state_.pool_index = std::move(pools);
  state_.maas_index = maas;
  learn_ = false;
}

void Router::observe_directory(std::uint32_t target, MaskObserver* observer) {
  std::lock_guard lock(mu_);
  CacheDirectory* dir = target == kNone                ? state_.maas.get()
                        : target < state_.pools.size() ? state_.pools[target].get()
                                                       : nullptr;
  if (dir != nullptr) dir->set_observer(observer);
}

void Router::expire_directories(TimeMs now) {
  std::lock_guard lock(mu_);
  for (std::uint32_t target = 0; target < state_.pools.size(); ++target) {
    if (!state_.pools[target]) continue;
    state_.pools[target]->expire(now);
    state_.note_held(target);
  }
  if (state_.maas) state_.maas->expire(now);
}

bool Router::has_pending(std::uint64_t decision_id) const {
  std::lock_guard lock(mu_);
  return state_.pending.contains(decision_id) || state_.settled.contains(decision_id);
}

std::size_t Router::release_ring(std::uint32_t ring) {
  std::lock_guard lock(mu_);
  std::vector<std::uint64_t> released;
  for (auto& [id, p] : state_.pending) {
    if (!protocol::is_fast_id(id) || protocol::ring_of(id) != ring || !p.lease_open) continue;
    release(p);
    released.push_back(id);
  }
  for (std::uint64_t id : released) settle_if_done(state_.pending.find(id));
  return released.size();
}

std::uint64_t Router::next_decision_id() const {
  std::lock_guard lock(mu_);
  return next_id_;
}

PlacementName Router::placement_name(const Placement& p) const {
  if (p.target == kNone) return {};
  const Target& t = config_->targets[p.target];
  return {t.name, p.replica == kNone ? std::string() : t.replicas[p.replica].endpoint};
}

std::optional<Placement> Router::find_placement(const PlacementName& name) const {
  const std::uint32_t ti = config_->find_target(name.target);
  if (ti == kNone) return std::nullopt;
  const Target& t = config_->targets[ti];
  if (t.kind == TargetKind::maas) {
    if (!name.replica.empty()) return std::nullopt;
    return Placement{ti, kNone};
  }
  for (std::uint32_t r = 0; r < t.replicas.size(); ++r) {
    if (t.replicas[r].endpoint == name.replica) return Placement{ti, r};
  }
  return std::nullopt;
}

std::uint32_t Router::retired_row(const std::string& scenario, const std::string& target) {
  for (std::uint32_t i = 0; i < state_.retired.size(); ++i) {
    if (state_.retired[i].scenario == scenario && state_.retired[i].target == target) return i;
  }
  state_.retired.push_back({scenario, target, {}});
  return static_cast<std::uint32_t>(state_.retired.size() - 1);
}

LiveState Router::export_state() const {
  std::lock_guard lock(mu_);
  const Config& c = *config_;
  LiveState out;
  for_each_listed_row(c, state_, [&](std::uint32_t si, std::uint32_t ti) {
    out.ledger.push_back({c.scenarios[si].name, c.targets[ti].name,
                          state_.ledger[static_cast<std::size_t>(si) * state_.target_count + ti]});
  });
  for (const RetiredRow& r : state_.retired) out.ledger.push_back({r.scenario, r.target, r.counters});

  for (std::uint32_t si = 0; si < c.scenarios.size(); ++si) {
    const BudgetState& b = state_.budgets[si];
    if (b.day != INT64_MIN) out.budgets.push_back({c.scenarios[si].name, b.day, b.spent, b.reserved});
  }

  for (std::uint32_t ti = 0; ti < c.targets.size(); ++ti) {
    const Target& t = c.targets[ti];
    const std::uint32_t n = t.kind == TargetKind::maas ? 1 : static_cast<std::uint32_t>(t.replicas.size());
    for (std::uint32_t r = 0; r < n; ++r) {
      const Placement pl{ti, t.kind == TargetKind::maas ? kNone : r};
      const Breaker& b = state_.breakers[state_.unit(pl.target, pl.replica)];
      out.breakers.push_back({placement_name(pl), b.stored_phase(), b.probe_inflight(), b.opened_at(),
                              b.consecutive_failures(), b.times_opened()});
    }
  }

  const auto target_name = [&](std::uint32_t ti) { return ti == kNone ? std::string() : c.targets[ti].name; };
  for (const auto& [id, p] : state_.pending) {
    const Decision& d = p.decision;
    PendingEntry e{.id = id,
                   .at = d.at,
                   .scenario = c.scenarios[d.scenario].name,
                   .placement = placement_name(d.placement),
                   .reserved_cost = d.reserved_cost,
                   .budget_day = p.budget_day,
                   .lease_open = p.lease_open,
                   .lease_until = p.lease_until,
                   .probe = p.probe,
                   .active_blocks = p.active_blocks,
                   .served_target = target_name(p.served_target),
                   .served_cost = p.served_cost,
                   .verdict_given = p.verdict_given};
    for (const Placement& f : d.fallbacks) e.fallbacks.push_back(placement_name(f));
    for (std::uint32_t ti : p.reported_targets) e.reported_targets.push_back(target_name(ti));
    out.pending.push_back(std::move(e));
  }
  for (const auto& [id, s] : state_.settled) {
    const bool retired = s.scenario == kNone;
    std::string scenario = retired ? state_.retired[s.served_target].scenario : c.scenarios[s.scenario].name;
    std::string served = retired ? state_.retired[s.served_target].target : c.targets[s.served_target].name;
    // The placement says only whether the served target was it (a migration's verdict counts then).
    PlacementName placement{s.placed ? served : std::string(), {}};
    out.pending.push_back({.id = id,
                           .at = s.at,
                           .scenario = std::move(scenario),
                           .placement = std::move(placement),
                           .reported_targets = {served},
                           .served_target = served,
                           .served_cost = s.served_cost,
                           .verdict_given = s.verdict_given});
  }
  std::sort(out.pending.begin(), out.pending.end(),
            [](const PendingEntry& a, const PendingEntry& b) { return a.id < b.id; });
  // Oldest first: the runs kept aside, then this table's (import keeps the latest kMaxOtherRuns).
  out.migrations = state_.other_runs;
  for (std::uint32_t si : state_.migrating) out.migrations.push_back({c.scenarios[si].name, state_.migration_runs[si]});
  return out;
}

ImportReport Router::import_state(const LiveState& state) {
  std::lock_guard lock(mu_);
  const Config& c = *config_;
  state_.ledger.assign(state_.ledger.size(), Counters{});
  state_.listed.assign(state_.listed.size(), 0);
  state_.retired.clear();
  state_.budgets.assign(state_.budgets.size(), BudgetState{});
  state_.breakers.assign(state_.breakers.size(), Breaker{});
  state_.inflight.assign(state_.inflight.size(), 0);
  state_.active_blocks.assign(state_.active_blocks.size(), 0);
  state_.pending.clear();
  state_.pending_order.clear();
  state_.leases.clear();
  state_.settled.clear();
  state_.settled_order.clear();
  ImportReport report;

  for (const LedgerEntry& e : state.ledger) {
    const std::uint32_t si = c.find_scenario(e.scenario);
    const std::uint32_t ti = c.find_target(e.target);
    if (si != kNone && ti != kNone) {
      state_.counters(si, ti) = e.counters;
      state_.listed[static_cast<std::size_t>(si) * state_.target_count + ti] = 1;
    } else {
      state_.retired[retired_row(e.scenario, e.target)].counters = e.counters;
    }
    ++report.rows;
  }

  // Reservations are not taken from the entries: the open leases below re-take them.
  for (const BudgetEntry& e : state.budgets) {
    const std::uint32_t si = c.find_scenario(e.scenario);
    if (si == kNone) {
      ++report.budgets_dropped;
      continue;
    }
    state_.budgets[si] = BudgetState{e.day, e.spent, Money{}};
  }

  // So is the probe: a probe in flight is a lease's.
  for (const BreakerEntry& e : state.breakers) {
    const auto pl = find_placement(e.unit);
    if (!pl) {
      ++report.breakers_dropped;
      continue;
    }
    state_.breakers[state_.unit(pl->target, pl->replica)].restore(e.phase, false, e.opened_at, e.consecutive_failures,
                                                                  e.times_opened);
  }

  std::vector<const PendingEntry*> order;
  for (const PendingEntry& e : state.pending) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const PendingEntry* a, const PendingEntry* b) {
    return a->at != b->at ? a->at < b->at : a->id < b->id;
  });
  for (const PendingEntry* e : order) {
    if (state_.pending.contains(e->id) || state_.settled.contains(e->id)) continue;  // a repeated id: the first wins
    if (!protocol::is_fast_id(e->id)) next_id_ = std::max(next_id_, e->id + 1);
    const std::uint32_t si = c.find_scenario(e->scenario);
    const std::uint32_t served = e->served_target.empty() ? kNone : c.find_target(e->served_target);
    const auto placement = find_placement(e->placement);
    const bool lease = e->lease_open && si != kNone && placement.has_value() && e->served_target.empty();
    if (e->lease_open && !lease) ++report.leases_dropped;
    if (!e->served_target.empty()) {
      // Answered: only its verdict can still count, into its row by names.
      SettledDecision s{.at = e->at,
                        .served_cost = e->served_cost,
                        .scenario = si,
                        .served_target = served,
                        .verdict_given = e->verdict_given,
                        .placed = !e->served_target.empty() && e->placement.target == e->served_target};
      if (si == kNone || served == kNone) {
        s.scenario = kNone;
        s.served_target = retired_row(e->scenario, e->served_target);
      }
      state_.settled.emplace(e->id, s);
      state_.settled_order.push_back(e->id);
      ++report.pending;
      continue;
    }
    if (si == kNone) {
      ++report.pending_dropped;
      continue;
    }
    PendingDecision p;
    Decision& d = p.decision;
    d.id = e->id;
    d.scenario = si;
    d.placement = placement.value_or(Placement{});  // gone: reports to its fallbacks still count
    for (const PlacementName& f : e->fallbacks) {
      if (auto fp = find_placement(f)) d.fallbacks.push_back(*fp);
    }
    d.reserved_cost = e->reserved_cost;
    d.active_blocks = e->active_blocks;
    d.config_version = c.content_hash;
    d.at = e->at;
    p.budget_day = e->budget_day;
    p.lease_open = lease;
    p.lease_until = e->lease_until;
    p.probe = lease && e->probe;
    p.active_blocks = e->active_blocks;
    for (const std::string& name : e->reported_targets) {
      if (const std::uint32_t ti = c.find_target(name); ti != kNone) p.reported_targets.push_back(ti);
    }
    p.verdict_given = e->verdict_given;
    if (lease) {
      const std::size_t unit = state_.unit(placement->target, placement->replica);
      ++state_.inflight[unit];
      state_.active_blocks[unit] += p.active_blocks;
      if (p.probe) {
        Breaker& b = state_.breakers[unit];
        b.restore(b.stored_phase(), true, b.opened_at(), b.consecutive_failures(), b.times_opened());
      }
      BudgetState& budget = state_.budgets[si];
      if (c.scenarios[si].budget_per_day && budget.day == p.budget_day) budget.reserved += d.reserved_cost;
      state_.leases.emplace_back(p.lease_until, d.id);
      std::push_heap(state_.leases.begin(), state_.leases.end(), kLeaseOrder);
    }
    state_.pending.emplace(d.id, std::move(p));
    state_.pending_order.push_back(e->id);
    ++report.pending;
  }

  // A run belongs to its scenario and identity: a carried run of the same continues (an ended one stays
  // ended: a block removed and put back, or a table rolled back to an attempt that aborted, does not
  // send traffic to its candidate again); another identity starts a new run. Runs this table does
  // not use are kept, so a later table that names them again finds them.
  std::vector<bool> taken(state.migrations.size(), false);
  for (std::uint32_t si : state_.migrating) {
    const Scenario& s = c.scenarios[si];
    const auto carried = std::find_if(state.migrations.begin(), state.migrations.end(), [&](const MigrationEntry& e) {
      return e.scenario == s.name && e.run.identity == s.migration->identity;
    });
    if (carried == state.migrations.end()) {
      state_.migration_runs[si] = start_run(*s.migration);
    } else {
      state_.migration_runs[si] = adopt_run(*s.migration, carried->run);
      taken[static_cast<std::size_t>(carried - state.migrations.begin())] = true;
    }
    state_.candidate_percent[si] = candidate_percent(*s.migration, state_.migration_runs[si]);
  }
  state_.other_runs.clear();
  for (std::size_t i = 0; i < state.migrations.size(); ++i) {
    if (!taken[i]) state_.other_runs.push_back(state.migrations[i]);
  }
  if (state_.other_runs.size() > kMaxOtherRuns) {  // the latest ones (a table's history is short)
    state_.other_runs.erase(state_.other_runs.begin(),
                            state_.other_runs.end() - static_cast<std::ptrdiff_t>(kMaxOtherRuns));
  }
  return report;
}

// ---------------------------------------------------------------------------------------- migrations

bool Router::migration_due(TimeMs now) const {
  std::lock_guard lock(mu_);
  return std::any_of(state_.migrating.begin(), state_.migrating.end(), [&](std::uint32_t si) {
    return analysis_due(state_.migration_runs[si], *config_->scenarios[si].migration, now);
  });
}

std::vector<std::pair<std::uint32_t, MigrationTransition>> Router::migration_tick(TimeMs now) {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::uint32_t, MigrationTransition>> moves;
  for (std::uint32_t si : state_.migrating) {
    const Scenario& s = config_->scenarios[si];
    MigrationRun& run = state_.migration_runs[si];
    if (!analysis_due(run, *s.migration, now)) continue;
    if (auto moved = analyze(run, *s.migration, s, now)) moves.emplace_back(si, std::move(*moved));
    state_.candidate_percent[si] = candidate_percent(*s.migration, run);
  }
  return moves;
}

Result<MigrationTransition> Router::migration_command(std::string_view scenario, MigrationCommand cmd, TimeMs now) {
  const std::uint32_t si = config_->find_scenario(scenario);
  if (si == kNone) return unknown_scenario(*config_, scenario);
  const Scenario& s = config_->scenarios[si];
  if (!s.migration) return make_error(ErrorCode::no_migration, "scenario '" + s.name + "' has no migration block");
  std::lock_guard lock(mu_);
  MigrationRun& run = state_.migration_runs[si];
  auto moved = command(run, *s.migration, cmd, now);
  state_.candidate_percent[si] = candidate_percent(*s.migration, run);
  if (!moved) return make_error(moved.error().code, "scenario '" + s.name + "': " + moved.error().message);
  return moved;
}

std::vector<MigrationStatus> Router::migrations() const {
  std::lock_guard lock(mu_);
  std::vector<MigrationStatus> out;
  out.reserve(state_.migrating.size());
  for (std::uint32_t si : state_.migrating) {
    const Scenario& s = config_->scenarios[si];
    const MigrationRun& run = state_.migration_runs[si];
    out.push_back({.scenario = si,
                   .run = run,
                   .candidate_percent = state_.candidate_percent[si],
                   .deadline_at = migration_deadline(*s.migration, run),
                   .criteria = criteria(run, *s.migration, s)});
  }
  return out;
}

}  // namespace turnout
