#include "sidecar/fastpath.hpp"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <span>

#include "turnout/client/counters.hpp"
#include "turnout/config.hpp"
#include "turnout/shm/ring.hpp"
#include "turnout/shm/segment.hpp"
#include "turnout/shm/seqlock.hpp"

namespace turnout::sidecar {

using detail::FastPathAccess;

namespace bip = boost::interprocess;
using namespace turnout::client;  // the layout this side writes
using shm::create_private_segment;
using shm::map_private_segment;

namespace {

constexpr std::uint64_t align64(std::uint64_t n) { return (n + 63) & ~std::uint64_t{63}; }

template <std::size_t N>
void put_fingerprint(char (&dst)[N]) {
  const std::string fp = layout_fingerprint();
  std::memset(dst, 0, N);
  std::memcpy(dst, fp.data(), std::min(fp.size(), N - 1));
}

// Seqlock-protected copy of the live state, into the table (workers read it).
void write_state(TableHeader& h, std::span<UnitWords> units, std::span<BudgetWords> budgets,
                 std::span<const LiveUnit> lu, std::span<const LiveBudget> lb) {
  const shm::SeqlockWrite write(h.state_seq);
  for (std::size_t i = 0; i < units.size() && i < lu.size(); ++i) {
    const auto probe = static_cast<std::int64_t>(lu[i].probe_inflight ? 1 : 0);
    units[i].phase_probe.store(static_cast<std::int64_t>(lu[i].phase) | probe << 8, std::memory_order_relaxed);
    units[i].opened_at.store(lu[i].opened_at, std::memory_order_relaxed);
    units[i].inflight.store(lu[i].inflight, std::memory_order_relaxed);
    units[i].active_blocks.store(lu[i].active_blocks, std::memory_order_relaxed);
    units[i].recent_load.store(lu[i].recent_load, std::memory_order_relaxed);
    units[i].cache_held.store(lu[i].cache_held, std::memory_order_relaxed);
  }
  for (std::size_t i = 0; i < budgets.size() && i < lb.size(); ++i) {
    budgets[i].day.store(lb[i].day, std::memory_order_relaxed);
    budgets[i].spent.store(lb[i].spent.picos(), std::memory_order_relaxed);
    budgets[i].reserved.store(lb[i].reserved.picos(), std::memory_order_relaxed);
    budgets[i].candidate_percent.store(lb[i].candidate_percent, std::memory_order_relaxed);
  }
}

bool same_units(const std::vector<LiveUnit>& a, const std::vector<LiveUnit>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](const LiveUnit& x, const LiveUnit& y) {
           return x.phase == y.phase && x.probe_inflight == y.probe_inflight && x.opened_at == y.opened_at &&
                  x.inflight == y.inflight && x.active_blocks == y.active_blocks && x.recent_load == y.recent_load &&
                  x.cache_held == y.cache_held;
         });
}
bool same_budgets(const std::vector<LiveBudget>& a, const std::vector<LiveBudget>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](const LiveBudget& x, const LiveBudget& y) {
           return x.day == y.day && x.spent == y.spent && x.reserved == y.reserved &&
                  x.candidate_percent == y.candidate_percent;
         });
}

}  // namespace

// ------------------------------------------------------------------------------------- directory views

// The writer of one view: the directory's observer. Runs under the Router's lock, so one at a time.
class TablePublisher::View final : public MaskObserver {
 public:
  View(ViewHeader* head, ViewSlot* slots) : head_(head), slots_(slots), mask_(head->slots - 1) {}

  void on_mask(std::uint64_t block_hash, std::uint64_t mask) noexcept override {
    const std::uint64_t key = stored_key(block_hash);
    std::uint64_t i = key & mask_;
    for (std::uint64_t n = 0; n <= mask_; ++n, i = (i + 1) & mask_) {
      const std::uint64_t k = slots_[i].key.load(std::memory_order_relaxed);
      if (k == key) {
        const std::uint64_t old = slots_[i].mask.load(std::memory_order_relaxed);
        live_ += (old == 0 && mask != 0) ? 1 : 0;
        live_ -= (old != 0 && mask == 0) ? 1 : 0;
        slots_[i].mask.store(mask, std::memory_order_release);
        return;
      }
      if (k == 0) break;
    }
    if (mask == 0) return;  // not in the view: nothing to clear
    const std::uint64_t used = head_->used.load(std::memory_order_relaxed);
    if (used + 1 > head_->slots / 4 * 3) {
      // Rehash only when it frees a good share of the slots: a view full of live keys would
      // otherwise rescan itself on every new block.
      if (used - live_ < head_->slots / 8) {
        head_->dropped.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      rehash();
    }
    insert(key, mask);
    ++live_;
  }

  [[nodiscard]] std::uint64_t dropped() const noexcept { return head_->dropped.load(std::memory_order_relaxed); }

 private:
  void insert(std::uint64_t key, std::uint64_t mask) noexcept {
    std::uint64_t i = key & mask_;
    while (slots_[i].key.load(std::memory_order_relaxed) != 0) i = (i + 1) & mask_;
    slots_[i].mask.store(mask, std::memory_order_relaxed);
    slots_[i].key.store(key, std::memory_order_release);  // the mask is visible before the key
    head_->used.fetch_add(1, std::memory_order_relaxed);
  }

  // Drops deleted keys. Readers that overlap it see `seq` change and treat the prompt as cold.
  void rehash() noexcept {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> live;
    try {
      for (std::uint64_t i = 0; i <= mask_; ++i) {
        const std::uint64_t m = slots_[i].mask.load(std::memory_order_relaxed);
        if (slots_[i].key.load(std::memory_order_relaxed) != 0 && m != 0) {
          live.emplace_back(slots_[i].key.load(std::memory_order_relaxed), m);
        }
      }
    } catch (...) {
      return;  // out of memory: keep the view as it is (new blocks are then dropped)
    }
    const shm::SeqlockWrite write(head_->seq);
    for (std::uint64_t i = 0; i <= mask_; ++i) {
      slots_[i].key.store(0, std::memory_order_relaxed);
      slots_[i].mask.store(0, std::memory_order_relaxed);
    }
    head_->used.store(0, std::memory_order_relaxed);
    for (const auto& [k, m] : live) insert(k, m);
    live_ = live.size();
  }

  ViewHeader* head_;
  ViewSlot* slots_;
  std::uint64_t mask_;
  std::uint64_t live_ = 0;  // keys with a non-zero mask
};

// ------------------------------------------------------------------------------------ table publisher

Result<std::unique_ptr<TablePublisher>> TablePublisher::create(const std::string& shm, std::uint64_t generation,
                                                               Router& router, std::uint64_t seed) {
  const Config& c = *router.config();
  std::vector<LiveUnit> units;
  std::vector<LiveBudget> budgets;
  FastPathAccess::live_state(router, units, budgets);

  // Views: every self-hosted pool, then the MaaS directory; twice the holders' capacity in slots.
  struct Plan {
    std::uint32_t target;
    std::uint32_t holders;
    std::uint64_t slots;
  };
  std::vector<Plan> plans;
  std::uint32_t maas_holders = 0;
  for (std::uint32_t ti = 0; ti < c.targets.size(); ++ti) {
    const Target& t = c.targets[ti];
    if (t.kind == TargetKind::maas) {
      ++maas_holders;
      continue;
    }
    const std::int64_t per = t.kv.capacity_blocks > 0 ? t.kv.capacity_blocks : kDefaultReplicaBlocks;
    const auto want = static_cast<std::uint64_t>(per) * t.replicas.size() * 2;
    plans.push_back({ti, static_cast<std::uint32_t>(t.replicas.size()),
                     std::clamp<std::uint64_t>(std::bit_ceil(want), 1024, kMaxViewSlots)});
  }
  if (maas_holders > 0) {
    const auto want = static_cast<std::uint64_t>(kMaasHolderBlocks) * maas_holders * 2;
    plans.push_back({kNone, maas_holders, std::clamp<std::uint64_t>(std::bit_ceil(want), 1024, kMaxViewSlots)});
  }

  std::uint64_t off = align64(sizeof(TableHeader));
  const std::uint64_t text_off = off;
  off = align64(off + c.text.size());
  const std::uint64_t source_off = off;
  off = align64(off + c.source.size());
  const std::uint64_t units_off = off;
  off = align64(off + units.size() * sizeof(UnitWords));
  const std::uint64_t budgets_off = off;
  off = align64(off + budgets.size() * sizeof(BudgetWords));
  const std::uint64_t views_off = off;
  off = align64(off + plans.size() * sizeof(ViewHeader));
  std::vector<std::uint64_t> slot_offs;
  for (const auto& p : plans) {
    slot_offs.push_back(off);
    off = align64(off + p.slots * sizeof(ViewSlot));
  }

  const std::string name = table_segment_name(shm, generation);
  auto region = create_private_segment(name, off);
  if (!region) return std::move(region).error();  // and nothing of that name is ours to remove
  std::unique_ptr<TablePublisher> pub(new TablePublisher());
  pub->name_ = name;
  pub->region_ = std::move(region).value();
  char* base = static_cast<char*>(pub->region_->get_address());
  auto& h = *reinterpret_cast<TableHeader*>(base);
  h.magic = kTableMagic;
  h.layout_version = kFastLayoutVersion;
  h.header_size = sizeof(TableHeader);
  put_fingerprint(h.fingerprint);
  h.generation = generation;
  h.config_version = c.content_hash;
  h.seed = seed;
  h.bytes = off;
  h.text_offset = text_off;
  h.text_bytes = c.text.size();
  h.source_offset = source_off;
  h.source_bytes = c.source.size();
  h.units_offset = units_off;
  h.budgets_offset = budgets_off;
  h.views_offset = views_off;
  h.units = static_cast<std::uint32_t>(units.size());
  h.scenarios = static_cast<std::uint32_t>(budgets.size());
  h.views = static_cast<std::uint32_t>(plans.size());
  std::copy(c.text.begin(), c.text.end(), base + text_off);  // lengths are in the header: no terminator
  std::copy(c.source.begin(), c.source.end(), base + source_off);
  pub->head_ = &h;
  for (std::size_t v = 0; v < plans.size(); ++v) {
    auto* vh = reinterpret_cast<ViewHeader*>(base + views_off) + v;
    vh->target = plans[v].target;
    vh->holders = plans[v].holders;
    vh->slots = plans[v].slots;
    vh->offset = slot_offs[v];
    pub->views_.push_back(std::make_unique<View>(vh, reinterpret_cast<ViewSlot*>(base + slot_offs[v])));
    FastPathAccess::observe_directory(router, plans[v].target, pub->views_.back().get());
  }
  pub->publish_state(router);
  h.ready.store(1, std::memory_order_release);
  return pub;
}

void TablePublisher::publish_state(const Router& router) {
  FastPathAccess::live_state(router, next_units_, next_budgets_);  // into kept buffers: no allocation per request
  if (same_units(next_units_, units_) && same_budgets(next_budgets_, budgets_) && head_->state_seq.load() != 0) return;
  char* base = static_cast<char*>(region_->get_address());
  write_state(*head_, {reinterpret_cast<UnitWords*>(base + head_->units_offset), head_->units},
              {reinterpret_cast<BudgetWords*>(base + head_->budgets_offset), head_->scenarios}, next_units_,
              next_budgets_);
  units_.swap(next_units_);
  budgets_.swap(next_budgets_);
}

void TablePublisher::detach(Router& router) {
  const auto* vh =
      reinterpret_cast<const ViewHeader*>(static_cast<char*>(region_->get_address()) + head_->views_offset);
  for (std::uint32_t v = 0; v < head_->views; ++v) FastPathAccess::observe_directory(router, vh[v].target, nullptr);
}

std::uint64_t TablePublisher::dropped() const noexcept {
  std::uint64_t n = 0;
  for (const auto& v : views_) n += v->dropped();
  return n;
}

TablePublisher::~TablePublisher() {
  if (head_ != nullptr) head_->retired.store(1, std::memory_order_release);
  bip::shared_memory_object::remove(name_.c_str());
}

// ---------------------------------------------------------------------------------------- ring reader

Result<std::unique_ptr<RingReader>> RingReader::open(const std::string& shm, bool journaled) {
  std::unique_ptr<RingReader> r(new RingReader());
  r->name_ = rings_segment_name(shm);
  // A dead sidecar's rings hold records not yet applied: keep them when the layout matches.
  if (auto old = map_private_segment(r->name_, true); old && old.value()->get_size() >= rings_size()) {
    const auto& h = *static_cast<const RingsHeader*>(old.value()->get_address());
    if (h.magic == kRingsMagic && h.layout_version == kFastLayoutVersion && h.header_size == sizeof(RingsHeader) &&
        h.rings == kRingCount && h.ring_bytes == kRingBytes && same_fingerprint(h.fingerprint)) {
      r->region_ = std::move(old).value();
      // A record the dead sidecar took out but never settled: perhaps applied, perhaps not.
      const shm::RecordFate unknown{false, 0, static_cast<std::uint32_t>(ErrorCode::unavailable),
                                    static_cast<std::uint32_t>(protocol::kOps.size())};
      char* rings = static_cast<char*>(r->region_->get_address()) + sizeof(RingsHeader);
      for (std::uint32_t i = 0; i < kRingCount; ++i) {
        auto& ring = *reinterpret_cast<shm::RingHeader*>(rings + i * ring_stride());
        if (journaled) {  // journaled before it was taken out, and replayed: applied
          ring.settled.store(ring.consumed.load(std::memory_order_relaxed), std::memory_order_release);
        } else {
          shm::ring_recover(ring, unknown);
        }
      }
    }
  }
  if (!r->region_) {
    auto region = create_private_segment(r->name_, rings_size());
    if (!region) return std::move(region).error();
    r->region_ = std::move(region).value();
    auto& h = *static_cast<RingsHeader*>(r->region_->get_address());
    h.magic = kRingsMagic;
    h.layout_version = kFastLayoutVersion;
    h.header_size = sizeof(RingsHeader);
    put_fingerprint(h.fingerprint);
    h.rings = kRingCount;
    h.ring_bytes = kRingBytes;
  }
  r->base_ = static_cast<char*>(r->region_->get_address());
  static_cast<RingsHeader*>(r->region_->get_address())->ready.store(1, std::memory_order_release);
  return r;
}

RingReader::~RingReader() = default;

void RingReader::raise_sequence(std::uint32_t ring, std::uint64_t seq) noexcept {
  if (ring >= kRingCount) return;
  auto& rh = *reinterpret_cast<shm::RingHeader*>(base_ + sizeof(RingsHeader) + ring * ring_stride());
  std::uint64_t now = rh.next_seq.load(std::memory_order_relaxed);
  while (now < seq && !rh.next_seq.compare_exchange_weak(now, seq, std::memory_order_relaxed)) {
  }
}

std::uint32_t RingReader::clients() const noexcept {
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < kRingCount; ++i) {
    const auto& rh = *reinterpret_cast<const shm::RingHeader*>(base_ + sizeof(RingsHeader) + i * ring_stride());
    if (rh.owner_pid.load(std::memory_order_relaxed) != 0) ++n;
  }
  return n;
}

std::size_t RingReader::drain(const std::function<shm::RecordFate(std::uint32_t, std::string_view)>& apply,
                              std::size_t budget) {
  return drain(Visitor{.keep = {}, .apply = apply, .reaped = {}}, budget);
}

std::size_t RingReader::drain(const Visitor& visit, std::size_t budget) {
  std::size_t applied = 0;
  const auto now = std::chrono::steady_clock::now().time_since_epoch();
  const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now).count();
  const bool reap = now_ms - last_reap_ms_ >= 1000;
  if (reap) last_reap_ms_ = now_ms;
  // Start one ring further each time: under load no ring always waits for the others.
  first_ring_ = (first_ring_ + 1) % kRingCount;
  for (std::uint32_t n = 0; n < kRingCount && applied < budget; ++n) {
    const std::uint32_t i = (first_ring_ + n) % kRingCount;
    auto& rh = *reinterpret_cast<shm::RingHeader*>(base_ + sizeof(RingsHeader) + i * ring_stride());
    const char* data = base_ + sizeof(RingsHeader) + i * ring_stride() + sizeof(shm::RingHeader);
    const auto drained = shm::ring_drain<kRingBytes>(
        rh, data, record_, budget - applied, [&](std::string_view record) { return visit.apply(i, record); },
        [&](std::string_view record) {
          if (visit.keep) visit.keep(i, record);
        });
    applied += drained.applied;
    // A client that died leaves its ring to be drained, then free.
    const std::int64_t pid = rh.owner_pid.load(std::memory_order_relaxed);
    if (reap && pid != 0 && drained.empty && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::int64_t expected = pid;
      if (rh.owner_pid.compare_exchange_strong(expected, 0) && visit.reaped) visit.reaped(i);
    }
  }
  return applied;
}

// ---------------------------------------------------------------------------------------- fast client
}  // namespace turnout::sidecar
