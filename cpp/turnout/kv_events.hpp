#pragma once
// vLLM / SGLang KV-cache events, decoded from the engines' msgpack payloads into plain values.
// Wire format: see docs/architecture.md, "KV events". Decoding is pure (no sockets); the subscriber lives in io/.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "turnout/directory.hpp"
#include "turnout/result.hpp"

namespace turnout {

/// An engine's block hash reduced to 64 bits: uint64 and int64 hashes keep their bits; `bin` hashes (vLLM
/// with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0: 32-byte sha256 or 16-byte xxh3_128 digests; 1 to 64 bytes
/// accepted) are folded with XXH3-64. Only ever compared with other engine hashes.
using EngineHash = std::uint64_t;

struct BlockStored {
  std::vector<EngineHash> block_hashes;
  std::optional<EngineHash> parent_block_hash;  ///< nullopt at the root
  std::vector<std::uint32_t> token_ids;         ///< block_size x block_hashes.size()
  std::int64_t block_size = 0;
  std::string lora_name;                   ///< "" when absent
  std::string medium;                      ///< "" when absent (GPU, CPU, ...)
  std::optional<std::uint32_t> group_idx;  ///< the engine's KV cache group; nullopt when not sent
  std::string cache_kind;                  ///< kv_cache_spec_kind: the group's kind ("" when absent)
};

struct BlockRemoved {
  std::vector<EngineHash> block_hashes;
  std::string medium;
  std::optional<std::uint32_t> group_idx;
};

struct AllBlocksCleared {};

using KvEvent = std::variant<BlockStored, BlockRemoved, AllBlocksCleared>;

struct KvEventBatch {
  double ts = 0;
  std::vector<KvEvent> events;
  std::optional<std::int64_t> data_parallel_rank;
  std::uint32_t skipped_unknown = 0;  ///< events of types this decoder does not know (ignored, counted)
  /// Events of known types this decoder cannot use (dropped, counted; the rest of the batch stands):
  /// stores with fewer hashes than their token ids imply (sliding-window and Mamba groups skip null
  /// blocks), connector placeholders (`token_ids=[]`, `block_size=0`), SGLang EAGLE bigram pages (pairs
  /// for token ids), more blocks than KvDecodeLimits allow, fields of the wrong type.
  std::uint32_t unusable = 0;
  std::string unusable_reason;  ///< why the first unusable event was dropped ("" when none)
};

/// The directory tier of an event's `medium`: "" (engines that do not send it) and "GPU" (vLLM's and
/// SGLang's device cache) are the GPU; "CPU" (vLLM's offloading connector) and "CPU_TIER1" (SGLang
/// HiCache's host pool) are the host; anything else ("CPU_TIER2", storage tiers) is `other`.
[[nodiscard]] CacheTier medium_tier(std::string_view medium) noexcept;

/// Which KV cache groups of one publisher feed the prefix directory. Hybrid models keep one cache per
/// group of layers (full attention, sliding window, Mamba state) and vLLM reports every group's blocks
/// under the same block hashes, tagged `group_idx`. Only full-attention-like groups hold whole prefixes:
/// a sliding-window group dropping blocks behind its window must not erase prefixes the full-attention
/// group still holds. BlockStored names its group's kind (kv_cache_spec_kind); BlockRemoved names only
/// the group, so kinds are learned from stores. Without a kind, group 0 or no group at all feeds it
/// (engines without groups, and vLLM before kinds: the rule Dynamo's router keeps). The Router keeps one
/// per replica across batches (Router::apply_kv_events) and resets it with the replica (reset_kv: a
/// restarted engine may number its groups anew).
class KvCacheGroups {
 public:
  /// Whether an event of `group` feeds the directory. `kind` is the kv_cache_spec_kind it names ("" when
  /// none); a kind this decoder knows is remembered for the group (the first 64 groups).
  bool admit(std::optional<std::uint32_t> group, std::string_view kind) noexcept;
  /// The same for a decoded event (AllBlocksCleared always feeds it).
  bool admit(const KvEvent& event) noexcept;
  void reset() noexcept { known_ = prefix_ = 0; }

 private:
  std::uint64_t known_ = 0;   // bit g: the kind of group g is known
  std::uint64_t prefix_ = 0;  // bit g: group g holds whole prefixes
};

/// Hard limits the decoder enforces before allocating (absurd sizes are rejected, never allocated).
struct KvDecodeLimits {
  std::size_t max_payload_bytes = 64U << 20;
  std::size_t max_events = 1U << 16;
  std::size_t max_blocks_per_event = 1U << 16;
  std::size_t max_tokens_per_event = 1U << 22;
  std::int64_t max_block_size = 4096;
  std::size_t max_depth = 32;               ///< nested arrays/maps (vLLM's deepest is 5); capped at 64
  std::size_t max_string_bytes = 1U << 20;  ///< any one str, bin or ext value
};

/// Decodes one payload (the third frame of a live message, or of a replay reply). Accepts the
/// positional-array and the tagged-map encodings of both batch and events; ignores unknown fields;
/// trailing defaulted fields may be absent. An event it cannot use is dropped and counted
/// (KvEventBatch::unusable); the others stand. Only a payload that is not a batch (malformed msgpack, no
/// events array, a bad ts, over the size limits) is an error (ErrorCode::invalid_argument) saying what was
/// wrong. Group kinds are not applied here: the Router keeps them per replica (KvCacheGroups).
[[nodiscard]] Result<KvEventBatch> decode_kv_events(std::span<const std::byte> payload,
                                                    const KvDecodeLimits& limits = {});

}  // namespace turnout
