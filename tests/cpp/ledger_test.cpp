// The ledger's field list (ledger.hpp): every number of a row, set alone, is seen by equality, added,
// subtracted and taken as a delta, survives the shared-memory slot, and reaches the stats reply and
// /metrics. The walk over a row's numbers below is the test's own, so a field the list's operations
// skipped would show here.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdio>
#include <map>
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
  // 13 fields; 6 statuses and 6 token kinds are a column each, a histogram is 3.
  EXPECT_EQ(kCounterFields.size(), 13U);
  EXPECT_EQ(columns.size(), 7 + kStatusCount + kTokenKinds.size() + 2 + 2 * 3);
}

TEST(Ledger, EveryNumberRoundTripsThroughAddDeltaAndEquality) {
  const std::size_t n = number_count();
  // 7 counts, 6 statuses, 6 token kinds, 2 amounts, 2 histograms of 13 buckets + count + sum.
  ASSERT_EQ(n, 7 + kStatusCount + kTokenKinds.size() + 2 + 2 * (kLatencyBoundsMs.size() + 1 + 2));
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
