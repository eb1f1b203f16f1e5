#pragma once
// Which holders (replicas of a pool, or MaaS targets) hold which prefix blocks: the cache directory.
// Fixed-size records in flat arrays, open addressing with linear probing, per-holder LRU lists and
// TTL. Memory is bounded by the holders' capacities whatever the input.

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace switchyard {

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
  static constexpr std::uint32_t kMaxBlocks = 1U << 26;  ///< a block index shares a word with the holder

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
    std::size_t bytes = 0;          ///< memory of every array, as allocated
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

  /// Records that `holder` holds every block of `chain`, used at `now` (refreshing TTL and LRU). With
  /// `engine_hashes` (one per block), the blocks can later be removed by the engine's hash.
  void store(std::uint32_t holder, std::span<const std::uint64_t> chain, std::int64_t now_ms,
             std::span<const std::uint64_t> engine_hashes = {});

  /// Removes the block `holder` stored under an engine hash; false when unknown.
  bool remove_engine(std::uint32_t holder, std::uint64_t engine_hash);
  /// Our own hash of the block `holder` stored under an engine hash (to chain a child block to it).
  [[nodiscard]] std::optional<std::uint64_t> own_hash(std::uint32_t holder, std::uint64_t engine_hash) const;
  /// Forgets everything `holder` holds (AllBlocksCleared, a publisher reset).
  void clear(std::uint32_t holder);
  /// Drops entries past their TTL.
  void expire(std::int64_t now_ms);

  [[nodiscard]] Stats stats() const;
  /// Calls `observer` on every mask change from now on (nullptr: none). Not owned.
  void set_observer(MaskObserver* observer) noexcept { observer_ = observer; }

 private:
  static constexpr std::uint32_t kNil = 0xFFFFFFFFU;

  // One (block, holder) pair: 20 bytes. `block_holder` = block index << 6 | holder.
  struct Ref {
    std::uint32_t block_holder;
    std::uint32_t next_in_block;
    std::uint32_t lru_prev;  // towards the most recent
    std::uint32_t lru_next;  // towards the least recent
    std::uint32_t last_used_s;
  };

  [[nodiscard]] std::uint32_t seconds(std::int64_t now_ms) const noexcept;
  [[nodiscard]] bool expired(const Ref& r, std::uint32_t holder, std::uint32_t now_s) const noexcept;
  [[nodiscard]] std::uint32_t find_block(std::uint64_t hash) const noexcept;
  [[nodiscard]] std::uint32_t find_ref(std::uint32_t block, std::uint32_t holder) const noexcept;
  [[nodiscard]] std::uint32_t find_engine(std::uint32_t holder, std::uint64_t engine_hash) const noexcept;
  std::uint32_t insert_block(std::uint64_t hash);
  void erase_block(std::uint32_t block);
  [[nodiscard]] bool engine_indexed(std::uint32_t ref) const noexcept;  ///< by ref, not by key
  void insert_engine(std::uint32_t ref);
  void erase_engine(std::uint32_t ref);
  void link_front(std::uint32_t holder, std::uint32_t ref);
  void unlink(std::uint32_t holder, std::uint32_t ref);
  void remove_ref(std::uint32_t ref);
  void trim(std::uint32_t holder, std::uint32_t now_s);
  static void grow(std::vector<std::uint32_t>& table, std::size_t used, auto&& key_of);

  std::vector<HolderSpec> specs_;
  std::int64_t base_ms_ = -1;  // time origin of last_used_s (first time seen)

  // Blocks, structure of arrays.
  std::vector<std::uint64_t> block_hash_;
  std::vector<std::uint64_t> block_mask_;  // bit h: holder h holds it
  std::vector<std::uint32_t> block_refs_;  // first Ref of the block's list
  std::vector<std::uint32_t> free_blocks_;
  std::vector<std::uint32_t> block_table_;  // open addressing: block index or kNil
  std::size_t live_blocks_ = 0;

  std::vector<Ref> refs_;
  std::vector<std::uint64_t> ref_engine_;  // engine hash per ref (precise mode only, else empty)
  std::vector<std::uint32_t> free_refs_;
  std::vector<std::uint32_t> engine_table_;
  std::size_t engine_entries_ = 0;

  std::vector<std::uint32_t> lru_head_;
  std::vector<std::uint32_t> lru_tail_;
  std::vector<std::size_t> held_;
  std::uint64_t evicted_ = 0;
  std::uint64_t expired_ = 0;
  std::uint64_t removed_ = 0;
  MaskObserver* observer_ = nullptr;
};

}  // namespace switchyard
