#include "sidecar/server.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <utility>

#include "sidecar/metrics.hpp"
#include "turnout/detail/fast_path_access.hpp"

namespace turnout::sidecar {

using client::table_segment_name;

namespace {

using MapOut = protocol::MapWriter;
using protocol::hex16;

void pack_counters(MapOut& m, const Scenario& scenario, const Target& t, const Counters& c) {
  m.str("scenario", scenario.name);
  m.str("target", t.name);
  m.str("kind", to_string(t.kind));
  m.str("provider", to_string(t.provider));
  visit_columns(c, [&m](const CounterField&, std::string_view column, const auto& value) {
    using T = std::remove_cvref_t<decltype(value)>;
    if constexpr (std::is_same_v<T, MoneyTotal>) {
      m.str(column, value.to_usd_string());  // exact decimal text, as every money field on the wire
    } else {
      m.key(column).pack(value);  // counts, and bucket arrays as msgpack arrays
    }
  });
  visit_derived(c, objectives(scenario), [&m](const DerivedColumn& column, const auto& value) {
    using T = std::remove_cvref_t<decltype(*value)>;
    if (!value) {
      m.key(column.name).pack_nil();
    } else if constexpr (std::is_same_v<T, std::string_view>) {
      m.str(column.name, *value);  // a gate: "pass" or "fail"
    } else {
      m.key(column.name).pack(*value);  // a share, as a float
    }
  });
}

}  // namespace

// Table segments of other generations: a sidecar that died (or failed to start) left them. The
// caller holds the segment's lock, so no live sidecar owns them.
static void remove_stale_tables(const std::string& shm, std::uint64_t keep) {
  std::error_code ec;
  const std::string prefix = shm + ".t";
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string_view digits = std::string_view(name).substr(prefix.size());
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    if (name != table_segment_name(shm, keep)) std::filesystem::remove(entry.path(), ec);
  }
}

// ------------------------------------------------------------------------------------------ Server

namespace {

/// Where a fast-path client's decision made from the table before a reload lands in the current one:
/// the same scenario, target and replica names. An error when one of them is gone.
Result<Ok> translate_by_names(const Config& from, const Config& to, Decision& d) {
  const auto find_scenario = [&](std::uint32_t i) -> std::optional<std::uint32_t> {
    if (i >= from.scenarios.size()) return std::nullopt;
    for (std::uint32_t j = 0; j < to.scenarios.size(); ++j) {
      if (to.scenarios[j].name == from.scenarios[i].name) return j;
    }
    return std::nullopt;
  };
  const auto find_place = [&](const Placement& p) -> std::optional<Placement> {
    if (p.target >= from.targets.size()) return std::nullopt;
    const Target& t = from.targets[p.target];
    for (std::uint32_t j = 0; j < to.targets.size(); ++j) {
      const Target& n = to.targets[j];
      if (n.name != t.name || n.kind != t.kind) continue;
      if (p.replica == kNone) return Placement{j, kNone};
      if (p.replica >= t.replicas.size()) return std::nullopt;
      for (std::uint32_t r = 0; r < n.replicas.size(); ++r) {
        if (n.replicas[r].endpoint == t.replicas[p.replica].endpoint) return Placement{j, r};
      }
    }
    return std::nullopt;
  };
  const auto scenario = find_scenario(d.scenario);
  const auto placement = find_place(d.placement);
  if (!scenario || !placement) {
    return make_error(ErrorCode::invalid_argument,
                      "decision " + std::to_string(d.id) + " was made from the previous table and its place is gone");
  }
  std::vector<Placement> fallbacks;
  for (const auto& f : d.fallbacks) {
    if (auto p = find_place(f)) fallbacks.push_back(*p);
  }
  d.scenario = *scenario;
  d.placement = *placement;
  d.fallbacks = std::move(fallbacks);
  d.config_version = to.content_hash;
  return Ok{};
}

/// A fast-path ring may adopt, report on and give verdicts for its own decisions only (kNone: the
/// socket, or a replayed route).
Result<Ok> check_ring_scope(std::uint64_t decision_id, std::uint32_t ring) {
  if (ring == kNone || (protocol::is_fast_id(decision_id) && protocol::ring_of(decision_id) == ring)) return Ok{};
  return make_error(ErrorCode::invalid_argument, "decision id " + std::to_string(decision_id) + " is not one of ring " +
                                                     std::to_string(ring) + "'s ids");
}

/// The index of `name`, a scenario of `config` with a migration block: unknown_scenario or no_migration.
Result<std::uint32_t> migration_scenario(const Config& config, std::string_view name) {
  for (std::uint32_t i = 0; i < config.scenarios.size(); ++i) {
    if (config.scenarios[i].name != name) continue;
    if (!config.scenarios[i].migration) {
      return make_error(ErrorCode::no_migration,
                        "scenario '" + std::string(name) + "' has no migration block in " + config.source);
    }
    return i;
  }
  return make_error(ErrorCode::unknown_scenario, "no scenario '" + std::string(name) + "' in " + config.source);
}

}  // namespace

/// The Router calls each mutation makes. The serving thread's handlers and a restart's replay of the
/// journal both make them through here, with the same bytes and times, so a replay is the run it
/// records (the Router reads no clock).
struct Mutation {
  /// `decoded`, if given, gets the report as decoded (the trace records it).
  static Result<ReportReceipt> report(Router& r, const protocol::Fields& f, TimeMs now, std::uint32_t ring,
                                      OutcomeReport* decoded = nullptr) {
    auto report = protocol::decode_report_request(f, now);
    if (!report) return std::move(report).error();
    if (auto ok = check_ring_scope(report->decision_id, ring); !ok) return std::move(ok).error();
    if (decoded != nullptr) *decoded = *report;
    return r.report(*report);
  }
  static Result<Ok> verdict(Router& r, const protocol::Fields& f, TimeMs now, std::uint32_t ring,
                            protocol::VerdictRequest* decoded = nullptr) {
    auto v = protocol::decode_verdict_request(f, now);
    if (!v) return std::move(v).error();
    if (auto ok = check_ring_scope(v->decision_id, ring); !ok) return ok;
    if (decoded != nullptr) *decoded = *v;
    return r.verdict(v->decision_id, v->accepted, v->now);
  }
  /// A fast-path client's decision (ring), or the socket's own route being replayed (kNone).
  static Result<Decision> adopt(Router& r, const Config* previous, const protocol::Fields& f, TimeMs now,
                                std::uint32_t ring) {
    auto d = protocol::decode_adopt_request(f, now);
    if (!d) return std::move(d).error();
    // Ids are partitioned by ring: a client cannot take the sidecar's ids or another ring's.
    if (auto ok = check_ring_scope(d->id, ring); !ok) return std::move(ok).error();
    // A ring record read again after a crash (journaled and applied, then the crash before the ring
    // let go of it): already committed, so it is not committed twice, and not refused either.
    if (r.has_pending(d->id)) return std::move(d).value();
    const Config& current = *r.config();
    if (previous != nullptr && d->config_version != current.content_hash &&
        d->config_version == previous->content_hash) {
      if (auto ok = translate_by_names(*previous, current, *d); !ok) return std::move(ok).error();
    }
    Decision kept = *d;
    kept.prefix.clear();
    if (auto ok = detail::FastPathAccess::adopt(r, std::move(d).value()); !ok) return std::move(ok).error();
    return kept;
  }
  /// An imported local decision (settle_local) by the names of `config`, under sidecar id `id`.
  static Result<Decision> local_decision(const Config& config, const protocol::LocalDecisionRequest& req,
                                         std::uint64_t id, TimeMs now) {
    Decision d;
    d.scenario = config.find_scenario(req.scenario);
    if (d.scenario == kNone) {
      return make_error(ErrorCode::unknown_scenario, "unknown scenario '" + std::string(req.scenario) + "'");
    }
    auto place = [&](std::string_view name, std::string_view endpoint) -> std::optional<Placement> {
      const std::uint32_t t = config.find_target(name);
      if (t == kNone) return std::nullopt;
      const Target& target = config.targets[t];
      if (target.kind == TargetKind::maas) return Placement{t, kNone};
      for (std::uint32_t r = 0; r < target.replicas.size(); ++r) {
        if (endpoint.empty() || target.replicas[r].endpoint == endpoint) return Placement{t, r};
      }
      return std::nullopt;
    };
    const auto placed = place(req.target, req.endpoint);
    if (!placed) {
      return make_error(ErrorCode::unknown_target, "no target '" + std::string(req.target) + "' with replica '" +
                                                       std::string(req.endpoint) + "' in this table");
    }
    d.placement = *placed;
    for (const auto name : req.fallbacks) {
      if (const auto f = place(name, {})) d.fallbacks.push_back(*f);  // a fallback gone since: not offered
    }
    d.reserved_cost = req.reserved_cost;
    d.config_version = config.content_hash;
    d.at = now;
    d.id = id;
    return d;
  }
  /// Commits it with its outcomes (priced by this table) and verdict; recorded into `trace` if given.
  static Result<protocol::LocalDecisionReply> settle(Router& r, Decision d, const protocol::LocalDecisionRequest& req,
                                                     TimeMs now, TraceRecorder* trace = nullptr) {
    const std::uint64_t id = d.id;
    const std::uint32_t scenario = d.scenario;
    if (auto adopted = detail::FastPathAccess::adopt(r, std::move(d)); !adopted) return std::move(adopted).error();
    if (trace != nullptr) {
      trace->decided(id, now, r.config()->scenarios[scenario].name, nullptr);
      if (req.accepted) trace->verdict(id, *req.accepted);  // before its line is written at the ok outcome
    }
    protocol::LocalDecisionReply reply{id, false, 0};
    for (const auto& o : req.outcomes) {
      const OutcomeReport outcome{id, o.target, o.status, o.usage, o.ttft_ms, o.latency_ms, std::nullopt, now};
      const auto receipt = r.report(outcome);
      if (!receipt) ++reply.rejected;
      if (receipt && trace != nullptr && !receipt->duplicate) {
        trace->outcome(id, o.status, receipt->priced ? &receipt->usage : nullptr, std::nullopt);
      }
    }
    if (req.accepted && !r.verdict(id, *req.accepted, now)) ++reply.rejected;
    return reply;
  }
  /// An operator's migration command (the request was checked: a command on a scenario with a migration).
  static Result<MigrationTransition> migration_command(Router& r, const protocol::MigrationRequest& req, TimeMs now) {
    return r.migration_command(req.scenario, *req.command, now);
  }
  /// Applies one journal record (a restart): `router` and `previous` follow the reloads it records.
  static void replay(std::shared_ptr<Router>& router, ConfigPtr& previous, const JournalRecord& rec,
                     const protocol::DecodeLimits& limits,
                     std::vector<std::pair<std::uint64_t, std::uint64_t>>& settled) {
    if (rec.kind == RecordKind::settle) {
      std::uint64_t id = 0;
      if (rec.bytes.size() < sizeof id) return;
      std::memcpy(&id, rec.bytes.data(), sizeof id);
      protocol::Envelope e;
      if (!protocol::decode_envelope(rec.bytes.substr(sizeof id), limits, protocol::Channel::socket, e)) return;
      auto req = protocol::decode_settle_local_request(e.fields);
      if (!req) return;
      auto d = local_decision(*router->config(), *req, id, rec.now);
      if (d && settle(*router, std::move(d).value(), *req, rec.now)) settled.emplace_back(req->spool_id, id);
      return;
    }
    if (rec.kind == RecordKind::migration_tick) {
      (void)router->migration_tick(rec.now);  // at its recorded time: the same analyses, the same moves
      return;
    }
    if (rec.kind == RecordKind::migration_command) {
      protocol::Envelope e;
      if (!protocol::decode_envelope(rec.bytes, limits, protocol::Channel::socket, e)) return;
      const auto req = protocol::decode_migration_request(e.fields);
      if (req && req->command) (void)migration_command(*router, *req, rec.now);  // a refusal is refused again
      return;
    }
    if (rec.kind == RecordKind::reap) {
      detail::FastPathAccess::release_ring(*router, rec.ring);
      return;
    }
    if (rec.kind == RecordKind::reload) {
      std::string source;
      std::string text;
      try {
        const auto h = msgpack::unpack(rec.bytes.data(), rec.bytes.size());
        const auto& o = h.get();
        if (o.type != msgpack::type::ARRAY || o.via.array.size != 2) return;
        o.via.array.ptr[0].convert(source);
        o.via.array.ptr[1].convert(text);
      } catch (const std::exception&) {
        return;  // never written so: a checksummed record is ours
      }
      auto config = load_config_text(text, source);
      if (!config) return;  // it loaded when it was journaled
      auto fresh = std::make_shared<Router>(config.value());
      fresh->import_state(router->export_state());
      previous = router->config();
      router = std::move(fresh);
      return;
    }
    const auto channel =
        rec.kind == RecordKind::route || rec.ring != kNone ? protocol::Channel::ring : protocol::Channel::socket;
    protocol::Envelope e;
    if (!protocol::decode_envelope(rec.bytes, limits, channel, e)) return;
    // What failed when it was applied fails the same way now: results are not needed.
    switch (e.op) {
      case protocol::Op::report: (void)report(*router, e.fields, rec.now, rec.ring); break;
      case protocol::Op::verdict: (void)verdict(*router, e.fields, rec.now, rec.ring); break;
      case protocol::Op::adopt: (void)adopt(*router, previous.get(), e.fields, rec.now, rec.ring); break;
      default: break;
    }
  }
};

Result<Server::Started> Server::start(const std::string& config_path, const std::string& shm_name,
                                      const std::string& state_dir) {
  auto config = load_config_file(config_path);
  if (!config) {
    const bool malformed = config.error().code == ErrorCode::config_invalid;
    return make_error(config.error().code, (malformed ? "invalid config: " : "") + config.error().message);
  }
  std::unique_ptr<Server> s(new Server());
  s->config_path_ = config_path;
  s->started_ms_ =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  StateStore::Recovered recovered;
  std::string state_note = "no state directory";
  if (!state_dir.empty()) {
    auto store = StateStore::open(state_dir, shm_name);
    if (!store) return std::move(store).error();
    s->store_ = std::move(store).value();
    auto r = s->store_->recover();
    if (!r) return std::move(r).error();
    recovered = std::move(r).value();
  }
  // The saved state: the snapshot's table and state, then every journaled mutation after it.
  std::shared_ptr<Router> saved;
  if (recovered.snapshot) {
    auto table = load_config_text(recovered.snapshot->config_text, recovered.snapshot->config_source);
    if (!table) {
      return make_error(ErrorCode::invalid_argument,
                        s->store_->dir() + ": the snapshot's table no longer loads: " + table.error().message);
    }
    saved = std::make_shared<Router>(table.value());
    saved->import_state(recovered.snapshot->state);
    if (!recovered.snapshot->previous_config_text.empty()) {
      // Ring records decided from it may follow in the journal (a reload snapshots at once).
      auto previous =
          load_config_text(recovered.snapshot->previous_config_text, recovered.snapshot->previous_config_source);
      if (previous) s->previous_config_ = previous.value();
    }
  } else if (!recovered.records.empty()) {
    saved = std::make_shared<Router>(config.value());
  }
  // Imported local decisions' spool ids: the snapshot's, then the journal's.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> settled;
  if (recovered.snapshot) settled = recovered.snapshot->settlements;
  for (const auto& rec : recovered.records) Mutation::replay(saved, s->previous_config_, rec, s->limits_, settled);
  if (s->store_) {
    state_note = s->store_->dir() + ": " + (recovered.snapshot ? "snapshot" : "new") + ", " +
                 std::to_string(recovered.records.size()) + " journal records replayed";
  }

  auto probe = std::make_shared<Router>(config.value());
  if (saved) probe->import_state(saved->export_state());
  const auto rows = probe->counters();
  auto opened = Segment::open(shm_name, rows.size());
  if (!opened) return std::move(opened).error();
  s->segment_ = std::move(opened.value().segment);
  // Ids never repeat: past every generation the saved state issued (a reboot loses the segment's).
  if (s->segment_->generation() <= recovered.generation) s->segment_->begin_generation(recovered.generation + 1);
  s->generation_ = s->segment_->generation();
  if (s->store_) s->store_->set_generation(s->generation_);
  s->first_id_ = s->generation_ << kGenerationShift;
  auto router = std::make_shared<Router>(config.value(), RouterOptions{.first_decision_id = s->first_id_ | 1U});
  if (saved) {
    const auto report = router->import_state(saved->export_state());
    if (saved->config()->content_hash != router->config()->content_hash) {
      s->previous_config_ = saved->config();
      state_note += "; carried over to the changed config (" + std::to_string(report.leases_dropped) + " leases and " +
                    std::to_string(report.pending_dropped) + " decisions of removed places dropped)";
    }
  } else {
    // No saved state (the first start with a state directory): take a dead owner's segment counters
    // over by (scenario, target) names.
    std::vector<CounterRow> restored;
    for (const auto& rec : opened.value().recovered) {
      const auto& c = *router->config();
      for (const auto& row : rows) {
        if (c.scenarios[row.scenario].name == rec.scenario && c.targets[row.target].name == rec.target) {
          restored.push_back({row.scenario, row.target, rec.counters});
        }
      }
    }
    if (auto ok = router->restore_counters(restored); !ok) return std::move(ok).error();
  }
  s->router_ = std::move(router);
  if (!settled.empty()) {
    if (auto ok = s->open_settlements(); !ok) return std::move(ok).error();
    for (const auto& [spool, id] : settled) {
      if (!s->settlements_->find(spool)) s->settlements_->remember(spool, id);
    }
  }
  // The journal restarts from a snapshot of what was just rebuilt.
  if (s->store_) {
    if (auto ok = s->snapshot(); !ok) return std::move(ok).error();
  }
  s->published_ = s->router_->counters();
  if (auto ok = s->segment_->publish_all(*s->router_->config(), s->published_); !ok) return std::move(ok).error();
  if (auto rings = RingReader::open(shm_name, s->store_ != nullptr); rings) {
    s->rings_ = std::move(rings).value();
    // Fast ids carry no generation: each ring's sequence continues past the recovered decisions'.
    for (const auto& p : s->router_->export_state().pending) {
      if (!protocol::is_fast_id(p.id)) continue;
      s->rings_->raise_sequence(protocol::ring_of(p.id), (p.id & ((1ULL << protocol::kRingShift) - 1)) + 1);
    }
    remove_stale_tables(shm_name, s->segment_->generation());
    s->publish_table(s->segment_->generation(), *s->router_, nullptr);
  } else {
    s->fast_note_ = rings.error().message;
  }
  std::string note = std::move(opened.value().note) + "; state " + state_note;
  if (!s->fast_note_.empty()) note += "; fast path off: " + s->fast_note_;
  return Started{std::move(s), std::move(note)};
}

Server::~Server() {
  if (table_ && router_) table_->detach(*router_);
}

void Server::publish_table(std::uint64_t generation, Router& router, Router* replaced) {
  if (!rings_) return;
  auto fresh = TablePublisher::create(segment_->name(), generation, router, 0);
  if (table_ && replaced != nullptr) table_->detach(*replaced);
  table_.reset();  // retires the old table: clients map the new one on their next route
  if (fresh) {
    table_ = std::move(fresh).value();
    fast_note_.clear();
  } else {
    fast_note_ = fresh.error().message;
  }
}

void Server::publish_state() {
  if (table_) table_->publish_state(*router_);
}

std::uint32_t Server::fast_clients() const noexcept { return rings_ ? rings_->clients() : 0; }

Server::FastPathStats Server::fast_path() const noexcept {
  return {static_cast<bool>(table_), ring_applied_, ring_rejected_, table_ ? table_->dropped() : 0};
}

std::shared_ptr<Router> Server::router() const {
  std::lock_guard lock(router_mu_);
  return router_;
}

std::uint64_t Server::generation() const {
  std::lock_guard lock(router_mu_);
  return generation_;
}

protocol::ReloadStatus Server::last_reload() const {
  std::lock_guard lock(router_mu_);
  return last_reload_;
}

std::string Server::config_version() const { return hex16(router()->config()->content_hash); }

void Server::heartbeat(std::int64_t now_ms) noexcept {
  segment_->heartbeat(now_ms);
  if (now_ms - last_expiry_ms_ >= 1000) {  // TTLs of the directories (and so of their views)
    last_expiry_ms_ = now_ms;
    try {
      router_->expire_directories(now_ms);
    } catch (...) {  // a lock that failed: the next beat tries again
    }
  }
  // A failed snapshot (disk full) is tried again every 10 s, not on every beat; /metrics shows it.
  if (store_ && store_->snapshot_due() && (snapshot_error_.empty() || now_ms - last_snapshot_try_ms_ >= 10'000)) {
    last_snapshot_try_ms_ = now_ms;
    (void)snapshot();
  }
}

void Server::sync_rows_locked(const Router& r) {
  auto rows = r.counters();
  const Config& c = *r.config();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (i < published_.size() && published_[i].scenario == rows[i].scenario && published_[i].target == rows[i].target &&
        published_[i].counters == rows[i].counters) {
      continue;
    }
    segment_->publish(c, rows[i]);
  }
  published_ = std::move(rows);
}

void Server::sync_rows() { sync_rows_locked(*router_); }

void Server::sync_row(std::uint32_t scenario, std::uint32_t target) {
  for (auto& row : published_) {
    if (row.scenario != scenario || row.target != target) continue;
    row.counters = router_->counter(scenario, target);
    segment_->publish(*router_->config(), row);
    return;
  }
  sync_rows();  // not a row we knew: take the whole snapshot
}

void Server::flush() {
  sync_rows();
  segment_->heartbeat(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  (void)snapshot();
}

Result<Ok> Server::snapshot() {
  if (!store_) return Ok{};
  Snapshot snap;
  snap.generation = generation_;
  snap.config_source = router_->config()->source;
  snap.config_text = router_->config()->text;
  if (settlements_) snap.settlements = settlements_->entries();
  if (previous_config_) {
    snap.previous_config_source = previous_config_->source;
    snap.previous_config_text = previous_config_->text;
  }
  snap.state = router_->export_state();
  auto ok = store_->snapshot(std::move(snap));
  snapshot_error_ = ok ? std::string() : ok.error().message;
  snapshot_ok_.store(ok.ok(), std::memory_order_relaxed);
  return ok;
}

Result<Ok> Server::open_settlements() {
  if (settlements_) return Ok{};
  auto opened = LocalSettlements::open(segment_->name());
  if (!opened) return std::move(opened).error();
  settlements_ = std::move(opened).value();
  return Ok{};
}

Result<Ok> Server::journal(RecordKind kind, std::uint32_t ring, std::int64_t now_ms, std::string_view bytes) {
  if (!store_) return Ok{};
  if (store_->journal(kind, ring, now_ms, bytes)) return Ok{};
  // Full: a snapshot holds everything so far and empties it.
  if (auto ok = snapshot(); !ok) {
    return make_error(ErrorCode::internal,
                      "the state journal is full and no snapshot could be written: " + ok.error().message);
  }
  if (store_->journal(kind, ring, now_ms, bytes)) return Ok{};
  return make_error(ErrorCode::internal,
                    "a mutation of " + std::to_string(bytes.size()) + " bytes does not fit the state journal");
}

Result<Ok> Server::reload(std::string_view why, std::int64_t now_ms) {
  auto result = swap_table();
  {
    std::lock_guard lock(router_mu_);
    last_reload_.ok = result.ok();
    last_reload_.at = now_ms;
    last_reload_.code.reset();
    last_reload_.message.clear();
    if (!result) {
      ++last_reload_.failures;
      last_reload_.code = result.error().code;
      last_reload_.message = result.error().message;
    }
  }
  if (reload_log_) reload_log_(why, result);
  return result;
}

Result<Ok> Server::swap_table() {
  auto config = load_config_file(config_path_);
  if (!config) return std::move(config).error();
  // The same bytes again (a file watch and a reload op racing): keep the table.
  if (config.value()->content_hash == router_->config()->content_hash) return Ok{};
  // First every step that can fail, changing nothing the old table serves from.
  const std::uint64_t generation = generation_ + 1;
  const std::uint64_t first = generation << kGenerationShift;
  auto fresh = std::make_shared<Router>(config.value(), RouterOptions{.first_decision_id = first | 1U});
  // Everything by names: rows (those of removed targets kept retired), budgets, breakers, and the
  // pending decisions with their leases, which report to the new table.
  fresh->import_state(router_->export_state());
  auto rows = fresh->counters();
  if (rows.size() > segment_->capacity()) {
    // All or nothing (Segment::rebuild): on error the old segment serves as it was.
    if (auto ok = segment_->rebuild(rows.size(), generation); !ok) return std::move(ok).error();
  }
  {
    // The last step that can fail. A grown segment then holds the old rows again (nothing else
    // changed); the old table keeps serving.
    msgpack::sbuffer record;
    msgpack::packer<msgpack::sbuffer> p(record);
    p.pack_array(2);
    p.pack(config.value()->source);
    p.pack(config.value()->text);
    if (auto ok = journal(RecordKind::reload, kNone, 0, std::string_view(record.data(), record.size())); !ok) {
      if (segment_->generation() == generation) {
        segment_->begin_generation(generation_);  // clients look for the table of the one served
        (void)segment_->publish_all(*router_->config(), published_);
      }
      return ok;
    }
  }
  if (segment_->generation() != generation) segment_->begin_generation(generation);
  if (store_) store_->set_generation(generation);
  // Then the swap. Published (and observing the new directories) before it: no block the KV thread
  // stores into them is missed.
  publish_table(generation, *fresh, router_.get());
  {
    std::lock_guard lock(router_mu_);
    previous_config_ = router_->config();
    router_ = std::move(fresh);
    first_id_ = first;
    generation_ = generation;
  }
  published_ = rows;
  auto ok = segment_->publish_all(*router_->config(), published_);  // fits: the segment was grown above
  publish_state();
  (void)snapshot();  // the journal keeps the reload if this fails: the heartbeat tries again
  return ok;
}

// ------------------------------------------------------------------------------------------ handle

/// The op handlers, one per op: each decodes its request (protocol.hpp), applies it and encodes its
/// reply body. A friend of Server; the table below maps each op to its handler.
struct Handler {
  struct Call {
    const protocol::Envelope& request;
    std::string_view payload;  // the request's bytes, as the journal records them
    std::int64_t now_ms;
    std::uint32_t ring;  // kNone: the socket
    protocol::MapWriter& body;
  };
  using Fn = Result<Ok> (*)(Server&, const Call&);

  /// Decodes `payload` into `request` and runs its op's handler: the reply body is in `body`, or the
  /// error is returned. Throws only what the handlers cannot turn into an error (out of memory).
  static Result<Ok> serve(Server& s, protocol::Envelope& request, std::string_view payload, std::int64_t now_ms,
                          std::uint32_t ring, protocol::MapWriter& body);

  static Result<Ok> route(Server& s, const Call& c) { return decide(s, c, true); }
  static Result<Ok> explain(Server& s, const Call& c) { return decide(s, c, false); }
  static Result<Ok> report(Server& s, const Call& c);
  static Result<Ok> verdict(Server& s, const Call& c);
  static Result<Ok> adopt(Server& s, const Call& c);
  static Result<Ok> stats(Server& s, const Call& c);
  static Result<Ok> health(Server& s, const Call& c);
  static Result<Ok> reload(Server& s, const Call& c);
  static Result<Ok> settle_local(Server& s, const Call& c);
  static Result<Ok> migration(Server& s, const Call& c);

 private:
  static Result<Ok> decide(Server& s, const Call& c, bool commit);
  /// After a report or verdict: the segment's rows and the fast path's live state.
  static void publish(Server& s);
};

namespace {

struct HandlerEntry {
  protocol::Op op;
  Handler::Fn fn;
};

/// Every op's handler, in the op table's order (checked below).
constexpr std::array kHandlers{
    HandlerEntry{protocol::Op::route, &Handler::route},
    HandlerEntry{protocol::Op::explain, &Handler::explain},
    HandlerEntry{protocol::Op::report, &Handler::report},
    HandlerEntry{protocol::Op::verdict, &Handler::verdict},
    HandlerEntry{protocol::Op::adopt, &Handler::adopt},
    HandlerEntry{protocol::Op::stats, &Handler::stats},
    HandlerEntry{protocol::Op::health, &Handler::health},
    HandlerEntry{protocol::Op::reload, &Handler::reload},
    HandlerEntry{protocol::Op::settle_local, &Handler::settle_local},
    HandlerEntry{protocol::Op::migration, &Handler::migration},
};

constexpr bool handlers_in_order() {
  for (std::size_t i = 0; i < kHandlers.size(); ++i) {
    if (kHandlers[i].op != protocol::kOps[i].op) return false;
  }
  return kHandlers.size() == protocol::kOps.size();
}
static_assert(handlers_in_order(), "kHandlers must name one handler per op, in protocol::kOps order");

}  // namespace

Result<Ok> Handler::serve(Server& s, protocol::Envelope& request, std::string_view payload, std::int64_t now_ms,
                          std::uint32_t ring, protocol::MapWriter& body) {
  const auto channel = ring == kNone ? s.socket_channel_ : protocol::Channel::ring;
  try {
    if (auto ok = protocol::decode_envelope(payload, s.limits_, channel, request); !ok) return ok;
    return kHandlers[static_cast<std::size_t>(request.op)].fn(s, Call{request, payload, now_ms, ring, body});
  } catch (const std::exception& e) {
    return make_error(ErrorCode::internal, e.what());
  }
}

Result<Ok> Handler::decide(Server& s, const Call& c, bool commit) {
  std::vector<std::uint32_t> tokens;
  auto request = protocol::decode_route_request(c.request.fields, c.now_ms, tokens);
  if (!request) return std::move(request).error();
  const auto router = s.router_;  // the serving thread is the only writer of router_
  auto d = commit ? router->route(*request) : router->explain(*request);
  if (!d) return std::move(d).error();
  if (commit) {
    // Journaled as the adopt of its decision: a replay commits it exactly, with its id and time.
    thread_local msgpack::sbuffer record;
    record.clear();
    protocol::encode_adopt_request(record, *d, 0);
    if (auto ok = s.journal(RecordKind::route, kNone, c.now_ms, std::string_view(record.data(), record.size())); !ok) {
      return ok;
    }
    s.sync_row(d->scenario, d->placement.target);
    s.publish_state();
    if (s.trace_) s.trace_->decided(d->id, d->at, request->scenario, &*request);
  }
  protocol::encode_decision_reply(c.body, *router->config(), *d);
  return Ok{};
}

void Handler::publish(Server& s) {
  s.sync_rows();
  s.publish_state();
}

// A ring's record was journaled before it was taken off the ring (drain_rings); the socket's
// requests are journaled once applied, before their reply.
Result<Ok> Handler::report(Server& s, const Call& c) {
  OutcomeReport decoded;
  auto receipt = Mutation::report(*s.router_, c.request.fields, c.now_ms, c.ring, &decoded);
  if (!receipt) return std::move(receipt).error();
  // A duplicate is journaled too: it may carry the verdict (replaying it is idempotent).
  if (c.ring == kNone) {
    if (auto ok = s.journal(RecordKind::request, kNone, c.now_ms, c.payload); !ok) return ok;
  }
  if (s.trace_ && !receipt->duplicate) {
    s.trace_->outcome(decoded.decision_id, decoded.status, receipt->priced ? &receipt->usage : nullptr,
                      decoded.accepted);
  } else if (s.trace_ && decoded.accepted) {
    s.trace_->verdict(decoded.decision_id, *decoded.accepted);
  }
  publish(s);
  protocol::encode_receipt_reply(c.body, *receipt);
  return Ok{};
}

Result<Ok> Handler::verdict(Server& s, const Call& c) {
  protocol::VerdictRequest decoded;
  if (auto ok = Mutation::verdict(*s.router_, c.request.fields, c.now_ms, c.ring, &decoded); !ok) return ok;
  if (c.ring == kNone) {
    if (auto ok = s.journal(RecordKind::request, kNone, c.now_ms, c.payload); !ok) return ok;
  }
  if (s.trace_) s.trace_->verdict(decoded.decision_id, decoded.accepted);
  publish(s);
  return Ok{};
}

Result<Ok> Handler::adopt(Server& s, const Call& c) {
  auto d = Mutation::adopt(*s.router_, s.previous_config_.get(), c.request.fields, c.now_ms, c.ring);
  if (!d) return std::move(d).error();
  s.sync_row(d->scenario, d->placement.target);  // the one row an adopt changes
  s.publish_state();
  // A fast-path decision carries no key, data class or prompt (docs/operations.md, "Recording traffic").
  if (s.trace_) s.trace_->decided(d->id, d->at, s.router_->config()->scenarios[d->scenario].name, nullptr);
  return Ok{};
}

Result<Ok> Handler::stats(Server& s, const Call& c) {
  if (auto r = protocol::decode_stats_request(c.request.fields); !r) return std::move(r).error();
  const auto router = s.router_;
  const Config& config = *router->config();
  protocol::StatsReply reply;
  reply.pid = ::getpid();
  reply.generation = s.generation_;
  reply.config_version = config.content_hash;
  reply.config = config.source;
  reply.shm = s.segment_->name();
  reply.uptime_s = static_cast<double>(c.now_ms - s.started_ms_) / 1000.0;
  reply.pending_decisions = router->pending_decisions();
  const auto fast = s.fast_path();
  reply.fast_path = {fast.enabled,     fast.enabled ? s.table_->name() : std::string(),
                     s.fast_note_,     s.fast_clients(),
                     fast.records,     fast.rejected,
                     fast.view_dropped};
  reply.last_reload = s.last_reload_;  // the serving thread writes it: no lock to read it here
  for (const auto& row : router->counters()) {
    MapOut m;
    pack_counters(m, config.scenarios[row.scenario], config.targets[row.target], row.counters);
    msgpack::sbuffer bytes;
    m.emit(bytes);
    reply.counters.emplace_back(bytes.data(), bytes.size());
  }
  for (const auto& b : router->breakers(c.now_ms)) {
    const Target& t = config.targets[b.target];
    reply.breakers.push_back({t.name, b.replica == kNone ? std::nullopt : std::optional(t.replicas[b.replica].endpoint),
                              b.phase, b.consecutive_failures, b.times_opened, b.inflight});
  }
  for (const auto& row : router->directory_stats()) {  // the KV events each pool replica's engine sent
    if (row.target == kNone) continue;
    const Target& t = config.targets[row.target];
    for (std::size_t ri = 0; ri < row.events.size(); ++ri) {
      MapOut m;
      m.str(protocol::field::target, t.name);
      m.str(protocol::field::endpoint, t.replicas[ri].endpoint);
      row.events[ri].visit_fields([&m](std::string_view name, std::uint64_t value) { m.key(name).pack(value); });
      msgpack::sbuffer bytes;
      m.emit(bytes);
      reply.kv_events.emplace_back(bytes.data(), bytes.size());
    }
  }
  for (const auto& m : router->migrations()) {
    MapOut map;
    protocol::encode_migration_status(map, config, m);
    msgpack::sbuffer bytes;
    map.emit(bytes);
    reply.migrations.emplace_back(bytes.data(), bytes.size());
  }
  protocol::encode_stats_reply(c.body, reply);
  return Ok{};
}

Result<Ok> Handler::health(Server& s, const Call& c) {
  if (auto r = protocol::decode_health_request(c.request.fields); !r) return std::move(r).error();
  protocol::HealthReply reply;
  reply.pid = ::getpid();
  reply.generation = s.generation_;
  reply.config_version = s.router_->config()->content_hash;
  reply.uptime_s = static_cast<double>(c.now_ms - s.started_ms_) / 1000.0;
  protocol::encode_health_reply(c.body, reply);
  return Ok{};
}

Result<Ok> Handler::reload(Server& s, const Call& c) {
  if (auto r = protocol::decode_reload_request(c.request.fields); !r) return std::move(r).error();
  if (auto r = s.reload("reload op", c.now_ms); !r) return r;
  protocol::encode_reload_reply(c.body, {s.router_->config()->content_hash, s.generation_});
  return Ok{};
}

/// Imports a decision a client made locally, by names into the current table at the sidecar's clock:
/// the request, its outcomes (priced here) and its verdict are counted as if it had been routed here,
/// and it stays pending under a sidecar id for the reports and verdict still to come. A spool id
/// already imported is not applied again.
Result<Ok> Handler::settle_local(Server& s, const Call& c) {
  auto req = protocol::decode_settle_local_request(c.request.fields);
  if (!req) return std::move(req).error();
  if (auto ok = s.open_settlements(); !ok) return ok;
  if (const auto known = s.settlements_->find(req->spool_id)) {
    protocol::encode_settle_local_reply(c.body, {*known, true, 0});
    return Ok{};
  }
  const std::uint64_t id = (protocol::generation_of(s.first_id_) << kGenerationShift) | protocol::kImportedIdBit |
                           s.settlements_->next_sequence();
  auto d = Mutation::local_decision(*s.router_->config(), *req, id, c.now_ms);
  if (!d) return std::move(d).error();
  // One journal record, before anything changes: a restart applies the decision, its outcomes and
  // verdict and remembers its spool id together, so a re-sent entry never counts twice.
  std::string record(sizeof id, '\0');
  std::memcpy(record.data(), &id, sizeof id);
  record.append(c.payload);
  if (auto ok = s.journal(RecordKind::settle, kNone, c.now_ms, record); !ok) return ok;
  auto reply = Mutation::settle(*s.router_, std::move(d).value(), *req, c.now_ms, s.trace_.get());
  if (!reply) return std::move(reply).error();
  s.settlements_->remember(req->spool_id, id);
  s.sync_rows();
  s.publish_state();
  protocol::encode_settle_local_reply(c.body, *reply);
  return Ok{};
}

/// A migration's status (one scenario's, or every one's), or an operator's command: refused unless
/// the socket is local or authenticated, journaled before it is applied, its transition logged.
Result<Ok> Handler::migration(Server& s, const Call& c) {
  auto req = protocol::decode_migration_request(c.request.fields);
  if (!req) return std::move(req).error();
  const auto router = s.router_;
  const Config& config = *router->config();
  std::optional<std::uint32_t> scenario;
  if (!req->scenario.empty()) {
    auto found = migration_scenario(config, req->scenario);
    if (!found) return std::move(found).error();
    scenario = *found;
  }
  if (!req->command) {
    auto statuses = router->migrations();
    if (scenario) std::erase_if(statuses, [&](const MigrationStatus& m) { return m.scenario != *scenario; });
    protocol::encode_migration_status_reply(c.body, config, statuses);
    return Ok{};
  }
  if (!s.trusted_ || s.socket_channel_ != protocol::Channel::socket) {
    return make_error(ErrorCode::permission_denied,
                      "migration " + std::string(to_string(*req->command)) +
                          " needs a local (ipc://) or CURVE-authenticated endpoint; this one is loopback TCP "
                          "without CURVE, which every local user can reach");
  }
  if (auto ok = s.journal(RecordKind::migration_command, kNone, c.now_ms, c.payload); !ok) return ok;
  auto t = Mutation::migration_command(*router, *req, c.now_ms);
  if (!t) return std::move(t).error();
  s.log_transition(*scenario, *t);
  s.publish_state();  // the fast path follows the new weights
  for (const auto& m : router->migrations()) {
    if (m.scenario == *scenario) protocol::encode_migration_command_reply(c.body, config, *t, m);
  }
  return Ok{};
}

void Server::log_transition(std::uint32_t scenario, const MigrationTransition& t) const {
  if (!migration_log_) return;
  const Scenario& sc = router_->config()->scenarios[scenario];
  const MigrationSpec& spec = *sc.migration;
  MigrationRun after;
  after.phase = t.to;
  after.step = t.step;
  std::string line = "migration " + sc.name + ": " + std::string(to_string(t.from)) + " -> " +
                     std::string(to_string(t.to)) + ", step " + std::to_string(t.step + 1) + "/" +
                     std::to_string(spec.steps.size()) + ", candidate " +
                     std::to_string(candidate_percent(spec, after)) + " %, cause " + std::string(to_string(t.cause));
  if (!t.detail.empty()) line += ": " + t.detail;
  line += " (candidate " + std::to_string(t.candidate_outcomes) + ", baseline " + std::to_string(t.baseline_outcomes) +
          " outcomes)";
  if (t.to == MigrationPhase::aborted || t.to == MigrationPhase::paused)
    line += "; incident owner " + spec.incident_owner;
  migration_log_(line);
}

void Server::migration_tick(std::int64_t now_ms) noexcept {
  try {
    if (!router_->migration_due(now_ms)) return;
    // Not journaled (full, and no snapshot could make room): not run either; the next turn tries again.
    if (!journal(RecordKind::migration_tick, kNone, now_ms, {})) return;
    const auto moves = router_->migration_tick(now_ms);
    for (const auto& [scenario, t] : moves) log_transition(scenario, t);
    if (!moves.empty()) publish_state();
  } catch (...) {  // out of memory: the next turn tries again
  }
}

std::string Server::handle(std::string_view payload, std::int64_t now_ms) noexcept {
  return handle(payload, now_ms, kNone);
}

std::string Server::handle(std::string_view payload, std::int64_t now_ms, std::uint32_t ring) noexcept {
  try {
    protocol::Envelope request;  // every reply echoes its id, an error reply too
    protocol::MapWriter body;
    const auto served = Handler::serve(*this, request, payload, now_ms, ring, body);
    return served ? protocol::encode_reply(request.id, body) : protocol::encode_error_reply(request.id, served.error());
  } catch (...) {
  }
  return {};  // out of memory: the caller drops the request
}

std::size_t Server::drain_rings(std::int64_t now_ms) {
  if (!rings_) return 0;
  RingReader::Visitor visit;
  // Journaled before the ring lets go of it: a crash in between replays it, and the ring's copy is
  // then refused (an adopt of a pending id) or a duplicate (a report): it counts once.
  visit.keep = [&](std::uint32_t ring, std::string_view record) {
    if (!journal(RecordKind::request, ring, now_ms, record)) ++not_journaled_;
  };
  visit.apply = [&](std::uint32_t ring, std::string_view record) -> shm::RecordFate {
    ++ring_applied_;
    // Nobody waits for a ring record's reply: an error is counted (and shown by stats and /metrics),
    // and its client reads it in its ring's feedback.
    shm::RecordFate fate;
    try {
      protocol::Envelope request;
      protocol::MapWriter body;
      if (auto served = Handler::serve(*this, request, record, now_ms, ring, body); !served) {
        const auto* id = request.fields.get(protocol::field::decision_id);
        const auto* op = request.fields.get(protocol::field::op);  // none: the record is not a request
        const auto known = op != nullptr && op->type == msgpack::type::STR
                               ? protocol::op_from_string({op->via.str.ptr, op->via.str.size})
                               : std::nullopt;
        fate = {false, id != nullptr && id->type == msgpack::type::POSITIVE_INTEGER ? id->via.u64 : 0,
                static_cast<std::uint32_t>(served.error().code),
                static_cast<std::uint32_t>(known ? static_cast<std::size_t>(*known) : protocol::kOps.size())};
      }
    } catch (...) {
      fate = {false, 0, static_cast<std::uint32_t>(ErrorCode::internal),
              static_cast<std::uint32_t>(protocol::kOps.size())};
    }
    if (!fate.applied) ++ring_rejected_;
    return fate;
  };
  // A dead client's decisions stop holding in-flight slots; they still take reports (its spool).
  visit.reaped = [&](std::uint32_t ring) {
    if (!journal(RecordKind::reap, ring, now_ms, {})) ++not_journaled_;
    if (detail::FastPathAccess::release_ring(*router_, ring) > 0) publish_state();
  };
  return rings_->drain(visit);
}

// ------------------------------------------------------------------------------------------ metrics

std::string Server::metrics(std::int64_t now_ms) const {
  // One snapshot under the lock; the segment is not read (a reload may be replacing it).
  std::shared_ptr<Router> r;
  SidecarGauges gauges;
  {
    std::lock_guard lock(router_mu_);
    r = router_;
    gauges.generation = generation_;
    gauges.last_reload = last_reload_;
  }
  gauges.snapshot_ok = snapshot_ok_.load(std::memory_order_relaxed);
  gauges.unjournaled = not_journaled_.load(std::memory_order_relaxed);
  gauges.unsent_replies = unsent_replies_.load(std::memory_order_relaxed);
  if (trace_) gauges.trace = trace_->stats();
  gauges.uptime_s = static_cast<double>(now_ms - started_ms_) / 1000.0;
  gauges.config_version = hex16(r->config()->content_hash);
  return metrics_text(*r, gauges, now_ms);
}

}  // namespace turnout::sidecar
