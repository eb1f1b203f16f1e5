#pragma once
// vLLM / SGLang KV-cache events, decoded from the engines' msgpack payloads into plain values.
// Wire format: see DESIGN.md section 6. Decoding is pure (no sockets); the subscriber lives in io/.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "switchyard/result.hpp"

namespace switchyard {

/// An engine's block hash reduced to 64 bits: uint64 and int64 hashes keep their bits; `bin` hashes (vLLM
/// with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0: 32-byte sha256 or 16-byte xxh3_128 digests; 1 to 64 bytes
/// accepted) are folded with XXH3-64. Only ever compared with other engine hashes.
using EngineHash = std::uint64_t;

struct BlockStored {
  std::vector<EngineHash> block_hashes;
  std::optional<EngineHash> parent_block_hash;  ///< nullopt at the root
  std::vector<std::uint32_t> token_ids;         ///< block_size x block_hashes.size()
  std::int64_t block_size = 0;
  std::string lora_name;  ///< "" when absent
  std::string medium;     ///< "" when absent (GPU, CPU, ...)
};

struct BlockRemoved {
  std::vector<EngineHash> block_hashes;
  std::string medium;
};

struct AllBlocksCleared {};

using KvEvent = std::variant<BlockStored, BlockRemoved, AllBlocksCleared>;

struct KvEventBatch {
  double ts = 0;
  std::vector<KvEvent> events;
  std::optional<std::int64_t> data_parallel_rank;
  std::uint32_t skipped_unknown = 0;  ///< events of types this decoder does not know (ignored, counted)
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
/// trailing defaulted fields may be absent. Errors (ErrorCode::invalid_argument) say what was wrong.
[[nodiscard]] Result<KvEventBatch> decode_kv_events(std::span<const std::byte> payload,
                                                    const KvDecodeLimits& limits = {});

}  // namespace switchyard
