#pragma once
// The shared-memory fast path, as both sides see it: the segments' layout and the worker's side. For
// every table generation the sidecar publishes a read-only segment `<shm>.t<generation>` holding the
// routing table's text, a mirror of the live state decide() reads (breakers, in-flight, budgets; one
// seqlock) and a view of each cache directory (block hash -> holder mask, open addressing). A worker
// maps it, decides with the same decide() from the mapped state, and posts what it did (the wire
// protocol's own msgpack: adopt, report, verdict) into its ring in the writable segment `<shm>.rings`.
// The sidecar (sidecar/fastpath.hpp) drains the rings and stays the only writer of tables,
// directories and counters. A route on this path makes no system call.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "turnout/detail/fast_path_access.hpp"
#include "turnout/directory.hpp"
#include "turnout/protocol.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/shm/ring.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::client {

using detail::LiveBudget;  // the live state the table segment mirrors
using detail::LiveUnit;

inline constexpr std::uint64_t kTableMagic = 0x3154424c'544e5254ULL;  // "TRNTLBT1" little-endian
inline constexpr std::uint64_t kRingsMagic = 0x31474e52'544e5254ULL;  // "TRNTRNG1" little-endian
inline constexpr std::uint32_t kFastLayoutVersion = 4;                ///< 4: scenarios carry a migration's percent
inline constexpr std::uint32_t kRingCount = 64;                       ///< client processes on the fast path at once
inline constexpr std::uint32_t kRingBytes = 256U << 10;  ///< per client: ~1,000 routes with 128-block prefixes
using protocol::kFastIdBit;                              ///< fast-path decision ids: bit 63 | ring << 40 | seq
using protocol::kRingShift;
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
  std::atomic<std::int64_t> recent_load;
  std::atomic<std::int64_t> cache_held;
};
struct BudgetWords {
  std::atomic<std::int64_t> day;
  std::atomic<std::int64_t> spent;
  std::atomic<std::int64_t> reserved;
  std::atomic<std::int64_t> candidate_percent;  ///< LiveBudget::candidate_percent
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

/// The rings segment: this header, then kRingCount rings of a shm::RingHeader and kRingBytes of data.
struct alignas(64) RingsHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;
  char fingerprint[128];
  std::uint32_t rings;
  std::uint32_t ring_bytes;
  std::atomic<std::uint32_t> ready;
};

/// The bytes of one ring in the rings segment (its header and data).
[[nodiscard]] constexpr std::size_t ring_stride() { return sizeof(shm::RingHeader) + kRingBytes; }
/// The bytes of the rings segment.
[[nodiscard]] constexpr std::size_t rings_size() {
  return sizeof(RingsHeader) + static_cast<std::size_t>(kRingCount) * ring_stride();
}
/// A block hash as a view stores it: 0 marks an empty slot, so a hash of 0 is stored as 1.
[[nodiscard]] constexpr std::uint64_t stored_key(std::uint64_t hash) { return hash == 0 ? 1 : hash; }

/// The name of the table segment of `generation` of the sidecar that was given `shm`.
[[nodiscard]] std::string table_segment_name(const std::string& shm, std::uint64_t generation);
/// The name of the rings segment of the sidecar that was given `shm`.
[[nodiscard]] std::string rings_segment_name(const std::string& shm);

/// A ring record the sidecar refused (its rejection in the ring header, in the protocol's words).
struct RecordRejection {
  std::uint64_t record = 0;  ///< the number post() gave it
  std::uint64_t decision_id = 0;
  std::optional<protocol::Op> op;  ///< none: not known (a record the sidecar died applying)
  ErrorCode code = ErrorCode::internal;
};

/// What the sidecar made of this client's records so far.
struct RingFeedback {
  std::uint64_t posted = 0;               ///< the number of this ring's last record
  std::uint64_t settled = 0;              ///< records up to this number are applied or refused
  std::uint64_t missed = 0;               ///< rejections overwritten before this client read them (since the last call)
  std::vector<RecordRejection> rejected;  ///< this client's refused records since the last call
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
  /// Posts one wire message (report, verdict) to the ring and returns its record number (what
  /// feedback() speaks of); 0 if the ring is full (or there is no ring).
  [[nodiscard]] std::uint64_t post(std::string_view message);
  /// What the sidecar made of this client's records: how far it settled them, and the ones it refused
  /// since the last call (records of the ring's earlier holders are not this client's).
  [[nodiscard]] RingFeedback feedback();
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
  [[nodiscard]] std::uint64_t post_locked(std::string_view message);
  void mirror_state();  // copies the published live state into the local router if it changed

  std::string shm_;
  std::mutex mu_;
  std::unique_ptr<boost::interprocess::mapped_region> counters_;  // the sidecar's main segment (its header)
  std::unique_ptr<boost::interprocess::mapped_region> rings_;
  shm::RingHeader* my_ring_ = nullptr;
  char* my_data_ = nullptr;
  std::uint32_t ring_ = 0;
  std::uint64_t first_record_ = 0;     // records before this number were posted by the ring's earlier holders
  std::uint64_t seen_rejections_ = 0;  // the ring's rejections read so far
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
  msgpack::sbuffer scratch_{kRingBytes / 2};  // an adopt record: the largest a ring takes, without growing
};

}  // namespace turnout::client
