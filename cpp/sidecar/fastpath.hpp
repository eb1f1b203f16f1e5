#pragma once
// The sidecar's side of the shared-memory fast path (its layout and the worker's side:
// turnout/client/fastpath.hpp): it publishes each table generation's segment, mirrors the live state
// and directories into it, and drains what workers post to their rings.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "turnout/client/fastpath.hpp"
#include "turnout/directory.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/shm/ring.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::sidecar {

using detail::LiveBudget;  // the live state the table segment mirrors
using detail::LiveUnit;

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
  client::TableHeader* head_ = nullptr;
  std::vector<std::unique_ptr<View>> views_;
  std::vector<LiveUnit> units_;  // what the segment holds
  std::vector<LiveBudget> budgets_;
  std::vector<LiveUnit> next_units_;
  std::vector<LiveBudget> next_budgets_;
};

/// The sidecar's side of the rings: re-attaches a dead sidecar's rings (their records are still to
/// be applied; a record it died applying is reported to its client as refused, `unavailable`) or
/// creates them. It tells each ring's client what became of its records (shm::RingHeader's feedback).
class RingReader {
 public:
  /// `journaled`: the sidecar journals each record before taking it out (sidecar/state_store.hpp) and
  /// has replayed the journal, so a record the dead sidecar took out was applied: settled, not refused.
  [[nodiscard]] static Result<std::unique_ptr<RingReader>> open(const std::string& shm, bool journaled = false);
  ~RingReader();
  RingReader(const RingReader&) = delete;
  RingReader& operator=(const RingReader&) = delete;

  /// What drain() does with each record and each reaped ring.
  struct Visitor {
    std::function<void(std::uint32_t ring, std::string_view)> keep;  ///< before the ring lets go of it (journal)
    std::function<shm::RecordFate(std::uint32_t ring, std::string_view)> apply;  ///< after: what became of it
    std::function<void(std::uint32_t ring)> reaped;                              ///< a dead client's ring was freed
  };
  /// Hands every waiting record to `apply` (at most `budget` of them), which answers what became of
  /// it (a refused record is written to its ring's rejections for the client to read); frees rings of
  /// dead clients once empty. Returns how many records it applied.
  /// Each record is copied out and consumed before `apply` sees it: a record that brings the sidecar
  /// down is not applied twice (nor forever).
  std::size_t drain(const std::function<shm::RecordFate(std::uint32_t ring, std::string_view)>& apply,
                    std::size_t budget = 4096);
  /// The same, with `keep` seeing each record before it is consumed and `reaped` each freed ring.
  std::size_t drain(const Visitor& visit, std::size_t budget = 4096);
  [[nodiscard]] std::uint32_t clients() const noexcept;
  /// Makes ring `ring`'s next decision sequence at least `seq`: a rings segment made anew (a
  /// reboot) must not hand out the ids of decisions the recovered state still holds.
  void raise_sequence(std::uint32_t ring, std::uint64_t seq) noexcept;

 private:
  RingReader() = default;
  std::string name_;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  char* base_ = nullptr;
  std::int64_t last_reap_ms_ = 0;
  std::string record_;  // the record being applied, out of shared memory
  std::uint32_t first_ring_ = 0;
};

}  // namespace turnout::sidecar
