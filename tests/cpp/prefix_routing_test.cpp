// Cache-aware routing: the directory learns from decisions (approximate mode) or from engine events
// (precise mode), and the next decisions follow it.

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "test_configs.hpp"
#include "turnout/prefix.hpp"
#include "turnout/router.hpp"

namespace turnout {
namespace {

constexpr TimeMs kT0 = 1'767'225'600'000;

std::string pool_yaml(bool precise) {
  std::string replicas;
  for (int i = 0; i < 4; ++i) {
    replicas += "      - {endpoint: \"http://127.0.0.1:900" + std::to_string(i) + "\", max_inflight: 8" +
                (precise ? ", kv_events: \"tcp://127.0.0.1:700" + std::to_string(i) + "\"" : std::string()) + "}\n";
  }
  return R"(version: 1
targets:
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public]
    context_window: 32768
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2.00}
    kv: {block_size: 16, capacity_blocks: 1000}
    replicas:
)" + replicas +
         R"(  openai-a:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
    cache: {ttl_s: 600, min_prefix_tokens: 1024}
  openai-b:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
    cache: {ttl_s: 600, min_prefix_tokens: 1024}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 100
    routes: [{target: pool}]
    affinity: {prefix: true}
  maas-chat:
    data_class: public
    max_output_tokens: 100
    routes: [{target: openai-a, weight: 50}, {target: openai-b, weight: 50}]
    affinity: {prefix: true}
)";
}

std::vector<std::uint32_t> prompt(std::uint32_t family, std::size_t tokens) {
  std::vector<std::uint32_t> t(tokens);
  for (std::size_t i = 0; i < tokens; ++i) t[i] = family * 100'000 + static_cast<std::uint32_t>(i);
  return t;
}

bool has(const Decision& d, ReasonCode code) {
  for (const auto& r : d.reasons) {
    if (r.code == code) return true;
  }
  return false;
}

// Routes a prompt and, unless `keep` is set, reports it done (a finished turn leaves no load behind).
Decision route(Router& router, std::string_view scenario, const std::vector<std::uint32_t>& tokens, bool keep = false) {
  RouteRequest r{.scenario = scenario, .input_tokens = static_cast<std::int64_t>(tokens.size()), .now = kT0};
  r.token_ids = tokens;
  auto d = router.route(r);
  EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
  if (!d) return Decision{};
  if (!keep) {
    OutcomeReport o{.decision_id = d->id, .target = router.config()->targets[d->placement.target].name, .now = kT0};
    EXPECT_TRUE(router.report(o).ok());
  }
  return *d;
}

TEST(PrefixRouting, ApproximateModeFollowsItsOwnDecisions) {
  auto config = testing::load_or_die(pool_yaml(false));
  Router router(config);
  const auto a = prompt(1, 640);  // 40 blocks
  Decision first = route(router, "chat", a);
  EXPECT_EQ(first.expected_cached_tokens, 0);
  // The same conversation, one turn longer: its first 40 blocks are warm on the first replica.
  auto a2 = a;
  for (std::uint32_t i = 0; i < 160; ++i) a2.push_back(7'000'000 + i);
  Decision second = route(router, "chat", a2);
  EXPECT_EQ(second.placement.replica, first.placement.replica);
  EXPECT_EQ(second.expected_cached_tokens, 640);
  EXPECT_TRUE(has(second, ReasonCode::prefix_overlap));
  EXPECT_TRUE(has(second, ReasonCode::affinity));
  // While that turn runs, another conversation goes elsewhere: the warm replica carries its load.
  (void)route(router, "chat", a2, /*keep=*/true);
  Decision other = route(router, "chat", prompt(2, 640));
  EXPECT_NE(other.placement.replica, first.placement.replica);
}

TEST(PrefixRouting, LoadOutweighsASmallOverlap) {
  auto config = testing::load_or_die(pool_yaml(false));
  Router router(config);
  const auto a = prompt(1, 64);  // 4 blocks
  auto held = a;
  for (std::uint32_t i = 0; i < 736; ++i) held.push_back(8'000'000 + i);
  // A long conversation (50 blocks) leaves its blocks on one replica; a's 4 are its first ones.
  const std::uint32_t warm = route(router, "chat", held).placement.replica;
  EXPECT_EQ(route(router, "chat", a).placement.replica, warm);
  // Its next turn running on the warm replica: its 50 active blocks outweigh the 4 a would save.
  ASSERT_EQ(route(router, "chat", held, /*keep=*/true).placement.replica, warm);
  EXPECT_NE(route(router, "chat", a).placement.replica, warm);
}

// The pool of pool_yaml() with `kv` set to `kv` (a flow mapping).
std::string with_kv(bool precise, const std::string& kv) {
  std::string y = pool_yaml(precise);
  const std::string from = "kv: {block_size: 16, capacity_blocks: 1000}";
  y.replace(y.find(from), from.size(), "kv: " + kv);
  return y;
}

// Placements per replica of `n` cold conversations routed one after the other, each done before the next.
std::vector<int> spread_of_cold(Router& router, std::uint32_t n, std::uint32_t first_family) {
  std::vector<int> per_replica(4, 0);
  for (std::uint32_t i = 0; i < n; ++i) {
    const Decision d = route(router, "chat", prompt(first_family + i, 640));
    EXPECT_EQ(d.expected_cached_tokens, 0);
    ++per_replica.at(d.placement.replica);
  }
  return per_replica;
}

TEST(PrefixRouting, SequentialColdRequestsSpreadWhileWarmOnesStayOnTheirHolder) {
  auto config = testing::load_or_die(pool_yaml(false));
  Router router(config);
  // Nothing is ever in flight when a decision is made: in-flight counts and active blocks are all 0.
  // The recent load and cache pressure still tell the replicas apart: 8 cold conversations, 2 each.
  EXPECT_EQ(spread_of_cold(router, 8, 10), (std::vector<int>{2, 2, 2, 2}));
  // A warm prefix still goes where it is cached: each conversation's next turn to its holder.
  for (std::uint32_t family = 10; family < 18; ++family) {
    const Decision first = route(router, "chat", prompt(family, 640));  // warm already: where it went
    EXPECT_EQ(first.expected_cached_tokens, 640);
    auto next = prompt(family, 640);
    for (std::uint32_t i = 0; i < 160; ++i) next.push_back(6'000'000 + family * 1000 + i);
    const Decision d = route(router, "chat", next);
    EXPECT_EQ(d.placement.replica, first.placement.replica);
    EXPECT_EQ(d.expected_cached_tokens, 640);
  }
  // A prompt sharing only one block with what a replica holds is cold: the overlap does not pull it.
  auto tiny = prompt(10, 16);
  for (std::uint32_t i = 0; i < 624; ++i) tiny.push_back(5'000'000 + i);
  std::set<std::uint32_t> replicas;
  for (std::uint32_t k = 0; k < 4; ++k) {
    auto p = tiny;
    p[16] += k + 1;  // four prompts with the same first block, each new from its second on
    replicas.insert(route(router, "chat", p).placement.replica);
  }
  EXPECT_GT(replicas.size(), 1U);
}

TEST(PrefixRouting, RecentSlackSpreadsAHotPrefixRoutedOneAfterTheOther) {
  // One hot prompt, 40 times in a row, each done before the next. Without the recent-load guard
  // every one stays on the replica that first cached it.
  {
    Router router(testing::load_or_die(with_kv(false, "{block_size: 16, capacity_blocks: 1000, recent_slack: -1}")));
    std::set<std::uint32_t> replicas;
    for (int i = 0; i < 40; ++i) replicas.insert(route(router, "chat", prompt(1, 640)).placement.replica);
    EXPECT_EQ(replicas.size(), 1U);
  }
  // With it (2 placements above the pool's mean recent load at most) the prompt is cached on more
  // replicas, and none takes more than its share plus the slack.
  Router router(testing::load_or_die(with_kv(false, "{block_size: 16, capacity_blocks: 1000, recent_slack: 2}")));
  std::vector<int> per_replica(4, 0);
  for (int i = 0; i < 40; ++i) ++per_replica.at(route(router, "chat", prompt(1, 640)).placement.replica);
  EXPECT_EQ(std::count(per_replica.begin(), per_replica.end(), 0), 0);
  for (int n : per_replica) EXPECT_LE(n, 40 / 4 + 2 + 1);
  // The default (6) admits more before it spreads: the holder keeps the first 7 at least.
  Router by_default(testing::load_or_die(pool_yaml(false)));
  const std::uint32_t holder = route(by_default, "chat", prompt(1, 640)).placement.replica;
  for (int i = 0; i < 6; ++i) EXPECT_EQ(route(by_default, "chat", prompt(1, 640)).placement.replica, holder);
}

TEST(PrefixRouting, RecentSlackMustBeAnIntegerFromMinusOne) {
  for (const char* bad : {"recent_slack: -2", "recent_slack: 1.5", "recent_slack: many"}) {
    auto c = load_config_text(with_kv(false, std::string("{block_size: 16, ") + bad + "}"), "bad.yaml");
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_EQ(c.error().code, ErrorCode::config_invalid);
    EXPECT_NE(c.error().message.find("kv.recent_slack"), std::string::npos) << c.error().message;
  }
  EXPECT_EQ(testing::load_or_die(with_kv(false, "{recent_slack: 0}"))->targets[0].kv.recent_slack, 0);
}

TEST(PrefixRouting, MaasAffinityKeepsAFamilyOnOneTargetAndPricesTheWarmCache) {
  auto config = testing::load_or_die(pool_yaml(false));
  Router router(config);
  const auto sys = prompt(5, 2048);
  Decision first = route(router, "maas-chat", sys);
  EXPECT_NE(first.cache_key, 0U);
  EXPECT_EQ(first.expected_cached_tokens, 0);
  // Cold: 2048 x $0.40/Mtok + 100 x $1.60/Mtok = 819,200,000 + 160,000,000 = 979,200,000 picodollars.
  EXPECT_EQ(first.predicted_cost, Money::from_picos(979'200'000));
  for (std::uint32_t turn = 0; turn < 10; ++turn) {
    auto p = sys;
    for (std::uint32_t i = 0; i < 300; ++i) p.push_back(9'000'000 + turn * 1000 + i);
    Decision d = route(router, "maas-chat", p);
    EXPECT_EQ(d.placement.target, first.placement.target);  // the family stays put
    EXPECT_EQ(d.cache_key, first.cache_key);
    EXPECT_EQ(d.expected_cached_tokens, 2048);  // 16 warm blocks of 128 tokens
  }
  // Warm, 2048-token prompt again: 2048 cached x $0.10/Mtok + 100 x $1.60/Mtok = 204,800,000 + 160,000,000.
  EXPECT_EQ(route(router, "maas-chat", sys).predicted_cost, Money::from_picos(364'800'000));
  // Below the provider's 1024-token minimum nothing is expected from the cache.
  Decision small = route(router, "maas-chat", prompt(6, 900));
  Decision small2 = route(router, "maas-chat", prompt(6, 900));
  EXPECT_EQ(small2.expected_cached_tokens, 0);
  EXPECT_EQ(small.placement.target, small2.placement.target);
}

TEST(PrefixRouting, PreciseModeFollowsEngineEvents) {
  auto config = testing::load_or_die(pool_yaml(true));
  Router router(config);
  const std::uint32_t pool = config->find_target("pool");
  const auto a = prompt(3, 64);  // 4 blocks
  // Replica 2 reports it stored the 4 blocks (engine hashes are the engine's own, >= 2^63 here).
  BlockStored stored;
  stored.block_hashes = {0x8000'0000'0000'0001ULL, 0x8000'0000'0000'0002ULL, 0x8000'0000'0000'0003ULL,
                         0x8000'0000'0000'0004ULL};
  stored.token_ids = a;
  stored.block_size = 16;
  auto applied = router.apply_kv_events(pool, 2, KvEventBatch{.events = {stored}}, kT0);
  ASSERT_TRUE(applied.ok());
  EXPECT_EQ(applied->stored, 4U);
  Decision d = route(router, "chat", a);
  EXPECT_EQ(d.placement.replica, 2U);
  EXPECT_EQ(d.expected_cached_tokens, 64);
  // A child block chained to the last one by the engine's parent hash.
  auto a5 = prompt(3, 80);
  BlockStored child;
  child.block_hashes = {0x8000'0000'0000'0005ULL};
  child.parent_block_hash = 0x8000'0000'0000'0004ULL;
  child.token_ids.assign(a5.begin() + 64, a5.end());
  child.block_size = 16;
  ASSERT_TRUE(router.apply_kv_events(pool, 2, KvEventBatch{.events = {child}}, kT0).ok());
  EXPECT_EQ(route(router, "chat", a5).expected_cached_tokens, 80);
  // The engine evicts the last two blocks: the directory forgets them.
  BlockRemoved removed;
  removed.block_hashes = {0x8000'0000'0000'0005ULL, 0x8000'0000'0000'0004ULL};
  ASSERT_TRUE(router.apply_kv_events(pool, 2, KvEventBatch{.events = {removed}}, kT0).ok());
  EXPECT_EQ(route(router, "chat", a5).expected_cached_tokens, 48);
  // An orphan (unknown parent) is counted, not guessed.
  BlockStored orphan = child;
  orphan.parent_block_hash = 0x1234;
  auto o = router.apply_kv_events(pool, 2, KvEventBatch{.events = {orphan}}, kT0);
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->orphans, 1U);
  // Wrong block size: rejected.
  BlockStored wrong = stored;
  wrong.block_size = 32;
  EXPECT_EQ(router.apply_kv_events(pool, 1, KvEventBatch{.events = {wrong}}, kT0)->rejected, 1U);
  // Cleared: cold everywhere; precise mode does not learn from its own decisions.
  ASSERT_TRUE(router.apply_kv_events(pool, 2, KvEventBatch{.events = {AllBlocksCleared{}}}, kT0).ok());
  EXPECT_EQ(route(router, "chat", a).expected_cached_tokens, 0);
  EXPECT_EQ(route(router, "chat", a).expected_cached_tokens, 0);
  EXPECT_FALSE(router.apply_kv_events(config->find_target("openai-a"), 0, KvEventBatch{}, kT0).ok());
}

}  // namespace
}  // namespace turnout
