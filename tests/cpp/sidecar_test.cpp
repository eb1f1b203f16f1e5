// The sidecar's pieces without sockets: request handling (including a randomized decoder test: every
// input gets a well-formed reply, never a crash or an exception), the shared-memory segment (seqlock
// readers, re-attach after the owner is gone, a live owner refused, a foreign layout rebuilt).

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "sidecar/server.hpp"
#include "sidecar/shm.hpp"
#include "turnout/client/counters.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/shm/segment.hpp"

namespace turnout::sidecar {

using client::rings_segment_name;
using client::SegmentReader;
using shm::lock_path;
namespace {

const std::string kExample = std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml";
constexpr std::int64_t kNow = 1'767'225'600'000;

class SidecarTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> n{0};
    name_ = "sy-gtest-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  }
  void TearDown() override {
    boost::interprocess::shared_memory_object::remove(name_.c_str());
    boost::interprocess::shared_memory_object::remove(rings_segment_name(name_).c_str());
    std::remove(lock_path(name_).c_str());
  }
  std::unique_ptr<Server> start() {
    auto s = Server::start(kExample, name_);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return std::move(s.value().server);
  }
  std::string name_;
};

std::string pack(const std::function<void(msgpack::packer<msgpack::sbuffer>&)>& body, std::uint32_t fields) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(fields + 2);
  pk.pack("v");
  pk.pack(1);
  pk.pack("id");
  pk.pack(42);
  body(pk);
  return {buf.data(), buf.size()};
}

std::string route_msg(const std::string& scenario = "contract-extraction") {
  return pack(
      [&](auto& pk) {
        pk.pack("op");
        pk.pack("route");
        pk.pack("scenario");
        pk.pack(scenario);
        pk.pack("input_tokens");
        pk.pack(100);
      },
      3);
}

/// The reply's ok flag and error code ("" when ok); fails the test if the reply is malformed.
std::pair<bool, std::string> outcome(const std::string& reply, msgpack::object_handle* keep = nullptr) {
  msgpack::object_handle oh = msgpack::unpack(reply.data(), reply.size());
  const msgpack::object& o = oh.get();
  EXPECT_EQ(o.type, msgpack::type::MAP);
  bool ok = false;
  std::string code;
  for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
    const auto key = o.via.map.ptr[i].key.as<std::string>();
    const auto& val = o.via.map.ptr[i].val;
    if (key == "ok") ok = val.as<bool>();
    if (key == "error") {
      for (std::uint32_t j = 0; j < val.via.map.size; ++j) {
        if (val.via.map.ptr[j].key.as<std::string>() == "code") code = val.via.map.ptr[j].val.as<std::string>();
      }
    }
  }
  if (keep != nullptr) *keep = std::move(oh);
  return {ok, code};
}

std::uint64_t field_u64(const msgpack::object& map, const std::string& name) {
  for (std::uint32_t i = 0; i < map.via.map.size; ++i) {
    if (map.via.map.ptr[i].key.as<std::string>() == name) return map.via.map.ptr[i].val.as<std::uint64_t>();
  }
  ADD_FAILURE() << "no field " << name;
  return 0;
}

TEST_F(SidecarTest, RouteIsMirroredIntoSharedMemory) {
  auto server = start();
  msgpack::object_handle oh;
  const auto [ok, code] = outcome(server->handle(route_msg(), kNow), &oh);
  ASSERT_TRUE(ok) << code;
  EXPECT_EQ(field_u64(oh.get(), "decision_id") >> kGenerationShift, 1U);
  auto reader = SegmentReader::attach(name_);
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  auto rows = reader.value()->counters();
  ASSERT_TRUE(rows.ok());
  std::uint64_t requests = 0;
  for (const auto& r : rows.value()) {
    if (r.scenario == "contract-extraction" && r.target == "llama-70b") requests = r.counters.requests;
  }
  EXPECT_EQ(requests, 1U);
}

/// A route (or explain) of contract-extraction that says it happened at `now_s` (seconds).
std::string dated_msg(const char* op, double now_s) {
  return pack(
      [&](auto& pk) {
        pk.pack("op");
        pk.pack(op);
        pk.pack("scenario");
        pk.pack("contract-extraction");
        pk.pack("input_tokens");
        pk.pack(100);
        pk.pack("now");
        pk.pack(now_s);
      },
      4);
}

// The server runs on its own clock: a client's `now` neither expires others' decisions nor keeps
// them (or its own) from expiring; they expire when the server's clock says so.
TEST_F(SidecarTest, DecisionsExpireOnTheServersClockWhateverTheClientsSay) {
  constexpr std::int64_t kTtl = 3'600'000;  // RouterOptions::decision_ttl_ms
  constexpr double kTenDaysS = 10 * 86'400.0;
  auto server = start();
  const double now_s = static_cast<double>(kNow) / 1000.0;
  ASSERT_TRUE(outcome(server->handle(dated_msg("route", now_s + kTenDaysS), kNow)).first) << "dated in the future";
  ASSERT_TRUE(outcome(server->handle(dated_msg("route", 1.0), kNow + 1000)).first) << "dated in 1970";
  ASSERT_TRUE(outcome(server->handle(route_msg(), kNow + 2000)).first);
  EXPECT_EQ(server->router()->pending_decisions(), 3U) << "a route dated 1970 expired nothing";
  ASSERT_TRUE(outcome(server->handle(dated_msg("explain", now_s + kTenDaysS), kNow + 3000)).first);
  EXPECT_EQ(server->router()->pending_decisions(), 3U) << "an explain dated in 10 days expired nothing";
  EXPECT_EQ(outcome(server->handle(dated_msg("explain", 1e300), kNow + 3000)).second, "invalid_argument");
  // An hour later by the server's clock, all three have expired (the future-dated one first in line).
  ASSERT_TRUE(outcome(server->handle(dated_msg("explain", 1.0), kNow + 2000 + kTtl)).first);
  EXPECT_EQ(server->router()->pending_decisions(), 0U);
}

TEST_F(SidecarTest, ErrorCodes) {
  auto server = start();
  EXPECT_EQ(outcome(server->handle("\xc1", kNow)).second, "bad_message");
  EXPECT_EQ(outcome(server->handle(route_msg("nope"), kNow)).second, "unknown_scenario");
  EXPECT_EQ(outcome(server->handle(pack(
                                       [](auto& pk) {
                                         pk.pack("op");
                                         pk.pack("dance");
                                       },
                                       1),
                                   kNow))
                .second,
            "unknown_op");
  std::string deep(200, '\x91');  // 200 nested one-element arrays
  deep += '\x01';
  EXPECT_EQ(outcome(server->handle(deep, kNow)).second, "too_deep");
  std::string big = "\xdb";  // a complete str32 one byte beyond the decoder's 4 MiB str limit
  const std::uint32_t n = (4U << 20) + 1;
  for (int shift = 24; shift >= 0; shift -= 8) big += static_cast<char>((n >> shift) & 0xFFU);
  big += std::string(n, 'x');
  EXPECT_EQ(outcome(server->handle(big, kNow)).second, "too_large");
}

TEST_F(SidecarTest, RandomizedInputAlwaysGetsAWellFormedReply) {
  auto server = start();
  const char* env = std::getenv("TURNOUT_FUZZ_ITERATIONS");  // NOLINT(concurrency-mt-unsafe)
  const long iterations = env != nullptr ? std::atol(env) : 500'000;
  std::mt19937_64 rng(0x51DECA11);
  const std::uint64_t version = server->router()->config()->content_hash;
  const std::string seeds[] = {route_msg(), route_msg("agent-assist"),
                               pack(  // what a fast-path client posts to its ring
                                   [&](auto& pk) {
                                     const std::uint64_t prefix[2] = {0x1234, 0x5678};
                                     pk.pack("op");
                                     pk.pack("adopt");
                                     pk.pack("decision_id");
                                     pk.pack((1ULL << 63) | 5U);
                                     pk.pack("config_version");
                                     pk.pack(version);
                                     pk.pack("scenario");
                                     pk.pack(0);
                                     pk.pack("target");
                                     pk.pack(4);
                                     pk.pack("replica");
                                     pk.pack(1);
                                     pk.pack("fallbacks");
                                     pk.pack_array(1);
                                     pk.pack_array(2);
                                     pk.pack(0);
                                     pk.pack(0xFFFFFFFFU);
                                     pk.pack("reserved_cost");
                                     pk.pack(1000);
                                     pk.pack("active_blocks");
                                     pk.pack(2);
                                     pk.pack("prefix");
                                     pk.pack_bin(16);
                                     pk.pack_bin_body(reinterpret_cast<const char*>(prefix), 16);
                                     pk.pack("at");
                                     pk.pack(kNow);
                                   },
                                   11),
                               pack(
                                   [](auto& pk) {
                                     pk.pack("op");
                                     pk.pack("report");
                                     pk.pack("decision_id");
                                     pk.pack((1ULL << 40) | 1U);
                                     pk.pack("target");
                                     pk.pack("llama-70b");
                                     pk.pack("status");
                                     pk.pack("ok");
                                     pk.pack("usage");
                                     pk.pack_map(2);
                                     pk.pack("prompt_tokens");
                                     pk.pack(10);
                                     pk.pack("completion_tokens");
                                     pk.pack(5);
                                   },
                                   5)};
  // Seed 2 is a ring record (ring 0's id): fed through the ring path; the rest through the socket's.
  auto handle = [&](std::size_t seed, const std::string& msg, std::int64_t now) {
    return seed == 2 ? server->handle(msg, now, 0) : server->handle(msg, now);
  };
  for (std::size_t s = 0; s < std::size(seeds); ++s) {
    EXPECT_TRUE(outcome(handle(s, seeds[s], kNow)).first) << "seed " << s << " is valid";
  }
  for (long i = 0; i < iterations; ++i) {
    std::string msg;
    std::size_t seed = rng() % std::size(seeds);  // random bytes go through either path
    if (i % 10 == 0) {
      msg.resize(rng() % 64);
      for (auto& c : msg) c = static_cast<char>(rng());
    } else {
      seed = rng() % std::size(seeds);
      msg = seeds[seed];
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !msg.empty(); ++e) {
        const std::size_t at = rng() % msg.size();
        switch (rng() % 4) {
          case 0: msg[at] = static_cast<char>(rng()); break;
          case 1: msg.resize(at); break;
          case 2: msg.insert(at, 1, static_cast<char>(rng())); break;
          default: msg[at] = static_cast<char>("\xc0\xc2\xdc\xdd\xde\xdf\xd9\xda\xdb\x90\x80"[rng() % 11]); break;
        }
      }
    }
    const std::string reply = handle(seed, msg, kNow + i);
    ASSERT_FALSE(reply.empty());
    (void)outcome(reply);
    if (HasFailure()) FAIL() << "iteration " << i;
  }
  // Still serving (routes may be refused now: the fuzz filled the pool's in-flight slots).
  EXPECT_TRUE(outcome(server->handle(pack(
                                         [](auto& pk) {
                                           pk.pack("op");
                                           pk.pack("health");
                                         },
                                         1),
                                     kNow))
                  .first);
}

TEST_F(SidecarTest, ASecondOwnerIsRefused) {
  auto server = start();
  auto other = Segment::open(name_, 16);
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.error().message.find("owned by a live sidecar (pid " + std::to_string(::getpid())), std::string::npos)
      << other.error().message;
}

TEST_F(SidecarTest, ARestartedServerReattachesAndRestoresCounters) {
  {
    auto server = start();
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(outcome(server->handle(route_msg(), kNow)).first);
  }  // the lock is released, the segment stays
  auto again = Server::start(kExample, name_);
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_NE(again.value().note.find("re-attached"), std::string::npos) << again.value().note;
  EXPECT_EQ(again.value().server->generation(), 2U);
  msgpack::object_handle oh;
  ASSERT_TRUE(outcome(again.value().server->handle(route_msg(), kNow), &oh).first);
  EXPECT_EQ(field_u64(oh.get(), "decision_id") >> kGenerationShift, 2U);
  auto rows = SegmentReader::attach(name_).value()->counters();
  ASSERT_TRUE(rows.ok());
  for (const auto& r : rows.value()) {
    if (r.scenario == "contract-extraction") {
      EXPECT_EQ(r.counters.requests, 4U);
    }
  }
}

TEST_F(SidecarTest, AForeignSegmentIsRebuilt) {
  {
    namespace bip = boost::interprocess;
    // Private to us (0600), so its layout is read (one others could have written is rebuilt unread).
    bip::shared_memory_object shm(bip::create_only, name_.c_str(), bip::read_write, bip::permissions(0600));
    shm.truncate(4096);
    bip::mapped_region region(shm, bip::read_write);
    std::memset(region.get_address(), 0x5A, region.get_size());
  }
  auto s = Server::start(kExample, name_);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_NE(s.value().note.find("does not match"), std::string::npos) << s.value().note;
  EXPECT_TRUE(outcome(s.value().server->handle(route_msg(), kNow)).first);
}

TEST_F(SidecarTest, SeqlockReadersNeverSeeATornRow) {
  auto config = load_config_file(kExample);
  ASSERT_TRUE(config.ok());
  auto opened = Segment::open(name_, 4);
  ASSERT_TRUE(opened.ok());
  Segment& seg = *opened.value().segment;
  CounterRow row{0, config.value()->scenarios[0].routes[0].target, {}};
  ASSERT_TRUE(seg.publish_all(*config.value(), {row}).ok());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (std::uint64_t k = 1; k <= 200'000; ++k) {
      row.counters.requests = k;
      row.counters.outcomes = k;
      row.counters.latency.count = k;
      seg.publish(*config.value(), row);
    }
    done = true;
  });
  auto reader = SegmentReader::attach(name_);
  ASSERT_TRUE(reader.ok());
  std::uint64_t last = 0;
  int reads = 0;
  while (!done || reads < 10) {
    auto rows = reader.value()->counters();
    ASSERT_TRUE(rows.ok());
    ASSERT_EQ(rows.value().size(), 1U);
    const Counters& c = rows.value()[0].counters;
    ASSERT_EQ(c.requests, c.outcomes);
    ASSERT_EQ(c.requests, c.latency.count);
    ASSERT_GE(c.requests, last);
    last = c.requests;
    ++reads;
  }
  writer.join();
}

}  // namespace
}  // namespace turnout::sidecar
