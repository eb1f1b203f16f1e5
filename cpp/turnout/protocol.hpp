#pragma once
// The sidecar's wire protocol, said once: its version and limits, its ops, every field name, how
// decision ids are formed, and the decoders and encoders of every request and reply. The server, the
// fast path's ring records, the Python binding (turnout._core.protocol) and the tests all use this
// file; docs/protocol.md describes the same protocol for workers in other languages.
//
// A message is one msgpack map. Requests: {v, op, id, ...fields}; replies: {v, id, ok: true, ...fields}
// or {v, id, ok: false, error: {code, message}}, the code being to_string(ErrorCode). Decoders never
// throw on bad input: they return the error the reply carries.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#include "turnout/config.hpp"
#include "turnout/decision.hpp"
#include "turnout/result.hpp"
#include "turnout/router.hpp"
#include "turnout/state.hpp"
#include "turnout/usage.hpp"

namespace turnout::protocol {

/// The protocol version every message carries as `v`; a request of another version is refused.
inline constexpr std::uint64_t kVersion = 1;
/// The largest message a peer may send (the sidecar's ZMQ_MAXMSGSIZE: larger peers are dropped).
inline constexpr std::size_t kMaxMessageBytes = 8U << 20;

/// Decoder limits (msgpack unpack_limit): beyond them a request gets `too_large` / `too_deep`.
struct DecodeLimits {
  std::size_t array = 1U << 20;  ///< token_ids of a 1M-token prompt
  std::size_t map = 256;
  std::size_t str = 4U << 20;
  std::size_t bin = 1U << 20;
  std::size_t ext = 1024;
  std::size_t depth = 32;
};

// ------------------------------------------------------------------------------------- decision ids

/// A sidecar's decision ids are generation << 40 | sequence (unique across restarts and reloads).
inline constexpr int kGenerationShift = 40;
/// A fast-path client's are 1 << 63 | ring << 40 | sequence: a ring's ids are its own.
inline constexpr std::uint64_t kFastIdBit = 1ULL << 63;
inline constexpr int kRingShift = 40;
inline constexpr std::uint64_t kRingMask = 0x7FFFFF;  ///< the ring bits 40..62, shifted down

/// A local decision the sidecar imports (settle_local) gets generation << 40 | 1 << 39 | sequence: the
/// sidecar's own id space, apart from its routes' (which would need 2^39 decisions in a generation).
inline constexpr std::uint64_t kImportedIdBit = 1ULL << 39;
/// A client's fallback Router decides with 1 << 62 | tag << 32 | sequence, the tag a random 30 bits
/// per client: apart from every sidecar id (a generation below 2^22) and every fast-path id. Local
/// ids never leave their process (settle_local names an entry by its own spool id).
inline constexpr std::uint64_t kLocalIdBit = 1ULL << 62;
inline constexpr int kLocalTagShift = 32;
inline constexpr std::uint64_t kLocalTagMask = 0x3FFFFFFF;

/// Whether `id` was made by a fast-path client (else by the sidecar, or an in-process Router).
[[nodiscard]] constexpr bool is_fast_id(std::uint64_t id) noexcept { return (id & kFastIdBit) != 0; }
/// The ring of a fast-path id.
[[nodiscard]] constexpr std::uint32_t ring_of(std::uint64_t id) noexcept {
  return static_cast<std::uint32_t>((id >> kRingShift) & kRingMask);
}
/// The generation of a sidecar id.
[[nodiscard]] constexpr std::uint64_t generation_of(std::uint64_t id) noexcept { return id >> kGenerationShift; }

// ---------------------------------------------------------------------------------------------- ops

/// What a request asks for.
enum class Op : std::uint8_t { route, explain, report, verdict, adopt, stats, health, reload, settle_local, migration };

struct OpInfo {
  Op op;
  std::string_view name;  ///< the wire name (`op`)
  bool ring;              ///< a fast-path ring may carry it (what a client did: adopt, report, verdict)
  bool socket;            ///< the socket takes it (adopt comes only through a ring)
  bool writes;            ///< changes the sidecar's state (a read-only socket refuses it)
};
// `migration` is a read (status) unless it carries a command: its handler refuses commands on any
// endpoint but a local or authenticated one (read-only sockets included).

/// The op table, in enum order (checked below).
inline constexpr std::array kOps{
    OpInfo{Op::route, "route", false, true, true},
    OpInfo{Op::explain, "explain", false, true, false},
    OpInfo{Op::report, "report", true, true, true},
    OpInfo{Op::verdict, "verdict", true, true, true},
    OpInfo{Op::adopt, "adopt", true, false, true},
    OpInfo{Op::stats, "stats", false, true, false},
    OpInfo{Op::health, "health", false, true, false},
    OpInfo{Op::reload, "reload", false, true, true},
    OpInfo{Op::settle_local, "settle_local", false, true, true},
    OpInfo{Op::migration, "migration", false, true, false},
};

[[nodiscard]] constexpr bool op_table_in_order() noexcept {
  for (std::size_t i = 0; i < kOps.size(); ++i) {
    if (static_cast<std::size_t>(kOps[i].op) != i) return false;
  }
  return static_cast<std::size_t>(Op::migration) + 1 == kOps.size();
}
static_assert(op_table_in_order(), "kOps must list every Op once, in enum order");

/// The op's wire name ("route").
[[nodiscard]] constexpr std::string_view to_string(Op op) noexcept { return kOps[static_cast<std::size_t>(op)].name; }
/// The op of a wire name, if it is one.
[[nodiscard]] constexpr std::optional<Op> op_from_string(std::string_view name) noexcept {
  for (const auto& o : kOps) {
    if (o.name == name) return o.op;
  }
  return std::nullopt;
}

// ------------------------------------------------------------------------------------------- fields

// Every field name of every message, once (the envelope's first). The name is the wire name.
// clang-format off
#define TURNOUT_PROTOCOL_FIELDS(X)                                                                      \
  /* envelope */ X(v) X(op) X(id) X(ok) X(error) X(code) X(message)                                    \
  /* route, explain */ X(scenario) X(key) X(data_class) X(text) X(token_ids) X(input_tokens)            \
  X(max_output_tokens) X(expected_cached_tokens) X(now)                                                 \
  /* report, verdict */ X(decision_id) X(target) X(status) X(usage) X(ttft_ms) X(latency_ms) X(accepted) \
  /* adopt */ X(config_version) X(replica) X(fallbacks) X(spilled) X(reserved_cost) X(active_blocks)    \
  X(prefix) X(at)                                                                                       \
  /* decision */ X(endpoint) X(fallback_endpoints) X(reasons) X(predicted_cost_usd) X(reserved_cost_usd) X(cache_key)         \
  /* receipt */ X(duplicate) X(fallback) X(priced) X(cost_usd) X(counted)                               \
  /* settle_local */ X(spool_id) X(outcomes)                                                            \
  /* usage */ X(uncached_input_tokens) X(cache_read_tokens) X(cache_write_5m_tokens)                    \
  X(cache_write_1h_tokens) X(output_tokens) X(reasoning_tokens)                                         \
  /* stats, health, reload */ X(pid) X(generation) X(config) X(shm) X(uptime_s) X(pending_decisions)    \
  X(fast_path) X(enabled) X(table) X(why_not) X(clients) X(records) X(rejected) X(view_dropped)         \
  X(counters) X(breakers) X(phase) X(consecutive_failures) X(times_opened) X(inflight) X(kv_events)       \
  X(last_reload) X(failures) X(migrations)                                                              \
  /* migration */ X(action) X(transition) X(migration) X(stage) X(step) X(steps) X(candidate_percent)   \
  X(baseline) X(candidate) X(incident_owner) X(started_at) X(step_started_at) X(deadline_at)            \
  X(step_outcomes) X(min_samples) X(delta) X(attempt) X(arms) X(criteria) X(metric) X(lo) X(hi)         \
  X(min_effect) X(verdict) X(transitions) X(from_phase) X(to_phase) X(cause) X(detail) X(candidate_outcomes)        \
  X(baseline_outcomes) X(errors) X(ttft_checked) X(ttft_over) X(latency_checked) X(latency_over)        \
  X(verdicts)
// clang-format on

/// The wire name of each field: `field::decision_id == "decision_id"`.
namespace field {
#define TURNOUT_PROTOCOL_FIELD_NAME(name) inline constexpr std::string_view name = #name;
TURNOUT_PROTOCOL_FIELDS(TURNOUT_PROTOCOL_FIELD_NAME)
#undef TURNOUT_PROTOCOL_FIELD_NAME
}  // namespace field

/// Every field name (for the binding's FIELD and the docs test).
inline constexpr std::array kFields{
#define TURNOUT_PROTOCOL_FIELD_ENTRY(name) field::name,
    TURNOUT_PROTOCOL_FIELDS(TURNOUT_PROTOCOL_FIELD_ENTRY)
#undef TURNOUT_PROTOCOL_FIELD_ENTRY
};

/// The health reply's `status` while the sidecar serves.
inline constexpr std::string_view kServing = "serving";

/// The wire's text of a config version or cache key: 16 lowercase hex digits.
[[nodiscard]] std::string hex16(std::uint64_t v);
/// The value of such a text (exactly 16 hex digits).
[[nodiscard]] std::optional<std::uint64_t> parse_hex16(std::string_view text) noexcept;

// ------------------------------------------------------------------------------------------ reading

/// A decoded msgpack map's fields by name: a flat list (a message has about a dozen keys and the
/// decoder caps a map at 256, so a scan beats a tree); the first of repeated keys wins. Views into
/// the message, which must outlive it.
class Fields {
 public:
  Fields() = default;
  /// The fields of `map`; bad_message if it is not a map or a key is not a string.
  [[nodiscard]] static Result<Fields> of(const msgpack::object& map);
  /// The value of `name`, nil included; nullptr if absent.
  [[nodiscard]] const msgpack::object* find(std::string_view name) const noexcept;
  /// The value of `name`; nullptr if absent or nil (nil means "not given").
  [[nodiscard]] const msgpack::object* get(std::string_view name) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return fields_.size(); }

 private:
  std::vector<std::pair<std::string_view, const msgpack::object*>> fields_;
};

/// Where a request came from: the socket (answered) or a fast-path client's ring (applied). A read-only socket
/// (loopback TCP without CURVE, --insecure-tcp read-only) takes only the ops that do not write (OpInfo::writes).
enum class Channel : std::uint8_t { socket, ring, read_only_socket };

/// A decoded request: the message (owned), the id its reply echoes, its op and its fields.
struct Envelope {
  msgpack::object_handle message;
  const msgpack::object* id = nullptr;  ///< echoed as is by the reply; nullptr: nil
  Op op = Op::health;
  Fields fields;
};

/// Decodes `payload` into `out`: a map within `limits`, of version kVersion, naming an op `channel`
/// takes. On an error `out.id` is already set when the message got that far, so the error reply
/// still carries the request's id.
[[nodiscard]] Result<Ok> decode_envelope(std::string_view payload, const DecodeLimits& limits, Channel channel,
                                         Envelope& out);

// ------------------------------------------------------------------------------- request decoders
// `now` is the receiver's clock, and every request happened then: the sidecar runs on its own clock.
// A `now` on the wire (an adopt's `at`) is checked (a non-finite or out-of-range one is refused with
// invalid_argument) and otherwise ignored: a client's clock has no say over expiry, budget days or
// breakers. The in-process Router takes injected time directly (replays), never through these.

/// route / explain -> RouteRequest (views into the message; `token_ids` holds the decoded token ids).
/// Without `input_tokens`, the count is estimate_input_tokens() of the prompt.
[[nodiscard]] Result<RouteRequest> decode_route_request(const Fields& f, TimeMs now,
                                                        std::vector<std::uint32_t>& token_ids);
/// report -> OutcomeReport (`usage` points into the message).
[[nodiscard]] Result<OutcomeReport> decode_report_request(const Fields& f, TimeMs now);

/// A quality verdict on a decision's answered request.
struct VerdictRequest {
  std::uint64_t decision_id = 0;
  bool accepted = false;
  TimeMs now = 0;
  friend bool operator==(const VerdictRequest&, const VerdictRequest&) = default;
};
[[nodiscard]] Result<VerdictRequest> decode_verdict_request(const Fields& f, TimeMs now);

/// adopt -> the Decision a fast-path client made, by indices into the table it names (checked by
/// Router::adopt). Figures no real decision has are refused; it is committed at `now`.
[[nodiscard]] Result<Decision> decode_adopt_request(const Fields& f, TimeMs now);

/// One outcome of a locally made decision (settle_local's `outcomes`), in names.
struct LocalOutcome {
  std::string_view target;
  Status status = Status::ok;
  const msgpack::object* usage = nullptr;  ///< the provider's native usage, or none
  std::int64_t ttft_ms = -1;
  std::int64_t latency_ms = -1;
};

/// settle_local: a decision a client's fallback Router made while the sidecar did not answer, with
/// what became of it so far, for the sidecar to count by names in its own table at its own clock.
struct LocalDecisionRequest {
  std::uint64_t spool_id = 0;  ///< the client's unique id of this entry: a re-sent one is applied once
  std::string_view scenario;
  std::string_view target;
  std::string_view endpoint;                ///< the replica's ("" for MaaS)
  std::vector<std::string_view> fallbacks;  ///< target names
  Money reserved_cost;
  std::vector<LocalOutcome> outcomes;
  std::optional<bool> accepted;  ///< its verdict, if given
};
/// At most this many outcomes and fallbacks per decision (a real one has a handful).
inline constexpr std::size_t kMaxLocalOutcomes = 64;
/// settle_local -> LocalDecisionRequest (views into the message). Figures no real decision has are refused.
[[nodiscard]] Result<LocalDecisionRequest> decode_settle_local_request(const Fields& f);

/// stats, health and reload carry no fields (unknown fields of any request are ignored).
struct StatsRequest {};
struct HealthRequest {};
struct ReloadRequest {};
[[nodiscard]] Result<StatsRequest> decode_stats_request(const Fields& f);
[[nodiscard]] Result<HealthRequest> decode_health_request(const Fields& f);
[[nodiscard]] Result<ReloadRequest> decode_reload_request(const Fields& f);

/// The `action` of a migration request that only reads (the default).
inline constexpr std::string_view kMigrationStatus = "status";

/// migration: the status of one scenario's migration (or, without `scenario`, of all), or an
/// operator's command on one (`action` one of kMigrationCommands).
struct MigrationRequest {
  std::string_view scenario;                ///< "" = every scenario (status only)
  std::optional<MigrationCommand> command;  ///< none: status
  friend bool operator==(const MigrationRequest&, const MigrationRequest&) = default;
};
/// migration -> MigrationRequest (views into the message): bad_message for an `action` that is not
/// a string or not status/promote/pause/resume/abort, or a command without `scenario`.
[[nodiscard]] Result<MigrationRequest> decode_migration_request(const Fields& f);

// ------------------------------------------------------------------------------- request encoders
// Each appends one request message to `out`. `id` is the request id the reply echoes; ring records
// carry none (nobody answers them). Fields at their "not given" value (an empty string or span, a
// negative count, now 0) are left out.

using RequestId = std::optional<std::uint64_t>;

/// route (or explain, `op`).
void encode_route_request(msgpack::sbuffer& out, Op op, const RouteRequest& r, RequestId id);
void encode_report_request(msgpack::sbuffer& out, const OutcomeReport& r, RequestId id);
void encode_verdict_request(msgpack::sbuffer& out, const VerdictRequest& r, RequestId id);
/// A fast-path client's ring record of `d`, with at most `max_prefix_blocks` leading prefix blocks
/// (a leading run is still a correct thing to learn). Allocates nothing once `out` has room.
void encode_adopt_request(msgpack::sbuffer& out, const Decision& d, std::size_t max_prefix_blocks);
void encode_settle_local_request(msgpack::sbuffer& out, const LocalDecisionRequest& r, RequestId id);
void encode_stats_request(msgpack::sbuffer& out, RequestId id);
void encode_health_request(msgpack::sbuffer& out, RequestId id);
void encode_reload_request(msgpack::sbuffer& out, RequestId id);
void encode_migration_request(msgpack::sbuffer& out, const MigrationRequest& r, RequestId id);

// ---------------------------------------------------------------------------------- reply encoders

/// A msgpack map under construction: entries are counted, the header is written by emit().
class MapWriter {
 public:
  using Packer = msgpack::packer<msgpack::sbuffer>;
  MapWriter() = default;
  MapWriter(const MapWriter&) = delete;
  MapWriter& operator=(const MapWriter&) = delete;

  /// Writes key `k` and returns the packer for its value.
  Packer& key(std::string_view k);
  void str(std::string_view k, std::string_view v);
  /// Key `k` with the map `m` as its value.
  void sub(std::string_view k, const MapWriter& m);
  /// The whole map (header and entries) appended to `out`.
  void emit(msgpack::sbuffer& out) const;
  /// The entries without the map header (to merge them into another map).
  void emit_fields(msgpack::sbuffer& out) const { out.write(body_.data(), body_.size()); }
  [[nodiscard]] std::uint32_t size() const noexcept { return n_; }
  /// The entries written so far (to append values after a key()).
  [[nodiscard]] msgpack::sbuffer& body() noexcept { return body_; }

 private:
  msgpack::sbuffer body_{256};  // most maps are small: not the default 8 KiB per map
  Packer pk_{body_};
  std::uint32_t n_ = 0;
};

/// The reply {v, id, ok: true, ...body}.
[[nodiscard]] std::string encode_reply(const msgpack::object* id, const MapWriter& body);
/// The reply {v, id, ok: false, error: {code: to_string(error.code), message}}.
[[nodiscard]] std::string encode_error_reply(const msgpack::object* id, const Error& error);

/// route / explain: the decision in names (`config` is the table it was made from).
void encode_decision_reply(MapWriter& body, const Config& config, const Decision& d);
/// A Usage's six token counts (the receipt's `usage`; also a ledger row's token columns).
void encode_usage(MapWriter& m, const Usage& u);
/// report: the receipt, `counted: true` (the sidecar applied it; a fast-path or local receipt a
/// client prices itself says `counted: false` until the sidecar has applied it).
void encode_receipt_reply(MapWriter& body, const ReportReceipt& r);

/// settle_local: the sidecar's id of the imported decision (later reports and verdicts use it), whether
/// the spool id was applied before (nothing changed), and how many of its outcomes and verdict were refused.
struct LocalDecisionReply {
  std::uint64_t decision_id = 0;
  bool duplicate = false;
  std::uint64_t rejected = 0;
  friend bool operator==(const LocalDecisionReply&, const LocalDecisionReply&) = default;
};
void encode_settle_local_reply(MapWriter& body, const LocalDecisionReply& r);

/// The fast path's state in a stats reply.
struct FastPathInfo {
  bool enabled = false;
  std::string table;    ///< the published table segment (enabled)
  std::string why_not;  ///< why the fast path is off (not enabled)
  std::uint32_t clients = 0;
  std::uint64_t records = 0;   ///< ring records applied
  std::uint64_t rejected = 0;  ///< ... that were answered with an error
  std::uint64_t view_dropped = 0;
  friend bool operator==(const FastPathInfo&, const FastPathInfo&) = default;
};

/// One circuit breaker in a stats reply (per target, per replica of a pool).
struct BreakerInfo {
  std::string target;
  std::optional<std::string> endpoint;  ///< the replica's; none for MaaS
  Breaker::Phase phase = Breaker::Phase::closed;
  std::uint32_t consecutive_failures = 0;
  std::uint64_t times_opened = 0;
  std::int64_t inflight = 0;
  friend bool operator==(const BreakerInfo&, const BreakerInfo&) = default;
};

/// The last reload in a stats reply (and on /metrics): whether it took, when, and why not. A failed
/// reload changes nothing else, so this is where it shows.
struct ReloadStatus {
  bool ok = true;                 ///< the last reload took (true before the first)
  TimeMs at = 0;                  ///< when it was tried (0: not since the start)
  std::uint64_t failures = 0;     ///< reloads that failed since the start
  std::optional<ErrorCode> code;  ///< why the last one failed (not ok)
  std::string message;
  friend bool operator==(const ReloadStatus&, const ReloadStatus&) = default;
};

/// stats: the sidecar, its fast path, its ledger and its breakers.
struct StatsReply {
  std::int64_t pid = 0;
  std::uint64_t generation = 0;
  std::uint64_t config_version = 0;
  std::string config;  ///< the table's path
  std::string shm;
  double uptime_s = 0;
  std::uint64_t pending_decisions = 0;
  FastPathInfo fast_path;
  ReloadStatus last_reload;
  std::vector<std::string> counters;  ///< one msgpack map per ledger row, packed by the ledger's listing
  std::vector<BreakerInfo> breakers;
  /// One msgpack map per pool replica: `target`, `endpoint` and the KvIngestStats fields of its KV events.
  std::vector<std::string> kv_events;
  /// One msgpack map per scenario with a migration (encode_migration_status).
  std::vector<std::string> migrations;
  friend bool operator==(const StatsReply&, const StatsReply&) = default;
};
void encode_stats_reply(MapWriter& body, const StatsReply& s);

/// One scenario's migration as a map (the migration reply's and the stats reply's, and the Python
/// binding's dicts): the run from `status`, the block from its scenario in `config`.
void encode_migration_status(MapWriter& m, const Config& config, const MigrationStatus& status);
/// One move of a state machine as a map.
void encode_migration_transition(MapWriter& m, const MigrationTransition& t);
/// migration, status: `migrations`, the maps of `statuses`.
void encode_migration_status_reply(MapWriter& body, const Config& config, const std::vector<MigrationStatus>& statuses);
/// migration, a command: the `transition` it made and the `migration` now.
void encode_migration_command_reply(MapWriter& body, const Config& config, const MigrationTransition& t,
                                    const MigrationStatus& status);

/// health: serving, and which table.
struct HealthReply {
  std::string status{kServing};
  std::int64_t pid = 0;
  std::uint64_t generation = 0;
  std::uint64_t config_version = 0;
  double uptime_s = 0;
  friend bool operator==(const HealthReply&, const HealthReply&) = default;
};
void encode_health_reply(MapWriter& body, const HealthReply& h);

/// reload: the table now served.
struct ReloadReply {
  std::uint64_t config_version = 0;
  std::uint64_t generation = 0;
  friend bool operator==(const ReloadReply&, const ReloadReply&) = default;
};
void encode_reload_reply(MapWriter& body, const ReloadReply& r);

// ---------------------------------------------------------------------------------- reply decoders
// For the tests and C++ clients of the socket.

/// A decoded reply: the message (owned), the id it echoes, and its error or its fields.
struct Reply {
  msgpack::object_handle message;
  const msgpack::object* id = nullptr;
  std::optional<Error> error;  ///< ok: false (a code this build does not know reads as `internal`)
  Fields fields;               ///< ok: true
};
/// Decodes a reply's envelope; a malformed reply is bad_message.
[[nodiscard]] Result<Reply> decode_reply(std::string_view payload);

/// A decision as the wire gives it: in names.
struct DecisionReply {
  std::uint64_t decision_id = 0;
  std::string scenario;
  std::string target;
  std::optional<std::string> endpoint;  ///< the replica's; none for MaaS
  std::vector<std::string> fallbacks;
  std::vector<std::optional<std::string>> fallback_endpoints;  ///< each fallback's replica; none for MaaS
  std::vector<std::string> reasons;                            ///< reason_text() of each reason
  Money predicted_cost;
  Money reserved_cost;  ///< the worst case held against the budget (0 without one)
  std::int64_t expected_cached_tokens = 0;
  std::uint64_t cache_key = 0;  ///< 0: none
  std::uint64_t config_version = 0;
  TimeMs at = 0;
  friend bool operator==(const DecisionReply&, const DecisionReply&) = default;
};
[[nodiscard]] Result<DecisionReply> decode_decision_reply(const Fields& f);
/// The receipt (its usage's reported_cost is not on the wire).
[[nodiscard]] Result<ReportReceipt> decode_receipt_reply(const Fields& f);
[[nodiscard]] Result<StatsReply> decode_stats_reply(const Fields& f);
[[nodiscard]] Result<HealthReply> decode_health_reply(const Fields& f);
[[nodiscard]] Result<ReloadReply> decode_reload_reply(const Fields& f);
[[nodiscard]] Result<LocalDecisionReply> decode_settle_local_reply(const Fields& f);

}  // namespace turnout::protocol
