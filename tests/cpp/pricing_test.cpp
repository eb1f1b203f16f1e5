// Exact request costs from provider-shaped usage, each derived by hand from the published prices.
//
// Prices used (USD per million tokens, as published by the providers in 2025; the tests pin the
// arithmetic, not the price pages — re-check those before copying them into a config):
//   Anthropic Claude Sonnet 4  ≤200k prompt: $3 in, $15 out, $0.30 cache read, $3.75 5m write, $6 1h write
//                              >200k prompt (1M context): $6 in, $22.50 out, $0.60 read, $7.50 5m, $12 1h
//                              Batch API: 50% off.
//   OpenAI GPT-4.1:            $2 in, $0.50 cached, $8 out; writes cost the input price (1.0×). Batch 50%.
//   OpenAI GPT-5:              $1.25 in, $0.125 cached, $10 out. Batch 50%.
//   "GPT-5 with billed writes" GPT-5 prices plus a 1.25× write multiplier: $1.5625 write
//                              (an illustration of `cache_write_tokens`, not a published price).
//   Gemini 2.5 Pro             ≤200k: $1.25 in, $10 out, $0.125 cached; >200k: $2.50, $15, $0.25. Batch 50%.
//   Gemini 2.5 Flash           $0.30 in, $2.50 out, $0.03 cached.
//   DeepSeek V3.2 (deepseek-chat / deepseek-reasoner): $0.28 miss, $0.028 hit, $0.42 out.
//   Self-hosted H100           $2.99 per GPU-hour.

#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "msgpack_builder.hpp"
#include "turnout/pricing.hpp"

namespace turnout {
namespace {

using test::from_json;

TokenPrice per_mtok(const char* usd) { return parse_usd_per_mtok(usd).value(); }
Money usd(const char* text) { return parse_usd(text).value(); }

PriceRates rates(const char* input, const char* output, const char* read, const char* write_5m, const char* write_1h) {
  return PriceRates{per_mtok(input), per_mtok(output), per_mtok(read), per_mtok(write_5m), per_mtok(write_1h)};
}

PriceCatalog catalog(PriceRates base, std::vector<PriceTier> tiers = {}, std::int64_t batch_discount_pct = 0) {
  PriceCatalog c;
  c.present = true;
  c.base = base;
  c.tiers = std::move(tiers);
  c.batch_discount_pct = batch_discount_pct;
  return c;
}

PriceCatalog claude_sonnet_4() {
  return catalog(rates("3", "15", "0.30", "3.75", "6"), {{200'000, rates("6", "22.50", "0.60", "7.50", "12")}}, 50);
}
PriceCatalog gpt_4_1() { return catalog(rates("2", "8", "0.50", "2", "2"), {}, 50); }
PriceCatalog gpt_5() { return catalog(rates("1.25", "10", "0.125", "1.25", "1.25"), {}, 50); }
PriceCatalog gpt_5_billed_writes() { return catalog(rates("1.25", "10", "0.125", "1.5625", "1.5625"), {}, 50); }
PriceCatalog gemini_2_5_pro() {
  return catalog(rates("1.25", "10", "0.125", "1.25", "1.25"), {{200'000, rates("2.50", "15", "0.25", "2.50", "2.50")}},
                 50);
}
PriceCatalog gemini_2_5_flash() { return catalog(rates("0.30", "2.50", "0.03", "0.30", "0.30"), {}, 50); }
PriceCatalog deepseek_v3_2() { return catalog(rates("0.28", "0.42", "0.028", "0.28", "0.28")); }

struct CostCase {
  const char* name;
  Provider provider;
  const char* json;
  PriceCatalog (*price)();
  ProcessingMode mode;
  const char* expected_usd;  // exact decimal, derived in the comment above each case
};

// Failure messages show the case name instead of the struct's bytes.
void PrintTo(const CostCase& c, std::ostream* os) { *os << c.name; }

class PriceUsage : public ::testing::TestWithParam<CostCase> {};

TEST_P(PriceUsage, MatchesTheHandComputedCost) {
  const CostCase& c = GetParam();
  const auto native = from_json(c.json);
  const Result<Usage> usage = normalize_usage(c.provider, native.get());
  ASSERT_TRUE(usage.ok()) << usage.error().message;
  const Result<Money> cost = price_usage(c.price(), *usage, c.mode);
  ASSERT_TRUE(cost.ok()) << cost.error().message;
  EXPECT_EQ(cost->to_usd_string(), usd(c.expected_usd).to_usd_string());
  EXPECT_EQ(*cost, usd(c.expected_usd));
}

constexpr auto kOnline = ProcessingMode::online;
constexpr auto kBatch = ProcessingMode::batch;

const CostCase kCostCases[] = {
    // 1117 × $2/M = $0.002234; 46 × $8/M = $0.000368; total $0.002602
    {"gpt_4_1_without_cache", Provider::openai,
     R"({"usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
                   "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0}}})",
     gpt_4_1, kOnline, "0.002602"},
    // uncached 1500 - 1024 = 476 × $2/M = $0.000952; 1024 read × $0.50/M = $0.000512;
    // 300 × $8/M = $0.0024; total $0.003864 (billing the 1024 as input would give $0.004376)
    {"gpt_4_1_cache_hit", Provider::openai,
     R"({"usage": {"prompt_tokens": 1500, "completion_tokens": 300,
                   "prompt_tokens_details": {"cached_tokens": 1024}}})",
     gpt_4_1, kOnline, "0.003864"},
    // stream, last chunk: uncached 2200 - 2048 = 152 × $2/M = $0.000304; 2048 × $0.50/M = $0.001024;
    // 95 × $8/M = $0.00076; total $0.002088
    {"gpt_4_1_stream", Provider::openai,
     R"([{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "a"}}], "usage": null},
         {"object": "chat.completion.chunk", "choices": [],
          "usage": {"prompt_tokens": 2200, "completion_tokens": 95, "prompt_tokens_details": {"cached_tokens": 2048}}},
         "[DONE]"])",
     gpt_4_1, kOnline, "0.002088"},
    // batch: $0.002602 × (100 - 50) / 100 = $0.001301
    {"gpt_4_1_batch", Provider::openai, R"({"usage": {"prompt_tokens": 1117, "completion_tokens": 46}})", gpt_4_1,
     kBatch, "0.001301"},
    // Responses API: uncached 2048 - 1920 = 128 × $1.25/M = $0.00016; 1920 × $0.125/M = $0.00024;
    // 1200 output (1024 of them reasoning, already inside) × $10/M = $0.012; total $0.0124
    {"gpt_5_responses_reasoning", Provider::openai,
     R"({"object": "response", "status": "completed",
         "usage": {"input_tokens": 2048, "input_tokens_details": {"cached_tokens": 1920}, "output_tokens": 1200,
                   "output_tokens_details": {"reasoning_tokens": 1024}, "total_tokens": 3248}})",
     gpt_5, kOnline, "0.0124"},
    // uncached 5000 - 4096 = 904 × $1.25/M = $0.00113; 4096 written × $1.5625/M = $0.0064;
    // 100 × $10/M = $0.001; total $0.00853
    {"gpt_5_cache_write_tokens", Provider::openai,
     R"({"usage": {"prompt_tokens": 5000, "completion_tokens": 100,
                   "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4096}}})",
     gpt_5_billed_writes, kOnline, "0.00853"},

    // 21 × $3/M = $0.000063; 188,086 × $3.75/M = $0.7053225; 393 × $15/M = $0.005895; total $0.7112805
    {"sonnet_4_5m_write", Provider::anthropic,
     R"({"type": "message", "model": "claude-sonnet-4-20250514",
         "usage": {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0,
                   "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
                   "output_tokens": 393}})",
     claude_sonnet_4, kOnline, "0.7112805"},
    // prompt 21 + 188,086 = 188,107 ≤ 200k: base tier. Batch: $0.7112805 × 50 / 100 = $0.35564025
    {"sonnet_4_5m_write_batch", Provider::anthropic,
     R"({"usage": {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0,
                   "output_tokens": 393}})",
     claude_sonnet_4, kBatch, "0.35564025"},
    // 50 × $3/M = $0.00015; 100,000 read × $0.30/M = $0.03; 2,000 1h write × $6/M = $0.012;
    // 500 × $15/M = $0.0075; total $0.04965 (as 5m writes it would be $0.04515)
    {"sonnet_4_1h_write_and_read", Provider::anthropic,
     R"({"usage": {"input_tokens": 50, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 100000,
                   "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
                   "output_tokens": 500}})",
     claude_sonnet_4, kOnline, "0.04965"},
    // 10 × $3/M = $0.00003; 1,000 × $3.75/M = $0.00375; 3,000 × $6/M = $0.018; 200 × $15/M = $0.003;
    // total $0.02478
    {"sonnet_4_5m_and_1h_writes", Provider::anthropic,
     R"({"usage": {"input_tokens": 10, "cache_creation_input_tokens": 4000, "cache_read_input_tokens": 0,
                   "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 3000},
                   "output_tokens": 200}})",
     claude_sonnet_4, kOnline, "0.02478"},
    // stream: 25 × $3/M = $0.000075; 4,000 read × $0.30/M = $0.0012; 512 (message_delta) × $15/M = $0.00768;
    // total $0.008955
    {"sonnet_4_stream", Provider::anthropic,
     R"([{"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
          "model": "claude-sonnet-4-20250514",
          "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4000,
                    "output_tokens": 1}}},
         {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
         {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 512}},
         {"type": "message_stop"}])",
     claude_sonnet_4, kOnline, "0.008955"},
    // prompt 5,000 + 250,000 = 255,000 > 200k: long-context rates for every part.
    // 5,000 × $6/M = $0.03; 250,000 read × $0.60/M = $0.15; 1,000 × $22.50/M = $0.0225; total $0.2025
    {"sonnet_4_long_context_tier", Provider::anthropic,
     R"({"usage": {"input_tokens": 5000, "cache_read_input_tokens": 250000, "cache_creation_input_tokens": 0,
                   "output_tokens": 1000}})",
     claude_sonnet_4, kOnline, "0.2025"},

    // uncached 4210 - 4096 = 114 × $1.25/M = $0.0001425; 4,096 × $0.125/M = $0.000512;
    // output 512 + 378 thoughts = 890 × $10/M = $0.0089; total $0.0095545
    // (double counting the cache as input too would add 4096 × $1.25/M = $0.00512)
    {"gemini_2_5_pro_cache_and_thoughts", Provider::gemini,
     R"({"usageMetadata": {"promptTokenCount": 4210, "candidatesTokenCount": 512, "totalTokenCount": 5100,
                           "cachedContentTokenCount": 4096, "thoughtsTokenCount": 378},
         "modelVersion": "gemini-2.5-pro"})",
     gemini_2_5_pro, kOnline, "0.0095545"},
    // batch: $0.0095545 × 50 / 100 = $0.00477725
    {"gemini_2_5_pro_batch", Provider::gemini,
     R"({"usageMetadata": {"promptTokenCount": 4210, "candidatesTokenCount": 512,
                           "cachedContentTokenCount": 4096, "thoughtsTokenCount": 378}})",
     gemini_2_5_pro, kBatch, "0.00477725"},
    // exactly 200,000 prompt tokens is still "≤ 200k": 200,000 × $1.25/M = $0.25; 1,000 × $10/M = $0.01;
    // total $0.26
    {"gemini_2_5_pro_at_200k", Provider::gemini,
     R"({"usageMetadata": {"promptTokenCount": 200000, "candidatesTokenCount": 1000}})", gemini_2_5_pro, kOnline,
     "0.26"},
    // one token more crosses the tier: 200,001 × $2.50/M = $0.5000025; 1,000 × $15/M = $0.015;
    // total $0.5150025
    {"gemini_2_5_pro_above_200k", Provider::gemini,
     R"({"usageMetadata": {"promptTokenCount": 200001, "candidatesTokenCount": 1000}})", gemini_2_5_pro, kOnline,
     "0.5150025"},
    // the tier is chosen by the whole prompt, cached included: 250,000 > 200k.
    // uncached 250,000 - 240,000 = 10,000 × $2.50/M = $0.025; 240,000 × $0.25/M = $0.06;
    // output 800 + 1,200 = 2,000 × $15/M = $0.03; total $0.115
    {"gemini_2_5_pro_stream_long_context_cached", Provider::gemini,
     R"([{"usageMetadata": {"promptTokenCount": 250000, "cachedContentTokenCount": 240000}},
         {"candidates": [{"finishReason": "STOP"}],
          "usageMetadata": {"promptTokenCount": 250000, "candidatesTokenCount": 800,
                            "cachedContentTokenCount": 240000, "thoughtsTokenCount": 1200}}])",
     gemini_2_5_pro, kOnline, "0.115"},
    // uncached 1,200 + 150 tool-use = 1,350 × $0.30/M = $0.000405; 300 × $2.50/M = $0.00075;
    // total $0.001155
    {"gemini_2_5_flash_tool_use", Provider::gemini,
     R"({"usageMetadata": {"promptTokenCount": 1200, "candidatesTokenCount": 300, "toolUsePromptTokenCount": 150}})",
     gemini_2_5_flash, kOnline, "0.001155"},

    // 88 miss × $0.28/M = $0.00002464; 1,152 hit × $0.028/M = $0.000032256; 310 × $0.42/M = $0.0001302;
    // total $0.000187096
    {"deepseek_hit_and_miss", Provider::deepseek,
     R"({"model": "deepseek-chat",
         "usage": {"prompt_tokens": 1240, "completion_tokens": 310, "total_tokens": 1550,
                   "prompt_tokens_details": {"cached_tokens": 1152},
                   "prompt_cache_hit_tokens": 1152, "prompt_cache_miss_tokens": 88}})",
     deepseek_v3_2, kOnline, "0.000187096"},
    // 500 miss × $0.28/M = $0.00014; 2,000 (1,800 reasoning inside) × $0.42/M = $0.00084; total $0.00098
    {"deepseek_reasoner_stream", Provider::deepseek,
     R"([{"choices": [{"delta": {"reasoning_content": "Hm"}}], "usage": null},
         {"choices": [{"delta": {}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 500, "completion_tokens": 2000,
                    "completion_tokens_details": {"reasoning_tokens": 1800},
                    "prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 500}}])",
     deepseek_v3_2, kOnline, "0.00098"},

    // OpenRouter to Claude Sonnet 4, priced from the catalog: uncached 10,000 - 8,000 - 1,500 = 500 × $3/M
    // = $0.0015; 8,000 read × $0.30/M = $0.0024; 1,500 write × $3.75/M = $0.005625; 200 × $15/M = $0.003;
    // total $0.012525
    {"openrouter_sonnet_4_from_catalog", Provider::openrouter,
     R"({"usage": {"prompt_tokens": 10000, "completion_tokens": 200, "cost": 0.0126,
                   "prompt_tokens_details": {"cached_tokens": 8000, "cache_write_tokens": 1500}}})",
     claude_sonnet_4, kOnline, "0.012525"},
};

INSTANTIATE_TEST_SUITE_P(Providers, PriceUsage, ::testing::ValuesIn(kCostCases),
                         [](const ::testing::TestParamInfo<CostCase>& test_info) {
                           return std::string(test_info.param.name);
                         });

// ---- Tiers -------------------------------------------------------------------------------------------

TEST(RatesFor, HighestTierStrictlyBelowThePromptSize) {
  PriceCatalog c = catalog(rates("1", "1", "1", "1", "1"),
                           {{128'000, rates("2", "2", "2", "2", "2")}, {200'000, rates("3", "3", "3", "3", "3")}});
  EXPECT_EQ(c.rates_for(0).input, per_mtok("1"));
  EXPECT_EQ(c.rates_for(128'000).input, per_mtok("1"));  // "above 128k" starts at 128,001
  EXPECT_EQ(c.rates_for(128'001).input, per_mtok("2"));
  EXPECT_EQ(c.rates_for(200'000).input, per_mtok("2"));
  EXPECT_EQ(c.rates_for(200'001).input, per_mtok("3"));
  EXPECT_EQ(c.rates_for(std::int64_t{1} << 31).input, per_mtok("3"));
}

TEST(RatesFor, DoesNotDependOnTierOrder) {
  PriceCatalog c = catalog(rates("1", "1", "1", "1", "1"),
                           {{200'000, rates("3", "3", "3", "3", "3")}, {128'000, rates("2", "2", "2", "2", "2")}});
  EXPECT_EQ(c.rates_for(150'000).input, per_mtok("2"));
  EXPECT_EQ(c.rates_for(250'000).input, per_mtok("3"));
}

TEST(PriceUsageTier, ChosenByTheWholePromptIncludingCacheParts) {
  // 100 uncached + 150,000 read + 60,000 written = 210,100 > 200k: Sonnet 4 long-context rates.
  // 100 × $6/M = $0.0006; 150,000 × $0.60/M = $0.09; 60,000 × $7.50/M = $0.45; 10 × $22.50/M = $0.000225;
  // total $0.540825
  Usage u;
  u.uncached_input_tokens = 100;
  u.cache_read_tokens = 150'000;
  u.cache_write_5m_tokens = 60'000;
  u.output_tokens = 10;
  EXPECT_EQ(price_usage(claude_sonnet_4(), u).value(), usd("0.540825"));
}

// ---- Batch discount ----------------------------------------------------------------------------------

TEST(BatchDiscount, RoundsDownToAPicodollar) {
  // 3 tokens × 1 picodollar ($0.000001/Mtok) = 3 picos; 50% off = 1.5 -> 1 picodollar.
  PriceCatalog c = catalog(rates("0.000001", "0", "0", "0", "0"), {}, 50);
  Usage u;
  u.uncached_input_tokens = 3;
  EXPECT_EQ(price_usage(c, u, ProcessingMode::batch).value().picos(), 1);
  EXPECT_EQ(price_usage(c, u, ProcessingMode::online).value().picos(), 3);
  // 7 picos with 33% off: 7 × 67 / 100 = 4.69 -> 4
  c.batch_discount_pct = 33;
  u.uncached_input_tokens = 7;
  EXPECT_EQ(price_usage(c, u, ProcessingMode::batch).value().picos(), 4);
}

TEST(BatchDiscount, OutOfRangeIsAnError) {
  PriceCatalog c = gpt_4_1();
  c.batch_discount_pct = 101;
  Usage u;
  u.uncached_input_tokens = 1;
  const auto cost = price_usage(c, u, ProcessingMode::batch);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::invalid_argument);
}

// ---- price_usage errors ------------------------------------------------------------------------------

TEST(PriceUsageErrors, NoCatalogIsPriceMissing) {
  Usage u;
  u.uncached_input_tokens = 10;
  const auto cost = price_usage(PriceCatalog{}, u);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::price_missing);
}

TEST(PriceUsageErrors, NegativeOrAbsurdTokensAreUsageInvalid) {
  Usage u;
  u.cache_read_tokens = -1;
  auto cost = price_usage(gpt_4_1(), u);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::usage_invalid);
  EXPECT_EQ(cost.error().message, "usage.cache_read_tokens (-1) is outside 0..2^31");

  u.cache_read_tokens = 0;
  u.output_tokens = (std::int64_t{1} << 31) + 1;
  cost = price_usage(gpt_4_1(), u);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::usage_invalid);
}

TEST(PriceUsageErrors, CostBeyondInt64IsAnErrorNotAWrap) {
  // 2^31 tokens × 5 parts at $1,000,000/Mtok (10^12 picos/token) ≈ 1.07e22 picos: far beyond int64.
  PriceCatalog c = catalog(rates("1000000", "1000000", "1000000", "1000000", "1000000"));
  Usage u;
  u.uncached_input_tokens = u.cache_read_tokens = u.cache_write_5m_tokens = u.cache_write_1h_tokens = u.output_tokens =
      std::int64_t{1} << 31;
  const auto cost = price_usage(c, u);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::invalid_argument);
}

// ---- Self-hosted -------------------------------------------------------------------------------------

SelfHostedCost h100_pool(std::int64_t gpus, std::int64_t prefill_tps, std::int64_t decode_tps) {
  SelfHostedCost c;
  c.gpus_per_replica = gpus;
  c.usd_per_gpu_hour = usd("2.99");
  c.prefill_tokens_per_s = prefill_tps;
  c.decode_tokens_per_s = decode_tps;
  return c;
}

TEST(SelfHostedMarginalCost, PrefillOfUncachedTokensPlusDecode) {
  // 2048 prompt, 1024 from the prefix cache: 1024 / 20,000 tok/s = 0.0512 s prefill;
  // 128 / 2,500 tok/s = 0.0512 s decode; 0.1024 replica-s × 1 GPU × $2.99/h / 3600 s
  // = 2.99e12 × 0.1024 / 3600 picos = 306,176,000,000 / 3600 = 85,048,888.89 -> 85,048,889 picos
  EXPECT_EQ(self_hosted_marginal_cost(h100_pool(1, 20'000, 2'500), 2048, 1024, 128).picos(), 85'048'889);
  // Two GPUs per replica at the same replica throughput: 170,097,777.78 -> 170,097,778
  EXPECT_EQ(self_hosted_marginal_cost(h100_pool(2, 20'000, 2'500), 2048, 1024, 128).picos(), 170'097'778);
  // Everything cached: decode only, 0.0512 s × 2.99e12 / 3600 = 42,524,444.44 -> 42,524,444
  EXPECT_EQ(self_hosted_marginal_cost(h100_pool(1, 20'000, 2'500), 2048, 2048, 128).picos(), 42'524'444);
}

TEST(SelfHostedMarginalCost, RoundsHalvesUp) {
  // 1 output token at 1 tok/s = 1 s; 1800 picos per GPU-hour / 3600 = 0.5 picos -> 1; 1799 -> 0.4997 -> 0
  SelfHostedCost c = h100_pool(1, 1, 1);
  c.usd_per_gpu_hour = Money::from_picos(1800);
  EXPECT_EQ(self_hosted_marginal_cost(c, 0, 0, 1).picos(), 1);
  c.usd_per_gpu_hour = Money::from_picos(1799);
  EXPECT_EQ(self_hosted_marginal_cost(c, 0, 0, 1).picos(), 0);
}

TEST(SelfHostedMarginalCost, ZeroWhenThroughputUnknown) {
  EXPECT_EQ(self_hosted_marginal_cost(h100_pool(1, 0, 2'500), 2048, 0, 128), Money{});
  EXPECT_EQ(self_hosted_marginal_cost(h100_pool(1, 20'000, 0), 2048, 0, 128), Money{});
}

TEST(SelfHostedMarginalCost, CachedAboveThePromptIsClamped) {
  // cached 5000 > prompt 2048: treated as all 2048 cached, never a negative prefill.
  EXPECT_EQ(self_hosted_marginal_cost(h100_pool(1, 20'000, 2'500), 2048, 5000, 128),
            self_hosted_marginal_cost(h100_pool(1, 20'000, 2'500), 2048, 2048, 128));
}

TEST(SelfHostedCostPerMtok, ReproducesTheDesignReference) {
  // Llama-3.1-8B FP8, one H100, 15,220 output tok/s, $2.99/GPU-hour, 100% utilisation:
  // 2.99e12 picos × 10^6 tok × 10^6 / (3600 s × 15,220 tok/s × 10^6 ppm) = 2.99e30 / 5.4792e16
  // = 54,570,010,220.47 -> 54,570,010,220 picos ≈ $0.0546 per million tokens
  const SelfHostedCost pool = h100_pool(1, 0, 0);
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, 15'220, 1'000'000).value().picos(), 54'570'010'220);
  // 24% utilisation: 2.99e30 / (3600 × 15,220 × 240,000 = 1.315008e16) = 227,375,042,585.29
  // -> 227,375,042,585 picos ≈ $0.2274 (= $0.05457 / 0.24)
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, 15'220, 240'000).value().picos(), 227'375'042'585);
  // MLPerf v5.1 server scenario with vLLM, 5,100 tok/s: 2.99e30 / (3600 × 5,100 × 10^6 = 1.836e16)
  // = 162,854,030,501.09 -> 162,854,030,501 picos ≈ $0.163
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, 5'100, 1'000'000).value().picos(), 162'854'030'501);
  // Llama-3.3-70B FP8 on two H100s at 4,205 tok/s per replica: 2 × 2.99e12 × 10^12 / (3600 × 4,205 × 10^6
  // = 1.5138e16) = 395,032,368,873.03 -> 395,032,368,873 picos ≈ $0.395 per million tokens
  const SelfHostedCost pair = h100_pool(2, 0, 0);
  EXPECT_EQ(self_hosted_cost_per_mtok(pair, 4'205, 1'000'000).value().picos(), 395'032'368'873);
}

TEST(SelfHostedCostPerMtok, RejectsImpossibleInputs) {
  const SelfHostedCost pool = h100_pool(1, 0, 0);
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, 0, 1'000'000).error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, -5, 1'000'000).error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, 15'220, 0).error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(self_hosted_cost_per_mtok(pool, 15'220, 1'000'001).error().code, ErrorCode::invalid_argument);
  EXPECT_EQ(self_hosted_cost_per_mtok(h100_pool(0, 0, 0), 15'220, 1'000'000).error().code, ErrorCode::invalid_argument);
}

// ---- Targets: predicted and actual cost ---------------------------------------------------------------

Target maas_target(const char* name, Provider provider, PriceCatalog price) {
  Target t;
  t.name = name;
  t.kind = TargetKind::maas;
  t.provider = provider;
  t.price = std::move(price);
  return t;
}

Target self_hosted_target() {
  Target t;
  t.name = "llama-8b-prod";
  t.kind = TargetKind::self_hosted;
  t.provider = Provider::vllm;
  t.cost = h100_pool(1, 20'000, 2'500);
  return t;
}

TEST(PredictedCost, MaasPricesExpectedCacheReadsAndMaxOutput) {
  const Target t = maas_target("sonnet", Provider::anthropic, claude_sonnet_4());
  // 10,000 input, 8,000 expected cached, 1,024 max output:
  // 2,000 × $3/M = $0.006; 8,000 × $0.30/M = $0.0024; 1,024 × $15/M = $0.01536; total $0.02376
  EXPECT_EQ(predicted_cost(t, 10'000, 8'000, 1'024, ProcessingMode::online), usd("0.02376"));
  // batch: $0.02376 × 50 / 100 = $0.01188
  EXPECT_EQ(predicted_cost(t, 10'000, 8'000, 1'024, ProcessingMode::batch), usd("0.01188"));
  // 250,000 input > 200k: 250,000 × $6/M = $1.5; 1,000 × $22.50/M = $0.0225; total $1.5225
  EXPECT_EQ(predicted_cost(t, 250'000, 0, 1'000, ProcessingMode::online), usd("1.5225"));
  // expected cached above the input is clamped: 100 cached × $0.30/M = $0.00003 + 0 output
  EXPECT_EQ(predicted_cost(t, 100, 500, 0, ProcessingMode::online), usd("0.00003"));
}

TEST(PredictedCost, SelfHostedIsMarginalGpuTime) {
  // the SelfHostedMarginalCost example: 85,048,889 picos
  EXPECT_EQ(predicted_cost(self_hosted_target(), 2048, 1024, 128, ProcessingMode::online).picos(), 85'048'889);
}

TEST(PredictedCost, MaasWithoutCatalogPredictsZero) {
  EXPECT_EQ(
      predicted_cost(maas_target("router", Provider::openrouter, PriceCatalog{}), 1000, 0, 100, ProcessingMode::online),
      Money{});
}

TEST(ActualCost, OpenRouterCatalogWinsOverReportedCost) {
  const auto native = from_json(R"({"usage": {"prompt_tokens": 10000, "completion_tokens": 200, "cost": 0.0126,
      "prompt_tokens_details": {"cached_tokens": 8000, "cache_write_tokens": 1500}}})");
  const Usage u = normalize_usage(Provider::openrouter, native.get()).value();
  ASSERT_EQ(u.reported_cost, usd("0.0126"));
  // with a catalog: the hand-computed $0.012525 of the openrouter_sonnet_4_from_catalog case
  const Target priced = maas_target("or-sonnet", Provider::openrouter, claude_sonnet_4());
  EXPECT_EQ(actual_cost(priced, u, ProcessingMode::online).value(), usd("0.012525"));
  // without one: what OpenRouter charged, $0.0126, and no batch discount on top of a charged amount
  const Target unpriced = maas_target("or-any", Provider::openrouter, PriceCatalog{});
  EXPECT_EQ(actual_cost(unpriced, u, ProcessingMode::online).value(), usd("0.0126"));
  EXPECT_EQ(actual_cost(unpriced, u, ProcessingMode::batch).value(), usd("0.0126"));
}

TEST(ActualCost, NoCatalogAndNoReportedCostIsPriceMissing) {
  Usage u;
  u.uncached_input_tokens = 10;
  const auto cost = actual_cost(maas_target("bare", Provider::openai, PriceCatalog{}), u, ProcessingMode::online);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::price_missing);
  EXPECT_NE(cost.error().message.find("'bare'"), std::string::npos) << cost.error().message;
}

TEST(ActualCost, SelfHostedUsesPrefixCacheHits) {
  const auto native = from_json(R"({"usage": {"prompt_tokens": 2048, "completion_tokens": 128,
                                    "prompt_tokens_details": {"cached_tokens": 1024}}})");
  const Usage u = normalize_usage(Provider::vllm, native.get()).value();
  // 1024 uncached + 1024 cached prompt, 128 output: the 85,048,889 picos of the marginal-cost example
  EXPECT_EQ(actual_cost(self_hosted_target(), u, ProcessingMode::online).value().picos(), 85'048'889);
}

TEST(ActualCost, ErrorsNameTheTarget) {
  Usage u;
  u.output_tokens = -3;
  const auto cost = actual_cost(maas_target("gpt", Provider::openai, gpt_4_1()), u, ProcessingMode::online);
  ASSERT_FALSE(cost.ok());
  EXPECT_EQ(cost.error().code, ErrorCode::usage_invalid);
  EXPECT_EQ(cost.error().message, "target 'gpt': usage.output_tokens (-3) is outside 0..2^31");
}

}  // namespace
}  // namespace turnout
