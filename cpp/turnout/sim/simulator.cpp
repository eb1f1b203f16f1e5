#include "turnout/sim/simulator.hpp"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <numeric>
#include <utility>

#include "turnout/router.hpp"
#include "turnout/state.hpp"

namespace turnout::sim {

const char* to_string(RequestOutcome o) noexcept {
  switch (o) {
    case RequestOutcome::served: return "served";
    case RequestOutcome::fallback: return "fallback";
    case RequestOutcome::failed: return "failed";
  }
  return "?";
}

namespace {

constexpr std::uint32_t kNoTokens = 0xFFFFFFFFu;

/// A request as stored: names resolved, its prompt as a span of the simulator's token or block store.
struct Stored {
  SimTime arrival = 0;
  std::uint32_t scenario = kNone;
  std::uint32_t data_class = kNone;  // kNone: the scenario's
  std::uint64_t key_begin = 0;
  std::uint32_t key_size = 0;
  std::int8_t accepted = -1;
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  std::uint64_t prompt_begin = 0;  // into tokens_ or blocks_
  std::uint64_t prompt_size = 0;
  std::uint32_t block_tokens = kNoTokens;  // kNoTokens: the prompt is token ids
};

enum class EventKind : std::uint8_t { maas_done, replica_wake, retry, sample, context_overflow, migration };

struct Event {
  SimTime at;
  std::uint64_t seq;  // ties in time go in the order events were made: deterministic
  EventKind kind;
  std::uint32_t index;  // flight slot, replica or series row
};

struct Later {
  bool operator()(const Event& a, const Event& b) const noexcept { return a.at != b.at ? a.at > b.at : a.seq > b.seq; }
};

/// A request between its arrival and its end.
struct Flight {
  std::uint32_t request = 0;
  bool routed = false;
  Decision decision;
  AttemptPolicy policy;
  SimTime attempt_start = 0;
  SimTime first_token = -1;
  Attempt maas;  // the MaaS attempt under way
  std::int64_t cost = 0;
  SimTime in_calls = 0;  // time spent in calls to targets
};

std::uint64_t splitmix(std::uint64_t& s) noexcept {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31U);
}

TimeMs to_ms(SimTime t) noexcept { return t / kMicrosPerMs; }

constexpr double kMaxOutputScale = 100.0;

/// `x * scale` tokens, rounded, at least 1 (a model's answer to a request whose trace answer had x).
std::int64_t scaled_tokens(std::int64_t x, double scale) noexcept {
  if (scale == 1.0) return x;
  return std::max<std::int64_t>(1, std::llround(static_cast<double>(x) * scale));
}

/// The candidate's answers priced at the baseline's mean cost per answer, to the nearest picodollar.
std::int64_t baseline_equivalent(const ArmTally& baseline, const ArmTally& candidate) noexcept {
  if (baseline.answered == 0) return 0;
  const auto n = static_cast<Int128>(baseline.answered);
  const Int128 total = static_cast<Int128>(candidate.answered) * baseline.cost_picos;
  return static_cast<std::int64_t>((2 * total + n) / (2 * n));
}

Result<Ok> check_model(const Target& t, const TargetModel& m) {
  auto bad = [&](const std::string& what) {
    return make_error(ErrorCode::invalid_argument, "model of target '" + t.name + "': " + what);
  };
  if (!(m.accept_rate >= 0.0 && m.accept_rate <= 1.0)) return bad("accept_rate must be within 0..1");
  if (!(m.output_scale > 0.0 && m.output_scale <= kMaxOutputScale)) {
    return bad("output_scale must be > 0 and <= 100");
  }
  if (t.kind == TargetKind::maas) return check_provider(t, m.provider);  // the provider's own rules
  if (auto v = check_spec(m.engine); !v) return bad(v.error().message);  // the replica's own rules
  return Ok{};
}

}  // namespace

struct Simulator::Impl {
  Impl(ConfigPtr c, SimOptions o) : config(std::move(c)), options(o), router(config, RouterOptions{.seed = o.seed}) {}

  // Set-up
  ConfigPtr config;
  SimOptions options;
  Router router;
  std::vector<TargetModel> models;                   // by target
  std::vector<std::unique_ptr<Provider>> providers;  // by target (MaaS), null for pools
  std::vector<Replica> replicas;                     // every pool's replicas, flat
  std::vector<std::uint32_t> replica_base;           // by target: its first replica in `replicas`
  std::vector<std::uint32_t> replica_target;         // flat replica -> target
  std::vector<bool> feed_kv;                         // by target: its KV events reach the router
  std::vector<std::uint64_t> scenario_mask;          // data classes some candidate of the scenario takes
  bool has_migrations = false;                       // some scenario has a migration block

  // The trace
  std::vector<Stored> requests;
  std::string keys;
  std::vector<std::uint32_t> tokens;
  std::vector<std::uint64_t> blocks;
  bool ran = false;

  // The run
  std::vector<Event> heap;
  std::uint64_t seq = 0;
  std::vector<Flight> flights;
  std::vector<std::uint32_t> free_flights;
  std::deque<std::uint32_t> admission;  // flights waiting for capacity (options.admission_queue)
  std::vector<SimTime> wake_at;         // by flat replica: its pending wake (kNever: none)
  std::vector<SimTime> busy_before;     // by flat replica: busy time at the last sample
  std::vector<std::uint32_t> scratch_tokens;
  std::vector<std::uint64_t> scratch_chain;
  std::deque<std::vector<ReplicaEvent>> event_buffers;  // by nesting depth of advance_replica (stable)
  std::size_t depth = 0;
  KvEventBatch kv;
  msgpack::zone zone;
  std::uint64_t rng = 0;
  std::size_t in_flight = 0;
  std::size_t attempts_running = 0;
  SimTime clock = 0;       // time of the last in-flight change
  double area = 0;         // integral of in_flight over time (request-microseconds)
  double bucket_area = 0;  // the same within the current series row
  SimResult result;
  // Migrations, by scenario (empty tallies for the others)
  std::vector<std::uint64_t> scenario_arrivals;
  std::vector<ArmTally> baseline_tally, candidate_tally;
  SimTime migration_at = kNever;  // the pending migration event (kNever: none)

  // -- set-up -------------------------------------------------------------------------------------
  Result<Ok> build(const std::unordered_map<std::string, TargetModel>& by_name) {
    for (const auto& [name, model] : by_name) {
      if (config->find_target(name) == kNone) {
        return make_error(ErrorCode::unknown_target, "models: the table has no target '" + name + "'");
      }
    }
    if (auto v = options.retry.validate(); !v) return std::move(v).error();
    if (options.series_interval <= 0) return make_error(ErrorCode::invalid_argument, "series_interval must be > 0");
    const auto n = config->targets.size();
    models.resize(n);
    providers.resize(n);
    replica_base.assign(n, 0);
    feed_kv.assign(n, false);
    for (std::uint32_t i = 0; i < n; ++i) {
      const Target& t = config->targets[i];
      if (auto it = by_name.find(t.name); it != by_name.end()) models[i] = it->second;
      TargetModel& m = models[i];
      replica_base[i] = static_cast<std::uint32_t>(replicas.size());
      if (t.kind == TargetKind::maas) {
        if (auto v = check_model(t, m); !v) return std::move(v).error();
        providers[i] = std::make_unique<Provider>(t, m.provider, options.seed ^ t.name_hash);
        continue;
      }
      m.engine.block_size = t.kv.block_size;  // the router's directory only takes blocks of its own size
      // Unset everywhere: the capacity the router's directory assumes, so memory stays bounded.
      if (m.engine.capacity_blocks == 0) {
        m.engine.capacity_blocks = t.kv.capacity_blocks > 0 ? t.kv.capacity_blocks : kDefaultReplicaBlocks;
      }
      m.engine.gpus = t.cost.gpus_per_replica;
      if (auto v = check_model(t, m); !v) return std::move(v).error();
      feed_kv[i] = options.precise_kv && t.kv.precise;
      for (std::size_t r = 0; r < t.replicas.size(); ++r) {
        replicas.emplace_back(m.engine, feed_kv[i]);
        replica_target.push_back(i);
      }
    }
    scenario_mask.resize(config->scenarios.size());
    for (std::size_t s = 0; s < config->scenarios.size(); ++s) {
      const Scenario& sc = config->scenarios[s];
      std::uint64_t mask = 0;
      for (const Route& r : sc.routes) mask |= config->targets[r.target].data_class_mask;
      for (std::uint32_t f : sc.fallback) mask |= config->targets[f].data_class_mask;
      if (sc.spillover) mask |= config->targets[sc.spillover->target].data_class_mask;
      scenario_mask[s] = mask;
      has_migrations = has_migrations || sc.migration.has_value();
    }
    rng = options.seed ^ 0x5EED5EED5EED5EEDULL;
    return Ok{};
  }

  /// The candidates of a scenario, in its own order (routes, spillover, fallbacks).
  template <class F>
  void for_each_candidate(const Scenario& sc, F&& f) const {
    for (const Route& r : sc.routes) f(config->targets[r.target]);
    if (sc.spillover) f(config->targets[sc.spillover->target]);
    for (std::uint32_t t : sc.fallback) f(config->targets[t]);
  }

  /// Whether a request fits a target's replicas' KV cache (MaaS targets: always).
  [[nodiscard]] bool fits_replicas(const Target& t, std::int64_t input, std::int64_t output) const {
    if (t.kind == TargetKind::maas || t.replicas.empty()) return t.kind == TargetKind::maas;
    return replicas[replica_base[config->find_target(t.name)]].fits(input, output);
  }

  Result<Stored> resolve(const TraceRequest& r, std::size_t prompt_tokens) const {
    const auto row = "request " + std::to_string(requests.size()) + ": ";
    Stored s;
    s.scenario = config->find_scenario(r.scenario);
    if (s.scenario == kNone) {
      return make_error(ErrorCode::unknown_scenario,
                        row + "the table has no scenario '" + std::string(r.scenario) + "'");
    }
    const Scenario& sc = config->scenarios[s.scenario];
    std::uint32_t cls = sc.data_class;
    if (!r.data_class.empty()) {
      cls = config->find_data_class(r.data_class);
      if (cls == kNone) {
        return make_error(ErrorCode::invalid_argument,
                          row + "the table has no data class '" + std::string(r.data_class) + "'");
      }
      s.data_class = cls;
    }
    if (cls != kNone && (scenario_mask[s.scenario] >> cls & 1U) == 0) {
      return make_error(
          ErrorCode::no_eligible_target,
          row + "no target of scenario '" + sc.name + "' may serve data class '" + config->data_classes[cls] + "'");
    }
    if (!(r.arrival >= 0 && r.arrival <= kMaxTimeMs * kMicrosPerMs)) {
      return make_error(ErrorCode::invalid_argument, row + "arrival must be within 0..year 10000");
    }
    if (r.input_tokens < 1 || r.output_tokens < 1) {
      return make_error(ErrorCode::invalid_argument, row + "input_tokens and output_tokens must be >= 1");
    }
    if (static_cast<std::int64_t>(prompt_tokens) > r.input_tokens) {
      return make_error(ErrorCode::invalid_argument, row + "the prompt has more tokens than input_tokens");
    }
    // An impossible demand: a request that fits no candidate (its window, or a replica's whole KV cache).
    const std::int64_t need = r.input_tokens + r.output_tokens;
    bool fits = false;
    std::int64_t widest = 0;
    for_each_candidate(sc, [&](const Target& t) {
      if (cls != kNone && (t.data_class_mask >> cls & 1U) == 0) return;
      const std::int64_t window = t.context_window > 0 ? t.context_window : need;
      widest = std::max(widest, window);
      fits = fits || (need <= window && fits_replicas(t, r.input_tokens, r.output_tokens));
    });
    if (!fits) {
      return make_error(ErrorCode::no_eligible_target,
                        row + "needs " + std::to_string(need) + " tokens (input + output); no target of scenario '" +
                            sc.name + "' can hold it (the widest context window is " + std::to_string(widest) +
                            "; a pool's replicas must also fit it in their KV cache): an impossible demand");
    }
    s.arrival = r.arrival;
    s.key_begin = keys.size();
    s.key_size = static_cast<std::uint32_t>(r.key.size());
    s.accepted = r.accepted < 0 ? std::int8_t{-1} : static_cast<std::int8_t>(r.accepted > 0);
    s.input_tokens = r.input_tokens;
    s.output_tokens = r.output_tokens;
    return s;
  }

  // -- the prompt ------------------------------------------------------------------------------------
  /// The true prompt of request `i` (in scratch buffers, valid until the next call).
  Prompt prompt_of(std::uint32_t i) {
    const Stored& s = requests[i];
    scratch_chain.clear();
    std::span<const std::uint32_t> ids;
    if (s.block_tokens == kNoTokens) {
      ids = std::span<const std::uint32_t>(tokens).subspan(s.prompt_begin, s.prompt_size);
    } else {
      scratch_tokens.clear();
      synthesize_tokens(std::span<const std::uint64_t>(blocks).subspan(s.prompt_begin, s.prompt_size), s.block_tokens,
                        s.input_tokens, i, scratch_tokens);
      ids = scratch_tokens;
    }
    chain_of(ids, scratch_chain);
    return Prompt{ids, scratch_chain};
  }

  // -- events ----------------------------------------------------------------------------------------
  void push(SimTime at, EventKind kind, std::uint32_t index) {
    heap.push_back(Event{at, seq++, kind, index});
    std::push_heap(heap.begin(), heap.end(), Later{});
  }

  void schedule_wake(std::uint32_t r) {
    const SimTime t = replicas[r].next_event();
    if (t == wake_at[r]) return;
    wake_at[r] = t;
    if (t != kNever) push(t, EventKind::replica_wake, r);
  }

  /// Moves the in-flight integral to `t`.
  void tick(SimTime t) {
    const auto dt = static_cast<double>(t - clock);
    area += dt * static_cast<double>(in_flight);
    bucket_area += dt * static_cast<double>(in_flight);
    clock = t;
  }

  SeriesRow& series_at(SimTime t) {
    const auto i = static_cast<std::size_t>((t - result.summary.start) / options.series_interval);
    while (result.series.size() <= i) {
      result.series.push_back(SeriesRow{.start = static_cast<SimTime>(result.series.size()) * options.series_interval});
    }
    return result.series[i];
  }

  // -- a request's life ------------------------------------------------------------------------------
  std::uint32_t take_flight(std::uint32_t request) {
    std::uint32_t slot = 0;
    if (free_flights.empty()) {
      slot = static_cast<std::uint32_t>(flights.size());
      flights.emplace_back();
      flights.back().policy = AttemptPolicy(options.retry, options.seed ^ (0xA77E3B7ULL + slot));
    } else {
      slot = free_flights.back();
      free_flights.pop_back();
    }
    Flight& f = flights[slot];
    f.request = request;
    f.routed = false;
    f.first_token = -1;
    f.cost = 0;
    f.in_calls = 0;
    f.policy.start(0);
    return slot;
  }

  void arrive(std::uint32_t request) {
    const SimTime now = requests[request].arrival;
    tick(now);
    ++in_flight;
    ++series_at(now).arrivals;
    ++scenario_arrivals[requests[request].scenario];
    RequestRow& row = result.requests[request];
    row.arrival = now;
    row.scenario = requests[request].scenario;
    row.input_tokens = requests[request].input_tokens;
    row.output_tokens = requests[request].output_tokens;
    route(take_flight(request), now);
  }

  void route(std::uint32_t slot, SimTime now) {
    Flight& f = flights[slot];
    const Stored& s = requests[f.request];
    const Prompt prompt = prompt_of(f.request);
    RouteRequest rr;
    rr.scenario = config->scenarios[s.scenario].name;
    rr.key = std::string_view(keys).substr(s.key_begin, s.key_size);
    if (s.data_class != kNone) rr.data_class = config->data_classes[s.data_class];
    rr.input_tokens = s.input_tokens;
    rr.max_output_tokens = s.output_tokens;
    rr.token_ids = prompt.token_ids;
    rr.now = to_ms(now);
    auto d = router.route(rr);
    if (!d) {
      refused(slot, d.error().code, now);
      return;
    }
    f.decision = std::move(d).value();
    f.routed = true;
    if (ArmTally* arm = arm_of(s.scenario, f.decision.placement.target)) ++arm->requests;
    f.policy.start(1 + f.decision.fallbacks.size());
    result.requests[f.request].cached_predicted = f.decision.expected_cached_tokens;
    start_attempt(slot, now, prompt);
  }

  void refused(std::uint32_t slot, ErrorCode code, SimTime now) {
    Flight& f = flights[slot];
    if (options.admission_queue && code == ErrorCode::no_eligible_target && attempts_running > 0) {
      admission.push_back(slot);  // routes again when an attempt ends and frees capacity
      return;
    }
    const Step step = f.policy.after_refusal(code, to_ms(now));
    if (step.next == NextStep::retry) {
      push(now + (step.at - to_ms(now)) * kMicrosPerMs, EventKind::retry, slot);
      return;
    }
    finish(slot, RequestOutcome::failed, now, to_string(code));
  }

  void start_attempt(std::uint32_t slot, SimTime now, const Prompt& prompt) {
    Flight& f = flights[slot];
    const Placement& p = candidate_placement(f.decision, f.policy.candidate());
    const Stored& s = requests[f.request];
    const std::int64_t output = scaled_tokens(s.output_tokens, models[p.target].output_scale);
    RequestRow& row = result.requests[f.request];
    row.target = p.target;
    row.replica = p.replica;
    row.attempts = static_cast<std::uint16_t>(std::min<std::uint32_t>(f.policy.attempts() + 1, 0xFFFF));
    ++result.summary.targets[p.target].attempts;
    ++attempts_running;
    f.attempt_start = now;
    f.first_token = -1;
    if (providers[p.target]) {
      f.maas = providers[p.target]->call(prompt, s.input_tokens, output, now, config->scenarios[s.scenario].mode);
      push(std::max(f.maas.done_at, now), EventKind::maas_done, slot);
      return;
    }
    const std::uint32_t r = replica_base[p.target] + p.replica;
    advance_replica(r, now);
    if (!replicas[r].fits(s.input_tokens, output)) {
      // More KV blocks than the replica holds: the engine refuses it at once, as vLLM does (HTTP 400).
      push(now, EventKind::context_overflow, slot);
      return;
    }
    replicas[r].submit(SeqSpec{slot, prompt, s.input_tokens, output}, now);
    schedule_wake(r);
  }

  void retry(std::uint32_t slot, SimTime now) {
    if (!flights[slot].routed) {
      route(slot, now);
      return;
    }
    start_attempt(slot, now, prompt_of(flights[slot].request));
  }

  /// Reports an attempt that the policy leaves (its target's last), with the verdict when it answered.
  void report(Flight& f, Status status, const msgpack::object* usage, SimTime now) {
    const Placement& p = candidate_placement(f.decision, f.policy.candidate());
    const Stored& s = requests[f.request];
    OutcomeReport r;
    r.decision_id = f.decision.id;
    r.target = config->targets[p.target].name;
    r.status = status;
    r.usage = usage;
    r.ttft_ms = f.first_token >= 0 ? to_ms(f.first_token - f.attempt_start) : -1;
    r.latency_ms = to_ms(now - f.attempt_start);
    if (status == Status::ok) {
      const double u = static_cast<double>(splitmix(rng) >> 11U) * 0x1.0p-53;
      r.accepted = s.accepted >= 0 ? s.accepted == 1 : u < models[p.target].accept_rate;
      result.requests[f.request].accepted = static_cast<std::int8_t>(*r.accepted);
    }
    r.now = to_ms(now);
    auto receipt = router.report(r);
    if (receipt) {
      f.cost += receipt->cost.picos();
      result.summary.targets[p.target].cost_picos += receipt->cost.picos();
      series_at(now).cost_picos += receipt->cost.picos();
    }
    // As the Router's analysis counts: the outcomes on the decision's own placement, not a fallback's.
    ArmTally* arm = p.target == f.decision.placement.target ? arm_of(s.scenario, p.target) : nullptr;
    if (arm != nullptr && receipt && !receipt->duplicate) {
      ++arm->outcomes;
      arm->errors += status != Status::ok ? 1U : 0U;
      arm->answered += status == Status::ok ? 1U : 0U;
      arm->rejected += r.accepted.has_value() && !*r.accepted ? 1U : 0U;
      arm->cost_picos += receipt->cost.picos();
    }
  }

  // -- migrations ------------------------------------------------------------------------------------
  /// The tally of the migration arm `target` is in scenario `scenario`'s migration, if it is one.
  ArmTally* arm_of(std::uint32_t scenario, std::uint32_t target) {
    const auto& m = config->scenarios[scenario].migration;
    if (!m) return nullptr;
    if (target == m->baseline) return &baseline_tally[scenario];
    if (target == m->candidate) return &candidate_tally[scenario];
    return nullptr;
  }

  /// The migration event: every analysis due now, each move recorded; then the next event.
  void migration_event(SimTime now) {
    migration_at = kNever;
    if (next_arrival >= order.size() && in_flight == 0) return;  // the trace is over: no analysis past it
    const TimeMs ms = to_ms(now);
    if (router.migration_due(ms)) {
      for (auto& [scenario, transition] : router.migration_tick(ms)) record(scenario, std::move(transition));
    }
    schedule_migration(now);
  }

  /// A move, with the scenario's traffic and the canary's cost by now.
  void record(std::uint32_t scenario, MigrationTransition transition) {
    const MigrationSpec& spec = *config->scenarios[scenario].migration;
    MigrationRun after;
    after.phase = transition.to;
    after.step = transition.step;
    MigrationEvent& e = result.migrations.emplace_back();
    e.scenario = scenario;
    e.candidate_percent = candidate_percent(spec, after);
    e.requests = scenario_arrivals[scenario];
    e.baseline = baseline_tally[scenario];
    e.candidate = candidate_tally[scenario];
    e.baseline_equivalent_picos = baseline_equivalent(e.baseline, e.candidate);
    e.transition = std::move(transition);
  }

  /// Schedules the next migration event at the earliest analysis of a ramping or paused run, while the
  /// trace still has traffic (a run still ramping when the trace ends stays so).
  void schedule_migration(SimTime now) {
    if (next_arrival >= order.size() && in_flight == 0) return;
    TimeMs next = kMaxTimeMs;
    bool any = false;
    for (const MigrationStatus& m : router.migrations()) {
      if (m.run.phase != MigrationPhase::ramp && m.run.phase != MigrationPhase::paused) continue;
      next = std::min(next, m.run.next_analysis_at);
      any = true;
    }
    if (!any) return;
    // Never at or before now again: an analysis that moved nothing must not spin the clock in place.
    const SimTime at = std::max(next * kMicrosPerMs, (to_ms(now) + 1) * kMicrosPerMs);
    if (at >= migration_at) return;
    migration_at = at;
    push(at, EventKind::migration, 0);
  }

  /// An attempt ended at `now`: report it if the policy leaves its target, then act on the policy's step.
  void attempt_ended(std::uint32_t slot, Status status, std::int64_t retry_after_ms, std::int64_t cached,
                     const msgpack::object* usage, SimTime now) {
    --attempts_running;
    Flight& f = flights[slot];
    f.in_calls += now - f.attempt_start;
    const std::uint32_t target = candidate_placement(f.decision, f.policy.candidate()).target;
    TargetStats& ts = result.summary.targets[target];
    if (status != Status::ok) ++ts.failed_attempts;
    const Step step = f.policy.after_attempt(status, retry_after_ms, to_ms(now));
    if (step.next != NextStep::retry) report(f, status, usage, now);
    switch (step.next) {
      case NextStep::served: {
        RequestRow& row = result.requests[f.request];
        row.cached_realized = cached;
        row.ttft = f.first_token >= 0 ? f.first_token - row.arrival : now - row.arrival;
        ++ts.served;
        ts.input_tokens += requests[f.request].input_tokens;
        ts.cached_predicted += f.decision.expected_cached_tokens;
        ts.cached_realized += cached;
        finish(slot, f.policy.on_fallback() ? RequestOutcome::fallback : RequestOutcome::served, now, nullptr);
        break;
      }
      case NextStep::retry: push(now + (step.at - to_ms(now)) * kMicrosPerMs, EventKind::retry, slot); break;
      case NextStep::fail_over: start_attempt(slot, now, prompt_of(f.request)); break;
      case NextStep::give_up: finish(slot, RequestOutcome::failed, now, to_string(status)); break;
    }
    admit_waiting(now);
  }

  /// Routes the requests waiting for capacity, oldest first, until one is refused again.
  void admit_waiting(SimTime now) {
    while (!admission.empty()) {
      const std::uint32_t slot = admission.front();
      admission.pop_front();
      const std::size_t before = admission.size();
      route(slot, now);
      if (admission.size() > before) {  // refused again: it went to the back; put it first again
        admission.pop_back();
        admission.push_front(slot);
        return;
      }
    }
  }

  void finish(std::uint32_t slot, RequestOutcome outcome, SimTime now, const char* error) {
    Flight& f = flights[slot];
    RequestRow& row = result.requests[f.request];
    row.outcome = outcome;
    row.latency = now - row.arrival;
    row.queue = row.latency - f.in_calls;
    row.cost_picos = f.cost;
    row.error = error;
    tick(now);
    --in_flight;
    result.summary.end = std::max(result.summary.end, now);
    switch (outcome) {
      case RequestOutcome::served: ++result.summary.served; break;
      case RequestOutcome::fallback: ++result.summary.fallback; break;
      case RequestOutcome::failed: ++result.summary.failed; break;
    }
    free_flights.push_back(slot);
    ++finished;
  }

  // -- providers and replicas --------------------------------------------------------------------------
  void maas_done(std::uint32_t slot, SimTime now) {
    Flight& f = flights[slot];
    f.first_token = f.maas.status == Status::ok ? f.maas.first_token_at : -1;
    const msgpack::object* usage = nullptr;
    msgpack::object native;
    if (!f.maas.usage.empty()) {
      zone.clear();
      native = msgpack::unpack(zone, f.maas.usage.data(), f.maas.usage.size());
      usage = &native;
    }
    // A 429 without a Retry-After from the simulated provider means "never" (a request larger than the
    // TPM bucket): longer than any wait, so the policy fails over.
    const std::int64_t retry_after = f.maas.status == Status::rate_limited && f.maas.retry_after_ms < 0
                                         ? std::numeric_limits<std::int64_t>::max()
                                         : f.maas.retry_after_ms;
    attempt_ended(slot, f.maas.status, retry_after, f.maas.cached_tokens, usage, now);
  }

  void advance_replica(std::uint32_t r, SimTime until) {
    // Handling an event can advance a replica again (a fail-over submits): each depth has its buffer.
    if (event_buffers.size() <= depth) event_buffers.emplace_back();
    std::vector<ReplicaEvent>& events = event_buffers[depth];
    events.clear();
    kv.events.clear();
    replicas[r].advance(until, events, kv);
    const std::uint32_t target = replica_target[r];
    if (feed_kv[target] && !kv.events.empty()) {
      (void)router.apply_kv_events(target, r - replica_base[target], kv, to_ms(until));
    }
    ++depth;
    for (const ReplicaEvent& e : events) {
      Flight& f = flights[static_cast<std::uint32_t>(e.id)];
      if (e.kind == ReplicaEvent::Kind::first_token) {
        f.first_token = e.at;
        continue;
      }
      const Stored& s = requests[f.request];
      // vLLM's OpenAI-compatible usage, with the replica's true prefix-cache hits.
      msgpack::object_kv details[1];
      details[0].key = msgpack::object(std::string_view("cached_tokens"));
      details[0].val = msgpack::object(e.cached_tokens);
      msgpack::object_kv fields[3];
      fields[0].key = msgpack::object(std::string_view("prompt_tokens"));
      fields[0].val = msgpack::object(s.input_tokens);
      fields[1].key = msgpack::object(std::string_view("completion_tokens"));
      fields[1].val = msgpack::object(scaled_tokens(s.output_tokens, models[replica_target[r]].output_scale));
      fields[2].key = msgpack::object(std::string_view("prompt_tokens_details"));
      fields[2].val.type = msgpack::type::MAP;
      fields[2].val.via.map = msgpack::object_map{1, details};
      msgpack::object usage;
      usage.type = msgpack::type::MAP;
      usage.via.map = msgpack::object_map{3, fields};
      attempt_ended(static_cast<std::uint32_t>(e.id), Status::ok, -1, e.cached_tokens, &usage, e.at);
    }
    --depth;
  }

  void wake(std::uint32_t r, SimTime at) {
    if (wake_at[r] != at) return;  // superseded
    wake_at[r] = kNever;
    advance_replica(r, at);
    schedule_wake(r);
  }

  /// Closes the series row that ends at `at`: in-flight average, queue depth, utilization.
  void sample(std::uint32_t row, SimTime at) {
    tick(at);
    SeriesRow& s = series_at(at - 1);
    s.in_flight = bucket_area / static_cast<double>(options.series_interval);
    bucket_area = 0;
    double busy = 0;
    std::int64_t waiting = 0;
    for (std::uint32_t r = 0; r < replicas.size(); ++r) {
      advance_replica(r, at);
      schedule_wake(r);
      const SimTime b = replicas[r].stats().busy_us;
      busy += static_cast<double>(b - busy_before[r]);
      busy_before[r] = b;
      waiting += replicas[r].waiting();
    }
    s.queue_depth = static_cast<double>(waiting) + static_cast<double>(admission.size());
    if (!replicas.empty()) {
      s.utilization = busy / (static_cast<double>(options.series_interval) * static_cast<double>(replicas.size()));
    }
    if (next_arrival < order.size() || in_flight > 0) push(at + options.series_interval, EventKind::sample, row + 1);
  }

  Result<SimResult> run(const Progress& progress);

  std::vector<std::uint32_t> order;  // requests by arrival
  std::size_t next_arrival = 0;
  std::size_t finished = 0;
};

Result<SimResult> Simulator::Impl::run(const Progress& progress) {
  if (ran) return make_error(ErrorCode::invalid_argument, "a Simulator runs once: make a new one");
  ran = true;
  const std::size_t total = requests.size();
  result.requests.resize(total);
  result.summary.requests = total;
  result.summary.targets.resize(config->targets.size());
  scenario_arrivals.assign(config->scenarios.size(), 0);
  baseline_tally.assign(config->scenarios.size(), ArmTally{});
  candidate_tally.assign(config->scenarios.size(), ArmTally{});
  wake_at.assign(replicas.size(), kNever);
  busy_before.assign(replicas.size(), 0);
  order.resize(total);
  std::iota(order.begin(), order.end(), 0U);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::uint32_t a, std::uint32_t b) { return requests[a].arrival < requests[b].arrival; });
  if (total == 0) return std::move(result);
  result.summary.start = requests[order[0]].arrival;
  result.summary.end = result.summary.start;
  clock = result.summary.start;
  push(result.summary.start + options.series_interval, EventKind::sample, 0);
  if (has_migrations) {  // before the first arrival: a canary stage starts as the traffic does
    migration_at = result.summary.start;
    push(result.summary.start, EventKind::migration, 0);
  }

  const std::size_t chunk = std::max<std::size_t>(1, total / 100);
  std::size_t next_progress = chunk;
  while (next_arrival < total || !heap.empty()) {
    const SimTime arrival_at = next_arrival < total ? requests[order[next_arrival]].arrival : kNever;
    if (heap.empty() || arrival_at < heap.front().at) {
      arrive(order[next_arrival++]);
    } else {
      std::pop_heap(heap.begin(), heap.end(), Later{});
      const Event e = heap.back();
      heap.pop_back();
      switch (e.kind) {
        case EventKind::maas_done: maas_done(e.index, e.at); break;
        case EventKind::replica_wake: wake(e.index, e.at); break;
        case EventKind::retry: retry(e.index, e.at); break;
        case EventKind::sample: sample(e.index, e.at); break;
        case EventKind::context_overflow: attempt_ended(e.index, Status::context_overflow, -1, 0, nullptr, e.at); break;
        case EventKind::migration:
          if (e.at == migration_at) migration_event(e.at);  // else superseded by an earlier one
          break;
      }
    }
    if (finished >= next_progress) {
      next_progress = finished + chunk;
      if (progress && !progress(finished, total)) {
        result.stopped = true;
        break;
      }
    }
  }
  if (!result.stopped && progress) (void)progress(finished, total);
  // The last (partial) series row, and the totals over [first arrival, last completion].
  tick(result.summary.end);
  if (!result.series.empty() && bucket_area > 0) {
    SeriesRow& last = result.series.back();
    const SimTime width = result.summary.end - (result.summary.start + last.start);
    if (width > 0) last.in_flight = bucket_area / static_cast<double>(width);
  }
  const SimTime span = result.summary.end - result.summary.start;
  if (span > 0) result.summary.mean_in_flight = area / static_cast<double>(span);
  double gpus = 0;
  for (std::uint32_t r = 0; r < replicas.size(); ++r) {
    gpus += static_cast<double>(config->targets[replica_target[r]].cost.gpus_per_replica);
  }
  result.summary.gpu_hours = gpus * static_cast<double>(span) / (3600.0 * kMicrosPerS);
  return std::move(result);
}

Simulator::Simulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Simulator::~Simulator() = default;

Result<std::unique_ptr<Simulator>> Simulator::create(ConfigPtr config,
                                                     const std::unordered_map<std::string, TargetModel>& models,
                                                     SimOptions options) {
  if (!config) return make_error(ErrorCode::invalid_argument, "a simulation needs a routing table");
  auto impl = std::make_unique<Impl>(std::move(config), options);
  if (auto b = impl->build(models); !b) return std::move(b).error();
  return std::unique_ptr<Simulator>(new Simulator(std::move(impl)));
}

Result<Ok> Simulator::add(const TraceRequest& request, std::span<const std::uint32_t> token_ids) {
  Impl& m = *impl_;
  auto s = m.resolve(request, token_ids.size());
  if (!s) return std::move(s).error();
  s->prompt_begin = m.tokens.size();
  s->prompt_size = token_ids.size();
  m.keys.append(request.key);
  m.tokens.insert(m.tokens.end(), token_ids.begin(), token_ids.end());
  m.requests.push_back(*s);
  return Ok{};
}

Result<Ok> Simulator::add_blocks(const TraceRequest& request, std::span<const std::uint64_t> blocks,
                                 std::int64_t block_tokens) {
  Impl& m = *impl_;
  if (block_tokens < 1 || block_tokens > 1'000'000) {
    return make_error(ErrorCode::invalid_argument, "block_tokens must be within 1..1000000");
  }
  auto s = m.resolve(request, 0);
  if (!s) return std::move(s).error();
  s->prompt_begin = m.blocks.size();
  s->prompt_size = blocks.size();
  s->block_tokens = static_cast<std::uint32_t>(block_tokens);
  m.keys.append(request.key);
  m.blocks.insert(m.blocks.end(), blocks.begin(), blocks.end());
  m.requests.push_back(*s);
  return Ok{};
}

std::size_t Simulator::size() const noexcept { return impl_->requests.size(); }

Result<SimResult> Simulator::run(const Progress& progress) { return impl_->run(progress); }

}  // namespace turnout::sim
