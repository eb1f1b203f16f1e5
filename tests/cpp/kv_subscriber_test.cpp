// KvEventSubscriber against real ZeroMQ sockets on 127.0.0.1: the test plays the engine (a PUB, and a
// ROUTER answering replay requests the way vLLM's ZmqEventPublisher does) and records what the sink sees.
// Every wait has a timeout, so a broken subscriber fails the test instead of hanging it.

#include "turnout/io/kv_subscriber.hpp"

#include <gtest/gtest.h>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kv_event_payloads.hpp"

namespace turnout::io {
namespace {

using namespace std::chrono_literals;
using test::Packer;

constexpr auto kWait = 10s;  // generous: ASan builds on a busy 2-core machine

/// A one-block batch whose ts is its sequence number, so the sink's records say which batch arrived.
std::string batch_payload(std::uint64_t seq) {
  return test::packed([seq](Packer& p) {
    p.pack_array(3);
    p.pack_double(static_cast<double>(seq));
    p.pack_array(1);
    p.pack_array(8);
    test::pack_text(p, "BlockStored");
    p.pack_array(1).pack_uint64(seq);
    p.pack_nil();
    p.pack_array(2).pack_uint32(1).pack_uint32(2);
    p.pack_uint32(2);
    p.pack_nil();
    test::pack_text(p, "GPU");
    p.pack_nil();
    p.pack_uint32(0);
  });
}

std::string big_endian(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8U) s[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xffU);
  return s;
}

struct Record {
  enum class Kind { batch, reset, rejected };
  Kind kind;
  std::size_t publisher;
  std::uint64_t seq;  // batches: their ts
  std::string reason;
};

class RecordingSink : public KvEventSink {
 public:
  void on_batch(std::size_t publisher, const KvEventBatch& batch) override {
    add({Record::Kind::batch, publisher, static_cast<std::uint64_t>(batch.ts), {}});
  }
  void on_reset(std::size_t publisher, const std::string& reason) override {
    add({Record::Kind::reset, publisher, 0, reason});
  }
  void on_rejected(std::size_t publisher, const std::string& reason) override {
    add({Record::Kind::rejected, publisher, 0, reason});
  }

  /// Waits until `done` holds for the records (checked on every new record), at most `timeout`.
  bool wait_until(const std::function<bool(const std::vector<Record>&)>& done, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return done(records_); });
  }
  bool wait_for_batch(std::size_t publisher, std::uint64_t seq, std::chrono::milliseconds timeout = kWait) {
    return wait_until([&](const std::vector<Record>& r) { return has_batch(r, publisher, seq); }, timeout);
  }
  std::vector<Record> records() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return records_;
  }
  static bool has_batch(const std::vector<Record>& records, std::size_t publisher, std::uint64_t seq) {
    return std::ranges::any_of(records, [&](const Record& r) {
      return r.kind == Record::Kind::batch && r.publisher == publisher && r.seq == seq;
    });
  }

 protected:
  void add(Record r) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      records_.push_back(std::move(r));
    }
    changed_.notify_all();
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Record> records_;
};

/// The records after the one for batch `seq` of `publisher` (the warm-up's last), for exact checks.
std::vector<Record> after_batch(const std::vector<Record>& records, std::size_t publisher, std::uint64_t seq) {
  for (std::size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
    if (r.kind == Record::Kind::batch && r.publisher == publisher && r.seq == seq) {
      return {records.begin() + static_cast<std::ptrdiff_t>(i) + 1, records.end()};
    }
  }
  ADD_FAILURE() << "no batch " << seq;
  return {};
}

std::string describe(const std::vector<Record>& records) {
  std::string s;
  for (const Record& r : records) {
    switch (r.kind) {
      case Record::Kind::batch: s += "batch(" + std::to_string(r.seq) + ") "; break;
      case Record::Kind::reset: s += "reset[" + r.reason + "] "; break;
      case Record::Kind::rejected: s += "rejected[" + r.reason + "] "; break;
    }
  }
  return s;
}

/// The engine side: a PUB and, optionally, a replay ROUTER, both on ephemeral loopback ports.
class Engine {
 public:
  Engine(zmq::context_t& context, bool with_replay) : pub_(context, zmq::socket_type::pub) {
    pub_.set(zmq::sockopt::linger, 0);
    pub_.bind("tcp://127.0.0.1:*");
    endpoint_ = pub_.get(zmq::sockopt::last_endpoint);
    if (with_replay) {
      router_ = zmq::socket_t(context, zmq::socket_type::router);
      router_.set(zmq::sockopt::linger, 0);
      router_.bind("tcp://127.0.0.1:*");
      replay_endpoint_ = router_.get(zmq::sockopt::last_endpoint);
    }
  }

  [[nodiscard]] KvPublisher publisher() const { return {endpoint_, replay_endpoint_}; }

  void send_frames(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      const auto more = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      ASSERT_TRUE(pub_.send(zmq::buffer(frames[i]), more));
    }
  }
  void send(std::uint64_t seq) { send_frames({"kv", big_endian(seq), batch_payload(seq)}); }

  /// The next replay request: the DEALER's identity and the start sequence.
  std::optional<std::pair<std::string, std::uint64_t>> replay_request(std::chrono::milliseconds timeout = kWait) {
    zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, timeout) == 0) return std::nullopt;
    std::vector<zmq::message_t> frames;
    if (!zmq::recv_multipart(router_, std::back_inserter(frames))) return std::nullopt;
    if (frames.size() != 3 || !frames[1].empty() || frames[2].size() != 8) {
      ADD_FAILURE() << "replay request of " << frames.size() << " frames";
      return std::nullopt;
    }
    std::uint64_t start = 0;
    for (std::size_t i = 0; i < 8; ++i) start = (start << 8U) | static_cast<const unsigned char*>(frames[2].data())[i];
    return std::make_pair(frames[0].to_string(), start);
  }

  /// One replayed batch, as vLLM sends it (["", seq, payload] after the identity) or with the topic.
  void replay(const std::string& identity, std::uint64_t seq, bool with_topic = false) {
    std::vector<std::string> frames{identity, ""};
    if (with_topic) frames.emplace_back("kv");
    frames.push_back(big_endian(seq));
    frames.push_back(batch_payload(seq));
    send_router(frames);
  }
  void replay_end(const std::string& identity) { send_router({identity, "", big_endian(0xFFFFFFFFFFFFFFFFULL), ""}); }

 private:
  void send_router(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      const auto more = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      ASSERT_TRUE(router_.send(zmq::buffer(frames[i]), more));
    }
  }

  zmq::socket_t pub_;
  zmq::socket_t router_;
  std::string endpoint_;
  std::string replay_endpoint_;
};

/// PUB/SUB drops what is published before the subscription reaches the PUB: publish warm-up batches with
/// increasing sequence numbers until one arrives, then wait for the last one sent. Returns that last seq.
std::uint64_t warm_up(Engine& engine, RecordingSink& sink, std::size_t publisher, std::uint64_t first_seq) {
  std::uint64_t seq = first_seq;
  for (int attempt = 0; attempt < 400; ++attempt, ++seq) {
    engine.send(seq);
    const bool arrived = sink.wait_until(
        [&](const std::vector<Record>& records) {
          return std::ranges::any_of(
              records, [&](const Record& r) { return r.kind == Record::Kind::batch && r.publisher == publisher; });
        },
        25ms);
    if (arrived) break;
  }
  EXPECT_TRUE(sink.wait_for_batch(publisher, seq)) << describe(sink.records());
  return seq;
}

class KvSubscriberTest : public ::testing::Test {
 protected:
  zmq::context_t context_;
  RecordingSink sink_;
};

TEST_F(KvSubscriberTest, BatchesArriveInOrder) {
  Engine engine(context_, false);
  KvEventSubscriber subscriber({engine.publisher()}, sink_);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t w = warm_up(engine, sink_, 0, 0);
  for (std::uint64_t s = w + 1; s <= w + 50; ++s) engine.send(s);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 50));

  const std::vector<Record> records = sink_.records();
  // From the first batch received on, every batch in order, nothing else.
  std::uint64_t expected = records.front().seq;
  for (const Record& r : records) {
    ASSERT_EQ(r.kind, Record::Kind::batch) << describe(records);
    EXPECT_EQ(r.seq, expected++);
  }
  const KvPublisherStats stats = subscriber.stats().at(0);
  EXPECT_EQ(stats.last_seq, w + 50);
  EXPECT_EQ(stats.applied, records.size());
  EXPECT_EQ(stats.received, records.size());
  EXPECT_EQ(stats.rejected, 0U);
  EXPECT_EQ(stats.resets, 0U);
  EXPECT_EQ(stats.gaps, 0U);
  EXPECT_TRUE(stats.connected);
  subscriber.stop();
  EXPECT_FALSE(subscriber.stats().at(0).connected);
}

TEST_F(KvSubscriberTest, MalformedMessagesAreRejectedAndTheNextGoodOneApplies) {
  Engine engine(context_, false);
  KvEventSubscriber subscriber({engine.publisher()}, sink_);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t w = warm_up(engine, sink_, 0, 0);

  engine.send_frames({"kv", big_endian(w + 1)});                                 // 2 frames
  engine.send_frames({"kv", big_endian(w + 1), batch_payload(w + 1), "extra"});  // 4 frames
  engine.send_frames({"kv", std::string("\x00\x01", 2), batch_payload(w + 1)});  // 2-byte sequence
  engine.send_frames({"kv", big_endian(w + 1), std::string("\x93\xc1", 2)});     // undecodable payload
  engine.send(w + 2);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 2)) << describe(sink_.records());

  const std::vector<Record> tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 5U) << describe(tail);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(tail[i].kind, Record::Kind::rejected) << describe(tail);
  EXPECT_NE(tail[0].reason.find("2 frames"), std::string::npos) << tail[0].reason;
  EXPECT_NE(tail[1].reason.find("4 frames"), std::string::npos) << tail[1].reason;
  EXPECT_NE(tail[2].reason.find("sequence frame of 2 bytes"), std::string::npos) << tail[2].reason;
  EXPECT_NE(tail[3].reason.find("seq " + std::to_string(w + 1)), std::string::npos) << tail[3].reason;
  EXPECT_EQ(tail[4].kind, Record::Kind::batch);  // w+1 was received (bad payload): w+2 is not a gap
  EXPECT_EQ(tail[4].seq, w + 2);
  const KvPublisherStats stats = subscriber.stats().at(0);
  EXPECT_EQ(stats.rejected, 4U);
  EXPECT_EQ(stats.resets, 0U);
  EXPECT_EQ(stats.gaps, 0U);
}

TEST_F(KvSubscriberTest, GapHealedByReplay) {
  Engine engine(context_, true);
  KvSubscriberOptions options;
  options.replay_timeout = 5000ms;
  KvEventSubscriber subscriber({engine.publisher()}, sink_, options);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t w = warm_up(engine, sink_, 0, 0);

  engine.send(w + 5);  // w+1 .. w+4 were lost
  const auto request = engine.replay_request();
  ASSERT_TRUE(request.has_value());
  EXPECT_EQ(request->second, w + 1);
  engine.replay(request->first, w + 1);
  engine.replay(request->first, w + 2);
  engine.replay(request->first, w + 3, /*with_topic=*/true);
  engine.replay(request->first, w + 4, /*with_topic=*/true);
  engine.replay(request->first, w + 5);  // the ROUTER sends everything from start_seq on
  engine.replay_end(request->first);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 5)) << describe(sink_.records());
  engine.send(w + 6);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 6)) << describe(sink_.records());

  const std::vector<Record> tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 6U) << describe(tail);
  for (std::size_t i = 0; i < tail.size(); ++i) {
    EXPECT_EQ(tail[i].kind, Record::Kind::batch) << describe(tail);
    EXPECT_EQ(tail[i].seq, w + 1 + i) << describe(tail);
  }
  const KvPublisherStats stats = subscriber.stats().at(0);
  EXPECT_EQ(stats.gaps, 1U);
  EXPECT_EQ(stats.replayed, 4U);
  EXPECT_EQ(stats.resets, 0U);
  EXPECT_EQ(stats.last_seq, w + 6);
}

TEST_F(KvSubscriberTest, GapTheReplayCannotFillResets) {
  Engine engine(context_, true);
  KvSubscriberOptions options;
  options.replay_timeout = 300ms;
  KvEventSubscriber subscriber({engine.publisher()}, sink_, options);
  ASSERT_TRUE(subscriber.start());
  std::uint64_t w = warm_up(engine, sink_, 0, 0);

  // 1. The publisher's buffer no longer starts at the gap: it answers from w+3 on.
  engine.send(w + 5);
  auto request = engine.replay_request();
  ASSERT_TRUE(request.has_value());
  EXPECT_EQ(request->second, w + 1);
  engine.replay(request->first, w + 3);
  engine.replay(request->first, w + 4);
  engine.replay_end(request->first);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 5)) << describe(sink_.records());
  std::vector<Record> tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 2U) << describe(tail);
  EXPECT_EQ(tail[0].kind, Record::Kind::reset);
  EXPECT_NE(tail[0].reason.find("jumps from " + std::to_string(w + 1) + " to " + std::to_string(w + 3)),
            std::string::npos)
      << tail[0].reason;
  EXPECT_EQ(tail[1].kind, Record::Kind::batch);
  EXPECT_EQ(tail[1].seq, w + 5);

  // 2. No answer at all: the replay times out.
  w += 5;
  engine.send(w + 3);
  request = engine.replay_request();
  ASSERT_TRUE(request.has_value());
  EXPECT_EQ(request->second, w + 1);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 3)) << describe(sink_.records());
  tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 2U) << describe(tail);
  EXPECT_EQ(tail[0].kind, Record::Kind::reset);
  EXPECT_NE(tail[0].reason.find("no complete answer within 300 ms"), std::string::npos) << tail[0].reason;
  EXPECT_EQ(tail[1].seq, w + 3);

  // 3. After a failed replay the next gap is healed again (a fresh DEALER; the late answer to the timed
  //    out request cannot be mistaken for this one).
  engine.replay(request->first, w + 1);  // late, to the old DEALER: dropped
  w += 3;
  engine.send(w + 2);
  request = engine.replay_request();
  ASSERT_TRUE(request.has_value());
  EXPECT_EQ(request->second, w + 1);
  engine.replay(request->first, w + 1);
  engine.replay_end(request->first);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 2)) << describe(sink_.records());
  tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 2U) << describe(tail);
  EXPECT_EQ(tail[0].seq, w + 1);
  EXPECT_EQ(tail[1].seq, w + 2);

  const KvPublisherStats stats = subscriber.stats().at(0);
  EXPECT_EQ(stats.gaps, 3U);
  EXPECT_EQ(stats.resets, 2U);
  EXPECT_EQ(stats.replayed, 1U);
}

TEST_F(KvSubscriberTest, GapWithoutReplayEndpointResets) {
  Engine engine(context_, false);
  KvEventSubscriber subscriber({engine.publisher()}, sink_);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t w = warm_up(engine, sink_, 0, 0);
  engine.send(w + 2);
  ASSERT_TRUE(sink_.wait_for_batch(0, w + 2));
  const std::vector<Record> tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 2U) << describe(tail);
  EXPECT_EQ(tail[0].kind, Record::Kind::reset);
  EXPECT_NE(tail[0].reason.find("gap " + std::to_string(w + 1) + ".." + std::to_string(w + 1)), std::string::npos)
      << tail[0].reason;
  EXPECT_NE(tail[0].reason.find("no replay endpoint"), std::string::npos) << tail[0].reason;
  EXPECT_EQ(tail[1].seq, w + 2);
}

TEST_F(KvSubscriberTest, SequenceGoingBackwardsIsAnEngineRestart) {
  Engine engine(context_, true);
  KvEventSubscriber subscriber({engine.publisher()}, sink_);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t w = warm_up(engine, sink_, 0, 1000);
  engine.send(0);  // the engine restarted: its sequence starts over
  engine.send(1);
  ASSERT_TRUE(sink_.wait_for_batch(0, 1)) << describe(sink_.records());
  const std::vector<Record> tail = after_batch(sink_.records(), 0, w);
  ASSERT_EQ(tail.size(), 3U) << describe(tail);
  EXPECT_EQ(tail[0].kind, Record::Kind::reset);
  EXPECT_NE(tail[0].reason.find("engine restart"), std::string::npos) << tail[0].reason;
  EXPECT_EQ(tail[1].seq, 0U);
  EXPECT_EQ(tail[2].seq, 1U);
  const KvPublisherStats stats = subscriber.stats().at(0);
  EXPECT_EQ(stats.resets, 1U);
  EXPECT_EQ(stats.gaps, 0U);  // no replay was asked for
  EXPECT_EQ(stats.last_seq, 1U);
}

TEST_F(KvSubscriberTest, PublishersAreTrackedSeparately) {
  Engine a(context_, false);
  Engine b(context_, false);
  KvEventSubscriber subscriber({a.publisher(), b.publisher()}, sink_);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t wa = warm_up(a, sink_, 0, 0);
  const std::uint64_t wb = warm_up(b, sink_, 1, 500);
  b.send(wb + 3);  // a gap in b only
  a.send(wa + 1);
  ASSERT_TRUE(sink_.wait_for_batch(1, wb + 3));
  ASSERT_TRUE(sink_.wait_for_batch(0, wa + 1));
  const std::vector<KvPublisherStats> stats = subscriber.stats();
  ASSERT_EQ(stats.size(), 2U);
  EXPECT_EQ(stats[0].resets, 0U);
  EXPECT_EQ(stats[1].resets, 1U);
  EXPECT_EQ(stats[0].last_seq, wa + 1);
  EXPECT_EQ(stats[1].last_seq, wb + 3);
  for (const Record& r : sink_.records()) {
    if (r.kind == Record::Kind::batch) {
      EXPECT_EQ(r.publisher, r.seq >= 500 ? 1U : 0U);
    }
  }
}

/// A sink that throws on every other batch: the subscriber must log and carry on.
class ThrowingSink : public RecordingSink {
 public:
  void on_batch(std::size_t publisher, const KvEventBatch& batch) override {
    RecordingSink::on_batch(publisher, batch);
    if ((calls_++ % 2) == 0) throw std::runtime_error("sink failure");
  }

 private:
  int calls_ = 0;
};

TEST_F(KvSubscriberTest, ExceptionsFromTheSinkDoNotStopTheThread) {
  Engine engine(context_, false);
  ThrowingSink sink;
  KvEventSubscriber subscriber({engine.publisher()}, sink);
  ASSERT_TRUE(subscriber.start());
  const std::uint64_t w = warm_up(engine, sink, 0, 0);
  for (std::uint64_t s = w + 1; s <= w + 4; ++s) engine.send(s);
  ASSERT_TRUE(sink.wait_for_batch(0, w + 4));
  EXPECT_EQ(subscriber.stats().at(0).resets, 0U);
}

TEST(KvSubscriber, StartErrorsAreValues) {
  RecordingSink sink;
  KvEventSubscriber bad({{"not an endpoint", ""}}, sink);
  const Result<Ok> r = bad.start();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(r.error().message.find("publisher 0 (\"not an endpoint\""), std::string::npos) << r.error().message;

  KvEventSubscriber bad_replay({{"tcp://127.0.0.1:5", "nowhere"}}, sink);
  const Result<Ok> replay = bad_replay.start();
  ASSERT_FALSE(replay);
  EXPECT_EQ(replay.error().code, ErrorCode::invalid_argument);

  KvEventSubscriber good({{"tcp://127.0.0.1:9", ""}}, sink);  // nothing listens there: connects in background
  ASSERT_TRUE(good.start());
  const Result<Ok> again = good.start();
  ASSERT_FALSE(again);  // already running
  EXPECT_EQ(again.error().code, ErrorCode::busy);
  good.stop();
  good.stop();                // idempotent
  ASSERT_TRUE(good.start());  // and restartable
  EXPECT_FALSE(good.stats().at(0).connected);

  KvEventSubscriber never_started({{"tcp://127.0.0.1:9", ""}}, sink);  // destructor without start
  KvEventSubscriber empty({}, sink);
  ASSERT_TRUE(empty.start());
}

}  // namespace
}  // namespace turnout::io
