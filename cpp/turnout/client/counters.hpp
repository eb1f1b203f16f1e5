#pragma once
// The counter segment's layout and its reader. The sidecar writes the segment (sidecar/shm.hpp); any
// number of read-only readers (turnout.attach) read it. A fixed POD layout (no allocator in shared
// memory): header at offset 0, then a table of counter slots, each a seqlock over the Counters of one
// scenario x target.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "turnout/ledger.hpp"
#include "turnout/result.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::client {

inline constexpr std::uint64_t kShmMagic = 0x314d4853'544e5254ULL;  // "TRNTSHM1" little-endian
inline constexpr std::uint32_t kShmLayoutVersion = 1;
inline constexpr std::size_t kShmNameBytes = 64;

/// What one slot holds: names and the scenario's objectives (so a reader needs no config) and the
/// ledger counters.
struct SlotPayload {
  char scenario[kShmNameBytes];
  char target[kShmNameBytes];
  char kind[16];
  char provider[16];
  Objectives objectives;
  Counters counters;
};
static_assert(std::is_trivially_copyable_v<SlotPayload>);
inline constexpr std::size_t kSlotWords = (sizeof(SlotPayload) + 7) / 8;

/// A seqlock (turnout/shm/seqlock.hpp): odd `seq` = a write in progress. The payload is stored as relaxed atomic words
/// so a concurrent read is a retry, never a data race.
struct alignas(64) Slot {
  std::atomic<std::uint64_t> seq;
  std::atomic<std::uint64_t> words[kSlotWords];
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);

/// Offset 0 of the segment. Plain fields are written once while `ready` is 0.
struct alignas(64) ShmHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;
  std::uint32_t slot_size;
  std::uint32_t payload_size;
  std::uint32_t counters_size;
  std::uint32_t slot_capacity;
  char fingerprint[128];                   ///< ledger field list, compiler and Boost versions of the writer
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
  Objectives objectives;  ///< of the scenario, as the table the row was published with states them
};

/// The header's live fields, as a reader sees them.
struct HeaderInfo {
  std::int64_t creator_pid = 0;
  std::uint64_t generation = 0;
  std::int64_t heartbeat_ms = 0;
  std::uint64_t config_version = 0;
  bool ready = false;
};

inline constexpr std::size_t kSlotsOffset = sizeof(ShmHeader);  ///< where slot 0 starts
static_assert(kSlotsOffset % alignof(Slot) == 0);

/// The bytes a segment of `slots` slots takes.
[[nodiscard]] constexpr std::size_t counters_segment_size(std::size_t slots) {
  return kSlotsOffset + slots * sizeof(Slot);
}

/// A fixed-size name field as a string (up to its first NUL).
template <std::size_t N>
[[nodiscard]] std::string read_name(const char (&src)[N]) {
  return {src, strnlen(src, N)};
}

/// The fingerprint this build writes and expects: its ledger field list (ledger_fingerprint()),
/// compiler and Boost versions.
[[nodiscard]] std::string layout_fingerprint();
/// Whether a segment's fingerprint field holds this build's layout_fingerprint().
template <std::size_t N>
[[nodiscard]] bool same_fingerprint(const char (&src)[N]) {
  return std::string(src, strnlen(src, N)) == layout_fingerprint();
}
/// The layout check shared by writer (stale segment) and reader: why a header of a segment of
/// `mapped` bytes is not this build's layout, or empty if it is.
[[nodiscard]] std::string layout_mismatch(const ShmHeader& h, std::size_t mapped);
/// Seqlock write of one slot (one writer per slot at a time: the sidecar's serving thread).
void write_slot(Slot& s, const SlotPayload& payload) noexcept;
/// Seqlock read of one slot; false if it kept changing (the caller retries the whole snapshot).
[[nodiscard]] bool read_slot(const Slot& s, SlotPayload& out);
/// Maps the counters segment `name` read-only (map_private_segment) if its header is this build's
/// layout (magic, version, sizes, fingerprint): incompatible_layout otherwise.
[[nodiscard]] Result<std::unique_ptr<boost::interprocess::mapped_region>> map_counters_segment(const std::string& name);

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

}  // namespace turnout::client
