#include "turnout/sim/prompt.hpp"

#include <xxhash.h>

#include "turnout/prefix.hpp"

namespace turnout::sim {

void chain_of(std::span<const std::uint32_t> token_ids, std::vector<std::uint64_t>& out) {
  PrefixHasher::hash_tokens(token_ids, static_cast<std::size_t>(kChainTokens), 0, out);
}

namespace {
// A 50k-token vocabulary, like the engines' tokenizers: ids stay in the range real prompts use.
constexpr std::uint64_t kVocabulary = 50'000;

std::uint32_t token_at(std::uint64_t seed, std::int64_t position) {
  const auto h = XXH3_64bits_withSeed(&position, sizeof position, seed);
  return static_cast<std::uint32_t>(h % kVocabulary);
}
}  // namespace

void synthesize_tokens(std::span<const std::uint64_t> trace_blocks, std::int64_t block_tokens,
                       std::int64_t input_tokens, std::uint64_t salt, std::vector<std::uint32_t>& out) {
  std::int64_t n = 0;
  for (std::size_t b = 0; b < trace_blocks.size() && n < input_tokens; ++b) {
    for (std::int64_t i = 0; i < block_tokens && n < input_tokens; ++i, ++n) {
      out.push_back(token_at(trace_blocks[b], i));
    }
  }
  const std::uint64_t tail = XXH3_64bits_withSeed(&salt, sizeof salt, 0x7a11u);
  for (; n < input_tokens; ++n) out.push_back(token_at(tail, n));
}

}  // namespace turnout::sim
