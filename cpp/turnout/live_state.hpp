#pragma once
// A Router's live state by names: what a reloaded table, a restarted sidecar and a rebooted node carry
// over — the ledger (rows of every table it ever served), budgets, breakers, and the pending decisions
// with their in-flight leases. Indices belong to one table; names survive a reload that reorders, adds
// or removes targets. The sidecar journals and snapshots this state (sidecar/state_store.hpp).

#include <cstdint>
#include <string>
#include <vector>

#include "turnout/decision.hpp"
#include "turnout/ledger.hpp"
#include "turnout/migration.hpp"
#include "turnout/money.hpp"
#include "turnout/state.hpp"

namespace turnout {

/// One ledger row. A row whose scenario or target the current table no longer routes keeps its
/// history (retired): a canary that ends does not erase what it cost.
struct LedgerEntry {
  std::string scenario;
  std::string target;
  Counters counters;
  friend bool operator==(const LedgerEntry&, const LedgerEntry&) = default;
};

/// A scenario's budget of one UTC day.
struct BudgetEntry {
  std::string scenario;
  std::int64_t day = 0;
  Money spent;
  Money reserved;
  friend bool operator==(const BudgetEntry&, const BudgetEntry&) = default;
};

/// A place by names: a target, and for a self-hosted pool the replica's endpoint ("" for MaaS).
struct PlacementName {
  std::string target;
  std::string replica;
  friend bool operator==(const PlacementName&, const PlacementName&) = default;
};

/// One (target, replica) breaker. The error-rate window is not carried (it restarts empty).
struct BreakerEntry {
  PlacementName unit;
  Breaker::Phase phase = Breaker::Phase::closed;
  bool probe_inflight = false;
  TimeMs opened_at = 0;
  std::uint32_t consecutive_failures = 0;
  std::uint64_t times_opened = 0;
  friend bool operator==(const BreakerEntry&, const BreakerEntry&) = default;
};

/// A decision still waiting for outcomes or its verdict. While `lease_open` it holds its placement's
/// in-flight slot (and `active_blocks`, the probe if `probe`, and `reserved_cost` of its budget day)
/// until `lease_until`; in-flight counts are rebuilt from these leases, never stored apart.
struct PendingEntry {
  std::uint64_t id = 0;
  TimeMs at = 0;  ///< when it was decided (the sidecar's clock)
  std::string scenario;
  PlacementName placement;
  std::vector<PlacementName> fallbacks;
  Money reserved_cost;
  std::int64_t budget_day = 0;
  bool lease_open = false;
  TimeMs lease_until = 0;
  bool probe = false;
  std::int64_t active_blocks = 0;
  std::vector<std::string> reported_targets;
  std::string served_target;  ///< "" until an ok outcome answered it
  Money served_cost;
  bool verdict_given = false;
  friend bool operator==(const PendingEntry&, const PendingEntry&) = default;
};

/// Everything a Router carries over, by names.
struct LiveState {
  std::vector<LedgerEntry> ledger;
  std::vector<BudgetEntry> budgets;
  std::vector<BreakerEntry> breakers;
  std::vector<PendingEntry> pending;
  std::vector<MigrationEntry> migrations;
  friend bool operator==(const LiveState&, const LiveState&) = default;
};

/// What Router::import_state() could not place in its table, for the log.
struct ImportReport {
  std::size_t rows = 0;             ///< ledger rows taken (retired ones included)
  std::size_t pending = 0;          ///< pending decisions taken
  std::size_t leases_dropped = 0;   ///< leases whose unit is gone from this table (released)
  std::size_t pending_dropped = 0;  ///< decisions of a scenario gone and no ok outcome: nothing left to count
  std::size_t breakers_dropped = 0;
  std::size_t budgets_dropped = 0;  ///< budgets of scenarios gone from this table
};

}  // namespace turnout
