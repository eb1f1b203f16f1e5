#pragma once
// Prefix hashing (the scheme of NVIDIA Dynamo and the engines' prefix caches): a prompt is cut into
// fixed blocks, each block hashed with XXH3-64 seeded by its parent block's hash, so a block's hash
// names the whole prefix up to and including it. Root seed = model + LoRA + cache salt.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace turnout {

/// Characters per token assumed when a prompt comes as text without token ids.
inline constexpr std::size_t kCharsPerToken = 4;

/// The input tokens of a prompt whose caller did not count them: its token ids if given, else its
/// text at kCharsPerToken characters per token (rounded up), else -1 (unknown). The one estimate the
/// binding and the sidecar both make.
[[nodiscard]] constexpr std::int64_t estimate_input_tokens(std::optional<std::span<const std::uint32_t>> token_ids,
                                                           std::optional<std::string_view> text) noexcept {
  if (token_ids) return static_cast<std::int64_t>(token_ids->size());
  if (text) return static_cast<std::int64_t>((text->size() + kCharsPerToken - 1) / kCharsPerToken);
  return -1;
}

class PrefixHasher {
 public:
  /// Seed of the first block: requests for another model, LoRA or salt never share blocks.
  [[nodiscard]] static std::uint64_t root_seed(std::string_view model, std::string_view lora = {},
                                               std::string_view salt = {});

  /// One block of token ids (little-endian u32 each), chained to its parent's hash.
  [[nodiscard]] static std::uint64_t hash_block(std::span<const std::uint32_t> tokens, std::uint64_t parent) noexcept;

  /// Appends the hash of every *full* block of `block_size` tokens (a partial tail is not cacheable).
  static void hash_tokens(std::span<const std::uint32_t> tokens, std::size_t block_size, std::uint64_t root,
                          std::vector<std::uint64_t>& out);

  /// Same over text, in blocks of block_size x kCharsPerToken bytes.
  static void hash_text(std::string_view text, std::size_t block_size, std::uint64_t root,
                        std::vector<std::uint64_t>& out);
};

/// One message of a chat prompt.
struct PromptMessage {
  std::string role;  ///< system, developer, user, assistant, tool
  std::string content;
};

/// The canonical text of a structured prompt: system/developer messages first (in their order), then
/// tool definitions sorted by name, then the turns in order; each part framed so no two different
/// prompts give the same text. The same conversation prefix gives the same leading bytes, so the same
/// block chain, from Python and from C++.
[[nodiscard]] std::string canonical_prompt(std::span<const PromptMessage> messages,
                                           std::span<const std::string> tools = {});

}  // namespace turnout
