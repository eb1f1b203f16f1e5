// The shared-memory fast path without sockets: a Server publishes its table, live state and
// directories; a FastClient in the same process decides from the mapping and posts to its ring; the
// Server drains the ring. The decisions must be the ones the sidecar itself would make.

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "sidecar/fastpath.hpp"
#include "sidecar/server.hpp"
#include "turnout/client/counters.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/shm/segment.hpp"

namespace turnout::sidecar {

using client::FastClient;
using client::kFastIdBit;
using client::kRingShift;
using client::rings_segment_name;
using client::table_segment_name;
using shm::lock_path;
namespace {

constexpr std::int64_t kNow = 1'767'225'600'000;

constexpr const char* kTable = R"(version: 1
targets:
  pool:
    kind: self_hosted
    engine: vllm
    model: m
    data_classes: [public]
    context_window: 100000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}
    kv: {block_size: 16, capacity_blocks: 4000}
    breaker: {consecutive_failures: 2, cooldown_s: 60}
    replicas:
      - {endpoint: "http://127.0.0.1:8001", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8002", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8003", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8004", max_inflight: 64}
  api:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
    cache: {ttl_s: 600, min_prefix_tokens: 256}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 64
    routes: [{target: pool, weight: 80}, {target: api, weight: 20}]
    fallback: [api]
    affinity: {prefix: true}
    budget: {usd_per_day: 100}
)";

class FastPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> n{0};
    name_ = "sy-fp-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
    path_ = ::testing::TempDir() + name_ + ".yaml";
    write(kTable);
  }
  void TearDown() override {
    namespace bip = boost::interprocess;
    bip::shared_memory_object::remove(name_.c_str());
    bip::shared_memory_object::remove(rings_segment_name(name_).c_str());
    for (int g = 0; g < 64; ++g) bip::shared_memory_object::remove(table_segment_name(name_, g).c_str());
    std::remove(lock_path(name_).c_str());
    std::remove(path_.c_str());
  }
  void write(const std::string& text) const { std::ofstream(path_) << text; }
  std::unique_ptr<Server> start() {
    auto s = Server::start(path_, name_);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return std::move(s.value().server);
  }
  static std::unique_ptr<FastClient> attach(const std::string& name) {
    auto f = FastClient::attach(name);
    EXPECT_TRUE(f.ok()) << (f.ok() ? "" : f.error().message);
    return f.ok() ? std::move(f).value() : nullptr;
  }

  std::string name_;
  std::string path_;
};

// A multi-turn prompt: one of `families` system prompts, then `turns` of its own.
std::vector<std::uint32_t> prompt(std::uint32_t family, std::uint32_t conversation, int turns) {
  std::vector<std::uint32_t> t;
  for (std::uint32_t i = 0; i < 640; ++i) t.push_back(family * 100'000 + i);
  for (int k = 0; k < turns; ++k) {
    for (std::uint32_t i = 0; i < 48; ++i)
      t.push_back(7'000'000 + conversation * 1000 + static_cast<std::uint32_t>(k) * 48 + i);
  }
  return t;
}

RouteRequest request(const std::vector<std::uint32_t>& tokens, std::int64_t now) {
  RouteRequest r;
  r.scenario = "chat";
  r.token_ids = tokens;
  r.input_tokens = static_cast<std::int64_t>(tokens.size());
  r.now = now;
  return r;
}

std::string report_msg(std::uint64_t id, const std::string& target, const std::string& status) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(6);
  pk.pack("v");
  pk.pack(1);
  pk.pack("op");
  pk.pack("report");
  pk.pack("decision_id");
  pk.pack(id);
  pk.pack("target");
  pk.pack(target);
  pk.pack("status");
  pk.pack(status);
  pk.pack("now");
  pk.pack(static_cast<double>(kNow) / 1000.0 + 1);
  return {buf.data(), buf.size()};
}

std::string route_request_msg() {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(3);
  pk.pack("v");
  pk.pack(1);
  pk.pack("op");
  pk.pack("route");
  pk.pack("scenario");
  pk.pack("chat");
  return {buf.data(), buf.size()};
}

std::uint64_t requests_of(const Router& r, const std::string& target) {
  std::uint64_t n = 0;
  const Config& c = *r.config();
  for (const auto& row : r.counters()) {
    if (c.targets[row.target].name == target) n += row.counters.requests;
  }
  return n;
}

TEST_F(FastPathTest, DecisionsMatchTheSidecarsOwnAndAreCountedOnceDrained) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  std::mt19937 rng(7);
  int compared = 0;
  int warm = 0;
  for (int i = 0; i < 400; ++i) {
    const auto tokens = prompt(static_cast<std::uint32_t>(rng() % 12), static_cast<std::uint32_t>(rng() % 40),
                               1 + static_cast<int>(rng() % 4));
    const auto now = kNow + i;
    // What the sidecar would decide now (same table, same state), then the fast path's decision.
    auto expected = server->router()->explain(request(tokens, now));
    auto got = fast->route(request(tokens, now));
    ASSERT_TRUE(expected.ok() && got.ok()) << (got.ok() ? "" : got.error().message);
    EXPECT_EQ(got->placement.target, expected->placement.target) << "request " << i;
    EXPECT_EQ(got->placement.replica, expected->placement.replica) << "request " << i;
    EXPECT_EQ(got->expected_cached_tokens, expected->expected_cached_tokens) << "request " << i;
    EXPECT_EQ(got->predicted_cost, expected->predicted_cost) << "request " << i;
    EXPECT_NE(got->id & kFastIdBit, 0U);
    EXPECT_EQ(got->config_version, server->router()->config()->content_hash);
    ++compared;
    if (got->expected_cached_tokens > 0) ++warm;
    EXPECT_EQ(server->drain_rings(now), 1U);
  }
  EXPECT_EQ(compared, 400);
  EXPECT_GT(warm, 200) << "the sidecar's directory, learned from the fast path's decisions, is seen by it";
  EXPECT_EQ(requests_of(*server->router(), "pool") + requests_of(*server->router(), "api"), 400U);
  EXPECT_EQ(server->router()->pending_decisions(), 400U);
}

TEST_F(FastPathTest, ReportsThroughTheRingSettleTheSidecarsLedgerAndOpenItsBreakers) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  // Fail the replica that prompt family 1 lands on twice: the breaker opens in the sidecar, the
  // mirror carries it to the client, and the client stops choosing that replica.
  const auto tokens = prompt(1, 1, 1);
  auto first = fast->route(request(tokens, kNow));
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(server->router()->config()->targets[first->placement.target].name, "pool");
  const auto replica = first->placement.replica;
  ASSERT_TRUE(fast->post(report_msg(first->id, "pool", "error")));
  EXPECT_EQ(server->drain_rings(kNow + 1), 2U);
  auto second = fast->route(request(tokens, kNow + 1));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->placement.replica, replica) << "the warm replica, idle again once the report drained";
  ASSERT_TRUE(fast->post(report_msg(second->id, "pool", "timeout")));
  EXPECT_EQ(server->drain_rings(kNow + 2), 2U);
  const auto breakers = server->router()->breakers(kNow + 2);
  EXPECT_EQ(breakers[replica].phase, Breaker::Phase::open);
  std::uint64_t outcomes = 0;
  for (const auto& row : server->router()->counters()) outcomes += row.counters.outcomes;
  EXPECT_EQ(outcomes, 2U);

  auto third = fast->route(request(tokens, kNow + 3));
  ASSERT_TRUE(third.ok());
  EXPECT_FALSE(third->placement.target == first->placement.target && third->placement.replica == replica)
      << "the client saw the open breaker through shared memory";
  // A report the sidecar cannot apply is an error counted by the sidecar, not a crash.
  ASSERT_TRUE(fast->post(report_msg(third->id, "no-such-target", "ok")));
  ASSERT_TRUE(fast->post("\x81\xa2op"));  // truncated msgpack
  EXPECT_EQ(server->fast_path().rejected, 0U);
  EXPECT_EQ(server->drain_rings(kNow + 4), 3U);
  EXPECT_EQ(server->fast_path().rejected, 2U);
  EXPECT_EQ(server->fast_path().records, 7U);
  EXPECT_TRUE(server->router()->has_pending(third->id));
  // The client learns which of its records were refused, and that all were settled.
  const auto feedback = fast->feedback();
  EXPECT_EQ(feedback.posted, 7U);
  EXPECT_EQ(feedback.settled, 7U);
  ASSERT_EQ(feedback.rejected.size(), 2U);
  EXPECT_EQ(feedback.rejected[0].record, 6U);
  EXPECT_EQ(feedback.rejected[0].decision_id, third->id);
  EXPECT_EQ(feedback.rejected[0].op, protocol::Op::report);
  EXPECT_EQ(feedback.rejected[0].code, ErrorCode::unknown_target);
  EXPECT_EQ(feedback.rejected[1].record, 7U);
  EXPECT_FALSE(feedback.rejected[1].op.has_value()) << "not a request: no op";
  EXPECT_EQ(feedback.rejected[1].code, ErrorCode::bad_message);
  EXPECT_TRUE(fast->feedback().rejected.empty()) << "each refusal is read once";
}

TEST_F(FastPathTest, AReloadIsPickedUpWithoutARoundTripAndOldDecisionsStillReport) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  const auto before = server->router()->config()->content_hash;
  auto d = fast->route(request(prompt(2, 2, 1), kNow));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(server->drain_rings(kNow), 1U);
  std::string text = kTable;
  text.replace(text.find("weight: 80"), 10, "weight: 0");
  text.replace(text.find("weight: 20"), 10, "weight: 100");
  write(text);
  ASSERT_TRUE(server->reload("test", kNow).ok());
  const auto after = server->router()->config()->content_hash;
  ASSERT_NE(before, after);
  auto e = fast->route(request(prompt(2, 2, 1), kNow + 1));
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e->config_version, after);
  EXPECT_EQ(server->router()->config()->targets[e->placement.target].name, "api");
  // The decision made from the old table reports to it; the new ledger gains the outcome.
  ASSERT_TRUE(fast->post(report_msg(d->id, "pool", "ok")));
  EXPECT_EQ(server->drain_rings(kNow + 2), 2U);
  EXPECT_EQ(server->fast_path().rejected, 0U) << "the old table's decision and its report were both applied";
  std::uint64_t outcomes = 0;
  for (const auto& row : server->router()->counters()) outcomes += row.counters.outcomes;
  EXPECT_EQ(outcomes, 1U);
}

TEST_F(FastPathTest, AReloadOfTheSameBytesKeepsTheTable) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  auto d = fast->route(request(prompt(4, 4, 1), kNow));
  ASSERT_TRUE(d.ok());
  const auto generation = server->generation();
  ASSERT_TRUE(server->reload("test", kNow).ok());  // e.g. a file watch and a reload op racing on one save
  ASSERT_TRUE(server->reload("test", kNow).ok());
  EXPECT_EQ(server->generation(), generation);
  ASSERT_TRUE(fast->post(report_msg(d->id, server->router()->config()->targets[d->placement.target].name, "ok")));
  EXPECT_EQ(server->drain_rings(kNow + 1), 2U);
  EXPECT_EQ(server->fast_path().rejected, 0U);
}

TEST_F(FastPathTest, AReloadThatGrowsTheCounterSegmentIsFollowed) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  ASSERT_TRUE(fast->route(request(prompt(5, 5, 1), kNow)).ok());
  std::string text = kTable;
  for (int i = 0; i < 80; ++i) {  // 80 more ledger rows: more than the segment has slots
    text += "  extra-" + std::to_string(i) + ":\n    data_class: public\n    routes: [{target: api}]\n";
  }
  write(text);
  ASSERT_TRUE(server->reload("test", kNow).ok());
  auto d = fast->route(request(prompt(5, 5, 1), kNow + 1));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->config_version, server->router()->config()->content_hash);
  EXPECT_EQ(fast->generation(), server->generation());
  EXPECT_EQ(server->drain_rings(kNow + 2), 2U);
  EXPECT_EQ(server->fast_path().rejected, 0U);
}

// A reload whose bigger counter segment cannot be made (here a directory squats on the name it is
// created under) changes nothing: the old table, segment, rows and generation serve on, the failure
// is recorded, and the next reload that can grow the segment does.
TEST_F(FastPathTest, AReloadThatCannotGrowTheCounterSegmentChangesNothing) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  auto d = fast->route(request(prompt(5, 5, 1), kNow));
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(server->drain_rings(kNow), 1U);
  const auto generation = server->generation();
  const auto version = server->router()->config()->content_hash;
  auto reader = client::SegmentReader::attach(name_);
  ASSERT_TRUE(reader.ok());
  const auto before = reader.value()->counters();
  ASSERT_TRUE(before.ok());
  const std::string squat = "/dev/shm/" + name_ + ".next";
  ASSERT_EQ(::mkdir(squat.c_str(), 0700), 0);
  std::string text = kTable;
  for (int i = 0; i < 80; ++i) {
    text += "  extra-" + std::to_string(i) + ":\n    data_class: public\n    routes: [{target: api}]\n";
  }
  write(text);
  const auto failed = server->reload("test", kNow + 1);
  ::rmdir(squat.c_str());
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.error().message.find("cannot grow the counter segment"), std::string::npos)
      << failed.error().message;
  EXPECT_EQ(server->generation(), generation);
  EXPECT_EQ(server->router()->config()->content_hash, version);
  const auto status = server->last_reload();
  EXPECT_FALSE(status.ok);
  EXPECT_EQ(status.at, kNow + 1);
  EXPECT_EQ(status.failures, 1U);
  EXPECT_EQ(status.message, failed.error().message);
  // The segment is the old one, whole: the same rows, its generation, not retired.
  const auto after = reader.value()->counters();
  ASSERT_TRUE(after.ok()) << after.error().message;
  ASSERT_EQ(after->size(), before->size());
  for (std::size_t i = 0; i < after->size(); ++i) EXPECT_TRUE((*after)[i].counters == (*before)[i].counters);
  EXPECT_EQ(reader.value()->header().generation, generation);
  // The old table still decides, for the socket and the fast path, and its decisions report.
  auto e = fast->route(request(prompt(5, 5, 1), kNow + 2));
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e->config_version, version);
  ASSERT_TRUE(fast->post(report_msg(d->id, server->router()->config()->targets[d->placement.target].name, "ok")));
  EXPECT_EQ(server->drain_rings(kNow + 3), 2U);
  EXPECT_EQ(server->fast_path().rejected, 0U);
  // With room again the same table loads, and the segment grows.
  ASSERT_TRUE(server->reload("test", kNow + 4).ok());
  EXPECT_TRUE(server->last_reload().ok);
  EXPECT_EQ(server->last_reload().failures, 1U);
  EXPECT_EQ(server->generation(), generation + 1);
  const auto grown = reader.value()->counters();
  ASSERT_TRUE(grown.ok()) << grown.error().message;
  EXPECT_EQ(grown->size(), server->router()->counters().size());
  EXPECT_EQ(reader.value()->header().generation, generation + 1);
}

TEST_F(FastPathTest, RingRecordsAreCheckedAgainstTheirRing) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  auto d = fast->route(request(prompt(6, 6, 1), kNow));
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(server->drain_rings(kNow), 1U);
  // The same adopt under an id of another ring, and of the sidecar's own id space.
  auto adopt = [&](std::uint64_t id) {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk(buf);
    pk.pack_map(7);
    for (const auto& [k, v] : {std::pair<const char*, std::uint64_t>{"v", 1},
                               {"decision_id", id},
                               {"config_version", d->config_version},
                               {"scenario", 0},
                               {"target", 1},
                               {"replica", kNone}}) {
      pk.pack(k);
      pk.pack(v);
    }
    pk.pack("op");
    pk.pack("adopt");
    return std::string(buf.data(), buf.size());
  };
  const std::uint64_t other_ring = kFastIdBit | (std::uint64_t{fast->ring() + 1} << kRingShift) | 7U;
  const std::uint64_t socket_id = (server->generation() << kGenerationShift) | 1U;
  const std::uint64_t own = kFastIdBit | (std::uint64_t{fast->ring()} << kRingShift) | 900U;
  ASSERT_TRUE(fast->post(adopt(other_ring)));
  ASSERT_TRUE(fast->post(adopt(socket_id)));
  ASSERT_TRUE(fast->post(adopt(own)));
  EXPECT_FALSE(fast->post("")) << "an empty record would read as a corrupt ring";
  ASSERT_TRUE(fast->post(route_request_msg()));  // only adopt, report and verdict ride a ring
  EXPECT_EQ(server->drain_rings(kNow + 1), 4U);
  EXPECT_EQ(server->fast_path().rejected, 3U);
  EXPECT_FALSE(server->router()->has_pending(other_ring));
  EXPECT_FALSE(server->router()->has_pending(socket_id));
  EXPECT_TRUE(server->router()->has_pending(own));
  // Through the socket an adopt is refused whatever its id.
  EXPECT_NE(server->handle(adopt(own + 1), kNow + 2).find("adopt comes only through"), std::string::npos);
}

TEST_F(FastPathTest, TablesOfDeadGenerationsAreRemovedAtStart) {
  const std::string stale = "/dev/shm/" + table_segment_name(name_, 41);
  std::ofstream(stale) << "left by a sidecar that died";
  auto server = start();
  struct stat st {};
  EXPECT_NE(::stat(stale.c_str(), &st), 0);
  EXPECT_EQ(::stat(("/dev/shm/" + table_segment_name(name_, server->generation())).c_str(), &st), 0);
}

TEST_F(FastPathTest, AStoppedSidecarsTableKeepsDecidingAndTheNextSidecarTakesOver) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  ASSERT_TRUE(fast->route(request(prompt(7, 7, 1), kNow)).ok());
  server.reset();  // a clean stop retires its table
  ASSERT_TRUE(fast->route(request(prompt(7, 7, 1), kNow + 1)).ok());
  EXPECT_EQ(fast->generation(), 1U);
  auto next = start();
  std::this_thread::sleep_for(std::chrono::milliseconds(150));  // the client looks again every 100 ms
  auto d = fast->route(request(prompt(7, 7, 1), kNow + 2));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(fast->generation(), next->generation());
  // What was posted while no sidecar drained is applied by the next one.
  EXPECT_EQ(next->drain_rings(kNow + 3), 3U);
  EXPECT_EQ(next->fast_path().rejected, 0U);
  EXPECT_EQ(requests_of(*next->router(), "pool") + requests_of(*next->router(), "api"), 3U);
}

TEST_F(FastPathTest, AFullRingIsRefusedSoTheCallerCanUseTheSocket) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  int posted = 0;
  Result<Decision> last = make_error(ErrorCode::invalid_argument, "none");
  for (int i = 0; i < 100'000; ++i) {
    last = fast->route(request(prompt(3, static_cast<std::uint32_t>(i), 3), kNow + i));
    if (!last.ok()) break;
    ++posted;
  }
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.error().code, ErrorCode::unavailable);
  EXPECT_GT(posted, 50);
  // Draining frees the ring: routes are accepted again, and every posted one was counted.
  EXPECT_EQ(server->drain_rings(kNow), static_cast<std::size_t>(posted));
  EXPECT_TRUE(fast->route(request(prompt(3, 1, 1), kNow + 1)).ok());
  EXPECT_EQ(requests_of(*server->router(), "pool") + requests_of(*server->router(), "api"),
            static_cast<std::uint64_t>(posted));
}

TEST_F(FastPathTest, AHugePromptIsPostedAndLearnedUpToCapacity) {
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  std::vector<std::uint32_t> tokens(90'000);  // 5,625 blocks of 16: more than a record carries
  for (std::uint32_t i = 0; i < tokens.size(); ++i) tokens[i] = i;
  auto d = fast->route(request(tokens, kNow));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(server->drain_rings(kNow), 1U);
  EXPECT_EQ(server->fast_path().rejected, 0U);
  if (server->router()->config()->targets[d->placement.target].name == "pool") {
    auto again = server->router()->explain(request(tokens, kNow + 1));
    ASSERT_TRUE(again.ok());
    // Learned as far as a replica holds: its capacity, 4,000 blocks (below the 4,096 a record carries).
    EXPECT_EQ(again->expected_cached_tokens, 4000 * 16);
  }
}

constexpr const char* kMigrationTable = R"(version: 1
targets:
  old:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
  new:
    kind: maas
    provider: deepseek
    model: deepseek-chat
    data_classes: [public]
    context_window: 64000
    price: {input_per_mtok: 0.28, output_per_mtok: 0.42}
scenarios:
  move:
    data_class: public
    migration: {baseline: old, candidate: new, stage: canary, steps: [10, 50, 100], incident_owner: oncall}
)";

TEST_F(FastPathTest, AClientsSplitFollowsTheSidecarsMigrationWithoutARoundTrip) {
  write(kMigrationTable);
  auto server = start();
  auto fast = attach(name_);
  ASSERT_TRUE(fast);
  // Of 2,000 keys, how many the client sends to the candidate, deciding from shared memory alone.
  const auto on_candidate = [&] {
    int n = 0;
    for (int i = 0; i < 2'000; ++i) {
      auto d = fast->explain({.scenario = "move", .key = "k" + std::to_string(i), .input_tokens = 10, .now = kNow});
      EXPECT_TRUE(d.ok()) << (d.ok() ? "" : d.error().message);
      if (d && fast->config()->targets[d->placement.target].name == "new") ++n;
    }
    return n;
  };
  // The sidecar publishes its live state after each thing it applies, e.g. a drained route.
  const auto sidecar_applies_something = [&](std::int64_t now) {
    ASSERT_TRUE(fast->route({.scenario = "move", .key = "x", .input_tokens = 10, .now = now}).ok());
    EXPECT_EQ(server->drain_rings(now), 1U);
  };
  EXPECT_EQ(on_candidate(), 0) << "pending: all on the baseline";
  // The sidecar's tick starts the canary at 10 %.
  ASSERT_EQ(server->router()->migration_tick(kNow).size(), 1U);
  sidecar_applies_something(kNow);
  const int ten = on_candidate();
  EXPECT_GT(ten, 140);  // 200 expected, sd ~13
  EXPECT_LT(ten, 260);
  // A command promotes it: the client follows at once.
  ASSERT_TRUE(server->router()->migration_command("move", MigrationCommand::promote, kNow + 1).ok());
  sidecar_applies_something(kNow + 1);
  EXPECT_EQ(on_candidate(), 2'000);
  // ... and an abort sends everything back.
  auto again = server->router()->migration_command("move", MigrationCommand::abort, kNow + 2);
  EXPECT_FALSE(again.ok()) << "a promoted run has ended";
  EXPECT_EQ(again.error().code, ErrorCode::migration_conflict);
}

TEST_F(FastPathTest, ASegmentOfAnotherLayoutVersionIsRefused) {
  auto server = start();
  // What a sidecar of the previous layout (no migration percent) would have published.
  const auto name = table_segment_name(name_, server->generation());
  auto region = shm::map_private_segment(name, true);
  ASSERT_TRUE(region.ok()) << region.error().message;
  auto* head = static_cast<client::TableHeader*>(region.value()->get_address());
  EXPECT_EQ(head->layout_version, client::kFastLayoutVersion);
  head->layout_version = 3;
  auto fast = FastClient::attach(name_);
  if (fast.ok()) {
    auto d = fast.value()->route(request(prompt(1, 1, 1), kNow));
    ASSERT_FALSE(d.ok()) << "a table of layout 3 must not be read";
    EXPECT_EQ(d.error().code, ErrorCode::incompatible_layout) << d.error().message;
  } else {
    EXPECT_EQ(fast.error().code, ErrorCode::incompatible_layout) << fast.error().message;
  }
}

TEST_F(FastPathTest, SegmentsArePrivateAndAClientOutlivesNothing) {
  auto server = start();
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + rings_segment_name(name_)).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  ASSERT_EQ(::stat(("/dev/shm/" + table_segment_name(name_, 1)).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  {
    auto a = attach(name_);
    auto b = attach(name_);
    ASSERT_TRUE(a && b);
    EXPECT_NE(a->ring(), b->ring());
    EXPECT_EQ(server->fast_clients(), 2U);
  }
  EXPECT_EQ(server->fast_clients(), 0U) << "a closed client frees its ring";
  EXPECT_FALSE(FastClient::attach("sy-fp-no-such-segment").ok());
}

}  // namespace
}  // namespace turnout::sidecar
