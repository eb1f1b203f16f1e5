#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
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

// ---- the migration block -------------------------------------------------------------------------

// kBasicYaml plus a scenario migrating from mini to cheap; `block` replaces the migration's keys.
std::string with_migration(const std::string& block = "      stage: canary\n      incident_owner: oncall\n",
                           const std::string& scenario_keys = "") {
  return std::string(kBasicYaml) +
         "  canary:\n"
         "    data_class: public\n"
         "    slo: {ttft_p95_ms: 800, latency_p95_ms: 4000}\n"
         "    quality_gate: {min_accept_rate: 0.95}\n" +
         scenario_keys +
         "    fallback: [pool]\n"
         "    migration:\n"
         "      baseline: mini\n"
         "      candidate: cheap\n" +
         block;
}

// "bad.yaml:line:col: " of the first occurrence of `needle` in `text` (plus `offset` columns).
std::string at(const std::string& text, const std::string& needle, std::size_t offset = 0) {
  const auto pos = text.find(needle);
  EXPECT_NE(pos, std::string::npos) << needle;
  const auto line_start = text.rfind('\n', pos);
  const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(pos), '\n');
  const auto col = pos - (line_start == std::string::npos ? 0 : line_start + 1) + 1 + offset;
  return "bad.yaml:" + std::to_string(line) + ":" + std::to_string(col) + ": ";
}

// The error of loading `text`, which must start at `needle` (+ offset) and contain `what`.
void expect_error_at(const std::string& text, const std::string& needle, std::size_t offset, const std::string& what) {
  const auto msg = load_error(text);
  EXPECT_EQ(msg.rfind(at(text, needle, offset), 0), 0U) << msg << "\nexpected at " << at(text, needle, offset);
  EXPECT_NE(msg.find(what), std::string::npos) << msg << "\nexpected: " << what;
}

// ---- how the worker SDK calls a target ----------------------------------------------------------

TEST(ConfigCall, ProvidersDefaultTheirOwnApiBaseUrlAndKeyVariable) {
  auto c = load_or_die(kBasicYaml);
  ASSERT_TRUE(c);
  const CallSpec& mini = c->targets[c->find_target("mini")].call;
  EXPECT_EQ(mini.api, "chat_completions");
  EXPECT_EQ(mini.base_url, "https://api.openai.com/v1");
  EXPECT_EQ(mini.api_key_env, "OPENAI_API_KEY");
  EXPECT_EQ(mini.api_key_file, "");
  EXPECT_EQ(mini.timeout_ms, 600'000);
  EXPECT_EQ(mini.first_token_timeout_ms, 60'000);
  EXPECT_EQ(c->targets[c->find_target("cheap")].call.api_key_env, "DEEPSEEK_API_KEY");
  const CallSpec& pool = c->targets[c->find_target("pool")].call;
  EXPECT_EQ(pool.base_url, "");     // its replicas' endpoints
  EXPECT_EQ(pool.api_key_env, "");  // no key unless the table names one
}

TEST(ConfigCall, EveryKeyIsRead) {
  const std::string yaml = replace(kBasicYaml, "    model: gpt-4.1-mini\n",
                                   "    model: gpt-4.1-mini\n    api: responses\n"
                                   "    base_url: http://127.0.0.1:8080/openai/v1/\n    api_key_env: MY_KEY\n"
                                   "    api_key_file: keys/openai.key\n    timeout_ms: 9000\n"
                                   "    first_token_timeout_ms: 1500\n");
  auto c = load_config_text(yaml, "/etc/turnout/routing.yaml");
  ASSERT_TRUE(c) << c.error().message;
  const CallSpec& mini = (*c)->targets[(*c)->find_target("mini")].call;
  EXPECT_EQ(mini.api, "responses");
  EXPECT_EQ(mini.base_url, "http://127.0.0.1:8080/openai/v1");  // trailing slash dropped
  EXPECT_EQ(mini.api_key_env, "MY_KEY");
  EXPECT_EQ(mini.api_key_file, "/etc/turnout/keys/openai.key");  // beside the table
  EXPECT_EQ(mini.timeout_ms, 9000);
  EXPECT_EQ(mini.first_token_timeout_ms, 1500);
  // A short timeout caps the default first-token timeout.
  auto short_one = load_or_die(
      replace(kBasicYaml, "    model: deepseek-chat\n", "    model: deepseek-chat\n    timeout_ms: 2000\n"));
  ASSERT_TRUE(short_one);
  EXPECT_EQ(short_one->targets[short_one->find_target("cheap")].call.first_token_timeout_ms, 2000);
}

TEST(ConfigCall, OnlyALoopbackHostMayTakeAKeyOverHttp) {
  auto with = [](const std::string& url) {
    return replace(kBasicYaml, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    base_url: " + url + "\n");
  };
  for (const char* ok : {"http://127.0.0.1:8080/v1", "http://localhost/v1", "http://[::1]:9/v1", "http://127.9.8.7"}) {
    EXPECT_TRUE(load_config_text(with(ok), "t.yaml")) << ok;
  }
  for (const char* bad : {"http://localhost.example.com/v1", "http://127.0.0.1.nip.io/v1", "http://10.0.0.1/v1",
                          "http://[::2]/v1", "http://localhost@evil.example/v1"}) {
    auto c = load_config_text(with(bad), "t.yaml");
    EXPECT_FALSE(c) << bad;
  }
  // A pool with a key: its replicas are where the key goes.
  const std::string keyed =
      replace(kBasicYaml, "    kind: self_hosted\n", "    kind: self_hosted\n    api_key_env: POOL_KEY\n");
  expect_error_at(replace(keyed, "http://127.0.0.1:9002", "http://10.1.2.3:9002"), "\"http://10.1.2.3", 0,
                  "must use https:// when the pool has a key");
  EXPECT_TRUE(load_config_text(replace(keyed, "http://127.0.0.1:9002", "https://10.1.2.3:9002"), "t.yaml"));
  EXPECT_TRUE(load_config_text(replace(kBasicYaml, "http://127.0.0.1:9002", "http://10.1.2.3:9002"), "t.yaml"))
      << "a pool without a key may use http";
}

TEST(ConfigCall, ARelativeKeyFileIsBesideTheTableWhereverTheProcessRuns) {
  const std::string yaml =
      replace(kBasicYaml, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    api_key_file: k/openai.key\n");
  auto c = load_config_text(yaml, "conf/routing.yaml");
  ASSERT_TRUE(c) << c.error().message;
  const std::string file = (*c)->targets[(*c)->find_target("mini")].call.api_key_file;
  EXPECT_EQ(file, (std::filesystem::current_path() / "conf/k/openai.key").lexically_normal().string());
  EXPECT_TRUE(std::filesystem::path(file).is_absolute());
}

TEST(ConfigCall, CredentialsNeverSitInTheTable) {
  std::string yaml = replace(kBasicYaml, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    api_key: sk-123\n");
  expect_error_at(yaml, "sk-123", 0, "credentials never go in the routing table");
  yaml = replace(kBasicYaml, "    model: gpt-4.1-mini\n",
                 "    model: gpt-4.1-mini\n    base_url: https://user:sk-1@api.openai.com/v1\n");
  expect_error_at(yaml, "https://user", 0, "credentials never go in the routing table");
}

TEST(ConfigCall, BadValuesAreRefusedWhereTheyAre) {
  auto with = [](const std::string& line) {
    return replace(kBasicYaml, "    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    " + line + "\n");
  };
  std::string y = with("api: messages");
  expect_error_at(y, "messages", 0, "is not an API of openai; expected one of: chat_completions, responses");
  y = with("base_url: ftp://example.com");
  expect_error_at(y, "ftp://", 0, "must be an http:// or https:// URL");
  y = with("base_url: http://api.example.com/v1");
  expect_error_at(y, "http://api", 0, "must use https://");
  y = with("base_url: https:///v1");
  expect_error_at(y, "https:///", 0, "has no host");
  y = with("api_key_env: 1KEY");
  expect_error_at(y, "1KEY", 0, "must name an environment variable");
  y = with("api_key_env: MY-KEY");
  expect_error_at(y, "MY-KEY", 0, "must name an environment variable");
  y = with("timeout_ms: 0");
  expect_error_at(y, "timeout_ms: 0", 12, "timeout_ms");
  y = with("timeout_ms: 1000\n    first_token_timeout_ms: 2000");
  expect_error_at(y, "first_token_timeout_ms: 2000", 24, "first_token_timeout_ms");
  // Self-hosted targets are called at their replicas: no base_url there.
  y = replace(kBasicYaml, "    kind: self_hosted\n", "    kind: self_hosted\n    base_url: https://x.example/v1\n");
  expect_error_at(y, "base_url: https://x", 0, "unknown key 'base_url'");
}

TEST(ConfigMigration, DefaultsAndRoutes) {
  const auto text = with_migration();
  auto c = load_or_die(text);
  ASSERT_TRUE(c);
  const Scenario& s = c->scenarios[c->find_scenario("canary")];
  ASSERT_TRUE(s.migration.has_value());
  const MigrationSpec& m = *s.migration;
  EXPECT_EQ(m.baseline, c->find_target("mini"));
  EXPECT_EQ(m.candidate, c->find_target("cheap"));
  EXPECT_EQ(m.stage, MigrationStage::canary);
  EXPECT_EQ(m.steps, (std::vector<std::uint32_t>{1, 5, 25, 50, 100}));
  EXPECT_EQ(m.min_samples, 200U);
  EXPECT_EQ(m.max_step_ms, 3'600'000);
  EXPECT_EQ(m.interval_ms, 60'000);
  EXPECT_EQ(m.incident_owner, "oncall");
  EXPECT_DOUBLE_EQ(m.delta, 0.05);
  EXPECT_EQ(m.attempt, 1U);
  // Default criteria: errors, plus what the slo and the quality gate make measurable.
  ASSERT_EQ(m.stop.size(), 4U);
  EXPECT_EQ(m.stop[0].metric, StopMetric::errors);
  EXPECT_DOUBLE_EQ(m.stop[0].min_effect, 0.02);
  EXPECT_EQ(m.stop[1].metric, StopMetric::ttft);
  EXPECT_DOUBLE_EQ(m.stop[1].min_effect, 0.05);
  EXPECT_EQ(m.stop[2].metric, StopMetric::latency);
  EXPECT_DOUBLE_EQ(m.stop[2].min_effect, 0.05);
  EXPECT_EQ(m.stop[3].metric, StopMetric::acceptance);
  EXPECT_DOUBLE_EQ(m.stop[3].min_effect, 0.03);
  EXPECT_FALSE(m.cost_ceiling.has_value());
  EXPECT_EQ(m.cost_max_ratio, 0.0);
  EXPECT_EQ(m.guardrails.error_rate, 0.0);
  EXPECT_EQ(m.guardrails.latency_p99_ms, 0);
  EXPECT_FALSE(m.guardrails.budget.has_value());
  EXPECT_EQ(m.guardrails.min_samples, 20U);
  EXPECT_NE(m.identity, 0U);
  EXPECT_EQ(m.line, std::stoi(at(text, "    migration:").substr(9)));
  // The routes are the baseline's and the candidate's; the Router weighs them by the run.
  ASSERT_EQ(s.routes.size(), 2U);
  EXPECT_EQ(s.routes[0].target, m.baseline);
  EXPECT_EQ(s.routes[0].weight, 100U);
  EXPECT_EQ(s.routes[1].target, m.candidate);
  EXPECT_EQ(s.routes[1].weight, 0U);
  // A scenario without the block has none.
  EXPECT_FALSE(c->scenarios[c->find_scenario("summarize")].migration.has_value());
  // Without an slo or a quality gate, only errors is judged by default.
  auto bare = load_or_die(replace(replace(text, "    slo: {ttft_p95_ms: 800, latency_p95_ms: 4000}\n", ""),
                                  "    quality_gate: {min_accept_rate: 0.95}\n", ""));
  ASSERT_TRUE(bare);
  const auto& stop = bare->scenarios[bare->find_scenario("canary")].migration->stop;
  ASSERT_EQ(stop.size(), 1U);
  EXPECT_EQ(stop[0].metric, StopMetric::errors);
}

TEST(ConfigMigration, EveryKeyIsRead) {
  auto c = load_or_die(
      with_migration("      stage: evals\n"
                     "      steps: [2, 10, 100]\n"
                     "      min_samples: 50\n"
                     "      max_step_s: 600\n"
                     "      interval_s: 30\n"
                     "      incident_owner: team-a\n"
                     "      delta: 0.01\n"
                     "      attempt: 3\n"
                     "      stop:\n"
                     "        cost_per_accepted: {max_usd: 0.004, min_effect: 0.2}\n"
                     "        errors: {min_effect: 0.01}\n"
                     "        latency: {}\n"
                     "      guardrails: {error_rate: 0.25, latency_p99_ms: 20000, budget_usd: 50, min_samples: 10}\n"));
  ASSERT_TRUE(c);
  const MigrationSpec& m = *c->scenarios[c->find_scenario("canary")].migration;
  EXPECT_EQ(m.stage, MigrationStage::evals);
  EXPECT_EQ(m.steps, (std::vector<std::uint32_t>{2, 10, 100}));
  EXPECT_EQ(m.min_samples, 50U);
  EXPECT_EQ(m.max_step_ms, 600'000);
  EXPECT_EQ(m.interval_ms, 30'000);
  EXPECT_EQ(m.incident_owner, "team-a");
  EXPECT_DOUBLE_EQ(m.delta, 0.01);
  EXPECT_EQ(m.attempt, 3U);
  // In kStopMetrics order whatever the table's order; an empty criterion takes its default.
  ASSERT_EQ(m.stop.size(), 3U);
  EXPECT_EQ(m.stop[0].metric, StopMetric::errors);
  EXPECT_DOUBLE_EQ(m.stop[0].min_effect, 0.01);
  EXPECT_EQ(m.stop[1].metric, StopMetric::latency);
  EXPECT_DOUBLE_EQ(m.stop[1].min_effect, 0.05);
  EXPECT_EQ(m.stop[2].metric, StopMetric::cost);
  EXPECT_DOUBLE_EQ(m.stop[2].min_effect, 0.2);
  ASSERT_TRUE(m.cost_ceiling.has_value());
  EXPECT_EQ(*m.cost_ceiling, Money::from_picos(4'000'000'000));
  EXPECT_EQ(m.cost_max_ratio, 0.0);
  EXPECT_DOUBLE_EQ(m.guardrails.error_rate, 0.25);
  EXPECT_EQ(m.guardrails.latency_p99_ms, 20'000);
  ASSERT_TRUE(m.guardrails.budget.has_value());
  EXPECT_EQ(*m.guardrails.budget, Money::from_picos(50 * Money::kPerUsd));
  EXPECT_EQ(m.guardrails.min_samples, 10U);

  auto ratio = load_or_die(with_migration(
      "      stage: canary\n      incident_owner: x\n      stop: {cost_per_accepted: {max_ratio: 1.2}}\n"));
  ASSERT_TRUE(ratio);
  const MigrationSpec& r = *ratio->scenarios[ratio->find_scenario("canary")].migration;
  ASSERT_EQ(r.stop.size(), 1U);
  EXPECT_EQ(r.stop[0].metric, StopMetric::cost);
  EXPECT_DOUBLE_EQ(r.stop[0].min_effect, 0.10);
  EXPECT_DOUBLE_EQ(r.cost_max_ratio, 1.2);
  EXPECT_FALSE(r.cost_ceiling.has_value());
}

TEST(ConfigMigration, IdentityIsTheRunsNamesStepsAndAttempt) {
  const auto identity = [](const std::string& block) {
    auto c = load_or_die(with_migration(block));
    return c ? c->scenarios[c->find_scenario("canary")].migration->identity : 0;
  };
  const std::string base = "      stage: canary\n      incident_owner: a\n";
  const auto id = identity(base);
  // The stage, the owner and the thresholds may change under a running migration.
  EXPECT_EQ(identity("      stage: evals\n      incident_owner: b\n      min_samples: 7\n      delta: 0.1\n"), id);
  EXPECT_EQ(identity(base + "      steps: [1, 5, 25, 50, 100]\n      attempt: 1\n"), id);
  // Other steps, another attempt, another candidate: another run.
  EXPECT_NE(identity(base + "      steps: [1, 5, 25, 100]\n"), id);
  EXPECT_NE(identity(base + "      attempt: 2\n"), id);
  auto other = load_or_die(replace(with_migration(base), "candidate: cheap", "candidate: pool"));
  ASSERT_TRUE(other);
  EXPECT_NE(other->scenarios[other->find_scenario("canary")].migration->identity, id);
}

TEST(ConfigMigration, RoutesAndAMigrationTogetherAreRefused) {
  const auto text = with_migration("      stage: canary\n      incident_owner: x\n", "    routes: [{target: mini}]\n");
  expect_error_at(text, "    routes: [{target: mini}]", 4,
                  "scenario 'canary'.routes: a scenario with a migration routes through its baseline and candidate; "
                  "remove routes");
}

TEST(ConfigMigration, AScenarioNeedsRoutesOrAMigration) {
  auto text = replace(kBasicYaml, "    routes: [{target: pool}]\n", "    fallback: [pool]\n");
  expect_error_at(text, "    data_class: restricted", 4, "scenario 'secret' is missing required key 'routes'");
}

TEST(ConfigMigration, UnknownKeysAndMissingOnesAreRefused) {
  auto text = with_migration("      stage: canary\n      incident_owner: x\n      stpes: [1]\n");
  expect_error_at(text, "stpes", 0, "unknown key 'stpes' in scenario 'canary'.migration; expected one of: baseline");
  text = with_migration("      stage: canary\n");
  expect_error_at(text, "      baseline: mini", 6,
                  "scenario 'canary'.migration is missing required key 'incident_owner'");
  text = with_migration("      stage: canary\n      incident_owner: \"\"\n");
  expect_error_at(text, "\"\"", 0, "scenario 'canary'.migration.incident_owner must not be empty");
  text = with_migration("      stage: rollout\n      incident_owner: x\n");
  expect_error_at(text, "rollout", 0,
                  "scenario 'canary'.migration.stage must be one of: discovery, draft, baseline, evals, canary; got "
                  "'rollout'");
  text = with_migration("      stage: canary\n      incident_owner: x\n      guardrails: {error_rat: 0.2}\n");
  expect_error_at(text, "error_rat:", 0, "unknown key 'error_rat' in scenario 'canary'.migration.guardrails");
}

TEST(ConfigMigration, TargetsMustBeKnownDistinctAndAllowed) {
  auto text = replace(with_migration(), "baseline: mini", "baseline: mnii");
  expect_error_at(text, "mnii", 0, "scenario 'canary'.migration.baseline names unknown target 'mnii'");
  text = replace(with_migration(), "candidate: cheap", "candidate: mini");
  expect_error_at(text, "candidate: mini", 11,
                  "scenario 'canary'.migration.candidate: the candidate must differ from the baseline ('mini')");
  // cheap takes public data only: a deidentified scenario may never send data there (fail closed).
  text = replace(with_migration(), "    data_class: public\n    slo", "    data_class: deidentified\n    slo");
  expect_error_at(text, "candidate: cheap", 11,
                  "scenario 'canary'.migration.candidate: target 'cheap' does not accept data class 'deidentified'");
}

TEST(ConfigMigration, StepsMustIncreaseWithinOneToAHundred) {
  auto text = with_migration("      stage: canary\n      incident_owner: x\n      steps: []\n");
  expect_error_at(text, "[]", 0, "scenario 'canary'.migration.steps must list at least one step");
  text = with_migration("      stage: canary\n      incident_owner: x\n      steps: [1, 25, 5]\n");
  expect_error_at(text, "5]", 0,
                  "scenario 'canary'.migration.steps[2] must be larger than the step before it (25): steps increase "
                  "strictly");
  text = with_migration("      stage: canary\n      incident_owner: x\n      steps: [5, 5]\n");
  expect_error_at(text, "5]", 0, "must be larger than the step before it (5)");
  text = with_migration("      stage: canary\n      incident_owner: x\n      steps: [0, 50]\n");
  expect_error_at(text, "0, 50", 0,
                  "scenario 'canary'.migration.steps[0] (candidate traffic %) must be between 1 and 100");
  text = with_migration("      stage: canary\n      incident_owner: x\n      steps: [50, 101]\n");
  expect_error_at(text, "101", 0, "must be between 1 and 100, got 101");
}

TEST(ConfigMigration, ACriterionNeedsAMetricSomethingReports) {
  const auto without = [](const std::string& line, const std::string& stop) {
    return replace(with_migration("      stage: canary\n      incident_owner: x\n      stop:\n        " + stop + "\n"),
                   line, "");
  };
  auto text = without("    slo: {ttft_p95_ms: 800, latency_p95_ms: 4000}\n", "ttft: {min_effect: 0.1}");
  expect_error_at(text, "ttft: {min", 0,
                  "scenario 'canary'.migration.stop.ttft: nothing reports this metric: scenario 'canary' has no "
                  "slo.ttft_p95_ms");
  text = replace(with_migration("      stage: canary\n      incident_owner: x\n      stop: {latency: {}}\n"),
                 "slo: {ttft_p95_ms: 800, latency_p95_ms: 4000}", "slo: {ttft_p95_ms: 800}");
  expect_error_at(text, "latency: {}", 0,
                  "stop.latency: nothing reports this metric: scenario 'canary' has no "
                  "slo.latency_p95_ms");
  text = without("    quality_gate: {min_accept_rate: 0.95}\n", "acceptance: {}");
  expect_error_at(text, "acceptance: {}", 0,
                  "stop.acceptance: nothing reports this metric: scenario 'canary' has no "
                  "quality_gate.min_accept_rate");
  text = with_migration("      stage: canary\n      incident_owner: x\n      stop: {throughput: {}}\n");
  expect_error_at(text, "throughput", 0,
                  "unknown key 'throughput' in scenario 'canary'.migration.stop; expected one of: errors, ttft, "
                  "latency, acceptance, cost_per_accepted");
}

TEST(ConfigMigration, TheCostCriterionNeedsExactlyOneBound) {
  auto text = with_migration("      stage: canary\n      incident_owner: x\n      stop: {cost_per_accepted: {}}\n");
  expect_error_at(text, "{}}", 0,
                  "scenario 'canary'.migration.stop.cost_per_accepted needs exactly one of max_ratio (to the "
                  "baseline's cost per accepted outcome) or max_usd (a ceiling)");
  text = with_migration(
      "      stage: canary\n      incident_owner: x\n      stop: {cost_per_accepted: {max_ratio: 1.2, max_usd: "
      "0.01}}\n");
  expect_error_at(text, "{max_ratio", 0, "needs exactly one of max_ratio");
  text =
      with_migration("      stage: canary\n      incident_owner: x\n      stop: {cost_per_accepted: {max_ratio: 0}}\n");
  expect_error_at(text, "0}}", 0, "stop.cost_per_accepted.max_ratio must be above 0 and at most 100, got 0");
}

TEST(ConfigMigration, DeltaAndMinimumEffectsAreBounded) {
  auto text = with_migration("      stage: canary\n      incident_owner: x\n      delta: 0.5\n");
  expect_error_at(text, "0.5\n", 0, "scenario 'canary'.migration.delta must be above 0 and below 0.5, got 0.5");
  text = with_migration("      stage: canary\n      incident_owner: x\n      delta: 0\n");
  expect_error_at(text, "delta: 0", 7, "delta must be above 0 and below 0.5, got 0");
  text = with_migration("      stage: canary\n      incident_owner: x\n      stop: {errors: {min_effect: 1.5}}\n");
  expect_error_at(text, "1.5", 0,
                  "scenario 'canary'.migration.stop.errors.min_effect must be above 0 and at most 1, got 1.5");
  text = with_migration("      stage: canary\n      incident_owner: x\n      stop: {errors: {min_effect: 0}}\n");
  expect_error_at(text, "0}}", 0, "stop.errors.min_effect must be above 0 and at most 1, got 0");
  text = with_migration(
      "      stage: canary\n      incident_owner: x\n      stop: {cost_per_accepted: {max_usd: 0.01, min_effect: "
      "11}}\n");
  expect_error_at(text, "11}", 0, "stop.cost_per_accepted.min_effect must be above 0 and at most 10, got 11");
}

TEST(ConfigMigration, TheIntervalFitsInAStep) {
  auto text =
      with_migration("      stage: canary\n      incident_owner: x\n      max_step_s: 120\n      interval_s: 300\n");
  expect_error_at(text, "300", 0, "scenario 'canary'.migration.interval_s must be at most max_step_s (120), got 300");
  // Unset, the interval is the default minute, or the whole step if that is shorter.
  auto c = load_or_die(with_migration("      stage: canary\n      incident_owner: x\n      max_step_s: 20\n"));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->scenarios[c->find_scenario("canary")].migration->interval_ms, 20'000);
}

TEST(Config, LoadsTheBundledExample) {
  auto c = load_config_file(std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ((*c)->targets.size(), 5U);
}

}  // namespace
}  // namespace turnout
