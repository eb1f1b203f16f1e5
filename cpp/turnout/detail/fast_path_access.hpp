#pragma once
// The fast path's only way into a Router's internals, which are not part of its user API: the
// sidecar publishes its router's live state and directory changes through it; a client's router
// mirrors them and decides without keeping the decision (`dispatch`); the sidecar's router then takes
// the decision over (`adopt`). See HACKING.md, "The sidecar".

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "turnout/decision.hpp"
#include "turnout/directory.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/state.hpp"

namespace turnout::detail {

/// What decide() reads that changes between decisions, per (target, replica) unit: the part of the
/// state the sidecar publishes for clients that decide from shared memory.
struct LiveUnit {
  Breaker::Phase phase = Breaker::Phase::closed;
  bool probe_inflight = false;
  TimeMs opened_at = 0;
  std::int64_t inflight = 0;
  std::int64_t active_blocks = 0;
  std::int64_t recent_load = 0;  ///< RouterState::recent_load
  std::int64_t cache_held = 0;   ///< RouterState::cache_held
};
/// The same per scenario: its budget's day and figures, and its migration's candidate traffic
/// percent (RouterState::candidate_percent), so a client's routes follow the live split.
struct LiveBudget {
  std::int64_t day = 0;
  Money spent;
  Money reserved;
  std::uint32_t candidate_percent = 0;
};

/// Friend of Router: reaches its fast-path internals, which are private to keep them out of the API.
class FastPathAccess {
 public:
  /// Decides and takes the in-flight slot, the probe and the budget reservation in `router`'s state,
  /// but keeps no pending entry or counters: a client's router, whose state mirrors the sidecar's
  /// and whose decisions the sidecar adopts.
  [[nodiscard]] static Result<Decision> dispatch(Router& router, const RouteRequest& request) {
    return router.dispatch(request);
  }
  /// Commits a decision made elsewhere from this table (a client's fast path) exactly as route()
  /// commits its own: in-flight slot, probe, budget reservation, counters, and its prefix is learned.
  [[nodiscard]] static Result<Ok> adopt(Router& router, Decision decision) { return router.adopt(std::move(decision)); }
  /// Checks and prices an outcome of a decision of `scenario` placed on `placed_target` as report()
  /// would, changing nothing (a client's receipt).
  [[nodiscard]] static Result<ReportReceipt> price_outcome(const Router& router, std::uint32_t scenario,
                                                           std::uint32_t placed_target, const OutcomeReport& report) {
    return router.price_outcome(scenario, placed_target, report);
  }
  /// Copies the live state out (into the caller's buffers: no allocation once they are sized).
  static void live_state(const Router& router, std::vector<LiveUnit>& units, std::vector<LiveBudget>& budgets) {
    router.live_state(units, budgets);
  }
  /// Overwrites the live state with a published one.
  static void set_live_state(Router& router, std::span<const LiveUnit> units, std::span<const LiveBudget> budgets) {
    router.set_live_state(units, budgets);
  }
  /// Matches prompts against these (per target; MaaS apart) instead of the router's own directories,
  /// which then learn nothing.
  static void set_prefix_index(Router& router, std::vector<const PrefixIndex*> pools, const PrefixIndex* maas) {
    router.set_prefix_index(std::move(pools), maas);
  }
  /// Tells `observer` every holder-mask change of a directory (target = a pool, kNone = MaaS);
  /// nullptr stops it.
  static void observe_directory(Router& router, std::uint32_t target, MaskObserver* observer) {
    router.observe_directory(target, observer);
  }
  /// Ends the leases of a reaped fast-path client's decisions (ids of ring `ring`): their in-flight
  /// slots, probes and budget reservations are freed now; they stay pending for reports and verdicts.
  /// Returns how many leases it ended.
  static std::size_t release_ring(Router& router, std::uint32_t ring) { return router.release_ring(ring); }
  /// The id the router's next decision gets (a client's ring continues its sequence from it).
  [[nodiscard]] static std::uint64_t next_decision_id(const Router& router) { return router.next_decision_id(); }
};

}  // namespace turnout::detail
