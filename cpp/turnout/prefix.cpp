#include "turnout/prefix.hpp"

#include <xxhash.h>

#include <algorithm>
#include <bit>

namespace turnout {

static_assert(std::endian::native == std::endian::little,
              "block hashes are defined over little-endian u32 token ids; add a byte swap for big-endian");

std::uint64_t PrefixHasher::root_seed(std::string_view model, std::string_view lora, std::string_view salt) {
  // Length-prefixed parts: ("ab", "c") and ("a", "bc") must not collide.
  std::string buf;
  for (std::string_view part : {model, lora, salt}) {
    const auto n = static_cast<std::uint64_t>(part.size());
    buf.append(reinterpret_cast<const char*>(&n), sizeof n);
    buf.append(part);
  }
  return XXH3_64bits(buf.data(), buf.size());
}

std::uint64_t PrefixHasher::hash_block(std::span<const std::uint32_t> tokens, std::uint64_t parent) noexcept {
  return XXH3_64bits_withSeed(tokens.data(), tokens.size_bytes(), parent);
}

void PrefixHasher::hash_tokens(std::span<const std::uint32_t> tokens, std::size_t block_size, std::uint64_t root,
                               std::vector<std::uint64_t>& out) {
  if (block_size == 0) return;
  const std::size_t blocks = tokens.size() / block_size;
  out.reserve(out.size() + blocks);
  std::uint64_t parent = root;
  for (std::size_t b = 0; b < blocks; ++b) {
    parent = hash_block(tokens.subspan(b * block_size, block_size), parent);
    out.push_back(parent);
  }
}

void PrefixHasher::hash_text(std::string_view text, std::size_t block_size, std::uint64_t root,
                             std::vector<std::uint64_t>& out) {
  const std::size_t chars = block_size * kCharsPerToken;
  if (chars == 0) return;
  const std::size_t blocks = text.size() / chars;
  out.reserve(out.size() + blocks);
  std::uint64_t parent = root;
  for (std::size_t b = 0; b < blocks; ++b) {
    parent = XXH3_64bits_withSeed(text.data() + b * chars, chars, parent);
    out.push_back(parent);
  }
}

std::string canonical_prompt(std::span<const PromptMessage> messages, std::span<const std::string> tools) {
  std::string out;
  auto frame = [&out](std::string_view kind, std::string_view body) {
    // kind, then the body's byte length, then the body: unambiguous whatever the body holds.
    out.append(kind);
    out.push_back(':');
    out.append(std::to_string(body.size()));
    out.push_back('\n');
    out.append(body);
    out.push_back('\n');
  };
  for (const auto& m : messages) {
    if (m.role == "system" || m.role == "developer") frame(m.role, m.content);
  }
  std::vector<std::string> sorted(tools.begin(), tools.end());
  std::sort(sorted.begin(), sorted.end());
  for (const auto& t : sorted) frame("tool-def", t);
  for (const auto& m : messages) {
    if (m.role != "system" && m.role != "developer") frame(m.role, m.content);
  }
  return out;
}

}  // namespace turnout
