#pragma once
// The local decisions the sidecar has imported (the settle_local op), by the client's spool id, so
// that an entry re-sent after a lost reply is applied once. Kept in the private segment
// `<shm>.settled` (like the counters, it survives a sidecar crash): a restarted sidecar still knows
// them. The last kCapacity imports are remembered, far more than a client's spool holds.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "turnout/result.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::sidecar {

class LocalSettlements {
 public:
  static constexpr std::uint64_t kCapacity = 1U << 16;  ///< imports remembered (1 MiB)

  /// Maps the segment of sidecar `shm` (re-reading what a previous sidecar remembered) or creates it.
  [[nodiscard]] static Result<std::unique_ptr<LocalSettlements>> open(const std::string& shm);
  ~LocalSettlements();
  LocalSettlements(const LocalSettlements&) = delete;
  LocalSettlements& operator=(const LocalSettlements&) = delete;

  /// The sidecar's decision id of spool entry `spool_id`, if it was imported.
  [[nodiscard]] std::optional<std::uint64_t> find(std::uint64_t spool_id) const;
  /// Remembers an import (the oldest is forgotten once kCapacity are held).
  void remember(std::uint64_t spool_id, std::uint64_t decision_id);
  /// What is remembered, oldest first (a snapshot keeps it: the segment does not survive a reboot).
  [[nodiscard]] std::vector<std::pair<std::uint64_t, std::uint64_t>> entries() const;
  /// The next sequence number of an imported decision's id (protocol::kImportedIdBit).
  [[nodiscard]] std::uint64_t next_sequence() noexcept { return ++sequence_; }

 private:
  struct Header;
  struct Entry;
  LocalSettlements() = default;
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  Header* head_ = nullptr;
  Entry* entries_ = nullptr;
  std::unordered_map<std::uint64_t, std::uint64_t> index_;  // spool id -> decision id
  std::uint64_t sequence_ = 0;
};

}  // namespace turnout::sidecar
