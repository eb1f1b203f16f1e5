#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "test_configs.hpp"
#include "turnout/config.hpp"

namespace turnout {
namespace {

using testing::kBasicYaml;
using testing::load_or_die;

std::string load_error(const std::string& yaml) {
  auto c = load_config_text(yaml, "bad.yaml");
  EXPECT_FALSE(c.ok()) << "expected a config error for:\n" << yaml;
  if (c) return "";
  EXPECT_EQ(c.error().code, ErrorCode::config_invalid);
  return c.error().message;
}

std::string replace(std::string text, const std::string& from, const std::string& to) {
  const auto pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) text.replace(pos, from.size(), to);
  return text;
}

TEST(Config, LoadsTheBasicTable) {
  auto c = load_or_die(kBasicYaml);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->targets.size(), 3U);
  ASSERT_EQ(c->scenarios.size(), 3U);
  const Target& mini = c->targets[c->find_target("mini")];
  EXPECT_EQ(mini.kind, TargetKind::maas);
  EXPECT_EQ(mini.provider, Provider::openai);
  // $0.40/Mtok = 0.4e-6 $/token = 400,000 picodollars per token.
  EXPECT_EQ(mini.price.base.input.picos_per_token(), 400'000);
  EXPECT_EQ(mini.price.base.cache_read.picos_per_token(), 100'000);
  // Unset cache-write prices fall back to the input price (OpenAI bills writes at 1.0x).
  EXPECT_EQ(mini.price.base.cache_write_5m.picos_per_token(), 400'000);
  EXPECT_EQ(mini.breaker.consecutive_failures, 3U);
  EXPECT_EQ(mini.breaker.cooldown_ms, 10'000);
  const Target& pool = c->targets[c->find_target("pool")];
  EXPECT_EQ(pool.replicas.size(), 2U);
  EXPECT_EQ(pool.cost.usd_per_gpu_hour, Money::from_picos(3'600'000'000'000));
  const Scenario& s = c->scenarios[c->find_scenario("summarize")];
  ASSERT_TRUE(s.budget_per_day.has_value());
  EXPECT_EQ(*s.budget_per_day, Money::from_picos(Money::kPerUsd));
  ASSERT_TRUE(s.spillover.has_value());
  EXPECT_DOUBLE_EQ(s.spillover->when_inflight_ratio, 0.75);
  EXPECT_EQ(s.routes.size(), 2U);
  EXPECT_NE(c->content_hash, 0U);
}

TEST(Config, MissingCacheReadPriceIsNeverFree) {
  auto c = load_or_die(replace(kBasicYaml, "cache_read_per_mtok: 0.10, ", ""));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->targets[c->find_target("mini")].price.base.cache_read.picos_per_token(), 400'000);
}

TEST(Config, ErrorsNameFileLineAndColumn) {
  // Line 8 of kBasicYaml is mini's context_window; the value starts at column 21.
  const auto msg = load_error(replace(kBasicYaml, "context_window: 100000", "context_window: lots"));
  EXPECT_EQ(msg.rfind("bad.yaml:8:21: ", 0), 0U) << msg;
  EXPECT_NE(msg.find("must be an integer"), std::string::npos) << msg;
}

TEST(Config, RejectsUnknownKeys) {
  const auto msg = load_error(replace(kBasicYaml, "    model: gpt-4.1-mini\n", "    modle: gpt-4.1-mini\n"));
  EXPECT_EQ(msg.rfind("bad.yaml:6:5: unknown key 'modle' in target 'mini'", 0), 0U) << msg;
}

TEST(Config, RejectsUnknownTargetsInRoutes) {
  const auto msg = load_error(replace(kBasicYaml, "fallback: [mini]", "fallback: [mnii]"));
  EXPECT_NE(msg.find("unknown target 'mnii'"), std::string::npos) << msg;
  EXPECT_EQ(msg.rfind("bad.yaml:32:16: ", 0), 0U) << msg;
}

TEST(Config, RejectsWeightsThatDoNotSumTo100) {
  const auto msg = load_error(replace(kBasicYaml, "weight: 80", "weight: 70"));
  EXPECT_NE(msg.find("must sum to 100, got 90"), std::string::npos) << msg;
}

TEST(Config, RejectsAFallbackTheDataClassForbids) {
  // `cheap` accepts public data only; summarize is deidentified.
  const auto msg = load_error(replace(kBasicYaml, "fallback: [mini]", "fallback: [mini, cheap]"));
  EXPECT_NE(msg.find("target 'cheap' does not accept data class 'deidentified'"), std::string::npos) << msg;
}

TEST(Config, RejectsARouteTheDataClassForbids) {
  const auto msg = load_error(replace(kBasicYaml, "routes: [{target: pool}]", "routes: [{target: mini}]"));
  EXPECT_NE(msg.find("does not accept data class 'restricted'"), std::string::npos) << msg;
}

TEST(Config, RejectsNegativeAndOverPrecisePrices) {
  auto msg = load_error(replace(kBasicYaml, "input_per_mtok: 0.40", "input_per_mtok: -0.40"));
  EXPECT_NE(msg.find("negative"), std::string::npos) << msg;
  // 7 decimals of $/Mtok is below a picodollar per token: refused rather than rounded.
  msg = load_error(replace(kBasicYaml, "input_per_mtok: 0.40", "input_per_mtok: 0.4000001"));
  EXPECT_NE(msg.find("more precision"), std::string::npos) << msg;
}

TEST(Config, AnthropicNeedsCacheWritePrices) {
  const auto msg = load_error(replace(kBasicYaml, "provider: deepseek", "provider: anthropic"));
  EXPECT_NE(msg.find("cache_write_5m_per_mtok"), std::string::npos) << msg;
}

TEST(Config, RejectsDuplicatesAndUnknownDataClasses) {
  auto msg = load_error(replace(kBasicYaml, "data_classes: [public]", "data_classes: [publik]"));
  EXPECT_NE(msg.find("unknown data class 'publik'"), std::string::npos) << msg;
  msg = load_error(replace(kBasicYaml, "    routes: [{target: cheap, weight: 50}",
                           "    routes: [{target: cheap, weight: 50}, {target: cheap, weight: 0}"));
  EXPECT_NE(msg.find("repeats target 'cheap'"), std::string::npos) << msg;
}

TEST(Config, RejectsInvalidYamlAndEmptyFiles) {
  auto msg = load_error("version: 1\ntargets: {a: [\n");
  EXPECT_EQ(msg.rfind("bad.yaml:", 0), 0U) << msg;
  EXPECT_NE(msg.find("invalid YAML"), std::string::npos) << msg;
  msg = load_error("");
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
}

TEST(Config, AFileThatCannotBeReadSaysWhyWithoutAnInventedPosition) {
  auto missing = load_config_file("/nonexistent/turnout.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::not_found);
  EXPECT_EQ(missing.error().message, "/nonexistent/turnout.yaml: cannot open: No such file or directory");
  auto directory = load_config_file(TURNOUT_EXAMPLES_DIR);
  ASSERT_FALSE(directory.ok());
  EXPECT_EQ(directory.error().code, ErrorCode::io_error);
  EXPECT_EQ(directory.error().message, std::string(TURNOUT_EXAMPLES_DIR) + ": cannot read: Is a directory");
}

TEST(Config, RejectsWrongShapes) {
  auto msg = load_error(replace(kBasicYaml, "replicas:\n", "replicas: 3\nx:\n"));
  EXPECT_FALSE(msg.empty());
  msg = load_error(replace(kBasicYaml, "when_inflight_ratio: 0.75", "when_inflight_ratio: 1.5"));
  EXPECT_NE(msg.find("between 0.01 and 1"), std::string::npos) << msg;
  msg = load_error(replace(kBasicYaml, "kind: self_hosted", "kind: on_prem"));
  EXPECT_NE(msg.find("must be maas or self_hosted"), std::string::npos) << msg;
}

TEST(Config, LoadsTheBundledExample) {
  auto c = load_config_file(std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ((*c)->targets.size(), 5U);
}

}  // namespace
}  // namespace turnout
