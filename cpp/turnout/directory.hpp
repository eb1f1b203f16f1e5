#pragma once
// Which holders (replicas of a pool, or MaaS targets) hold which prefix blocks: the cache directory.
// Blocks and (block, holder) pairs in flat arrays, a Robin Hood hash index over the blocks, per-holder
// LRU lists and TTL. Memory is bounded by the holders' capacities whatever the input; arrays grow as they
// fill, towards sizes set by the total capacity. Full, with no block shared (the most per entry): 57
// bytes per (block, holder) in precise mode, 48 in approximate mode (bench/directory_bench); one more
// once a store names a tier other than the GPU (offloading engines).

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace turnout {

/// Where a holder keeps a block: its GPU, its host memory (offloaded there), or another tier (disk,
/// remote store). One (block, holder) entry carries a bit per tier, so a removal from one tier leaves the
/// others. Only GPU residence is a hit in match() (docs/architecture.md, "KV events").
enum class CacheTier : std::uint8_t { gpu = 1, host = 2, other = 4 };

/// Read access to where a prefix is warm: the directory itself, or the sidecar's directory as a
/// client maps it from shared memory. decide() sees only this.
class PrefixIndex {
 public:
  virtual ~PrefixIndex() = default;
  /// For each holder, the length of the longest leading run of `chain` it holds at `now`.
  virtual void match(std::span<const std::uint64_t> chain, std::int64_t now_ms,
                     std::span<std::uint32_t> matched) const = 0;
};

/// Told every change of a block's holder mask (0 = no one holds it any more): how the sidecar keeps
/// its shared-memory view of the directory current.
class MaskObserver {
 public:
  virtual ~MaskObserver() = default;
  virtual void on_mask(std::uint64_t block_hash, std::uint64_t mask) noexcept = 0;
};

class CacheDirectory final : public PrefixIndex {
 public:
  static constexpr std::size_t kMaxHolders = 64;
  static constexpr std::uint32_t kMaxBlocks = 1U << 26;  ///< a block id shares a word with the holder

  struct HolderSpec {
    std::int64_t capacity_blocks = 1 << 18;  ///< LRU beyond this (a replica's KV capacity)
    std::int64_t ttl_ms = 0;                 ///< 0 = no expiry (precise mode: the engine tells us)
  };

  struct Stats {
    std::size_t blocks = 0;         ///< distinct blocks held by anyone
    std::vector<std::size_t> held;  ///< per holder
    std::uint64_t evicted = 0;      ///< by capacity (LRU)
    std::uint64_t expired = 0;      ///< by TTL
    std::uint64_t removed = 0;      ///< by the engine (BlockRemoved) or a clear
    std::size_t bytes = 0;          ///< heap memory of every array, as allocated (capacity, not size)
  };

  explicit CacheDirectory(std::vector<HolderSpec> holders);
  CacheDirectory(const CacheDirectory&) = delete;
  CacheDirectory& operator=(const CacheDirectory&) = delete;
  CacheDirectory(CacheDirectory&&) = default;
  CacheDirectory& operator=(CacheDirectory&&) = default;
  ~CacheDirectory() override = default;

  [[nodiscard]] std::size_t holders() const noexcept { return specs_.size(); }

  /// For each holder, the length of the longest leading run of `chain` it holds at `now` (entries past
  /// their TTL do not count). `matched` has one slot per holder.
  void match(std::span<const std::uint64_t> chain, std::int64_t now_ms,
             std::span<std::uint32_t> matched) const override;

  /// Records that `holder` holds every block of `chain` in `tier`, used at `now` (refreshing TTL and
  /// LRU). With `engine_hashes` (one per block), the blocks can later be removed by the engine's hash.
  void store(std::uint32_t holder, std::span<const std::uint64_t> chain, std::int64_t now_ms,
             std::span<const std::uint64_t> engine_hashes = {}, CacheTier tier = CacheTier::gpu);

  /// Removes `tier`'s copy of the block `holder` stored under an engine hash (the entry goes with its
  /// last tier); false when that tier does not hold it.
  bool remove_engine(std::uint32_t holder, std::uint64_t engine_hash, CacheTier tier = CacheTier::gpu);
  /// Our own hash of the block `holder` stored under an engine hash (to chain a child block to it).
  [[nodiscard]] std::optional<std::uint64_t> own_hash(std::uint32_t holder, std::uint64_t engine_hash) const;
  /// Forgets everything `holder` holds (AllBlocksCleared, a publisher reset).
  void clear(std::uint32_t holder);
  /// Drops entries past their TTL.
  void expire(std::int64_t now_ms);

  [[nodiscard]] Stats stats() const;
  /// The blocks `holder` holds (entries past their TTL count until expire() drops them).
  [[nodiscard]] std::size_t held(std::uint32_t holder) const noexcept { return held_[holder]; }
  /// Calls `observer` on every mask change from now on (nullptr: none). Not owned.
  void set_observer(MaskObserver* observer) noexcept { observer_ = observer; }

 private:
  static constexpr std::uint32_t kNil = 0xFFFFFFFFU;

  // A block, by its id (stable while it lives: refs point at it).
  struct Block {
    std::uint64_t hash;
    std::uint64_t mask;  // bit h: holder h holds it
  };

  // One (block, holder) pair: 16 bytes. `block_holder` = block id << 6 | holder.
  struct Ref {
    std::uint32_t block_holder;
    std::uint32_t next_in_block;  // on the free list: the next free Ref
    std::uint32_t lru_prev;       // towards the most recent
    std::uint32_t lru_next;       // towards the least recent
  };

  [[nodiscard]] std::uint32_t seconds(std::int64_t now_ms) const noexcept;
  [[nodiscard]] bool expired(std::uint32_t ref, std::uint32_t holder, std::uint32_t now_s) const noexcept;
  [[nodiscard]] std::size_t displacement(std::uint32_t slot, std::size_t i) const noexcept;
  [[nodiscard]] std::size_t far_displacement(std::uint32_t slot, std::size_t i) const noexcept;
  [[nodiscard]] std::uint32_t find_block(std::uint64_t hash) const noexcept;
  [[nodiscard]] std::uint32_t find_ref(std::uint32_t block, std::uint32_t holder) const noexcept;
  [[nodiscard]] std::uint32_t find_engine(std::uint32_t holder, std::uint64_t engine_hash) const noexcept;
  [[nodiscard]] std::uint64_t engine_key_of(std::uint32_t ref) const noexcept;
  std::uint32_t insert_block(std::uint64_t hash);
  void place(std::uint32_t block);
  void erase_block(std::uint32_t block);
  [[nodiscard]] std::uint32_t new_ref();
  void use_engine_hashes();
  void use_tiers();
  [[nodiscard]] std::uint8_t tiers_of(std::uint32_t ref) const noexcept;
  [[nodiscard]] bool engine_indexed(std::uint32_t ref) const noexcept;  ///< by ref, not by key
  void insert_engine(std::uint32_t ref);
  void erase_engine(std::uint32_t ref);
  void link_front(std::uint32_t holder, std::uint32_t ref);
  void unlink(std::uint32_t holder, std::uint32_t ref);
  void remove_ref(std::uint32_t ref);
  void trim(std::uint32_t holder, std::uint32_t now_s);

  std::vector<HolderSpec> specs_;
  std::int64_t base_ms_ = -1;  // time origin of ref_last_used_ (first time seen)
  std::size_t capacity_ = 0;   // sum of the holders' capacities: what the arrays are sized towards
  bool timed_ = false;         // some holder has a TTL: ref_last_used_ is kept
  bool engine_used_ = false;   // some store had engine hashes: ref_engine_ is kept
  bool tiered_ = false;        // some store was not to the GPU: ref_tiers_ is kept (else every ref is GPU)

  // Blocks by id, each one's first Ref beside it, and the index from hash to id. A block's mask has the
  // holders that keep it on their GPU (what match() counts); a ref without the GPU tier is not in it.
  std::vector<Block> blocks_;
  std::vector<std::uint32_t> block_refs_;  // of a free id: the next free id
  std::uint32_t free_blocks_ = kNil;
  // Open addressing in Robin Hood order: block id | how far the slot is from the block's home << 26 (up
  // to 63, computed past it), or kNil. Probes read blocks only at the right distance from home.
  std::vector<std::uint32_t> index_;
  std::size_t live_blocks_ = 0;

  // (block, holder) pairs, and the arrays beside them that only some directories need.
  std::vector<Ref> refs_;
  std::vector<std::uint64_t> ref_engine_;     // engine hash per ref (engine_used_)
  std::vector<std::uint32_t> ref_last_used_;  // seconds since base_ms_ per ref (timed_)
  std::vector<std::uint8_t> ref_tiers_;       // CacheTier bits per ref (tiered_)
  std::uint32_t free_refs_ = kNil;            // free list threaded through next_in_block
  std::vector<std::uint32_t> engine_table_;   // open addressing: ref or kNil, keyed by (holder, engine hash)
  std::size_t engine_entries_ = 0;

  std::vector<std::uint32_t> lru_head_;
  std::vector<std::uint32_t> lru_tail_;
  std::vector<std::size_t> held_;
  std::uint64_t evicted_ = 0;
  std::uint64_t expired_ = 0;
  std::uint64_t removed_ = 0;
  MaskObserver* observer_ = nullptr;
};

}  // namespace turnout
