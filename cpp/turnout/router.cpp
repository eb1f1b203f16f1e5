#include "turnout/router.hpp"

#include <algorithm>

#include "turnout/detail/fast_path_access.hpp"
#include "turnout/prefix.hpp"
#include "turnout/pricing.hpp"

namespace turnout {
namespace {

void roll_budget(BudgetState& b, TimeMs now) {
  const std::int64_t day = budget_day(now);
  if (b.day != day) b = BudgetState{day, Money{}, Money{}};
}

}  // namespace

Router::Router(ConfigPtr config, RouterOptions options)
    : config_(std::move(config)), options_(options), state_(*config_), next_id_(options.first_decision_id) {}

Result<Request> Router::resolve(const RouteRequest& r) const {
  Request req;
  req.scenario = config_->find_scenario(r.scenario);
  if (req.scenario == kNone) {
    std::string known;
    for (const auto& s : config_->scenarios) known += (known.empty() ? "" : ", ") + s.name;
    return make_error(ErrorCode::unknown_scenario,
                      "unknown scenario '" + std::string(r.scenario) + "'; known scenarios: " + known);
  }
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
    } else {
      state_.maas->store(state_.maas_holder[d.placement.target], d.prefix, now);
    }
  }
  std::vector<std::uint64_t> learned = std::move(d.prefix);  // the pending entry does not keep it
  PendingDecision p;
  p.decision = d;
  d.prefix = std::move(learned);
  ++state_.inflight[unit];
  p.active_blocks = d.active_blocks;
  state_.active_blocks[unit] += d.active_blocks;
  p.probe = state_.breakers[unit].on_dispatch(t.breaker, now);
  BudgetState& budget = state_.budgets[d.scenario];
  roll_budget(budget, now);
  const bool budgeted = config_->scenarios[d.scenario].budget_per_day.has_value();
  if (budgeted) budget.reserved += d.reserved_cost;  // only a budget needs the reservation
  p.budget_day = budget.day;

  Counters& c = state_.counters(d.scenario, d.placement.target);
  ++c.requests;
  if (d.spilled) ++c.spillovers;
  state_.pending.emplace(d.id, std::move(p));
  state_.pending_order.push_back(d.id);
}

void Router::release(PendingDecision& p) {
  if (!p.reservation_open) return;
  p.reservation_open = false;
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

void Router::expire(TimeMs now, std::size_t room) {
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
}

Result<ReportReceipt> Router::report(const OutcomeReport& r) {
  if (r.ttft_ms < -1 || r.latency_ms < -1) {
    return make_error(ErrorCode::invalid_argument, "ttft_ms and latency_ms must be non-negative");
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
  if (r.ttft_ms >= 0) c.ttft.observe(r.ttft_ms);
  if (r.latency_ms >= 0) c.latency.observe(r.latency_ms);

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
  return Ok{};
}

Result<Ok> Router::verdict(std::uint64_t decision_id, bool accepted, TimeMs now) {
  std::lock_guard lock(mu_);
  expire(now);
  auto it = state_.pending.find(decision_id);
  if (it == state_.pending.end()) {
    return make_error(ErrorCode::unknown_decision,
                      "unknown decision id " + std::to_string(decision_id) + " (never issued, or expired)");
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
  for (std::uint32_t si = 0; si < config_->scenarios.size(); ++si) {
    const Scenario& s = config_->scenarios[si];
    std::vector<std::uint32_t> targets;
    for (const auto& r : s.routes) targets.push_back(r.target);
    if (s.spillover) targets.push_back(s.spillover->target);
    targets.insert(targets.end(), s.fallback.begin(), s.fallback.end());
    std::vector<std::uint8_t> seen(config_->targets.size(), 0);
    for (std::uint32_t ti : targets) {
      if (seen[ti] != 0) continue;
      seen[ti] = 1;
      rows.push_back({si, ti, state_.ledger[static_cast<std::size_t>(si) * state_.target_count + ti]});
    }
  }
  return rows;
}

Result<Ok> Router::restore_counters(const std::vector<CounterRow>& rows) {
  for (const auto& row : rows) {
    if (row.scenario >= config_->scenarios.size() || row.target >= config_->targets.size()) {
      return make_error(ErrorCode::invalid_argument, "counter row outside this routing table");
    }
  }
  std::lock_guard lock(mu_);
  for (const auto& row : rows) state_.counters(row.scenario, row.target) = row.counters;
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
  return delta;
}

Result<Ok> Router::reset_kv(std::uint32_t target, std::uint32_t replica) {
  if (target >= config_->targets.size() || !state_.pools[target] ||
      replica >= config_->targets[target].replicas.size()) {
    return make_error(ErrorCode::invalid_argument, "reset_kv needs a self-hosted target and one of its replicas");
  }
  std::lock_guard lock(mu_);
  state_.pools[target]->clear(replica);
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
  return state_.pending.size();
}

void Router::live_state(std::vector<detail::LiveUnit>& units, std::vector<detail::LiveBudget>& budgets) const {
  std::lock_guard lock(mu_);
  units.resize(state_.breakers.size());
  for (std::size_t u = 0; u < units.size(); ++u) {
    const Breaker& b = state_.breakers[u];
    units[u] = {b.stored_phase(), b.probe_inflight(), b.opened_at(), state_.inflight[u], state_.active_blocks[u]};
  }
  budgets.resize(state_.budgets.size());
  for (std::size_t s = 0; s < budgets.size(); ++s) {
    const BudgetState& b = state_.budgets[s];
    budgets[s] = {b.day, b.spent, b.reserved};
  }
}

void Router::set_live_state(std::span<const detail::LiveUnit> units, std::span<const detail::LiveBudget> budgets) {
  std::lock_guard lock(mu_);
  for (std::size_t u = 0; u < units.size() && u < state_.breakers.size(); ++u) {
    state_.breakers[u].mirror(units[u].phase, units[u].probe_inflight, units[u].opened_at);
    state_.inflight[u] = units[u].inflight;
    state_.active_blocks[u] = units[u].active_blocks;
  }
  for (std::size_t s = 0; s < budgets.size() && s < state_.budgets.size(); ++s) {
    state_.budgets[s].day = budgets[s].day;
    state_.budgets[s].spent = budgets[s].spent;
    state_.budgets[s].reserved = budgets[s].reserved;
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
  for (auto& pool : state_.pools) {
    if (pool) pool->expire(now);
  }
  if (state_.maas) state_.maas->expire(now);
}

bool Router::has_pending(std::uint64_t decision_id) const {
  std::lock_guard lock(mu_);
  return state_.pending.contains(decision_id);
}

std::uint64_t Router::next_decision_id() const {
  std::lock_guard lock(mu_);
  return next_id_;
}

}  // namespace turnout
