#pragma once
// A single-producer single-consumer ring of byte records in shared memory. Records are a 4-byte
// length and the bytes, padded to 8; a length of ~0 means "wrap to the start". The cursors count
// bytes ever written and consumed, so `head - tail` is what waits. The capacity is a compile-time
// power of two: positions are masks, not divisions, on the producer's hot path.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace turnout::shm {

inline constexpr std::uint32_t kRingWrap = 0xFFFFFFFFU;  ///< the length that sends the reader to the start

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
};

/// Appends one record to the ring whose `Bytes` of data follow at `data`; false if it is empty, larger
/// than half the ring, or does not fit now (counted in `full`). No allocation, no system call.
template <std::uint64_t Bytes>
[[nodiscard]] bool ring_push(RingHeader& ring, char* data, std::string_view message) noexcept {
  static_assert(Bytes % 8 == 0);
  if (message.empty()) return false;  // a zero length marks a corrupt ring to the reader
  const std::uint64_t need = (4 + message.size() + 7) & ~std::uint64_t{7};
  if (need > Bytes / 2) return false;
  std::uint64_t head = ring.head.load(std::memory_order_relaxed);
  const std::uint64_t tail = ring.tail.load(std::memory_order_acquire);
  const std::uint64_t pos = head % Bytes;
  const std::uint64_t skip = Bytes - pos < need ? Bytes - pos : 0;
  if (need + skip > Bytes - (head - tail)) {
    ring.full.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (skip != 0) {
    std::memcpy(data + pos, &kRingWrap, sizeof kRingWrap);
    head += skip;
  }
  const auto len = static_cast<std::uint32_t>(message.size());
  std::memcpy(data + head % Bytes, &len, sizeof len);
  std::memcpy(data + head % Bytes + 4, message.data(), message.size());
  ring.head.store(head + need, std::memory_order_release);
  ring.posted.fetch_add(1, std::memory_order_relaxed);
  return true;
}

/// What one ring_drain() did.
struct RingDrained {
  std::size_t applied = 0;
  bool empty = false;  ///< nothing is left to read (as of the head it started from)
};

/// Hands at most `budget` waiting records of the ring at `data` to `apply(record)`. Each record is
/// copied into `record` and consumed before `apply` sees it: a record that brings the consumer down
/// is not applied twice (nor forever). A corrupt or torn ring drops what it cannot read.
template <std::uint64_t Bytes, class Apply>
RingDrained ring_drain(RingHeader& ring, const char* data, std::string& record, std::size_t budget, Apply&& apply) {
  RingDrained out;
  const std::uint64_t head = ring.head.load(std::memory_order_acquire);
  std::uint64_t tail = ring.tail.load(std::memory_order_relaxed);
  if (head - tail > Bytes) tail = head;  // a corrupt ring: skip what cannot be read
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
      break;
    }
    record.assign(data + pos + 4, len);
    tail += (4 + std::uint64_t{len} + 7) & ~std::uint64_t{7};
    ring.tail.store(tail, std::memory_order_release);
    apply(std::string_view(record));
    ++out.applied;
  }
  ring.tail.store(tail, std::memory_order_release);
  out.empty = tail == head;
  return out;
}

}  // namespace turnout::shm
