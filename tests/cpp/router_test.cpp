#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "msgpack_builder.hpp"
#include "test_configs.hpp"
#include "turnout/policy.hpp"
#include "turnout/router.hpp"

namespace turnout {
namespace {

using testing::kBasicYaml;
using testing::load_or_die;

constexpr TimeMs kT0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

bool has_reason(const Decision& d, ReasonCode code) {
  for (const auto& r : d.reasons) {
    if (r.code == code) return true;
  }
  return false;
}

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config = load_or_die(kBasicYaml);
    ASSERT_TRUE(config);
    mini = config->find_target("mini");
    cheap = config->find_target("cheap");
    pool = config->find_target("pool");
  }
  Decision route(Router& router, std::string_view scenario, std::string_view key, TimeMs now = kT0,
                 std::int64_t input = 1000) {
    RouteRequest r;
    r.scenario = scenario;
    r.key = key;
    r.input_tokens = input;
    r.now = now;
    auto d = router.route(r);
    EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
    return d ? *d : Decision{};
  }
  Result<ReportReceipt> report(Router& router, const Decision& d, std::uint32_t target, Status status, TimeMs now = kT0,
                               const msgpack::object* usage = nullptr) {
    OutcomeReport o;
    o.decision_id = d.id;
    o.target = config->targets[target].name;
    o.status = status;
    o.usage = usage;
    o.now = now;
    return router.report(o);
  }
  ConfigPtr config;
  std::uint32_t mini = kNone, cheap = kNone, pool = kNone;
};

TEST_F(RouterTest, StickyKeysKeepTheirTargetAndWeightsSplitTraffic) {
  Router a(config, {.seed = 42});
  Router b(config, {.seed = 42});
  std::map<std::uint32_t, int> share;
  for (int i = 0; i < 4000; ++i) {
    const std::string key = "user-" + std::to_string(i);
    const Decision da = route(a, "public-chat", key);
    const Decision db = route(b, "public-chat", key);
    EXPECT_EQ(da.placement.target, db.placement.target) << key;  // same seed, same key, same answer
    ++share[da.placement.target];
    // Outcomes keep the MaaS breakers closed and free the slots.
    ASSERT_TRUE(report(a, da, da.placement.target, Status::ok).ok());
    ASSERT_TRUE(report(b, db, db.placement.target, Status::ok).ok());
  }
  // 50/50 over 4000 keys: sd = sqrt(4000 * .25) ~ 31.6; 5 sd = 158.
  EXPECT_NEAR(share[cheap], 2000, 160);
  EXPECT_NEAR(share[mini], 2000, 160);
}

TEST_F(RouterTest, ADifferentSeedReshufflesKeys) {
  Router a(config, {.seed = 1});
  Router b(config, {.seed = 2});
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const std::string key = "k" + std::to_string(i);
    differ += route(a, "public-chat", key).placement.target != route(b, "public-chat", key).placement.target;
  }
  EXPECT_GT(differ, 50);  // independent 50/50 picks differ about half the time
}

TEST_F(RouterTest, DataClassFiltersFailClosedIncludingFallbacks) {
  Router router(config);
  // public-chat may use cheap, mini, pool; a request marked restricted may only reach pool.
  RouteRequest r{.scenario = "public-chat", .key = "k", .data_class = "restricted", .input_tokens = 10, .now = kT0};
  auto d = router.route(r);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->placement.target, pool);
  EXPECT_TRUE(d->fallbacks.empty());
  EXPECT_TRUE(has_reason(*d, ReasonCode::boundary));
  // deidentified: cheap (public only) is gone from both the choice and the fallbacks.
  for (int i = 0; i < 50; ++i) {
    r.data_class = "deidentified";
    const std::string key = "k" + std::to_string(i);
    r.key = key;
    auto e = router.route(r);
    ASSERT_TRUE(e.ok());
    EXPECT_NE(e->placement.target, cheap);
    for (const auto& f : e->fallbacks) EXPECT_NE(f.target, cheap);
  }
  r.data_class = "no-such-class";
  auto bad = router.route(r);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::invalid_argument);
}

TEST_F(RouterTest, ContextWindowFilterNamesTheNeed) {
  Router router(config);
  // secret routes only to pool (32,000 tokens): 31,800 prompt + 1024 default output does not fit.
  RouteRequest r{.scenario = "secret", .key = "k", .input_tokens = 31'800, .now = kT0};
  auto d = router.route(r);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, ErrorCode::no_eligible_target);
  EXPECT_NE(d.error().message.find("pool: context_window"), std::string::npos) << d.error().message;
  r.max_output_tokens = 200;  // 32,000 exactly fits
  EXPECT_TRUE(router.route(r).ok());
}

TEST_F(RouterTest, UnknownScenarioIsAClearError) {
  Router router(config);
  auto d = router.route({.scenario = "nope", .now = kT0});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, ErrorCode::unknown_scenario);
  EXPECT_NE(d.error().message.find("known scenarios: summarize, public-chat, secret"), std::string::npos);
}

TEST_F(RouterTest, LeastLoadedReplicaThenSaturation) {
  Router router(config);
  // secret -> pool only: 2 replicas x 2 slots. Least loaded alternates replicas, then saturates.
  std::set<std::uint32_t> replicas;
  std::vector<Decision> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(route(router, "secret", "k"));
    replicas.insert(held.back().placement.replica);
  }
  EXPECT_EQ(replicas.size(), 2U);
  EXPECT_EQ(held[0].placement.replica, 0U);
  EXPECT_EQ(held[1].placement.replica, 1U);
  auto full = router.route({.scenario = "secret", .key = "k", .input_tokens = 10, .now = kT0});
  ASSERT_FALSE(full.ok());
  EXPECT_NE(full.error().message.find("pool: saturated"), std::string::npos) << full.error().message;
  ASSERT_TRUE(report(router, held[1], pool, Status::ok).ok());  // frees a slot on replica 1
  EXPECT_EQ(route(router, "secret", "k").placement.replica, 1U);
}

TEST_F(RouterTest, SpilloverWhenThePoolReachesItsThreshold) {
  Router router(config);
  // summarize: pool 80 / mini 20, spillover to mini at 75% in-flight (3 of 4 slots).
  int spilled = 0;
  std::vector<Decision> pool_decisions;
  for (int i = 0; i < 40 && pool_decisions.size() < 3; ++i) {
    Decision d = route(router, "summarize", "key-" + std::to_string(i));
    if (d.placement.target == pool) pool_decisions.push_back(d);
  }
  ASSERT_EQ(pool_decisions.size(), 3U);
  for (int i = 100; i < 140; ++i) {
    Decision d = route(router, "summarize", "key-" + std::to_string(i));
    EXPECT_EQ(d.placement.target, mini);  // every request now leaves the pool
    spilled += has_reason(d, ReasonCode::spillover);
  }
  EXPECT_GT(spilled, 20);  // ~80% of keys prefer the pool, and they all spilled
  std::uint64_t counted = 0;
  for (const auto& row : router.counters()) {
    if (row.target == mini && config->scenarios[row.scenario].name == "summarize") counted = row.counters.spillovers;
  }
  EXPECT_EQ(counted, static_cast<std::uint64_t>(spilled));
}

TEST_F(RouterTest, BreakerOpensOnConsecutiveFailuresAndProbesAfterCooldown) {
  Router router(config);
  // public-chat fallback chain is [mini, cheap, pool]. Fail mini 3 times in a row.
  int failures = 0;
  for (int i = 0; failures < 3; ++i) {
    Decision d = route(router, "public-chat", "k" + std::to_string(i));
    if (d.placement.target != mini) continue;
    ASSERT_TRUE(report(router, d, mini, Status::timeout).ok());
    ++failures;
  }
  for (int i = 0; i < 30; ++i) {
    Decision d = route(router, "public-chat", "x" + std::to_string(i), kT0 + 1000);
    EXPECT_NE(d.placement.target, mini);
    for (const auto& f : d.fallbacks) EXPECT_NE(f.target, mini);
    ASSERT_TRUE(report(router, d, d.placement.target, Status::ok, kT0 + 1000).ok());
  }
  auto phase_of_mini = [&](TimeMs now) {
    for (const auto& b : router.breakers(now)) {
      if (b.target == mini) return b.phase;
    }
    return Breaker::Phase::closed;
  };
  EXPECT_EQ(phase_of_mini(kT0 + 1000), Breaker::Phase::open);
  // After the 10 s cooldown: half-open, exactly one probe may go.
  const TimeMs later = kT0 + 11'000;
  EXPECT_EQ(phase_of_mini(later), Breaker::Phase::half_open);
  Decision probe{};
  for (int i = 0; i < 50; ++i) {
    Decision d = route(router, "public-chat", "p" + std::to_string(i), later);
    if (d.placement.target == mini) {
      probe = d;
      break;
    }
    ASSERT_TRUE(report(router, d, d.placement.target, Status::ok, later).ok());
  }
  ASSERT_EQ(probe.placement.target, mini);
  EXPECT_TRUE(has_reason(probe, ReasonCode::half_open_probe));
  for (int i = 0; i < 30; ++i) {
    Decision d = route(router, "public-chat", "q" + std::to_string(i), later);
    EXPECT_NE(d.placement.target, mini) << "only one probe while half-open";
    ASSERT_TRUE(report(router, d, d.placement.target, Status::ok, later).ok());
  }
  ASSERT_TRUE(report(router, probe, mini, Status::ok, later + 100).ok());
  EXPECT_EQ(phase_of_mini(later + 100), Breaker::Phase::closed);
}

TEST_F(RouterTest, FailedProbeReopensAndRequestSideErrorsDoNotCount) {
  Router router(config);
  auto fail_mini = [&](int n, Status status, TimeMs now) {
    for (int i = 0, done = 0; done < n && i < 1000; ++i) {
      Decision d = route(router, "public-chat", "f" + std::to_string(now) + "-" + std::to_string(i), now);
      if (d.placement.target != mini) {
        ASSERT_TRUE(report(router, d, d.placement.target, Status::ok, now).ok());
        continue;
      }
      ASSERT_TRUE(report(router, d, mini, status, now).ok());
      ++done;
    }
  };
  fail_mini(5, Status::content_filter, kT0);  // the request's fault, not the target's
  fail_mini(5, Status::context_overflow, kT0);
  auto rows = router.breakers(kT0);
  for (const auto& b : rows) {
    if (b.target == mini) {
      EXPECT_EQ(b.phase, Breaker::Phase::closed);
    }
  }
  fail_mini(3, Status::rate_limited, kT0);
  const TimeMs later = kT0 + 10'000;
  fail_mini(1, Status::error, later);  // the half-open probe fails
  for (const auto& b : router.breakers(later)) {
    if (b.target == mini) {
      EXPECT_EQ(b.phase, Breaker::Phase::open);
      EXPECT_EQ(b.times_opened, 2U);
    }
  }
}

TEST_F(RouterTest, ErrorRateWindowOpensTheBreaker) {
  Breaker b;
  BreakerSpec spec{
      .consecutive_failures = 100, .error_rate = 0.5, .min_requests = 10, .window_ms = 60'000, .cooldown_ms = 1000};
  // Alternate ok / error: never 100 in a row, but 50% of 10 outcomes in the window.
  for (int i = 0; i < 9; ++i) b.on_outcome(spec, i % 2 == 1, false, kT0 + i);
  EXPECT_EQ(b.phase(spec, kT0 + 9), Breaker::Phase::closed);
  b.on_outcome(spec, true, false, kT0 + 10);
  EXPECT_EQ(b.phase(spec, kT0 + 10), Breaker::Phase::open);
  // Outcomes older than the window no longer count.
  Breaker c;
  for (int i = 0; i < 8; ++i) c.on_outcome(spec, true, false, kT0);
  c.on_outcome(spec, false, false, kT0 + 61'000);
  c.on_outcome(spec, false, false, kT0 + 61'000);
  c.on_outcome(spec, true, false, kT0 + 61'000);
  EXPECT_EQ(c.phase(spec, kT0 + 61'000), Breaker::Phase::closed);
}

TEST_F(RouterTest, ReportsAreIdempotentAndCheckTheTarget) {
  Router router(config);
  Decision d = route(router, "summarize", "k");
  auto usage = test::from_json(R"({"prompt_tokens": 1000, "completion_tokens": 100})");
  const std::uint32_t t = d.placement.target;
  auto first = report(router, d, t, Status::ok, kT0, &usage.get());
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_FALSE(first->duplicate);
  auto again = report(router, d, t, Status::ok, kT0, &usage.get());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  std::uint64_t outcomes = 0;
  for (const auto& row : router.counters()) outcomes += row.counters.outcomes;
  EXPECT_EQ(outcomes, 1U);

  auto wrong = report(router, d, cheap, Status::ok);  // neither the target nor a fallback
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().code, ErrorCode::target_not_allowed);
  Decision ghost;
  ghost.id = 999'999;
  auto unknown = report(router, ghost, mini, Status::ok);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::unknown_decision);
}

TEST_F(RouterTest, InvalidUsageChangesNothing) {
  Router router(config);
  Decision d = route(router, "public-chat", "k");
  auto bad = test::from_json(R"({"prompt_tokens": 10, "completion_tokens": 5,
                                   "prompt_tokens_details": {"cached_tokens": 50}})");
  auto r = report(router, d, d.placement.target, Status::ok, kT0, &bad.get());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::usage_invalid);
  for (const auto& row : router.counters()) EXPECT_EQ(row.counters.outcomes, 0U);
  // The corrected report is still accepted: nothing was lost.
  auto good = test::from_json(R"({"prompt_tokens": 100, "completion_tokens": 5,
                                    "prompt_tokens_details": {"cached_tokens": 50}})");
  EXPECT_TRUE(report(router, d, d.placement.target, Status::ok, kT0, &good.get()).ok());
}

TEST_F(RouterTest, CostPerAcceptedOutcomeIsExact) {
  Router router(config);
  // public-chat on mini: 1000 prompt (400 cached) + 100 output.
  // 600 x 400,000 + 400 x 100,000 + 100 x 1,600,000 = 240,000,000 + 40,000,000 + 160,000,000
  //   = 440,000,000 picodollars = $0.00044 per request.
  auto usage = test::from_json(R"({"prompt_tokens": 1000, "completion_tokens": 100,
                                     "prompt_tokens_details": {"cached_tokens": 400}})");
  int on_mini = 0;
  for (int i = 0; on_mini < 3 && i < 100; ++i) {
    Decision d = route(router, "public-chat", "c" + std::to_string(i));
    if (d.placement.target != mini) continue;
    auto r = report(router, d, mini, Status::ok, kT0, &usage.get());
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->cost, Money::from_picos(440'000'000));
    ASSERT_TRUE(router.verdict(d.id, on_mini != 1, kT0 + 5).ok());  // accept 2 of 3
    ++on_mini;
  }
  for (const auto& row : router.counters()) {
    if (row.target != mini || config->scenarios[row.scenario].name != "public-chat") continue;
    EXPECT_EQ(row.counters.cost.picos(), 3 * 440'000'000);
    EXPECT_EQ(row.counters.accepted, 2U);
    EXPECT_EQ(row.counters.rejected, 1U);
    EXPECT_EQ(row.counters.tokens.cache_read_tokens, 1200);
  }
}

TEST_F(RouterTest, BudgetReservationsNeverOvershootUnderConcurrency) {
  // summarize has $1/day. A worst case on mini: 1000 x $0.40/Mtok + 500 x $1.60/Mtok = $0.0012;
  // on pool the marginal GPU cost. Threads race to reserve; none may push spent+reserved over $1.
  Router router(config);
  std::atomic<int> granted{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 400; ++i) {
        const std::string key = std::to_string(t) + ":" + std::to_string(i);
        RouteRequest r{.scenario = "summarize", .key = key, .input_tokens = 1000, .now = kT0};
        auto d = router.route(r);
        if (!d) {
          EXPECT_EQ(d.error().code, ErrorCode::budget_exhausted) << d.error().message;
          ++refused;
          continue;
        }
        ++granted;
        for (const auto& b : router.budgets(kT0)) {
          EXPECT_LE(b.spent + b.reserved, b.limit);
        }
        // Report the worst case actually spent: settles reservation into spending.
        auto usage = test::from_json(R"({"prompt_tokens": 1000, "completion_tokens": 500})");
        OutcomeReport o{.decision_id = d->id,
                        .target = config->targets[d->placement.target].name,
                        .status = Status::ok,
                        .usage = &usage.get(),
                        .now = kT0};
        auto rep = router.report(o);
        EXPECT_TRUE(rep.ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(refused.load(), 0);
  EXPECT_GT(granted.load(), 0);
  for (const auto& b : router.budgets(kT0)) {
    EXPECT_LE(b.spent, b.limit);
    EXPECT_EQ(b.reserved, Money{});
  }
}

// Budget arithmetic saturates: reports of the largest usage a call may have, at a dear price, push
// spent past the 64-bit range; it stays at the top (exhausted) instead of wrapping to a negative
// that would admit again. Usage beyond the per-call bound is refused, naming the field and the bound.
TEST(RouterBudget, AbsurdCostsSaturateAndTheBudgetStaysExhausted) {
  const auto config = load_or_die(R"(version: 1
targets:
  dear:
    kind: maas
    provider: openai
    model: dear
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 1, output_per_mtok: 1000000}
scenarios:
  s:
    data_class: public
    max_output_tokens: 1
    routes: [{target: dear}]
    budget: {usd_per_day: 500}
)");
  ASSERT_TRUE(config);
  Router router(config);
  std::vector<Decision> decisions;
  for (int i = 0; i < 6; ++i) {
    // Worst case: 1 input token x 1,000,000 picos + 1 output token x 10^12 picos, about $1: fits.
    auto d = router.route({.scenario = "s", .key = std::to_string(i), .input_tokens = 1, .now = kT0});
    ASSERT_TRUE(d.ok()) << d.error().message;
    decisions.push_back(*d);
  }
  // 2^31 output tokens x 10^12 picos = 2.147... x 10^21 picos: beyond the 64-bit Money range for one
  // request, so the catalog refuses it (an error, not a wrap).
  auto beyond = test::from_json(R"({"prompt_tokens": 1, "completion_tokens": 2147483648})");
  OutcomeReport o{
      .decision_id = decisions[0].id, .target = "dear", .status = Status::ok, .usage = &beyond.get(), .now = kT0};
  auto refused = router.report(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::invalid_argument) << refused.error().message;
  // 2 x 10^6 output tokens x 10^12 = 2 x 10^18 picos ($2,000,000) per report: five of them are
  // 10^19 picos, past the int64 maximum (9.22 x 10^18).
  auto dear = test::from_json(R"({"prompt_tokens": 0, "completion_tokens": 2000000})");
  for (int i = 0; i < 6; ++i) {
    o.decision_id = decisions[static_cast<std::size_t>(i)].id;
    o.usage = &dear.get();
    auto r = router.report(o);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->cost, Money::from_picos(2'000'000'000'000'000'000));
  }
  const auto budgets = router.budgets(kT0);
  ASSERT_EQ(budgets.size(), 1U);
  EXPECT_EQ(budgets[0].spent, Money::from_picos(Money::kMaxPicos)) << "saturated, not wrapped";
  EXPECT_EQ(budgets[0].reserved, Money{});
  auto again = router.route({.scenario = "s", .key = "after", .input_tokens = 1, .now = kT0});
  ASSERT_FALSE(again.ok()) << "the budget admitted again";
  EXPECT_EQ(again.error().code, ErrorCode::budget_exhausted) << again.error().message;

  // 10^18 tokens: not a real call.
  auto absurd = test::from_json(R"({"prompt_tokens": 1000000000000000000, "completion_tokens": 1})");
  auto d = router.route({.scenario = "s", .key = "x", .input_tokens = 1, .now = kT0 + 86'400'000});
  ASSERT_TRUE(d.ok()) << "a new day: " << d.error().message;
  o.decision_id = d->id;
  o.usage = &absurd.get();
  o.now = kT0 + 86'400'000;
  auto bad = router.report(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::usage_invalid);
  EXPECT_NE(bad.error().message.find("usage.prompt_tokens"), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("2^31"), std::string::npos) << bad.error().message;
}

TEST_F(RouterTest, ExpiredDecisionsReleaseTheirSlots) {
  Router router(config, {.decision_ttl_ms = 1000});
  for (int i = 0; i < 4; ++i) (void)route(router, "secret", "k");
  auto full = router.route({.scenario = "secret", .key = "k", .input_tokens = 10, .now = kT0});
  EXPECT_FALSE(full.ok());
  Decision later = route(router, "secret", "k", kT0 + 1000);  // the 4 expired: slots free again
  EXPECT_EQ(router.pending_decisions(), 1U);
  EXPECT_NE(later.id, 0U);
}

TEST_F(RouterTest, ExplainCommitsNothing) {
  Router router(config);
  auto d = router.explain({.scenario = "secret", .key = "k", .input_tokens = 10, .now = kT0});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(router.pending_decisions(), 0U);
  for (const auto& b : router.breakers(kT0)) EXPECT_EQ(b.inflight, 0);
}

}  // namespace
}  // namespace turnout

namespace turnout {
namespace {

TEST_F(RouterTest, AProbeAnsweredByAFallbackIsReleased) {
  Router router(config);
  // Open mini's breaker (3 consecutive failures), then let the cooldown pass.
  for (int i = 0, failed = 0; failed < 3 && i < 200; ++i) {
    Decision d = route(router, "summarize", "open-" + std::to_string(i));
    ASSERT_TRUE(report(router, d, d.placement.target, d.placement.target == mini ? Status::error : Status::ok).ok());
    failed += d.placement.target == mini;
  }
  const TimeMs later = kT0 + 20'000;
  Decision probe{};
  for (int i = 0; i < 200 && probe.placement.target != mini; ++i) {
    Decision d = route(router, "public-chat", "probe-" + std::to_string(i), later);
    if (d.placement.target == mini) {
      probe = d;
    } else {
      ASSERT_TRUE(report(router, d, d.placement.target, Status::ok, later).ok());
    }
  }
  ASSERT_EQ(probe.placement.target, mini);
  ASSERT_FALSE(probe.fallbacks.empty());
  // The worker gave up on mini and got its answer from a fallback: the probe slot must come back.
  ASSERT_TRUE(report(router, probe, probe.fallbacks[0].target, Status::ok, later).ok());
  bool mini_again = false;
  for (int i = 0; i < 200 && !mini_again; ++i) {
    Decision d = route(router, "public-chat", "again-" + std::to_string(i), later + 1);
    mini_again = d.placement.target == mini;
    ASSERT_TRUE(report(router, d, d.placement.target, Status::ok, later + 1).ok());
  }
  EXPECT_TRUE(mini_again);
}

TEST_F(RouterTest, MaxPendingBoundsTheTable) {
  Router router(config, {.max_pending = 2});
  for (int i = 0; i < 10; ++i) {
    (void)route(router, "public-chat", "k" + std::to_string(i));
    EXPECT_LE(router.pending_decisions(), 2U);
  }
}

TEST_F(RouterTest, AVerdictWithoutAnAnswerChangesNothing) {
  Router router(config);
  Decision d = route(router, "public-chat", "k");
  OutcomeReport o{.decision_id = d.id,
                  .target = config->targets[d.placement.target].name,
                  .status = Status::error,
                  .accepted = true,
                  .now = kT0};
  auto r = router.report(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
  for (const auto& row : router.counters()) EXPECT_EQ(row.counters.outcomes, 0U);
  o.accepted.reset();
  auto again = router.report(o);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->duplicate);
}

// ------------------------------------------------------------------- SLO attainment and quality gate

/// One MaaS target and its fallback; `timed` states an SLO and a quality gate, `untimed` neither.
constexpr const char* kSloYaml = R"(version: 1
targets:
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
  cheap:
    kind: maas
    provider: deepseek
    model: deepseek-chat
    data_classes: [public]
    context_window: 64000
    price: {input_per_mtok: 0.28, output_per_mtok: 0.42}
scenarios:
  timed:
    data_class: public
    slo: {ttft_p95_ms: 500, latency_p95_ms: 2000}
    quality_gate: {min_accept_rate: 0.75}
    routes: [{target: mini}]
    fallback: [cheap]
    inflight_lease_ms: 1000
  untimed:
    data_class: public
    routes: [{target: mini}]
)";

class SloLedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config = load_or_die(kSloYaml);
    ASSERT_TRUE(config);
    router = std::make_unique<Router>(config);
  }
  Decision route(std::string_view scenario, TimeMs now = kT0) {
    auto d = router->route({.scenario = scenario, .key = "k", .input_tokens = 100, .now = now});
    EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
    return d ? *d : Decision{};
  }
  /// Reports `d`'s outcome on `target` with its times (-1: not reported); whether it was counted.
  bool report(const Decision& d, std::string_view target, Status status, std::int64_t ttft_ms, std::int64_t latency_ms,
              TimeMs now = kT0) {
    auto r = router->report({.decision_id = d.id,
                             .target = target,
                             .status = status,
                             .ttft_ms = ttft_ms,
                             .latency_ms = latency_ms,
                             .now = now});
    EXPECT_TRUE(r.ok()) << (r ? "" : r.error().message);
    return r && !r->duplicate;
  }
  Counters row(std::string_view scenario, std::string_view target) const {
    return router->counter(config->find_scenario(scenario), config->find_target(target));
  }
  Objectives goals(std::string_view scenario) const {
    return objectives(config->scenarios[config->find_scenario(scenario)]);
  }
  ConfigPtr config;
  std::unique_ptr<Router> router;
};

TEST_F(SloLedgerTest, EachOutcomeIsCheckedOnceAgainstItsScenariosBounds) {
  // timed: ttft <= 500 ms and latency <= 2000 ms are within (the bound itself is within).
  EXPECT_TRUE(report(route("timed"), "mini", Status::ok, 100, 1000));  // within, within
  EXPECT_TRUE(report(route("timed"), "mini", Status::ok, 500, 2000));  // within, within (at the bound)
  EXPECT_TRUE(report(route("timed"), "mini", Status::ok, 501, 2001));  // past, past
  EXPECT_TRUE(report(route("timed"), "mini", Status::ok, -1, 1500));   // no TTFT reported; latency within
  EXPECT_TRUE(report(route("timed"), "mini", Status::ok, -1, -1));     // neither reported: nothing checked
  // A failed outcome with times is observed by the histograms, so it is checked too (and is past here).
  const Decision failed = route("timed");
  EXPECT_TRUE(report(failed, "mini", Status::error, 800, 3000));
  EXPECT_FALSE(report(failed, "mini", Status::error, 10, 10));  // a duplicate: counted once
  // Its fallback's outcome counts on the fallback's row.
  EXPECT_TRUE(report(failed, "cheap", Status::ok, 300, 2500));
  // An answered decision's repeat (now settled) is a duplicate too.
  const Decision answered = route("timed");
  EXPECT_TRUE(report(answered, "mini", Status::ok, 200, 900));
  EXPECT_FALSE(report(answered, "mini", Status::ok, 200, 900));
  // A report after the decision's 1 s lease has ended still counts, once.
  const Decision late = route("timed");
  EXPECT_TRUE(report(late, "mini", Status::ok, 450, 5000, kT0 + 5000));
  EXPECT_FALSE(report(late, "mini", Status::ok, 450, 5000, kT0 + 5001));

  const Counters mini = row("timed", "mini");
  // TTFT reported: 100, 500, 501, 800, 200, 450 -> 6 checked, within 100, 500, 200, 450 -> 4.
  EXPECT_EQ(mini.ttft.count, 6U);
  EXPECT_EQ(mini.ttft_slo_checked, 6U);
  EXPECT_EQ(mini.ttft_within_slo, 4U);
  // Latency reported: 1000, 2000, 2001, 1500, 3000, 900, 5000 -> 7 checked, within 1000, 2000, 1500, 900 -> 4.
  EXPECT_EQ(mini.latency.count, 7U);
  EXPECT_EQ(mini.latency_slo_checked, 7U);
  EXPECT_EQ(mini.latency_within_slo, 4U);
  const Derived d = derive(mini, goals("timed"));
  ASSERT_TRUE(d.ttft_slo_attainment && d.latency_slo_attainment);
  EXPECT_DOUBLE_EQ(*d.ttft_slo_attainment, 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(*d.latency_slo_attainment, 4.0 / 7.0);

  const Counters cheap = row("timed", "cheap");
  EXPECT_EQ(cheap.ttft_slo_checked, 1U);
  EXPECT_EQ(cheap.ttft_within_slo, 1U);
  EXPECT_EQ(cheap.latency_slo_checked, 1U);
  EXPECT_EQ(cheap.latency_within_slo, 0U);  // 2500 > 2000
}

TEST_F(SloLedgerTest, AScenarioWithoutAnSloChecksNothing) {
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(report(route("untimed"), "mini", Status::ok, 100 * i, 1000 * i));
  const Counters c = row("untimed", "mini");
  EXPECT_EQ(c.ttft.count, 3U);  // the histograms still observe every reported time
  EXPECT_EQ(c.latency.count, 3U);
  EXPECT_EQ(c.ttft_slo_checked + c.ttft_within_slo + c.latency_slo_checked + c.latency_within_slo, 0U);
  const Derived d = derive(c, goals("untimed"));
  EXPECT_FALSE(d.ttft_slo_attainment);
  EXPECT_FALSE(d.latency_slo_attainment);
  EXPECT_FALSE(d.quality_gate_passed);  // no gate
}

TEST_F(SloLedgerTest, TheQualityGateFlipsAsRejectionsComeIn) {
  const auto gate = [&] { return derive(row("timed", "mini"), goals("timed")); };
  EXPECT_FALSE(gate().accept_rate);  // no verdict yet: neither pass nor fail
  EXPECT_FALSE(gate().quality_gate_passed);
  std::vector<Decision> answered;
  for (int i = 0; i < 5; ++i) {
    answered.push_back(route("timed"));
    ASSERT_TRUE(report(answered.back(), "mini", Status::ok, 100, 1000));
  }
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(router->verdict(answered[i].id, true, kT0 + 1).ok());
  EXPECT_EQ(gate().accept_rate, 1.0);
  EXPECT_EQ(gate().quality_gate_passed, true);
  ASSERT_TRUE(router->verdict(answered[3].id, false, kT0 + 2).ok());
  EXPECT_EQ(gate().accept_rate, 0.75);  // 3 / 4: at min_accept_rate passes
  EXPECT_EQ(gate().quality_gate_passed, true);
  ASSERT_TRUE(router->verdict(answered[3].id, true, kT0 + 3).ok());  // a second verdict changes nothing
  EXPECT_EQ(gate().accept_rate, 0.75);
  ASSERT_TRUE(router->verdict(answered[4].id, false, kT0 + 4).ok());
  EXPECT_EQ(gate().accept_rate, 0.6);  // 3 / 5
  EXPECT_EQ(gate().quality_gate_passed, false);
}

// ---- a migration's traffic split and its arms ------------------------------------------------------

constexpr const char* kMigrationYaml = R"(version: 1
targets:
  base:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
  cand:
    kind: maas
    provider: openai
    model: gpt-4.1
    data_classes: [public]
    context_window: 64000
    price: {input_per_mtok: 0.28, output_per_mtok: 0.42}
  spare:
    kind: maas
    provider: openai
    model: gpt-4.1-nano
    data_classes: [public]
    context_window: 64000
    price: {input_per_mtok: 0.10, output_per_mtok: 0.40}
scenarios:
  move:
    data_class: public
    slo: {ttft_p95_ms: 500, latency_p95_ms: 2000}
    quality_gate: {min_accept_rate: 0.75}
    fallback: [cand, spare]
    migration:
      baseline: base
      candidate: cand
      stage: canary
      steps: [5, 25, 100]
      min_samples: 1000
      interval_s: 60
      max_step_s: 3600
      incident_owner: oncall
  plain:
    data_class: public
    routes: [{target: base}]
)";

std::string replace_text(std::string text, const std::string& from, const std::string& to) {
  const auto pos = text.find(from);
  EXPECT_NE(pos, std::string::npos) << from;
  if (pos != std::string::npos) text.replace(pos, from.size(), to);
  return text;
}

// A verdict waits in the compact store: the bit saying whether its answer was the placement's fits.
static_assert(sizeof(SettledDecision) <= 32, "SettledDecision must stay small (the verdict window holds millions)");

class MigrationRouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config = load_or_die(kMigrationYaml);
    ASSERT_TRUE(config);
    router = std::make_unique<Router>(config);
    base = config->find_target("base");
    cand = config->find_target("cand");
    spare = config->find_target("spare");
  }
  /// Where `key` would go now (explain: nothing is committed).
  std::uint32_t target_of(Router& r, const std::string& key, TimeMs now = kT0) {
    auto d = r.explain({.scenario = "move", .key = key, .input_tokens = 100, .now = now});
    EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
    return d ? d->placement.target : kNone;
  }
  /// How many of `n` keys go to the candidate; every key goes to the baseline or the candidate.
  std::size_t on_candidate(Router& r, std::size_t n = 20'000) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto t = target_of(r, "key-" + std::to_string(i));
      EXPECT_TRUE(t == base || t == cand) << t;
      count += t == cand ? 1 : 0;
    }
    return count;
  }
  /// Moves the run to `phase` at `step` the way a restart carries it (export, edit, import).
  void set_run(MigrationPhase phase, std::uint32_t step) {
    LiveState s = router->export_state();
    ASSERT_EQ(s.migrations.size(), 1U);
    s.migrations[0].run.phase = phase;
    s.migrations[0].run.step = step;
    s.migrations[0].run.step_started_at = kT0;
    s.migrations[0].run.next_analysis_at = kT0 + 60'000;
    (void)router->import_state(s);
  }
  /// Starts the canary: pending -> ramp(step 0) at kT0.
  void start() {
    ASSERT_TRUE(router->migration_due(kT0));
    const auto moves = router->migration_tick(kT0);
    ASSERT_EQ(moves.size(), 1U);
    EXPECT_EQ(moves[0].first, config->find_scenario("move"));
    EXPECT_EQ(moves[0].second.to, MigrationPhase::ramp);
    EXPECT_EQ(moves[0].second.cause, TransitionCause::started);
  }
  Decision route_to(std::uint32_t target, TimeMs now = kT0) {
    for (int i = 0; i < 10'000; ++i) {
      auto d = router->route(
          {.scenario = "move", .key = "r-" + std::to_string(next_key_++), .input_tokens = 100, .now = now});
      EXPECT_TRUE(d.ok());
      if (d && d->placement.target == target) return *d;  // the others stay pending, unreported
    }
    ADD_FAILURE() << "no decision on " << config->targets[target].name;
    return {};
  }
  Result<ReportReceipt> report(const Decision& d, std::uint32_t target, Status status, std::int64_t ttft_ms = -1,
                               std::int64_t latency_ms = -1, const msgpack::object* usage = nullptr,
                               std::optional<bool> accepted = std::nullopt) {
    return router->report({.decision_id = d.id,
                           .target = config->targets[target].name,
                           .status = status,
                           .usage = usage,
                           .ttft_ms = ttft_ms,
                           .latency_ms = latency_ms,
                           .accepted = accepted,
                           .now = kT0});
  }
  MigrationRun run() const {
    const auto all = router->migrations();
    EXPECT_EQ(all.size(), 1U);
    return all.empty() ? MigrationRun{} : all[0].run;
  }

  ConfigPtr config;
  std::unique_ptr<Router> router;
  std::uint32_t base = kNone, cand = kNone, spare = kNone;
  int next_key_ = 0;
};

TEST_F(MigrationRouterTest, TheSplitFollowsTheRunsPercent) {
  // Pending: everything on the baseline.
  EXPECT_EQ(on_candidate(*router), 0U);
  start();
  // Ramp, step 0 = 5 % of 20,000 keys (binomial sd ~31).
  const auto five = on_candidate(*router);
  EXPECT_GT(five, 880U);
  EXPECT_LT(five, 1120U);
  EXPECT_EQ(router->migrations()[0].candidate_percent, 5U);
  // The decision's reason carries the live weight, not the table's.
  auto d = router->explain({.scenario = "move", .key = "key-1", .input_tokens = 100, .now = kT0});
  ASSERT_TRUE(d.ok());
  ASSERT_FALSE(d->reasons.empty());
  EXPECT_EQ(d->reasons[0].code, ReasonCode::weight);
  EXPECT_EQ(d->reasons[0].value, d->placement.target == cand ? 5 : 95);
  // Aborted: back to the baseline, all of it.
  ASSERT_TRUE(router->migration_command("move", MigrationCommand::abort, kT0 + 1).ok());
  EXPECT_EQ(router->migrations()[0].candidate_percent, 0U);
  EXPECT_EQ(on_candidate(*router), 0U);
  // Promoted: all on the candidate.
  set_run(MigrationPhase::promoted, 2);
  EXPECT_EQ(on_candidate(*router, 2'000), 2'000U);
  // A scenario without a migration keeps its table's routes.
  auto plain = router->explain({.scenario = "plain", .key = "k", .now = kT0});
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->placement.target, base);
  EXPECT_EQ(plain->reasons[0].value, 100);
}

TEST_F(MigrationRouterTest, KeysOnTheCandidateStayThereAsThePercentGrows) {
  start();
  std::vector<std::string> moved;
  for (int i = 0; i < 4'000; ++i) {
    const std::string key = "key-" + std::to_string(i);
    if (target_of(*router, key) == cand) moved.push_back(key);
  }
  ASSERT_GT(moved.size(), 100U);
  set_run(MigrationPhase::ramp, 1);  // 25 %
  EXPECT_EQ(router->migrations()[0].candidate_percent, 25U);
  for (const auto& key : moved) EXPECT_EQ(target_of(*router, key), cand) << key;
  const auto quarter = on_candidate(*router);
  EXPECT_GT(quarter, 4'700U);  // 5,000 expected, sd ~61
  EXPECT_LT(quarter, 5'300U);
  // Paused at a step: the step's weight stays.
  ASSERT_TRUE(router->migration_command("move", MigrationCommand::pause, kT0 + 1).ok());
  EXPECT_EQ(router->migrations()[0].candidate_percent, 25U);
  for (const auto& key : moved) EXPECT_EQ(target_of(*router, key), cand) << key;
}

TEST_F(MigrationRouterTest, OutcomesCountInTheirArmOnceAndFallbacksNot) {
  // Before the canary starts nothing is counted.
  Decision early = route_to(base);
  ASSERT_TRUE(report(early, base, Status::ok).ok());
  EXPECT_EQ(run().baseline.outcomes, 0U);

  start();
  set_run(MigrationPhase::ramp, 1);
  auto usage = test::from_json(R"({"prompt_tokens": 1000, "completion_tokens": 100})");
  Decision on_cand = route_to(cand);
  auto receipt = report(on_cand, cand, Status::ok, 600, 1500, &usage.get());
  ASSERT_TRUE(receipt.ok()) << receipt.error().message;
  ASSERT_TRUE(receipt->priced);
  // A duplicate changes nothing.
  ASSERT_TRUE(report(on_cand, cand, Status::ok, 600, 1500, &usage.get())->duplicate);

  Decision on_base = route_to(base);
  ASSERT_TRUE(report(on_base, base, Status::error).ok());
  // The baseline failed; the candidate, as the fallback, answered: not the candidate arm's outcome.
  auto fallback = report(on_base, cand, Status::ok, 100, 200, &usage.get());
  ASSERT_TRUE(fallback.ok());
  ASSERT_TRUE(fallback->fallback);

  const MigrationRun r = run();
  EXPECT_EQ(r.candidate.outcomes, 1U);
  EXPECT_EQ(r.candidate.errors, 0U);
  EXPECT_EQ(r.candidate.ttft_checked, 1U);
  EXPECT_EQ(r.candidate.ttft_over, 1U);  // 600 ms > the slo's 500
  EXPECT_EQ(r.candidate.latency_checked, 1U);
  EXPECT_EQ(r.candidate.latency_over, 0U);
  EXPECT_EQ(r.candidate.priced, 1U);
  EXPECT_EQ(r.candidate.cost, receipt->cost);
  EXPECT_EQ(r.step_outcomes, 1U);
  EXPECT_EQ(r.baseline.outcomes, 1U);
  EXPECT_EQ(r.baseline.errors, 1U);
  EXPECT_EQ(r.baseline.priced, 0U);
  // The ledger still counts every outcome, the fallback's too.
  EXPECT_EQ(router->counter(config->find_scenario("move"), cand).outcomes, 2U);
}

TEST_F(MigrationRouterTest, VerdictsCountInTheArmThatServedAsThePlacement) {
  start();
  set_run(MigrationPhase::ramp, 1);
  // A verdict with the outcome (the pending decision's path) and one after it (the settled one).
  Decision a = route_to(cand);
  ASSERT_TRUE(report(a, cand, Status::ok, -1, -1, nullptr, false).ok());
  Decision b = route_to(cand);
  ASSERT_TRUE(report(b, cand, Status::ok).ok());
  ASSERT_TRUE(router->verdict(b.id, true, kT0).ok());
  ASSERT_TRUE(router->verdict(b.id, false, kT0).ok());  // idempotent: the first verdict stands
  Decision c = route_to(base);
  ASSERT_TRUE(report(c, base, Status::ok).ok());
  ASSERT_TRUE(router->verdict(c.id, false, kT0).ok());
  // Answered by the candidate as a fallback: its verdict is not the candidate arm's.
  Decision d = route_to(base);
  ASSERT_TRUE(report(d, base, Status::timeout).ok());
  ASSERT_TRUE(report(d, cand, Status::ok).ok());
  ASSERT_TRUE(router->verdict(d.id, false, kT0).ok());

  const MigrationRun r = run();
  EXPECT_EQ(r.candidate.verdicts, 2U);
  EXPECT_EQ(r.candidate.rejected, 1U);
  EXPECT_EQ(r.baseline.verdicts, 1U);
  EXPECT_EQ(r.baseline.rejected, 1U);
}

TEST_F(MigrationRouterTest, CommandsNameWhatIsWrong) {
  auto none = router->migration_command("plain", MigrationCommand::promote, kT0);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::no_migration);
  EXPECT_EQ(none.error().message, "scenario 'plain' has no migration block");
  auto unknown = router->migration_command("nope", MigrationCommand::abort, kT0);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::unknown_scenario);
  EXPECT_EQ(unknown.error().message, "unknown scenario 'nope'; known scenarios: move, plain");
  start();
  auto conflict = router->migration_command("move", MigrationCommand::resume, kT0);
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().code, ErrorCode::migration_conflict);
  EXPECT_EQ(run().phase, MigrationPhase::ramp);
  // A command that applies moves the split at once.
  auto promoted = router->migration_command("move", MigrationCommand::promote, kT0 + 5);
  ASSERT_TRUE(promoted.ok());
  EXPECT_EQ(promoted->to, MigrationPhase::promoted);
  EXPECT_EQ(promoted->cause, TransitionCause::command);
  EXPECT_EQ(router->migrations()[0].candidate_percent, 100U);
  EXPECT_EQ(target_of(*router, "any"), cand);
}

TEST_F(MigrationRouterTest, StatusDueAndDeadlines) {
  MigrationStatus pending = router->migrations().at(0);
  EXPECT_EQ(pending.scenario, config->find_scenario("move"));
  EXPECT_EQ(pending.run.phase, MigrationPhase::pending);
  EXPECT_EQ(pending.deadline_at, 0);
  start();
  EXPECT_FALSE(router->migration_due(kT0 + 59'999));
  EXPECT_TRUE(router->migration_due(kT0 + 60'000));
  MigrationStatus ramp = router->migrations().at(0);
  EXPECT_EQ(ramp.run.started_at, kT0);
  EXPECT_EQ(ramp.deadline_at, kT0 + 3'600'000);
  ASSERT_EQ(ramp.criteria.size(), 4U) << "errors, ttft, latency and acceptance: the defaults of this scenario";
  EXPECT_EQ(ramp.criteria[0].metric, StopMetric::errors);
  EXPECT_EQ(ramp.criteria[3].metric, StopMetric::acceptance);
  ASSERT_TRUE(router->migration_command("move", MigrationCommand::pause, kT0 + 1'000).ok());
  EXPECT_EQ(router->migrations().at(0).deadline_at, kT0 + 1'000 + 3'600'000);
  ASSERT_TRUE(router->migration_command("move", MigrationCommand::abort, kT0 + 2'000).ok());
  EXPECT_EQ(router->migrations().at(0).deadline_at, 0);
  EXPECT_FALSE(router->migration_due(kT0 + 10'000'000)) << "an ended run is analysed no more";
  // A table whose migration is not at the canary stage yet: nothing is due, nothing moves.
  auto evals = load_or_die(replace_text(kMigrationYaml, "stage: canary", "stage: evals"));
  ASSERT_TRUE(evals);
  Router waiting(evals);
  EXPECT_FALSE(waiting.migration_due(kT0));
  EXPECT_TRUE(waiting.migration_tick(kT0).empty());
}

TEST_F(MigrationRouterTest, ARunCarriesOverExactlyAndAReloadKeepsItOnlyUnderItsIdentity) {
  start();
  set_run(MigrationPhase::ramp, 1);
  auto usage = test::from_json(R"({"prompt_tokens": 1000, "completion_tokens": 100})");
  for (int i = 0; i < 3; ++i) {
    Decision d = route_to(cand);
    ASSERT_TRUE(report(d, cand, Status::ok, 100, 300, &usage.get()).ok());
    ASSERT_TRUE(router->verdict(d.id, i != 0, kT0).ok());
  }
  Decision fb = route_to(base);  // answered by a fallback: its settled entry says so
  ASSERT_TRUE(report(fb, base, Status::error).ok());
  ASSERT_TRUE(report(fb, cand, Status::ok).ok());
  const LiveState exported = router->export_state();
  ASSERT_EQ(exported.migrations.size(), 1U);
  EXPECT_EQ(exported.migrations[0].scenario, "move");

  Router restarted(config);
  (void)restarted.import_state(exported);
  EXPECT_EQ(restarted.export_state(), exported) << "a ported run keeps its counters exactly";
  EXPECT_EQ(restarted.migrations()[0].candidate_percent, 25U);
  ASSERT_TRUE(restarted.verdict(fb.id, false, kT0).ok());  // served by a fallback: still not counted
  EXPECT_EQ(restarted.migrations()[0].run.candidate.verdicts, 3U);
  for (int i = 0; i < 200; ++i) {
    const std::string key = "key-" + std::to_string(i);
    EXPECT_EQ(target_of(restarted, key), target_of(*router, key)) << key;
  }

  // A reload that changes thresholds only: the same run goes on.
  auto tuned = load_or_die(replace_text(kMigrationYaml, "min_samples: 1000", "min_samples: 500"));
  ASSERT_TRUE(tuned);
  Router same(tuned);
  (void)same.import_state(exported);
  EXPECT_EQ(same.migrations()[0].run, exported.migrations[0].run);
  EXPECT_EQ(same.migrations()[0].candidate_percent, 25U);
  // Another attempt: a new run, pending, all traffic on the baseline.
  auto again =
      load_or_die(replace_text(kMigrationYaml, "incident_owner: oncall", "incident_owner: oncall\n      attempt: 2"));
  ASSERT_TRUE(again);
  Router fresh(again);
  (void)fresh.import_state(exported);
  EXPECT_EQ(fresh.migrations()[0].run.phase, MigrationPhase::pending);
  EXPECT_EQ(fresh.migrations()[0].run.candidate.outcomes, 0U);
  EXPECT_EQ(fresh.migrations()[0].run.identity, again->scenarios[0].migration->identity);
  EXPECT_EQ(fresh.migrations()[0].candidate_percent, 0U);
  EXPECT_EQ(on_candidate(fresh, 500), 0U);
  // A table without the scenario's migration routes none, but keeps the run for a table that names it.
  Router plain(load_or_die(kSloYaml));
  (void)plain.import_state(exported);
  EXPECT_TRUE(plain.migrations().empty());
  EXPECT_EQ(plain.export_state().migrations, exported.migrations);
}

TEST_F(MigrationRouterTest, AnEndedRunStaysEndedWhenItsBlockComesBackOrTheTableRollsBack) {
  start();
  ASSERT_TRUE(router->migration_command("move", MigrationCommand::abort, kT0 + 1).ok());
  const LiveState aborted = router->export_state();
  // The block leaves the table, then comes back unchanged: still aborted, nothing on the candidate.
  Router without(load_or_die(kSloYaml));
  (void)without.import_state(aborted);
  Router back(config);
  (void)back.import_state(without.export_state());
  EXPECT_EQ(back.migrations()[0].run.phase, MigrationPhase::aborted);
  EXPECT_FALSE(back.migration_due(kT0 + 120'000));
  EXPECT_EQ(on_candidate(back, 500), 0U);
  // Attempt 2 starts fresh; rolling the table back to attempt 1 finds attempt 1 aborted, not new.
  auto again =
      load_or_die(replace_text(kMigrationYaml, "incident_owner: oncall", "incident_owner: oncall\n      attempt: 2"));
  Router second(again);
  (void)second.import_state(aborted);
  EXPECT_EQ(second.migrations()[0].run.phase, MigrationPhase::pending);
  ASSERT_TRUE(second.migration_due(kT0 + 10));
  (void)second.migration_tick(kT0 + 10);
  Router rolled_back(config);
  (void)rolled_back.import_state(second.export_state());
  EXPECT_EQ(rolled_back.migrations()[0].run.phase, MigrationPhase::aborted);
  EXPECT_EQ(on_candidate(rolled_back, 500), 0U);
}

TEST_F(MigrationRouterTest, ARunCountsOnlyDecisionsMadeWhileItRan) {
  // Decided while pending (another split), reported after the canary started: not counted.
  Decision early = route_to(base, kT0 - 10);
  start();
  ASSERT_TRUE(report(early, base, Status::error).ok());
  EXPECT_EQ(run().baseline.outcomes, 0U);
  // Decided under attempt 1, reported under attempt 2: not counted either.
  Decision under_first = route_to(cand, kT0 + 5);
  auto again =
      load_or_die(replace_text(kMigrationYaml, "incident_owner: oncall", "incident_owner: oncall\n      attempt: 2"));
  Router second(again);
  (void)second.import_state(router->export_state());
  ASSERT_TRUE(second.migration_due(kT0 + 100));
  (void)second.migration_tick(kT0 + 100);
  ASSERT_TRUE(
      second.report({.decision_id = under_first.id, .target = "cand", .status = Status::ok, .now = kT0 + 200}).ok());
  ASSERT_TRUE(second.verdict(under_first.id, false, kT0 + 300).ok());
  EXPECT_EQ(second.migrations()[0].run.candidate.outcomes, 0U);
  EXPECT_EQ(second.migrations()[0].run.candidate.verdicts, 0U);
  // A decision of the run itself counts.
  Decision own = route_to(base, kT0 + 400);
  ASSERT_TRUE(report(own, base, Status::ok).ok());
  EXPECT_EQ(run().baseline.outcomes, 1U);
}

TEST_F(MigrationRouterTest, AStageMovedBackHoldsALiveRun) {
  start();
  set_run(MigrationPhase::ramp, 1);
  auto evals = load_or_die(replace_text(kMigrationYaml, "stage: canary", "stage: evals"));
  Router held(evals);
  (void)held.import_state(router->export_state());
  EXPECT_EQ(held.migrations()[0].run.phase, MigrationPhase::ramp);
  EXPECT_EQ(held.migrations()[0].candidate_percent, 0U);
  EXPECT_EQ(on_candidate(held, 500), 0U);
  EXPECT_FALSE(held.migration_due(kT0 + 10'000'000)) << "held: no analysis, no deadline";
  Router resumed(config);
  (void)resumed.import_state(held.export_state());
  EXPECT_EQ(resumed.migrations()[0].candidate_percent, 25U);
}

TEST_F(MigrationRouterTest, AConflictNamesItsScenario) {
  start();
  auto conflict = router->migration_command("move", MigrationCommand::resume, kT0);
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().message.rfind("scenario 'move': cannot resume", 0), 0U) << conflict.error().message;
}

}  // namespace
}  // namespace turnout
