#include "turnout/directory.hpp"

#include <algorithm>
#include <bit>
#include <stdexcept>
#include <utility>

namespace turnout {
namespace {

constexpr std::uint32_t kHolderBits = 6;
constexpr std::uint32_t kHolderMask = (1U << kHolderBits) - 1;
constexpr std::size_t kMinSlots = 64;
constexpr std::size_t kMaxRefs = std::size_t{1} << 31;     // keeps every table under 2^32 slots
constexpr std::size_t kMaxEngineSlots = kMaxRefs / 3 * 4;  // kMaxRefs at 3/4 load
constexpr std::size_t kMaxIndexSlots = std::size_t{CacheDirectory::kMaxBlocks} * 2;  // every id at 1/2 load

// Slot of a key in a table of `size` slots. Tables are sized from the holders' capacity, not to powers
// of two: the key's upper 32 bits are scaled to the size (Lemire's reduction). Block hashes are XXH3
// outputs, uniform already; engine hashes (sequential in some engines) are mixed first.
std::size_t home(std::uint64_t key, std::size_t size) noexcept {
  return static_cast<std::size_t>(((key >> 32) * size) >> 32);
}

std::size_t engine_home(std::uint64_t key, std::size_t size) noexcept {
  return home(key * 0x9E3779B97F4A7C15ULL, size);
}

std::size_t next_slot(std::size_t i, std::size_t size) noexcept { return i + 1 == size ? 0 : i + 1; }

// How far slot `i` lies past `home`, cyclically.
std::size_t distance(std::size_t home, std::size_t i, std::size_t size) noexcept {
  return i >= home ? i - home : i + size - home;
}

// An index slot: a block id, and how far the slot is from the block's home up to kFar (past it, which
// only colliding hashes reach, the distance is computed from the block's hash).
constexpr std::uint32_t kIdBits = 26;
constexpr std::uint32_t kIdMask = (1U << kIdBits) - 1;
constexpr std::uint32_t kFar = 63;

std::uint32_t at_distance(std::uint32_t slot, std::size_t d) noexcept {
  return (slot & kIdMask) | static_cast<std::uint32_t>(std::min<std::size_t>(d, kFar)) << kIdBits;
}

// Engine hashes repeat across replicas (same engine, same seed): the holder is part of the key.
std::uint64_t engine_key(std::uint32_t holder, std::uint64_t engine_hash) noexcept {
  return engine_hash ^ (0xC2B2AE3D27D4EB4FULL * (holder + 1));
}

// Table loads in percent: sized for the holders' total capacity, a table holds it at `full`, and any
// table grows past `most` (the headroom takes a chain stored over capacity, trimmed right after). The
// block index (4 bytes a slot) is kept sparse: each new block walks to the end of its cluster, a walk
// that grows as 1/(1-load)^2, and approximate mode stores new blocks on every decision.
struct Load {
  std::size_t full;
  std::size_t most;
};
constexpr Load kIndexLoad{55, 65};
constexpr Load kEngineLoad{75, 80};

bool over_load(std::size_t keys, std::size_t slots, Load load) noexcept { return keys * 100 > slots * load.most; }

// Slots for a table of `size` that `keys` keys outgrow: by half up to the size that holds `capacity`
// at the full load, so a directory never allocates for more than it can hold, and past it by an eighth.
std::size_t grown_size(std::size_t size, std::size_t keys, std::size_t capacity, Load load, std::size_t most) {
  const std::size_t full = capacity * 100 / load.full + 1;
  const std::size_t step = size < full ? std::min(full, size + size / 2) : size + size / 8;
  return std::min(most, std::max({step, (keys + 1) * 100 / load.full + 1, kMinSlots}));
}

// Elements for a full array of `n`: by half up to `full` (the holders' total capacity), then by 1/256
// (a chain stored over capacity, trimmed right after). A full directory wastes little, and none
// allocates what it does not hold.
std::size_t grown_capacity(std::size_t n, std::size_t full) {
  return n < full ? std::min(full, std::max<std::size_t>(64, n + n / 2)) : n + std::max<std::size_t>(64, n / 256);
}

// Backward-shift deletion: closes the hole at `hole` without tombstones, moving each later entry of
// the cluster whose home does not lie cyclically in (hole, j]. `home_of(j)` is the entry's home slot,
// `move(from, to)` moves it.
template <class Empty, class HomeOf, class Move>
std::size_t close_hole(std::size_t hole, std::size_t size, Empty empty, HomeOf home_of, Move move) {
  for (std::size_t j = next_slot(hole, size); !empty(j); j = next_slot(j, size)) {
    const std::size_t h = home_of(j);
    const bool home_in_between = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
    if (!home_in_between) {
      move(j, hole);
      hole = j;
    }
  }
  return hole;  // the slot left empty
}

}  // namespace

CacheDirectory::CacheDirectory(std::vector<HolderSpec> holders) : specs_(std::move(holders)) {
  if (specs_.empty() || specs_.size() > kMaxHolders) throw std::invalid_argument("CacheDirectory: 1..64 holders");
  for (auto& s : specs_) {
    s.capacity_blocks = std::clamp<std::int64_t>(s.capacity_blocks, 1, kMaxBlocks);
    capacity_ += static_cast<std::size_t>(s.capacity_blocks);
    timed_ = timed_ || s.ttl_ms > 0;
  }
  capacity_ = std::min(capacity_, kMaxRefs);
  lru_head_.assign(specs_.size(), kNil);
  lru_tail_.assign(specs_.size(), kNil);
  held_.assign(specs_.size(), 0);
  index_.assign(kMinSlots, kNil);
}

std::uint32_t CacheDirectory::seconds(std::int64_t now_ms) const noexcept {
  if (base_ms_ < 0 || now_ms <= base_ms_) return 0;
  return static_cast<std::uint32_t>(std::min<std::int64_t>((now_ms - base_ms_) / 1000, 0xFFFFFFFE));
}

bool CacheDirectory::expired(std::uint32_t ref, std::uint32_t holder, std::uint32_t now_s) const noexcept {
  const std::int64_t ttl_ms = specs_[holder].ttl_ms;
  if (ttl_ms <= 0) return false;
  const std::uint32_t last_used_s = ref_last_used_[ref];
  return static_cast<std::int64_t>(now_s - std::min(now_s, last_used_s)) * 1000 >= ttl_ms;
}

// How far the block in slot `i` sits from its home: kept in the slot up to kFar, computed past it.
std::size_t CacheDirectory::far_displacement(std::uint32_t slot, std::size_t i) const noexcept {
  return distance(home(blocks_[slot & kIdMask].hash, index_.size()), i, index_.size());
}
std::size_t CacheDirectory::displacement(std::uint32_t slot, std::size_t i) const noexcept {
  const std::uint32_t d = slot >> kIdBits;
  return d < kFar ? d : far_displacement(slot, i);
}

// Robin Hood order: along a cluster, blocks sit in the order of their homes. So a probe `d` slots from
// home has missed when it meets a block nearer its own home, and only a block exactly `d` slots from its
// home shares ours: those are the only blocks read, to compare hashes.
std::uint32_t CacheDirectory::find_block(std::uint64_t hash) const noexcept {
  const std::uint32_t* index = index_.data();
  const std::size_t size = index_.size();
  for (std::size_t i = home(hash, size), d = 0;; i = next_slot(i, size), ++d) {
    const std::uint32_t s = index[i];
    if (s == kNil) return kNil;
    const std::size_t far = displacement(s, i);
    if (far < d) return kNil;
    if (far == d && blocks_[s & kIdMask].hash == hash) return s & kIdMask;
  }
}

std::uint32_t CacheDirectory::find_ref(std::uint32_t block, std::uint32_t holder) const noexcept {
  if (!tiered_ && (blocks_[block].mask >> holder & 1U) == 0) return kNil;  // untiered: every ref is in the mask
  for (std::uint32_t r = block_refs_[block]; r != kNil; r = refs_[r].next_in_block) {
    if ((refs_[r].block_holder & kHolderMask) == holder) return r;
  }
  return kNil;
}

std::uint64_t CacheDirectory::engine_key_of(std::uint32_t ref) const noexcept {
  return engine_key(refs_[ref].block_holder & kHolderMask, ref_engine_[ref]);
}

std::uint32_t CacheDirectory::find_engine(std::uint32_t holder, std::uint64_t engine_hash) const noexcept {
  if (engine_table_.empty()) return kNil;
  const std::size_t size = engine_table_.size();
  for (std::size_t i = engine_home(engine_key(holder, engine_hash), size);; i = next_slot(i, size)) {
    const std::uint32_t r = engine_table_[i];
    if (r == kNil) return kNil;
    if (ref_engine_[r] == engine_hash && (refs_[r].block_holder & kHolderMask) == holder) return r;
  }
}

// Robin Hood insertion: a block farther from its home than the resident takes the slot and the
// resident moves on. Only index slots move, never blocks. The index has room.
void CacheDirectory::place(std::uint32_t block) {
  const std::size_t size = index_.size();
  for (std::size_t i = home(blocks_[block].hash, size), d = 0;; i = next_slot(i, size), ++d) {
    const std::uint32_t resident = index_[i];
    if (resident == kNil) {
      index_[i] = at_distance(block, d);
      return;
    }
    const std::size_t far = displacement(resident, i);
    if (far < d) {
      index_[i] = at_distance(block, d);
      block = resident & kIdMask;
      d = far;
    }
  }
}

// The new block has no holder yet: the caller adds one. kNil when the ids are all taken.
std::uint32_t CacheDirectory::insert_block(std::uint64_t hash) {
  std::uint32_t b = free_blocks_;
  if (b != kNil) {
    free_blocks_ = block_refs_[b];
  } else {
    const std::size_t n = blocks_.size();
    if (n >= kIdMask) return kNil;  // the last id, at kFar, would spell kNil
    if (n == blocks_.capacity()) {
      const std::size_t grown = grown_capacity(n, std::min<std::size_t>(capacity_, kIdMask));
      blocks_.reserve(grown);
      block_refs_.reserve(grown);
    }
    blocks_.push_back({});
    block_refs_.push_back(kNil);
    b = static_cast<std::uint32_t>(n);
  }
  blocks_[b] = Block{hash, 0};
  block_refs_[b] = kNil;
  if (over_load(live_blocks_ + 1, index_.size(), kIndexLoad)) {
    const std::size_t size = grown_size(index_.size(), live_blocks_, capacity_, kIndexLoad, kMaxIndexSlots);
    const std::vector<std::uint32_t> old = std::exchange(index_, std::vector<std::uint32_t>(size, kNil));
    for (const std::uint32_t s : old) {
      if (s != kNil) place(s & kIdMask);
    }
  }
  place(b);
  ++live_blocks_;
  return b;
}

// Backward shift: the rest of the cluster moves one slot back, which keeps the Robin Hood order.
void CacheDirectory::erase_block(std::uint32_t block) {
  const std::size_t size = index_.size();
  std::size_t hole = home(blocks_[block].hash, size);
  while ((index_[hole] & kIdMask) != block) hole = next_slot(hole, size);
  for (std::size_t j = next_slot(hole, size); index_[j] != kNil; j = next_slot(j, size)) {
    const std::size_t d = displacement(index_[j], j);
    if (d == 0) break;
    index_[hole] = at_distance(index_[j], d - 1);
    hole = j;
  }
  index_[hole] = kNil;
  blocks_[block] = Block{0, 0};
  block_refs_[block] = free_blocks_;
  free_blocks_ = block;
  --live_blocks_;
}

// A free Ref, or a new one. kNil past kMaxRefs.
std::uint32_t CacheDirectory::new_ref() {
  if (free_refs_ != kNil) {
    const std::uint32_t r = free_refs_;
    free_refs_ = refs_[r].next_in_block;
    return r;
  }
  const std::size_t n = refs_.size();
  if (n >= kMaxRefs) return kNil;
  if (n == refs_.capacity()) {
    const std::size_t grown = grown_capacity(n, capacity_);
    refs_.reserve(grown);
    if (engine_used_) ref_engine_.reserve(grown);
    if (timed_) ref_last_used_.reserve(grown);
    if (tiered_) ref_tiers_.reserve(grown);
  }
  refs_.push_back({});
  if (engine_used_) ref_engine_.push_back(0);
  if (timed_) ref_last_used_.push_back(0);
  if (tiered_) ref_tiers_.push_back(0);
  return static_cast<std::uint32_t>(n);
}

// The first store to a tier other than the GPU: from now on each ref keeps its tiers.
void CacheDirectory::use_tiers() {
  tiered_ = true;
  ref_tiers_.reserve(refs_.capacity());
  ref_tiers_.assign(refs_.size(), static_cast<std::uint8_t>(CacheTier::gpu));
}

std::uint8_t CacheDirectory::tiers_of(std::uint32_t ref) const noexcept {
  return tiered_ ? ref_tiers_[ref] : static_cast<std::uint8_t>(CacheTier::gpu);
}

// The first store with engine hashes: from now on each ref keeps one.
void CacheDirectory::use_engine_hashes() {
  engine_used_ = true;
  ref_engine_.reserve(refs_.capacity());
  ref_engine_.resize(refs_.size(), 0);
  engine_table_.assign(kMinSlots, kNil);
}

void CacheDirectory::insert_engine(std::uint32_t ref) {
  if (over_load(engine_entries_ + 1, engine_table_.size(), kEngineLoad)) {
    const std::size_t size = grown_size(engine_table_.size(), engine_entries_, capacity_, kEngineLoad, kMaxEngineSlots);
    std::vector<std::uint32_t> bigger(size, kNil);
    for (std::uint32_t r : engine_table_) {
      if (r == kNil) continue;
      std::size_t i = engine_home(engine_key_of(r), size);
      while (bigger[i] != kNil) i = next_slot(i, size);
      bigger[i] = r;
    }
    engine_table_.swap(bigger);
  }
  const std::size_t size = engine_table_.size();
  std::size_t i = engine_home(engine_key_of(ref), size);
  while (engine_table_[i] != kNil) i = next_slot(i, size);
  engine_table_[i] = ref;
  ++engine_entries_;
}

bool CacheDirectory::engine_indexed(std::uint32_t ref) const noexcept {
  const std::size_t size = engine_table_.size();
  for (std::size_t i = engine_home(engine_key_of(ref), size); engine_table_[i] != kNil; i = next_slot(i, size)) {
    if (engine_table_[i] == ref) return true;
  }
  return false;
}

void CacheDirectory::erase_engine(std::uint32_t ref) {
  const std::size_t size = engine_table_.size();
  for (std::size_t i = engine_home(engine_key_of(ref), size); engine_table_[i] != kNil; i = next_slot(i, size)) {
    if (engine_table_[i] != ref) continue;
    const std::size_t hole = close_hole(
        i, size, [this](std::size_t j) { return engine_table_[j] == kNil; },
        [this, size](std::size_t j) { return engine_home(engine_key_of(engine_table_[j]), size); },
        [this](std::size_t from, std::size_t to) { engine_table_[to] = engine_table_[from]; });
    engine_table_[hole] = kNil;
    --engine_entries_;
    return;
  }
}

void CacheDirectory::link_front(std::uint32_t holder, std::uint32_t ref) {
  Ref& r = refs_[ref];
  r.lru_prev = kNil;
  r.lru_next = lru_head_[holder];
  if (r.lru_next != kNil) refs_[r.lru_next].lru_prev = ref;
  lru_head_[holder] = ref;
  if (lru_tail_[holder] == kNil) lru_tail_[holder] = ref;
}

void CacheDirectory::unlink(std::uint32_t holder, std::uint32_t ref) {
  const Ref& r = refs_[ref];
  if (r.lru_prev != kNil)
    refs_[r.lru_prev].lru_next = r.lru_next;
  else
    lru_head_[holder] = r.lru_next;
  if (r.lru_next != kNil)
    refs_[r.lru_next].lru_prev = r.lru_prev;
  else
    lru_tail_[holder] = r.lru_prev;
}

void CacheDirectory::remove_ref(std::uint32_t ref) {
  const std::uint32_t holder = refs_[ref].block_holder & kHolderMask;
  const std::uint32_t block = refs_[ref].block_holder >> kHolderBits;
  unlink(holder, ref);
  if (engine_used_) erase_engine(ref);
  // Unlink from the block's list.
  std::uint32_t* link = &block_refs_[block];
  while (*link != ref) link = &refs_[*link].next_in_block;
  *link = refs_[ref].next_in_block;
  if ((blocks_[block].mask >> holder & 1U) != 0) {
    blocks_[block].mask &= ~(1ULL << holder);
    if (observer_ != nullptr) observer_->on_mask(blocks_[block].hash, blocks_[block].mask);
  }
  if (block_refs_[block] == kNil) erase_block(block);
  refs_[ref].next_in_block = free_refs_;
  free_refs_ = ref;
  --held_[holder];
}

void CacheDirectory::trim(std::uint32_t holder, std::uint32_t now_s) {
  while (lru_tail_[holder] != kNil) {
    const std::uint32_t tail = lru_tail_[holder];
    if (held_[holder] > static_cast<std::size_t>(specs_[holder].capacity_blocks)) {
      ++evicted_;
    } else if (expired(tail, holder, now_s)) {
      ++expired_;
    } else {
      break;
    }
    remove_ref(tail);
  }
}

void CacheDirectory::match(std::span<const std::uint64_t> chain, std::int64_t now_ms,
                           std::span<std::uint32_t> matched) const {
  const std::size_t n = specs_.size();
  std::fill(matched.begin(), matched.begin() + static_cast<std::ptrdiff_t>(n), 0U);
  std::uint64_t alive = n == 64 ? ~0ULL : (1ULL << n) - 1;
  std::size_t i = 0;
  const std::uint32_t* index = index_.data();
  const std::size_t size = index_.size();
  for (; i < chain.size() && alive != 0; ++i) {
    // find_block, inline: this loop is the hot path of every decision.
    std::uint64_t holding = 0;
    const std::uint64_t hash = chain[i];
    for (std::size_t j = home(hash, size), d = 0;; j = next_slot(j, size), ++d) {
      const std::uint32_t s = index[j];
      if (s == kNil) break;
      const std::size_t far = displacement(s, j);
      if (far < d) break;
      if (far == d && blocks_[s & kIdMask].hash == hash) {
        holding = blocks_[s & kIdMask].mask & alive;
        break;
      }
    }
    for (std::uint64_t gone = alive & ~holding; gone != 0; gone &= gone - 1) {
      matched[static_cast<std::size_t>(std::countr_zero(gone))] = static_cast<std::uint32_t>(i);
    }
    alive = holding;
  }
  for (; alive != 0; alive &= alive - 1)
    matched[static_cast<std::size_t>(std::countr_zero(alive))] = static_cast<std::uint32_t>(i);

  // TTL: a chain is stored and refreshed as a whole, so its deepest block is the oldest; walk back
  // from the end of each match over blocks that expired.
  const std::uint32_t now_s = seconds(now_ms);
  for (std::uint32_t h = 0; h < n; ++h) {
    if (specs_[h].ttl_ms <= 0) continue;
    while (matched[h] > 0) {
      const std::uint32_t b = find_block(chain[matched[h] - 1]);
      const std::uint32_t r = b == kNil ? kNil : find_ref(b, h);
      if (r != kNil && !expired(r, h, now_s)) break;
      --matched[h];
    }
  }
}

void CacheDirectory::store(std::uint32_t holder, std::span<const std::uint64_t> chain, std::int64_t now_ms,
                           std::span<const std::uint64_t> engine_hashes, CacheTier tier) {
  if (holder >= specs_.size() || chain.empty()) return;
  if (base_ms_ < 0) base_ms_ = now_ms;
  const std::uint32_t now_s = seconds(now_ms);
  const bool precise = engine_hashes.size() == chain.size();
  if (precise && !engine_used_) use_engine_hashes();
  if (tier != CacheTier::gpu && !tiered_) use_tiers();
  const bool gpu = tier == CacheTier::gpu;
  const std::uint64_t bit = 1ULL << holder;
  // Leaf first, so the root ends up most recent: LRU evicts the tails of chains before their roots,
  // as the engines do.
  for (std::size_t k = chain.size(); k-- > 0;) {
    std::uint32_t b = find_block(chain[k]);
    std::uint32_t r = b == kNil ? kNil : find_ref(b, holder);
    const bool fresh = r == kNil;  // a new ref is in no index (refs leave it when they are freed)
    if (!fresh) {
      unlink(holder, r);
    } else {
      if (free_refs_ == kNil && refs_.size() >= kMaxRefs) continue;
      if (b == kNil) b = insert_block(chain[k]);
      if (b == kNil) continue;
      r = new_ref();
      refs_[r].block_holder = (b << kHolderBits) | holder;
      refs_[r].next_in_block = block_refs_[b];
      block_refs_[b] = r;
      ++held_[holder];
    }
    if (tiered_) ref_tiers_[r] |= static_cast<std::uint8_t>(tier);
    if (gpu && (blocks_[b].mask & bit) == 0) {
      blocks_[b].mask |= bit;
      if (observer_ != nullptr) observer_->on_mask(blocks_[b].hash, blocks_[b].mask);
    }
    if (timed_) ref_last_used_[r] = now_s;
    link_front(holder, r);
    if (precise) {
      // Each ref is indexed at most once, under its current engine hash (several refs may share a
      // hash: each BlockRemoved of it then removes one).
      const bool indexed = !fresh && engine_indexed(r);
      if (!indexed || ref_engine_[r] != engine_hashes[k]) {
        if (indexed) erase_engine(r);
        ref_engine_[r] = engine_hashes[k];
        insert_engine(r);
      }
    }
  }
  trim(holder, now_s);
}

bool CacheDirectory::remove_engine(std::uint32_t holder, std::uint64_t engine_hash, CacheTier tier) {
  if (holder >= specs_.size()) return false;
  const std::uint32_t r = find_engine(holder, engine_hash);
  const auto t = static_cast<std::uint8_t>(tier);
  if (r == kNil || (tiers_of(r) & t) == 0) return false;
  ++removed_;
  if (tiers_of(r) == t) {  // its last tier: the entry goes
    remove_ref(r);
    return true;
  }
  ref_tiers_[r] &= static_cast<std::uint8_t>(~t);
  if (tier == CacheTier::gpu) {  // still held in another tier, no longer a hit
    const std::uint32_t b = refs_[r].block_holder >> kHolderBits;
    blocks_[b].mask &= ~(1ULL << holder);
    if (observer_ != nullptr) observer_->on_mask(blocks_[b].hash, blocks_[b].mask);
  }
  return true;
}

std::optional<std::uint64_t> CacheDirectory::own_hash(std::uint32_t holder, std::uint64_t engine_hash) const {
  const std::uint32_t r = holder < specs_.size() ? find_engine(holder, engine_hash) : kNil;
  if (r == kNil) return std::nullopt;
  return blocks_[refs_[r].block_holder >> kHolderBits].hash;
}

void CacheDirectory::clear(std::uint32_t holder) {
  if (holder >= specs_.size()) return;
  while (lru_head_[holder] != kNil) {
    remove_ref(lru_head_[holder]);
    ++removed_;
  }
}

void CacheDirectory::expire(std::int64_t now_ms) {
  const std::uint32_t now_s = seconds(now_ms);
  for (std::uint32_t h = 0; h < specs_.size(); ++h) trim(h, now_s);
}

CacheDirectory::Stats CacheDirectory::stats() const {
  Stats s;
  s.blocks = live_blocks_;
  s.held = held_;
  s.evicted = evicted_;
  s.expired = expired_;
  s.removed = removed_;
  s.bytes = blocks_.capacity() * sizeof(Block) + block_refs_.capacity() * sizeof(std::uint32_t) +
            index_.capacity() * sizeof(std::uint32_t) + refs_.capacity() * sizeof(Ref) +
            ref_engine_.capacity() * sizeof(std::uint64_t) + ref_last_used_.capacity() * sizeof(std::uint32_t) +
            ref_tiers_.capacity() * sizeof(std::uint8_t) + engine_table_.capacity() * sizeof(std::uint32_t) +
            specs_.capacity() * sizeof(HolderSpec) +
            (lru_head_.capacity() + lru_tail_.capacity()) * sizeof(std::uint32_t) +
            held_.capacity() * sizeof(std::size_t);
  return s;
}

}  // namespace turnout
