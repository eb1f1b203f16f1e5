#pragma once
// A single-producer single-consumer ring of byte records in shared memory. Records are a 4-byte
// length and the bytes, padded to 8; a length of ~0 means "wrap to the start". The cursors count
// bytes ever written and consumed, so `head - tail` is what waits. The capacity is a compile-time
// power of two: positions are masks, not divisions, on the producer's hot path.
//
// Records are numbered from 1 in push order (`posted` is the last number given). The consumer tells
// the producer what became of them: `settled` is the last record whose fate is known, and a failed
// record leaves a RingRejection (its number, decision id, op and error code) in a small ring of its
// own, so a producer can learn that a record it was not answered for was refused.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace turnout::shm {

inline constexpr std::uint32_t kRingWrap = 0xFFFFFFFFU;  ///< the length that sends the reader to the start
inline constexpr std::uint32_t kRingRejections = 64;     ///< rejections a ring keeps for its producer to read

/// One refused record, written by the consumer (`record` last: a reader sees it change on a rewrite).
struct RingRejection {
  std::atomic<std::uint64_t> decision_id;
  std::atomic<std::uint32_t> code;  ///< the consumer's error code
  std::atomic<std::uint32_t> op;    ///< the consumer's op number
  std::atomic<std::uint64_t> record;
};

/// What the consumer made of one record (its apply's answer).
struct RecordFate {
  bool applied = true;
  std::uint64_t decision_id = 0;
  std::uint32_t code = 0;
  std::uint32_t op = 0;
};

/// A ring's header: who holds it and the two cursors, each on its own cache line. `next_seq` is the
/// producer's own counter, kept here so that the next holder of the ring continues it.
// NOLINTNEXTLINE(clang-analyzer-optin.performance.Padding): the padding keeps producer and consumer apart
struct alignas(64) RingHeader {
  std::atomic<std::int64_t> owner_pid;  ///< 0 = free
  std::atomic<std::uint64_t> next_seq;  ///< the next decision sequence number of this ring
  std::atomic<std::uint64_t> posted;
  std::atomic<std::uint64_t> full;              ///< records refused because the ring was full
  alignas(64) std::atomic<std::uint64_t> head;  ///< bytes written, ever (the producer's)
  alignas(64) std::atomic<std::uint64_t> tail;  ///< bytes consumed, ever (the consumer's)
  // The consumer's feedback (only it writes these).
  alignas(64) std::atomic<std::uint64_t> consumed;  ///< records taken out of the ring, ever
  std::atomic<std::uint64_t> settled;               ///< records whose fate is known (applied or rejected), ever
  std::atomic<std::uint64_t> rejections;            ///< rejections written, ever (the n-th at n % kRingRejections)
  RingRejection rejected[kRingRejections];
};

/// The consumer's record of a refused record `record` (its number) and its settling.
inline void ring_reject(RingHeader& ring, std::uint64_t record, const RecordFate& fate) noexcept {
  const std::uint64_t n = ring.rejections.load(std::memory_order_relaxed);
  RingRejection& r = ring.rejected[n % kRingRejections];
  r.record.store(0, std::memory_order_relaxed);  // a reader racing the rewrite sees 0 and skips it
  std::atomic_thread_fence(std::memory_order_release);
  r.decision_id.store(fate.decision_id, std::memory_order_relaxed);
  r.code.store(fate.code, std::memory_order_relaxed);
  r.op.store(fate.op, std::memory_order_relaxed);
  r.record.store(record, std::memory_order_release);
  ring.rejections.store(n + 1, std::memory_order_release);
}

/// After a consumer crash: a record taken out but never settled was perhaps applied, perhaps not;
/// it is reported as refused with `fate` (its producer cannot count it as confirmed).
inline void ring_recover(RingHeader& ring, const RecordFate& fate) noexcept {
  const std::uint64_t consumed = ring.consumed.load(std::memory_order_relaxed);
  for (std::uint64_t n = ring.settled.load(std::memory_order_relaxed) + 1; n <= consumed; ++n) {
    ring_reject(ring, n, fate);
  }
  ring.settled.store(consumed, std::memory_order_release);
}

/// Appends one record to the ring whose `Bytes` of data follow at `data` and returns its number; 0 if
/// it is empty, larger than half the ring, or does not fit now (counted in `full`). No allocation, no
/// system call.
template <std::uint64_t Bytes>
[[nodiscard]] std::uint64_t ring_push(RingHeader& ring, char* data, std::string_view message) noexcept {
  static_assert(Bytes % 8 == 0);
  if (message.empty()) return 0;  // a zero length marks a corrupt ring to the reader
  const std::uint64_t need = (4 + message.size() + 7) & ~std::uint64_t{7};
  if (need > Bytes / 2) return 0;
  std::uint64_t head = ring.head.load(std::memory_order_relaxed);
  const std::uint64_t tail = ring.tail.load(std::memory_order_acquire);
  const std::uint64_t pos = head % Bytes;
  const std::uint64_t skip = Bytes - pos < need ? Bytes - pos : 0;
  if (need + skip > Bytes - (head - tail)) {
    ring.full.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  if (skip != 0) {
    std::memcpy(data + pos, &kRingWrap, sizeof kRingWrap);
    head += skip;
  }
  const auto len = static_cast<std::uint32_t>(message.size());
  std::memcpy(data + head % Bytes, &len, sizeof len);
  std::memcpy(data + head % Bytes + 4, message.data(), message.size());
  const std::uint64_t record = ring.posted.load(std::memory_order_relaxed) + 1;  // the producer's own counter
  ring.posted.store(record, std::memory_order_relaxed);
  ring.head.store(head + need, std::memory_order_release);
  return record;
}

/// What one ring_drain() did.
struct RingDrained {
  std::size_t applied = 0;
  bool empty = false;  ///< nothing is left to read (as of the head it started from)
};

/// Nothing to do with a record before it is consumed.
struct KeepNothing {
  void operator()(std::string_view /*record*/) const noexcept {}
};

/// Hands at most `budget` waiting records of the ring at `data` to `apply(record)`, which answers its
/// RecordFate: a refused record is written to the ring's rejections, and each record is settled. Each
/// record is copied into `record`, handed to `keep` (the sidecar journals it: a crash after this finds
/// it journaled or still in the ring) and consumed before `apply` sees it: a record that brings the
/// consumer down is not applied twice (nor forever; ring_recover settles it). A corrupt or torn ring
/// drops what it cannot read, and its numbering starts again from what the producer posted.
template <std::uint64_t Bytes, class Apply, class Keep = KeepNothing>
RingDrained ring_drain(RingHeader& ring, const char* data, std::string& record, std::size_t budget, Apply&& apply,
                       Keep&& keep = {}) {
  RingDrained out;
  const std::uint64_t head = ring.head.load(std::memory_order_acquire);
  std::uint64_t tail = ring.tail.load(std::memory_order_relaxed);
  std::uint64_t consumed = ring.consumed.load(std::memory_order_relaxed);
  auto resync = [&] {  // records dropped unread: none of them can be settled one by one
    consumed = ring.posted.load(std::memory_order_acquire);
    ring.consumed.store(consumed, std::memory_order_relaxed);
    ring.settled.store(consumed, std::memory_order_release);
  };
  if (head - tail > Bytes) {  // a corrupt ring: skip what cannot be read
    tail = head;
    resync();
  }
  while (tail < head && out.applied < budget) {
    const std::uint64_t pos = tail % Bytes;
    std::uint32_t len = 0;
    std::memcpy(&len, data + pos, sizeof len);
    if (len == kRingWrap) {
      tail += Bytes - pos;
      continue;
    }
    if (pos + 4 + len > Bytes || len == 0) {  // torn or corrupt: drop the rest of this ring
      tail = head;
      resync();
      break;
    }
    record.assign(data + pos + 4, len);
    keep(std::string_view(record));
    tail += (4 + std::uint64_t{len} + 7) & ~std::uint64_t{7};
    ring.consumed.store(++consumed, std::memory_order_relaxed);
    ring.tail.store(tail, std::memory_order_release);
    const RecordFate fate = apply(std::string_view(record));
    if (!fate.applied) ring_reject(ring, consumed, fate);
    ring.settled.store(consumed, std::memory_order_release);
    ++out.applied;
  }
  ring.tail.store(tail, std::memory_order_release);
  out.empty = tail == head;
  return out;
}

}  // namespace turnout::shm
