#pragma once
// The sidecar's request handling, independent of sockets: one msgpack request in, one msgpack reply out.
// Owns the Router (swapped on reload), journals every mutation to the state directory before its
// reply (sidecar/state_store.hpp) and mirrors the ledger into the shared-memory segment (a view).

#include <atomic>
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
#include "sidecar/state_store.hpp"
#include "sidecar/trace_recorder.hpp"
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
  /// Loads the config and the state directory's snapshot and journal (replayed), carries that state
  /// over to the config by names, then opens the segment and publishes the state into it. Without
  /// saved state, a dead owner's segment counters are taken over. An empty `state_dir` keeps no
  /// state on disk (in-process tests and benches; the daemon always has one). Errors are one line.
  [[nodiscard]] static Result<Started> start(const std::string& config_path, const std::string& shm_name,
                                             const std::string& state_dir = {});
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
  /// Whether only this user (ipc://, 0600, owner-checked) or CURVE-authenticated peers reach the
  /// socket (true, the default), or every local user can (loopback TCP without CURVE): migration
  /// commands are refused with permission_denied on such a socket, read-write or not.
  void set_trusted(bool trusted) noexcept { trusted_ = trusted; }
  /// Where each migration transition is told, one line (the daemon's log); none by default.
  using MigrationLog = std::function<void(const std::string& line)>;
  void on_migration(MigrationLog log) { migration_log_ = std::move(log); }
  /// Runs the migrations' analyses if one is due at `now` (the serving loop, every turn): journaled
  /// first (a restart re-runs it at the same time), then applied; each transition is logged and the
  /// fast path's weights follow.
  void migration_tick(std::int64_t now_ms) noexcept;
  /// Says how a reload went (`why`: what asked for it, e.g. "SIGHUP"), for the log.
  using ReloadLog = std::function<void(std::string_view why, const Result<Ok>& result)>;
  /// Re-reads the config file: validated, and every step that can fail (a bigger counter segment,
  /// the journal record) done, before anything changes; on error the old table, segment and ledger
  /// serve as they were. The new table takes the whole live state over by names (ledger, budgets,
  /// breakers, pending decisions). Either way the outcome is recorded (last_reload(), stats,
  /// /metrics) and passed to the log.
  [[nodiscard]] Result<Ok> reload(std::string_view why, std::int64_t now_ms);
  /// Where reload() reports (the daemon's log); none by default.
  void on_reload(ReloadLog log) { reload_log_ = std::move(log); }
  /// How the last reload went (any thread).
  [[nodiscard]] protocol::ReloadStatus last_reload() const;
  /// Every ~100 ms: the segment's heartbeat, once a second the directories' TTL expiry, and a
  /// snapshot when the journal is half full.
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
  /// A reply the socket could not queue (the peer does not read, or is gone); shown on /metrics.
  void count_unsent_reply() { unsent_replies_.fetch_add(1, std::memory_order_relaxed); }
  /// The generation being served (any thread).
  [[nodiscard]] std::uint64_t generation() const;
  [[nodiscard]] std::string config_version() const;
  /// Mirrors every row into the segment and snapshots the state (an orderly stop).
  void flush();
  /// Writes a snapshot of the live state and restarts the journal.
  [[nodiscard]] Result<Ok> snapshot();
  /// Records every decision served from now on into `recorder` (--record; before serving starts).
  void record(std::unique_ptr<TraceRecorder> recorder) { trace_ = std::move(recorder); }
  /// Reopens the trace file, if recording (SIGHUP: log rotation).
  void reopen_trace() {
    if (trace_) trace_->reopen();
  }
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
  /// Journals one mutation before its reply; an error when the journal is full and no snapshot
  /// could make room (the mutation is then refused or, for a ring record, counted as not durable).
  [[nodiscard]] Result<Ok> journal(RecordKind kind, std::uint32_t ring, std::int64_t now_ms, std::string_view bytes);
  /// Logs `t`, a move of `scenario`'s migration, on one line (on_migration).
  void log_transition(std::uint32_t scenario, const MigrationTransition& t) const;

  std::string config_path_;
  std::int64_t started_ms_ = 0;
  protocol::DecodeLimits limits_;
  std::unique_ptr<Segment> segment_;
  // Guards what other threads read (the metrics thread, the KV thread): the pointers, the
  // generation and the reload status. The serving thread is the only writer.
  mutable std::mutex router_mu_;
  std::shared_ptr<Router> router_;  // the current table, holding every table's live state
  std::uint64_t generation_ = 0;    // router_'s (the segment's, read without mapping it)
  protocol::ReloadStatus last_reload_;
  ReloadLog reload_log_;
  ConfigPtr previous_config_;              // the table before the last reload (fast-path adopts made from it)
  std::unique_ptr<StateStore> store_;      // the snapshot and journal (none: nothing kept on disk)
  std::uint64_t first_id_ = 0;             // router_'s first decision id
  std::vector<CounterRow> published_;      // what the segment holds, to write only changed rows
  std::unique_ptr<TablePublisher> table_;  // router_'s table, live state and directories, for the fast path
  std::unique_ptr<RingReader> rings_;
  std::string fast_note_;                         // why the fast path is off, if it is
  std::uint64_t ring_applied_ = 0;                // ring records applied
  std::uint64_t ring_rejected_ = 0;               // ... and answered with an error (logged once per code)
  std::atomic<std::uint64_t> not_journaled_{0};   // ring records applied while the journal was full (/metrics)
  std::atomic<bool> snapshot_ok_{true};           // the last snapshot was written (/metrics)
  std::atomic<std::uint64_t> unsent_replies_{0};  // replies the socket could not queue (/metrics)
  std::string snapshot_error_;                    // why the last snapshot failed ("" when it did not)
  std::int64_t last_snapshot_try_ms_ = 0;
  std::int64_t last_expiry_ms_ = 0;
  /// Maps the imported local decisions' spool ids (settlements_) if not yet.
  [[nodiscard]] Result<Ok> open_settlements();
  std::unique_ptr<LocalSettlements> settlements_;                 // imported local decisions (opened on the first)
  protocol::Channel socket_channel_ = protocol::Channel::socket;  // read_only_socket: set_read_only
  bool trusted_ = true;                                           // set_trusted
  MigrationLog migration_log_;                                    // on_migration
  std::unique_ptr<TraceRecorder> trace_;                          // --record (none: not recording)

  friend struct Handler;  // the op handlers (server.cpp)
};

}  // namespace turnout::sidecar
