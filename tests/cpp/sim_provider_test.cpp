// The simulated MaaS provider: its true prompt cache per provider (hand-computed cached tokens), its
// native usage priced through a real Router to the picodollar, rate limits, outages, determinism and
// latency distributions.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "test_configs.hpp"
#include "turnout/router.hpp"
#include "turnout/sim/prompt.hpp"
#include "turnout/sim/provider.hpp"

namespace turnout::sim {
namespace {

constexpr SimTime kS = kMicrosPerS;
constexpr SimTime kT0 = 1'700'000'000LL * kS;  // a realistic epoch time

/// The price of `tokens` tokens at `picos_per_token` (1 USD/Mtok = 1,000,000 picodollars per token).
constexpr std::int64_t cost(std::int64_t tokens, std::int64_t picos_per_token) { return tokens * picos_per_token; }

/// Every target kind a provider speaks, one scenario each, with prices chosen to be exact.
constexpr const char* kYaml = R"(version: 1
targets:
  oai:
    kind: maas
    provider: openai
    model: gpt-4.1
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 2.00, cache_read_per_mtok: 0.50, output_per_mtok: 8.00}
  claude:
    kind: maas
    provider: anthropic
    model: claude-sonnet-4-20250514
    data_classes: [public]
    context_window: 200000
    price:
      input_per_mtok: 3.00
      cache_read_per_mtok: 0.30
      cache_write_5m_per_mtok: 3.75
      cache_write_1h_per_mtok: 6.00
      output_per_mtok: 15.00
      batch_discount_pct: 50
      tiers:
        - {above_input_tokens: 3400, input_per_mtok: 6.00, output_per_mtok: 22.50, cache_read_per_mtok: 0.60,
           cache_write_5m_per_mtok: 7.50, cache_write_1h_per_mtok: 12.00}
  gem:
    kind: maas
    provider: gemini
    model: gemini-2.5-flash
    data_classes: [public]
    context_window: 1000000
    price:
      input_per_mtok: 0.30
      cache_read_per_mtok: 0.075
      output_per_mtok: 2.50
      tiers: [{above_input_tokens: 2000, input_per_mtok: 0.60, cache_read_per_mtok: 0.15, output_per_mtok: 5.00}]
  ds:
    kind: maas
    provider: deepseek
    model: deepseek-chat
    data_classes: [public]
    context_window: 128000
    price: {input_per_mtok: 0.27, cache_read_per_mtok: 0.07, output_per_mtok: 1.10}
  orr:
    kind: maas
    provider: openrouter
    model: openai/gpt-4.1-mini
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60}
    replicas: [{endpoint: "http://127.0.0.1:9001", max_inflight: 2}]
scenarios:
  s-oai: {data_class: public, routes: [{target: oai}]}
  s-claude: {data_class: public, routes: [{target: claude}]}
  s-gem: {data_class: public, routes: [{target: gem}]}
  s-ds: {data_class: public, routes: [{target: ds}]}
  s-orr: {data_class: public, routes: [{target: orr}]}
)";

/// A prompt and its chain, built from token ids.
struct TestPrompt {
  std::vector<std::uint32_t> ids;
  std::vector<std::uint64_t> chain;

  explicit TestPrompt(std::vector<std::uint32_t> tokens) : ids(std::move(tokens)) { chain_of(ids, chain); }
  [[nodiscard]] Prompt prompt() const { return Prompt{ids, chain}; }
  [[nodiscard]] std::int64_t size() const { return static_cast<std::int64_t>(ids.size()); }
};

/// `n` token ids unique to `salt`.
std::vector<std::uint32_t> tokens(std::int64_t n, std::uint32_t salt) {
  std::vector<std::uint32_t> out;
  for (std::int64_t i = 0; i < n; ++i)
    out.push_back(static_cast<std::uint32_t>((std::int64_t{salt} * 100'003) + (i * 7)) % 50'000U);
  return out;
}

std::vector<std::uint32_t> cat(std::vector<std::uint32_t> a, const std::vector<std::uint32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class ProviderTest : public ::testing::Test {
 protected:
  ProviderTest() : config(testing::load_or_die(kYaml)), router(config) {}

  [[nodiscard]] const Target& target(const std::string& name) const {
    return config->targets[config->find_target(name)];
  }
  [[nodiscard]] Provider provider(const std::string& name, ProviderSpec spec = {}, std::uint64_t seed = 1) const {
    return {target(name), std::move(spec), seed};
  }

  /// Reports `a` for a fresh decision of `scenario` through the real Router; returns the receipt.
  ReportReceipt report(const std::string& scenario, const std::string& name, const Attempt& a,
                       std::int64_t input_tokens) {
    RouteRequest q;
    q.scenario = scenario;
    q.input_tokens = input_tokens;
    q.max_output_tokens = 1000;
    q.now = kT0 / kMicrosPerMs;
    auto d = router.route(q);
    EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
    if (!d) return {};
    EXPECT_FALSE(a.usage.empty());
    const msgpack::object_handle usage = msgpack::unpack(a.usage.data(), a.usage.size());
    OutcomeReport o;
    o.decision_id = d->id;
    o.target = name;
    o.status = a.status;
    o.usage = &usage.get();
    o.now = q.now;
    auto receipt = router.report(o);
    EXPECT_TRUE(receipt.ok()) << (receipt ? "" : receipt.error().message);
    return receipt ? *receipt : ReportReceipt{};
  }

  ConfigPtr config;
  Router router;
};

// ---- OpenAI: automatic, >= 1024 tokens, 128-token increments, TTL of inactivity refreshed on hit ----

TEST_F(ProviderTest, OpenAiCachesFrom1024TokensIn128TokenIncrementsWithAnInactivityTtl) {
  Provider p = provider("oai");
  EXPECT_EQ(p.rules().granularity, 128);
  EXPECT_EQ(p.rules().min_prefix_tokens, 1024);
  EXPECT_EQ(p.rules().ttl, 300 * kS);
  const auto base = tokens(1500, 1);
  const TestPrompt a(base);
  const TestPrompt b(cat(base, tokens(500, 2)));  // 2000 tokens sharing a's 1500

  Attempt first = p.call(a.prompt(), a.size(), 100, kT0);
  ASSERT_EQ(first.status, Status::ok);
  EXPECT_EQ(first.cached_tokens, 0);
  EXPECT_EQ(first.cache_write_tokens, 0);  // OpenAI writes are free
  ReportReceipt r = report("s-oai", "oai", first, a.size());
  EXPECT_EQ(r.usage.uncached_input_tokens, 1500);
  EXPECT_EQ(r.cost.picos(), cost(1500, 2'000'000) + cost(100, 8'000'000));

  // 1500 tokens were cached at 1024, 1152, 1280 and 1408: the longest shared 128-multiple.
  Attempt second = p.call(b.prompt(), b.size(), 100, kT0 + 60 * kS);
  EXPECT_EQ(second.cached_tokens, 1408);
  r = report("s-oai", "oai", second, b.size());
  EXPECT_EQ(r.usage.cache_read_tokens, 1408);
  EXPECT_EQ(r.cost.picos(), cost(592, 2'000'000) + cost(1408, 500'000) + cost(100, 8'000'000));

  // b's 1920 tokens were stored at +60 s: alive at +359 s (expiry +360 s), and that hit refreshes them.
  EXPECT_EQ(p.call(b.prompt(), b.size(), 10, kT0 + 359 * kS).cached_tokens, 1920);
  EXPECT_EQ(p.call(b.prompt(), b.size(), 10, kT0 + 600 * kS).cached_tokens, 1920);  // refreshed at +359 s
  EXPECT_EQ(p.call(b.prompt(), b.size(), 10, kT0 + 900 * kS).cached_tokens, 0);     // idle 300 s: expired
}

TEST_F(ProviderTest, OpenAiNeverCachesPromptsShorterThanTheMinimum) {
  Provider p = provider("oai");
  const auto base = tokens(1000, 3);
  const TestPrompt short_prompt(base);
  const TestPrompt longer(cat(base, tokens(100, 4)));
  EXPECT_EQ(p.call(short_prompt.prompt(), 1000, 10, kT0).cached_tokens, 0);
  EXPECT_EQ(p.call(short_prompt.prompt(), 1000, 10, kT0 + kS).cached_tokens, 0);
  EXPECT_EQ(p.cache_entries(), 0);  // nothing was stored
  EXPECT_EQ(p.call(longer.prompt(), 1100, 10, kT0 + 2 * kS).cached_tokens, 0);
  EXPECT_EQ(p.call(longer.prompt(), 1100, 10, kT0 + 3 * kS).cached_tokens, 1024);
  // A table's cache: block wins over the documented default.
  ProviderSpec spec;
  spec.cache_min_prefix_tokens = 2048;
  Provider strict = provider("oai", spec);
  EXPECT_EQ(strict.rules().min_prefix_tokens, 2048);
  EXPECT_EQ(strict.call(longer.prompt(), 1100, 10, kT0).cached_tokens, 0);
  EXPECT_EQ(strict.call(longer.prompt(), 1100, 10, kT0 + kS).cached_tokens, 0);
  Target ten_minutes = target("oai");
  ten_minutes.cache.ttl_s = 600;  // as a table's `cache: {ttl_s: 600}` sets it
  EXPECT_EQ(cache_rules(ten_minutes, {}).ttl, 600 * kS);
}

TEST_F(ProviderTest, TokensPastThePromptsChainAreNeverCached) {
  Provider p = provider("oai");
  const TestPrompt a(tokens(1300, 5));
  const Prompt partial{a.prompt().token_ids, a.prompt().chain.first(70)};  // 1120 tokens known
  ASSERT_EQ(p.call(partial, 1300, 10, kT0).status, Status::ok);
  EXPECT_EQ(p.call(a.prompt(), 1300, 10, kT0 + kS).cached_tokens, 1024);  // 1152 was never stored
}

// ---- Anthropic: breakpoints, write prices, 5 min / 1 h TTL, minimum per model ---------------------

TEST_F(ProviderTest, AnthropicWritesAtTheBreakpointAndReadsThroughLookback) {
  Provider p = provider("claude");
  EXPECT_TRUE(p.rules().breakpoints);
  EXPECT_EQ(p.rules().min_prefix_tokens, 1024);  // Claude Sonnet 4
  const auto system = tokens(3000, 6);
  const TestPrompt turn1(system);
  const TestPrompt turn2(cat(system, tokens(500, 7)));

  // One 5-minute breakpoint at the end: 2992 tokens (the chain's 16-token resolution) written.
  Attempt a = p.call(turn1.prompt(), 3000, 200, kT0);
  EXPECT_EQ(a.cached_tokens, 0);
  EXPECT_EQ(a.cache_write_tokens, 2992);
  ReportReceipt r = report("s-claude", "claude", a, 3000);
  EXPECT_EQ(r.usage.uncached_input_tokens, 8);
  EXPECT_EQ(r.usage.cache_write_5m_tokens, 2992);
  EXPECT_EQ(r.cost.picos(), cost(8, 3'000'000) + cost(2992, 3'750'000) + cost(200, 15'000'000));

  // The next turn reads turn 1's entry and writes the 496 tokens past it; 3500 > 3400: the tier's rates.
  a = p.call(turn2.prompt(), 3500, 200, kT0 + 10 * kS);
  EXPECT_EQ(a.cached_tokens, 2992);
  EXPECT_EQ(a.cache_write_tokens, 496);
  r = report("s-claude", "claude", a, 3500);
  EXPECT_EQ(r.usage.cache_read_tokens, 2992);
  EXPECT_EQ(r.usage.cache_write_5m_tokens, 496);
  EXPECT_EQ(r.usage.uncached_input_tokens, 12);
  EXPECT_EQ(r.cost.picos(), cost(12, 6'000'000) + cost(2992, 600'000) + cost(496, 7'500'000) + cost(200, 22'500'000));

  // The read at +10 s refreshed turn 1's entry: alive at +305 s, gone 5 idle minutes after that.
  EXPECT_EQ(p.call(turn1.prompt(), 3000, 1, kT0 + 305 * kS).cached_tokens, 2992);
  a = p.call(turn1.prompt(), 3000, 1, kT0 + 605 * kS);
  EXPECT_EQ(a.cached_tokens, 0);
  EXPECT_EQ(a.cache_write_tokens, 2992);
}

TEST_F(ProviderTest, AnthropicOneHourAndFiveMinuteBreakpointsArePricedApart) {
  Provider p = provider("claude");
  const auto tools = tokens(1024, 8);
  const TestPrompt first(cat(tools, tokens(1024, 9)));
  const TestPrompt other(cat(tools, tokens(1040, 10)));
  const std::vector<Breakpoint> bps = {{1024, CacheTtl::one_hour}, {1'000'000, CacheTtl::five_minutes}};

  Attempt a = p.call(first.prompt(), 2048, 100, kT0, ProcessingMode::online, bps);
  ReportReceipt r = report("s-claude", "claude", a, 2048);
  EXPECT_EQ(r.usage.cache_write_1h_tokens, 1024);
  EXPECT_EQ(r.usage.cache_write_5m_tokens, 1024);
  EXPECT_EQ(r.usage.uncached_input_tokens, 0);
  EXPECT_EQ(r.cost.picos(), cost(1024, 6'000'000) + cost(1024, 3'750'000) + cost(100, 15'000'000));

  // 50 minutes later the 5-minute entry is long gone, the 1-hour one still serves the shared tools.
  a = p.call(other.prompt(), 2064, 100, kT0 + (kS * 50 * 60), ProcessingMode::online, bps);
  r = report("s-claude", "claude", a, 2064);
  EXPECT_EQ(r.usage.cache_read_tokens, 1024);
  EXPECT_EQ(r.usage.cache_write_5m_tokens, 1040);
  EXPECT_EQ(r.usage.cache_write_1h_tokens, 0);
  EXPECT_EQ(r.cost.picos(), cost(1024, 300'000) + cost(1040, 3'750'000) + cost(100, 15'000'000));
}

TEST_F(ProviderTest, AnthropicReadsTheLongestCachedPrefixEvenPastAnExpiredShorterEntry) {
  Provider p = provider("claude");
  const TestPrompt prompt(tokens(2048, 13));
  const std::vector<Breakpoint> bps = {{1024}, {2048}};
  Attempt a = p.call(prompt.prompt(), 2048, 10, kT0, ProcessingMode::online, bps);
  EXPECT_EQ(a.cache_write_tokens, 2048);
  // A call with only the end breakpoint reads (and refreshes) the 2048-token entry, not the 1024 one.
  a = p.call(prompt.prompt(), 2048, 10, kT0 + 240 * kS);
  EXPECT_EQ(a.cached_tokens, 2048);
  // At +6 min the 1024-token entry has expired, the 2048-token one has not: the whole prefix is read,
  // nothing is billed as a write (the breakpoint at 1024 lies inside what was read).
  a = p.call(prompt.prompt(), 2048, 10, kT0 + 360 * kS, ProcessingMode::online, bps);
  EXPECT_EQ(a.cached_tokens, 2048);
  EXPECT_EQ(a.cache_write_tokens, 0);
}

TEST_F(ProviderTest, AnthropicBelowTheMinimumNeitherReadsNorWritesAndBatchIsBilledAtBatchPrices) {
  Provider p = provider("claude");
  const TestPrompt small(tokens(1000, 11));
  Attempt a = p.call(small.prompt(), 1000, 100, kT0, ProcessingMode::batch);
  EXPECT_EQ(a.cache_write_tokens, 0);
  ReportReceipt r = report("s-claude", "claude", a, 1000);
  EXPECT_TRUE(r.usage.batch_tier);  // service_tier "batch": the 50 % batch discount
  EXPECT_EQ(r.cost.picos(), (cost(1000, 3'000'000) + cost(100, 15'000'000)) / 2);
  EXPECT_EQ(p.call(small.prompt(), 1000, 100, kT0 + kS).cached_tokens, 0);

  Target haiku = target("claude");
  haiku.model = "claude-3-5-haiku-20241022";
  EXPECT_EQ(cache_rules(haiku, {}).min_prefix_tokens, 2048);
}

TEST_F(ProviderTest, AnthropicRefusesMoreThanFourBreakpointsOrOneHourAfterFiveMinutes) {
  Provider p = provider("claude");
  const TestPrompt a(tokens(4096, 12));
  const std::vector<Breakpoint> five = {{1024}, {2048}, {3072}, {3584}, {4096}};
  Attempt r = p.call(a.prompt(), 4096, 10, kT0, ProcessingMode::online, five);
  EXPECT_EQ(r.status, Status::error);
  EXPECT_TRUE(r.usage.empty());
  const std::vector<Breakpoint> misordered = {{1024, CacheTtl::five_minutes}, {2048, CacheTtl::one_hour}};
  EXPECT_EQ(p.call(a.prompt(), 4096, 10, kT0, ProcessingMode::online, misordered).status, Status::error);
  EXPECT_EQ(p.cache_entries(), 0);
}

// ---- Gemini, DeepSeek, OpenRouter -------------------------------------------------------------------

TEST_F(ProviderTest, GeminiImplicitCachingReadsWithoutAWriteChargeAndPricesTheTier) {
  Provider p = provider("gem");
  EXPECT_EQ(p.rules().min_prefix_tokens, 1024);  // 2.5 Flash
  const auto base = tokens(1500, 13);
  const TestPrompt a(base);
  const TestPrompt b(cat(base, tokens(1000, 14)));
  Attempt first = p.call(a.prompt(), 1500, 100, kT0);
  ReportReceipt r = report("s-gem", "gem", first, 1500);
  EXPECT_EQ(r.cost.picos(), cost(1500, 300'000) + cost(100, 2'500'000));  // no write charge
  Attempt second = p.call(b.prompt(), 2500, 100, kT0 + kS);
  EXPECT_EQ(second.cached_tokens, 1488);  // 16-token resolution
  r = report("s-gem", "gem", second, 2500);
  EXPECT_EQ(r.usage.cache_read_tokens, 1488);
  EXPECT_EQ(r.cost.picos(), cost(1012, 600'000) + cost(1488, 150'000) + cost(100, 5'000'000));  // > 2000: the tier
  Target pro = target("gem");
  pro.model = "gemini-2.5-pro";
  EXPECT_EQ(cache_rules(pro, {}).min_prefix_tokens, 4096);
}

TEST_F(ProviderTest, DeepSeekCachesIn64TokenUnitsForHours) {
  Provider p = provider("ds");
  EXPECT_EQ(p.rules().granularity, 64);
  const auto base = tokens(700, 15);
  const TestPrompt a(cat(base, tokens(300, 16)));
  const TestPrompt b(cat(base, tokens(300, 17)));  // shares 700 tokens with a
  ASSERT_EQ(p.call(a.prompt(), 1000, 50, kT0).cached_tokens, 0);
  Attempt hit = p.call(b.prompt(), 1000, 50, kT0 + (kS * 2 * 3600));
  EXPECT_EQ(hit.cached_tokens, 640);
  ReportReceipt r = report("s-ds", "ds", hit, 1000);
  EXPECT_EQ(r.usage.cache_read_tokens, 640);
  EXPECT_EQ(r.cost.picos(), cost(360, 270'000) + cost(640, 70'000) + cost(50, 1'100'000));
  EXPECT_EQ(p.call(b.prompt(), 1000, 50, kT0 + (kS * 5 * 3600) + kS).cached_tokens, 0);  // 3 h idle
}

TEST_F(ProviderTest, OpenRouterUsesOpenAisRulesAndItsOwnUsageShape) {
  Provider p = provider("orr");
  EXPECT_EQ(p.rules().granularity, 128);
  const TestPrompt a(tokens(2000, 18));
  ASSERT_EQ(p.call(a.prompt(), 2000, 10, kT0).status, Status::ok);
  Attempt hit = p.call(a.prompt(), 2000, 10, kT0 + kS);
  EXPECT_EQ(hit.cached_tokens, 1920);
  const ReportReceipt r = report("s-orr", "orr", hit, 2000);
  EXPECT_EQ(r.cost.picos(), cost(80, 400'000) + cost(1920, 100'000) + cost(10, 1'600'000));
  const msgpack::object_handle h = msgpack::unpack(hit.usage.data(), hit.usage.size());
  std::ostringstream text;
  text << h.get();
  EXPECT_NE(text.str().find("\"cache_write_tokens\":0"), std::string::npos) << text.str();
}

// ---- Memory bound ---------------------------------------------------------------------------------

TEST_F(ProviderTest, TheCacheHoldsAtMostItsCapAndEvictsTheNearestExpiry) {
  ProviderSpec spec;
  spec.cache_entries = 64;
  Provider p = provider("ds", spec);
  for (std::uint32_t i = 0; i < 500; ++i) {
    const TestPrompt a(tokens(640, 100 + i));
    ASSERT_EQ(p.call(a.prompt(), 640, 1, kT0 + i * kS).status, Status::ok);
  }
  EXPECT_LE(p.cache_entries(), 64);
  EXPECT_GT(p.cache_entries(), 32);
  // The newest prompt survives: entries closer to expiry went first.
  const TestPrompt last(tokens(640, 599));
  EXPECT_EQ(p.call(last.prompt(), 640, 1, kT0 + 500 * kS).cached_tokens, 640);
}

TEST_F(ProviderTest, BelowItsCapTheCacheGrowsInsteadOfEvictingLiveEntries) {
  ProviderSpec spec;
  spec.cache_entries = 1 << 17;
  Provider p = provider("ds", spec);
  std::vector<TestPrompt> prompts;
  for (std::uint32_t i = 0; i < 1000; ++i) prompts.emplace_back(tokens(640, 1000 + i));
  for (std::uint32_t i = 0; i < 1000; ++i) ASSERT_EQ(p.call(prompts[i].prompt(), 640, 1, kT0 + i).status, Status::ok);
  EXPECT_EQ(p.cache_entries(), 10'000);  // 10 units of 64 tokens per prompt, none evicted
  for (std::uint32_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(p.call(prompts[i].prompt(), 640, 1, kT0 + kS + i).cached_tokens, 640) << i;
  }
}

// ---- Rate limits ----------------------------------------------------------------------------------

TEST_F(ProviderTest, RateLimitsAnswerWithTheRetryAfterOfTheEmptiestBucket) {
  ProviderSpec spec;
  spec.rpm = 2;
  spec.tpm = 10'000;
  Provider p = provider("oai", spec);
  const TestPrompt a(tokens(3000, 20));
  EXPECT_EQ(p.call(a.prompt(), 3000, 1000, kT0).status, Status::ok);
  EXPECT_EQ(p.call(a.prompt(), 3000, 1000, kT0).status, Status::ok);
  const std::int64_t entries = p.cache_entries();
  // Both requests spent; 2000 tokens left: a request is back in 30 s, 2000 tokens in 12 s.
  Attempt limited = p.call(a.prompt(), 3000, 1000, kT0);
  EXPECT_EQ(limited.status, Status::rate_limited);
  EXPECT_EQ(limited.retry_after_ms, 30'000);
  EXPECT_TRUE(limited.usage.empty());
  EXPECT_EQ(limited.cached_tokens, 0);
  EXPECT_EQ(p.cache_entries(), entries);
  EXPECT_EQ(p.call(a.prompt(), 3000, 1000, kT0 + 29'999 * kMicrosPerMs).retry_after_ms, 1);
  EXPECT_EQ(p.call(a.prompt(), 3000, 1000, kT0 + 30 * kS).status, Status::ok);  // 1 request, 7000 tokens
  // A request larger than the whole TPM bucket never fits.
  EXPECT_EQ(p.call(a.prompt(), 9000, 2000, kT0 + 600 * kS).retry_after_ms, -1);

  ProviderSpec odd;
  odd.rpm = 7;
  Provider q = provider("oai", odd);
  for (int i = 0; i < 7; ++i) ASSERT_EQ(q.call(a.prompt(), 10, 10, kT0).status, Status::ok);
  EXPECT_EQ(q.call(a.prompt(), 10, 10, kT0).retry_after_ms, 8572);  // ceil(60 s / 7)
}

// ---- Failures -------------------------------------------------------------------------------------

TEST_F(ProviderTest, OutagesFailOnScheduleWithoutUsageAndTimeoutsTakeTheTimeout) {
  ProviderSpec spec;
  spec.outages = {{kT0 + 100 * kS, kT0 + 200 * kS, 1.0, Status::error},
                  {kT0 + 300 * kS, kT0 + 400 * kS, 1.0, Status::timeout},
                  {kT0 + 500 * kS, kT0 + 600 * kS, 1.0, Status::rate_limited},
                  {kT0 + 700 * kS, kT0 + 800 * kS, 0.25, Status::error}};
  spec.timeout_ms = 90'000;
  Provider p = provider("oai", spec);
  const TestPrompt a(tokens(2000, 21));
  EXPECT_EQ(p.call(a.prompt(), 2000, 10, kT0 + 99 * kS).status, Status::ok);
  Attempt e = p.call(a.prompt(), 2000, 10, kT0 + 100 * kS);
  EXPECT_EQ(e.status, Status::error);
  EXPECT_TRUE(e.usage.empty());
  EXPECT_GT(e.done_at, kT0 + 100 * kS);
  EXPECT_EQ(p.call(a.prompt(), 2000, 10, kT0 + 200 * kS).status, Status::ok);  // the window is [from, to)
  Attempt t = p.call(a.prompt(), 2000, 10, kT0 + 350 * kS);
  EXPECT_EQ(t.status, Status::timeout);
  EXPECT_EQ(t.done_at, kT0 + 440 * kS);
  Attempt busy = p.call(a.prompt(), 2000, 10, kT0 + 550 * kS);
  EXPECT_EQ(busy.status, Status::rate_limited);
  EXPECT_EQ(busy.retry_after_ms, 50'000);
  int failed = 0;
  for (int i = 0; i < 4000; ++i) failed += p.call(a.prompt(), 2000, 10, kT0 + 700 * kS + i).status != Status::ok;
  EXPECT_NEAR(failed / 4000.0, 0.25, 0.03);
}

TEST_F(ProviderTest, TheBaseErrorRateFailsThatShareOfCalls) {
  ProviderSpec spec;
  spec.error_rate = 0.1;
  Provider p = provider("gem", spec);
  const TestPrompt a(tokens(100, 22));
  int failed = 0;
  for (int i = 0; i < 10'000; ++i) failed += p.call(a.prompt(), 100, 10, kT0 + i * kS).status == Status::error;
  EXPECT_NEAR(failed / 10'000.0, 0.1, 0.015);
}

// ---- Determinism and latency ----------------------------------------------------------------------

TEST_F(ProviderTest, TheSameSeedGivesTheSameAttempts) {
  ProviderSpec spec;
  spec.error_rate = 0.2;
  Provider a = provider("claude", spec, 7);
  Provider b = provider("claude", spec, 7);
  Provider c = provider("claude", spec, 8);
  const TestPrompt prompt(tokens(2000, 23));
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const SimTime now = kT0 + (kS * 100 * i);
    const Attempt x = a.call(prompt.prompt(), 2000, 50, now);
    const Attempt y = b.call(prompt.prompt(), 2000, 50, now);
    const Attempt z = c.call(prompt.prompt(), 2000, 50, now);
    EXPECT_EQ(x.status, y.status);
    EXPECT_EQ(x.first_token_at, y.first_token_at);
    EXPECT_EQ(x.done_at, y.done_at);
    EXPECT_EQ(x.usage, y.usage);
    differ += x.done_at != z.done_at;
  }
  EXPECT_GT(differ, 150);
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

TEST_F(ProviderTest, LatencyQuantilesMatchTheSpec) {
  ProviderSpec spec;
  spec.latency = {.ttft_p50_ms = 300, .ttft_p95_ms = 900, .tokens_per_s_p50 = 100, .tokens_per_s_p95 = 50};
  Provider p = provider("oai", spec);
  const TestPrompt a(tokens(100, 24));  // below the minimum: never cached, TTFT untouched
  std::vector<double> ttft;
  std::vector<double> rate;
  for (int i = 0; i < 40'000; ++i) {
    const SimTime now = kT0 + i * kS;
    const Attempt x = p.call(a.prompt(), 100, 500, now);
    ASSERT_EQ(x.status, Status::ok);
    ttft.push_back(static_cast<double>(x.first_token_at - now) / kMicrosPerMs);
    rate.push_back(500.0 * kMicrosPerS / static_cast<double>(x.done_at - x.first_token_at));
  }
  EXPECT_NEAR(quantile(ttft, 0.5), 300, 300 * 0.03);
  EXPECT_NEAR(quantile(ttft, 0.95), 900, 900 * 0.04);
  EXPECT_NEAR(quantile(rate, 0.5), 100, 100 * 0.03);
  EXPECT_NEAR(quantile(rate, 0.05), 50, 50 * 0.04);  // the slow tail
}

TEST_F(ProviderTest, ACacheHitShortensTtftByItsShareOfThePrompt) {
  Provider cold = provider("oai", {}, 9);
  Provider warm = provider("oai", {}, 9);
  const TestPrompt a(tokens(2048, 25));
  const TestPrompt unrelated(tokens(2048, 26));
  ASSERT_EQ(cold.call(unrelated.prompt(), 2048, 10, kT0).status, Status::ok);  // same draws on both
  ASSERT_EQ(warm.call(a.prompt(), 2048, 10, kT0).status, Status::ok);
  const Attempt c = cold.call(a.prompt(), 2048, 10, kT0 + kS);
  const Attempt w = warm.call(a.prompt(), 2048, 10, kT0 + kS);
  ASSERT_EQ(c.cached_tokens, 0);
  ASSERT_EQ(w.cached_tokens, 2048);
  const auto cold_ttft = static_cast<double>(c.first_token_at - (kT0 + kS));
  const auto warm_ttft = static_cast<double>(w.first_token_at - (kT0 + kS));
  EXPECT_NEAR(warm_ttft, cold_ttft * 0.5, 1.0);  // fully cached: half the TTFT (the default saving)
}

TEST_F(ProviderTest, ExtremeLatencyDrawsStayOnTheClock) {
  // A decode-rate tail this wide draws rates near zero: the call still ends at a valid time (never
  // before its first token, never past kNever), also when called near the end of the clock.
  ProviderSpec s;
  s.latency.tokens_per_s_p95 = 1e-12;
  s.latency.ttft_p95_ms = 1e300;
  Provider p = provider("oai", s);
  const TestPrompt prompt(tokens(64, 3));
  for (int i = 0; i < 200; ++i) {
    const SimTime now = i % 2 == 0 ? kT0 : kNever - kS;
    const Attempt a = p.call(prompt.prompt(), 64, std::int64_t{1} << 31, now);
    ASSERT_EQ(a.status, Status::ok);
    EXPECT_GE(a.first_token_at, now) << i;
    EXPECT_GE(a.done_at, a.first_token_at) << i;
  }
}

TEST_F(ProviderTest, BadCallsAreRefusedNotClamped) {
  Provider p = provider("oai");
  const TestPrompt prompt(tokens(64, 3));
  EXPECT_THROW((void)p.call(prompt.prompt(), -1, 10, kT0), std::invalid_argument);
  EXPECT_THROW((void)p.call(prompt.prompt(), 64, -5, kT0), std::invalid_argument);
  EXPECT_THROW((void)p.call(prompt.prompt(), std::numeric_limits<std::int64_t>::max(), 10, kT0), std::invalid_argument);
  EXPECT_THROW((void)p.call(prompt.prompt(), 64, std::numeric_limits<std::int64_t>::max(), kT0), std::invalid_argument);
  EXPECT_EQ(p.call(prompt.prompt(), 64, 10, kT0).status, Status::ok);
}

// ---- Bad input ------------------------------------------------------------------------------------

TEST_F(ProviderTest, BadSpecsAreRefusedNamingTheField) {
  auto message = [&](const std::string& name, const ProviderSpec& spec) {
    auto r = check_provider(target(name), spec);
    EXPECT_FALSE(r.ok());
    return r ? std::string() : r.error().message;
  };
  EXPECT_NE(message("pool", {}).find("MaaS targets only"), std::string::npos);
  ProviderSpec s;
  s.latency.ttft_p95_ms = 100;  // below p50
  EXPECT_NE(message("oai", s).find("ttft_ms"), std::string::npos);
  s = {};
  s.latency.tokens_per_s_p95 = 200;  // faster than p50
  EXPECT_NE(message("oai", s).find("output_tokens_per_s"), std::string::npos);
  s = {};
  s.rpm = -1;
  EXPECT_NE(message("oai", s).find("rpm"), std::string::npos);
  s = {};
  s.error_rate = 1.5;
  EXPECT_NE(message("oai", s).find("error_rate"), std::string::npos);
  s = {};
  s.outages = {{kT0 + kS, kT0, 1.0, Status::error}};
  EXPECT_NE(message("oai", s).find("outages[0]"), std::string::npos);
  s = {};
  s.outages = {{kT0, kT0 + kS, 1.0, Status::ok}};
  EXPECT_NE(message("oai", s).find("status"), std::string::npos);
  s = {};
  s.cache_hit_ttft_saving = 1.0;
  EXPECT_NE(message("oai", s).find("cache_hit_ttft_saving"), std::string::npos);
  s = {};
  s.timeout_ms = std::numeric_limits<std::int64_t>::max();  // overflows the clock in microseconds
  EXPECT_NE(message("oai", s).find("timeout_ms"), std::string::npos);
  s = {};
  s.latency.tokens_per_s_p50 = std::numeric_limits<double>::infinity();
  s.latency.tokens_per_s_p95 = std::numeric_limits<double>::infinity();
  EXPECT_NE(message("oai", s).find("output_tokens_per_s"), std::string::npos);
  EXPECT_TRUE(check_provider(target("oai"), {}).ok());
  EXPECT_THROW((void)provider("pool"), std::invalid_argument);
}

}  // namespace
}  // namespace turnout::sim
