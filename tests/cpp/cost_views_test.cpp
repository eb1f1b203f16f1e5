// Price data imported from a LiteLLM model price map, the fully loaded self-hosted view and explicit
// cache storage: each figure computed by hand in the comments.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "msgpack_builder.hpp"
#include "test_configs.hpp"
#include "turnout/config.hpp"
#include "turnout/pricing.hpp"
#include "turnout/router.hpp"

namespace turnout {
namespace {

const std::string kPrices = std::string(TURNOUT_TEST_DATA_DIR) + "/litellm_prices.json";

std::string litellm_yaml(const std::string& target_block) {
  return "version: 1\ntargets:\n" + target_block + "scenarios:\n  s: {data_class: public, routes: [{target: t}]}\n";
}

std::string maas_block(const std::string& provider, const std::string& model, const std::string& price) {
  return "  t: {kind: maas, provider: " + provider + ", model: " + model +
         ", data_classes: [public], context_window: 1000000, price: " + price + "}\n";
}

TEST(LiteLlmImport, ConvertsPerTokenPricesExactly) {
  auto c = load_config_text(
      litellm_yaml(maas_block("anthropic", "claude-sonnet-4-20250514", "{from_litellm: \"" + kPrices + "\"}")),
      "l.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const PriceCatalog& p = (*c)->targets[0].price;
  // 3e-06 USD per token = 3e-06 x 1e12 = 3,000,000 picodollars per token = $3 per Mtok.
  EXPECT_EQ(p.base.input.picos_per_token(), 3'000'000);
  EXPECT_EQ(p.base.output.picos_per_token(), 15'000'000);         // 1.5e-05
  EXPECT_EQ(p.base.cache_read.picos_per_token(), 300'000);        // 3e-07
  EXPECT_EQ(p.base.cache_write_5m.picos_per_token(), 3'750'000);  // 3.75e-06
  EXPECT_EQ(p.base.cache_write_1h.picos_per_token(), 6'000'000);  // 6e-06
  ASSERT_EQ(p.tiers.size(), 1U);
  EXPECT_EQ(p.tiers[0].above_input_tokens, 200'000);
  EXPECT_EQ(p.tiers[0].rates.input.picos_per_token(), 6'000'000);
  EXPECT_EQ(p.tiers[0].rates.output.picos_per_token(), 22'500'000);
  EXPECT_EQ(p.tiers[0].rates.cache_read.picos_per_token(), 600'000);
  EXPECT_EQ(p.tiers[0].rates.cache_write_5m.picos_per_token(), 7'500'000);
  // No 1 h price above 200k in the map: Anthropic's rule, 2 x the tier's input = 2 x $6 = $12/Mtok.
  EXPECT_EQ(p.tiers[0].rates.cache_write_1h.picos_per_token(), 12'000'000);
}

TEST(LiteLlmImport, PricesTheSameAsTheEquivalentYaml) {
  auto imported = load_config_text(
      litellm_yaml(maas_block("openai", "gpt-4.1-mini", "{from_litellm: \"" + kPrices + "\"}")), "a.yaml");
  auto written = load_config_text(
      litellm_yaml(maas_block("openai", "gpt-4.1-mini",
                              "{input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60, "
                              "batch_discount_pct: 50}")),
      "b.yaml");
  ASSERT_TRUE(imported.ok()) << imported.error().message;
  ASSERT_TRUE(written.ok()) << written.error().message;
  // The map's batch prices per kind: input 2e-07, output 8e-07; no cache-read batch price, so the
  // online 1e-07 scaled by the input's ratio 2e-07 / 4e-07 = 5e-08 (50,000 picodollars).
  const PriceCatalog& p = (*imported)->targets[0].price;
  EXPECT_TRUE(p.batch_rates);
  EXPECT_EQ(p.batch.input.picos_per_token(), 200'000);
  EXPECT_EQ(p.batch.output.picos_per_token(), 800'000);
  EXPECT_EQ(p.batch.cache_read.picos_per_token(), 50'000);
  Usage u;
  u.uncached_input_tokens = 12'345;
  u.cache_read_tokens = 4'096;
  u.output_tokens = 777;
  for (auto mode : {ProcessingMode::online, ProcessingMode::batch}) {
    auto a = price_usage((*imported)->targets[0].price, u, mode);
    auto b = price_usage((*written)->targets[0].price, u, mode);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b);
  }
  // Online: 12,345 x 400,000 + 4,096 x 100,000 + 777 x 1,600,000
  //       = 4,938,000,000 + 409,600,000 + 1,243,200,000 = 6,590,800,000 picodollars ($0.0065908).
  EXPECT_EQ(price_usage((*imported)->targets[0].price, u).value(), Money::from_picos(6'590'800'000));
}

TEST(LiteLlmImport, BadReferencesAreConfigErrors) {
  auto missing_model =
      load_config_text(litellm_yaml(maas_block("openai", "gpt-9", "{from_litellm: \"" + kPrices + "\"}")), "m.yaml");
  ASSERT_FALSE(missing_model.ok());
  EXPECT_NE(missing_model.error().message.find("model 'gpt-9' is not in the LiteLLM price map"), std::string::npos);
  EXPECT_EQ(missing_model.error().message.rfind("m.yaml:3:", 0), 0U) << missing_model.error().message;

  auto missing_file = load_config_text(
      litellm_yaml(maas_block("openai", "gpt-4.1-mini", "{from_litellm: /nonexistent/prices.json}")), "f.yaml");
  ASSERT_FALSE(missing_file.ok());
  EXPECT_NE(missing_file.error().message.find("cannot read the LiteLLM price map"), std::string::npos);

  auto extra = load_config_text(
      litellm_yaml(maas_block("openai", "gpt-4.1-mini", "{from_litellm: \"" + kPrices + "\", input_per_mtok: 1}")),
      "x.yaml");
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.error().message.find("unknown key 'input_per_mtok'"), std::string::npos);
}

// Batch prices are imported per token kind: a listed batch cache-read price is used as listed (the
// old uniform discount priced it at half), tiers have their own batch prices.
TEST(LiteLlmImport, BatchPricesPerTokenKind) {
  auto c = load_config_text(
      litellm_yaml(maas_block("openai", "listed-batch-model", "{from_litellm: \"" + kPrices + "\"}")), "l.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const PriceCatalog& p = (*c)->targets[0].price;
  EXPECT_TRUE((*c)->warnings.empty());
  ASSERT_TRUE(p.batch_rates);
  EXPECT_EQ(p.batch.input.picos_per_token(), 500'000);           // 5e-07, listed
  EXPECT_EQ(p.batch.output.picos_per_token(), 2'500'000);        // 2.5e-06, listed
  EXPECT_EQ(p.batch.cache_read.picos_per_token(), 100'000);      // 1e-07, listed: not half of 1e-07
  EXPECT_EQ(p.batch.cache_write_5m.picos_per_token(), 625'000);  // 6.25e-07, listed
  // No 1 h price (openai: the 5 min write, 1.25e-06), no batch one: scaled by 5e-07 / 1e-06.
  EXPECT_EQ(p.batch.cache_write_1h.picos_per_token(), 625'000);
  ASSERT_EQ(p.tiers.size(), 1U);
  EXPECT_EQ(p.tiers[0].batch.input.picos_per_token(), 1'000'000);     // 1e-06, listed for the tier
  EXPECT_EQ(p.tiers[0].batch.output.picos_per_token(), 3'000'000);    // the tier's 6e-06 x 1/2
  EXPECT_EQ(p.tiers[0].batch.cache_read.picos_per_token(), 200'000);  // 2e-07, listed for the tier

  Usage u;
  u.uncached_input_tokens = 10'000;
  u.cache_read_tokens = 100'000;
  u.cache_write_5m_tokens = 2'000;
  u.output_tokens = 1'000;
  // Batch: 10,000 x 500,000 + 100,000 x 100,000 + 2,000 x 625,000 + 1,000 x 2,500,000
  //      = 5,000,000,000 + 10,000,000,000 + 1,250,000,000 + 2,500,000,000 = 18,750,000,000 ($0.01875).
  EXPECT_EQ(price_usage(p, u, ProcessingMode::batch).value(), Money::from_picos(18'750'000'000));
  // Online: 10,000 x 1,000,000 + 100,000 x 100,000 + 2,000 x 1,250,000 + 1,000 x 5,000,000 = 27,500,000,000.
  EXPECT_EQ(price_usage(p, u).value(), Money::from_picos(27'500'000'000));
  // Above 200k tokens, batch: 250,000 x 1,000,000 + 1,000 x 3,000,000 = 253,000,000,000 ($0.253).
  Usage big;
  big.uncached_input_tokens = 250'000;
  big.output_tokens = 1'000;
  EXPECT_EQ(price_usage(p, big, ProcessingMode::batch).value(), Money::from_picos(253'000'000'000));
  // A usage the provider says it billed at batch prices is priced so even in an online scenario.
  u.batch_tier = true;
  EXPECT_EQ(price_usage(p, u).value(), Money::from_picos(18'750'000'000));

  // batch_discount_pct in the table wins over the map's batch prices: 27,500,000,000 x 80 / 100.
  auto pct = load_config_text(litellm_yaml(maas_block("openai", "listed-batch-model",
                                                      "{from_litellm: \"" + kPrices + "\", batch_discount_pct: 20}")),
                              "p.yaml");
  ASSERT_TRUE(pct.ok()) << pct.error().message;
  u.batch_tier = false;
  EXPECT_FALSE((*pct)->targets[0].price.batch_rates);
  EXPECT_EQ(price_usage((*pct)->targets[0].price, u, ProcessingMode::batch).value(), Money::from_picos(22'000'000'000));
}

// A batch price that is no whole-percent discount loads (it used to fail the whole table).
TEST(LiteLlmImport, ABatchPriceNeedNotBeAWholePercentDiscount) {
  auto c = load_config_text(
      litellm_yaml(maas_block("openai", "odd-batch-model", "{from_litellm: \"" + kPrices + "\"}")), "o.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const PriceCatalog& p = (*c)->targets[0].price;
  EXPECT_EQ(p.batch.input.picos_per_token(), 100'000);  // 1e-07, listed
  // No output batch price: 1,000,000 x 100,000 / 300,000 = 333,333.3 -> 333,333 (nearest).
  EXPECT_EQ(p.batch.output.picos_per_token(), 333'333);
  // No cache-read price at all: the input's, 300,000, scaled: 100,000.
  EXPECT_EQ(p.batch.cache_read.picos_per_token(), 100'000);
}

// Float noise in the map is rounded to the nearest picodollar, with one warning per price.
TEST(LiteLlmImport, FloatNoiseIsRoundedWithAWarning) {
  auto c = load_config_text(litellm_yaml(maas_block("openai", "noisy-model", "{from_litellm: \"" + kPrices + "\"}")),
                            "n.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const PriceCatalog& p = (*c)->targets[0].price;
  EXPECT_EQ(p.base.input.picos_per_token(), 3'600'000);    // 3.6000000000000003e-06: 3,600,000.0000000003
  EXPECT_EQ(p.base.output.picos_per_token(), 18'000'000);  // 1.8e-05, exact
  EXPECT_EQ(p.batch.input.picos_per_token(), 1'800'000);   // 1.8000000000000001e-06
  EXPECT_EQ(p.batch.output.picos_per_token(), 9'000'000);  // 9.0000000000000006e-06
  const auto& w = (*c)->warnings;
  ASSERT_EQ(w.size(), 3U) << "input, its batch price and the output's batch price, once each";
  const auto input = std::find_if(w.begin(), w.end(), [](const std::string& m) {
    return m.find(
               ".input_cost_per_token 3.6000000000000003e-06 is not a whole number of picodollars per token: "
               "rounded to 0.0000036") != std::string::npos;
  });
  ASSERT_NE(input, w.end()) << w[0];
  EXPECT_EQ(input->rfind("n.yaml:3:", 0), 0U) << *input;
}

TEST(SelfHostedPeriodCost, GpusForThePeriodPlusProratedOverheads) {
  auto c = load_config_text(R"(version: 1
targets:
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 8192
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60, monthly: {staging: 730, engineering: 14600}}
    replicas: [{endpoint: a, max_inflight: 1}, {endpoint: b, max_inflight: 1}]
scenarios:
  s: {data_class: public, routes: [{target: pool}]}
)",
                            "p.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const auto day = self_hosted_period_cost((*c)->targets[0], 24 * 3'600'000LL);
  // GPUs: 2 replicas x 1 GPU x $3.60 x 24 h = $172.80.
  EXPECT_EQ(day.gpu, Money::from_picos(172'800'000'000'000));
  // Overheads: ($730 + $14,600) per 730-hour month = $21/hour; x 24 h = $504.
  EXPECT_EQ(day.overheads, Money::from_picos(504'000'000'000'000));
  EXPECT_EQ(day.fully_loaded(), Money::from_picos(676'800'000'000'000));
}

TEST(SelfHostedPeriodCost, RouterShowsBothViewsSideBySide) {
  auto config = testing::load_or_die(testing::kBasicYaml);
  Router router(config);
  // secret -> pool: prefill 10,000 tok/s, decode 1,000 tok/s, 1 GPU at $3.60/h = $0.001 per GPU-second.
  // 2,000 prompt tokens = 0.2 s, 500 output = 0.5 s: 0.7 s = $0.0007 = 700,000,000 picodollars.
  auto d = router.route({.scenario = "secret", .key = "k", .input_tokens = 2000, .now = 1'000});
  ASSERT_TRUE(d.ok());
  auto usage = test::from_json(R"({"prompt_tokens": 2000, "completion_tokens": 500})");
  OutcomeReport o{.decision_id = d->id, .target = "pool", .usage = &usage.get(), .accepted = true, .now = 2'000};
  ASSERT_TRUE(router.report(o).ok());
  const auto rows = router.self_hosted_costs(3'600'000);
  ASSERT_EQ(rows.size(), 1U);
  EXPECT_EQ(rows[0].marginal.picos(), 700'000'000);
  // Provisioned: 2 replicas x 1 GPU x $3.60 for one hour = $7.20, no overheads configured.
  EXPECT_EQ(rows[0].provisioned.fully_loaded(), Money::from_picos(7'200'000'000'000));
  EXPECT_EQ(rows[0].accepted, 1U);
}

TEST(CacheStorage, TokenHoursAtTheStoragePrice) {
  PriceCatalog p;
  p.cache_storage_per_hour = parse_usd_per_mtok("4.50").value();  // $4.50 per Mtok per hour
  // 100,000 tokens x 2 h x $4.50/Mtok/h = $0.90.
  EXPECT_EQ(cache_storage_cost(p, 100'000, 7'200'000), Money::from_picos(900'000'000'000));
  // 30 minutes of 1,000 tokens: $0.00225.
  EXPECT_EQ(cache_storage_cost(p, 1'000, 1'800'000), Money::from_picos(2'250'000'000));
  EXPECT_EQ(cache_storage_cost(p, 0, 1'800'000), Money{});
}

}  // namespace
}  // namespace turnout
