// The sidecar's durable state (sidecar/state_store.hpp): the journal's torn-record and epoch rules,
// the snapshot's encoding, and the state directory's owner and mode checks.

#include "sidecar/state_store.hpp"

#include "sidecar/server.hpp"
#include "turnout/protocol.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <xxhash.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace turnout::sidecar {
namespace {

namespace fs = std::filesystem;

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("turnout-state-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  std::unique_ptr<StateStore> open() {
    auto s = StateStore::open(root_.string(), "shm", 1U << 20);
    EXPECT_TRUE(s) << (s ? "" : s.error().message);
    return s ? std::move(s).value() : nullptr;
  }
  fs::path root_;
};

LiveState sample_state() {
  LiveState s;
  Counters c;
  c.requests = 7;
  c.outcomes = 5;
  c.by_status[1] = 2;
  c.tokens.output_tokens = 1234;
  c.cost += Money::from_picos(987'654'321);
  c.latency.observe(250);
  s.ledger.push_back({"chat", "gpt", c});
  s.ledger.push_back({"chat", "retired-canary", Counters{}});
  s.budgets.push_back({"chat", 20'000, Money::from_picos(5), Money::from_picos(6)});
  s.breakers.push_back({{"pool", "http://a:8000"}, Breaker::Phase::open, false, 1'700'000'000'000, 4, 2});
  PendingEntry p;
  p.id = (3ULL << 40) | 9;
  p.at = 1'700'000'000'123;
  p.scenario = "chat";
  p.placement = {"pool", "http://a:8000"};
  p.fallbacks = {{"gpt", ""}};
  p.reserved_cost = Money::from_picos(42);
  p.budget_day = 20'000;
  p.lease_open = true;
  p.lease_until = 1'700'000'060'000;
  p.active_blocks = 12;
  p.reported_targets = {"gpt"};
  s.pending.push_back(p);
  // A migration run with every field set, two transitions, and a cost in both arms.
  MigrationEntry m;
  m.scenario = "chat";
  MigrationRun& r = m.run;
  r.identity = 0x0123456789ABCDEFULL;
  r.phase = MigrationPhase::paused;
  r.step = 2;
  r.started_at = 1'700'000'000'000;
  r.step_started_at = 1'700'000'600'000;
  r.paused_at = 1'700'000'900'000;
  r.next_analysis_at = 1'700'000'960'000;
  r.step_outcomes = 37;
  r.baseline = {.outcomes = 900,
                .errors = 9,
                .ttft_checked = 880,
                .ttft_over = 30,
                .latency_checked = 870,
                .latency_over = 40,
                .verdicts = 300,
                .rejected = 12,
                .priced = 899,
                .cost = Money::from_picos(1'234'567'890),
                .cost_sq_usd = 0.000123};
  r.candidate = {.outcomes = 140,
                 .errors = 3,
                 .ttft_checked = 139,
                 .ttft_over = 5,
                 .latency_checked = 138,
                 .latency_over = 6,
                 .verdicts = 50,
                 .rejected = 4,
                 .priced = 140,
                 .cost = Money::from_picos(98'765),
                 .cost_sq_usd = 0.5};
  r.interval = {.outcomes = 11, .errors = 1, .over_p99 = 2};
  r.transitions.push_back(
      {1'700'000'000'000, MigrationPhase::pending, MigrationPhase::ramp, 0, TransitionCause::started, "", 0, 0});
  r.transitions.push_back({1'700'000'900'000, MigrationPhase::ramp, MigrationPhase::paused, 2, TransitionCause::no_data,
                           "37 of 200 candidate outcomes by the step's deadline", 137, 880});
  s.migrations.push_back(m);
  return s;
}

TEST_F(StateStoreTest, SnapshotRoundTripsEveryField) {
  Snapshot s{.epoch = 3,
             .generation = 17,
             .config_source = "/etc/r.yaml",
             .config_text = "a: 1\n",
             .previous_config_source = "/etc/old.yaml",
             .previous_config_text = "b: 2\n",
             .state = {}};
  s.state = sample_state();
  msgpack::sbuffer bytes;
  encode_snapshot(bytes, s);
  auto back = decode_snapshot(std::string_view(bytes.data(), bytes.size()));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back.value(), s);
}

/// A snapshot as the build before the SLO counters wrote it (version 1): one ledger row,
/// support-summarization x llama-70b, with the 13 fields that build had (2 ok outcomes, their TTFTs
/// 300 and 400 ms and latencies 2000 and 3000 ms, 1 accepted) and nothing else.
std::string snapshot_before_slo_counters(const std::string& config_source, const std::string& config_text) {
  msgpack::sbuffer out;
  msgpack::packer<msgpack::sbuffer> p(out);
  const auto histogram = [&p](std::uint64_t count, std::int64_t sum, std::size_t bucket_a, std::size_t bucket_b) {
    std::vector<std::uint64_t> buckets(kLatencyBoundsMs.size() + 1, 0);
    ++buckets[bucket_a];
    ++buckets[bucket_b];
    p.pack_array(3);
    p.pack(count);
    p.pack(sum);
    p.pack(buckets);
  };
  const auto zero_money = [&p] { p.pack(std::vector<std::uint64_t>{0, 0}); };
  p.pack_map(9);
  p.pack("v"), p.pack(1);
  p.pack("epoch"), p.pack(1);
  p.pack("generation"), p.pack(1);
  p.pack("config_source"), p.pack(config_source);
  p.pack("config_text"), p.pack(config_text);
  p.pack("previous_config_source"), p.pack("");
  p.pack("previous_config_text"), p.pack("");
  p.pack("settlements"), p.pack_array(0);
  p.pack("state"), p.pack_map(4);
  p.pack("ledger"), p.pack_array(1);
  p.pack_array(3), p.pack("support-summarization"), p.pack("llama-70b");
  p.pack_map(13);
  p.pack("requests"), p.pack(3);
  p.pack("spillovers"), p.pack(0);
  p.pack("outcomes"), p.pack(2);
  p.pack("fallbacks"), p.pack(0);
  p.pack("by_status"), p.pack(std::vector<std::uint64_t>{2, 0, 0, 0, 0, 0});
  p.pack("unpriced"), p.pack(2);
  p.pack("accepted"), p.pack(1);
  p.pack("rejected"), p.pack(0);
  p.pack("tokens"), p.pack(std::vector<std::int64_t>(6, 0));
  p.pack("cost"), zero_money();
  p.pack("accepted_cost"), zero_money();
  p.pack("ttft"), histogram(2, 700, 5, 5);      // 300 and 400 ms: both in the 500 ms bucket
  p.pack("latency"), histogram(2, 5000, 7, 8);  // 2000 (<= 2500) and 3000 (<= 5000) ms
  p.pack("budgets"), p.pack_array(0);
  p.pack("breakers"), p.pack_array(0);
  p.pack("pending"), p.pack_array(0);
  const std::uint64_t sum = XXH3_64bits(out.data(), out.size());
  out.write(reinterpret_cast<const char*>(&sum), sizeof sum);
  return {out.data(), out.size()};
}

TEST_F(StateStoreTest, ASnapshotWrittenBeforeTheSloCountersKeepsItsCountsAndStartsTheNewOnesAtZero) {
  auto back = decode_snapshot(snapshot_before_slo_counters("/etc/r.yaml", "a: 1\n"));
  ASSERT_TRUE(back) << back.error().message;
  ASSERT_EQ(back.value().state.ledger.size(), 1U);
  const Counters& c = back.value().state.ledger[0].counters;
  EXPECT_EQ(c.requests, 3U);
  EXPECT_EQ(c.outcomes, 2U);
  EXPECT_EQ(c.accepted, 1U);
  EXPECT_EQ(c.ttft.count, 2U);
  EXPECT_EQ(c.latency.sum_ms, 5000);
  // Its outcomes were never checked against an SLO: not counted as checked, nor as within.
  EXPECT_EQ(c.ttft_slo_checked + c.ttft_within_slo + c.latency_slo_checked + c.latency_within_slo, 0U);
}

TEST_F(StateStoreTest, ASnapshotWrittenBeforeMigrationsLoadsWithNone) {
  auto back = decode_snapshot(snapshot_before_slo_counters("/etc/r.yaml", "a: 1\n"));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_TRUE(back.value().state.migrations.empty());
  EXPECT_EQ(back.value().state.ledger.size(), 1U);
}

TEST_F(StateStoreTest, AMigrationPhaseOutOfRangeIsACorruptSnapshot) {
  // The run's phase is stored as its number: one the build does not know is refused, never cast.
  Snapshot s;
  s.state = sample_state();
  s.state.migrations[0].run.phase = static_cast<MigrationPhase>(kMigrationPhases.size());
  msgpack::sbuffer bytes;
  encode_snapshot(bytes, s);
  auto back = decode_snapshot(std::string_view(bytes.data(), bytes.size()));
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error().code, ErrorCode::invalid_argument);
}

TEST_F(StateStoreTest, CorruptOrTruncatedSnapshotIsAClearError) {
  Snapshot s;
  s.state = sample_state();
  msgpack::sbuffer bytes;
  encode_snapshot(bytes, s);
  std::string text(bytes.data(), bytes.size());
  text[text.size() / 2] ^= 0x5A;
  auto bad = decode_snapshot(text);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("checksum"), std::string::npos) << bad.error().message;
  auto short_one = decode_snapshot("abc");
  ASSERT_FALSE(short_one);
  EXPECT_NE(short_one.error().message.find("truncated"), std::string::npos);
}

TEST_F(StateStoreTest, JournalReplaysInOrderAndStopsAtATornRecord) {
  {
    auto store = open();
    ASSERT_TRUE(store);
    auto r = store->recover();
    ASSERT_TRUE(r);
    EXPECT_FALSE(r->snapshot);
    EXPECT_TRUE(r->records.empty());
    ASSERT_TRUE(store->journal(RecordKind::route, kNone, 100, "first"));
    ASSERT_TRUE(store->journal(RecordKind::request, 3, 200, "second"));
    ASSERT_TRUE(store->journal(RecordKind::reap, 3, 300, ""));
    ASSERT_TRUE(store->journal(RecordKind::request, kNone, 400, "fourth"));
  }
  {
    auto store = open();
    auto r = store->recover();
    ASSERT_TRUE(r);
    ASSERT_EQ(r->records.size(), 4U);
    EXPECT_EQ(r->records[0].bytes, "first");
    EXPECT_EQ(r->records[0].kind, RecordKind::route);
    EXPECT_EQ(r->records[1].ring, 3U);
    EXPECT_EQ(r->records[1].now, 200);
    EXPECT_EQ(r->records[2].kind, RecordKind::reap);
    EXPECT_EQ(r->records[3].bytes, "fourth");
  }
  // Tear the third record's bytes (a power cut mid-write): the first two replay, nothing after.
  {
    std::fstream f(root_ / "shm" / "journal", std::ios::in | std::ios::out | std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto at = all.find("fourth");
    ASSERT_NE(at, std::string::npos);
    f.seekp(static_cast<std::streamoff>(at));
    f.write("FOURTH", 6);
  }
  auto store = open();
  auto r = store->recover();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->records.size(), 3U);
  // The next record goes where the torn one was, and a restart reads it, not the torn one.
  ASSERT_TRUE(store->journal(RecordKind::request, kNone, 500, "fifth"));
  store.reset();
  store = open();
  r = store->recover();
  ASSERT_TRUE(r);
  ASSERT_EQ(r->records.size(), 4U);
  EXPECT_EQ(r->records[3].bytes, "fifth");
}

TEST_F(StateStoreTest, ASnapshotEndsTheEpochItHolds) {
  auto store = open();
  ASSERT_TRUE(store->recover());
  ASSERT_TRUE(store->journal(RecordKind::route, kNone, 1, "before"));
  store->set_generation(5);
  Snapshot s;
  s.config_text = "t";
  s.state = sample_state();
  ASSERT_TRUE(store->snapshot(s));
  ASSERT_TRUE(store->journal(RecordKind::route, kNone, 2, "after"));
  store.reset();
  store = open();
  auto r = store->recover();
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->snapshot);
  EXPECT_EQ(r->snapshot->state, sample_state());
  EXPECT_EQ(r->snapshot->epoch, 1U);
  EXPECT_EQ(r->generation, 5U);
  ASSERT_EQ(r->records.size(), 1U);  // "before" is in the snapshot: never applied twice
  EXPECT_EQ(r->records[0].bytes, "after");
}

TEST_F(StateStoreTest, ACrashBetweenRenameAndJournalResetAppliesNothingTwice) {
  // The snapshot of epoch 1 is on disk, the journal still holds epoch 0's records.
  auto store = open();
  ASSERT_TRUE(store->recover());
  ASSERT_TRUE(store->journal(RecordKind::route, kNone, 1, "in the snapshot"));
  Snapshot s;
  s.epoch = 1;
  msgpack::sbuffer bytes;
  encode_snapshot(bytes, s);
  store.reset();
  {
    std::ofstream f(root_ / "shm" / "snapshot", std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  fs::permissions(root_ / "shm" / "snapshot", fs::perms::owner_read | fs::perms::owner_write);
  store = open();
  auto r = store->recover();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->records.empty());
}

TEST_F(StateStoreTest, JournalFullRefusesTheAppend) {
  auto store = open();
  ASSERT_TRUE(store->recover());
  const std::string big(64 << 10, 'x');
  int appended = 0;
  while (store->journal(RecordKind::request, kNone, 1, big)) ++appended;
  EXPECT_GT(appended, 4);
  EXPECT_TRUE(store->snapshot_due());
  ASSERT_TRUE(store->snapshot(Snapshot{}));
  EXPECT_FALSE(store->snapshot_due());
  EXPECT_TRUE(store->journal(RecordKind::request, kNone, 1, big));
}

TEST_F(StateStoreTest, RefusesADirectoryOthersCanWrite) {
  fs::create_directories(root_ / "shm");
  ::chmod((root_ / "shm").c_str(), 0777);
  auto s = StateStore::open(root_.string(), "shm", 1U << 20);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("others could write"), std::string::npos) << s.error().message;
}

TEST_F(StateStoreTest, RefusesAFileOthersCanRead) {
  { ASSERT_TRUE(open()); }
  ::chmod((root_ / "shm" / "journal").c_str(), 0644);
  auto s = StateStore::open(root_.string(), "shm", 1U << 20);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("others could read"), std::string::npos) << s.error().message;
}

TEST_F(StateStoreTest, RefusesASymlinkedJournal) {
  fs::create_directories(root_ / "shm");
  ::chmod((root_ / "shm").c_str(), 0700);
  fs::create_symlink("/etc/passwd", root_ / "shm" / "journal");
  auto s = StateStore::open(root_.string(), "shm", 1U << 20);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("journal"), std::string::npos) << s.error().message;
}

TEST_F(StateStoreTest, RefusesAShmNameThatIsAPath) {
  auto s = StateStore::open(root_.string(), "../x", 1U << 20);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("cannot name a state directory"), std::string::npos);
}

TEST(DefaultStateDir, FollowsSystemdThenXdgThenHome) {
  const auto keep = [](const char* n) { return std::getenv(n) ? std::string(std::getenv(n)) : std::string(); };
  const std::string sd = keep("STATE_DIRECTORY"), xdg = keep("XDG_STATE_HOME"), home = keep("HOME");
  ::setenv("STATE_DIRECTORY", "/var/lib/turnout:/var/lib/other", 1);
  EXPECT_EQ(default_state_dir(), "/var/lib/turnout");
  ::unsetenv("STATE_DIRECTORY");
  ::setenv("XDG_STATE_HOME", "/x/state", 1);
  EXPECT_EQ(default_state_dir(), "/x/state/turnout");
  ::unsetenv("XDG_STATE_HOME");
  ::setenv("HOME", "/home/u", 1);
  EXPECT_EQ(default_state_dir(), "/home/u/.local/state/turnout");
  const auto restore = [](const char* n, const std::string& v) {
    v.empty() ? ::unsetenv(n) : ::setenv(n, v.c_str(), 1);
  };
  restore("STATE_DIRECTORY", sd);
  restore("XDG_STATE_HOME", xdg);
  restore("HOME", home);
}

}  // namespace
}  // namespace turnout::sidecar

// ------------------------------------------------------------------------ the Server over a state dir

namespace turnout::sidecar {
namespace {

const std::string kExample = std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml";

class DurableServerTest : public StateStoreTest {
 protected:
  void SetUp() override {
    StateStoreTest::SetUp();
    shm_ = "sy-durable-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
  }
  void TearDown() override {
    for (const auto& e : fs::directory_iterator("/dev/shm")) {
      if (e.path().filename().string().rfind(shm_, 0) == 0) fs::remove(e.path());
    }
    StateStoreTest::TearDown();
  }
  std::unique_ptr<Server> start(const std::string& config = kExample) {
    auto s = Server::start(config, shm_, root_.string());
    EXPECT_TRUE(s) << (s ? "" : s.error().message);
    return s ? std::move(s.value().server) : nullptr;
  }
  std::string shm_;
};

/// A request map {v: 1, id: 7, op, ...fields}.
template <class... KV>
std::string request(const char* op, const KV&... kv) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(3 + sizeof...(KV) / 2);
  pk.pack("v");
  pk.pack(1);
  pk.pack("id");
  pk.pack(7);
  pk.pack("op");
  pk.pack(op);
  (pk.pack(kv), ...);
  return {buf.data(), buf.size()};
}

/// The reply's map, and its error code ("" when ok).
std::pair<msgpack::object_handle, std::string> reply_of(const std::string& reply) {
  auto oh = msgpack::unpack(reply.data(), reply.size());
  std::string code;
  for (const auto& kv : std::span(oh.get().via.map.ptr, oh.get().via.map.size)) {
    if (kv.key.as<std::string>() != "error") continue;
    for (const auto& e : std::span(kv.val.via.map.ptr, kv.val.via.map.size)) {
      if (e.key.as<std::string>() == "code") code = e.val.as<std::string>();
    }
  }
  return {std::move(oh), code};
}

template <class T>
T field(const msgpack::object_handle& oh, const std::string& name) {
  for (const msgpack::object_kv& kv : std::span(oh.get().via.map.ptr, oh.get().via.map.size)) {
    if (kv.key.as<std::string>() == name) return kv.val.as<T>();
  }
  ADD_FAILURE() << "no field " << name;
  return T{};
}

constexpr std::int64_t kNow = 1'767'225'600'000;

/// The value of `column` in the stats reply's row of `scenario` x `target` (nil if there is none).
msgpack::object stats_cell(const msgpack::object_handle& stats, const std::string& scenario, const std::string& target,
                           const std::string& column) {
  for (const msgpack::object_kv& kv : std::span(stats.get().via.map.ptr, stats.get().via.map.size)) {
    if (kv.key.as<std::string>() != "counters") continue;
    for (const auto& row : std::span(kv.val.via.array.ptr, kv.val.via.array.size)) {
      const auto cells = row.as<std::map<std::string, msgpack::object>>();
      if (cells.at("scenario").as<std::string>() == scenario && cells.at("target").as<std::string>() == target) {
        return cells.at(column);
      }
    }
  }
  ADD_FAILURE() << "no row " << scenario << " x " << target;
  return {};
}

TEST_F(DurableServerTest, AStateWrittenBeforeTheSloCountersIsMigrated) {
  std::ifstream in(kExample);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(text.empty());
  fs::create_directories(root_ / shm_);
  fs::permissions(root_, fs::perms::owner_all, fs::perm_options::replace);
  fs::permissions(root_ / shm_, fs::perms::owner_all, fs::perm_options::replace);
  {
    std::ofstream out(root_ / shm_ / "snapshot", std::ios::binary);
    out << snapshot_before_slo_counters(kExample, text);
  }
  fs::permissions(root_ / shm_ / "snapshot", fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  auto s = start();
  ASSERT_TRUE(s);
  const std::string scenario = "support-summarization", target = "llama-70b";
  {
    auto [stats, code] = reply_of(s->handle(request("stats"), kNow));
    ASSERT_EQ(code, "");
    EXPECT_EQ(stats_cell(stats, scenario, target, "requests").as<std::uint64_t>(), 3U);  // the old counts stay
    EXPECT_EQ(stats_cell(stats, scenario, target, "ttft_count").as<std::uint64_t>(), 2U);
    EXPECT_EQ(stats_cell(stats, scenario, target, "ttft_slo_checked").as<std::uint64_t>(), 0U);
    // Nothing was checked against the SLO yet: no attainment (not 0 % of the two old outcomes).
    EXPECT_TRUE(stats_cell(stats, scenario, target, "ttft_slo_attainment").is_nil());
    EXPECT_TRUE(stats_cell(stats, scenario, target, "latency_slo_attainment").is_nil());
    EXPECT_EQ(stats_cell(stats, scenario, target, "accept_rate").as<double>(), 1.0);  // 1 accepted, 0 rejected
    EXPECT_EQ(stats_cell(stats, scenario, target, "quality_gate").as<std::string>(), "pass");
  }
  // From here on each outcome is checked against support-summarization's 800 ms / 4000 ms.
  for (int i = 0; i < 40; ++i) {
    auto [route, code] = reply_of(s->handle(
        request("route", "scenario", scenario, "key", "k" + std::to_string(i), "input_tokens", 100), kNow + i));
    ASSERT_EQ(code, "");
    if (field<std::string>(route, "target") != target) continue;
    auto [receipt, c2] =
        reply_of(s->handle(request("report", "decision_id", field<std::uint64_t>(route, "decision_id"), "target",
                                   target, "status", "ok", "ttft_ms", 900, "latency_ms", 1000),
                           kNow + i));
    ASSERT_EQ(c2, "");
  }
  auto [stats, code] = reply_of(s->handle(request("stats"), kNow + 100));
  ASSERT_EQ(code, "");
  const auto checked = stats_cell(stats, scenario, target, "ttft_slo_checked").as<std::uint64_t>();
  ASSERT_GT(checked, 0U);
  EXPECT_EQ(stats_cell(stats, scenario, target, "ttft_count").as<std::uint64_t>(), 2 + checked);
  EXPECT_EQ(stats_cell(stats, scenario, target, "ttft_slo_attainment").as<double>(), 0.0);  // 900 > 800
  EXPECT_EQ(stats_cell(stats, scenario, target, "latency_slo_attainment").as<double>(), 1.0);
}

TEST_F(DurableServerTest, APendingDecisionTakesItsReportAfterACrash) {
  std::uint64_t id = 0;
  std::string target;
  {
    auto s = start();
    ASSERT_TRUE(s);
    auto [route, code] =
        reply_of(s->handle(request("route", "scenario", "contract-extraction", "input_tokens", 100), kNow));
    ASSERT_EQ(code, "");
    id = field<std::uint64_t>(route, "decision_id");
    target = field<std::string>(route, "target");
    // Destroyed without flush(): no snapshot at stop, as after kill -9 (the journal is in the page cache).
  }
  auto s = start();
  ASSERT_TRUE(s);
  auto [receipt, code] =
      reply_of(s->handle(request("report", "decision_id", id, "target", target, "status", "error"), kNow + 1000));
  EXPECT_EQ(code, "");
  EXPECT_FALSE(field<bool>(receipt, "duplicate"));
  // Ids never repeat: the restarted sidecar's next decision is of a later generation.
  auto [next, c2] =
      reply_of(s->handle(request("route", "scenario", "contract-extraction", "input_tokens", 100), kNow + 2000));
  ASSERT_EQ(c2, "");
  EXPECT_GT(protocol::generation_of(field<std::uint64_t>(next, "decision_id")), protocol::generation_of(id));
}

TEST_F(DurableServerTest, ARingReportsOnlyItsOwnDecisions) {
  auto s = start();
  ASSERT_TRUE(s);
  auto [route, code] =
      reply_of(s->handle(request("route", "scenario", "contract-extraction", "input_tokens", 100), kNow));
  ASSERT_EQ(code, "");
  const auto id = field<std::uint64_t>(route, "decision_id");
  const auto target = field<std::string>(route, "target");
  const std::string report = request("report", "decision_id", id, "target", target, "status", "ok");
  // The socket's decision, reported through ring 3: refused.
  auto [refused, why] = reply_of(s->handle(report, kNow + 1, 3));
  EXPECT_EQ(why, "invalid_argument");
  const std::string verdict = request("verdict", "decision_id", id, "accepted", true);
  auto [refused_verdict, why_verdict] = reply_of(s->handle(verdict, kNow + 1, 3));
  EXPECT_EQ(why_verdict, "invalid_argument");
  // Through the socket: counted.
  auto [ok, none] = reply_of(s->handle(report, kNow + 2));
  EXPECT_EQ(none, "");
  EXPECT_FALSE(field<bool>(ok, "duplicate"));
}

/// A table whose scenario `chat` runs a canary from `old` to `new`, analysed every second.
constexpr const char* kCanaryYaml = R"(version: 1
targets:
  old:
    kind: maas
    provider: openai
    model: old
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
  new:
    kind: maas
    provider: openai
    model: new
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
scenarios:
  chat:
    data_class: public
    fallback: [old]
    migration:
      baseline: old
      candidate: new
      stage: canary
      steps: [50, 100]
      min_samples: 1000
      max_step_s: 600
      interval_s: 1
      incident_owner: chat-oncall
)";

/// The status of every migration, in a comparable form (MigrationStatus's run has ==).
std::vector<std::tuple<std::uint32_t, MigrationRun, std::uint32_t, TimeMs>> runs(const Server& s) {
  std::vector<std::tuple<std::uint32_t, MigrationRun, std::uint32_t, TimeMs>> out;
  for (const auto& m : s.router()->migrations())
    out.emplace_back(m.scenario, m.run, m.candidate_percent, m.deadline_at);
  return out;
}

TEST_F(DurableServerTest, MigrationTicksAndCommandsAreReplayedAtTheirRecordedTimes) {
  const std::string path = (root_ / "canary.yaml").string();
  fs::create_directories(root_);
  std::ofstream(path) << kCanaryYaml;
  std::vector<std::string> lines;
  decltype(runs(std::declval<Server&>())) before;
  {
    auto s = start(path);
    ASSERT_TRUE(s);
    s->on_migration([&lines](const std::string& line) { lines.push_back(line); });
    s->migration_tick(kNow);  // starts the canary: ramp, step 0
    ASSERT_EQ(lines.size(), 1U);
    EXPECT_EQ(lines[0].rfind("migration chat: pending -> ramp, step 1/2, candidate 50 %, cause started", 0), 0U)
        << lines[0];
    for (int i = 0; i < 40; ++i) {
      const TimeMs at = kNow + 10 * i;
      auto [route, code] =
          reply_of(s->handle(request("route", "scenario", "chat", "key", "k" + std::to_string(i)), at));
      ASSERT_EQ(code, "");
      const auto target = field<std::string>(route, "target");
      auto [receipt, rc] =
          reply_of(s->handle(request("report", "decision_id", field<std::uint64_t>(route, "decision_id"), "target",
                                     target, "status", "ok"),
                             at + 5));
      ASSERT_EQ(rc, "");
    }
    s->migration_tick(kNow + 1000);  // an analysis: no regression, too few samples: still ramping
    EXPECT_EQ(reply_of(s->handle(request("migration", "scenario", "chat", "action", "pause"), kNow + 1500)).second, "");
    s->migration_tick(kNow + 2000);  // analyses go on while paused
    before = runs(*s);
    ASSERT_EQ(before.size(), 1U);
    const MigrationRun& run = std::get<1>(before[0]);
    EXPECT_EQ(run.phase, MigrationPhase::paused);
    EXPECT_EQ(run.transitions.size(), 2U);
    EXPECT_EQ(run.baseline.outcomes + run.candidate.outcomes, 40U);
    EXPECT_EQ(lines.size(), 2U);
    // Destroyed without flush(): no snapshot at stop, as after kill -9.
  }
  auto s = start(path);
  ASSERT_TRUE(s);
  EXPECT_EQ(runs(*s), before);
}

TEST_F(DurableServerTest, MigrationCommandsNeedATrustedEndpoint) {
  const std::string path = (root_ / "canary.yaml").string();
  fs::create_directories(root_);
  std::ofstream(path) << kCanaryYaml;
  auto s = start(path);
  ASSERT_TRUE(s);
  s->migration_tick(kNow);
  const auto pause = request("migration", "scenario", "chat", "action", "pause");
  s->set_trusted(false);  // loopback TCP without CURVE, read-write
  EXPECT_EQ(reply_of(s->handle(pause, kNow + 10)).second, "permission_denied");
  s->set_trusted(true);
  s->set_read_only(true);  // --insecure-tcp read-only
  EXPECT_EQ(reply_of(s->handle(pause, kNow + 10)).second, "permission_denied");
  EXPECT_EQ(reply_of(s->handle(request("migration", "scenario", "chat"), kNow + 10)).second, "") << "status reads";
  s->set_read_only(false);
  EXPECT_EQ(std::get<1>(runs(*s)[0]).phase, MigrationPhase::ramp) << "nothing moved";
  EXPECT_EQ(reply_of(s->handle(pause, kNow + 10)).second, "");
  EXPECT_EQ(std::get<1>(runs(*s)[0]).phase, MigrationPhase::paused);
  EXPECT_EQ(reply_of(s->handle(request("migration", "scenario", "nope", "action", "abort"), kNow)).second,
            "unknown_scenario");
  EXPECT_EQ(reply_of(s->handle(request("migration", "scenario", "chat", "action", "resume!"), kNow)).second,
            "bad_message");
}

}  // namespace
}  // namespace turnout::sidecar
