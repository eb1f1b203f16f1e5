// The concurrent parts under several threads: a Router routing and reporting from many threads, a
// seqlocked counter slot with a writer and readers, a fast-path ring with a producer and the draining
// sidecar, and a directory view the sidecar updates while clients match prompts against it.
// Built without ZeroMQ as turnout_concurrency_tests, the executable the ThreadSanitizer step runs.
//
// What ThreadSanitizer can see: it tracks memory by address, and every segment is mapped once per
// side (the sidecar's mapping and the client's), so it checks each side's own threads and locks, and
// the seqlock of a slot that one mapping shares between threads (the first slot test). Across two
// mappings of one segment these tests check the values themselves: whole, never torn, none lost.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <msgpack.hpp>

#include "sidecar/fastpath.hpp"
#include "sidecar/server.hpp"
#include "sidecar/shm.hpp"
#include "turnout/client/counters.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/router.hpp"
#include "turnout/shm/segment.hpp"

namespace turnout::sidecar {
namespace {

namespace bip = boost::interprocess;
using namespace turnout::client;  // the shared layouts and the worker's side
using shm::create_private_segment;
using shm::lock_path;

constexpr std::int64_t kNow = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
constexpr std::int64_t kBlock = 16;               // the pool's kv.block_size
constexpr std::uint32_t kPromptTokens = 640;      // 40 pool blocks, 5 MaaS blocks

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
    replicas:
      - {endpoint: "http://127.0.0.1:8001", max_inflight: 1000}
      - {endpoint: "http://127.0.0.1:8002", max_inflight: 1000}
      - {endpoint: "http://127.0.0.1:8003", max_inflight: 1000}
      - {endpoint: "http://127.0.0.1:8004", max_inflight: 1000}
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
    routes: [{target: pool, weight: 60}, {target: api, weight: 40}]
    fallback: [api]
    affinity: {prefix: true}
    budget: {usd_per_day: 1000}
)";

// A prompt of one family: its own kPromptTokens tokens, then `tail` tokens of one conversation.
std::vector<std::uint32_t> prompt(std::uint32_t family, std::uint32_t conversation = 0, std::uint32_t tail = 0) {
  std::vector<std::uint32_t> t;
  for (std::uint32_t i = 0; i < kPromptTokens; ++i) t.push_back(family * 100'000 + i);
  for (std::uint32_t i = 0; i < tail; ++i) t.push_back(50'000'000 + conversation * 10'000 + i);
  return t;
}

RouteRequest chat(const std::vector<std::uint32_t>& tokens, std::int64_t now = kNow) {
  RouteRequest r;
  r.scenario = "chat";
  r.token_ids = tokens;
  r.input_tokens = static_cast<std::int64_t>(tokens.size());
  r.now = now;
  return r;
}

msgpack::object_handle usage_of(std::int64_t prompt_tokens, std::int64_t completion_tokens) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(2);
  pk.pack("prompt_tokens");
  pk.pack(prompt_tokens);
  pk.pack("completion_tokens");
  pk.pack(completion_tokens);
  return msgpack::unpack(buf.data(), buf.size());
}

// ------------------------------------------------------------------------------ Router under threads

TEST(RouterUnderThreads, RoutesReportsAndVerdictsFromManyThreadsSumToTheLedger) {
  auto loaded = load_config_text(kTable, "concurrency.yaml");
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  const ConfigPtr config = loaded.value();
  Router router(config);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 300;

  // What each thread did, summed per target after the join.
  struct Tally {
    std::uint64_t requests = 0;
    std::uint64_t outcomes = 0;
    std::uint64_t accepted = 0;
    MoneyTotal cost;
    MoneyTotal accepted_cost;
    Money spent;
  };
  std::vector<std::vector<Tally>> tallies(kThreads, std::vector<Tally>(config->targets.size()));
  std::atomic<int> failures{0};
  std::atomic<bool> done{false};

  // A reader of everything a metrics thread or a notebook reads while workers route.
  std::thread observer([&] {
    while (!done.load()) {
      (void)router.counters();
      (void)router.breakers(kNow);
      (void)router.budgets(kNow);
      (void)router.directory_stats();
      (void)router.pending_decisions();
      const auto tokens = prompt(3);
      if (!router.explain(chat(tokens))) ++failures;
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      for (int i = 0; i < kPerThread; ++i) {
        // Eight shared families (the directories learn them from every thread), each thread's own tails.
        const auto tokens = prompt(static_cast<std::uint32_t>(i % 8), static_cast<std::uint32_t>(w), 16U * (i % 5));
        auto d = router.route(chat(tokens, kNow + i));
        if (!d) {
          ++failures;
          continue;
        }
        Tally& t = tallies[w][d->placement.target];
        ++t.requests;
        const auto usage = usage_of(static_cast<std::int64_t>(tokens.size()), 10 + i % 50);
        OutcomeReport o{.decision_id = d->id,
                        .target = config->targets[d->placement.target].name,
                        .status = Status::ok,
                        .usage = &usage.get(),
                        .latency_ms = 100 + i,
                        .now = kNow + i};
        auto receipt = router.report(o);
        if (!receipt || !receipt->priced) {
          ++failures;
          continue;
        }
        ++t.outcomes;
        t.cost += receipt->cost;
        t.spent += receipt->cost;
        if (i % 2 == 0) {
          if (!router.verdict(d->id, true, kNow + i)) ++failures;
          ++t.accepted;
          t.accepted_cost += receipt->cost;
        }
      }
    });
  }
  for (auto& th : workers) th.join();
  done = true;
  observer.join();
  ASSERT_EQ(failures.load(), 0);

  std::vector<Tally> sum(config->targets.size());
  Money spent;
  for (const auto& per_thread : tallies) {
    for (std::size_t t = 0; t < sum.size(); ++t) {
      sum[t].requests += per_thread[t].requests;
      sum[t].outcomes += per_thread[t].outcomes;
      sum[t].accepted += per_thread[t].accepted;
      sum[t].cost += per_thread[t].cost;
      sum[t].accepted_cost += per_thread[t].accepted_cost;
      spent += per_thread[t].spent;
    }
  }
  std::uint64_t requests = 0;
  for (const auto& row : router.counters()) {
    const Tally& want = sum[row.target];
    const std::string& name = config->targets[row.target].name;
    EXPECT_EQ(row.counters.requests, want.requests) << name;
    EXPECT_EQ(row.counters.outcomes, want.outcomes) << name;
    EXPECT_EQ(row.counters.by_status[static_cast<std::size_t>(Status::ok)], want.outcomes) << name;
    EXPECT_EQ(row.counters.latency.count, want.outcomes) << name;
    EXPECT_EQ(row.counters.accepted, want.accepted) << name;
    EXPECT_TRUE(row.counters.cost == want.cost) << name;
    EXPECT_TRUE(row.counters.accepted_cost == want.accepted_cost) << name;
    requests += row.counters.requests;
  }
  EXPECT_EQ(requests, std::uint64_t{kThreads * kPerThread});
  EXPECT_GT(sum[config->find_target("pool")].requests, 0U);
  EXPECT_GT(sum[config->find_target("api")].requests, 0U);
  for (const auto& b : router.breakers(kNow)) EXPECT_EQ(b.inflight, 0) << "every slot was released";
  const auto budgets = router.budgets(kNow);
  ASSERT_EQ(budgets.size(), 1U);
  EXPECT_EQ(budgets[0].reserved, Money{});
  EXPECT_EQ(budgets[0].spent, spent);
  EXPECT_EQ(router.pending_decisions(), std::size_t{kThreads * kPerThread});
}

// ------------------------------------------------------------------------ the seqlocked counter slot

class SharedMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> n{0};
    name_ = "trn-conc-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  }
  void TearDown() override {
    bip::shared_memory_object::remove(name_.c_str());
    bip::shared_memory_object::remove(rings_segment_name(name_).c_str());
    for (int g = 0; g < 8; ++g) bip::shared_memory_object::remove(table_segment_name(name_, g).c_str());
    std::remove(lock_path(name_).c_str());
    if (!path_.empty()) std::remove(path_.c_str());
  }
  std::unique_ptr<Server> start() {
    path_ = ::testing::TempDir() + name_ + ".yaml";
    std::ofstream(path_) << kTable;
    auto s = Server::start(path_, name_);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return s.ok() ? std::move(s.value().server) : nullptr;
  }
  std::string name_;
  std::string path_;
};

// Every field of a slot written as the k-th value, so a reader can tell a whole value from a torn one.
// Cheap to make: the writer spends its time writing, and readers overlap its writes.
SlotPayload kth_payload(std::uint64_t k) {
  SlotPayload p{};
  const auto letter = static_cast<char>('a' + k % 26);
  std::memset(p.scenario, letter, sizeof p.scenario - 1);
  std::memset(p.target, letter, sizeof p.target - 1);
  std::memset(p.kind, letter, sizeof p.kind - 1);
  std::memset(p.provider, letter, sizeof p.provider - 1);
  p.counters.requests = k;
  p.counters.outcomes = k;
  p.counters.tokens.output_tokens = static_cast<std::int64_t>(k);
  p.counters.cost += Money::from_picos(static_cast<std::int64_t>(k));
  p.counters.latency.count = k;
  p.counters.latency.buckets.back() = k;
  return p;
}

bool whole(const SlotPayload& p) {
  const SlotPayload want = kth_payload(p.counters.requests);
  return std::memcmp(&p, &want, sizeof p) == 0;
}

TEST_F(SharedMemoryTest, AWriterAndReadersOfOneSlotNeverSeeATornValue) {
  auto region = create_private_segment(name_, sizeof(Slot));
  ASSERT_TRUE(region.ok()) << region.error().message;
  Slot& slot = *static_cast<Slot*>(region.value()->get_address());  // zeroed: seq 0, an empty payload
  constexpr std::uint64_t kWrites = 100'000;
  write_slot(slot, kth_payload(0));
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> torn{0};
  std::atomic<std::uint64_t> backwards{0};
  std::vector<std::uint64_t> reads(3, 0);
  std::vector<std::uint64_t> last(3, 0);
  std::vector<std::thread> readers;
  for (std::size_t r = 0; r < reads.size(); ++r) {
    readers.emplace_back([&, r] {
      for (bool final_read = false; !final_read;) {
        final_read = done.load();  // one more read after the writer is done: it must see the last value
        SlotPayload p;
        if (!read_slot(slot, p)) continue;  // a writer kept overlapping: the reader just tries again
        if (!whole(p)) ++torn;
        if (p.counters.requests < last[r]) ++backwards;
        last[r] = p.counters.requests;
        ++reads[r];
      }
    });
  }
  for (std::uint64_t k = 1; k <= kWrites; ++k) write_slot(slot, kth_payload(k));
  done = true;
  for (auto& th : readers) th.join();
  EXPECT_EQ(torn.load(), 0U);
  EXPECT_EQ(backwards.load(), 0U);
  for (std::size_t r = 0; r < reads.size(); ++r) {
    EXPECT_GT(reads[r], 0U);
    EXPECT_EQ(last[r], kWrites);
  }
}

TEST_F(SharedMemoryTest, ReadersAttachedToTheSegmentSeeWholeRowsWhileTheSidecarPublishes) {
  auto loaded = load_config_text(kTable, "concurrency.yaml");
  ASSERT_TRUE(loaded.ok());
  const Config& config = *loaded.value();
  auto opened = Segment::open(name_, 4);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  Segment& segment = *opened.value().segment;
  std::vector<CounterRow> rows = {{0, config.find_target("pool"), {}}, {0, config.find_target("api"), {}}};
  ASSERT_TRUE(segment.publish_all(config, rows).ok());
  constexpr std::uint64_t kWrites = 20'000;
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> bad{0};
  std::vector<std::uint64_t> last(3, 0);
  std::vector<std::thread> readers;
  for (std::size_t r = 0; r < last.size(); ++r) {
    readers.emplace_back([&, r] {
      auto reader = SegmentReader::attach(name_);  // its own mapping, as turnout.attach has
      if (!reader) {
        ++bad;
        return;
      }
      for (bool final_read = false; !final_read;) {
        final_read = done.load();
        auto snapshot = reader.value()->counters();
        if (!snapshot || snapshot.value().size() != 2) {
          ++bad;
          continue;
        }
        for (const auto& row : snapshot.value()) {
          const Counters& c = row.counters;
          if (c.outcomes != c.requests || c.latency.count != c.requests) ++bad;  // each row whole
        }
        // The writer writes the first row, then the second, with the same k; a snapshot reads them in
        // that order, so the second is at most one write behind the first. Nothing goes backwards.
        const std::uint64_t first = snapshot.value()[0].counters.requests;
        if (snapshot.value()[1].counters.requests + 1 < first || first < last[r]) ++bad;
        last[r] = first;
      }
    });
  }
  for (std::uint64_t k = 1; k <= kWrites; ++k) {
    for (auto& row : rows) {
      row.counters.requests = k;
      row.counters.outcomes = k;
      row.counters.latency.count = k;
      segment.publish(config, row);
    }
    if (k % 1000 == 0) segment.heartbeat(kNow + static_cast<std::int64_t>(k));
  }
  done = true;
  for (auto& th : readers) th.join();
  EXPECT_EQ(bad.load(), 0U);
  for (std::uint64_t l : last) EXPECT_EQ(l, kWrites);
}

// ----------------------------------------------------------------------------- the fast-path ring

std::string report_record(std::uint64_t id, const std::string& target) {
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
  pk.pack("ok");
  pk.pack("now");
  pk.pack(static_cast<double>(kNow) / 1000.0 + 1);
  return {buf.data(), buf.size()};
}

TEST_F(SharedMemoryTest, EveryRecordAProducerPostsIsAppliedOnceByTheDrainingSidecar) {
  auto server = start();
  ASSERT_TRUE(server);
  auto attached = FastClient::attach(name_);
  ASSERT_TRUE(attached.ok()) << attached.error().message;
  FastClient& client = *attached.value();
  const ConfigPtr config = server->router()->config();
  // ~1 KiB per adopt record: the 256 KiB ring wraps several times and fills up now and then.
  constexpr std::uint64_t kRoutes = 1500;
  std::atomic<bool> produced{false};
  std::atomic<std::uint64_t> metrics_reads{0};

  // The sidecar's serving thread drains; its /metrics thread reads at the same time.
  std::thread sidecar([&] {
    const std::uint64_t want = 2 * kRoutes;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (server->fast_path().records < want && std::chrono::steady_clock::now() < deadline) {
      if (server->drain_rings(kNow + 1000) == 0) std::this_thread::yield();
    }
  });
  std::thread metrics([&] {
    while (!produced.load()) {
      if (server->metrics(kNow).find("turnout_requests_total") != std::string::npos) ++metrics_reads;
    }
  });

  std::vector<std::uint64_t> ids;
  std::uint64_t refused = 0;
  for (std::uint64_t i = 0; i < kRoutes; ++i) {
    const auto n = static_cast<std::uint32_t>(i);
    const auto tokens = prompt(n % 50, n, 16U * (n % 40));
    Result<Decision> d = client.route(chat(tokens));
    // A full ring refuses (a worker would use the socket): wait for the sidecar to drain and retry.
    for (; !d && d.error().code == ErrorCode::unavailable; d = client.route(chat(tokens))) {
      ++refused;
      std::this_thread::yield();
    }
    ASSERT_TRUE(d.ok()) << d.error().message;
    ids.push_back(d->id);
    const std::string report = report_record(d->id, config->targets[d->placement.target].name);
    while (!client.post(report)) {
      ++refused;
      std::this_thread::yield();
    }
  }
  produced = true;
  sidecar.join();
  metrics.join();

  const auto stats = server->fast_path();
  EXPECT_EQ(stats.records, 2 * kRoutes) << "every adopt and report posted, each applied once";
  EXPECT_EQ(stats.rejected, 0U);
  const auto feedback = client.feedback();
  EXPECT_EQ(feedback.settled, feedback.posted) << "the client learns that every record was settled";
  EXPECT_TRUE(feedback.rejected.empty());
  std::uint64_t requests = 0;
  std::uint64_t outcomes = 0;
  for (const auto& row : server->router()->counters()) {
    requests += row.counters.requests;
    outcomes += row.counters.outcomes;
  }
  EXPECT_EQ(requests, kRoutes);
  EXPECT_EQ(outcomes, kRoutes);
  for (std::uint64_t id : ids) ASSERT_TRUE(server->router()->has_pending(id)) << id;
  for (const auto& b : server->router()->breakers(kNow)) EXPECT_EQ(b.inflight, 0);
  EXPECT_GT(metrics_reads.load(), 0U);
  RecordProperty("ring_full_retries", static_cast<int>(refused));
}

// --------------------------------------------------------------------------- the directory views

TEST_F(SharedMemoryTest, ClientsMatchingWhileTheSidecarUpdatesItsViewsSeeWholePrefixes) {
  auto server = start();
  ASSERT_TRUE(server);
  constexpr std::uint32_t kFamilies = 120;  // 4,800 pool blocks at most: no eviction, no rehash
  std::atomic<std::uint32_t> stored{0};     // families 0..stored-1 are in the sidecar's directories
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> bad{0};
  std::atomic<std::uint64_t> warm{0};
  std::atomic<std::uint64_t> reads{0};

  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&, c] {
      auto client = FastClient::attach(name_, /*claim_ring=*/false);
      if (!client) {
        ++bad;
        return;
      }
      std::mt19937 rng(static_cast<unsigned>(c));
      while (!done.load()) {
        const auto family = static_cast<std::uint32_t>(rng() % kFamilies);
        const bool known = family < stored.load();  // stored before this read began
        const auto tokens = prompt(family);
        auto d = client.value()->explain(chat(tokens));
        if (!d) {
          ++bad;
          continue;
        }
        // A chain is stored leaf first, so a holder holds none of the prompt or all of it: a torn or
        // lost key would show as a part. And what the sidecar stored before this read is seen.
        const std::int64_t cached = d->expected_cached_tokens;
        if ((cached != 0 && cached != kPromptTokens) || (known && cached != kPromptTokens)) ++bad;
        if (cached == kPromptTokens) ++warm;
        ++reads;
      }
    });
  }

  // The serving thread: each route teaches the directories a new family (the views follow through
  // their observers), its report frees the slot; both republish the live state.
  for (std::uint32_t family = 0; family < kFamilies; ++family) {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk(buf);
    pk.pack_map(4);
    pk.pack("v");
    pk.pack(1);
    pk.pack("op");
    pk.pack("route");
    pk.pack("scenario");
    pk.pack("chat");
    pk.pack("token_ids");
    pk.pack(prompt(family));
    const std::string reply = server->handle({buf.data(), buf.size()}, kNow);
    msgpack::object_handle oh = msgpack::unpack(reply.data(), reply.size());
    std::map<std::string, msgpack::object> fields;
    oh.get().convert(fields);
    ASSERT_TRUE(fields.at("ok").as<bool>()) << reply;
    const auto id = fields.at("decision_id").as<std::uint64_t>();
    const auto target = fields.at("target").as<std::string>();
    stored = family + 1;
    (void)server->handle(report_record(id, target), kNow);
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // let the clients read in between
  }
  const std::uint64_t before_end = reads.load();
  while (reads.load() < before_end + 300) std::this_thread::yield();  // reads after the last store too
  done = true;
  for (auto& th : clients) th.join();
  EXPECT_EQ(bad.load(), 0U);
  EXPECT_GT(warm.load(), 0U);
  EXPECT_EQ(server->fast_path().view_dropped, 0U);
}

}  // namespace
}  // namespace turnout::sidecar
