#pragma once
// The sidecar's shared-memory segment: a fixed POD layout (no allocator in shared memory), one writer
// (the sidecar), any number of read-only readers (turnout.attach). Header at offset 0, then a table
// of counter slots, each a seqlock over the Counters of one scenario x target.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/state.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::sidecar {

inline constexpr std::uint64_t kShmMagic = 0x314d4853'544e5254ULL;  // "TRNTSHM1" little-endian
inline constexpr std::uint32_t kShmLayoutVersion = 1;
inline constexpr std::size_t kShmNameBytes = 64;

/// What one slot holds: names (so a reader needs no config) and the ledger counters.
struct SlotPayload {
  char scenario[kShmNameBytes];
  char target[kShmNameBytes];
  char kind[16];
  char provider[16];
  Counters counters;
};
static_assert(std::is_trivially_copyable_v<SlotPayload>);
inline constexpr std::size_t kSlotWords = (sizeof(SlotPayload) + 7) / 8;

/// A seqlock: odd `seq` = a write in progress. The payload is stored as relaxed atomic words so a
/// concurrent read is a retry, never a data race.
struct alignas(64) Slot {
  std::atomic<std::uint64_t> seq;
  std::atomic<std::uint64_t> words[kSlotWords];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

/// Seqlock-writes `payload` into `slot`. One writer per slot at a time (the sidecar's serving thread).
void write_slot(Slot& slot, const SlotPayload& payload) noexcept;
/// Seqlock-reads `slot` into `out`; false if a write kept overlapping (the caller retries later).
[[nodiscard]] bool read_slot(const Slot& slot, SlotPayload& out) noexcept;

/// Offset 0 of the segment. Plain fields are written once while `ready` is 0.
struct alignas(64) ShmHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;
  std::uint32_t slot_size;
  std::uint32_t payload_size;
  std::uint32_t counters_size;
  std::uint32_t slot_capacity;
  char fingerprint[128];                   ///< compiler and Boost versions the writer was built with
  std::atomic<std::int64_t> creator_pid;   ///< the sidecar that owns the segment now
  std::atomic<std::uint64_t> generation;   ///< bumped on every start and reload
  std::atomic<std::int64_t> heartbeat_ms;  ///< wall clock of the owner, every ~100 ms
  std::atomic<std::uint64_t> config_version;
  std::atomic<std::uint32_t> slot_count;
  std::atomic<std::uint32_t> retired;  ///< 1: this segment was replaced, readers re-open by name
  std::atomic<std::uint32_t> ready;    ///< written last with release, read with acquire
};

/// A counter row by names, as a reader sees it.
struct NamedCounters {
  std::string scenario;
  std::string target;
  std::string kind;
  std::string provider;
  Counters counters;
};

struct HeaderInfo {
  std::int64_t creator_pid = 0;
  std::uint64_t generation = 0;
  std::int64_t heartbeat_ms = 0;
  std::uint64_t config_version = 0;
  bool ready = false;
};

/// The compiler/Boost fingerprint this build writes and expects.
[[nodiscard]] std::string layout_fingerprint();
/// Where the lock file of segment `name` lives (next to the segment, in /dev/shm).
[[nodiscard]] std::string lock_path(const std::string& name);
/// Checks a segment name: 1-200 of [A-Za-z0-9._-].
[[nodiscard]] Result<Ok> check_segment_name(const std::string& name);

/// Creates (replacing any old one) a segment of `size` bytes, mode 0600 whatever the umask, backed
/// for real (a full /dev/shm fails here, not with SIGBUS on first touch) and zeroed.
[[nodiscard]] Result<std::unique_ptr<boost::interprocess::mapped_region>> create_private_segment(
    const std::string& name, std::size_t size);

/// The writer side, owned by the sidecar. Holds the lock file for its whole life.
class Segment {
 public:
  struct Opened {
    std::unique_ptr<Segment> segment;
    std::vector<NamedCounters> recovered;  ///< counters of a dead owner's segment (same layout)
    std::string note;                      ///< what happened, for the log
  };
  /// Takes the lock (fails if a live sidecar holds it), then re-attaches a stale segment with the same
  /// layout and at least `min_slots` slots, or rebuilds it (new generation) and says why.
  [[nodiscard]] static Result<Opened> open(const std::string& name, std::size_t min_slots);
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  [[nodiscard]] std::uint64_t generation() const noexcept;
  [[nodiscard]] std::size_t capacity() const noexcept;
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// Starts a new generation and rewrites every slot from `rows` (start, reload). Readers retry while
  /// it runs. Fails if the table does not fit (the caller rebuilds with a larger segment).
  [[nodiscard]] Result<Ok> publish_all(const Config& config, const std::vector<CounterRow>& rows);
  /// Seqlock-writes one row (after a route or report).
  void publish(const Config& config, const CounterRow& row);
  void heartbeat(std::int64_t now_ms) noexcept;
  /// Starts a new generation (a reload); returns it.
  std::uint64_t advance_generation() noexcept;
  /// Grows the segment: retires this one (readers re-open by name) and creates a bigger one.
  [[nodiscard]] Result<Ok> rebuild(std::size_t min_slots);

 private:
  Segment() = default;
  [[nodiscard]] Result<Ok> create(std::size_t slots, std::uint64_t generation);
  void unmap() noexcept;

  [[nodiscard]] ShmHeader& head() const noexcept { return *static_cast<ShmHeader*>(base_); }
  [[nodiscard]] Slot& slot(std::size_t i) const noexcept;

  std::string name_;
  int lock_fd_ = -1;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  std::unordered_map<std::uint64_t, std::uint32_t> slot_of_;  // (scenario << 32 | target) -> slot
};

/// The reader side (turnout.attach): maps the segment read-only and reads it with the seqlocks.
class SegmentReader {
 public:
  [[nodiscard]] static Result<std::unique_ptr<SegmentReader>> attach(const std::string& name);
  ~SegmentReader();
  SegmentReader(const SegmentReader&) = delete;
  SegmentReader& operator=(const SegmentReader&) = delete;

  /// A consistent snapshot of every row (retries torn reads; re-opens a retired segment). Fails if
  /// the segment stays not-ready for longer than `timeout_ms`.
  [[nodiscard]] Result<std::vector<NamedCounters>> counters(int timeout_ms = 1000);
  [[nodiscard]] HeaderInfo header() const noexcept;
  [[nodiscard]] const std::string& name() const noexcept { return name_; }

 private:
  SegmentReader() = default;
  [[nodiscard]] Result<Ok> map();
  void unmap() noexcept;

  std::string name_;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  const void* base_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace turnout::sidecar
