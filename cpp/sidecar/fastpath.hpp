#pragma once
// The shared-memory fast path. For every table generation the sidecar publishes a read-only segment
// `<shm>.t<generation>` holding the routing table's text, a mirror of the live state decide() reads
// (breakers, in-flight, budgets; one seqlock) and a view of each cache directory (block hash -> holder
// mask, open addressing). A worker maps it, decides with the same decide() from the mapped state, and
// posts what it did (the wire protocol's own msgpack: adopt, report, verdict) into its ring in the
// writable segment `<shm>.rings`. The sidecar drains the rings and stays the only writer of tables,
// directories and counters. A route on this path makes no system call.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "turnout/detail/fast_path_access.hpp"
#include "turnout/directory.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::sidecar {

using detail::LiveBudget;  // the live state the table segment mirrors
using detail::LiveUnit;

inline constexpr std::uint64_t kTableMagic = 0x3154424c'544e5254ULL;  // "TRNTLBT1" little-endian
inline constexpr std::uint64_t kRingsMagic = 0x31474e52'544e5254ULL;  // "TRNTRNG1" little-endian
inline constexpr std::uint32_t kFastLayoutVersion = 1;
inline constexpr std::uint32_t kRingCount = 64;          ///< client processes on the fast path at once
inline constexpr std::uint32_t kRingBytes = 256U << 10;  ///< per client: ~1,000 routes with 128-block prefixes
inline constexpr std::uint64_t kFastIdBit = 1ULL << 63;  ///< fast-path decision ids: bit 63 | ring << 40 | seq
inline constexpr int kRingShift = 40;
inline constexpr std::size_t kMaxPostedBlocks = 4096;       ///< prefix blocks an adopt record carries at most
inline constexpr std::uint64_t kMaxViewSlots = 1ULL << 22;  ///< 64 MiB per directory view at most

/// Offset 0 of a table segment. Plain fields are written once, before `ready`.
struct alignas(64) TableHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;
  char fingerprint[128];
  std::uint64_t generation;
  std::uint64_t config_version;
  std::uint64_t seed;
  std::uint64_t bytes;
  std::uint64_t text_offset, text_bytes, source_offset, source_bytes;
  std::uint64_t units_offset, budgets_offset, views_offset;
  std::uint32_t units, scenarios, views, reserved;
  std::atomic<std::uint64_t> state_seq;  ///< seqlock over the unit and budget words (odd: being written)
  std::atomic<std::uint32_t> retired;    ///< 1: a newer table replaced this one
  std::atomic<std::uint32_t> ready;
};

/// One (target, replica) unit of the live-state mirror.
struct UnitWords {
  std::atomic<std::int64_t> phase_probe;  ///< phase | probe_inflight << 8
  std::atomic<std::int64_t> opened_at;
  std::atomic<std::int64_t> inflight;
  std::atomic<std::int64_t> active_blocks;
};
struct BudgetWords {
  std::atomic<std::int64_t> day;
  std::atomic<std::int64_t> spent;
  std::atomic<std::int64_t> reserved;
  std::atomic<std::int64_t> unused;
};

/// One directory's view: `slots` (a power of two) of {key, mask} at `offset`. Keys are never reused
/// while readers may look (a deleted block keeps its key with mask 0) except in a rehash, which runs
/// under `seq` odd.
struct alignas(64) ViewHeader {
  std::uint32_t target;  ///< the pool's target index, or kNone for the MaaS directory
  std::uint32_t holders;
  std::uint64_t slots;
  std::uint64_t offset;
  std::atomic<std::uint64_t> seq;
  std::atomic<std::uint64_t> used;     ///< keys present (live or deleted)
  std::atomic<std::uint64_t> dropped;  ///< mask changes not recorded (view full even after a rehash)
};
struct ViewSlot {
  std::atomic<std::uint64_t> key;  ///< 0 = empty (a block hash of 0 is stored as 1)
  std::atomic<std::uint64_t> mask;
};

/// A client's ring: single producer (the client), single consumer (the sidecar). Records are a
/// 4-byte length and the bytes, padded to 8; a length of ~0 means "wrap to the start".
struct alignas(64) RingHeader {
  std::atomic<std::int64_t> owner_pid;  ///< 0 = free
  std::atomic<std::uint64_t> next_seq;  ///< the next decision sequence number of this ring
  std::atomic<std::uint64_t> posted;
  std::atomic<std::uint64_t> full;              ///< records refused because the ring was full
  alignas(64) std::atomic<std::uint64_t> head;  ///< bytes written, ever (the client's)
  alignas(64) std::atomic<std::uint64_t> tail;  ///< bytes consumed, ever (the sidecar's)
};
struct alignas(64) RingsHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;
  char fingerprint[128];
  std::uint32_t rings;
  std::uint32_t ring_bytes;
  std::atomic<std::uint32_t> ready;
};

[[nodiscard]] std::string table_segment_name(const std::string& shm, std::uint64_t generation);
[[nodiscard]] std::string rings_segment_name(const std::string& shm);

/// The sidecar's writer of one table generation's segment. Registers itself as the observer of the
/// router's directories: every mask change lands in the views as it happens.
class TablePublisher {
 public:
  [[nodiscard]] static Result<std::unique_ptr<TablePublisher>> create(const std::string& shm, std::uint64_t generation,
                                                                      Router& router, std::uint64_t seed);
  ~TablePublisher();  ///< retires and unlinks the segment (mapped readers keep their copy)
  TablePublisher(const TablePublisher&) = delete;
  TablePublisher& operator=(const TablePublisher&) = delete;

  /// Writes the router's live state if it changed (after each route, report, drained ring).
  void publish_state(const Router& router);
  /// Stops observing `router`'s directories (before the router or this publisher goes away).
  void detach(Router& router);
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  [[nodiscard]] std::uint64_t dropped() const noexcept;

 private:
  class View;
  TablePublisher() = default;

  std::string name_;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  TableHeader* head_ = nullptr;
  std::vector<std::unique_ptr<View>> views_;
  std::vector<LiveUnit> units_;  // what the segment holds
  std::vector<LiveBudget> budgets_;
  std::vector<LiveUnit> next_units_;
  std::vector<LiveBudget> next_budgets_;
};

/// The sidecar's side of the rings: re-attaches a dead sidecar's rings (their records are still to
/// be applied) or creates them.
class RingReader {
 public:
  [[nodiscard]] static Result<std::unique_ptr<RingReader>> open(const std::string& shm);
  ~RingReader();
  RingReader(const RingReader&) = delete;
  RingReader& operator=(const RingReader&) = delete;

  /// Hands every waiting record to `apply` (at most `budget` of them); frees rings of dead clients
  /// once empty. Returns how many records it applied.
  /// Each record is copied out and consumed before `apply` sees it: a record that brings the sidecar
  /// down is not applied twice (nor forever).
  std::size_t drain(const std::function<void(std::uint32_t ring, std::string_view)>& apply, std::size_t budget = 4096);
  [[nodiscard]] std::uint32_t clients() const noexcept;

 private:
  RingReader() = default;
  std::string name_;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  char* base_ = nullptr;
  std::int64_t last_reap_ms_ = 0;
  std::string record_;  // the record being applied, out of shared memory
  std::uint32_t first_ring_ = 0;
};

/// The worker's side: decides from the mapped table and posts to its own ring. Thread-safe.
class FastClient {
 public:
  /// Maps the sidecar's segments (`shm` as given to the sidecar) and claims a ring; without
  /// `claim_ring` it only reads (explain() and config(), no route()).
  [[nodiscard]] static Result<std::unique_ptr<FastClient>> attach(const std::string& shm, bool claim_ring = true);
  ~FastClient();  ///< releases the ring (the sidecar drains what is left)
  FastClient(const FastClient&) = delete;
  FastClient& operator=(const FastClient&) = delete;

  /// Decides locally and posts the decision; `unavailable` if the ring is full or no table is mapped
  /// (the caller then routes through the socket).
  [[nodiscard]] Result<Decision> route(const RouteRequest& request, ConfigPtr* decided_by = nullptr);
  /// The mapped table (the one the next route decides from, as of the last route).
  [[nodiscard]] ConfigPtr config();
  /// What route() would decide now from the mapped table and state, committing and posting nothing.
  [[nodiscard]] Result<Decision> explain(const RouteRequest& request, ConfigPtr* decided_by = nullptr);
  /// Posts one wire message (report, verdict) to the ring; false if the ring is full (or no ring).
  [[nodiscard]] bool post(std::string_view message);
  /// What report() would answer for an outcome of one of this client's recent decisions (priced by
  /// the same code, from the table that decided it), without a round trip. `duplicate` is never set
  /// here, and an unknown fallback target is only refused by the sidecar.
  [[nodiscard]] Result<ReportReceipt> receipt(const OutcomeReport& report);
  [[nodiscard]] std::uint64_t generation() const;
  [[nodiscard]] std::uint32_t ring() const noexcept { return ring_; }

 private:
  class MappedView;
  struct Table;
  FastClient() = default;
  [[nodiscard]] Result<Ok> refresh();  // re-maps the table when the sidecar published a new one
  [[nodiscard]] bool post_locked(std::string_view message);
  void mirror_state();  // copies the published live state into the local router if it changed

  std::string shm_;
  std::mutex mu_;
  std::unique_ptr<boost::interprocess::mapped_region> counters_;  // the sidecar's main segment (its header)
  std::unique_ptr<boost::interprocess::mapped_region> rings_;
  RingHeader* my_ring_ = nullptr;
  char* my_data_ = nullptr;
  std::uint32_t ring_ = 0;
  std::unique_ptr<Table> table_;
  std::shared_ptr<Router> previous_;  // the local router of the table before the last reload
  std::uint64_t previous_generation_ = 0;
  std::chrono::steady_clock::time_point retry_after_{};  // when to look for a new table again
  struct Recent {
    std::uint64_t id = 0;
    std::uint32_t scenario = 0;
    std::uint32_t target = 0;
    std::uint64_t generation = 0;  // of the table that decided it (the current or the previous)
  };
  static constexpr std::size_t kRecent = 1U << 16;  // decisions a receipt can be given for
  std::vector<Recent> recent_ = std::vector<Recent>(kRecent);
  std::vector<char> scratch_ = std::vector<char>(kRingBytes / 2);  // the largest record a ring takes
};

}  // namespace turnout::sidecar
