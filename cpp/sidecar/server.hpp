#pragma once
// The sidecar's request handling, independent of sockets: one msgpack request in, one msgpack reply out.
// Owns the Router (swapped on reload) and mirrors the ledger into the shared-memory segment.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "sidecar/fastpath.hpp"
#include "sidecar/settlements.hpp"
#include "sidecar/shm.hpp"
#include "turnout/protocol.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"

namespace turnout::sidecar {

using protocol::kGenerationShift;  ///< decision id = generation << 40 | sequence

class Server {
 public:
  struct Started {
    std::unique_ptr<Server> server;
    std::string note;  ///< what happened to the segment, for the log
  };
  /// Loads the config, opens (or re-attaches) the segment, restores its counters. Errors are one line.
  [[nodiscard]] static Result<Started> start(const std::string& config_path, const std::string& shm_name);
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();

  /// One request -> one reply. Never throws; bad input is an error reply.
  [[nodiscard]] std::string handle(std::string_view payload, std::int64_t now_ms) noexcept;
  /// The same for a record of fast-path ring `ring` (only adopt, report and verdict; an adopt's id
  /// must be one of that ring's). drain_rings() calls it; public for the fuzz test.
  [[nodiscard]] std::string handle(std::string_view payload, std::int64_t now_ms, std::uint32_t ring) noexcept;
  /// Refuses every op that writes (protocol::OpInfo::writes) on the socket: loopback TCP without CURVE.
  void set_read_only(bool read_only) noexcept {
    socket_channel_ = read_only ? protocol::Channel::read_only_socket : protocol::Channel::socket;
  }
  /// Says how a reload went (`why`: what asked for it, e.g. "SIGHUP"), for the log.
  using ReloadLog = std::function<void(std::string_view why, const Result<Ok>& result)>;
  /// Re-reads the config file: validated, and every step that can fail (a bigger counter segment)
  /// done, before anything changes; on error the old table, segment and ledger serve as they were.
  /// Either way the outcome is recorded (last_reload(), stats, /metrics) and passed to the log.
  [[nodiscard]] Result<Ok> reload(std::string_view why, std::int64_t now_ms);
  /// Where reload() reports (the daemon's log); none by default.
  void on_reload(ReloadLog log) { reload_log_ = std::move(log); }
  /// How the last reload went (any thread).
  [[nodiscard]] protocol::ReloadStatus last_reload() const;
  /// Every ~100 ms: the segment's heartbeat, and once a second the directories' TTL expiry.
  void heartbeat(std::int64_t now_ms) noexcept;
  /// Applies what fast-path clients posted to their rings (the serving thread, every loop turn).
  std::size_t drain_rings(std::int64_t now_ms);
  /// Clients holding a fast-path ring (the loop polls faster while there are any).
  [[nodiscard]] std::uint32_t fast_clients() const noexcept;
  struct FastPathStats {
    bool enabled = false;
    std::uint64_t records = 0;   ///< ring records applied
    std::uint64_t rejected = 0;  ///< ... that were answered with an error
    std::uint64_t view_dropped = 0;
  };
  [[nodiscard]] FastPathStats fast_path() const noexcept;
  /// Prometheus text exposition (any thread: it reads only what router_mu_ guards, never the
  /// segment, which a reload may replace meanwhile).
  [[nodiscard]] std::string metrics(std::int64_t now_ms) const;
  /// The generation being served (any thread).
  [[nodiscard]] std::uint64_t generation() const;
  [[nodiscard]] std::string config_version() const;
  /// Mirrors every row into the segment (shutdown).
  void flush();
  /// The current table's Router (any thread; a reload swaps it).
  [[nodiscard]] std::shared_ptr<Router> router() const;

 private:
  Server() = default;
  /// reload() but the recording: the new table in, or an error and nothing changed.
  [[nodiscard]] Result<Ok> swap_table();
  void sync_rows();
  /// Mirrors the one row a route changed (the hot path: no full snapshot).
  void sync_row(std::uint32_t scenario, std::uint32_t target);
  void publish_state();
  /// Publishes `router`'s table for the fast path (start, reload; `replaced` stops being observed);
  /// on failure the socket still serves.
  void publish_table(std::uint64_t generation, Router& router, Router* replaced);
  void sync_rows_locked(const Router& r);
  /// Adds what `old` gained between two snapshots to the current router's rows of the same names.
  void carry_delta(const Router& old, const std::vector<CounterRow>& before);

  std::string config_path_;
  std::int64_t started_ms_ = 0;
  protocol::DecodeLimits limits_;
  std::unique_ptr<Segment> segment_;
  // Guards what other threads read (the metrics thread, the KV thread): the pointers, the
  // generation and the reload status. The serving thread is the only writer.
  mutable std::mutex router_mu_;
  std::shared_ptr<Router> router_;  // the current table
  std::uint64_t generation_ = 0;    // router_'s (the segment's, read without mapping it)
  protocol::ReloadStatus last_reload_;
  ReloadLog reload_log_;
  std::shared_ptr<Router> previous_;  // the table before the last reload: its decisions still report
  std::uint64_t first_id_ = 0;        // router_'s first decision id
  std::uint64_t previous_first_id_ = 0;
  std::vector<CounterRow> published_;      // what the segment holds, to write only changed rows
  std::unique_ptr<TablePublisher> table_;  // router_'s table, live state and directories, for the fast path
  std::unique_ptr<RingReader> rings_;
  std::string fast_note_;            // why the fast path is off, if it is
  std::uint64_t ring_applied_ = 0;   // ring records applied
  std::uint64_t ring_rejected_ = 0;  // ... and answered with an error (logged once per code)
  std::int64_t last_expiry_ms_ = 0;
  std::unique_ptr<LocalSettlements> settlements_;  // imported local decisions (opened on the first)
  protocol::Channel socket_channel_ = protocol::Channel::socket;  // read_only_socket: set_read_only

  friend struct Handler;  // the op handlers (server.cpp)
};

}  // namespace turnout::sidecar
