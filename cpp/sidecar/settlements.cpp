#include "sidecar/settlements.hpp"

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>

#include "turnout/shm/segment.hpp"

namespace turnout::sidecar {

namespace {
constexpr std::uint64_t kMagic = 0x31444c54'544e5254ULL;  // "TRNTTLD1" little-endian
}

struct LocalSettlements::Header {
  std::uint64_t magic;
  std::uint64_t capacity;
  std::atomic<std::uint64_t> count;  ///< imports remembered, ever (the n-th at n % capacity)
};
struct LocalSettlements::Entry {
  std::uint64_t spool_id;  ///< 0: empty
  std::uint64_t decision_id;
};

Result<std::unique_ptr<LocalSettlements>> LocalSettlements::open(const std::string& shm) {
  const std::string name = shm + ".settled";
  const std::size_t size = sizeof(Header) + kCapacity * sizeof(Entry);
  std::unique_ptr<LocalSettlements> s(new LocalSettlements());
  if (auto old = shm::map_private_segment(name, true); old && old.value()->get_size() >= size) {
    const auto& h = *static_cast<const Header*>(old.value()->get_address());
    if (h.magic == kMagic && h.capacity == kCapacity) s->region_ = std::move(old).value();
  }
  if (!s->region_) {
    auto created = shm::create_private_segment(name, size);
    if (!created) return std::move(created).error();
    s->region_ = std::move(created).value();
    auto& h = *static_cast<Header*>(s->region_->get_address());
    h.magic = kMagic;
    h.capacity = kCapacity;
  }
  s->head_ = static_cast<Header*>(s->region_->get_address());
  s->entries_ = reinterpret_cast<Entry*>(static_cast<char*>(s->region_->get_address()) + sizeof(Header));
  for (std::uint64_t i = 0; i < kCapacity; ++i) {
    if (s->entries_[i].spool_id != 0) s->index_[s->entries_[i].spool_id] = s->entries_[i].decision_id;
  }
  return s;
}

LocalSettlements::~LocalSettlements() = default;

std::optional<std::uint64_t> LocalSettlements::find(std::uint64_t spool_id) const {
  const auto it = index_.find(spool_id);
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> LocalSettlements::entries() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  const std::uint64_t n = head_->count.load(std::memory_order_relaxed);
  for (std::uint64_t i = n > kCapacity ? n - kCapacity : 0; i < n; ++i) {
    const Entry& e = entries_[i % kCapacity];
    if (e.spool_id != 0) out.emplace_back(e.spool_id, e.decision_id);
  }
  return out;
}

void LocalSettlements::remember(std::uint64_t spool_id, std::uint64_t decision_id) {
  const std::uint64_t n = head_->count.load(std::memory_order_relaxed);
  Entry& e = entries_[n % kCapacity];
  if (e.spool_id != 0) index_.erase(e.spool_id);
  e.decision_id = decision_id;
  e.spool_id = spool_id;
  head_->count.store(n + 1, std::memory_order_release);
  index_[spool_id] = decision_id;
}

}  // namespace turnout::sidecar
