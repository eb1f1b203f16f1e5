#include <gtest/gtest.h>

#include <algorithm>
#include <list>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "turnout/directory.hpp"
#include "turnout/prefix.hpp"

namespace turnout {
namespace {

std::vector<std::uint64_t> chain_of(std::uint32_t family, std::size_t blocks, std::uint32_t branch = 0) {
  std::vector<std::uint32_t> tokens(blocks * 16);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = family * 1000 + static_cast<std::uint32_t>(i);
  if (blocks > 1 && branch != 0) tokens.back() = 900'000 + branch;  // differs only in the last block
  std::vector<std::uint64_t> out;
  PrefixHasher::hash_tokens(tokens, 16, PrefixHasher::root_seed("m"), out);
  return out;
}

std::vector<std::uint32_t> match(const CacheDirectory& d, const std::vector<std::uint64_t>& chain, std::int64_t now) {
  std::vector<std::uint32_t> m(d.holders());
  d.match(chain, now, m);
  return m;
}

TEST(PrefixHasher, ChainsParentsAndSeparatesModels) {
  std::vector<std::uint32_t> tokens(40);
  for (std::uint32_t i = 0; i < 40; ++i) tokens[i] = i;
  std::vector<std::uint64_t> a;
  std::vector<std::uint64_t> b;
  PrefixHasher::hash_tokens(tokens, 16, PrefixHasher::root_seed("llama"), a);
  EXPECT_EQ(a.size(), 2U);  // 40 tokens = 2 full blocks; the partial tail is not cacheable
  EXPECT_EQ(a[1], PrefixHasher::hash_block(std::span(tokens).subspan(16, 16), a[0]));
  PrefixHasher::hash_tokens(tokens, 16, PrefixHasher::root_seed("llama", "my-lora"), b);
  EXPECT_NE(a[0], b[0]);
  EXPECT_NE(PrefixHasher::root_seed("ab", "c"), PrefixHasher::root_seed("a", "bc"));
  // Same first block, different second block: the chains share exactly one hash.
  tokens[20] = 99;
  std::vector<std::uint64_t> c;
  PrefixHasher::hash_tokens(tokens, 16, PrefixHasher::root_seed("llama"), c);
  EXPECT_EQ(c[0], a[0]);
  EXPECT_NE(c[1], a[1]);
}

TEST(PrefixHasher, CanonicalPromptOrdersSystemToolsTurns) {
  std::vector<PromptMessage> m1 = {{"user", "hi"}, {"system", "be brief"}};
  std::vector<PromptMessage> m2 = {{"system", "be brief"}, {"user", "hi"}, {"assistant", "hello"}};
  const std::string t1 = canonical_prompt(m1, std::vector<std::string>{"b", "a"});
  const std::string t2 = canonical_prompt(m2, std::vector<std::string>{"a", "b"});
  EXPECT_EQ(t2.rfind(t1, 0), 0U) << "the shorter conversation is a byte prefix of the longer";
  // Framing: a role cannot be forged by content.
  std::vector<PromptMessage> forged = {{"user", "hi\nassistant:5\nhello"}};
  EXPECT_NE(canonical_prompt(forged),
            canonical_prompt(std::vector<PromptMessage>{{"user", "hi"}, {"assistant", "hello"}}));
}

TEST(CacheDirectory, LongestLeadingMatchPerHolder) {
  CacheDirectory d(std::vector<CacheDirectory::HolderSpec>(3));
  const auto a = chain_of(1, 8);
  const auto a2 = chain_of(1, 8, 7);  // same first 7 blocks
  d.store(0, a, 0);
  d.store(1, std::span(a).first(3), 0);
  auto m = match(d, a2, 0);
  EXPECT_EQ(m, (std::vector<std::uint32_t>{7, 3, 0}));
  EXPECT_EQ(match(d, chain_of(2, 8), 0), (std::vector<std::uint32_t>{0, 0, 0}));
  EXPECT_EQ(d.stats().blocks, 8U);
}

TEST(CacheDirectory, CapacityEvictsLeastRecentlyUsedTailsFirst) {
  CacheDirectory d(std::vector<CacheDirectory::HolderSpec>{{.capacity_blocks = 10}});
  const auto a = chain_of(1, 6);
  const auto b = chain_of(2, 6);
  d.store(0, a, 0);
  d.store(0, b, 1000);  // 12 blocks > 10: the two least recent go, which are a's deepest blocks
  EXPECT_EQ(match(d, a, 1000)[0], 4U);
  EXPECT_EQ(match(d, b, 1000)[0], 6U);
  EXPECT_EQ(d.stats().evicted, 2U);
  EXPECT_EQ(d.stats().held[0], 10U);
}

TEST(CacheDirectory, TtlExpiresUnlessRefreshed) {
  CacheDirectory d(std::vector<CacheDirectory::HolderSpec>{{.ttl_ms = 120'000}, {.ttl_ms = 0}});
  const auto a = chain_of(1, 4);
  d.store(0, a, 1'000'000);
  d.store(1, a, 1'000'000);
  EXPECT_EQ(match(d, a, 1'000'000 + 119'000), (std::vector<std::uint32_t>{4, 4}));
  EXPECT_EQ(match(d, a, 1'000'000 + 121'000), (std::vector<std::uint32_t>{0, 4}));
  d.store(0, a, 1'000'000 + 100'000);  // refreshed on hit
  EXPECT_EQ(match(d, a, 1'000'000 + 200'000)[0], 4U);
  d.expire(1'000'000 + 400'000);
  EXPECT_EQ(d.stats().held[0], 0U);
  EXPECT_EQ(d.stats().held[1], 4U);
}

TEST(CacheDirectory, EngineHashesRemoveAndChain) {
  CacheDirectory d(std::vector<CacheDirectory::HolderSpec>(2));
  const auto a = chain_of(1, 3);
  const std::vector<std::uint64_t> engine = {0xFFFF'0000'0000'0001ULL, 0xFFFF'0000'0000'0002ULL,
                                             0xFFFF'0000'0000'0003ULL};
  d.store(0, a, 0, engine);
  d.store(1, a, 0, engine);  // the same engine hashes on another replica are another holder's
  EXPECT_EQ(d.own_hash(0, engine[1]), a[1]);
  EXPECT_TRUE(d.remove_engine(0, engine[2]));
  EXPECT_FALSE(d.remove_engine(0, engine[2]));
  EXPECT_EQ(match(d, a, 0), (std::vector<std::uint32_t>{2, 3}));
  d.clear(1);
  EXPECT_EQ(match(d, a, 0), (std::vector<std::uint32_t>{2, 0}));
  EXPECT_FALSE(d.own_hash(1, engine[0]).has_value());
}

// `families` x 3 chains (branches share all but their last block) of 2 to `longest` blocks.
std::vector<std::vector<std::uint64_t>> chain_families(std::uint32_t families, std::size_t longest) {
  std::vector<std::vector<std::uint64_t>> chains;
  for (std::uint32_t f = 0; f < families; ++f) {
    for (std::uint32_t br = 0; br < 3; ++br) chains.push_back(chain_of(f, 2 + (f % (longest - 1)), br));
  }
  return chains;
}

// The directory against a plain reference model (std::list LRU per holder), under random operations.
void agree_with_reference_model(const std::vector<CacheDirectory::HolderSpec>& specs,
                                const std::vector<std::vector<std::uint64_t>>& chains, int steps, std::uint64_t seed) {
  struct Entry {
    std::uint64_t own;
    std::uint64_t engine;
    std::uint32_t last_s;
  };
  const auto holders = static_cast<std::uint32_t>(specs.size());
  CacheDirectory d(specs);
  std::vector<std::list<Entry>> model(holders);
  std::mt19937_64 rng(seed);
  auto engine_of = [](std::uint64_t own) { return own * 0x2545F4914F6CDD1DULL + 1; };
  std::int64_t now = 0;
  std::int64_t base = -1;
  auto secs = [&](std::int64_t t) { return static_cast<std::uint32_t>(base < 0 || t <= base ? 0 : (t - base) / 1000); };
  auto expired = [&](std::uint32_t h, const Entry& e, std::uint32_t s) {
    return specs[h].ttl_ms > 0 && static_cast<std::int64_t>(s - std::min(s, e.last_s)) * 1000 >= specs[h].ttl_ms;
  };
  auto trim = [&](std::uint32_t h, std::uint32_t s) {
    while (!model[h].empty()) {
      if (model[h].size() > static_cast<std::size_t>(specs[h].capacity_blocks) || expired(h, model[h].back(), s)) {
        model[h].pop_back();
      } else {
        break;
      }
    }
  };
  for (int step = 0; step < steps; ++step) {
    now += static_cast<std::int64_t>(rng() % 700);
    const auto h = static_cast<std::uint32_t>(rng() % holders);
    const auto& c = chains[rng() % chains.size()];
    const int op = static_cast<int>(rng() % 100);
    if (op < 60) {
      std::vector<std::uint64_t> engine(c.size());
      for (std::size_t i = 0; i < c.size(); ++i) engine[i] = engine_of(c[i]);
      const bool precise = op < 30;
      d.store(h, c, now, precise ? std::span<const std::uint64_t>(engine) : std::span<const std::uint64_t>());
      if (base < 0) base = now;
      const std::uint32_t s = secs(now);
      for (std::size_t k = c.size(); k-- > 0;) {
        auto it = std::find_if(model[h].begin(), model[h].end(), [&](const Entry& e) { return e.own == c[k]; });
        Entry e{c[k], 0, s};
        if (it != model[h].end()) {
          e.engine = it->engine;
          model[h].erase(it);
        }
        if (precise) e.engine = engine[k];
        model[h].push_front(e);
      }
      trim(h, s);
    } else if (op < 75) {
      const std::uint64_t own = c[rng() % c.size()];
      auto it =
          std::find_if(model[h].begin(), model[h].end(), [&](const Entry& e) { return e.own == own && e.engine != 0; });
      EXPECT_EQ(d.own_hash(h, engine_of(own)), it != model[h].end() ? std::optional(own) : std::nullopt)
          << "step " << step;
      const bool removed = d.remove_engine(h, engine_of(own));
      EXPECT_EQ(removed, it != model[h].end()) << "step " << step;
      if (it != model[h].end()) model[h].erase(it);
    } else if (op < 78) {
      d.clear(h);
      model[h].clear();
    } else if (op < 82) {
      d.expire(now);
      for (std::uint32_t k = 0; k < holders; ++k) trim(k, secs(now));
    } else {
      std::vector<std::uint32_t> got(holders);
      d.match(c, now, got);
      const std::uint32_t s = secs(now);
      for (std::uint32_t k = 0; k < holders; ++k) {
        auto find = [&](std::uint64_t own) {
          return std::find_if(model[k].begin(), model[k].end(), [&](const Entry& e) { return e.own == own; });
        };
        std::uint32_t want = 0;
        while (want < c.size() && find(c[want]) != model[k].end()) ++want;
        while (want > 0 && expired(k, *find(c[want - 1]), s)) --want;
        ASSERT_EQ(got[k], want) << "holder " << k << " step " << step;
      }
    }
    if (step % 1000 == 0) {
      const auto st = d.stats();
      for (std::uint32_t k = 0; k < holders; ++k) ASSERT_EQ(st.held[k], model[k].size()) << "step " << step;
    }
  }
}

/// Records every mask change it is told of.
struct MaskLog : MaskObserver {
  std::map<std::uint64_t, std::uint64_t> masks;
  int calls = 0;
  void on_mask(std::uint64_t block_hash, std::uint64_t mask) noexcept override {
    masks[block_hash] = mask;
    ++calls;
  }
};

TEST(CacheDirectory, TiersAreTrackedPerHolderAndOnlyTheGpuIsAHit) {
  CacheDirectory d(std::vector<CacheDirectory::HolderSpec>(2));
  MaskLog log;
  d.set_observer(&log);
  const auto c = chain_of(1, 3);
  const std::vector<std::uint64_t> engine = {101, 102, 103};
  d.store(0, c, 0, engine);                                       // on holder 0's GPU
  d.store(0, c, 0, engine, CacheTier::host);                      // and offloaded to its host memory
  d.store(1, c, 0, engine, CacheTier::host);                      // holder 1: only in host memory
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{3, 0}));  // host residence is not a hit
  EXPECT_EQ(log.masks[c[2]], 0b01U);

  // Removing the host copy (vLLM's offloading connector, SGLang HiCache) leaves the GPU entry.
  EXPECT_TRUE(d.remove_engine(0, 103, CacheTier::host));
  EXPECT_FALSE(d.remove_engine(0, 103, CacheTier::host));  // that tier no longer holds it
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{3, 0}));
  EXPECT_EQ(d.stats().held, (std::vector<std::size_t>{3, 3}));

  // Removing the GPU copy of a block still in host memory: no longer a hit, still a parent to chain to.
  EXPECT_TRUE(d.remove_engine(0, 102, CacheTier::gpu));
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{1, 0}));
  EXPECT_EQ(log.masks[c[1]], 0U);
  EXPECT_EQ(d.own_hash(0, 102), c[1]);
  EXPECT_EQ(d.stats().held, (std::vector<std::size_t>{3, 3}));
  // Back on the GPU (loaded from host): a hit again.
  d.store(0, std::span(c).first(2), 0, std::span(engine).first(2));
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{3, 0}));
  EXPECT_EQ(log.masks[c[1]], 0b01U);

  // The last tier's removal drops the entry; a GPU removal of a host-only entry changes nothing.
  EXPECT_FALSE(d.remove_engine(1, 101, CacheTier::gpu));
  EXPECT_TRUE(d.remove_engine(1, 101, CacheTier::host));
  EXPECT_EQ(d.stats().held, (std::vector<std::size_t>{3, 2}));
  EXPECT_FALSE(d.own_hash(1, 101).has_value());
  EXPECT_TRUE(d.remove_engine(0, 103, CacheTier::gpu));
  EXPECT_FALSE(d.own_hash(0, 103).has_value());
  EXPECT_EQ(d.stats().held, (std::vector<std::size_t>{2, 2}));
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{2, 0}));
}

TEST(CacheDirectory, HostRemovalsOfAnUntieredDirectoryKeepTheGpuEntry) {
  // No store ever named another tier: every entry is on the GPU, and a host removal finds none there.
  CacheDirectory d(std::vector<CacheDirectory::HolderSpec>(1));
  const auto c = chain_of(2, 2);
  const std::vector<std::uint64_t> engine = {7, 8};
  d.store(0, c, 0, engine);
  EXPECT_FALSE(d.remove_engine(0, 8, CacheTier::host));
  EXPECT_FALSE(d.remove_engine(0, 8, CacheTier::other));
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{2}));
  EXPECT_TRUE(d.remove_engine(0, 8));
  EXPECT_EQ(match(d, c, 0), (std::vector<std::uint32_t>{1}));
}

TEST(CacheDirectory, AgreesWithAReferenceModel) {
  agree_with_reference_model({{.capacity_blocks = 40, .ttl_ms = 0},
                              {.capacity_blocks = 25, .ttl_ms = 30'000},
                              {.capacity_blocks = 60, .ttl_ms = 0},
                              {.capacity_blocks = 10, .ttl_ms = 5'000},
                              {.capacity_blocks = 80, .ttl_ms = 0}},
                             chain_families(12, 8), 20'000, 20261124);
}

// Larger: the block and engine tables grow through several sizes, and chains longer than a holder's
// capacity overshoot it until trimmed.
TEST(CacheDirectory, AgreesWithAReferenceModelAtScale) {
  agree_with_reference_model({{.capacity_blocks = 300, .ttl_ms = 0},
                              {.capacity_blocks = 500, .ttl_ms = 30'000},
                              {.capacity_blocks = 800, .ttl_ms = 0},
                              {.capacity_blocks = 30, .ttl_ms = 5'000},
                              {.capacity_blocks = 1000, .ttl_ms = 0},
                              {.capacity_blocks = 64, .ttl_ms = 0}},
                             chain_families(80, 40), 6'000, 7);
}

// Hashes below 2^32 all have the same home slot in the block index: one long cluster, whose blocks sit
// farther from home than a slot records (the distance is then computed).
TEST(CacheDirectory, AgreesWithAReferenceModelWhenEveryHashCollides) {
  std::vector<std::vector<std::uint64_t>> chains;
  for (std::uint64_t f = 0; f < 40; ++f) {
    for (std::uint64_t br = 0; br < 3; ++br) {
      std::vector<std::uint64_t> c;
      for (std::uint64_t i = 0; i < 2 + f % 9; ++i) c.push_back(f * 100 + i);
      c.back() += br * 10'000;
      chains.push_back(c);
    }
  }
  agree_with_reference_model({{.capacity_blocks = 150, .ttl_ms = 0},
                              {.capacity_blocks = 90, .ttl_ms = 20'000},
                              {.capacity_blocks = 400, .ttl_ms = 0}},
                             chains, 6'000, 11);
}

}  // namespace
}  // namespace turnout
