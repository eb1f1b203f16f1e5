#include "sidecar/state_store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <type_traits>

#include "turnout/ledger.hpp"

namespace turnout::sidecar {

namespace {

constexpr std::uint64_t kSnapshotVersion = 1;
constexpr char kJournalMagic[8] = {'T', 'R', 'N', 'T', 'J', 'R', 'N', '1'};
constexpr std::size_t kJournalHeaderBytes = 4096;  // one page: the records start page-aligned
constexpr const char* kSnapshotFile = "snapshot";
constexpr const char* kSnapshotTemp = "snapshot.tmp";
constexpr const char* kJournalFile = "journal";

/// The journal file's first page.
struct JournalHeader {
  char magic[8];
  std::uint64_t generation;  // the decision-id generation in use
};

/// What precedes each record's bytes; `checksum` covers the rest of the header and the bytes.
struct RecordHeader {
  std::uint32_t bytes;
  std::uint8_t kind;
  std::uint8_t pad[3];
  std::uint32_t ring;
  std::uint32_t pad2;
  std::uint64_t epoch;
  std::uint64_t seq;
  std::int64_t now;
  std::uint64_t checksum;
};
static_assert(sizeof(RecordHeader) == 48);

constexpr std::size_t align8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }

std::uint64_t checksum(const RecordHeader& h, std::string_view bytes) {
  RecordHeader copy = h;
  copy.checksum = 0;
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), XXH3_64bits(&copy, sizeof copy));
}

Error io_error(const std::string& what, const std::string& path) {
  return Error{ErrorCode::internal, what + " " + path + ": " + std::strerror(errno)};
}

std::string mode_text(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

/// Refuses what another user owns or could write (a planted state would be trusted as the ledger).
Result<Ok> check_owned(const struct stat& st, const std::string& path, bool directory) {
  if (directory ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
    return make_error(ErrorCode::invalid_argument,
                      "state " + path + " is not a " + (directory ? "directory" : "regular file"));
  }
  if (st.st_uid != ::geteuid()) {
    return make_error(ErrorCode::invalid_argument, "state " + path + " is owned by uid " + std::to_string(st.st_uid) +
                                                       ", not this user (" + std::to_string(::geteuid()) + ")");
  }
  if ((st.st_mode & (directory ? 0022 : 0077)) != 0) {
    return make_error(ErrorCode::invalid_argument, "state " + path + " is mode " + mode_text(st.st_mode) +
                                                       (directory ? ": others could write it (chmod 700 " + path + ")"
                                                                  : ": others could read it (chmod 600 " + path + ")"));
  }
  return Ok{};
}

/// Opens directory `path`, creating it 0700 (and its parents), and checks it on the descriptor.
Result<int> open_dir(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) return io_error("cannot create", path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return io_error("cannot open state directory", path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return io_error("cannot stat", path);
  }
  if (auto ok = check_owned(st, path, true); !ok) {
    ::close(fd);
    return std::move(ok).error();
  }
  return fd;
}

/// Opens `name` in the directory `dir_fd` with O_NOFOLLOW, checked on the descriptor; -1 (and no
/// error) if it does not exist and `create` is false.
Result<int> open_file(int dir_fd, const std::string& dir, const char* name, int flags) {
  const std::string path = dir + "/" + name;
  const int fd = ::openat(dir_fd, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == ENOENT && (flags & O_CREAT) == 0) return -1;
    return io_error("cannot open", path);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return io_error("cannot stat", path);
  }
  if (auto ok = check_owned(st, path, false); !ok) {
    ::close(fd);
    return std::move(ok).error();
  }
  return fd;
}

// --------------------------------------------------------------------------- snapshot encoding

using Packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(Packer& p, std::string_view s) {
  p.pack_str(static_cast<std::uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

void pack_total(Packer& p, const MoneyTotal& m) {
  const auto u = static_cast<UInt128>(m.picos());
  p.pack_array(2);
  p.pack(static_cast<std::uint64_t>(u >> 64));
  p.pack(static_cast<std::uint64_t>(u));
}

MoneyTotal unpack_total(const msgpack::object& o) {
  const auto a = o.as<std::vector<std::uint64_t>>();
  if (a.size() != 2) throw msgpack::type_error();
  const UInt128 u = (static_cast<UInt128>(a[0]) << 64) | a[1];
  return MoneyTotal::from_picos(static_cast<Int128>(u));  // two's complement, as pack_total wrote it
}

void pack_counters(Packer& p, const Counters& c) {
  p.pack_map(static_cast<std::uint32_t>(kCounterFields.size()));
  visit_fields(
      [&p](const CounterField& f, const auto& v) {
        using T = std::remove_cvref_t<decltype(v)>;
        pack_str(p, f.name);
        if constexpr (std::is_same_v<T, std::uint64_t>) {
          p.pack(v);
        } else if constexpr (std::is_same_v<T, StatusCounts>) {
          p.pack(std::vector<std::uint64_t>(v.begin(), v.end()));
        } else if constexpr (std::is_same_v<T, Usage>) {
          p.pack(std::vector<std::int64_t>{v.uncached_input_tokens, v.cache_read_tokens, v.cache_write_5m_tokens,
                                           v.cache_write_1h_tokens, v.output_tokens, v.reasoning_tokens});
        } else if constexpr (std::is_same_v<T, MoneyTotal>) {
          pack_total(p, v);
        } else {
          static_assert(std::is_same_v<T, Histogram>);
          p.pack_array(3);
          p.pack(v.count);
          p.pack(v.sum_ms);
          p.pack(std::vector<std::uint64_t>(v.buckets.begin(), v.buckets.end()));
        }
      },
      c);
}

template <class Array>
void unpack_into(const msgpack::object& o, Array& out) {
  const auto v = o.as<std::vector<typename Array::value_type>>();
  if (v.size() != out.size()) throw msgpack::type_error();
  std::copy(v.begin(), v.end(), out.begin());
}

/// A row's fields by name; a field the snapshot lacks stays 0 (a newer build's counter).
Counters unpack_counters(const msgpack::object& o) {
  if (o.type != msgpack::type::MAP) throw msgpack::type_error();
  Counters c;
  for (const auto& kv : std::span(o.via.map.ptr, o.via.map.size)) {
    const auto name = kv.key.as<std::string_view>();
    visit_fields(
        [&](const CounterField& f, auto& v) {
          if (f.name != name) return;
          using T = std::remove_cvref_t<decltype(v)>;
          if constexpr (std::is_same_v<T, std::uint64_t>) {
            v = kv.val.as<std::uint64_t>();
          } else if constexpr (std::is_same_v<T, StatusCounts>) {
            unpack_into(kv.val, v);
          } else if constexpr (std::is_same_v<T, Usage>) {
            std::array<std::int64_t, 6> t{};
            unpack_into(kv.val, t);
            v.uncached_input_tokens = t[0];
            v.cache_read_tokens = t[1];
            v.cache_write_5m_tokens = t[2];
            v.cache_write_1h_tokens = t[3];
            v.output_tokens = t[4];
            v.reasoning_tokens = t[5];
          } else if constexpr (std::is_same_v<T, MoneyTotal>) {
            v = unpack_total(kv.val);
          } else {
            if (kv.val.type != msgpack::type::ARRAY || kv.val.via.array.size != 3) throw msgpack::type_error();
            v.count = kv.val.via.array.ptr[0].as<std::uint64_t>();
            v.sum_ms = kv.val.via.array.ptr[1].as<std::int64_t>();
            unpack_into(kv.val.via.array.ptr[2], v.buckets);
          }
        },
        c);
  }
  return c;
}

void pack_place(Packer& p, const PlacementName& n) {
  p.pack_array(2);
  pack_str(p, n.target);
  pack_str(p, n.replica);
}

PlacementName unpack_place(const msgpack::object& o) {
  if (o.type != msgpack::type::ARRAY || o.via.array.size != 2) throw msgpack::type_error();
  return {o.via.array.ptr[0].as<std::string>(), o.via.array.ptr[1].as<std::string>()};
}

/// An array of fixed arity, checked.
std::span<const msgpack::object> tuple(const msgpack::object& o, std::size_t n) {
  if (o.type != msgpack::type::ARRAY || o.via.array.size != n) throw msgpack::type_error();
  return {o.via.array.ptr, n};
}

std::span<const msgpack::object> items(const msgpack::object& o) {
  if (o.type != msgpack::type::ARRAY) throw msgpack::type_error();
  return {o.via.array.ptr, o.via.array.size};
}

// A migration run by field names (a build that adds one still reads an older snapshot; a field the
// snapshot lacks keeps its default).
void pack_arm(Packer& p, const ArmCounts& a) {
  p.pack_map(11);
  pack_str(p, "outcomes");
  p.pack(a.outcomes);
  pack_str(p, "errors");
  p.pack(a.errors);
  pack_str(p, "ttft_checked");
  p.pack(a.ttft_checked);
  pack_str(p, "ttft_over");
  p.pack(a.ttft_over);
  pack_str(p, "latency_checked");
  p.pack(a.latency_checked);
  pack_str(p, "latency_over");
  p.pack(a.latency_over);
  pack_str(p, "verdicts");
  p.pack(a.verdicts);
  pack_str(p, "rejected");
  p.pack(a.rejected);
  pack_str(p, "priced");
  p.pack(a.priced);
  pack_str(p, "cost");
  p.pack(a.cost.picos());
  pack_str(p, "cost_sq_usd");
  p.pack(a.cost_sq_usd);
}

void pack_transition(Packer& p, const MigrationTransition& t) {
  p.pack_map(8);
  pack_str(p, "at");
  p.pack(t.at);
  pack_str(p, "from");
  p.pack(static_cast<std::uint8_t>(t.from));
  pack_str(p, "to");
  p.pack(static_cast<std::uint8_t>(t.to));
  pack_str(p, "step");
  p.pack(t.step);
  pack_str(p, "cause");
  p.pack(static_cast<std::uint8_t>(t.cause));
  pack_str(p, "detail");
  pack_str(p, t.detail);
  pack_str(p, "candidate_outcomes");
  p.pack(t.candidate_outcomes);
  pack_str(p, "baseline_outcomes");
  p.pack(t.baseline_outcomes);
}

void pack_migration(Packer& p, const MigrationEntry& e) {
  const MigrationRun& r = e.run;
  p.pack_map(15);
  pack_str(p, "scenario");
  pack_str(p, e.scenario);
  pack_str(p, "identity");
  p.pack(r.identity);
  pack_str(p, "phase");
  p.pack(static_cast<std::uint8_t>(r.phase));
  pack_str(p, "step");
  p.pack(r.step);
  pack_str(p, "started_at");
  p.pack(r.started_at);
  pack_str(p, "step_started_at");
  p.pack(r.step_started_at);
  pack_str(p, "paused_at");
  p.pack(r.paused_at);
  pack_str(p, "next_analysis_at");
  p.pack(r.next_analysis_at);
  pack_str(p, "step_outcomes");
  p.pack(r.step_outcomes);
  pack_str(p, "baseline");
  pack_arm(p, r.baseline);
  pack_str(p, "candidate");
  pack_arm(p, r.candidate);
  pack_str(p, "interval_outcomes");
  p.pack(r.interval.outcomes);
  pack_str(p, "interval_errors");
  p.pack(r.interval.errors);
  pack_str(p, "interval_over_p99");
  p.pack(r.interval.over_p99);
  pack_str(p, "transitions");
  p.pack_array(static_cast<std::uint32_t>(r.transitions.size()));
  for (const auto& t : r.transitions) pack_transition(p, t);
}

void pack_state(Packer& p, const LiveState& s) {
  p.pack_map(5);
  pack_str(p, "ledger");
  p.pack_array(static_cast<std::uint32_t>(s.ledger.size()));
  for (const auto& e : s.ledger) {
    p.pack_array(3);
    pack_str(p, e.scenario);
    pack_str(p, e.target);
    pack_counters(p, e.counters);
  }
  pack_str(p, "budgets");
  p.pack_array(static_cast<std::uint32_t>(s.budgets.size()));
  for (const auto& b : s.budgets) {
    p.pack_array(4);
    pack_str(p, b.scenario);
    p.pack(b.day);
    p.pack(b.spent.picos());
    p.pack(b.reserved.picos());
  }
  pack_str(p, "breakers");
  p.pack_array(static_cast<std::uint32_t>(s.breakers.size()));
  for (const auto& b : s.breakers) {
    p.pack_array(6);
    pack_place(p, b.unit);
    p.pack(static_cast<std::uint8_t>(b.phase));
    p.pack(b.probe_inflight);
    p.pack(b.opened_at);
    p.pack(b.consecutive_failures);
    p.pack(b.times_opened);
  }
  pack_str(p, "pending");
  p.pack_array(static_cast<std::uint32_t>(s.pending.size()));
  for (const auto& e : s.pending) {
    p.pack_array(16);
    p.pack(e.id);
    p.pack(e.at);
    pack_str(p, e.scenario);
    pack_place(p, e.placement);
    p.pack_array(static_cast<std::uint32_t>(e.fallbacks.size()));
    for (const auto& f : e.fallbacks) pack_place(p, f);
    p.pack(e.reserved_cost.picos());
    p.pack(e.budget_day);
    p.pack(e.lease_open);
    p.pack(e.lease_until);
    p.pack(e.probe);
    p.pack(e.active_blocks);
    p.pack(e.reported_targets);
    pack_str(p, e.served_target);
    p.pack(e.served_cost.picos());
    p.pack(e.verdict_given);
    p.pack_nil();  // room for one more field without a version change
  }
  pack_str(p, "migrations");
  p.pack_array(static_cast<std::uint32_t>(s.migrations.size()));
  for (const auto& m : s.migrations) pack_migration(p, m);
}

/// The value of `key` in map `o`; nullptr if absent.
const msgpack::object* find(const msgpack::object& o, std::string_view key) {
  if (o.type != msgpack::type::MAP) throw msgpack::type_error();
  for (const auto& kv : std::span(o.via.map.ptr, o.via.map.size)) {
    if (kv.key.type == msgpack::type::STR && kv.key.as<std::string_view>() == key) return &kv.val;
  }
  return nullptr;
}

const msgpack::object& need(const msgpack::object& o, std::string_view key) {
  const auto* v = find(o, key);
  if (v == nullptr) throw std::runtime_error("no field '" + std::string(key) + "'");
  return *v;
}

/// Calls `f(name, value)` for each entry of map `o`.
template <class F>
void each_field(const msgpack::object& o, F&& f) {
  if (o.type != msgpack::type::MAP) throw msgpack::type_error();
  for (const msgpack::object_kv& kv : std::span(o.via.map.ptr, o.via.map.size))
    f(kv.key.as<std::string_view>(), kv.val);
}

/// An enum of `count` values stored as its number; out of range is a corrupt snapshot.
template <class E>
E unpack_enum(const msgpack::object& o, std::size_t count) {
  const auto v = o.as<std::uint8_t>();
  if (v >= count) throw msgpack::type_error();
  return static_cast<E>(v);
}

ArmCounts unpack_arm(const msgpack::object& o) {
  ArmCounts a;
  each_field(o, [&a](std::string_view k, const msgpack::object& v) {
    if (k == "outcomes") a.outcomes = v.as<std::uint64_t>();
    if (k == "errors") a.errors = v.as<std::uint64_t>();
    if (k == "ttft_checked") a.ttft_checked = v.as<std::uint64_t>();
    if (k == "ttft_over") a.ttft_over = v.as<std::uint64_t>();
    if (k == "latency_checked") a.latency_checked = v.as<std::uint64_t>();
    if (k == "latency_over") a.latency_over = v.as<std::uint64_t>();
    if (k == "verdicts") a.verdicts = v.as<std::uint64_t>();
    if (k == "rejected") a.rejected = v.as<std::uint64_t>();
    if (k == "priced") a.priced = v.as<std::uint64_t>();
    if (k == "cost") a.cost = Money::from_picos(v.as<std::int64_t>());
    if (k == "cost_sq_usd") a.cost_sq_usd = v.as<double>();
  });
  return a;
}

MigrationTransition unpack_transition(const msgpack::object& o) {
  MigrationTransition t;
  each_field(o, [&t](std::string_view k, const msgpack::object& v) {
    if (k == "at") t.at = v.as<TimeMs>();
    if (k == "from") t.from = unpack_enum<MigrationPhase>(v, kMigrationPhases.size());
    if (k == "to") t.to = unpack_enum<MigrationPhase>(v, kMigrationPhases.size());
    if (k == "step") t.step = v.as<std::uint32_t>();
    if (k == "cause") t.cause = unpack_enum<TransitionCause>(v, kTransitionCauses.size());
    if (k == "detail") t.detail = v.as<std::string>();
    if (k == "candidate_outcomes") t.candidate_outcomes = v.as<std::uint64_t>();
    if (k == "baseline_outcomes") t.baseline_outcomes = v.as<std::uint64_t>();
  });
  return t;
}

MigrationEntry unpack_migration(const msgpack::object& o) {
  MigrationEntry e;
  MigrationRun& r = e.run;
  each_field(o, [&](std::string_view k, const msgpack::object& v) {
    if (k == "scenario") e.scenario = v.as<std::string>();
    if (k == "identity") r.identity = v.as<std::uint64_t>();
    if (k == "phase") r.phase = unpack_enum<MigrationPhase>(v, kMigrationPhases.size());
    if (k == "step") r.step = v.as<std::uint32_t>();
    if (k == "started_at") r.started_at = v.as<TimeMs>();
    if (k == "step_started_at") r.step_started_at = v.as<TimeMs>();
    if (k == "paused_at") r.paused_at = v.as<TimeMs>();
    if (k == "next_analysis_at") r.next_analysis_at = v.as<TimeMs>();
    if (k == "step_outcomes") r.step_outcomes = v.as<std::uint64_t>();
    if (k == "baseline") r.baseline = unpack_arm(v);
    if (k == "candidate") r.candidate = unpack_arm(v);
    if (k == "interval_outcomes") r.interval.outcomes = v.as<std::uint64_t>();
    if (k == "interval_errors") r.interval.errors = v.as<std::uint64_t>();
    if (k == "interval_over_p99") r.interval.over_p99 = v.as<std::uint64_t>();
    if (k == "transitions") {
      for (const auto& t : items(v)) r.transitions.push_back(unpack_transition(t));
    }
  });
  return e;
}

LiveState unpack_state(const msgpack::object& o) {
  LiveState s;
  for (const auto& e : items(need(o, "ledger"))) {
    const auto t = tuple(e, 3);
    s.ledger.push_back({t[0].as<std::string>(), t[1].as<std::string>(), unpack_counters(t[2])});
  }
  for (const auto& e : items(need(o, "budgets"))) {
    const auto t = tuple(e, 4);
    s.budgets.push_back({t[0].as<std::string>(), t[1].as<std::int64_t>(), Money::from_picos(t[2].as<std::int64_t>()),
                         Money::from_picos(t[3].as<std::int64_t>())});
  }
  for (const auto& e : items(need(o, "breakers"))) {
    const auto t = tuple(e, 6);
    const auto phase = t[1].as<std::uint8_t>();
    if (phase > static_cast<std::uint8_t>(Breaker::Phase::half_open)) throw msgpack::type_error();
    s.breakers.push_back({unpack_place(t[0]), static_cast<Breaker::Phase>(phase), t[2].as<bool>(), t[3].as<TimeMs>(),
                          t[4].as<std::uint32_t>(), t[5].as<std::uint64_t>()});
  }
  for (const auto& e : items(need(o, "pending"))) {
    const auto t = tuple(e, 16);
    PendingEntry p;
    p.id = t[0].as<std::uint64_t>();
    p.at = t[1].as<TimeMs>();
    p.scenario = t[2].as<std::string>();
    p.placement = unpack_place(t[3]);
    for (const auto& f : items(t[4])) p.fallbacks.push_back(unpack_place(f));
    p.reserved_cost = Money::from_picos(t[5].as<std::int64_t>());
    p.budget_day = t[6].as<std::int64_t>();
    p.lease_open = t[7].as<bool>();
    p.lease_until = t[8].as<TimeMs>();
    p.probe = t[9].as<bool>();
    p.active_blocks = t[10].as<std::int64_t>();
    p.reported_targets = t[11].as<std::vector<std::string>>();
    p.served_target = t[12].as<std::string>();
    p.served_cost = Money::from_picos(t[13].as<std::int64_t>());
    p.verdict_given = t[14].as<bool>();
    s.pending.push_back(std::move(p));
  }
  if (const auto* migrations = find(o, "migrations")) {  // absent from snapshots before migrations
    for (const auto& e : items(*migrations)) s.migrations.push_back(unpack_migration(e));
  }
  return s;
}

}  // namespace

std::string default_state_dir() {
  const auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v != nullptr ? v : "";
  };
  if (auto systemd = env("STATE_DIRECTORY"); !systemd.empty()) {
    return systemd.substr(0, systemd.find(':'));  // systemd lists several as a:b
  }
  if (auto xdg = env("XDG_STATE_HOME"); !xdg.empty()) return xdg + "/turnout";
  return env("HOME") + "/.local/state/turnout";
}

void encode_snapshot(msgpack::sbuffer& out, const Snapshot& s) {
  Packer p(out);
  p.pack_map(9);
  pack_str(p, "v");
  p.pack(kSnapshotVersion);
  pack_str(p, "epoch");
  p.pack(s.epoch);
  pack_str(p, "generation");
  p.pack(s.generation);
  pack_str(p, "config_source");
  pack_str(p, s.config_source);
  pack_str(p, "config_text");
  pack_str(p, s.config_text);
  pack_str(p, "previous_config_source");
  pack_str(p, s.previous_config_source);
  pack_str(p, "previous_config_text");
  pack_str(p, s.previous_config_text);
  pack_str(p, "settlements");
  p.pack_array(static_cast<std::uint32_t>(s.settlements.size()));
  for (const auto& [spool, id] : s.settlements) {
    p.pack_array(2);
    p.pack(spool);
    p.pack(id);
  }
  pack_str(p, "state");
  pack_state(p, s.state);
  const std::uint64_t sum = XXH3_64bits(out.data(), out.size());
  out.write(reinterpret_cast<const char*>(&sum), sizeof sum);
}

Result<Snapshot> decode_snapshot(std::string_view bytes) {
  std::uint64_t sum = 0;
  if (bytes.size() < sizeof sum) return make_error(ErrorCode::invalid_argument, "state snapshot is truncated");
  const std::string_view body = bytes.substr(0, bytes.size() - sizeof sum);
  std::memcpy(&sum, bytes.data() + body.size(), sizeof sum);
  if (sum != XXH3_64bits(body.data(), body.size())) {
    return make_error(ErrorCode::invalid_argument, "state snapshot is corrupt (checksum mismatch)");
  }
  try {
    const auto handle = msgpack::unpack(body.data(), body.size());
    const msgpack::object& o = handle.get();
    if (need(o, "v").as<std::uint64_t>() != kSnapshotVersion) {
      return make_error(ErrorCode::invalid_argument, "state snapshot is of another version");
    }
    Snapshot s;
    s.epoch = need(o, "epoch").as<std::uint64_t>();
    s.generation = need(o, "generation").as<std::uint64_t>();
    s.config_source = need(o, "config_source").as<std::string>();
    s.config_text = need(o, "config_text").as<std::string>();
    s.previous_config_source = need(o, "previous_config_source").as<std::string>();
    s.previous_config_text = need(o, "previous_config_text").as<std::string>();
    for (const auto& e : items(need(o, "settlements"))) {
      const auto t = tuple(e, 2);
      s.settlements.emplace_back(t[0].as<std::uint64_t>(), t[1].as<std::uint64_t>());
    }
    s.state = unpack_state(need(o, "state"));
    return s;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::invalid_argument, std::string("state snapshot is malformed: ") + e.what());
  }
}

// ------------------------------------------------------------------------------------------ Journal

Result<std::unique_ptr<Journal>> Journal::map(int fd, const std::string& path, std::size_t capacity) {
  std::unique_ptr<Journal> j(new Journal());
  j->fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error("cannot stat", path);
  const auto have = static_cast<std::size_t>(st.st_size);
  capacity = std::max({capacity, have, kJournalHeaderBytes * 2});
  // Blocks are reserved now: a write through the mapping can never find the disk full (SIGBUS).
  if (have < capacity) {
    if (const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(capacity)); rc != 0) {
      errno = rc;
      return io_error("cannot reserve " + std::to_string(capacity >> 20) + " MiB for", path);
    }
  }
  void* base = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return io_error("cannot map", path);
  j->base_ = static_cast<char*>(base);
  j->size_ = capacity;
  auto& h = *reinterpret_cast<JournalHeader*>(j->base_);
  if (std::memcmp(h.magic, kJournalMagic, sizeof h.magic) != 0) {
    std::memset(j->base_, 0, kJournalHeaderBytes * 2);
    std::memcpy(h.magic, kJournalMagic, sizeof h.magic);
  }
  j->end_ = kJournalHeaderBytes;
  return j;
}

Journal::~Journal() {
  if (base_ != nullptr) {
    ::msync(base_, size_, MS_SYNC);
    ::munmap(base_, size_);
  }
  if (fd_ >= 0) ::close(fd_);
}

std::vector<JournalRecord> Journal::recover(std::uint64_t epoch) {
  std::vector<JournalRecord> out;
  std::size_t at = kJournalHeaderBytes;
  std::uint64_t seq = 0;
  while (at + sizeof(RecordHeader) <= size_) {
    RecordHeader h{};
    std::memcpy(&h, base_ + at, sizeof h);
    // A zeroed header (kind 0) ends the journal; an empty record (a reap) is still a record.
    if (h.kind == 0 || h.epoch != epoch || h.seq != seq + 1 || h.bytes > size_ - at - sizeof h) break;
    const std::string_view bytes(base_ + at + sizeof h, h.bytes);
    if (h.checksum != checksum(h, bytes)) break;  // torn: the crash came while it was written
    out.push_back({static_cast<RecordKind>(h.kind), h.ring, h.now, bytes});
    seq = h.seq;
    at += align8(sizeof h + h.bytes);
  }
  epoch_ = epoch;
  seq_ = seq;
  end_ = at;
  // Clear the header of what follows: a stale record of this epoch must never line up later.
  if (end_ + sizeof(RecordHeader) <= size_) std::memset(base_ + end_, 0, sizeof(RecordHeader));
  return out;
}

bool Journal::append(RecordKind kind, std::uint32_t ring, TimeMs now, std::string_view bytes) noexcept {
  const std::size_t need = align8(sizeof(RecordHeader) + bytes.size());
  if (end_ + need + sizeof(RecordHeader) > size_) return false;  // room for the next one's zero header
  RecordHeader h{};
  h.bytes = static_cast<std::uint32_t>(bytes.size());
  h.kind = static_cast<std::uint8_t>(kind);
  h.ring = ring;
  h.epoch = epoch_;
  h.seq = seq_ + 1;
  h.now = now;
  h.checksum = checksum(h, bytes);
  std::memset(base_ + end_ + need, 0, sizeof(RecordHeader));  // the end marker after it
  // A tick has no bytes, and an empty view's data() may be null, which memcpy must not get.
  if (!bytes.empty()) std::memcpy(base_ + end_ + sizeof h, bytes.data(), bytes.size());
  std::memcpy(base_ + end_, &h, sizeof h);
  end_ += need;
  seq_ = h.seq;
  return true;
}

void Journal::reset(std::uint64_t epoch) noexcept {
  epoch_ = epoch;
  seq_ = 0;
  end_ = kJournalHeaderBytes;
  std::memset(base_ + end_, 0, sizeof(RecordHeader));
}

std::uint64_t Journal::generation() const noexcept { return reinterpret_cast<const JournalHeader*>(base_)->generation; }

void Journal::set_generation(std::uint64_t generation) noexcept {
  reinterpret_cast<JournalHeader*>(base_)->generation = generation;
}

void Journal::sync() noexcept { ::msync(base_, size_, MS_SYNC); }

// --------------------------------------------------------------------------------------- StateStore

Result<std::unique_ptr<StateStore>> StateStore::open(const std::string& root, const std::string& shm,
                                                     std::size_t journal_bytes) {
  if (root.empty()) return make_error(ErrorCode::invalid_argument, "--state-dir is empty");
  if (shm.empty() || shm.find('/') != std::string::npos || shm == "." || shm == "..") {
    return make_error(ErrorCode::invalid_argument, "shm name '" + shm + "' cannot name a state directory");
  }
  std::unique_ptr<StateStore> s(new StateStore());
  auto root_fd = open_dir(root);
  if (!root_fd) return std::move(root_fd).error();
  ::close(root_fd.value());
  s->dir_ = root + "/" + shm;
  auto dir_fd = open_dir(s->dir_);
  if (!dir_fd) return std::move(dir_fd).error();
  s->dir_fd_ = dir_fd.value();
  auto fd = open_file(s->dir_fd_, s->dir_, kJournalFile, O_RDWR | O_CREAT);
  if (!fd) return std::move(fd).error();
  // One sidecar per state: a second must not even read (recover) a journal the first writes to.
  if (::flock(fd.value(), LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd.value());
    if (err == EWOULDBLOCK) {
      return make_error(ErrorCode::busy, s->dir_ + " is in use by another live sidecar");
    }
    return os_error(err, s->dir_ + "/" + kJournalFile + ": cannot lock");
  }
  auto journal = Journal::map(fd.value(), s->dir_ + "/" + kJournalFile, journal_bytes);
  if (!journal) {
    ::close(fd.value());
    return std::move(journal).error();
  }
  s->journal_ = std::move(journal).value();
  s->syncer_ = std::thread([p = s.get()] { p->sync_loop(); });
  return s;
}

StateStore::~StateStore() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (syncer_.joinable()) syncer_.join();
  journal_.reset();
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

void StateStore::sync_loop() {
  std::unique_lock lock(mu_);
  while (!wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; })) {
    lock.unlock();
    journal_->sync();  // bounds what a power cut loses to about a second
    lock.lock();
  }
}

Result<StateStore::Recovered> StateStore::recover() {
  Recovered r;
  auto fd = open_file(dir_fd_, dir_, kSnapshotFile, O_RDONLY);
  if (!fd) return std::move(fd).error();
  if (fd.value() >= 0) {
    std::string bytes;
    char buf[1 << 16];
    ssize_t n = 0;
    while ((n = ::read(fd.value(), buf, sizeof buf)) > 0) bytes.append(buf, static_cast<std::size_t>(n));
    ::close(fd.value());
    if (n < 0) return io_error("cannot read", dir_ + "/" + kSnapshotFile);
    auto snapshot = decode_snapshot(bytes);
    if (!snapshot) {
      return make_error(ErrorCode::invalid_argument, dir_ + "/" + kSnapshotFile + ": " + snapshot.error().message);
    }
    r.snapshot = std::move(snapshot).value();
  }
  epoch_ = r.snapshot ? r.snapshot->epoch : 0;
  r.records = journal_->recover(epoch_);
  r.generation = std::max(journal_->generation(), r.snapshot ? r.snapshot->generation : 0);
  return r;
}

Result<Ok> StateStore::snapshot(Snapshot s) {
  s.epoch = epoch_ + 1;
  s.generation = std::max(s.generation, journal_->generation());
  msgpack::sbuffer bytes;
  encode_snapshot(bytes, s);
  const std::string temp = dir_ + "/" + kSnapshotTemp;
  ::unlinkat(dir_fd_, kSnapshotTemp, 0);  // O_EXCL below: never write through what someone left there
  auto fd = open_file(dir_fd_, dir_, kSnapshotTemp, O_WRONLY | O_CREAT | O_EXCL);
  if (!fd) return std::move(fd).error();
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd.value(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const Error e = io_error("cannot write", temp);
      ::close(fd.value());
      ::unlinkat(dir_fd_, kSnapshotTemp, 0);
      return e;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.value()) != 0) {
    const Error e = io_error("cannot fsync", temp);
    ::close(fd.value());
    ::unlinkat(dir_fd_, kSnapshotTemp, 0);
    return e;
  }
  ::close(fd.value());
  if (::renameat(dir_fd_, kSnapshotTemp, dir_fd_, kSnapshotFile) != 0) return io_error("cannot rename", temp);
  ::fsync(dir_fd_);
  // From here the snapshot holds every record so far: the old epoch's records are never replayed.
  epoch_ = s.epoch;
  journal_->reset(epoch_);
  return Ok{};
}

}  // namespace turnout::sidecar
