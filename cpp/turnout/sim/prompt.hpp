#pragma once
// The simulator's clock and a request's true prompt: the ground truth that simulated providers and
// GPUs cache by, independent of what the router predicts.

#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace turnout::sim {

/// Simulated time in microseconds since the Unix epoch (the router sees it as TimeMs = SimTime / 1000).
using SimTime = std::int64_t;
inline constexpr SimTime kNever = std::numeric_limits<SimTime>::max();
inline constexpr SimTime kMicrosPerMs = 1000;
inline constexpr SimTime kMicrosPerS = 1'000'000;

/// Tokens per link of a prompt's chain: every cache granularity the simulator models (engine blocks of
/// 16, 32, 64...; providers' 128-token increments) is a multiple of it.
inline constexpr std::int64_t kChainTokens = 16;

/// A request's true prompt. `chain[i]` names the prefix token_ids[0 .. (i+1) x kChainTokens) (chained
/// XXH3, PrefixHasher with root 0): two prompts share their first k links exactly when they share
/// their first k x 16 tokens. A cache of granularity g = m x 16 tokens holds prefix links m-1, 2m-1, ...
struct Prompt {
  std::span<const std::uint32_t> token_ids;  ///< all input tokens (the trace's, or synthesized)
  std::span<const std::uint64_t> chain;      ///< one link per full kChainTokens tokens
};

/// Appends the chain of `token_ids` to `out` (one link per full kChainTokens tokens).
void chain_of(std::span<const std::uint32_t> token_ids, std::vector<std::uint64_t>& out);

/// Token ids for a trace that logs only block hashes (Mooncake's `hash_ids`, Turnout's `blocks`):
/// `block_tokens` ids per trace block, derived from the block's hash and position, so equal block
/// sequences give equal tokens and different ones different tokens; `input_tokens` in all (the last
/// block may be partial; tokens past the logged blocks are unique to this request, from `salt`).
/// Appends to `out`.
void synthesize_tokens(std::span<const std::uint64_t> trace_blocks, std::int64_t block_tokens,
                       std::int64_t input_tokens, std::uint64_t salt, std::vector<std::uint32_t>& out);

}  // namespace turnout::sim
