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
#include <msgpack.hpp>
#include <thread>

#include "sidecar/shm.hpp"
#include "turnout/config.hpp"

namespace turnout::sidecar {

namespace bip = boost::interprocess;
using detail::FastPathAccess;

namespace {

Error fast_error(std::string message) { return make_error(ErrorCode::invalid_argument, std::move(message)); }
Error unavailable(std::string message) { return make_error(ErrorCode::unavailable, std::move(message)); }

constexpr std::uint64_t align64(std::uint64_t n) { return (n + 63) & ~std::uint64_t{63}; }
constexpr std::uint32_t kWrap = 0xFFFFFFFFU;
constexpr std::uint64_t kSeqMask = (1ULL << kRingShift) - 1;

std::size_t ring_stride() { return sizeof(RingHeader) + kRingBytes; }
std::size_t rings_size() { return sizeof(RingsHeader) + static_cast<std::size_t>(kRingCount) * ring_stride(); }

template <std::size_t N>
void put_fingerprint(char (&dst)[N]) {
  const std::string fp = layout_fingerprint();
  std::memset(dst, 0, N);
  std::memcpy(dst, fp.data(), std::min(fp.size(), N - 1));
}
template <std::size_t N>
bool same_fingerprint(const char (&src)[N]) {
  return std::string(src, strnlen(src, N)) == layout_fingerprint();
}

Result<std::unique_ptr<bip::mapped_region>> map_segment(const std::string& name, bool writable) {
  try {
    const auto mode = writable ? bip::read_write : bip::read_only;
    bip::shared_memory_object shm(bip::open_only, name.c_str(), mode);
    return std::make_unique<bip::mapped_region>(shm, mode);
  } catch (const bip::interprocess_exception& e) {
    return unavailable("no shared-memory segment '" + name + "' (" + e.what() + ")");
  }
}

// Seqlock-protected copy of the live state, both directions.
void write_state(TableHeader& h, std::span<UnitWords> units, std::span<BudgetWords> budgets,
                 std::span<const LiveUnit> lu, std::span<const LiveBudget> lb) {
  const std::uint64_t s = h.state_seq.load(std::memory_order_relaxed);
  h.state_seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  for (std::size_t i = 0; i < units.size() && i < lu.size(); ++i) {
    const auto probe = static_cast<std::int64_t>(lu[i].probe_inflight ? 1 : 0);
    units[i].phase_probe.store(static_cast<std::int64_t>(lu[i].phase) | probe << 8, std::memory_order_relaxed);
    units[i].opened_at.store(lu[i].opened_at, std::memory_order_relaxed);
    units[i].inflight.store(lu[i].inflight, std::memory_order_relaxed);
    units[i].active_blocks.store(lu[i].active_blocks, std::memory_order_relaxed);
  }
  for (std::size_t i = 0; i < budgets.size() && i < lb.size(); ++i) {
    budgets[i].day.store(lb[i].day, std::memory_order_relaxed);
    budgets[i].spent.store(lb[i].spent.picos(), std::memory_order_relaxed);
    budgets[i].reserved.store(lb[i].reserved.picos(), std::memory_order_relaxed);
  }
  h.state_seq.store(s + 2, std::memory_order_release);
}

bool read_state(const TableHeader& h, std::span<const UnitWords> units, std::span<const BudgetWords> budgets,
                std::vector<LiveUnit>& lu, std::vector<LiveBudget>& lb, std::uint64_t& seq) {
  lu.resize(units.size());
  lb.resize(budgets.size());
  for (int attempt = 0; attempt < 64; ++attempt) {
    const std::uint64_t before = h.state_seq.load(std::memory_order_acquire);
    if ((before & 1U) != 0) continue;
    for (std::size_t i = 0; i < units.size(); ++i) {
      const std::int64_t pp = units[i].phase_probe.load(std::memory_order_relaxed);
      lu[i] = {static_cast<Breaker::Phase>(pp & 0xFF), ((pp >> 8) & 1) != 0,
               units[i].opened_at.load(std::memory_order_relaxed), units[i].inflight.load(std::memory_order_relaxed),
               units[i].active_blocks.load(std::memory_order_relaxed)};
    }
    for (std::size_t i = 0; i < budgets.size(); ++i) {
      lb[i] = {budgets[i].day.load(std::memory_order_relaxed),
               Money::from_picos(budgets[i].spent.load(std::memory_order_relaxed)),
               Money::from_picos(budgets[i].reserved.load(std::memory_order_relaxed))};
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (h.state_seq.load(std::memory_order_relaxed) == before) {
      seq = before;
      return true;
    }
  }
  return false;  // the writer keeps writing: keep the previous mirror, try at the next route
}

bool same_units(const std::vector<LiveUnit>& a, const std::vector<LiveUnit>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](const LiveUnit& x, const LiveUnit& y) {
           return x.phase == y.phase && x.probe_inflight == y.probe_inflight && x.opened_at == y.opened_at &&
                  x.inflight == y.inflight && x.active_blocks == y.active_blocks;
         });
}
bool same_budgets(const std::vector<LiveBudget>& a, const std::vector<LiveBudget>& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](const LiveBudget& x, const LiveBudget& y) {
           return x.day == y.day && x.spent == y.spent && x.reserved == y.reserved;
         });
}

std::uint64_t stored_key(std::uint64_t hash) { return hash == 0 ? 1 : hash; }

}  // namespace

std::string table_segment_name(const std::string& shm, std::uint64_t generation) {
  return shm + ".t" + std::to_string(generation);
}
std::string rings_segment_name(const std::string& shm) { return shm + ".rings"; }

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
    const std::uint64_t s = head_->seq.load(std::memory_order_relaxed);
    head_->seq.store(s + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    for (std::uint64_t i = 0; i <= mask_; ++i) {
      slots_[i].key.store(0, std::memory_order_relaxed);
      slots_[i].mask.store(0, std::memory_order_relaxed);
    }
    head_->used.store(0, std::memory_order_relaxed);
    for (const auto& [k, m] : live) insert(k, m);
    live_ = live.size();
    head_->seq.store(s + 2, std::memory_order_release);
  }

  ViewHeader* head_;
  ViewSlot* slots_;
  std::uint64_t mask_;
  std::uint64_t live_ = 0;  // keys with a non-zero mask
};

// The reader of one view: what decide() matches prompts against on the fast path.
class FastClient::MappedView final : public PrefixIndex {
 public:
  MappedView(const ViewHeader* head, const ViewSlot* slots) : head_(head), slots_(slots), mask_(head->slots - 1) {}

  void match(std::span<const std::uint64_t> chain, std::int64_t /*now_ms*/,
             std::span<std::uint32_t> matched) const override {
    const std::size_t n = std::min<std::size_t>(head_->holders, matched.size());
    std::fill(matched.begin(), matched.begin() + static_cast<std::ptrdiff_t>(n), 0U);
    const std::uint64_t before = head_->seq.load(std::memory_order_acquire);
    if ((before & 1U) != 0) return;  // being rehashed: cold for this one decision
    std::uint64_t alive = n >= 64 ? ~0ULL : (1ULL << n) - 1;
    std::size_t i = 0;
    for (; i < chain.size() && alive != 0; ++i) {
      const std::uint64_t holding = lookup(stored_key(chain[i])) & alive;
      for (std::uint64_t gone = alive & ~holding; gone != 0; gone &= gone - 1) {
        matched[static_cast<std::size_t>(std::countr_zero(gone))] = static_cast<std::uint32_t>(i);
      }
      alive = holding;
    }
    for (; alive != 0; alive &= alive - 1) {
      matched[static_cast<std::size_t>(std::countr_zero(alive))] = static_cast<std::uint32_t>(i);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (head_->seq.load(std::memory_order_relaxed) != before) {
      std::fill(matched.begin(), matched.begin() + static_cast<std::ptrdiff_t>(n), 0U);
    }
  }

 private:
  [[nodiscard]] std::uint64_t lookup(std::uint64_t key) const noexcept {
    std::uint64_t i = key & mask_;
    for (std::uint64_t probes = 0; probes <= mask_; ++probes, i = (i + 1) & mask_) {
      const std::uint64_t k = slots_[i].key.load(std::memory_order_acquire);
      if (k == key) return slots_[i].mask.load(std::memory_order_acquire);
      if (k == 0) return 0;
    }
    return 0;
  }

  const ViewHeader* head_;
  const ViewSlot* slots_;
  std::uint64_t mask_;
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

  std::unique_ptr<TablePublisher> pub(new TablePublisher());
  pub->name_ = table_segment_name(shm, generation);
  auto region = create_private_segment(pub->name_, off);
  if (!region) return std::move(region).error();
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

Result<std::unique_ptr<RingReader>> RingReader::open(const std::string& shm) {
  std::unique_ptr<RingReader> r(new RingReader());
  r->name_ = rings_segment_name(shm);
  // A dead sidecar's rings hold records not yet applied: keep them when the layout matches.
  if (auto old = map_segment(r->name_, true); old && old.value()->get_size() >= rings_size()) {
    const auto& h = *static_cast<const RingsHeader*>(old.value()->get_address());
    if (h.magic == kRingsMagic && h.layout_version == kFastLayoutVersion && h.header_size == sizeof(RingsHeader) &&
        h.rings == kRingCount && h.ring_bytes == kRingBytes && same_fingerprint(h.fingerprint)) {
      r->region_ = std::move(old).value();
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

std::uint32_t RingReader::clients() const noexcept {
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < kRingCount; ++i) {
    const auto& rh = *reinterpret_cast<const RingHeader*>(base_ + sizeof(RingsHeader) + i * ring_stride());
    if (rh.owner_pid.load(std::memory_order_relaxed) != 0) ++n;
  }
  return n;
}

std::size_t RingReader::drain(const std::function<void(std::uint32_t, std::string_view)>& apply, std::size_t budget) {
  std::size_t applied = 0;
  const auto now = std::chrono::steady_clock::now().time_since_epoch();
  const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now).count();
  const bool reap = now_ms - last_reap_ms_ >= 1000;
  if (reap) last_reap_ms_ = now_ms;
  // Start one ring further each time: under load no ring always waits for the others.
  first_ring_ = (first_ring_ + 1) % kRingCount;
  for (std::uint32_t n = 0; n < kRingCount && applied < budget; ++n) {
    const std::uint32_t i = (first_ring_ + n) % kRingCount;
    auto& rh = *reinterpret_cast<RingHeader*>(base_ + sizeof(RingsHeader) + i * ring_stride());
    const char* data = base_ + sizeof(RingsHeader) + i * ring_stride() + sizeof(RingHeader);
    const std::uint64_t head = rh.head.load(std::memory_order_acquire);
    std::uint64_t tail = rh.tail.load(std::memory_order_relaxed);
    if (head - tail > kRingBytes) tail = head;  // a corrupt ring: skip what cannot be read
    while (tail < head && applied < budget) {
      const std::uint64_t pos = tail % kRingBytes;
      std::uint32_t len = 0;
      std::memcpy(&len, data + pos, sizeof len);
      if (len == kWrap) {
        tail += kRingBytes - pos;
        continue;
      }
      if (pos + 4 + len > kRingBytes || len == 0) {  // torn or corrupt: drop the rest of this ring
        tail = head;
        break;
      }
      record_.assign(data + pos + 4, len);
      tail += (4 + std::uint64_t{len} + 7) & ~std::uint64_t{7};
      rh.tail.store(tail, std::memory_order_release);
      apply(i, record_);
      ++applied;
    }
    rh.tail.store(tail, std::memory_order_release);
    // A client that died leaves its ring to be drained, then free.
    const std::int64_t pid = rh.owner_pid.load(std::memory_order_relaxed);
    if (reap && pid != 0 && tail == head && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::int64_t expected = pid;
      rh.owner_pid.compare_exchange_strong(expected, 0);
    }
  }
  return applied;
}

// ---------------------------------------------------------------------------------------- fast client

struct FastClient::Table {
  std::unique_ptr<bip::mapped_region> region;
  const TableHeader* head = nullptr;
  std::shared_ptr<Router> router;
  std::vector<std::unique_ptr<MappedView>> views;
  std::uint64_t seen_seq = ~0ULL;
  std::vector<LiveUnit> units;
  std::vector<LiveBudget> budgets;
};

Result<std::unique_ptr<FastClient>> FastClient::attach(const std::string& shm, bool claim_ring) {
  if (auto ok = check_segment_name(shm); !ok) return std::move(ok).error();
  std::unique_ptr<FastClient> f(new FastClient());
  f->shm_ = shm;
  auto counters = map_segment(shm, false);
  if (!counters) return std::move(counters).error();
  f->counters_ = std::move(counters).value();
  if (!claim_ring) {
    if (auto ok = f->refresh(); !ok) return std::move(ok).error();
    return f;
  }
  auto rings = map_segment(rings_segment_name(shm), true);
  if (!rings) return std::move(rings).error();
  f->rings_ = std::move(rings).value();
  if (f->rings_->get_size() < rings_size()) return fast_error("rings segment of '" + shm + "' is too small");
  const auto& rh = *static_cast<const RingsHeader*>(f->rings_->get_address());
  if (rh.magic != kRingsMagic || rh.layout_version != kFastLayoutVersion || rh.rings != kRingCount ||
      rh.ring_bytes != kRingBytes || !same_fingerprint(rh.fingerprint)) {
    return fast_error("rings segment of '" + shm + "' was written by another build of Turnout");
  }
  char* base = static_cast<char*>(f->rings_->get_address()) + sizeof(RingsHeader);
  const auto me = static_cast<std::int64_t>(::getpid());
  for (std::uint32_t i = 0; i < kRingCount && f->my_ring_ == nullptr; ++i) {
    auto* ring = reinterpret_cast<RingHeader*>(base + i * ring_stride());
    std::int64_t owner = ring->owner_pid.load();
    // A free ring, or one whose owner died: its stream simply continues from here.
    const bool dead = owner != 0 && ::kill(static_cast<pid_t>(owner), 0) != 0 && errno == ESRCH;
    if ((owner == 0 || dead) && ring->owner_pid.compare_exchange_strong(owner, me)) {
      f->my_ring_ = ring;
      f->my_data_ = base + i * ring_stride() + sizeof(RingHeader);
      f->ring_ = i;
    }
  }
  if (f->my_ring_ == nullptr) {
    return unavailable("all " + std::to_string(kRingCount) + " fast-path rings of '" + shm + "' are taken");
  }
  if (auto ok = f->refresh(); !ok) return std::move(ok).error();
  return f;
}

FastClient::~FastClient() {
  // Only the process that claimed the ring frees it (a forked child destroying its copy must not).
  if (my_ring_ == nullptr) return;
  std::int64_t me = ::getpid();
  my_ring_->owner_pid.compare_exchange_strong(me, 0);
}

std::uint64_t FastClient::generation() const { return table_ ? table_->head->generation : 0; }

Result<Ok> FastClient::refresh() {
  const auto* main = static_cast<const ShmHeader*>(counters_->get_address());
  std::uint64_t gen = main->generation.load(std::memory_order_acquire);
  if (table_ && table_->head->generation == gen && table_->head->retired.load(std::memory_order_relaxed) == 0) {
    return Ok{};
  }
  // After a failed look for the new table (a sidecar stopped, or still publishing), look again in
  // 100 ms, not on every route. The clock is vDSO: no system call.
  const auto now = std::chrono::steady_clock::now();
  if (table_ && now < retry_after_) return Ok{};
  if (main->retired.load(std::memory_order_acquire) != 0) {  // the sidecar grew its segment: re-open it
    if (auto counters = map_segment(shm_, false); counters) {
      counters_ = std::move(counters).value();
      main = static_cast<const ShmHeader*>(counters_->get_address());
      gen = main->generation.load(std::memory_order_acquire);
    }
  }
  auto region = map_segment(table_segment_name(shm_, gen), false);
  // While a new table is being published (or cannot be read) the mapped one keeps deciding; with
  // none mapped, the caller is told to use the socket.
  auto keep = [&](std::string why) -> Result<Ok> {
    if (!table_) return unavailable(std::move(why));
    retry_after_ = now + std::chrono::milliseconds(100);
    return Ok{};
  };
  if (!region) return keep(region.error().message);
  auto t = std::make_unique<Table>();
  t->region = std::move(region).value();
  const char* base = static_cast<const char*>(t->region->get_address());
  t->head = reinterpret_cast<const TableHeader*>(base);
  if (t->region->get_size() < sizeof(TableHeader) || t->head->ready.load(std::memory_order_acquire) == 0) {
    return keep("the sidecar's table is not published yet");
  }
  const TableHeader& h = *t->head;
  if (h.magic != kTableMagic || h.layout_version != kFastLayoutVersion || h.header_size != sizeof(TableHeader) ||
      !same_fingerprint(h.fingerprint) || h.bytes > t->region->get_size() || h.text_offset + h.text_bytes > h.bytes ||
      h.source_offset + h.source_bytes > h.bytes ||
      h.units_offset + std::uint64_t{h.units} * sizeof(UnitWords) > h.bytes ||
      h.budgets_offset + std::uint64_t{h.scenarios} * sizeof(BudgetWords) > h.bytes ||
      h.views_offset + std::uint64_t{h.views} * sizeof(ViewHeader) > h.bytes) {
    return keep("table segment of '" + shm_ + "' was written by another build of Turnout");
  }
  auto config = load_config_text(std::string_view(base + h.text_offset, h.text_bytes),
                                 std::string(base + h.source_offset, h.source_bytes));
  if (!config) return keep("the published table does not load here: " + config.error().message);
  if (config.value()->content_hash != h.config_version) return keep("the published table is torn");
  const std::uint64_t seq = my_ring_ != nullptr ? my_ring_->next_seq.load(std::memory_order_relaxed) & kSeqMask : 0;
  const std::uint64_t first = kFastIdBit | (std::uint64_t{ring_} << kRingShift) | seq;
  t->router = std::make_shared<Router>(config.value(), RouterOptions{.seed = h.seed, .first_decision_id = first | 1U});
  std::vector<const PrefixIndex*> pools(config.value()->targets.size(), nullptr);
  const PrefixIndex* maas = nullptr;
  const auto* vh = reinterpret_cast<const ViewHeader*>(base + h.views_offset);
  for (std::uint32_t v = 0; v < h.views; ++v) {
    if (vh[v].offset + vh[v].slots * sizeof(ViewSlot) > h.bytes || !std::has_single_bit(vh[v].slots)) {
      return keep("table segment of '" + shm_ + "' has a view out of bounds");
    }
    t->views.push_back(std::make_unique<MappedView>(&vh[v], reinterpret_cast<const ViewSlot*>(base + vh[v].offset)));
    if (vh[v].target == kNone) {
      maas = t->views.back().get();
    } else if (vh[v].target < pools.size()) {
      pools[vh[v].target] = t->views.back().get();
    }
  }
  FastPathAccess::set_prefix_index(*t->router, std::move(pools), maas);
  // The previous router only prices receipts from now on: its views are unmapped with its table.
  previous_ = table_ ? table_->router : nullptr;
  previous_generation_ = table_ ? table_->head->generation : 0;
  table_ = std::move(t);
  return Ok{};
}

ConfigPtr FastClient::config() {
  std::lock_guard lock(mu_);
  return table_ ? table_->router->config() : nullptr;
}

void FastClient::mirror_state() {
  Table& t = *table_;
  const TableHeader& h = *t.head;
  const char* base = static_cast<const char*>(t.region->get_address());
  if (h.state_seq.load(std::memory_order_acquire) == t.seen_seq) return;
  if (read_state(h, {reinterpret_cast<const UnitWords*>(base + h.units_offset), h.units},
                 {reinterpret_cast<const BudgetWords*>(base + h.budgets_offset), h.scenarios}, t.units, t.budgets,
                 t.seen_seq)) {
    FastPathAccess::set_live_state(*t.router, t.units, t.budgets);
  }
}

Result<Decision> FastClient::explain(const RouteRequest& request, ConfigPtr* decided_by) {
  std::lock_guard lock(mu_);
  if (auto ok = refresh(); !ok) return std::move(ok).error();
  mirror_state();
  if (decided_by != nullptr) *decided_by = table_->router->config();
  return table_->router->explain(request);
}

Result<Decision> FastClient::route(const RouteRequest& request, ConfigPtr* decided_by) {
  std::lock_guard lock(mu_);
  if (my_ring_ == nullptr) return unavailable("this view of '" + shm_ + "' is read-only (no ring)");
  if (auto ok = refresh(); !ok) return std::move(ok).error();
  Table& t = *table_;
  mirror_state();
  auto d = FastPathAccess::dispatch(*t.router, request);
  if (!d) return d;
  if (decided_by != nullptr) *decided_by = t.router->config();
  recent_[d->id & (kRecent - 1)] = {d->id, d->scenario, d->placement.target, t.head->generation};
  my_ring_->next_seq.store(FastPathAccess::next_decision_id(*t.router) & kSeqMask, std::memory_order_relaxed);

  // The adopt message: the wire protocol's, by indices of the table it was decided from.
  // Packed into a buffer of fixed size (no allocation); a message too big for it never fits the ring.
  struct Out {
    std::vector<char>& buf;
    std::size_t n = 0;
    void write(const char* p, std::size_t k) {
      if (n + k <= buf.size()) std::memcpy(buf.data() + n, p, k);
      n += k;
    }
  } out{scratch_};
  msgpack::packer<Out> pk(out);
  const Decision& dd = *d;
  pk.pack_map(13);
  pk.pack("v");
  pk.pack(1);
  pk.pack("op");
  pk.pack("adopt");
  pk.pack("decision_id");
  pk.pack(dd.id);
  pk.pack("config_version");
  pk.pack(dd.config_version);
  pk.pack("scenario");
  pk.pack(dd.scenario);
  pk.pack("target");
  pk.pack(dd.placement.target);
  pk.pack("replica");
  pk.pack(dd.placement.replica);
  pk.pack("fallbacks");
  pk.pack_array(static_cast<std::uint32_t>(dd.fallbacks.size()));
  for (const auto& f : dd.fallbacks) {
    pk.pack_array(2);
    pk.pack(f.target);
    pk.pack(f.replica);
  }
  pk.pack("spilled");
  pk.pack(dd.spilled);
  pk.pack("reserved_cost");
  pk.pack(dd.reserved_cost.picos());
  pk.pack("active_blocks");
  pk.pack(dd.active_blocks);
  pk.pack("prefix");
  // Little-endian words; a huge prompt posts its leading blocks only (a leading run is still a
  // correct thing to learn), so that its record fits a ring.
  const std::size_t posted = std::min<std::size_t>(dd.prefix.size(), kMaxPostedBlocks);
  const auto prefix_bytes = static_cast<std::uint32_t>(posted * 8);
  pk.pack_bin(prefix_bytes);
  pk.pack_bin_body(reinterpret_cast<const char*>(dd.prefix.data()), prefix_bytes);
  pk.pack("at");
  pk.pack(dd.at);
  if (out.n > scratch_.size() || !post_locked({scratch_.data(), out.n})) {
    // Not posted, so the sidecar never learns of it: the caller routes through the socket instead.
    return unavailable("the fast-path ring is full (the sidecar is not draining it)");
  }
  return d;
}

bool FastClient::post(std::string_view message) {
  std::lock_guard lock(mu_);
  return my_ring_ != nullptr && post_locked(message);
}

bool FastClient::post_locked(std::string_view message) {
  if (message.empty()) return false;  // a zero length marks a corrupt ring to the reader
  const std::uint64_t need = (4 + message.size() + 7) & ~std::uint64_t{7};
  if (need > kRingBytes / 2) return false;
  std::uint64_t head = my_ring_->head.load(std::memory_order_relaxed);
  const std::uint64_t tail = my_ring_->tail.load(std::memory_order_acquire);
  const std::uint64_t pos = head % kRingBytes;
  const std::uint64_t skip = kRingBytes - pos < need ? kRingBytes - pos : 0;
  if (need + skip > kRingBytes - (head - tail)) {
    my_ring_->full.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (skip != 0) {
    std::memcpy(my_data_ + pos, &kWrap, sizeof kWrap);
    head += skip;
  }
  const auto len = static_cast<std::uint32_t>(message.size());
  std::memcpy(my_data_ + head % kRingBytes, &len, sizeof len);
  std::memcpy(my_data_ + head % kRingBytes + 4, message.data(), message.size());
  my_ring_->head.store(head + need, std::memory_order_release);
  my_ring_->posted.fetch_add(1, std::memory_order_relaxed);
  return true;
}

Result<ReportReceipt> FastClient::receipt(const OutcomeReport& report) {
  std::lock_guard lock(mu_);
  const Recent& r = recent_[report.decision_id & (kRecent - 1)];
  Router* router = nullptr;
  if (r.id == report.decision_id && table_ && r.generation == table_->head->generation) router = table_->router.get();
  if (r.id == report.decision_id && previous_ && r.generation == previous_generation_) router = previous_.get();
  if (router == nullptr) {
    return make_error(ErrorCode::unknown_decision, "decision " + std::to_string(report.decision_id) +
                                                       " is not one of this client's recent fast-path decisions");
  }
  return FastPathAccess::price_outcome(*router, r.scenario, r.target, report);
}

}  // namespace turnout::sidecar
