#include "switchyard/directory.hpp"

#include <algorithm>
#include <bit>
#include <stdexcept>

namespace switchyard {
namespace {

// Grows a vector by half (not the library's doubling) before it is full: at most 1/3 of it idle.
template <class T>
void make_room(std::vector<T>& v) {
  if (v.size() == v.capacity()) v.reserve(v.capacity() < 64 ? 64 : v.capacity() + v.capacity() / 2);
}

constexpr std::uint32_t kHolderBits = 6;
constexpr std::uint32_t kHolderMask = (1U << kHolderBits) - 1;

// Block hashes are XXH3 outputs, already uniform; engine keys mix in the holder.
std::uint64_t engine_key(std::uint32_t holder, std::uint64_t engine_hash) noexcept {
  return engine_hash ^ (0x9E3779B97F4A7C15ULL * (holder + 1));
}

}  // namespace

CacheDirectory::CacheDirectory(std::vector<HolderSpec> holders) : specs_(std::move(holders)) {
  if (specs_.empty() || specs_.size() > kMaxHolders) throw std::invalid_argument("CacheDirectory: 1..64 holders");
  for (auto& s : specs_) s.capacity_blocks = std::clamp<std::int64_t>(s.capacity_blocks, 1, kMaxBlocks);
  lru_head_.assign(specs_.size(), kNil);
  lru_tail_.assign(specs_.size(), kNil);
  held_.assign(specs_.size(), 0);
  block_table_.assign(64, kNil);
}

std::uint32_t CacheDirectory::seconds(std::int64_t now_ms) const noexcept {
  if (base_ms_ < 0 || now_ms <= base_ms_) return 0;
  return static_cast<std::uint32_t>(std::min<std::int64_t>((now_ms - base_ms_) / 1000, 0xFFFFFFFE));
}

bool CacheDirectory::expired(const Ref& r, std::uint32_t holder, std::uint32_t now_s) const noexcept {
  const std::int64_t ttl_ms = specs_[holder].ttl_ms;
  return ttl_ms > 0 && static_cast<std::int64_t>(now_s - std::min(now_s, r.last_used_s)) * 1000 >= ttl_ms;
}

std::uint32_t CacheDirectory::find_block(std::uint64_t hash) const noexcept {
  const std::size_t mask = block_table_.size() - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    const std::uint32_t b = block_table_[i];
    if (b == kNil) return kNil;
    if (block_hash_[b] == hash) return b;
  }
}

std::uint32_t CacheDirectory::find_ref(std::uint32_t block, std::uint32_t holder) const noexcept {
  for (std::uint32_t r = block_refs_[block]; r != kNil; r = refs_[r].next_in_block) {
    if ((refs_[r].block_holder & kHolderMask) == holder) return r;
  }
  return kNil;
}

std::uint32_t CacheDirectory::find_engine(std::uint32_t holder, std::uint64_t engine_hash) const noexcept {
  if (engine_table_.empty()) return kNil;
  const std::size_t mask = engine_table_.size() - 1;
  for (std::size_t i = engine_key(holder, engine_hash) & mask;; i = (i + 1) & mask) {
    const std::uint32_t r = engine_table_[i];
    if (r == kNil) return kNil;
    if (ref_engine_[r] == engine_hash && (refs_[r].block_holder & kHolderMask) == holder) return r;
  }
}

// Doubles an open-addressing table once it is 3/4 full: keys are XXH3 outputs (uniform), so linear
// probes stay short at that load, and the table costs 5.3 to 10.7 bytes per key.
void CacheDirectory::grow(std::vector<std::uint32_t>& table, std::size_t used, auto&& key_of) {
  if ((used + 1) * 4 <= table.size() * 3) return;
  std::vector<std::uint32_t> bigger(table.size() * 2, kNil);
  const std::size_t mask = bigger.size() - 1;
  for (std::uint32_t v : table) {
    if (v == kNil) continue;
    std::size_t i = key_of(v) & mask;
    while (bigger[i] != kNil) i = (i + 1) & mask;
    bigger[i] = v;
  }
  table.swap(bigger);
}

std::uint32_t CacheDirectory::insert_block(std::uint64_t hash) {
  grow(block_table_, live_blocks_, [this](std::uint32_t b) { return block_hash_[b]; });
  std::uint32_t b = 0;
  if (!free_blocks_.empty()) {
    b = free_blocks_.back();
    free_blocks_.pop_back();
    block_hash_[b] = hash;
    block_mask_[b] = 0;
    block_refs_[b] = kNil;
  } else {
    b = static_cast<std::uint32_t>(block_hash_.size());
    make_room(block_hash_);
    make_room(block_mask_);
    make_room(block_refs_);
    block_hash_.push_back(hash);
    block_mask_.push_back(0);
    block_refs_.push_back(kNil);
  }
  const std::size_t mask = block_table_.size() - 1;
  std::size_t i = hash & mask;
  while (block_table_[i] != kNil) i = (i + 1) & mask;
  block_table_[i] = b;
  ++live_blocks_;
  return b;
}

// Backward-shift deletion keeps every probe sequence unbroken without tombstones.
template <class KeyOf>
static void erase_slot(std::vector<std::uint32_t>& table, std::size_t i, KeyOf key_of) {
  const std::size_t mask = table.size() - 1;
  std::size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (table[j] == 0xFFFFFFFFU) break;
    const std::size_t home = key_of(table[j]) & mask;
    // Move table[j] into the hole at i unless its home lies cyclically in (i, j].
    const bool home_in_between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!home_in_between) {
      table[i] = table[j];
      i = j;
    }
  }
  table[i] = 0xFFFFFFFFU;
}

void CacheDirectory::erase_block(std::uint32_t block) {
  const std::size_t mask = block_table_.size() - 1;
  std::size_t i = block_hash_[block] & mask;
  while (block_table_[i] != block) i = (i + 1) & mask;
  erase_slot(block_table_, i, [this](std::uint32_t b) { return block_hash_[b]; });
  free_blocks_.push_back(block);
  --live_blocks_;
}

void CacheDirectory::insert_engine(std::uint32_t ref) {
  if (engine_table_.empty()) engine_table_.assign(64, kNil);
  auto key_of = [this](std::uint32_t r) { return engine_key(refs_[r].block_holder & kHolderMask, ref_engine_[r]); };
  grow(engine_table_, engine_entries_, key_of);
  const std::size_t mask = engine_table_.size() - 1;
  std::size_t i = key_of(ref) & mask;
  while (engine_table_[i] != kNil) i = (i + 1) & mask;
  engine_table_[i] = ref;
  ++engine_entries_;
}

bool CacheDirectory::engine_indexed(std::uint32_t ref) const noexcept {
  if (engine_table_.empty() || ref >= ref_engine_.size()) return false;
  const std::size_t mask = engine_table_.size() - 1;
  for (std::size_t i = engine_key(refs_[ref].block_holder & kHolderMask, ref_engine_[ref]) & mask;
       engine_table_[i] != kNil; i = (i + 1) & mask) {
    if (engine_table_[i] == ref) return true;
  }
  return false;
}

void CacheDirectory::erase_engine(std::uint32_t ref) {
  if (engine_table_.empty()) return;
  auto key_of = [this](std::uint32_t r) { return engine_key(refs_[r].block_holder & kHolderMask, ref_engine_[r]); };
  const std::size_t mask = engine_table_.size() - 1;
  for (std::size_t i = key_of(ref) & mask; engine_table_[i] != kNil; i = (i + 1) & mask) {
    if (engine_table_[i] == ref) {
      erase_slot(engine_table_, i, key_of);
      --engine_entries_;
      return;
    }
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
  // Unlink from the block's list.
  std::uint32_t* link = &block_refs_[block];
  while (*link != ref) link = &refs_[*link].next_in_block;
  *link = refs_[ref].next_in_block;
  block_mask_[block] &= ~(1ULL << holder);
  if (observer_ != nullptr) observer_->on_mask(block_hash_[block], block_mask_[block]);
  if (block_refs_[block] == kNil) erase_block(block);
  if (!ref_engine_.empty()) erase_engine(ref);
  free_refs_.push_back(ref);
  --held_[holder];
}

void CacheDirectory::trim(std::uint32_t holder, std::uint32_t now_s) {
  while (lru_tail_[holder] != kNil) {
    const std::uint32_t tail = lru_tail_[holder];
    if (held_[holder] > static_cast<std::size_t>(specs_[holder].capacity_blocks)) {
      ++evicted_;
    } else if (expired(refs_[tail], holder, now_s)) {
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
  for (; i < chain.size() && alive != 0; ++i) {
    const std::uint32_t b = find_block(chain[i]);
    const std::uint64_t holding = b == kNil ? 0 : block_mask_[b] & alive;
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
      if (r != kNil && !expired(refs_[r], h, now_s)) break;
      --matched[h];
    }
  }
}

void CacheDirectory::store(std::uint32_t holder, std::span<const std::uint64_t> chain, std::int64_t now_ms,
                           std::span<const std::uint64_t> engine_hashes) {
  if (holder >= specs_.size() || chain.empty()) return;
  if (base_ms_ < 0) base_ms_ = now_ms;
  const std::uint32_t now_s = seconds(now_ms);
  const bool precise = engine_hashes.size() == chain.size();
  if (precise && ref_engine_.size() < refs_.size()) ref_engine_.resize(refs_.size(), 0);
  // Leaf first, so the root ends up most recent: LRU evicts the tails of chains before their roots,
  // as the engines do.
  for (std::size_t k = chain.size(); k-- > 0;) {
    std::uint32_t b = find_block(chain[k]);
    if (b == kNil) {
      if (live_blocks_ >= kMaxBlocks) continue;
      b = insert_block(chain[k]);
    }
    std::uint32_t r = find_ref(b, holder);
    if (r != kNil) {
      unlink(holder, r);
    } else {
      if (!free_refs_.empty()) {
        r = free_refs_.back();
        free_refs_.pop_back();
      } else {
        r = static_cast<std::uint32_t>(refs_.size());
        make_room(refs_);
        refs_.push_back({});
        if (!ref_engine_.empty() || precise) {
          make_room(ref_engine_);
          ref_engine_.push_back(0);
        }
      }
      refs_[r].block_holder = (b << kHolderBits) | holder;
      refs_[r].next_in_block = block_refs_[b];
      block_refs_[b] = r;
      block_mask_[b] |= 1ULL << holder;
      if (observer_ != nullptr) observer_->on_mask(block_hash_[b], block_mask_[b]);
      ++held_[holder];
    }
    refs_[r].last_used_s = now_s;
    link_front(holder, r);
    if (precise) {
      // Each ref is indexed at most once, under its current engine hash (several refs may share a
      // hash: each BlockRemoved of it then removes one).
      const bool indexed = engine_indexed(r);
      if (!indexed || ref_engine_[r] != engine_hashes[k]) {
        if (indexed) erase_engine(r);
        ref_engine_[r] = engine_hashes[k];
        insert_engine(r);
      }
    }
  }
  trim(holder, now_s);
}

bool CacheDirectory::remove_engine(std::uint32_t holder, std::uint64_t engine_hash) {
  if (holder >= specs_.size()) return false;
  const std::uint32_t r = find_engine(holder, engine_hash);
  if (r == kNil) return false;
  remove_ref(r);
  ++removed_;
  return true;
}

std::optional<std::uint64_t> CacheDirectory::own_hash(std::uint32_t holder, std::uint64_t engine_hash) const {
  const std::uint32_t r = holder < specs_.size() ? find_engine(holder, engine_hash) : kNil;
  if (r == kNil) return std::nullopt;
  return block_hash_[refs_[r].block_holder >> kHolderBits];
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
  s.bytes = block_hash_.capacity() * 8 + block_mask_.capacity() * 8 + block_refs_.capacity() * 4 +
            free_blocks_.capacity() * 4 + block_table_.capacity() * 4 + refs_.capacity() * sizeof(Ref) +
            ref_engine_.capacity() * 8 + free_refs_.capacity() * 4 + engine_table_.capacity() * 4;
  return s;
}

}  // namespace switchyard
