#pragma once
// Opt-in recording of the sidecar's own traffic in the Turnout trace format (JSON Lines, docs/replay.md),
// so a team replays production through the what-if engine. The serving thread only copies a small
// event into a bounded buffer (no allocation, no I/O; a full buffer drops the event and counts it); a
// writer thread joins a decision with its first ok outcome and verdict, hashes its prompt and key, and
// appends one line per decision. See docs/operations.md, "Recording traffic".

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "turnout/decision.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/sim/prompt.hpp"
#include "turnout/usage.hpp"

namespace turnout::sidecar {

/// What `--record` and its companion flags ask for.
struct TraceOptions {
  std::string path;                                  ///< the trace file ("" = not recording)
  bool raw_keys = false;                             ///< --record-keys: the key itself, not its hash
  bool prompt_text = false;                          ///< --record-text: the prompt as sent, not its hashes
  std::size_t buffer_bytes = std::size_t{8} << 20;   ///< --record-buffer: events waiting for the writer
  TimeMs wait_ms = RouterOptions{}.decision_ttl_ms;  ///< --record-wait: how long a decision waits for its ok outcome
};

/// The tokens per block of a recorded prompt's `blocks`: the simulator's chain (turnout::sim::chain_of).
inline constexpr std::int64_t kTraceBlockTokens = sim::kChainTokens;

/// The keyed hash of a request key in a trace: SipHash-2-4 under a 128-bit key drawn at random when the
/// recorder starts (never written anywhere), as 16 hex digits. Stable for the life of one sidecar
/// process (across SIGHUP reopens), not reversible without the key. Public for the unit test.
[[nodiscard]] std::uint64_t siphash24(const std::uint64_t (&key)[2], std::string_view data) noexcept;

/// A trace line's JSON string literal of `text` (quotes and escapes; invalid UTF-8 becomes U+FFFD).
void append_json_string(std::string& out, std::string_view text);

class TraceRecorder {
 public:
  /// How the recorder logs (its writer thread calls it): a write error, a reopen.
  using Log = std::function<void(std::string_view message)>;

  /// Opens (creating it mode 0600) `options.path` for appending, without following a symlink, and
  /// refuses a file another user owns or others may read (permission_denied, naming the path);
  /// writes `{"turnout_trace": 1}` into a new file; starts the writer thread.
  [[nodiscard]] static Result<std::unique_ptr<TraceRecorder>> open(TraceOptions options, Log log);
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;
  /// Writes what is buffered, then every decision still waiting (as without an outcome), and closes.
  ~TraceRecorder();

  /// A committed decision (the serving thread). `request` names the prompt (token ids or text) and
  /// the caller's figures; none for a fast-path adopt or an imported local decision.
  void decided(std::uint64_t id, TimeMs at, std::string_view scenario, const RouteRequest* request) noexcept;
  /// An outcome report of decision `id` (`usage`: the normalized usage, if the report carried one).
  void outcome(std::uint64_t id, Status status, const Usage* usage, std::optional<bool> accepted) noexcept;
  /// A verdict of decision `id`.
  void verdict(std::uint64_t id, bool accepted) noexcept;
  /// Asks the writer to reopen the file at the path (SIGHUP, after log rotation moved it).
  void reopen() noexcept;
  /// Makes the writer handle every buffered event now and waits for it (tests; a stop).
  void sync();

  struct Stats {
    std::uint64_t records = 0;       ///< lines written
    std::uint64_t dropped = 0;       ///< events dropped: the buffer was full
    std::uint64_t write_errors = 0;  ///< lines lost to a failed write (disk full...)
  };
  [[nodiscard]] Stats stats() const noexcept;

 private:
  TraceRecorder() = default;
  struct Pending;
  struct Writer;
  /// Appends one event (header + payloads) to the buffer, or counts it dropped.
  void push(const void* head, std::size_t head_bytes, std::span<const std::string_view> parts) noexcept;
  void run();

  TraceOptions options_;
  Log log_;
  std::uint64_t hash_key_[2] = {0, 0};
  int fd_ = -1;

  std::mutex mu_;  // guards front_, used_, reopen_, stop_, synced_, wanted_
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<char> front_;  // the serving thread appends here
  std::size_t used_ = 0;
  std::vector<char> back_;  // the writer reads the swapped buffer here
  bool reopen_ = false;
  bool stop_ = false;
  std::uint64_t wanted_ = 0;  // sync() requests
  std::uint64_t synced_ = 0;  // ... handled
  std::atomic<std::uint64_t> records_{0};
  std::atomic<std::uint64_t> dropped_{0};
  std::atomic<std::uint64_t> write_errors_{0};
  std::unique_ptr<Writer> writer_;  // the writer thread's state (pending decisions)
  std::thread thread_;
};

}  // namespace turnout::sidecar
