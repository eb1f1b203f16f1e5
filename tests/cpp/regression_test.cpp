// Regressions found by an independent review: each test failed before its fix.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_configs.hpp"
#include "turnout/config.hpp"
#include "turnout/directory.hpp"
#include "turnout/kv_events.hpp"
#include "turnout/pricing.hpp"
#include "turnout/router.hpp"

namespace turnout {
namespace {

constexpr TimeMs kT0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

// ---- Breaker: a target used only as a fallback can never re-open once half-open ----------------

constexpr const char* kFallbackOnlyYaml = R"(version: 1
targets:
  a:
    kind: maas
    provider: openai
    model: m
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 1, output_per_mtok: 1}
  b:
    kind: maas
    provider: deepseek
    model: m
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 1, output_per_mtok: 1}
    breaker: {consecutive_failures: 2, cooldown_s: 5}
scenarios:
  s:
    data_class: public
    routes: [{target: a}]
    fallback: [b]
)";

Decision route_s(Router& router, TimeMs now) {
  RouteRequest r;
  r.scenario = "s";
  r.input_tokens = 10;
  r.now = now;
  auto d = router.route(r);
  EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
  return d ? *d : Decision{};
}

bool lists_fallback(const Decision& d, std::uint32_t target) {
  for (const auto& f : d.fallbacks) {
    if (f.target == target) return true;
  }
  return false;
}

TEST(FallbackBreaker, FallbackOnlyTargetReopensAfterFailingInHalfOpen) {
  auto config = testing::load_or_die(kFallbackOnlyYaml);
  ASSERT_TRUE(config);
  Router router(config);
  const std::uint32_t b = config->find_target("b");
  auto fail_on_b = [&](TimeMs now) {
    Decision d = route_s(router, now);
    ASSERT_TRUE(lists_fallback(d, b));
    OutcomeReport o;
    o.decision_id = d.id;
    o.target = "b";
    o.status = Status::error;
    o.now = now;
    ASSERT_TRUE(router.report(o).ok());
  };
  fail_on_b(kT0);
  fail_on_b(kT0 + 1);
  // b opened: not offered as a fallback during its cooldown.
  EXPECT_FALSE(lists_fallback(route_s(router, kT0 + 1000), b));
  // After the cooldown it is half-open and offered again; its outcome as a fallback is the probe:
  // a failure opens it again (before the fix, it ignored it and kept b half-open forever).
  fail_on_b(kT0 + 10'000);
  EXPECT_FALSE(lists_fallback(route_s(router, kT0 + 10'001), b));
  for (const auto& row : router.breakers(kT0 + 10'001)) {
    if (row.target == b) {
      EXPECT_EQ(row.phase, Breaker::Phase::open);
    }
  }
  // After the next cooldown a successful fallback outcome closes it.
  Decision d = route_s(router, kT0 + 20'001);
  ASSERT_TRUE(lists_fallback(d, b));
  OutcomeReport ok{.decision_id = d.id, .target = "b", .status = Status::ok, .now = kT0 + 20'002};
  ASSERT_TRUE(router.report(ok).ok());
  for (const auto& row : router.breakers(kT0 + 20'002)) {
    if (row.target == b) {
      EXPECT_EQ(row.phase, Breaker::Phase::closed);
    }
  }
}

// ---- Cache directory: a repeated engine hash corrupts the engine-hash index ---------------------

TEST(EngineHashIndex, RepeatedEngineHashDoesNotLeaveAStaleIndexEntry) {
  CacheDirectory dir({CacheDirectory::HolderSpec{.capacity_blocks = 1024, .ttl_ms = 0}});
  const std::vector<std::uint64_t> chain = {0x1111, 0x2222};
  const std::vector<std::uint64_t> engine = {0xE, 0xE};  // the same engine hash twice (bad/colliding publisher)
  dir.store(0, chain, kT0, engine);
  dir.store(0, chain, kT0, engine);  // the same event again (replay overlap)
  EXPECT_TRUE(dir.remove_engine(0, 0xE));
  EXPECT_TRUE(dir.remove_engine(0, 0xE));
  EXPECT_EQ(dir.stats().held[0], 0U);
  // Nothing is held any more, so the engine hash must be unknown. Before the fix: the second store
  // indexed the second ref twice; the freed ref is still found (and a third remove_engine walks a
  // freed ref's block list out of bounds).
  EXPECT_FALSE(dir.own_hash(0, 0xE).has_value());
}

constexpr const char* kPreciseYaml = R"(version: 1
targets:
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 1}
    replicas:
      - {endpoint: "http://r0", max_inflight: 4, kv_events: "tcp://127.0.0.1:5557"}
scenarios:
  chat: {data_class: public, routes: [{target: pool}], affinity: {prefix: true}}
)";

TEST(EngineHashIndex, KvEventsWithRepeatedHashThenRemovalLeaveNoGhostParent) {
  auto config = testing::load_or_die(kPreciseYaml);
  ASSERT_TRUE(config);
  Router router(config);
  const std::uint32_t pool = config->find_target("pool");
  BlockStored stored;
  stored.block_hashes = {0xE, 0xE};
  stored.token_ids.resize(32);
  for (std::uint32_t i = 0; i < 32; ++i) stored.token_ids[i] = i;
  stored.block_size = 16;
  ASSERT_TRUE(router.apply_kv_events(pool, 0, KvEventBatch{.events = {stored}}, kT0).ok());
  ASSERT_TRUE(router.apply_kv_events(pool, 0, KvEventBatch{.events = {stored}}, kT0).ok());
  BlockRemoved removed;
  removed.block_hashes = {0xE, 0xE};
  auto r = router.apply_kv_events(pool, 0, KvEventBatch{.events = {removed}}, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed, 2U);
  // A child of the removed block: its parent is unknown now, so it is an orphan.
  BlockStored child;
  child.block_hashes = {0xF};
  child.parent_block_hash = 0xE;
  child.token_ids.assign(16, 7);
  child.block_size = 16;
  auto c = router.apply_kv_events(pool, 0, KvEventBatch{.events = {child}}, kT0);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->orphans, 1U);
  EXPECT_EQ(c->stored, 0U);
}

// ---- LiteLLM import: Anthropic 1 h cache writes in the long-context tier ------------------------

TEST(LiteLlmAnthropic, LiteLlmAnthropicLongContextOneHourWriteIsTwiceTierInput) {
  const std::string prices = std::string(TURNOUT_TEST_DATA_DIR) + "/litellm_prices.json";
  const std::string yaml =
      "version: 1\ntargets:\n  t: {kind: maas, provider: anthropic, model: claude-sonnet-4-20250514, "
      "data_classes: [public], context_window: 1000000, price: {from_litellm: \"" +
      prices + "\"}}\nscenarios:\n  s: {data_class: public, routes: [{target: t}]}\n";
  auto c = load_config_text(yaml, "l.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  // Anthropic: 1 h writes cost 2x input; above 200k input is $6/Mtok, so 1 h writes are $12/Mtok
  // (Anthropic's published long-context price). Before the fix it guessed max(5 min tier, base 1 h) =
  // $7.50/Mtok, under-billing every long-context 1 h write by 37.5%.
  Usage u;
  u.uncached_input_tokens = 0;
  u.cache_write_1h_tokens = 250'000;
  auto cost = price_usage((*c)->targets[0].price, u);
  ASSERT_TRUE(cost.ok());
  EXPECT_EQ(cost->picos(), 250'000LL * 12'000'000);  // $3.00
}

}  // namespace
}  // namespace turnout

namespace turnout {
namespace {

// ---- Budget: a prediction that overflows the per-request Money range reserves $0 ----------------

TEST(BudgetOverflow, OverflowingPredictionDoesNotBypassTheBudget) {
  auto config = testing::load_or_die(R"(version: 1
targets:
  t:
    kind: maas
    provider: openai
    model: m
    data_classes: [public]
    context_window: 4294967296
    price: {input_per_mtok: 5000, output_per_mtok: 5000}
scenarios:
  s: {data_class: public, routes: [{target: t}], budget: {usd_per_day: 1}}
)");
  ASSERT_TRUE(config);
  Router router(config);
  RouteRequest r;
  r.scenario = "s";
  r.input_tokens = 1LL << 31;  // $10.7 million of input at $5000/Mtok: far beyond a $1/day budget
  r.max_output_tokens = 1;
  r.now = kT0;
  auto d = router.route(r);
  // Before the fix: price_usage errors (beyond int64 picos), predicted_cost turns that into Money{} and
  // the $0 worst case passes the budget check.
  EXPECT_FALSE(d.ok()) << "routed with predicted cost " << d->predicted_cost.to_usd_string();
}

}  // namespace
}  // namespace turnout

namespace turnout {
namespace {

// Review near-misses, fixed: reservations are the true worst case, fallbacks fit the budget, and a
// time before 1970 does not switch budgets off.
constexpr const char* kBudgetYaml = R"(version: 1
targets:
  claude:
    kind: maas
    provider: anthropic
    model: claude-sonnet-4
    data_classes: [public]
    context_window: 200000
    price: {input_per_mtok: 3, output_per_mtok: 15, cache_read_per_mtok: 0.30, cache_write_5m_per_mtok: 3.75,
            cache_write_1h_per_mtok: 6}
  dear:
    kind: maas
    provider: openai
    model: m
    data_classes: [public]
    context_window: 200000
    price: {input_per_mtok: 100, output_per_mtok: 100}
scenarios:
  s:
    data_class: public
    max_output_tokens: 1000
    routes: [{target: claude}]
    fallback: [dear]
    budget: {usd_per_day: 1}
)";

TEST(BudgetWorstCase, ReservesCacheWritesAtTheirDearest) {
  auto config = testing::load_or_die(kBudgetYaml);
  ASSERT_TRUE(config);
  Router router(config);
  auto d = router.route({.scenario = "s", .input_tokens = 10'000, .now = kT0});
  ASSERT_TRUE(d.ok()) << d.error().message;
  // Expected: 10,000 x $3/Mtok + 1,000 x $15/Mtok = $0.03 + $0.015 = $0.045.
  EXPECT_EQ(d->predicted_cost, Money::from_picos(45'000'000'000));
  // Reserved: the 10,000 input tokens could all be 1 h cache writes: x $6/Mtok = $0.06, + $0.015.
  EXPECT_EQ(d->reserved_cost, Money::from_picos(75'000'000'000));
  EXPECT_EQ(router.budgets(kT0)[0].reserved, Money::from_picos(75'000'000'000));
  // `dear` as a fallback: 10,000 x $100/Mtok + 1,000 x $100/Mtok = $1.10 > $1 - $0.075 left: not offered.
  EXPECT_TRUE(d->fallbacks.empty());
  auto small = router.route({.scenario = "s", .input_tokens = 100, .now = kT0});
  ASSERT_TRUE(small.ok());
  // 100 + 1,000 tokens x $100/Mtok = $0.11, within what is left: offered.
  ASSERT_EQ(small->fallbacks.size(), 1U);
}

TEST(BudgetWorstCase, TimesBefore1970StillHaveABudget) {
  auto config = testing::load_or_die(kBudgetYaml);
  ASSERT_TRUE(config);
  Router router(config);
  int granted = 0;
  for (int i = 0; i < 100; ++i) {
    auto d = router.route({.scenario = "s", .input_tokens = 10'000, .now = -5'000});
    if (!d.ok()) {
      EXPECT_EQ(d.error().code, ErrorCode::budget_exhausted);
      break;
    }
    ++granted;
  }
  // $1 / $0.075 per reservation: 13 fit, the 14th does not.
  EXPECT_EQ(granted, 13);
  EXPECT_EQ(budget_day(-1), -1);
  EXPECT_EQ(budget_day(0), 0);
  EXPECT_EQ(budget_day(-86'400'000), -1);
  EXPECT_EQ(budget_day(-86'400'001), -2);
}

}  // namespace
}  // namespace turnout
