#pragma once
// Subscribes to the engines' KV-event streams (docs/architecture.md, "KV events"): one ZeroMQ SUB per replica, a DEALER
// to its replay ROUTER when it has one, and one background thread that decodes each batch and hands it
// to a KvEventSink in sequence order. This is the io layer (turnout::io): the core stays socket-free.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "turnout/kv_events.hpp"
#include "turnout/result.hpp"

namespace turnout::io {

/// One replica's publisher: its PUB endpoint and, when it has one, its replay ROUTER endpoint.
struct KvPublisher {
  std::string endpoint;         ///< e.g. "tcp://10.0.0.7:5557" (the SUB connects to it)
  std::string replay_endpoint;  ///< "" = no replay: a sequence gap then always means a reset
};

/// Set-up for KvEventSubscriber, with its defaults.
struct KvSubscriberOptions {
  std::string topic;  ///< SUB prefix filter; "" = every message
  /// Longest a gap's replay exchange may take before the publisher is reset. The one thread waits for
  /// it, so the other publishers' messages wait (queued in their sockets) meanwhile.
  std::chrono::milliseconds replay_timeout{500};
  std::chrono::milliseconds poll_interval{20};  ///< longest wait between checks of stop()
  KvDecodeLimits limits;                        ///< per payload; also the SUB's ZMQ_MAXMSGSIZE
};

/// Counters for one publisher, read with KvEventSubscriber::stats(). Each is updated before the sink call
/// it counts, so once the sink has seen something, stats() includes it.
struct KvPublisherStats {
  std::uint64_t received = 0;             ///< live messages received, rejected ones included
  std::uint64_t applied = 0;              ///< batches handed to on_batch (live and replayed)
  std::uint64_t rejected = 0;             ///< messages or replies handed to on_rejected
  std::uint64_t gaps = 0;                 ///< sequence gaps seen (filled by replay or not)
  std::uint64_t replayed = 0;             ///< batches applied from replay
  std::uint64_t resets = 0;               ///< on_reset calls
  std::optional<std::uint64_t> last_seq;  ///< last sequence number accepted
  bool connected = false;                 ///< the SUB's TCP (or IPC) connection is up
};

/// Receives the decoded stream. Every call comes from the subscriber's one background thread, in order;
/// an exception thrown from a call is caught, logged and otherwise ignored.
class KvEventSink {
 public:
  virtual ~KvEventSink() = default;
  /// One batch, in sequence order (replayed batches included, before the live one that revealed the gap).
  virtual void on_batch(std::size_t publisher, const KvEventBatch& batch) = 0;
  /// Drop everything known about this publisher: a gap replay could not fill, or the engine restarted.
  /// The batch that revealed it follows with on_batch.
  virtual void on_reset(std::size_t publisher, const std::string& reason) = 0;
  /// A message that could not be used (bad frames, bad sequence frame, undecodable payload). When it had
  /// a valid sequence number its events are lost; the sequence moves on past it.
  virtual void on_rejected(std::size_t publisher, const std::string& reason) = 0;
};

/// Owns a ZeroMQ context and one background thread; not copyable or movable (the thread holds `this`).
/// `publisher` in every sink call and in stats() is the index into the vector given here.
class KvEventSubscriber {
 public:
  KvEventSubscriber(std::vector<KvPublisher> publishers, KvEventSink& sink, KvSubscriberOptions options = {});
  ~KvEventSubscriber();  ///< stops
  KvEventSubscriber(const KvEventSubscriber&) = delete;
  KvEventSubscriber& operator=(const KvEventSubscriber&) = delete;
  KvEventSubscriber(KvEventSubscriber&&) = delete;
  KvEventSubscriber& operator=(KvEventSubscriber&&) = delete;

  /// Creates and connects the sockets (on this thread, so a malformed endpoint is an error here, not in
  /// the background), then starts the thread. invalid_argument for an endpoint ZeroMQ cannot parse,
  /// io_error if a socket or the thread cannot be made, busy if already running.
  [[nodiscard]] Result<Ok> start();
  /// Asks the thread to stop and joins it (within about poll_interval, mid-replay too); closes the
  /// sockets. Idempotent. Sequence numbers are kept, so a later start() detects what it missed.
  void stop() noexcept;
  /// A snapshot of every publisher's counters, in the order given to the constructor.
  [[nodiscard]] std::vector<KvPublisherStats> stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace turnout::io
