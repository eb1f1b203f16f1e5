// The ledger's field list (ledger.hpp): every number of a row, set alone, is seen by equality, added,
// subtracted and taken as a delta, survives the shared-memory slot, and reaches the stats reply and
// /metrics. The walk over a row's numbers below is the test's own, so a field the list's operations
// skipped would show here.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "sidecar/server.hpp"
#include "sidecar/shm.hpp"
#include "test_configs.hpp"
#include "turnout/client/counters.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/ledger.hpp"
#include "turnout/router.hpp"
#include "turnout/shm/segment.hpp"

namespace turnout {
namespace {

constexpr std::int64_t kNow = 1'767'225'600'000;

/// Sets number `index` of a row (counting every count, status, token kind, money amount, bucket,
/// histogram count and sum) to `value`; false when the row has fewer numbers.
bool set_number(Counters& row, std::size_t index, std::uint64_t value) {
  std::size_t i = 0;
  bool set = false;
  const auto number = [&](auto& n) {
    if (i++ != index) return;
    using T = std::remove_cvref_t<decltype(n)>;
    if constexpr (std::is_same_v<T, MoneyTotal>) {
      n = MoneyTotal{};
      n += Money::from_picos(static_cast<std::int64_t>(value) * 1'000'003);  // not a whole cent
    } else {
      n = static_cast<T>(value);
    }
    set = true;
  };
  visit_fields(
      [&](const CounterField&, auto& v) {
        using T = std::remove_cvref_t<decltype(v)>;
        if constexpr (std::is_same_v<T, Usage>) {
          for (const TokenKind& k : kTokenKinds) number(v.*k.tokens);
        } else if constexpr (std::is_same_v<T, Histogram>) {
          for (auto& b : v.buckets) number(b);
          number(v.count);
          number(v.sum_ms);
        } else if constexpr (std::is_same_v<T, StatusCounts>) {
          for (auto& s : v) number(s);
        } else {
          number(v);
        }
      },
      row);
  return set;
}

std::size_t number_count() {
  std::size_t n = 0;
  Counters row;
  while (set_number(row, n, 1)) ++n;
  return n;
}

TEST(Ledger, TheListNamesEveryFieldOnceWithHelp) {
  std::set<std::string_view> names;
  for (const CounterField& f : kCounterFields) {
    EXPECT_TRUE(names.insert(f.name).second) << f.name;
    EXPECT_FALSE(f.help.empty()) << f.name;
  }
  std::set<std::string> columns;
  visit_columns(Counters{}, [&](const CounterField& f, std::string_view column, const auto&) {
    EXPECT_TRUE(columns.insert(std::string(column)).second) << "column " << column << " of " << f.name << " twice";
  });
  // 17 fields; 6 statuses and 6 token kinds are a column each, a histogram is 3.
  EXPECT_EQ(kCounterFields.size(), 17U);
  EXPECT_EQ(columns.size(), 11 + kStatusCount + kTokenKinds.size() + 2 + 2 * 3);
  for (const DerivedColumn& d : kDerivedColumns) {
    EXPECT_FALSE(columns.contains(std::string(d.name))) << d.name << " is a counter's column too";
    EXPECT_FALSE(d.help.empty()) << d.name;
  }
}

TEST(Ledger, EveryNumberRoundTripsThroughAddDeltaAndEquality) {
  const std::size_t n = number_count();
  // 11 counts, 6 statuses, 6 token kinds, 2 amounts, 2 histograms of 13 buckets + count + sum.
  ASSERT_EQ(n, 11 + kStatusCount + kTokenKinds.size() + 2 + 2 * (kLatencyBoundsMs.size() + 1 + 2));
  for (std::size_t i = 0; i < n; ++i) {
    SCOPED_TRACE("number " + std::to_string(i));
    Counters x;
    ASSERT_TRUE(set_number(x, i, 7));
    EXPECT_FALSE(x == Counters{}) << "equality does not see it";

    Counters sum;
    add(sum, x);
    EXPECT_TRUE(sum == x) << "add loses it";
    add(sum, x);
    Counters twice;
    ASSERT_TRUE(set_number(twice, i, 14));
    EXPECT_TRUE(sum == twice) << "add does not sum it";
    EXPECT_TRUE(delta(sum, x) == x) << "delta loses it";
    subtract(sum, x);
    EXPECT_TRUE(sum == x) << "subtract loses it";
    subtract(sum, x);
    EXPECT_TRUE(sum == Counters{});

    // The reload carry-over: a row that gained x since a snapshot passes x on to another row.
    Counters other;
    ASSERT_TRUE(set_number(other, (i + 1) % n, 3));
    Counters expected = other;
    add(expected, x);
    Counters after = other;
    add(after, x);
    Counters carried = other;
    add(carried, delta(after, other));
    EXPECT_TRUE(carried == expected);
  }
}

TEST(Ledger, TokenKindsSumAndPrice) {
  Usage u;
  std::int64_t v = 1;
  for (const TokenKind& k : kTokenKinds) u.*k.tokens = v++;
  Usage sum;
  add_tokens(sum, u);
  add_tokens(sum, u);
  for (const TokenKind& k : kTokenKinds) EXPECT_EQ(sum.*k.tokens, 2 * (u.*k.tokens)) << k.column;
  EXPECT_EQ(u.input_tokens(),
            u.uncached_input_tokens + u.cache_read_tokens + u.cache_write_5m_tokens + u.cache_write_1h_tokens);
  for (const TokenKind& k : kTokenKinds) {
    EXPECT_TRUE(k.column.ends_with(TokenKind::kSuffix)) << k.column;
    EXPECT_EQ(k.rate == nullptr, k.part == TokenPart::informative) << k.column;
  }
  EXPECT_EQ(kTokenKinds[1].label(), "cache_read");
}

TEST(Ledger, ObserveTimesChecksEachReportedTimeAgainstItsBound) {
  const Objectives slo{.ttft_p95_ms = 800, .latency_p95_ms = 4000};
  Counters c;
  observe_times(c, slo, 800, 4000);              // at both bounds: within
  observe_times(c, slo, 801, 3999);              // ttft past, latency within
  observe_times(c, slo, -1, 4001);               // no ttft; latency past
  observe_times(c, slo, 10, -1);                 // ttft within; no latency
  observe_times(c, {.ttft_p95_ms = 800}, 5, 5);  // no latency bound: latency observed, not checked
  EXPECT_EQ(c.ttft.count, 4U);
  EXPECT_EQ(c.ttft_slo_checked, 4U);
  EXPECT_EQ(c.ttft_within_slo, 3U);  // 800, 10, 5
  EXPECT_EQ(c.latency.count, 4U);
  EXPECT_EQ(c.latency_slo_checked, 3U);
  EXPECT_EQ(c.latency_within_slo, 2U);  // 4000, 3999
  EXPECT_EQ(c.ttft.sum_ms, 800 + 801 + 10 + 5);
}

TEST(Ledger, DerivedColumnsJudgeARowByItsScenariosObjectives) {
  Counters c;
  c.ttft_slo_checked = 8;
  c.ttft_within_slo = 6;
  c.latency_slo_checked = 4;
  c.latency_within_slo = 4;
  c.accepted = 19;
  c.rejected = 1;
  const Objectives all{.ttft_p95_ms = 800, .latency_p95_ms = 4000, .min_accept_rate = 0.95};
  Derived d = derive(c, all);
  EXPECT_EQ(d.ttft_slo_attainment, 0.75);
  EXPECT_EQ(d.latency_slo_attainment, 1.0);
  EXPECT_EQ(d.accept_rate, 0.95);
  EXPECT_EQ(d.quality_gate_passed, true);  // 19 / 20 = 0.95: at the gate passes
  c.rejected = 2;
  EXPECT_EQ(derive(c, all).quality_gate_passed, false);  // 19 / 21

  // What the scenario does not set is undefined, whatever the counts.
  d = derive(c, Objectives{});
  EXPECT_FALSE(d.ttft_slo_attainment);
  EXPECT_FALSE(d.latency_slo_attainment);
  EXPECT_FALSE(d.quality_gate_passed);
  EXPECT_TRUE(d.accept_rate);  // a rate of the verdicts needs no gate
  // And so is a share of nothing.
  d = derive(Counters{}, all);
  EXPECT_FALSE(d.ttft_slo_attainment);
  EXPECT_FALSE(d.latency_slo_attainment);
  EXPECT_FALSE(d.accept_rate);
  EXPECT_FALSE(d.quality_gate_passed);

  // visit_derived names them in kDerivedColumns' order, the gate as text.
  std::vector<std::string> seen;
  visit_derived(c, all, [&](const DerivedColumn& column, const auto& value) {
    using T = std::remove_cvref_t<decltype(value)>;
    std::string text = std::string(column.name) + "=";
    if constexpr (std::is_same_v<T, std::optional<std::string_view>>) {
      EXPECT_EQ(column.kind, DerivedKind::gate);
      text += value ? std::string(*value) : "none";
    } else {
      EXPECT_EQ(column.kind, DerivedKind::share);
      text += value ? std::to_string(*value) : "none";
    }
    seen.push_back(text);
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"ttft_slo_attainment=0.750000", "latency_slo_attainment=1.000000",
                                            "accept_rate=0.904762", "quality_gate=fail"}));
}

TEST(Ledger, FingerprintIsTheSegmentsLayoutFingerprint) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(ledger_fingerprint()));
  EXPECT_TRUE(client::layout_fingerprint().starts_with(std::string("ledger ") + hex + " "))
      << client::layout_fingerprint();
}

class LedgerSidecarTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> n{0};
    name_ = "sy-ledger-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  }
  void TearDown() override {
    boost::interprocess::shared_memory_object::remove(name_.c_str());
    boost::interprocess::shared_memory_object::remove(client::rings_segment_name(name_).c_str());
    std::remove(shm::lock_path(name_).c_str());
  }
  std::string name_;
};

TEST_F(LedgerSidecarTest, EveryNumberSurvivesTheSharedMemorySlot) {
  const auto config = testing::load_or_die(testing::kBasicYaml);
  ASSERT_TRUE(config);
  auto opened = sidecar::Segment::open(name_, 4);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  sidecar::Segment& segment = *opened.value().segment;
  auto reader = client::SegmentReader::attach(name_);
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  const std::size_t n = number_count();
  for (std::size_t i = 0; i < n; ++i) {
    SCOPED_TRACE("number " + std::to_string(i));
    CounterRow row{0, 1, {}};
    ASSERT_TRUE(set_number(row.counters, i, 1000 + i));
    ASSERT_TRUE(segment.publish_all(*config, {row}).ok());
    auto rows = reader.value()->counters();
    ASSERT_TRUE(rows.ok()) << rows.error().message;
    ASSERT_EQ(rows.value().size(), 1U);
    EXPECT_TRUE(rows.value()[0].counters == row.counters);
  }
}

TEST_F(LedgerSidecarTest, TheScenariosObjectivesTravelWithItsSlot) {
  const auto config = testing::load_or_die(std::string(testing::kBasicYaml) + R"(  timed:
    data_class: public
    slo: {ttft_p95_ms: 700, latency_p95_ms: 3000}
    quality_gate: {min_accept_rate: 0.9}
    routes: [{target: mini}]
)");
  ASSERT_TRUE(config);
  auto opened = sidecar::Segment::open(name_, 4);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  const std::uint32_t timed = config->find_scenario("timed");
  const std::uint32_t secret = config->find_scenario("secret");
  CounterRow with{timed, config->find_target("mini"), {}};
  with.counters.ttft_slo_checked = 4;
  with.counters.ttft_within_slo = 3;
  CounterRow without{secret, config->find_target("pool"), {}};
  ASSERT_TRUE(opened.value().segment->publish_all(*config, {with, without}).ok());
  auto reader = client::SegmentReader::attach(name_);
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  auto rows = reader.value()->counters();
  ASSERT_TRUE(rows.ok()) << rows.error().message;
  ASSERT_EQ(rows.value().size(), 2U);
  EXPECT_EQ(rows.value()[0].objectives,
            (Objectives{.ttft_p95_ms = 700, .latency_p95_ms = 3000, .min_accept_rate = 0.9}));
  EXPECT_EQ(derive(rows.value()[0].counters, rows.value()[0].objectives).ttft_slo_attainment, 0.75);
  EXPECT_EQ(rows.value()[1].objectives, Objectives{});
}

TEST_F(LedgerSidecarTest, ASegmentWrittenBeforeTheSloCountersIsRefused) {
  // What the build before the SLO counters (four counts more in Counters, the objectives in a slot)
  // wrote in a segment's header.
  constexpr std::uint64_t kOldLedger = 0x9cfb79126009adcaULL;
  constexpr std::uint32_t kOldCounters = 448;
  constexpr std::uint32_t kOldPayload = 608;
  ASSERT_NE(ledger_fingerprint(), kOldLedger);
  ASSERT_NE(sizeof(Counters), kOldCounters);
  const auto config = testing::load_or_die(testing::kBasicYaml);
  ASSERT_TRUE(config);
  {
    auto opened = sidecar::Segment::open(name_, 4);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    CounterRow row{0, 1, {}};
    row.counters.requests = 5;
    ASSERT_TRUE(opened.value().segment->publish_all(*config, {row}).ok());
  }  // its sidecar is gone: the next one may take the segment over
  namespace bip = boost::interprocess;
  bip::shared_memory_object shm(bip::open_only, name_.c_str(), bip::read_write);
  bip::mapped_region region(shm, bip::read_write);
  auto& h = *static_cast<client::ShmHeader*>(region.get_address());
  char old[sizeof h.fingerprint];
  std::snprintf(old, sizeof old, "ledger %016llx %s", static_cast<unsigned long long>(kOldLedger),
                client::layout_fingerprint().c_str() + std::string_view("ledger 0123456789abcdef ").size());
  std::memcpy(h.fingerprint, old, sizeof old);
  // The same sizes with another field list: the fingerprint alone refuses it.
  auto reader = client::SegmentReader::attach(name_);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.error().code, ErrorCode::incompatible_layout);
  EXPECT_NE(reader.error().message.find("ledger 9cfb79126009adca"), std::string::npos) << reader.error().message;
  // As the old build wrote it: the sizes refuse it first.
  h.counters_size = kOldCounters;
  h.payload_size = kOldPayload;
  reader = client::SegmentReader::attach(name_);
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.error().code, ErrorCode::incompatible_layout);
  EXPECT_NE(reader.error().message.find("struct sizes differ"), std::string::npos) << reader.error().message;
  // A sidecar of this build does not read its counters: it rebuilds the segment.
  auto reopened = sidecar::Segment::open(name_, 4);
  ASSERT_TRUE(reopened.ok()) << reopened.error().message;
  EXPECT_TRUE(reopened.value().recovered.empty());
  EXPECT_NE(reopened.value().note.find("does not match this sidecar"), std::string::npos) << reopened.value().note;
}

/// The keys of the first counter row of a stats reply.
std::set<std::string> stats_columns(const std::string& reply) {
  const auto oh = msgpack::unpack(reply.data(), reply.size());
  std::set<std::string> keys;
  for (const auto& kv : oh.get().as<std::map<std::string, msgpack::object>>()) {
    if (kv.first != "counters") continue;
    const auto rows = kv.second.as<std::vector<std::map<std::string, msgpack::object>>>();
    if (rows.empty()) break;
    for (const auto& col : rows.front()) keys.insert(col.first);
  }
  return keys;
}

TEST_F(LedgerSidecarTest, EveryColumnIsInTheStatsReplyAndEveryFamilyOnMetrics) {
  auto started = sidecar::Server::start(std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml", name_);
  ASSERT_TRUE(started.ok()) << started.error().message;
  auto& server = *started.value().server;
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(3);
  pk.pack("v");
  pk.pack(1);
  pk.pack("id");
  pk.pack(1);
  pk.pack("op");
  pk.pack("stats");
  const auto keys = stats_columns(server.handle({buf.data(), buf.size()}, kNow));
  ASSERT_FALSE(keys.empty());
  visit_columns(Counters{}, [&](const CounterField& f, std::string_view column, const auto&) {
    EXPECT_TRUE(keys.contains(std::string(column))) << "stats lacks " << column << " of " << f.name;
  });
  for (const DerivedColumn& d : kDerivedColumns) {
    EXPECT_TRUE(keys.contains(std::string(d.name))) << "stats lacks the derived " << d.name;
  }

  const std::string text = server.metrics(kNow);
  std::size_t exported = 0;
  for (const CounterField& f : kCounterFields) {
    const auto families = metric_families(f);
    EXPECT_EQ(families.empty(), !f.exported) << f.name;
    for (const auto& family : families) {
      ++exported;
      EXPECT_NE(text.find("# TYPE " + family.name + " " + family.type + "\n"), std::string::npos) << family.name;
      EXPECT_NE(text.find("\n" + family.name), std::string::npos) << family.name << " has no sample";
    }
  }
  EXPECT_EQ(exported, kCounterFields.size() + 2 - 1);  // money twice, outcomes by status only
}

}  // namespace
}  // namespace turnout
