#pragma once
// The writer of the sidecar's counter segment (its layout and reader: turnout/client/counters.hpp).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "turnout/client/counters.hpp"
#include "turnout/ledger.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/state.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::sidecar {

/// The writer side, owned by the sidecar. Holds the lock file for its whole life.
class Segment {
 public:
  struct Opened {
    std::unique_ptr<Segment> segment;
    std::vector<client::NamedCounters> recovered;  ///< counters of a dead owner's segment (same layout)
    std::string note;                              ///< what happened, for the log
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
  /// Starts `generation` (a reload that keeps this segment).
  void begin_generation(std::uint64_t generation) noexcept;
  /// Grows the segment under `generation`, all or nothing: the bigger one is created beside this one
  /// (`<name>.next`, reserved in full), renamed over its name (clients open by name: they find one
  /// or the other, never none), and only then is this one retired (readers re-open by name) and
  /// unmapped. On error (a full /dev/shm) nothing changed: this segment and its rows still serve.
  [[nodiscard]] Result<Ok> rebuild(std::size_t min_slots, std::uint64_t generation);

 private:
  Segment() = default;
  [[nodiscard]] Result<Ok> create(std::size_t slots, std::uint64_t generation);
  /// Maps `region` as this segment (its rows are published again by publish_all).
  void adopt(std::unique_ptr<boost::interprocess::mapped_region> region) noexcept;
  void unmap() noexcept;

  [[nodiscard]] client::ShmHeader& head() const noexcept { return *static_cast<client::ShmHeader*>(base_); }
  [[nodiscard]] client::Slot& slot(std::size_t i) const noexcept;

  std::string name_;
  int lock_fd_ = -1;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  std::unordered_map<std::uint64_t, std::uint32_t> slot_of_;  // (scenario << 32 | target) -> slot
};

}  // namespace turnout::sidecar
