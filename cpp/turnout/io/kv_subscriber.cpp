#include "turnout/io/kv_subscriber.hpp"

#include <zmq.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <span>
#include <system_error>
#include <thread>
#include <utility>

// Wire (docs/architecture.md, "KV events"; the engines' ZeroMQ event publishers): live messages are [topic, seq (8
// bytes, big-endian), payload], seq counting from 0 per engine process. The replay ROUTER takes [identity, "",
// start_seq] (what our DEALER's ["", start_seq] becomes) and answers, for every buffered batch with seq >= start_seq,
// ["", seq, payload], then ["", 0xFFFFFFFFFFFFFFFF, ""]. The 4-frame form ["", topic, seq, payload] is
// accepted as well.

namespace turnout::io {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kEndOfReplay = std::numeric_limits<std::uint64_t>::max();
/// Frames kept from one message: the most any valid message here has. Further frames are read and dropped.
constexpr std::size_t kMaxFramesKept = 4;
/// Messages taken from one SUB before looking at the others again.
constexpr int kMaxMessagesPerTurn = 256;

/// What went wrong, for logging once per publisher and kind.
enum class Trouble : unsigned { frames, sequence_frame, payload, unusable, replay, restart, sink, socket };

const char* to_string(Trouble t) noexcept {
  switch (t) {
    case Trouble::frames: return "frame-count";
    case Trouble::sequence_frame: return "sequence-frame";
    case Trouble::payload: return "payload";
    case Trouble::unusable: return "unusable-event";
    case Trouble::replay: return "replay";
    case Trouble::restart: return "restart";
    case Trouble::sink: return "sink";
    case Trouble::socket: return "socket";
  }
  return "other";
}

/// One message's frames (the first kMaxFramesKept of them) and how many it had.
struct Message {
  std::array<zmq::message_t, kMaxFramesKept> frames;
  std::size_t count = 0;
};

/// Receives one whole message without blocking; false when none is waiting. ZeroMQ delivers the frames
/// of a message together, so once the first is here the others are too.
bool receive(zmq::socket_t& socket, Message& out) {
  out.count = 0;
  zmq::message_t part;
  if (!socket.recv(part, zmq::recv_flags::dontwait)) return false;
  for (;;) {
    const bool more = part.more();
    if (out.count < kMaxFramesKept) out.frames[out.count] = std::move(part);
    ++out.count;
    if (!more) return true;
    part = zmq::message_t();
    if (!socket.recv(part, zmq::recv_flags::dontwait)) return true;
  }
}

/// A sequence frame: exactly 8 bytes, big-endian.
std::optional<std::uint64_t> sequence_of(const zmq::message_t& frame) noexcept {
  if (frame.size() != 8) return std::nullopt;
  const auto* p = static_cast<const unsigned char*>(frame.data());
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v = (v << 8U) | p[i];
  return v;
}

std::array<unsigned char, 8> big_endian(std::uint64_t v) noexcept {
  std::array<unsigned char, 8> out{};
  for (std::size_t i = 0; i < 8; ++i) out[7 - i] = static_cast<unsigned char>(v >> (8 * i));
  return out;
}

std::span<const std::byte> bytes_of(const zmq::message_t& frame) noexcept {
  return {static_cast<const std::byte*>(frame.data()), frame.size()};
}

zmq::pollitem_t poll_in(zmq::socket_t& socket) noexcept { return {socket.handle(), 0, ZMQ_POLLIN, 0}; }

/// Monitor endpoints are inproc names in this subscriber's context; a counter keeps them unique across
/// restarts (a closed socket's monitor may still hold its name for a moment).
std::atomic<std::uint64_t> monitor_counter{0};

}  // namespace

struct KvEventSubscriber::Impl {
  /// One publisher's sockets. Created by start() on the caller's thread, then used only by the background
  /// thread until stop() has joined it (thread start and join order the accesses).
  struct Link {
    std::size_t index = 0;
    zmq::socket_t sub;
    zmq::socket_t monitor;  ///< PAIR receiving the SUB's connect/disconnect events
    zmq::socket_t replay;   ///< DEALER; no handle when the publisher has no replay endpoint
    unsigned logged = 0;    ///< Trouble kinds already written to stderr
  };

  Impl(std::vector<KvPublisher> p, KvEventSink& s, KvSubscriberOptions o)
      : publishers(std::move(p)),
        sink(s),
        options(std::move(o)),
        last_seq(publishers.size()),
        stats(publishers.size()) {
    options.poll_interval = std::max(options.poll_interval, std::chrono::milliseconds(1));
  }

  const std::vector<KvPublisher> publishers;
  KvEventSink& sink;
  KvSubscriberOptions options;
  zmq::context_t context;  // before `links`: every socket closes before the context terminates
  std::vector<Link> links;
  std::vector<std::optional<std::uint64_t>> last_seq;  // the thread's while it runs
  mutable std::mutex mutex;
  std::vector<KvPublisherStats> stats;  // under `mutex`
  std::atomic<bool> stop_requested{false};
  bool logged_loop_error = false;
  std::thread thread;

  // ---- set-up (caller's thread) ----

  zmq::socket_t open_replay(std::size_t i) {
    zmq::socket_t dealer(context, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.set(zmq::sockopt::maxmsgsize, max_message_size());
    dealer.connect(publishers[i].replay_endpoint);
    return dealer;
  }

  [[nodiscard]] std::int64_t max_message_size() const noexcept {
    const std::size_t limit = options.limits.max_payload_bytes;
    return limit > static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max())
               ? -1
               : static_cast<std::int64_t>(limit);
  }

  Link open_link(std::size_t i) {
    Link link;
    link.index = i;
    link.sub = zmq::socket_t(context, zmq::socket_type::sub);
    link.sub.set(zmq::sockopt::linger, 0);
    link.sub.set(zmq::sockopt::maxmsgsize, max_message_size());  // larger frames: ZeroMQ drops the connection
    link.sub.set(zmq::sockopt::subscribe, options.topic);
    const std::string monitor_endpoint = "inproc://turnout-kv-monitor-" + std::to_string(monitor_counter++);
    if (zmq_socket_monitor(link.sub.handle(), monitor_endpoint.c_str(), ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) !=
        0) {
      throw zmq::error_t();
    }
    link.monitor = zmq::socket_t(context, zmq::socket_type::pair);
    link.monitor.set(zmq::sockopt::linger, 0);
    link.monitor.connect(monitor_endpoint);
    link.sub.connect(publishers[i].endpoint);
    if (!publishers[i].replay_endpoint.empty()) link.replay = open_replay(i);
    return link;
  }

  // ---- the background thread ----

  template <class F>
  void update(std::size_t i, F&& f) {
    const std::lock_guard<std::mutex> lock(mutex);
    f(stats[i]);
  }

  void log_once(Link& link, Trouble kind, const std::string& what) noexcept {
    const unsigned bit = 1U << static_cast<unsigned>(kind);
    if ((link.logged & bit) != 0) return;
    link.logged |= bit;
    std::fprintf(stderr, "turnout: kv events from %s: %s (further %s problems from it are counted, not logged)\n",
                 publishers[link.index].endpoint.c_str(), what.c_str(), to_string(kind));
  }

  template <class F>
  void call_sink(Link& link, F&& f) noexcept {
    try {
      f();
    } catch (const std::exception& e) {
      log_once(link, Trouble::sink, std::string("the sink threw: ") + e.what());
    } catch (...) {
      log_once(link, Trouble::sink, "the sink threw a non-standard exception");
    }
  }

  void reject(Link& link, Trouble kind, const std::string& reason) {
    update(link.index, [](KvPublisherStats& s) { ++s.rejected; });
    log_once(link, kind, "rejected: " + reason);
    call_sink(link, [&] { sink.on_rejected(link.index, reason); });
  }

  void reset(Link& link, Trouble kind, const std::string& reason) {
    update(link.index, [](KvPublisherStats& s) { ++s.resets; });
    log_once(link, kind, "state reset: " + reason);
    call_sink(link, [&] { sink.on_reset(link.index, reason); });
  }

  /// Decodes and hands over one batch; false (after on_rejected) when the payload does not decode.
  bool apply(Link& link, std::uint64_t seq, const zmq::message_t& payload, bool replayed) {
    Result<KvEventBatch> batch = decode_kv_events(bytes_of(payload), options.limits);
    if (!batch) {
      reject(link, Trouble::payload, "seq " + std::to_string(seq) + ": " + batch.error().message);
      return false;
    }
    if (batch->unusable > 0) {
      log_once(link, Trouble::unusable,
               "seq " + std::to_string(seq) + ": dropped " + std::to_string(batch->unusable) +
                   " unusable event(s), applied the rest (counted as `unusable` in the Router's KV stats); the "
                   "first: " +
                   batch->unusable_reason);
    }
    update(link.index, [replayed](KvPublisherStats& s) {
      ++s.applied;
      if (replayed) ++s.replayed;
    });
    call_sink(link, [&] { sink.on_batch(link.index, *batch); });
    return true;
  }

  /// Asks the replay ROUTER for [from, to) and applies those batches in order. Returns "" when all of
  /// them were applied, else why not.
  std::string replay(Link& link, std::uint64_t from, std::uint64_t to) {
    const Clock::time_point deadline = Clock::now() + options.replay_timeout;
    const std::array<unsigned char, 8> start = big_endian(from);
    if (!link.replay.send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait) ||
        !link.replay.send(zmq::buffer(start), zmq::send_flags::dontwait)) {
      return "the replay request could not be queued";
    }
    std::uint64_t next = from;
    Message reply;
    for (;;) {
      if (stop_requested.load()) return "stopping";
      const Clock::time_point now = Clock::now();
      if (now >= deadline) {
        return "no complete answer within " + std::to_string(options.replay_timeout.count()) + " ms (had up to " +
               std::to_string(next) + ")";
      }
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
      zmq::pollitem_t item = poll_in(link.replay);
      try {
        zmq::poll(&item, 1, std::min(left, options.poll_interval));
      } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) throw;  // a signal: poll again
        continue;
      }
      while (receive(link.replay, reply)) {
        if ((reply.count != 3 && reply.count != 4) || !reply.frames[0].empty()) {
          return "a replay reply of " + std::to_string(reply.count) + " frames, expected [\"\", (topic,) seq, payload]";
        }
        const zmq::message_t& payload = reply.frames[reply.count - 1];
        const std::optional<std::uint64_t> seq = sequence_of(reply.frames[reply.count - 2]);
        if (!seq) return "a replay reply whose sequence frame is not 8 bytes";
        if (*seq == kEndOfReplay) {
          if (!payload.empty()) return "an end-of-replay marker with a payload";
          return next == to ? std::string() : "the replay ended before " + std::to_string(next);
        }
        if (*seq < next || *seq >= to) continue;  // already applied, or arrives live
        if (*seq > next) {
          return "the replay jumps from " + std::to_string(next) + " to " + std::to_string(*seq) +
                 " (no longer in the publisher's buffer)";
        }
        if (!apply(link, *seq, payload, true)) return "replayed batch " + std::to_string(*seq) + " does not decode";
        if (++next == to) return {};  // the rest (later batches, end marker) is dropped with the socket
      }
    }
  }

  /// A gap [from, to): replay it if possible. Returns "" when filled.
  std::string fill_gap(Link& link, std::uint64_t from, std::uint64_t to) {
    if (!static_cast<bool>(link.replay)) return "the publisher has no replay endpoint";
    std::string why;
    try {
      why = replay(link, from, to);
    } catch (const zmq::error_t& e) {
      why = std::string("replay socket error: ") + e.what();
    }
    // A fresh DEALER for the next gap, so late replies to this request can never be taken for its own.
    try {
      link.replay.close();
      link.replay = open_replay(link.index);
    } catch (const zmq::error_t& e) {
      log_once(link, Trouble::socket, std::string("cannot reopen the replay socket: ") + e.what());
    }
    return why;
  }

  void on_message(Link& link, const Message& message) {
    update(link.index, [](KvPublisherStats& s) { ++s.received; });
    if (message.count != 3) {
      reject(link, Trouble::frames,
             "a message of " + std::to_string(message.count) + " frames, expected 3 [topic, seq, payload]");
      return;
    }
    const std::optional<std::uint64_t> seq = sequence_of(message.frames[1]);
    if (!seq) {
      reject(link, Trouble::sequence_frame,
             "a sequence frame of " + std::to_string(message.frames[1].size()) + " bytes, expected 8");
      return;
    }
    std::optional<std::uint64_t>& last = last_seq[link.index];
    if (last) {
      if (*seq > *last && *seq - *last > 1) {
        update(link.index, [](KvPublisherStats& s) { ++s.gaps; });
        const std::string why = fill_gap(link, *last + 1, *seq);
        if (!why.empty()) {
          reset(
              link, Trouble::replay,
              "sequence gap " + std::to_string(*last + 1) + ".." + std::to_string(*seq - 1) + " not replayed: " + why);
        }
      } else if (*seq <= *last) {
        reset(link, Trouble::restart,
              "sequence went from " + std::to_string(*last) + " to " + std::to_string(*seq) + " (engine restart)");
      }
    }
    last = *seq;
    update(link.index, [&](KvPublisherStats& s) { s.last_seq = *seq; });
    apply(link, *seq, message.frames[2], false);
  }

  void drain_monitor(Link& link) {
    Message event;
    while (receive(link.monitor, event)) {
      if (event.count < 1 || event.frames[0].size() < sizeof(std::uint16_t)) continue;
      std::uint16_t id = 0;  // frame 1: event id (uint16, host order), value (uint32)
      std::memcpy(&id, event.frames[0].data(), sizeof id);
      if (id == ZMQ_EVENT_CONNECTED) update(link.index, [](KvPublisherStats& s) { s.connected = true; });
      if (id == ZMQ_EVENT_DISCONNECTED) update(link.index, [](KvPublisherStats& s) { s.connected = false; });
    }
  }

  void run() noexcept {
    std::vector<zmq::pollitem_t> items;
    try {
      for (Link& link : links) {
        items.push_back(poll_in(link.sub));
        items.push_back(poll_in(link.monitor));
      }
    } catch (...) {
      std::fprintf(stderr, "turnout: kv events: cannot start the subscriber thread\n");
      return;
    }
    Message message;
    while (!stop_requested.load()) {
      try {
        zmq::poll(items, options.poll_interval);
        for (std::size_t i = 0; i < links.size(); ++i) {
          Link& link = links[i];
          if ((items[2 * i + 1].revents & ZMQ_POLLIN) != 0) drain_monitor(link);
          if ((items[2 * i].revents & ZMQ_POLLIN) == 0) continue;
          for (int n = 0; n < kMaxMessagesPerTurn && !stop_requested.load() && receive(link.sub, message); ++n) {
            on_message(link, message);
          }
        }
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        if (e.num() != EINTR) loop_error(e.what());
      } catch (const std::exception& e) {
        loop_error(e.what());
      } catch (...) {
        loop_error("a non-standard exception");
      }
    }
  }

  /// An error outside any one message: logged once, then a pause so a persistent one cannot spin.
  void loop_error(const char* what) noexcept {
    if (!logged_loop_error) {
      logged_loop_error = true;
      std::fprintf(stderr, "turnout: kv events: subscriber loop error: %s (further ones are not logged)\n", what);
    }
    std::this_thread::sleep_for(options.poll_interval);
  }
};

KvEventSubscriber::KvEventSubscriber(std::vector<KvPublisher> publishers, KvEventSink& sink,
                                     KvSubscriberOptions options)
    : impl_(std::make_unique<Impl>(std::move(publishers), sink, std::move(options))) {}

KvEventSubscriber::~KvEventSubscriber() { stop(); }

Result<Ok> KvEventSubscriber::start() {
  Impl& s = *impl_;
  if (s.thread.joinable()) return make_error(ErrorCode::busy, "kv subscriber: already started");
  std::vector<Impl::Link> links;
  links.reserve(s.publishers.size());
  for (std::size_t i = 0; i < s.publishers.size(); ++i) {
    try {
      links.push_back(s.open_link(i));
    } catch (const zmq::error_t& e) {
      // An endpoint ZeroMQ cannot parse is the caller's; anything else (sockets, files) is the OS's.
      const bool bad_endpoint = e.num() == EINVAL || e.num() == EPROTONOSUPPORT || e.num() == ENOCOMPATPROTO;
      return make_error(bad_endpoint ? ErrorCode::invalid_argument : ErrorCode::io_error,
                        "kv subscriber: publisher " + std::to_string(i) + " (\"" + s.publishers[i].endpoint +
                            "\", replay \"" + s.publishers[i].replay_endpoint + "\"): " + e.what());
    }
  }
  s.links = std::move(links);
  s.stop_requested = false;
  try {
    s.thread = std::thread([&s] { s.run(); });
  } catch (const std::system_error& e) {
    s.links.clear();
    return make_error(ErrorCode::io_error, std::string("kv subscriber: cannot start its thread: ") + e.what());
  }
  return Ok{};
}

void KvEventSubscriber::stop() noexcept {
  Impl& s = *impl_;
  s.stop_requested = true;
  if (s.thread.joinable()) {
    try {
      s.thread.join();
    } catch (const std::system_error&) {
      // join only fails for a thread that is not joinable or is this one; neither can happen here
    }
  }
  s.links.clear();  // closes the sockets (linger 0)
  const std::lock_guard<std::mutex> lock(s.mutex);
  for (KvPublisherStats& st : s.stats) st.connected = false;
}

std::vector<KvPublisherStats> KvEventSubscriber::stats() const {
  const std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->stats;
}

}  // namespace turnout::io
