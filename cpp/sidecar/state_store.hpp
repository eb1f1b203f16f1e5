#pragma once
// The sidecar's durable state under its state directory: a snapshot of the Router's live state
// (turnout/live_state.hpp) and a journal of every mutation applied since. A restart loads the
// snapshot and replays the journal through the same Router calls, with the times recorded, so the
// ledger, budgets, breakers and pending decisions come back exactly as they were acknowledged.
//
// What each failure can lose (docs/operations.md, "What survives a crash"):
//   kill -9, a crash      nothing: the journal is a shared file mapping written before each reply;
//   an orderly reboot     nothing: the kernel writes the mapping's dirty pages back on shutdown;
//   a power cut           at most the last ~1 s of mutations (a background msync every second).

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <msgpack.hpp>

#include "turnout/live_state.hpp"
#include "turnout/result.hpp"
#include "turnout/state.hpp"

namespace turnout::sidecar {

/// The state directory when --state-dir is not given: $STATE_DIRECTORY (systemd's StateDirectory=),
/// else $XDG_STATE_HOME/turnout, else $HOME/.local/state/turnout.
[[nodiscard]] std::string default_state_dir();

/// What a snapshot holds: the live state, the table it was taken under, and the epoch whose journal
/// records follow it.
struct Snapshot {
  std::uint64_t epoch = 0;       ///< journal records of this epoch come after it; older ones are in it
  std::uint64_t generation = 0;  ///< the last decision-id generation issued (ids never repeat)
  std::string config_source;     ///< the config file's path, for messages
  std::string config_text;       ///< the table's YAML text
  /// The table before the last reload ("" if none): ring records decided from it that the journal
  /// holds after this snapshot are translated by its names on replay, as they were live.
  std::string previous_config_source;
  std::string previous_config_text;
  /// The local decisions imported lately (settle_local): {spool id, sidecar decision id}, oldest
  /// first, so that an entry re-sent after a reboot is still applied once.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> settlements;
  LiveState state;
  friend bool operator==(const Snapshot&, const Snapshot&) = default;
};

/// The snapshot's bytes: one msgpack map (ledger rows with their counters by field name, so a build
/// that adds a counter still reads an older snapshot) followed by an XXH3-64 of it.
void encode_snapshot(msgpack::sbuffer& out, const Snapshot& s);
/// The snapshot of `bytes`; a clear error if it is truncated, corrupt or of another version.
[[nodiscard]] Result<Snapshot> decode_snapshot(std::string_view bytes);

/// What a journal record applies.
enum class RecordKind : std::uint8_t {
  route = 1,              ///< a decision the socket's route committed: protocol::encode_adopt_request bytes
  request = 2,            ///< a report or verdict from the socket, or any ring record: the request bytes
  reload = 3,             ///< a new table: msgpack [source, text]
  reap = 4,               ///< a dead fast-path client's ring (`ring`) was reaped: its leases end
  settle = 5,             ///< an imported local decision: its sidecar id (8 bytes, little-endian), then the
                          ///< settle_local request bytes (one record: applied and remembered together)
  migration_tick = 6,     ///< the migrations' analyses due at `now` were run (no bytes)
  migration_command = 7,  ///< an operator's migration command: the migration request bytes
};

/// One journal record (views into the journal's mapping, valid until it is reset).
struct JournalRecord {
  RecordKind kind = RecordKind::request;
  std::uint32_t ring = 0;  ///< the ring of a ring record or reap; kNone for the socket
  TimeMs now = 0;          ///< the sidecar's clock when it was applied
  std::string_view bytes;
};

/// An append-only log in a preallocated file mapped MAP_SHARED: an append is a memcpy (no system
/// call), visible to the kernel's page cache at once. Records are length-prefixed, carry their epoch,
/// a sequence number and an XXH3-64; reading stops at the first torn or foreign record.
class Journal {
 public:
  /// Maps the journal file open at `fd` (taken over), growing it to `capacity` bytes.
  [[nodiscard]] static Result<std::unique_ptr<Journal>> map(int fd, const std::string& path, std::size_t capacity);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  /// The records of `epoch`, in order, up to the first torn or foreign one; later appends go after
  /// them (what follows is cleared, so a stale record can never be read as a new one).
  [[nodiscard]] std::vector<JournalRecord> recover(std::uint64_t epoch);
  /// Appends a record of the current epoch; false when it does not fit (the caller snapshots).
  [[nodiscard]] bool append(RecordKind kind, std::uint32_t ring, TimeMs now, std::string_view bytes) noexcept;
  /// Starts epoch `epoch` with no records (after a snapshot of everything before it).
  void reset(std::uint64_t epoch) noexcept;
  /// The generation recorded by set_generation() (0 if none).
  [[nodiscard]] std::uint64_t generation() const noexcept;
  /// Records the decision-id generation in use, so a restart never issues its ids again.
  void set_generation(std::uint64_t generation) noexcept;
  /// Writes the dirty pages back (msync); any thread.
  void sync() noexcept;
  [[nodiscard]] std::size_t used() const noexcept { return end_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return size_; }

 private:
  Journal() = default;
  int fd_ = -1;
  char* base_ = nullptr;
  std::size_t size_ = 0;
  std::size_t end_ = 0;  // where the next record goes
  std::uint64_t epoch_ = 0;
  std::uint64_t seq_ = 0;  // the last record's
};

/// The state directory of one sidecar (one --shm name): the snapshot, the journal and the thread
/// that writes the journal back to disk every second.
class StateStore {
 public:
  /// Bytes of journal a store maps; a snapshot is due when half is used.
  static constexpr std::size_t kJournalBytes = 64U << 20;
  /// Opens (creating it 0700) `root`/`shm`: refused unless owned by this user and writable by no
  /// one else; its files are opened O_NOFOLLOW and checked the same way on the descriptor.
  [[nodiscard]] static Result<std::unique_ptr<StateStore>> open(const std::string& root, const std::string& shm,
                                                                std::size_t journal_bytes = kJournalBytes);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  /// What a restart starts from.
  struct Recovered {
    std::optional<Snapshot> snapshot;    ///< none on a first start
    std::vector<JournalRecord> records;  ///< to replay after it (views into the journal)
    std::uint64_t generation = 0;        ///< the last id generation issued
  };
  /// Reads the snapshot and the journal records that follow it.
  [[nodiscard]] Result<Recovered> recover();
  /// Journals one mutation (before its reply); false if the journal is full even after a snapshot
  /// was due (the caller refuses the mutation).
  [[nodiscard]] bool journal(RecordKind kind, std::uint32_t ring, TimeMs now, std::string_view bytes) noexcept {
    return journal_->append(kind, ring, now, bytes);
  }
  /// Writes `s` (its epoch is set here) to a temporary file, fsyncs it, renames it over the snapshot,
  /// then restarts the journal in the new epoch. A crash at any point replays each record once.
  [[nodiscard]] Result<Ok> snapshot(Snapshot s);
  /// Whether the journal passed half its size (the heartbeat snapshots then).
  [[nodiscard]] bool snapshot_due() const noexcept { return journal_->used() > journal_->capacity() / 2; }
  void set_generation(std::uint64_t generation) noexcept { journal_->set_generation(generation); }
  [[nodiscard]] const std::string& dir() const noexcept { return dir_; }

 private:
  StateStore() = default;
  void sync_loop();

  std::string dir_;
  int dir_fd_ = -1;
  std::unique_ptr<Journal> journal_;
  std::uint64_t epoch_ = 0;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread syncer_;
};

}  // namespace turnout::sidecar
