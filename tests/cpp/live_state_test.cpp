// A Router's live state by names (export_state/import_state) across reloads, in-flight leases that end
// on their own, ledger rows that keep their history, the compact verdict window, and release_ring.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "msgpack_builder.hpp"
#include "test_configs.hpp"
#include "turnout/detail/fast_path_access.hpp"
#include "turnout/protocol.hpp"
#include "turnout/router.hpp"

namespace turnout {
namespace {

using testing::load_or_die;

constexpr TimeMs kT0 = 1'767'225'600'000;  // 2026-01-01T00:00:00Z

constexpr const char* kTargets = R"(version: 1
targets:
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  canary:
    kind: maas
    provider: openai
    model: gpt-4.1
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 2.00, cache_read_per_mtok: 0.50, output_per_mtok: 8.00}
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}
    breaker: {consecutive_failures: 2, cooldown_s: 600}
    replicas:
      - {endpoint: "http://127.0.0.1:9001", max_inflight: 2}
      - {endpoint: "http://127.0.0.1:9002", max_inflight: 2}
scenarios:
  chat:
    data_class: public
    inflight_lease_ms: 60000
    routes: [{target: pool}]
    budget: {usd_per_day: 1}
  rollout:
    data_class: public
    routes: [{target: mini, weight: 50}, {target: canary, weight: 50}]
    fallback: [mini]
)";

// The same names, the targets and the pool's replicas in another order.
constexpr const char* kReordered = R"(version: 1
targets:
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}
    breaker: {consecutive_failures: 2, cooldown_s: 600}
    replicas:
      - {endpoint: "http://127.0.0.1:9002", max_inflight: 2}
      - {endpoint: "http://127.0.0.1:9001", max_inflight: 2}
  canary:
    kind: maas
    provider: openai
    model: gpt-4.1
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 2.00, cache_read_per_mtok: 0.50, output_per_mtok: 8.00}
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
scenarios:
  rollout:
    data_class: public
    routes: [{target: mini, weight: 50}, {target: canary, weight: 50}]
    fallback: [mini]
  chat:
    data_class: public
    inflight_lease_ms: 60000
    routes: [{target: pool}]
    budget: {usd_per_day: 1}
)";

// The canary ended (its target is gone) and the pool lost a replica; the rest is reordered.
constexpr const char* kCanaryEnded = R"(version: 1
targets:
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}
    breaker: {consecutive_failures: 2, cooldown_s: 600}
    replicas:
      - {endpoint: "http://127.0.0.1:9002", max_inflight: 2}
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
scenarios:
  rollout:
    data_class: public
    routes: [{target: mini}]
  chat:
    data_class: public
    inflight_lease_ms: 60000
    routes: [{target: pool}]
    budget: {usd_per_day: 1}
)";

class LiveStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a = load_or_die(kTargets);
    ASSERT_TRUE(a);
  }
  static Result<Decision> try_route(Router& router, std::string_view scenario, std::string_view key, TimeMs now) {
    RouteRequest r;
    r.scenario = scenario;
    r.key = key;
    r.input_tokens = 1000;
    r.max_output_tokens = 100;
    r.now = now;
    return router.route(r);
  }
  static Decision route(Router& router, std::string_view scenario, std::string_view key, TimeMs now = kT0) {
    auto d = try_route(router, scenario, key, now);
    EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
    return d ? *d : Decision{};
  }
  /// A decision of `scenario` placed on `target` (keys are tried until the split picks it).
  static Decision route_to(Router& router, std::string_view scenario, std::string_view target, TimeMs now = kT0) {
    for (int i = 0; i < 1000; ++i) {
      const std::string key = std::string(target) + "-" + std::to_string(i) + "-" + std::to_string(now);
      RouteRequest r;
      r.scenario = scenario;
      r.key = key;
      r.input_tokens = 1000;
      r.max_output_tokens = 100;
      r.now = now;
      auto e = router.explain(r);
      if (e && router.config()->targets[e->placement.target].name == target) return route(router, scenario, key, now);
    }
    ADD_FAILURE() << "no key routes " << scenario << " to " << target;
    return {};
  }
  static Result<ReportReceipt> report(Router& router, std::uint64_t id, std::string_view target, Status status,
                                      TimeMs now, std::optional<bool> accepted = std::nullopt) {
    auto usage = test::from_json(R"({"prompt_tokens": 1000, "completion_tokens": 100})");
    OutcomeReport o;
    o.decision_id = id;
    o.target = target;
    o.status = status;
    o.usage = &usage.get();
    o.now = now;
    o.accepted = accepted;
    return router.report(o);
  }
  static std::int64_t inflight(const Router& router, std::string_view target, std::string_view replica, TimeMs now) {
    const Config& c = *router.config();
    for (const BreakerRow& row : router.breakers(now)) {
      const Target& t = c.targets[row.target];
      if (t.name == target && (row.replica == kNone ? "" : t.replicas[row.replica].endpoint) == replica) {
        return row.inflight;
      }
    }
    ADD_FAILURE() << "no unit " << target << " " << replica;
    return -1;
  }
  static const LedgerEntry* row(const LiveState& s, std::string_view scenario, std::string_view target) {
    for (const LedgerEntry& e : s.ledger) {
      if (e.scenario == scenario && e.target == target) return &e;
    }
    return nullptr;
  }
  static const BreakerEntry* breaker(const LiveState& s, std::string_view target, std::string_view replica) {
    for (const BreakerEntry& e : s.breakers) {
      if (e.unit.target == target && e.unit.replica == replica) return &e;
    }
    return nullptr;
  }

  ConfigPtr a;
};

/// Fills `r` (on kTargets' names) with state of every kind. Returns the ids still holding a lease.
std::vector<std::uint64_t> fill(Router& r) {
  std::vector<std::uint64_t> leased;
  // Two failures on one pool replica open its breaker (consecutive_failures: 2). Requests one after
  // the other spread (recent load): 9001, 9002, 9001; 9002 keeps one failure and stays closed.
  for (int i = 0; i < 3; ++i) {
    RouteRequest q{.scenario = "chat", .key = "k", .input_tokens = 1000, .max_output_tokens = 100, .now = kT0};
    auto d = r.route(q);
    EXPECT_TRUE(d.ok());
    const Target& t = r.config()->targets[d->placement.target];
    OutcomeReport o{.decision_id = d->id, .target = t.name, .status = Status::error, .now = kT0 + 1};
    EXPECT_TRUE(r.report(o).ok());
  }
  // Leases on the pool (one replica is open: both land on the other) with budget reservations.
  for (int i = 0; i < 2; ++i) {
    RouteRequest q{.scenario = "chat", .key = "lease", .input_tokens = 1000, .max_output_tokens = 100, .now = kT0 + 2};
    auto d = r.route(q);
    EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
    if (d) leased.push_back(d->id);
  }
  return leased;
}

TEST_F(LiveStateTest, ExportImportRoundTripsExactlyOnTheSameTableAndAReorderedOne) {
  Router r(a);
  const auto leased = fill(r);
  ASSERT_EQ(leased.size(), 2U);
  // Answered decisions, one with its verdict; one on the canary left open; one on mini answered.
  const Decision canary = route_to(r, "rollout", "canary", kT0 + 3);
  const Decision answered = route_to(r, "rollout", "mini", kT0 + 3);
  ASSERT_TRUE(report(r, answered.id, "mini", Status::ok, kT0 + 4).ok());
  const Decision judged = route_to(r, "rollout", "mini", kT0 + 3);
  ASSERT_TRUE(report(r, judged.id, "mini", Status::ok, kT0 + 4, true).ok());

  const LiveState x = r.export_state();
  // The three failed ones (they may still be answered by a fallback), 2 leases on the pool, the
  // canary's, two answered.
  EXPECT_EQ(x.pending.size(), 8U);
  ASSERT_NE(breaker(x, "pool", "http://127.0.0.1:9001"), nullptr);
  ASSERT_FALSE(x.budgets.empty());
  EXPECT_GT(x.budgets[0].reserved.picos(), 0);

  Router same(a);
  const ImportReport rep = same.import_state(x);
  EXPECT_EQ(rep.pending, 8U);
  EXPECT_EQ(rep.leases_dropped + rep.breakers_dropped + rep.budgets_dropped + rep.pending_dropped, 0U);
  EXPECT_EQ(same.export_state(), x);
  for (const char* ep : {"http://127.0.0.1:9001", "http://127.0.0.1:9002"}) {
    EXPECT_EQ(inflight(same, "pool", ep, kT0 + 5), inflight(r, "pool", ep, kT0 + 5)) << ep;
  }
  EXPECT_EQ(inflight(same, "canary", "", kT0 + 5), 1);

  // Through a table with every name in another order and back: nothing changes.
  Router reordered(load_or_die(kReordered));
  EXPECT_EQ(reordered.import_state(x).leases_dropped, 0U);
  for (const char* ep : {"http://127.0.0.1:9001", "http://127.0.0.1:9002"}) {
    EXPECT_EQ(inflight(reordered, "pool", ep, kT0 + 5), inflight(r, "pool", ep, kT0 + 5)) << ep;
  }
  Router back(a);
  (void)back.import_state(reordered.export_state());
  EXPECT_EQ(back.export_state(), x);

  // Imported state is live: the leases' report frees the slots and counts once.
  ASSERT_TRUE(report(same, canary.id, "canary", Status::ok, kT0 + 6).ok());
  EXPECT_EQ(inflight(same, "canary", "", kT0 + 6), 0);
  EXPECT_TRUE(report(same, canary.id, "canary", Status::ok, kT0 + 6)->duplicate);
  EXPECT_TRUE(same.verdict(answered.id, true, kT0 + 7).ok());
  EXPECT_EQ(row(same.export_state(), "rollout", "mini")->counters.accepted, 2U);
}

TEST_F(LiveStateTest, AReloadThatRemovesTargetsKeepsRowsBudgetsBreakersAndInflight) {
  Router r(a);
  const auto leased = fill(r);
  const Decision canary = route_to(r, "rollout", "canary", kT0 + 3);
  const Decision answered = route_to(r, "rollout", "canary", kT0 + 3);
  ASSERT_TRUE(report(r, answered.id, "canary", Status::ok, kT0 + 4).ok());
  const LiveState x = r.export_state();
  const Counters canary_row = row(x, "rollout", "canary")->counters;
  ASSERT_EQ(canary_row.requests, 2U);

  Router ended(load_or_die(kCanaryEnded));
  const ImportReport rep = ended.import_state(x);
  // The canary's open lease is released (its unit is gone); the breaker of the removed replica too.
  EXPECT_EQ(rep.leases_dropped, 1U);
  EXPECT_EQ(rep.breakers_dropped, 2U);  // canary, pool's 9001
  EXPECT_EQ(rep.pending_dropped, 0U);
  const LiveState y = ended.export_state();
  // The canary's row is retired, not erased.
  ASSERT_NE(row(y, "rollout", "canary"), nullptr);
  EXPECT_EQ(row(y, "rollout", "canary")->counters, canary_row);
  ASSERT_EQ(ended.retired_counters().size(), 1U);
  EXPECT_EQ(ended.retired_counters()[0].counters, canary_row);
  // Budgets by scenario name, spend and reservations of the leases on the replica that stayed.
  ASSERT_EQ(y.budgets.size(), x.budgets.size());
  for (const BudgetEntry& b : x.budgets) {
    auto it = std::find_if(y.budgets.begin(), y.budgets.end(), [&](const auto& e) { return e.scenario == b.scenario; });
    ASSERT_NE(it, y.budgets.end());
    EXPECT_EQ(it->spent, b.spent);
    EXPECT_EQ(it->reserved, b.reserved) << b.scenario;  // both leases are on 9002, which stayed
  }
  // The breaker of the replica that stayed is carried; in-flight came back from the leases.
  EXPECT_EQ(*breaker(y, "pool", "http://127.0.0.1:9002"), *breaker(x, "pool", "http://127.0.0.1:9002"));
  EXPECT_EQ(inflight(ended, "pool", "http://127.0.0.1:9002", kT0 + 5), 2);
  // Its verdict still counts, into the retired row; a report to the fallback of the gone canary too.
  EXPECT_TRUE(ended.verdict(answered.id, true, kT0 + 6).ok());
  EXPECT_EQ(ended.retired_counters()[0].counters.accepted, 1U);
  ASSERT_TRUE(report(ended, canary.id, "mini", Status::ok, kT0 + 6, true).ok());
  EXPECT_EQ(row(ended.export_state(), "rollout", "mini")->counters.fallbacks, 1U);
  EXPECT_EQ(row(ended.export_state(), "rollout", "mini")->counters.accepted, 1U);
  // The new table's own state round-trips, retired rows included.
  const LiveState z = ended.export_state();
  Router again(load_or_die(kCanaryEnded));
  (void)again.import_state(z);
  EXPECT_EQ(again.export_state(), z);
  // And a table with the canary again takes its row back as a live one.
  Router restored(a);
  (void)restored.import_state(z);
  EXPECT_TRUE(restored.retired_counters().empty());
  EXPECT_EQ(row(restored.export_state(), "rollout", "canary")->counters.requests, 2U);
  (void)leased;
}

TEST_F(LiveStateTest, RowsWithHistoryStayListedWhenTheTableNoLongerRoutesThem) {
  Router r(load_or_die(kCanaryEnded));
  const Config& c = *r.config();
  Counters history;
  history.requests = 3;
  // rollout does not route to the pool in this table, yet the row's history is listed.
  ASSERT_TRUE(r.restore_counters({{c.find_scenario("rollout"), c.find_target("pool"), history}}).ok());
  bool listed = false;
  for (const CounterRow& row : r.counters()) {
    listed |= row.scenario == c.find_scenario("rollout") && row.target == c.find_target("pool");
  }
  EXPECT_TRUE(listed);
}

TEST_F(LiveStateTest, ALeaseEndsOnItsOwnAndALateReportStillCountsOnce) {
  Router r(a);
  std::vector<Decision> held;
  for (int i = 0; i < 4; ++i) held.push_back(route(r, "chat", "k" + std::to_string(i)));  // 2 replicas x 2
  EXPECT_FALSE(try_route(r, "chat", "more", kT0 + 1).ok());                               // saturated, no fallback
  // chat's lease is 60 s; its verdict window stays the hour of decision_ttl.
  EXPECT_FALSE(try_route(r, "chat", "more", kT0 + 59'999).ok());
  const Decision after = route(r, "chat", "more", kT0 + 60'000);
  EXPECT_EQ(inflight(r, "pool", "http://127.0.0.1:9001", kT0 + 60'000) +
                inflight(r, "pool", "http://127.0.0.1:9002", kT0 + 60'000),
            1);
  // The budget's reservations ended with the leases: only the new one is reserved.
  const auto budgets = r.budgets(kT0 + 60'000);
  ASSERT_EQ(budgets.size(), 1U);
  EXPECT_EQ(budgets[0].reserved, after.reserved_cost);

  // A late report counts its outcome exactly once, frees nothing more, and takes its verdict.
  const Counters before = r.counter(0, r.config()->find_target("pool"));
  auto late = report(r, held[0].id, "pool", Status::ok, kT0 + 100'000, true);
  ASSERT_TRUE(late.ok()) << late.error().message;
  EXPECT_FALSE(late->duplicate);
  EXPECT_TRUE(report(r, held[0].id, "pool", Status::ok, kT0 + 100'001)->duplicate);
  const Counters now = r.counter(0, r.config()->find_target("pool"));
  EXPECT_EQ(now.outcomes, before.outcomes + 1);
  EXPECT_EQ(now.accepted, before.accepted + 1);
  EXPECT_EQ(inflight(r, "pool", "http://127.0.0.1:9001", kT0 + 100'001) +
                inflight(r, "pool", "http://127.0.0.1:9002", kT0 + 100'001),
            1);
  // The lease is no longer the verdict window: past the hour the decision is gone.
  EXPECT_EQ(report(r, held[1].id, "pool", Status::ok, kT0 + 3'600'000).error().code, ErrorCode::unknown_decision);
}

TEST_F(LiveStateTest, TheLeaseDefaultsFromTheLatencySloAndTheKeyIsChecked) {
  Scenario s;
  EXPECT_EQ(inflight_lease_ms(s), kDefaultInflightLeaseMs);
  s.latency_p95_ms = 2'000;
  EXPECT_EQ(inflight_lease_ms(s), 30'000);
  s.latency_p95_ms = 20'000;
  EXPECT_EQ(inflight_lease_ms(s), 80'000);
  s.inflight_lease_ms = 5'000;
  EXPECT_EQ(inflight_lease_ms(s), 5'000);
  std::string bad = kTargets;
  bad.replace(bad.find("inflight_lease_ms: 60000"), 24, "inflight_lease_ms: 10");
  auto c = load_config_text(bad, "bad.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("inflight_lease_ms"), std::string::npos) << c.error().message;
}

TEST_F(LiveStateTest, AnsweredDecisionsKeepTheirVerdictWindowPastThePendingCap) {
  // 1,024 full pending decisions at most; 60,000 answered over a minute still take verdicts.
  Router r(a, {.max_pending = 1024});
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 60'000; ++i) {
    const TimeMs now = kT0 + i;
    RouteRequest q{.scenario = "rollout", .key = "k", .input_tokens = 10, .max_output_tokens = 10, .now = now};
    auto d = r.route(q);
    ASSERT_TRUE(d.ok());
    ASSERT_TRUE(report(r, d->id, r.config()->targets[d->placement.target].name, Status::ok, now).ok());
    ids.push_back(d->id);
  }
  EXPECT_EQ(r.pending_decisions(), 60'000U);
  EXPECT_TRUE(r.verdict(ids.front(), true, kT0 + 60'000).ok());
  EXPECT_TRUE(r.verdict(ids.front(), false, kT0 + 60'000).ok());  // idempotent: counted once
  EXPECT_TRUE(r.verdict(ids[30'000], false, kT0 + 60'000).ok());
  std::uint64_t accepted = 0;
  std::uint64_t rejected = 0;
  for (const CounterRow& row : r.counters()) {
    accepted += row.counters.accepted;
    rejected += row.counters.rejected;
  }
  EXPECT_EQ(accepted, 1U);
  EXPECT_EQ(rejected, 1U);
  EXPECT_TRUE(r.has_pending(ids.front()));

  // The settled store has its own cap: the oldest go first.
  Router capped(a, {.max_pending = 16, .max_settled = 100});
  std::vector<std::uint64_t> some;
  for (int i = 0; i < 200; ++i) {
    RouteRequest q{.scenario = "rollout", .key = "k", .input_tokens = 10, .max_output_tokens = 10, .now = kT0};
    auto d = capped.route(q);
    ASSERT_TRUE(d.ok());
    ASSERT_TRUE(report(capped, d->id, capped.config()->targets[d->placement.target].name, Status::ok, kT0).ok());
    some.push_back(d->id);
  }
  (void)capped.verdict(some.back(), true, kT0);  // expiry runs on each call
  EXPECT_LE(capped.pending_decisions(), 101U);
  EXPECT_EQ(capped.verdict(some.front(), true, kT0).error().code, ErrorCode::unknown_decision);
  EXPECT_TRUE(capped.verdict(some[150], true, kT0).ok());
}

TEST_F(LiveStateTest, AnAnsweredDecisionTakesNoOtherTargetsOutcome) {
  Router r(a);
  const Decision d = route_to(r, "rollout", "canary");
  ASSERT_TRUE(report(r, d.id, "canary", Status::ok, kT0).ok());
  EXPECT_TRUE(report(r, d.id, "canary", Status::ok, kT0)->duplicate);
  auto other = report(r, d.id, "mini", Status::ok, kT0);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, ErrorCode::target_not_allowed);
}

TEST_F(LiveStateTest, ReleaseRingEndsTheLeasesOfAReapedClientsDecisions) {
  constexpr std::uint32_t kRing = 7;
  const std::uint64_t first = protocol::kFastIdBit | (std::uint64_t{kRing} << 40) | 1U;
  Router sidecar(a);
  Router client(a, {.first_decision_id = first});
  std::vector<std::uint64_t> ids;
  std::vector<std::string> placed;
  for (int i = 0; i < 2; ++i) {
    const std::string key = "c" + std::to_string(i);
    RouteRequest q{.scenario = "rollout", .key = key, .now = kT0};
    auto d = detail::FastPathAccess::dispatch(client, q);
    ASSERT_TRUE(d.ok());
    ASSERT_EQ(protocol::ring_of(d->id), kRing);
    ids.push_back(d->id);
    placed.push_back(a->targets[d->placement.target].name);
    ASSERT_TRUE(detail::FastPathAccess::adopt(sidecar, *d).ok());
  }
  const Decision own = route(sidecar, "rollout", "own");
  const auto total = [&] { return inflight(sidecar, "mini", "", kT0) + inflight(sidecar, "canary", "", kT0); };
  EXPECT_EQ(total(), 3);
  EXPECT_EQ(detail::FastPathAccess::release_ring(sidecar, kRing + 1), 0U);
  EXPECT_EQ(detail::FastPathAccess::release_ring(sidecar, kRing), 2U);
  EXPECT_EQ(total(), 1);  // the sidecar's own decision keeps its lease
  EXPECT_EQ(detail::FastPathAccess::release_ring(sidecar, kRing), 0U);
  // The released decisions still take their report (once) and verdict.
  auto late = report(sidecar, ids[0], placed[0], Status::ok, kT0 + 1, true);
  ASSERT_TRUE(late.ok()) << late.error().message;
  EXPECT_FALSE(late->duplicate);
  EXPECT_TRUE(report(sidecar, ids[0], placed[0], Status::ok, kT0 + 1)->duplicate);
  EXPECT_EQ(total(), 1);
  const Counters counted = sidecar.counter(a->find_scenario("rollout"), a->find_target(placed[0]));
  EXPECT_EQ(counted.accepted, 1U);
  (void)own;
}

}  // namespace
}  // namespace turnout
