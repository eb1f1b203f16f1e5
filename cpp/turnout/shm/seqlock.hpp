#pragma once
// The one seqlock of the shared segments: one writer, any number of readers in other processes. The
// guarded words are relaxed atomics, so a read that overlaps a write is retried, never a data race.
// An odd sequence number means a write is in progress.

#include <atomic>
#include <cstdint>
#include <optional>

namespace turnout::shm {

/// One write under `seq`: odd from construction to destruction. Only one writer at a time.
class SeqlockWrite {
 public:
  explicit SeqlockWrite(std::atomic<std::uint64_t>& seq) noexcept
      : seq_(seq), begun_(seq.load(std::memory_order_relaxed)) {
    seq_.store(begun_ + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
  }
  ~SeqlockWrite() { seq_.store(begun_ + 2, std::memory_order_release); }
  SeqlockWrite(const SeqlockWrite&) = delete;
  SeqlockWrite& operator=(const SeqlockWrite&) = delete;

 private:
  std::atomic<std::uint64_t>& seq_;
  std::uint64_t begun_;
};

/// Runs `read` (relaxed loads of the guarded words) until no write overlapped it, at most `attempts`
/// times; `busy` runs instead while a write is in progress. Returns the (even) sequence number the
/// words were read at, or nothing if the writer kept writing (what `read` produced is then torn).
template <class Read, class Busy>
[[nodiscard]] std::optional<std::uint64_t> seqlock_read(const std::atomic<std::uint64_t>& seq, int attempts,
                                                        Read&& read, Busy&& busy) {
  for (int attempt = 0; attempt < attempts; ++attempt) {
    const std::uint64_t before = seq.load(std::memory_order_acquire);
    if ((before & 1U) != 0) {
      busy();
      continue;
    }
    read();
    std::atomic_thread_fence(std::memory_order_acquire);
    if (seq.load(std::memory_order_relaxed) == before) return before;
  }
  return std::nullopt;
}

/// The same without waiting between attempts.
template <class Read>
[[nodiscard]] std::optional<std::uint64_t> seqlock_read(const std::atomic<std::uint64_t>& seq, int attempts,
                                                        Read&& read) {
  return seqlock_read(seq, attempts, static_cast<Read&&>(read), [] {});
}

}  // namespace turnout::shm
