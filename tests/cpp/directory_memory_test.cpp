// Memory of the cache directory (Stats::bytes: every array as allocated): at most 64 bytes per
// (block, holder) once the holders are full, in precise and approximate mode, and nothing allocated for
// capacity that is not used.

#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <vector>

#include "turnout/directory.hpp"
#include "turnout/prefix.hpp"

namespace turnout {
namespace {

constexpr std::int64_t kNow = 1'767'225'600'000;
constexpr std::int64_t kCapacity = 8'000;
constexpr std::size_t kHolders = 8;
constexpr std::size_t kChainBlocks = 128;  // a 2,048-token prompt

CacheDirectory::HolderSpec precise_spec() { return {.capacity_blocks = kCapacity, .ttl_ms = 0}; }
CacheDirectory::HolderSpec approximate_spec() { return {.capacity_blocks = kCapacity, .ttl_ms = 120'000}; }

/// The chain of a distinct prompt: `shared` leading blocks common to every prompt, then its own.
std::vector<std::uint64_t> chain_of(std::uint64_t prompt, std::size_t shared = 0) {
  std::vector<std::uint32_t> tokens(kChainBlocks * 16);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = i < shared * 16 ? static_cast<std::uint32_t>(i) : static_cast<std::uint32_t>(prompt * 7919 + i);
  }
  std::vector<std::uint64_t> chain;
  PrefixHasher::hash_tokens(tokens, 16, PrefixHasher::root_seed("llama"), chain);
  return chain;
}

/// Stores `rounds` times each holder's capacity of prompts (engine hashes in precise mode): the same
/// prompts on `copies` holders in a row, distinct ones on the others.
void fill(CacheDirectory& dir, bool precise, std::uint64_t first_prompt, int rounds = 2, std::size_t shared = 0,
          std::uint32_t copies = 1) {
  std::vector<std::uint64_t> engine(kChainBlocks);
  for (std::uint32_t h = 0; h < dir.holders(); ++h) {
    std::uint64_t prompt = first_prompt + std::uint64_t{h / copies} * 100'000;
    for (std::int64_t stored = 0; stored < rounds * kCapacity; stored += kChainBlocks) {
      const auto chain = chain_of(prompt++, shared);
      for (std::size_t i = 0; i < chain.size(); ++i) engine[i] = chain[i] ^ (0xE0ULL + h);  // per replica
      dir.store(h, chain, kNow, precise ? std::span<const std::uint64_t>(engine) : std::span<const std::uint64_t>());
    }
  }
}

double bytes_per_entry(const CacheDirectory& dir) {
  const auto st = dir.stats();
  std::size_t entries = 0;
  for (std::size_t n : st.held) entries += n;
  return static_cast<double>(st.bytes) / static_cast<double>(entries);
}

TEST(CacheDirectoryMemory, PreciseModeFullIsAtMost64BytesPerEntry) {
  CacheDirectory dir(std::vector<CacheDirectory::HolderSpec>(kHolders, precise_spec()));
  fill(dir, true, 0);
  for (std::size_t n : dir.stats().held) ASSERT_EQ(n, static_cast<std::size_t>(kCapacity));
  EXPECT_EQ(dir.stats().blocks, kHolders * kCapacity) << "no block is shared: the most memory per entry";
  EXPECT_LE(bytes_per_entry(dir), 64.0);
}

TEST(CacheDirectoryMemory, ApproximateModeFullIsAtMost64BytesPerEntry) {
  CacheDirectory dir(std::vector<CacheDirectory::HolderSpec>(kHolders, approximate_spec()));
  fill(dir, false, 0);
  for (std::size_t n : dir.stats().held) ASSERT_EQ(n, static_cast<std::size_t>(kCapacity));
  EXPECT_LE(bytes_per_entry(dir), 64.0);
}

TEST(CacheDirectoryMemory, SharedPrefixesCostLessPerEntry) {
  // Every prompt on two holders, and a 512-token system prompt all prompts start with: fewer blocks for
  // as many entries.
  for (const bool precise : {true, false}) {
    CacheDirectory shared(
        std::vector<CacheDirectory::HolderSpec>(kHolders, precise ? precise_spec() : approximate_spec()));
    fill(shared, precise, 0, 2, 32, 2);
    CacheDirectory distinct(
        std::vector<CacheDirectory::HolderSpec>(kHolders, precise ? precise_spec() : approximate_spec()));
    fill(distinct, precise, 0);
    EXPECT_LT(shared.stats().blocks, distinct.stats().blocks);
    EXPECT_LE(bytes_per_entry(shared), bytes_per_entry(distinct)) << (precise ? "precise" : "approximate");
  }
}

TEST(CacheDirectoryMemory, ChurnAtCapacityAllocatesNothingMore) {
  CacheDirectory dir(std::vector<CacheDirectory::HolderSpec>(kHolders, precise_spec()));
  fill(dir, true, 0);
  const std::size_t full = dir.stats().bytes;
  fill(dir, true, 1'000'000);  // everything evicted and replaced
  for (std::uint32_t h = 0; h < kHolders; ++h) dir.clear(h);
  EXPECT_EQ(dir.stats().blocks, 0U);
  fill(dir, true, 2'000'000);
  EXPECT_EQ(dir.stats().bytes, full);
}

TEST(CacheDirectoryMemory, HugeCapacitiesAreNotAllocatedUpFront) {
  CacheDirectory dir(std::vector<CacheDirectory::HolderSpec>(
      CacheDirectory::kMaxHolders, {.capacity_blocks = CacheDirectory::kMaxBlocks, .ttl_ms = 0}));
  EXPECT_LT(dir.stats().bytes, 8U << 10);
  std::vector<std::uint64_t> engine(kChainBlocks);
  for (std::uint64_t p = 0; p < 8; ++p) {
    const auto chain = chain_of(p);
    for (std::size_t i = 0; i < chain.size(); ++i) engine[i] = chain[i] + 1;
    dir.store(static_cast<std::uint32_t>(p), chain, kNow, engine);
  }
  // 1,024 entries: arrays grow by half as they fill, so mid-growth an entry costs under 96 bytes.
  EXPECT_LT(dir.stats().bytes, std::size_t{1024} * 96 + (8U << 10));
}

}  // namespace
}  // namespace turnout
