#pragma once
// Mutable routing state: circuit breakers, in-flight counts, budgets, pending decisions and the ledger.
// Plain structs sized from a Config; the Router guards them. Nothing here reads the clock.

#include <array>
#include <climits>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "turnout/config.hpp"
#include "turnout/decision.hpp"
#include "turnout/directory.hpp"
#include "turnout/kv_events.hpp"
#include "turnout/ledger.hpp"
#include "turnout/money.hpp"
#include "turnout/usage.hpp"

namespace turnout {

/// Closed -> open on consecutive failures or a windowed error rate; open -> half-open after a
/// cooldown; half-open lets exactly one probe through, whose outcome closes or re-opens it.
class Breaker {
 public:
  enum class Phase : std::uint8_t { closed, open, half_open };

  /// Whether a request may be sent now (an open breaker past its cooldown becomes half-open).
  [[nodiscard]] bool allows(const BreakerSpec& spec, TimeMs now) const noexcept;
  /// Claims the half-open probe (call after allows() chose this breaker); true if this was the probe.
  bool on_dispatch(const BreakerSpec& spec, TimeMs now) noexcept;
  /// Releases a probe that never reported (decision expired).
  void on_abandoned() noexcept { probe_inflight_ = false; }
  /// Records an outcome; `probe` marks the half-open probe's own outcome.
  void on_outcome(const BreakerSpec& spec, bool failure, bool probe, TimeMs now) noexcept;

  [[nodiscard]] Phase phase(const BreakerSpec& spec, TimeMs now) const noexcept;
  [[nodiscard]] std::uint32_t consecutive_failures() const noexcept { return consecutive_failures_; }
  [[nodiscard]] bool probe_inflight() const noexcept { return probe_inflight_; }
  [[nodiscard]] std::uint64_t times_opened() const noexcept { return times_opened_; }
  /// The stored phase (an open breaker past its cooldown still says open) and when it opened.
  [[nodiscard]] Phase stored_phase() const noexcept { return phase_; }
  [[nodiscard]] TimeMs opened_at() const noexcept { return opened_at_; }
  /// Takes a carried-over state (a reload or restart); the error-rate window restarts empty.
  void restore(Phase phase, bool probe_inflight, TimeMs opened_at, std::uint32_t consecutive_failures,
               std::uint64_t times_opened) noexcept {
    *this = Breaker{};
    phase_ = phase;
    probe_inflight_ = probe_inflight;
    opened_at_ = opened_at;
    consecutive_failures_ = consecutive_failures;
    times_opened_ = times_opened;
  }
  /// Takes the phase another router published (a client mirroring the sidecar's breakers).
  void mirror(Phase phase, bool probe_inflight, TimeMs opened_at) noexcept {
    phase_ = phase;
    probe_inflight_ = probe_inflight;
    opened_at_ = opened_at;
  }

 private:
  static constexpr std::size_t kBuckets = 10;  // the error-rate window, in tenths
  void open(TimeMs now) noexcept;
  void roll_window(const BreakerSpec& spec, TimeMs now) noexcept;

  Phase phase_ = Phase::closed;
  bool probe_inflight_ = false;
  std::uint32_t consecutive_failures_ = 0;
  TimeMs opened_at_ = 0;
  std::uint64_t times_opened_ = 0;
  std::int64_t window_epoch_ = 0;  // index of the newest bucket (now / bucket width)
  std::array<std::uint32_t, kBuckets> outcomes_{};
  std::array<std::uint32_t, kBuckets> failures_{};
};

[[nodiscard]] const char* to_string(Breaker::Phase phase) noexcept;

/// The UTC day a time belongs to (floor division: times before 1970 are days below zero).
[[nodiscard]] constexpr std::int64_t budget_day(TimeMs now) noexcept {
  constexpr std::int64_t kMsPerDay = 86'400'000;
  return now >= 0 ? now / kMsPerDay : -((-now + kMsPerDay - 1) / kMsPerDay);
}

/// A scenario's daily budget: worst-case reservations at decision time, settled with actual cost.
struct BudgetState {
  std::int64_t day = INT64_MIN;  ///< UTC day number the figures belong to (none yet)
  Money spent;
  Money reserved;
};

/// A decision waiting for its outcome(s) and verdict. Reports are idempotent per (decision, target).
/// Its lease (in-flight slot, active blocks, probe, budget reservation) ends at its first outcome or
/// at `lease_until`, whichever comes first; the decision itself waits until decision_ttl.
struct PendingDecision {
  Decision decision;  ///< without its reasons and prefix (not needed after commit)
  std::int64_t budget_day = -1;
  bool lease_open = true;  ///< budget reservation, in-flight slot (and probe) still held
  TimeMs lease_until = 0;
  bool probe = false;              ///< holds the half-open probe of its placement
  std::int64_t active_blocks = 0;  ///< added to its replica's active blocks until released
  std::vector<std::uint32_t> reported_targets;
  std::uint32_t served_target = kNone;  ///< target whose ok report answered the request
  Money served_cost;
  bool verdict_given = false;
};

/// A decision whose outcome is in and whose lease has ended: all its verdict still needs (32 bytes,
/// against several hundred for a PendingDecision), so the verdict window holds at high rates.
struct SettledDecision {
  TimeMs at = 0;
  Money served_cost;
  std::uint32_t scenario = kNone;  ///< kNone: the row is RouterState::retired[served_target]
  std::uint32_t served_target = kNone;
  bool verdict_given = false;
  bool placed = false;  ///< the served target was the decision's placement: its verdict counts in a migration's arm
};

/// A ledger row of a scenario or target the current table no longer has, kept by names.
struct RetiredRow {
  std::string scenario;
  std::string target;
  Counters counters;
};

/// What a pool's KV-event ingestion did, per replica.
struct KvIngestStats {
  std::uint64_t batches = 0;
  std::uint64_t stored = 0;    ///< blocks stored
  std::uint64_t removed = 0;   ///< blocks removed
  std::uint64_t cleared = 0;   ///< AllBlocksCleared and publisher resets
  std::uint64_t orphans = 0;   ///< blocks whose parent was unknown (published before we listened)
  std::uint64_t rejected = 0;  ///< events that did not fit the pool (block size)
  std::uint64_t skipped = 0;   ///< events of KV cache groups that hold no whole prefixes (sliding window...)
  std::uint64_t unusable = 0;  ///< events the decoder dropped (KvEventBatch::unusable); the rest of their batch applied

  /// Each field with its wire name: the one list the stats reply and the Python dicts are written from.
  template <class F>
  void visit_fields(F&& f) const {
    f("batches", batches);
    f("stored", stored);
    f("removed", removed);
    f("cleared", cleared);
    f("orphans", orphans);
    f("rejected", rejected);
    f("skipped_groups", skipped);
    f("unusable", unusable);
  }
};

inline constexpr std::int64_t kDefaultReplicaBlocks = 1 << 18;  ///< when kv.capacity_blocks is unset
inline constexpr std::int64_t kMaasHolderBlocks = 1 << 16;      ///< 8 M tokens of prefixes per MaaS target

/// Recent load: one placement on a replica adds kPlacementWeight to its unit's `recent_load`, and
/// every placement in its pool first takes 1 / (kRecentWindowPerReplica x replicas) off each of the
/// pool's units: a count of the pool's last ~32 placements per replica that decays by placements,
/// not by time, so it reads the same at any rate and a replay of the same traffic gets the same
/// figures. Integers (fixed point), so every process computes them bit for bit alike.
inline constexpr std::int64_t kPlacementWeight = 1 << 16;
inline constexpr std::int64_t kRecentWindowPerReplica = 32;

inline constexpr std::size_t kMaxOtherRuns = 256;

/// Everything the Router mutates, sized from one Config.
struct RouterState {
  explicit RouterState(const Config& config);

  /// Flat index of (target, replica) breakers / in-flight slots: MaaS targets have one unit.
  [[nodiscard]] std::size_t unit(std::uint32_t target, std::uint32_t replica) const noexcept {
    return first_unit[target] + (replica == kNone ? 0 : replica);
  }
  [[nodiscard]] Counters& counters(std::uint32_t scenario, std::uint32_t target) noexcept {
    return ledger[static_cast<std::size_t>(scenario) * target_count + target];
  }
  /// Counts a placement on `replica` of the pool `target` in the pool's recent load.
  void note_placement(const Target& t, std::uint32_t target, std::uint32_t replica) noexcept;
  /// Copies the blocks each replica of the pool `target` holds from its directory into `cache_held`
  /// (unless decide() reads another directory: a fast-path client's, set from the published state).
  void note_held(std::uint32_t target) noexcept;

  std::size_t target_count = 0;
  std::vector<std::size_t> first_unit;
  std::vector<Breaker> breakers;            ///< per unit
  std::vector<std::int64_t> inflight;       ///< per unit
  std::vector<std::int64_t> active_blocks;  ///< per unit: blocks of its in-flight requests
  std::vector<std::int64_t> recent_load;    ///< per unit: its pool's recent placements on it (kPlacementWeight each)
  std::vector<std::int64_t> cache_held;     ///< per unit: blocks its pool's directory holds for it (cache pressure)
  std::vector<std::unique_ptr<CacheDirectory>> pools;  ///< per target: a self-hosted pool's directory
  std::unique_ptr<CacheDirectory> maas;                ///< holders: the MaaS targets
  std::vector<std::uint32_t> maas_holder;              ///< per target: its holder in `maas`, or kNone
  /// What decide() matches prompts against: the directories above, or a client's mapped view of
  /// the sidecar's (then `pools` and `maas` stay empty and are not learned into).
  std::vector<const PrefixIndex*> pool_index;  ///< per target
  const PrefixIndex* maas_index = nullptr;
  std::map<std::uint32_t, std::vector<KvIngestStats>> pool_events;  ///< per pool target, per replica
  std::map<std::uint32_t, std::vector<KvCacheGroups>> pool_groups;  ///< per pool target, per replica: learned kinds
  std::vector<BudgetState> budgets;                                 ///< per scenario
  std::vector<Counters> ledger;                                     ///< scenario-major
  std::vector<std::uint8_t> listed;  ///< per ledger row: carried over, so listed even while zero
  std::vector<RetiredRow> retired;   ///< rows of scenarios/targets this table does not have
  std::unordered_map<std::uint64_t, PendingDecision> pending;
  /// Decision ids, oldest first, for expiry; ids of decisions since settled are skipped (and swept
  /// out when they outnumber the pending ones).
  std::deque<std::uint64_t> pending_order;
  /// Open leases as a min-heap on (lease_until, id); an entry whose lease ended earlier is skipped.
  std::vector<std::pair<TimeMs, std::uint64_t>> leases;
  std::unordered_map<std::uint64_t, SettledDecision> settled;
  std::deque<std::uint64_t> settled_order;  ///< settled ids in the order they settled, for expiry
  /// Per scenario: the candidate's traffic percent of its migration, which decide() weighs the two
  /// routes by (baseline 100 - p, candidate p); 0 and unread for a scenario without a migration.
  std::vector<std::uint32_t> candidate_percent;
  std::vector<MigrationRun> migration_runs;  ///< per scenario: its migration's run (empty without one)
  std::vector<std::uint32_t> migrating;      ///< the scenarios with a migration, in table order
  /// Runs carried over that this table does not use (a block removed, another attempt): kept by
  /// scenario and identity so a table that names them again continues them (kMaxOtherRuns, latest).
  std::vector<MigrationEntry> other_runs;
};

}  // namespace turnout
