#include "turnout/client/fastpath.hpp"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <boost/interprocess/mapped_region.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <msgpack.hpp>
#include <span>

#include "turnout/client/counters.hpp"
#include "turnout/config.hpp"
#include "turnout/shm/segment.hpp"
#include "turnout/shm/seqlock.hpp"

namespace turnout::client {

using detail::FastPathAccess;

namespace bip = boost::interprocess;
using shm::check_segment_name;
using shm::map_private_segment;

namespace {

Error incompatible(std::string message) { return make_error(ErrorCode::incompatible_layout, std::move(message)); }
Error unavailable(std::string message) { return make_error(ErrorCode::unavailable, std::move(message)); }

constexpr std::uint64_t kSeqMask = (1ULL << kRingShift) - 1;

// Seqlock-protected copy of the live state, out of the table (the sidecar writes it).
bool read_state(const TableHeader& h, std::span<const UnitWords> units, std::span<const BudgetWords> budgets,
                std::vector<LiveUnit>& lu, std::vector<LiveBudget>& lb, std::uint64_t& seq) {
  lu.resize(units.size());
  lb.resize(budgets.size());
  const auto read = shm::seqlock_read(h.state_seq, 64, [&] {
    for (std::size_t i = 0; i < units.size(); ++i) {
      const std::int64_t pp = units[i].phase_probe.load(std::memory_order_relaxed);
      lu[i] = {static_cast<Breaker::Phase>(pp & 0xFF),
               ((pp >> 8) & 1) != 0,
               units[i].opened_at.load(std::memory_order_relaxed),
               units[i].inflight.load(std::memory_order_relaxed),
               units[i].active_blocks.load(std::memory_order_relaxed),
               units[i].recent_load.load(std::memory_order_relaxed),
               units[i].cache_held.load(std::memory_order_relaxed)};
    }
    for (std::size_t i = 0; i < budgets.size(); ++i) {
      lb[i] = {budgets[i].day.load(std::memory_order_relaxed),
               Money::from_picos(budgets[i].spent.load(std::memory_order_relaxed)),
               Money::from_picos(budgets[i].reserved.load(std::memory_order_relaxed)),
               static_cast<std::uint32_t>(budgets[i].candidate_percent.load(std::memory_order_relaxed))};
    }
  });
  if (read) {
    seq = *read;
    return true;
  }
  return false;  // the writer keeps writing: keep the previous mirror, try at the next route
}

}  // namespace

std::string table_segment_name(const std::string& shm, std::uint64_t generation) {
  return shm + ".t" + std::to_string(generation);
}
std::string rings_segment_name(const std::string& shm) { return shm + ".rings"; }

// ---------------------------------------------------------------------------------------- fast client

// The reader of one view: what decide() matches prompts against on the fast path.
class FastClient::MappedView final : public PrefixIndex {
 public:
  MappedView(const ViewHeader* head, const ViewSlot* slots) : head_(head), slots_(slots), mask_(head->slots - 1) {}

  void match(std::span<const std::uint64_t> chain, std::int64_t /*now_ms*/,
             std::span<std::uint32_t> matched) const override {
    const std::size_t n = std::min<std::size_t>(head_->holders, matched.size());
    std::fill(matched.begin(), matched.begin() + static_cast<std::ptrdiff_t>(n), 0U);
    // One attempt: a read that overlaps a rehash (or starts in one) is cold for this one decision.
    const auto read = shm::seqlock_read(head_->seq, 1, [&] {
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
    });
    if (!read) std::fill(matched.begin(), matched.begin() + static_cast<std::ptrdiff_t>(n), 0U);
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
  auto counters = map_counters_segment(shm);
  if (!counters) return std::move(counters).error();
  f->counters_ = std::move(counters).value();
  if (!claim_ring) {
    if (auto ok = f->refresh(); !ok) return std::move(ok).error();
    return f;
  }
  auto rings = map_private_segment(rings_segment_name(shm), true);
  if (!rings) return std::move(rings).error();
  f->rings_ = std::move(rings).value();
  if (f->rings_->get_size() < rings_size()) return incompatible("rings segment of '" + shm + "' is too small");
  const auto& rh = *static_cast<const RingsHeader*>(f->rings_->get_address());
  if (rh.magic != kRingsMagic || rh.layout_version != kFastLayoutVersion || rh.rings != kRingCount ||
      rh.ring_bytes != kRingBytes || !same_fingerprint(rh.fingerprint)) {
    return incompatible("rings segment of '" + shm + "' was written by another build of Turnout");
  }
  char* base = static_cast<char*>(f->rings_->get_address()) + sizeof(RingsHeader);
  const auto me = static_cast<std::int64_t>(::getpid());
  for (std::uint32_t i = 0; i < kRingCount && f->my_ring_ == nullptr; ++i) {
    auto* ring = reinterpret_cast<shm::RingHeader*>(base + i * ring_stride());
    std::int64_t owner = ring->owner_pid.load();
    // A free ring, or one whose owner died: its stream simply continues from here.
    const bool dead = owner != 0 && ::kill(static_cast<pid_t>(owner), 0) != 0 && errno == ESRCH;
    if ((owner == 0 || dead) && ring->owner_pid.compare_exchange_strong(owner, me)) {
      f->my_ring_ = ring;
      f->my_data_ = base + i * ring_stride() + sizeof(shm::RingHeader);
      f->ring_ = i;
      f->first_record_ = ring->posted.load(std::memory_order_relaxed) + 1;
      f->seen_rejections_ = ring->rejections.load(std::memory_order_acquire);
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
    if (auto counters = map_counters_segment(shm_); counters) {
      counters_ = std::move(counters).value();
      main = static_cast<const ShmHeader*>(counters_->get_address());
      gen = main->generation.load(std::memory_order_acquire);
    }
  }
  auto region = map_private_segment(table_segment_name(shm_, gen), false);
  // While a new table is being published (or cannot be read) the mapped one keeps deciding; with
  // none mapped, the caller is told to use the socket.
  auto keep = [&](Error why) -> Result<Ok> {
    if (!table_) return why;
    retry_after_ = now + std::chrono::milliseconds(100);
    return Ok{};
  };
  if (!region) return keep(std::move(region).error());
  auto t = std::make_unique<Table>();
  t->region = std::move(region).value();
  const char* base = static_cast<const char*>(t->region->get_address());
  t->head = reinterpret_cast<const TableHeader*>(base);
  if (t->region->get_size() < sizeof(TableHeader) || t->head->ready.load(std::memory_order_acquire) == 0) {
    return keep(unavailable("the sidecar's table is not published yet"));
  }
  const TableHeader& h = *t->head;
  if (h.magic != kTableMagic || h.layout_version != kFastLayoutVersion || h.header_size != sizeof(TableHeader) ||
      !same_fingerprint(h.fingerprint) || h.bytes > t->region->get_size() || h.text_offset + h.text_bytes > h.bytes ||
      h.source_offset + h.source_bytes > h.bytes ||
      h.units_offset + std::uint64_t{h.units} * sizeof(UnitWords) > h.bytes ||
      h.budgets_offset + std::uint64_t{h.scenarios} * sizeof(BudgetWords) > h.bytes ||
      h.views_offset + std::uint64_t{h.views} * sizeof(ViewHeader) > h.bytes) {
    return keep(incompatible("table segment of '" + shm_ + "' was written by another build of Turnout"));
  }
  auto config = load_config_text(std::string_view(base + h.text_offset, h.text_bytes),
                                 std::string(base + h.source_offset, h.source_bytes));
  if (!config) return keep(incompatible("the published table does not load here: " + config.error().message));
  if (config.value()->content_hash != h.config_version) return keep(unavailable("the published table is torn"));
  const std::uint64_t seq = my_ring_ != nullptr ? my_ring_->next_seq.load(std::memory_order_relaxed) & kSeqMask : 0;
  const std::uint64_t first = kFastIdBit | (std::uint64_t{ring_} << kRingShift) | seq;
  t->router = std::make_shared<Router>(config.value(), RouterOptions{.seed = h.seed, .first_decision_id = first | 1U});
  std::vector<const PrefixIndex*> pools(config.value()->targets.size(), nullptr);
  const PrefixIndex* maas = nullptr;
  const auto* vh = reinterpret_cast<const ViewHeader*>(base + h.views_offset);
  for (std::uint32_t v = 0; v < h.views; ++v) {
    if (vh[v].offset + vh[v].slots * sizeof(ViewSlot) > h.bytes || !std::has_single_bit(vh[v].slots)) {
      return keep(incompatible("table segment of '" + shm_ + "' has a view out of bounds"));
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

  // The adopt record, by indices of the table it was decided from. The buffer is reused (no
  // allocation); a huge prompt posts its leading blocks only, so that its record fits a ring.
  scratch_.clear();
  protocol::encode_adopt_request(scratch_, *d, kMaxPostedBlocks);
  if (post_locked({scratch_.data(), scratch_.size()}) == 0) {
    // Not posted, so the sidecar never learns of it: the caller routes through the socket instead.
    return unavailable("the fast-path ring is full (the sidecar is not draining it)");
  }
  return d;
}

std::uint64_t FastClient::post(std::string_view message) {
  std::lock_guard lock(mu_);
  return my_ring_ != nullptr ? post_locked(message) : 0;
}

std::uint64_t FastClient::post_locked(std::string_view message) {
  return shm::ring_push<kRingBytes>(*my_ring_, my_data_, message);
}

RingFeedback FastClient::feedback() {
  std::lock_guard lock(mu_);
  RingFeedback out;
  if (my_ring_ == nullptr) return out;
  const shm::RingHeader& ring = *my_ring_;
  out.posted = ring.posted.load(std::memory_order_relaxed);
  out.settled = ring.settled.load(std::memory_order_acquire);
  const std::uint64_t written = ring.rejections.load(std::memory_order_acquire);
  std::uint64_t from = seen_rejections_;
  if (written - from > shm::kRingRejections) {
    out.missed = written - from - shm::kRingRejections;
    from = written - shm::kRingRejections;
  }
  for (std::uint64_t n = from; n < written; ++n) {
    const shm::RingRejection& r = ring.rejected[n % shm::kRingRejections];
    const std::uint64_t record = r.record.load(std::memory_order_acquire);
    RecordRejection x{record, r.decision_id.load(std::memory_order_relaxed), std::nullopt, ErrorCode::internal};
    const std::uint32_t op = r.op.load(std::memory_order_relaxed);
    const std::uint32_t code = r.code.load(std::memory_order_relaxed);
    if (op < protocol::kOps.size()) x.op = static_cast<protocol::Op>(op);
    if (code < kErrorCodes.size()) x.code = static_cast<ErrorCode>(code);
    // 0: being rewritten (the sidecar lapped this reader); an earlier holder's record is not ours.
    if (record >= first_record_ && r.record.load(std::memory_order_acquire) == record) out.rejected.push_back(x);
  }
  seen_rejections_ = written;
  return out;
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

}  // namespace turnout::client
