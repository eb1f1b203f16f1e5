#pragma once
// The in-process Router: one config snapshot, the mutable state, and the decide/commit and report
// paths under one lock. Notebooks, workers and the sidecar all route through this class.

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <msgpack.hpp>

#include "turnout/config.hpp"
#include "turnout/decision.hpp"
#include "turnout/kv_events.hpp"
#include "turnout/live_state.hpp"
#include "turnout/migration.hpp"
#include "turnout/policy.hpp"
#include "turnout/pricing.hpp"
#include "turnout/result.hpp"
#include "turnout/state.hpp"
#include "turnout/usage.hpp"

namespace turnout {

/// Documented defaults for a Router's bookkeeping.
struct RouterOptions {
  std::uint64_t seed = 0;              ///< sticky hashing seed (replays with the same seed agree)
  TimeMs decision_ttl_ms = 3'600'000;  ///< how long a decision waits for reports and its verdict
  std::size_t max_pending = 1U << 18;  ///< decisions awaiting an outcome or holding a lease (oldest expire first)
  /// Settled decisions (outcome in, lease ended) kept for their verdict (oldest expire first): about
  /// 80 bytes each with their index: the default 2^23 is at most ~0.7 GiB and holds 84 s at 100k routes/s.
  std::size_t max_settled = 1U << 23;
  std::uint64_t first_decision_id = 1;  ///< a restarted sidecar starts past every id it issued before
};

/// A route request in the names a caller uses.
struct RouteRequest {
  std::string_view scenario;
  std::string_view key;
  std::string_view data_class;  ///< "" = the scenario's
  std::int64_t input_tokens = -1;
  std::int64_t max_output_tokens = -1;
  std::int64_t expected_cached_tokens = 0;
  std::span<const std::uint32_t> token_ids;  ///< the prompt's token ids, if known
  std::string_view text;                     ///< else its (canonical) text
  TimeMs now = 0;
};

/// What a worker reports after calling a target.
struct OutcomeReport {
  std::uint64_t decision_id = 0;
  std::string_view target;
  Status status = Status::ok;
  const msgpack::object* usage = nullptr;  ///< the provider's native usage object, or none
  std::int64_t ttft_ms = -1;
  std::int64_t latency_ms = -1;
  std::optional<bool> accepted;
  TimeMs now = 0;
};

struct ReportReceipt {
  bool duplicate = false;  ///< this (decision, target) was already reported: nothing changed
  bool fallback = false;   ///< the target was not the decision's choice
  bool priced = false;     ///< false when no usage came with it (cost unknown, counted as unpriced)
  Usage usage;
  Money cost;
};

struct CounterRow {
  std::uint32_t scenario;
  std::uint32_t target;
  Counters counters;
};

struct BreakerRow {
  std::uint32_t target;
  std::uint32_t replica;  ///< kNone for MaaS
  Breaker::Phase phase;
  std::uint32_t consecutive_failures;
  std::uint64_t times_opened;
  std::int64_t inflight;
};

/// A self-hosted pool's two cost views over a period, side by side and never mixed: the marginal GPU
/// time its outcomes used (the ledger) and the fully loaded provisioned cost.
struct PoolCostRow {
  std::uint32_t target;
  PoolPeriodCost provisioned;
  MoneyTotal marginal;
  std::uint64_t outcomes;
  std::uint64_t accepted;
};

/// One cache directory: a self-hosted pool's (target set) or the MaaS targets' (target kNone).
struct DirectoryRow {
  std::uint32_t target;
  CacheDirectory::Stats stats;
  std::vector<KvIngestStats> events;  ///< per replica (pools only)
};

struct BudgetRow {
  std::uint32_t scenario;
  Money limit;
  Money spent;
  Money reserved;
};

/// One scenario's migration as `status` shows it.
struct MigrationStatus {
  std::uint32_t scenario = kNone;
  MigrationRun run;
  std::uint32_t candidate_percent = 0;
  TimeMs deadline_at = 0;  ///< the step's (ramp) or the pause's (paused) deadline; 0 otherwise
  std::vector<CriterionResult> criteria;
};

namespace detail {
struct LiveUnit;
struct LiveBudget;
class FastPathAccess;
}  // namespace detail

class Router {
 public:
  explicit Router(ConfigPtr config, RouterOptions options = {});
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  /// Decides and commits: takes an in-flight slot, the half-open probe if any, and reserves the
  /// worst-case cost against the scenario's budget.
  [[nodiscard]] Result<Decision> route(const RouteRequest& request);
  /// Decides without committing anything: what route() would answer now, with every reason.
  [[nodiscard]] Result<Decision> explain(const RouteRequest& request);
  /// Accounts an outcome. Idempotent per (decision, target); invalid usage changes nothing.
  [[nodiscard]] Result<ReportReceipt> report(const OutcomeReport& report);
  /// Records the quality verdict of a decision's answered request (may come after its report).
  [[nodiscard]] Result<Ok> verdict(std::uint64_t decision_id, bool accepted, TimeMs now);

  /// The ledger rows of this table: every row it routes, every row with activity, every row carried
  /// over (restore_counters, import_state). Rows of scenarios or targets it lacks: retired_counters().
  [[nodiscard]] std::vector<CounterRow> counters() const;
  /// Rows kept by names whose scenario or target this table does not have (a canary that ended).
  [[nodiscard]] std::vector<LedgerEntry> retired_counters() const;
  /// Everything a reload or restart carries over, by names (see live_state.hpp).
  [[nodiscard]] LiveState export_state() const;
  /// Replaces the ledger, budgets, breakers and pending decisions with `state`, matched by names:
  /// rows this table lacks are kept retired; a lease re-takes its unit's in-flight slot, active
  /// blocks, probe and budget reservation, or is released when the unit is gone; a decision whose
  /// scenario or placement is gone keeps what can still count (its verdict, reports to fallbacks).
  /// Directories are not touched. Exporting again yields `state` for a table that has all its names.
  ImportReport import_state(const LiveState& state);
  /// One ledger row (cheap: no allocation), e.g. the one a route just changed.
  [[nodiscard]] Counters counter(std::uint32_t scenario, std::uint32_t target) const;
  /// Replaces ledger rows (a restarted or reloaded sidecar carries its counters over). Rows whose
  /// indices are out of range for this config are errors; nothing is changed then.
  [[nodiscard]] Result<Ok> restore_counters(const std::vector<CounterRow>& rows);
  [[nodiscard]] std::vector<BreakerRow> breakers(TimeMs now) const;
  [[nodiscard]] std::vector<BudgetRow> budgets(TimeMs now) const;
  /// Per self-hosted target: the ledger's marginal cost and outcomes next to the provisioned cost of
  /// `period_ms` (the period the ledger covers, which only the caller knows).
  [[nodiscard]] std::vector<PoolCostRow> self_hosted_costs(TimeMs period_ms) const;
  [[nodiscard]] std::size_t pending_decisions() const;

  /// Applies a replica's decoded KV events to its pool's directory (precise mode).
  [[nodiscard]] Result<KvIngestStats> apply_kv_events(std::uint32_t target, std::uint32_t replica,
                                                      const KvEventBatch& batch, TimeMs now);
  /// Drops everything the directory holds for a replica (its publisher restarted or lost events).
  [[nodiscard]] Result<Ok> reset_kv(std::uint32_t target, std::uint32_t replica);
  [[nodiscard]] std::vector<DirectoryRow> directory_stats() const;
  [[nodiscard]] const ConfigPtr& config() const noexcept { return config_; }

  /// Whether a migration's analysis is due (cheap; the sidecar journals a tick when it is).
  [[nodiscard]] bool migration_due(TimeMs now) const;
  /// Runs every due analysis: the moves made, with their scenario index.
  std::vector<std::pair<std::uint32_t, MigrationTransition>> migration_tick(TimeMs now);
  /// An operator's command: unknown_scenario, no_migration or migration_conflict.
  [[nodiscard]] Result<MigrationTransition> migration_command(std::string_view scenario, MigrationCommand cmd,
                                                              TimeMs now);
  /// Every scenario's migration, in table order.
  [[nodiscard]] std::vector<MigrationStatus> migrations() const;

  /// Drops directory entries past their TTL.
  void expire_directories(TimeMs now);
  /// Whether a decision still waits for its outcome or verdict (a reloaded sidecar asks which table
  /// holds it).
  [[nodiscard]] bool has_pending(std::uint64_t decision_id) const;

 private:
  // The fast path's side, reached only through detail::FastPathAccess (documented there).
  friend class detail::FastPathAccess;
  [[nodiscard]] Result<Decision> dispatch(const RouteRequest& request);
  [[nodiscard]] Result<Ok> adopt(Decision decision);
  [[nodiscard]] Result<ReportReceipt> price_outcome(std::uint32_t scenario, std::uint32_t placed_target,
                                                    const OutcomeReport& report) const;
  void live_state(std::vector<detail::LiveUnit>& units, std::vector<detail::LiveBudget>& budgets) const;
  void set_live_state(std::span<const detail::LiveUnit> units, std::span<const detail::LiveBudget> budgets);
  void set_prefix_index(std::vector<const PrefixIndex*> pools, const PrefixIndex* maas);
  void observe_directory(std::uint32_t target, MaskObserver* observer);
  [[nodiscard]] std::uint64_t next_decision_id() const;
  std::size_t release_ring(std::uint32_t ring);

  [[nodiscard]] Result<Request> resolve(const RouteRequest& request) const;
  /// Drops decisions past their TTL, and the oldest while fewer than `room` places are free.
  void expire(TimeMs now, std::size_t room = 0);
  void release(PendingDecision& p);
  /// Moves a pending decision whose outcome is in and whose lease ended to the compact store.
  void settle_if_done(std::unordered_map<std::uint64_t, PendingDecision>::iterator it);
  void expire_leases(TimeMs now);
  [[nodiscard]] SettledDecision* find_settled(std::uint64_t id, TimeMs now);
  [[nodiscard]] Counters& verdict_row(const SettledDecision& s);
  [[nodiscard]] Result<ReportReceipt> report_settled(SettledDecision& s, std::uint64_t id, std::uint32_t target,
                                                     const OutcomeReport& r);
  Result<Ok> apply_verdict(SettledDecision& s, std::uint64_t id, bool accepted);
  /// Counts a verdict in its migration's arm when the served target served as the placement.
  void observe_migration_verdict(std::uint32_t scenario, std::uint32_t served_target, bool placed, TimeMs decided_at,
                                 bool accepted);
  [[nodiscard]] PlacementName placement_name(const Placement& p) const;
  [[nodiscard]] std::optional<Placement> find_placement(const PlacementName& name) const;
  std::uint32_t retired_row(const std::string& scenario, const std::string& target);
  void commit(Decision& d, TimeMs now);
  Result<Ok> apply_verdict(PendingDecision& p, bool accepted);

  ConfigPtr config_;
  RouterOptions options_;
  mutable std::mutex mu_;
  RouterState state_;
  std::uint64_t next_id_ = 1;
  bool learn_ = true;  // false when decide() matches against another router's directories
};

}  // namespace turnout
