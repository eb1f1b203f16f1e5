#include "turnout/protocol.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "turnout/prefix.hpp"

namespace turnout::protocol {

namespace {

using Packer = MapWriter::Packer;

void pack_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<std::uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

// ------------------------------------------------------------------------------------------ reading

/// A field of the wrong type or range; thrown only inside this file and caught by the public
/// decoder it happened in (as config.cpp's Fault).
struct BadField {
  Error error;
};

[[noreturn]] void bad(ErrorCode code, std::string message) { throw BadField{{code, std::move(message)}}; }

std::string quoted(std::string_view k) { return "'" + std::string(k) + "'"; }

/// Runs a decoder body; a BadField it throws becomes its error.
template <class Fn>
auto decoding(Fn&& body) -> Result<decltype(body())> {
  try {
    return body();
  } catch (const BadField& b) {
    return b.error;
  }
}

/// Typed reads of Fields, each throwing BadField with the code the wire gives for it.
class Reader {
 public:
  explicit Reader(const Fields& f) : f_(f) {}

  [[nodiscard]] const msgpack::object* get(std::string_view k) const { return f_.get(k); }
  [[nodiscard]] const msgpack::object& required(std::string_view k) const {
    const auto* o = f_.get(k);
    if (o == nullptr) bad(ErrorCode::bad_message, quoted(k) + " is required");
    return *o;
  }
  [[nodiscard]] std::optional<std::string_view> str(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type != msgpack::type::STR) bad(ErrorCode::bad_message, quoted(k) + " must be a string");
    return std::string_view(o->via.str.ptr, o->via.str.size);
  }
  [[nodiscard]] std::string_view required_str(std::string_view k) const {
    auto v = str(k);
    if (!v) bad(ErrorCode::bad_message, quoted(k) + " is required");
    return *v;
  }
  /// A non-negative count (nil: not given).
  [[nodiscard]] std::optional<std::int64_t> count(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type == msgpack::type::POSITIVE_INTEGER) {
      if (o->via.u64 > static_cast<std::uint64_t>(INT64_MAX))
        bad(ErrorCode::invalid_argument, quoted(k) + " is too large");
      return static_cast<std::int64_t>(o->via.u64);
    }
    if (o->type == msgpack::type::NEGATIVE_INTEGER) {
      bad(ErrorCode::invalid_argument, quoted(k) + " must be >= 0 (nil means unknown)");
    }
    bad(ErrorCode::bad_message, quoted(k) + " must be an integer");
  }
  /// Any integer.
  [[nodiscard]] std::optional<std::int64_t> integer(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type == msgpack::type::NEGATIVE_INTEGER) return o->via.i64;
    return count(k);
  }
  [[nodiscard]] std::uint64_t required_id(std::string_view k) const {
    const auto& o = required(k);
    if (o.type != msgpack::type::POSITIVE_INTEGER)
      bad(ErrorCode::bad_message, quoted(k) + " must be a positive integer");
    return o.via.u64;
  }
  [[nodiscard]] std::optional<double> number(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    switch (o->type) {
      case msgpack::type::POSITIVE_INTEGER: return static_cast<double>(o->via.u64);
      case msgpack::type::NEGATIVE_INTEGER: return static_cast<double>(o->via.i64);
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64: return o->via.f64;
      default: bad(ErrorCode::bad_message, quoted(k) + " must be a number");
    }
  }
  [[nodiscard]] std::optional<bool> boolean(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type != msgpack::type::BOOLEAN) bad(ErrorCode::bad_message, quoted(k) + " must be a boolean");
    return o->via.boolean;
  }
  /// A time in seconds (the wire's `now`, `at` of replies), in ms; nullopt if not given.
  [[nodiscard]] std::optional<TimeMs> seconds(std::string_view k) const {
    const auto s = number(k);
    if (!s) return std::nullopt;
    auto ms = time_from_seconds(*s);
    if (!ms) bad(ErrorCode::invalid_argument, quoted(k) + ": " + ms.error().message);
    return *ms;
  }
  /// When a request happened: the receiver's clock `now`, always. The sender's own time (`now`; an
  /// adopt's `at`) is checked like any field, so a malformed one is refused, but has no say: a
  /// client's clock must not expire decisions, reopen budgets or move breakers (docs/protocol.md).
  [[nodiscard]] TimeMs received_at(std::string_view k, TimeMs now) const {
    if (k == field::at) {
      (void)count(k);  // a fast-path record's time: ms, as the ring encodes it
    } else {
      (void)seconds(k);
    }
    return now;
  }
  /// A duration in ms (ttft_ms, latency_ms); -1 if not given.
  [[nodiscard]] std::int64_t millis(std::string_view k) const {
    const auto x = number(k);
    if (!x) return -1;
    const auto ms = duration_ms(*x, k);
    if (!ms) bad(ms.error().code, ms.error().message);
    return *ms;
  }
  [[nodiscard]] Money usd(std::string_view k) const {
    const auto text = required_str(k);
    auto m = parse_usd(text);
    if (!m) bad(ErrorCode::bad_message, quoted(k) + " is not a USD amount: " + m.error().message);
    return *m;
  }
  /// A config version or cache key (16 hex digits); 0 when nil.
  [[nodiscard]] std::uint64_t hex(std::string_view k) const {
    const auto text = str(k);
    if (!text) return 0;
    const auto v = parse_hex16(*text);
    if (!v) bad(ErrorCode::bad_message, quoted(k) + " must be 16 hex digits");
    return *v;
  }
  [[nodiscard]] Fields map(std::string_view k) const {
    auto f = Fields::of(required(k));
    if (!f) bad(ErrorCode::bad_message, quoted(k) + " must be a map with string keys");
    return std::move(f).value();
  }
  [[nodiscard]] const msgpack::object_array& array(std::string_view k) const {
    const auto& o = required(k);
    if (o.type != msgpack::type::ARRAY) bad(ErrorCode::bad_message, quoted(k) + " must be an array");
    return o.via.array;
  }
  [[nodiscard]] std::string string(std::string_view k) const { return std::string(required_str(k)); }
  [[nodiscard]] std::optional<std::string> optional_string(std::string_view k) const {
    const auto v = str(k);
    return v ? std::optional<std::string>(*v) : std::nullopt;
  }

 private:
  const Fields& f_;
};

std::string_view as_str(const msgpack::object& o, std::string_view what) {
  if (o.type != msgpack::type::STR) bad(ErrorCode::bad_message, std::string(what) + " must be strings");
  return {o.via.str.ptr, o.via.str.size};
}

std::uint32_t table_index(const msgpack::object& o, std::string_view k) {
  if (o.type != msgpack::type::POSITIVE_INTEGER || o.via.u64 > 0xFFFFFFFFULL) {
    bad(ErrorCode::bad_message, quoted(k) + " must be an index (a 32-bit unsigned integer)");
  }
  return static_cast<std::uint32_t>(o.via.u64);
}

std::string expected_ops() {
  std::string s;
  for (std::size_t i = 0; i < kOps.size(); ++i) {
    if (i > 0) s += i + 1 == kOps.size() ? " or " : ", ";
    s += kOps[i].name;
  }
  return s;
}

std::string expected_statuses() {
  std::string s;
  for (std::size_t i = 0; i < kStatusCount; ++i) {
    if (i > 0) s += i + 1 == kStatusCount ? " or " : ", ";
    s += to_string(static_cast<Status>(i));
  }
  return s;
}

// ------------------------------------------------------------------------------------------ writing

/// Packs `v` as the wire's time in seconds.
void pack_seconds(Packer& pk, TimeMs ms) { pk.pack(static_cast<double>(ms) / 1000.0); }

/// The request envelope's head: the map header for `fields` more entries, v, op and the id.
void begin_request(Packer& pk, Op op, RequestId id, std::uint32_t fields) {
  pk.pack_map(2 + (id ? 1 : 0) + fields);
  pack_str(pk, field::v);
  pk.pack(kVersion);
  pack_str(pk, field::op);
  pack_str(pk, to_string(op));
  if (id) {
    pack_str(pk, field::id);
    pk.pack(*id);
  }
}

std::string reply_bytes(const msgpack::object* id, const Error* error, const MapWriter* body) {
  msgpack::sbuffer out{512};
  Packer p(out);
  p.pack_map(3 + (error != nullptr ? 1 : (body != nullptr ? body->size() : 0)));
  pack_str(p, field::v);
  p.pack(kVersion);
  pack_str(p, field::id);
  if (id != nullptr) {
    p.pack(*id);
  } else {
    p.pack_nil();
  }
  pack_str(p, field::ok);
  p.pack(error == nullptr);
  if (error != nullptr) {
    MapWriter e;
    e.str(field::code, to_string(error->code));
    e.str(field::message, error->message);
    pack_str(p, field::error);
    e.emit(out);
  } else if (body != nullptr) {
    body->emit_fields(out);
  }
  return {out.data(), out.size()};
}

}  // namespace

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::optional<std::uint64_t> parse_hex16(std::string_view text) noexcept {
  if (text.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : text) {
    int d = 0;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return std::nullopt;
    }
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  return v;
}

// ------------------------------------------------------------------------------------------- Fields

Result<Fields> Fields::of(const msgpack::object& map) {
  if (map.type != msgpack::type::MAP) return make_error(ErrorCode::bad_message, "a message is a msgpack map");
  Fields f;
  f.fields_.reserve(map.via.map.size);
  for (std::uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto& kv = map.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) return make_error(ErrorCode::bad_message, "message keys must be strings");
    const std::string_view key(kv.key.via.str.ptr, kv.key.via.str.size);
    if (f.find(key) == nullptr) f.fields_.emplace_back(key, &kv.val);
  }
  return f;
}

const msgpack::object* Fields::find(std::string_view name) const noexcept {
  for (const auto& [key, value] : fields_) {
    if (key == name) return value;
  }
  return nullptr;
}

const msgpack::object* Fields::get(std::string_view name) const noexcept {
  const msgpack::object* o = find(name);
  if (o == nullptr || o->type == msgpack::type::NIL) return nullptr;
  return o;
}

// ----------------------------------------------------------------------------------------- envelope

Result<Ok> decode_envelope(std::string_view payload, const DecodeLimits& limits, Channel channel, Envelope& out) {
  std::size_t offset = 0;
  const msgpack::unpack_limit limit(limits.array, limits.map, limits.str, limits.bin, limits.ext, limits.depth);
  try {
    out.message = msgpack::unpack(payload.data(), payload.size(), offset, nullptr, nullptr, limit);
  } catch (const msgpack::depth_size_overflow&) {
    return make_error(ErrorCode::too_deep, "message nested deeper than " + std::to_string(limits.depth) + " levels");
  } catch (const msgpack::size_overflow& e) {
    return make_error(ErrorCode::too_large, std::string("message exceeds a decoder limit (") + e.what() + ")");
  } catch (const std::exception& e) {
    return make_error(ErrorCode::bad_message, std::string("not a msgpack message (") + e.what() + ")");
  }
  if (offset != payload.size()) return make_error(ErrorCode::bad_message, "trailing bytes after the msgpack message");
  const msgpack::object& request = out.message.get();
  if (request.type != msgpack::type::MAP) return make_error(ErrorCode::bad_message, "a request is a msgpack map");
  auto fields = Fields::of(request);
  if (!fields) return make_error(ErrorCode::bad_message, "request keys must be strings");
  out.fields = std::move(fields).value();
  out.id = out.fields.get(field::id);
  const auto* v = out.fields.get(field::v);
  if (v == nullptr || v->type != msgpack::type::POSITIVE_INTEGER || v->via.u64 != kVersion) {
    return make_error(ErrorCode::bad_message,
                      "unsupported protocol version (this sidecar speaks v=" + std::to_string(kVersion) + ")");
  }
  const auto* op = out.fields.get(field::op);
  if (op == nullptr) return make_error(ErrorCode::bad_message, "'op' is required");
  if (op->type != msgpack::type::STR) return make_error(ErrorCode::bad_message, "'op' must be a string");
  const std::string_view name(op->via.str.ptr, op->via.str.size);
  const auto known = op_from_string(name);
  if (!known) {
    return make_error(ErrorCode::unknown_op, "unknown op '" + std::string(name) + "'; expected " + expected_ops());
  }
  out.op = *known;
  const OpInfo& info = kOps[static_cast<std::size_t>(*known)];
  // A ring carries what a fast-path client did, nothing else; an adopt comes only from its ring.
  if (channel == Channel::ring && !info.ring) {
    return make_error(ErrorCode::bad_message, "a fast-path ring carries adopt, report and verdict records only");
  }
  if (channel != Channel::ring && !info.socket) {
    return make_error(ErrorCode::bad_message, std::string(info.name) + " comes only through a fast-path ring");
  }
  if (channel == Channel::read_only_socket && info.writes) {
    return make_error(ErrorCode::permission_denied,
                      std::string(info.name) +
                          " changes the sidecar's state and this endpoint is read-only (loopback TCP without CURVE): "
                          "use the ipc:// socket or CURVE");
  }
  return Ok{};
}

// --------------------------------------------------------------------------------- request decoders

Result<RouteRequest> decode_route_request(const Fields& f, TimeMs now, std::vector<std::uint32_t>& token_ids) {
  return decoding([&] {
    const Reader in(f);
    RouteRequest r;
    r.scenario = in.required_str(field::scenario);
    r.key = in.str(field::key).value_or("");
    r.data_class = in.str(field::data_class).value_or("");
    const auto text = in.str(field::text);
    r.text = text.value_or("");
    std::optional<std::span<const std::uint32_t>> ids;
    if (const auto* a = in.get(field::token_ids)) {
      if (a->type != msgpack::type::ARRAY) bad(ErrorCode::bad_message, "'token_ids' must be an array of integers");
      token_ids.reserve(a->via.array.size);
      for (std::uint32_t i = 0; i < a->via.array.size; ++i) {
        const auto& t = a->via.array.ptr[i];
        if (t.type != msgpack::type::POSITIVE_INTEGER || t.via.u64 > 0xFFFFFFFFULL) {
          bad(ErrorCode::invalid_argument, "token ids must be integers that fit in 32 bits");
        }
        token_ids.push_back(static_cast<std::uint32_t>(t.via.u64));
      }
      r.token_ids = token_ids;
      ids = r.token_ids;
    }
    r.input_tokens = in.count(field::input_tokens).value_or(estimate_input_tokens(ids, text));
    r.max_output_tokens = in.count(field::max_output_tokens).value_or(-1);
    r.expected_cached_tokens = in.count(field::expected_cached_tokens).value_or(0);
    r.now = in.received_at(field::now, now);
    return r;
  });
}

Result<OutcomeReport> decode_report_request(const Fields& f, TimeMs now) {
  return decoding([&] {
    const Reader in(f);
    OutcomeReport o;
    o.decision_id = in.required_id(field::decision_id);
    o.target = in.required_str(field::target);
    const auto status = in.required_str(field::status);
    const auto st = status_from_string(status);
    if (!st) {
      bad(ErrorCode::invalid_argument, "unknown status '" + std::string(status) + "'; expected " + expected_statuses());
    }
    o.status = *st;
    o.usage = in.get(field::usage);
    o.ttft_ms = in.millis(field::ttft_ms);
    o.latency_ms = in.millis(field::latency_ms);
    o.accepted = in.boolean(field::accepted);
    o.now = in.received_at(field::now, now);
    return o;
  });
}

Result<VerdictRequest> decode_verdict_request(const Fields& f, TimeMs now) {
  return decoding([&] {
    const Reader in(f);
    VerdictRequest v;
    v.decision_id = in.required_id(field::decision_id);
    const auto accepted = in.boolean(field::accepted);
    if (!accepted) bad(ErrorCode::bad_message, "'accepted' is required");
    v.accepted = *accepted;
    v.now = in.received_at(field::now, now);
    return v;
  });
}

Result<Decision> decode_adopt_request(const Fields& f, TimeMs now) {
  return decoding([&] {
    const Reader in(f);
    Decision d;
    d.id = in.required_id(field::decision_id);
    d.config_version = in.required_id(field::config_version);
    d.scenario = table_index(in.required(field::scenario), field::scenario);
    d.placement = {table_index(in.required(field::target), field::target),
                   table_index(in.required(field::replica), field::replica)};
    if (const auto* fb = in.get(field::fallbacks)) {
      if (fb->type != msgpack::type::ARRAY)
        bad(ErrorCode::bad_message, "'fallbacks' must be an array of [target, replica]");
      for (std::uint32_t i = 0; i < fb->via.array.size; ++i) {
        const auto& p = fb->via.array.ptr[i];
        if (p.type != msgpack::type::ARRAY || p.via.array.size != 2) {
          bad(ErrorCode::bad_message, "'fallbacks' must be an array of [target, replica]");
        }
        d.fallbacks.push_back(
            {table_index(p.via.array.ptr[0], field::fallbacks), table_index(p.via.array.ptr[1], field::fallbacks)});
      }
    }
    d.spilled = in.boolean(field::spilled).value_or(false);
    d.reserved_cost = Money::from_picos(in.count(field::reserved_cost).value_or(0));
    d.active_blocks = in.count(field::active_blocks).value_or(0);
    if (const auto* p = in.get(field::prefix)) {
      if (p->type != msgpack::type::BIN || p->via.bin.size % 8 != 0) {
        bad(ErrorCode::bad_message, "'prefix' must be bin of little-endian 64-bit block hashes");
      }
      d.prefix.resize(p->via.bin.size / 8);
      if (!d.prefix.empty()) std::memcpy(d.prefix.data(), p->via.bin.ptr, p->via.bin.size);  // ptr may be null
    }
    // Figures a real decision cannot have are refused: they would overflow the budget sums.
    if (d.reserved_cost.picos() > 1'000'000'000'000'000LL)
      bad(ErrorCode::invalid_argument, "reserved_cost above 1,000 USD");
    if (d.active_blocks > (1LL << 26)) bad(ErrorCode::invalid_argument, "active_blocks above 2^26");
    d.at = in.received_at(field::at, now);  // committed at the sidecar's clock, as every request
    return d;
  });
}

Result<LocalDecisionRequest> decode_settle_local_request(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    LocalDecisionRequest r;
    r.spool_id = in.required_id(field::spool_id);
    r.scenario = in.required_str(field::scenario);
    r.target = in.required_str(field::target);
    r.endpoint = in.str(field::endpoint).value_or("");
    if (const auto* fb = in.get(field::fallbacks)) {
      if (fb->type != msgpack::type::ARRAY || fb->via.array.size > kMaxLocalOutcomes) {
        bad(ErrorCode::bad_message, "'fallbacks' must be an array of at most 64 target names");
      }
      for (std::uint32_t i = 0; i < fb->via.array.size; ++i)
        r.fallbacks.push_back(as_str(fb->via.array.ptr[i], "fallbacks"));
    }
    r.reserved_cost = in.get(field::reserved_cost_usd) != nullptr ? in.usd(field::reserved_cost_usd) : Money{};
    if (r.reserved_cost.picos() < 0 || r.reserved_cost.picos() > 1'000'000'000'000'000LL) {
      bad(ErrorCode::invalid_argument, "reserved_cost_usd must be between 0 and 1,000 USD");
    }
    if (const auto* os = in.get(field::outcomes)) {
      if (os->type != msgpack::type::ARRAY || os->via.array.size > kMaxLocalOutcomes) {
        bad(ErrorCode::bad_message, "'outcomes' must be an array of at most 64 outcome maps");
      }
      for (std::uint32_t i = 0; i < os->via.array.size; ++i) {
        auto of = Fields::of(os->via.array.ptr[i]);
        if (!of) bad(ErrorCode::bad_message, "'outcomes' must be an array of maps with string keys");
        const Reader o(*of);
        LocalOutcome x;
        x.target = o.required_str(field::target);
        const auto status = o.required_str(field::status);
        const auto st = status_from_string(status);
        if (!st) {
          bad(ErrorCode::invalid_argument,
              "unknown status '" + std::string(status) + "'; expected " + expected_statuses());
        }
        x.status = *st;
        x.usage = o.get(field::usage);
        x.ttft_ms = o.millis(field::ttft_ms);
        x.latency_ms = o.millis(field::latency_ms);
        r.outcomes.push_back(x);
      }
    }
    r.accepted = in.boolean(field::accepted);
    return r;
  });
}

Result<MigrationRequest> decode_migration_request(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    MigrationRequest r;
    r.scenario = in.str(field::scenario).value_or("");
    const auto action = in.str(field::action).value_or(kMigrationStatus);
    if (action != kMigrationStatus) {
      r.command = migration_command_from_string(action);
      if (!r.command) {
        std::string expected(kMigrationStatus);
        for (std::size_t i = 0; i < kMigrationCommands.size(); ++i) {
          expected += i + 1 == kMigrationCommands.size() ? " or " : ", ";
          expected += kMigrationCommands[i];
        }
        bad(ErrorCode::bad_message, "unknown migration action '" + std::string(action) + "'; expected " + expected);
      }
      if (r.scenario.empty()) bad(ErrorCode::bad_message, "'scenario' is required for " + std::string(action));
    }
    return r;
  });
}

Result<StatsRequest> decode_stats_request(const Fields& /*f*/) { return StatsRequest{}; }
Result<HealthRequest> decode_health_request(const Fields& /*f*/) { return HealthRequest{}; }
Result<ReloadRequest> decode_reload_request(const Fields& /*f*/) { return ReloadRequest{}; }

// --------------------------------------------------------------------------------- request encoders

void encode_route_request(msgpack::sbuffer& out, Op op, const RouteRequest& r, RequestId id) {
  Packer pk(out);
  const bool given[] = {!r.key.empty(),
                        !r.data_class.empty(),
                        r.input_tokens >= 0,
                        r.max_output_tokens >= 0,
                        r.expected_cached_tokens != 0,
                        !r.token_ids.empty(),
                        !r.text.empty(),
                        r.now != 0};
  begin_request(pk, op, id, 1 + static_cast<std::uint32_t>(std::count(std::begin(given), std::end(given), true)));
  pack_str(pk, field::scenario);
  pack_str(pk, r.scenario);
  auto str = [&](bool on, std::string_view k, std::string_view v) {
    if (!on) return;
    pack_str(pk, k);
    pack_str(pk, v);
  };
  auto num = [&](bool on, std::string_view k, std::int64_t v) {
    if (!on) return;
    pack_str(pk, k);
    pk.pack(v);
  };
  str(given[0], field::key, r.key);
  str(given[1], field::data_class, r.data_class);
  num(given[2], field::input_tokens, r.input_tokens);
  num(given[3], field::max_output_tokens, r.max_output_tokens);
  num(given[4], field::expected_cached_tokens, r.expected_cached_tokens);
  if (given[5]) {
    pack_str(pk, field::token_ids);
    pk.pack_array(static_cast<std::uint32_t>(r.token_ids.size()));
    for (const auto t : r.token_ids) pk.pack(t);
  }
  str(given[6], field::text, r.text);
  if (given[7]) {
    pack_str(pk, field::now);
    pack_seconds(pk, r.now);
  }
}

void encode_report_request(msgpack::sbuffer& out, const OutcomeReport& r, RequestId id) {
  Packer pk(out);
  const bool given[] = {r.usage != nullptr, r.ttft_ms >= 0, r.latency_ms >= 0, r.accepted.has_value(), r.now != 0};
  begin_request(pk, Op::report, id,
                3 + static_cast<std::uint32_t>(std::count(std::begin(given), std::end(given), true)));
  pack_str(pk, field::decision_id);
  pk.pack(r.decision_id);
  pack_str(pk, field::target);
  pack_str(pk, r.target);
  pack_str(pk, field::status);
  pack_str(pk, to_string(r.status));
  if (given[0]) {
    pack_str(pk, field::usage);
    pk.pack(*r.usage);
  }
  if (given[1]) {
    pack_str(pk, field::ttft_ms);
    pk.pack(r.ttft_ms);
  }
  if (given[2]) {
    pack_str(pk, field::latency_ms);
    pk.pack(r.latency_ms);
  }
  if (given[3]) {
    pack_str(pk, field::accepted);
    pk.pack(*r.accepted);
  }
  if (given[4]) {
    pack_str(pk, field::now);
    pack_seconds(pk, r.now);
  }
}

void encode_verdict_request(msgpack::sbuffer& out, const VerdictRequest& r, RequestId id) {
  Packer pk(out);
  begin_request(pk, Op::verdict, id, r.now != 0 ? 3 : 2);
  pack_str(pk, field::decision_id);
  pk.pack(r.decision_id);
  pack_str(pk, field::accepted);
  pk.pack(r.accepted);
  if (r.now != 0) {
    pack_str(pk, field::now);
    pack_seconds(pk, r.now);
  }
}

void encode_adopt_request(msgpack::sbuffer& out, const Decision& d, std::size_t max_prefix_blocks) {
  Packer pk(out);
  begin_request(pk, Op::adopt, std::nullopt, 11);
  pack_str(pk, field::decision_id);
  pk.pack(d.id);
  pack_str(pk, field::config_version);
  pk.pack(d.config_version);
  pack_str(pk, field::scenario);
  pk.pack(d.scenario);
  pack_str(pk, field::target);
  pk.pack(d.placement.target);
  pack_str(pk, field::replica);
  pk.pack(d.placement.replica);
  pack_str(pk, field::fallbacks);
  pk.pack_array(static_cast<std::uint32_t>(d.fallbacks.size()));
  for (const auto& f : d.fallbacks) {
    pk.pack_array(2);
    pk.pack(f.target);
    pk.pack(f.replica);
  }
  pack_str(pk, field::spilled);
  pk.pack(d.spilled);
  pack_str(pk, field::reserved_cost);
  pk.pack(d.reserved_cost.picos());
  pack_str(pk, field::active_blocks);
  pk.pack(d.active_blocks);
  pack_str(pk, field::prefix);
  // Little-endian words (the hosts Turnout runs on).
  const std::size_t posted = std::min(d.prefix.size(), max_prefix_blocks);
  const auto prefix_bytes = static_cast<std::uint32_t>(posted * 8);
  pk.pack_bin(prefix_bytes);
  pk.pack_bin_body(reinterpret_cast<const char*>(d.prefix.data()), prefix_bytes);
  pack_str(pk, field::at);
  pk.pack(d.at);
}

void encode_settle_local_request(msgpack::sbuffer& out, const LocalDecisionRequest& r, RequestId id) {
  Packer pk(out);
  const bool given[] = {!r.endpoint.empty(), !r.fallbacks.empty(), !r.outcomes.empty(), r.accepted.has_value()};
  begin_request(pk, Op::settle_local, id,
                4 + static_cast<std::uint32_t>(std::count(std::begin(given), std::end(given), true)));
  pack_str(pk, field::spool_id);
  pk.pack(r.spool_id);
  pack_str(pk, field::scenario);
  pack_str(pk, r.scenario);
  pack_str(pk, field::target);
  pack_str(pk, r.target);
  pack_str(pk, field::reserved_cost_usd);
  pack_str(pk, r.reserved_cost.to_usd_string());
  if (given[0]) {
    pack_str(pk, field::endpoint);
    pack_str(pk, r.endpoint);
  }
  if (given[1]) {
    pack_str(pk, field::fallbacks);
    pk.pack_array(static_cast<std::uint32_t>(r.fallbacks.size()));
    for (const auto name : r.fallbacks) pack_str(pk, name);
  }
  if (given[2]) {
    pack_str(pk, field::outcomes);
    pk.pack_array(static_cast<std::uint32_t>(r.outcomes.size()));
    for (const LocalOutcome& o : r.outcomes) {
      const bool has[] = {o.usage != nullptr, o.ttft_ms >= 0, o.latency_ms >= 0};
      pk.pack_map(2 + static_cast<std::uint32_t>(std::count(std::begin(has), std::end(has), true)));
      pack_str(pk, field::target);
      pack_str(pk, o.target);
      pack_str(pk, field::status);
      pack_str(pk, to_string(o.status));
      if (has[0]) {
        pack_str(pk, field::usage);
        pk.pack(*o.usage);
      }
      if (has[1]) {
        pack_str(pk, field::ttft_ms);
        pk.pack(o.ttft_ms);
      }
      if (has[2]) {
        pack_str(pk, field::latency_ms);
        pk.pack(o.latency_ms);
      }
    }
  }
  if (given[3]) {
    pack_str(pk, field::accepted);
    pk.pack(*r.accepted);
  }
}

void encode_stats_request(msgpack::sbuffer& out, RequestId id) {
  Packer pk(out);
  begin_request(pk, Op::stats, id, 0);
}
void encode_health_request(msgpack::sbuffer& out, RequestId id) {
  Packer pk(out);
  begin_request(pk, Op::health, id, 0);
}
void encode_reload_request(msgpack::sbuffer& out, RequestId id) {
  Packer pk(out);
  begin_request(pk, Op::reload, id, 0);
}
void encode_migration_request(msgpack::sbuffer& out, const MigrationRequest& r, RequestId id) {
  Packer pk(out);
  begin_request(pk, Op::migration, id, r.scenario.empty() ? 1 : 2);
  if (!r.scenario.empty()) {
    pack_str(pk, field::scenario);
    pack_str(pk, r.scenario);
  }
  pack_str(pk, field::action);
  pack_str(pk, r.command ? to_string(*r.command) : kMigrationStatus);
}

// ------------------------------------------------------------------------------------ reply encoders

MapWriter::Packer& MapWriter::key(std::string_view k) {
  ++n_;
  pack_str(pk_, k);
  return pk_;
}

void MapWriter::str(std::string_view k, std::string_view v) { pack_str(key(k), v); }

void MapWriter::sub(std::string_view k, const MapWriter& m) {
  key(k);
  m.emit(body_);
}

void MapWriter::emit(msgpack::sbuffer& out) const {
  Packer p(out);
  p.pack_map(n_);
  out.write(body_.data(), body_.size());
}

std::string encode_reply(const msgpack::object* id, const MapWriter& body) { return reply_bytes(id, nullptr, &body); }

std::string encode_error_reply(const msgpack::object* id, const Error& error) {
  return reply_bytes(id, &error, nullptr);
}

void encode_decision_reply(MapWriter& body, const Config& config, const Decision& d) {
  const Target& t = config.targets[d.placement.target];
  body.key(field::decision_id).pack(d.id);
  body.str(field::scenario, config.scenarios[d.scenario].name);
  body.str(field::target, t.name);
  if (d.placement.replica == kNone) {
    body.key(field::endpoint).pack_nil();
  } else {
    body.str(field::endpoint, t.replicas[d.placement.replica].endpoint);
  }
  auto& fb = body.key(field::fallbacks);
  fb.pack_array(static_cast<std::uint32_t>(d.fallbacks.size()));
  for (const auto& f : d.fallbacks) pack_str(fb, config.targets[f.target].name);
  auto& fe = body.key(field::fallback_endpoints);
  fe.pack_array(static_cast<std::uint32_t>(d.fallbacks.size()));
  for (const auto& f : d.fallbacks) {
    if (f.replica == kNone) {
      fe.pack_nil();
    } else {
      pack_str(fe, config.targets[f.target].replicas[f.replica].endpoint);
    }
  }
  auto& rs = body.key(field::reasons);
  rs.pack_array(static_cast<std::uint32_t>(d.reasons.size()));
  for (const auto& r : d.reasons) pack_str(rs, reason_text(config, r));
  body.str(field::predicted_cost_usd, d.predicted_cost.to_usd_string());
  body.str(field::reserved_cost_usd, d.reserved_cost.to_usd_string());
  body.key(field::expected_cached_tokens).pack(d.expected_cached_tokens);
  if (d.cache_key == 0) {
    body.key(field::cache_key).pack_nil();
  } else {
    body.str(field::cache_key, hex16(d.cache_key));
  }
  body.str(field::config_version, hex16(d.config_version));
  pack_seconds(body.key(field::at), d.at);
}

// The usage fields are the ledger's token kinds (kTokenKinds), in their order.
static_assert([] {
  constexpr std::string_view names[] = {field::uncached_input_tokens, field::cache_read_tokens,
                                        field::cache_write_5m_tokens, field::cache_write_1h_tokens,
                                        field::output_tokens,         field::reasoning_tokens};
  if (std::size(names) != kTokenKinds.size()) return false;
  for (std::size_t i = 0; i < kTokenKinds.size(); ++i) {
    if (names[i] != kTokenKinds[i].column) return false;
  }
  return true;
}());

void encode_usage(MapWriter& m, const Usage& u) {
  for (const TokenKind& k : kTokenKinds) m.key(k.column).pack(u.*k.tokens);
}

void encode_receipt_reply(MapWriter& body, const ReportReceipt& r) {
  body.key(field::duplicate).pack(r.duplicate);
  body.key(field::fallback).pack(r.fallback);
  body.key(field::priced).pack(r.priced);
  body.key(field::counted).pack(true);  // the sidecar's own receipt: applied
  body.str(field::cost_usd, r.cost.to_usd_string());
  MapWriter u;
  encode_usage(u, r.usage);
  body.sub(field::usage, u);
}

void encode_settle_local_reply(MapWriter& body, const LocalDecisionReply& r) {
  body.key(field::decision_id).pack(r.decision_id);
  body.key(field::duplicate).pack(r.duplicate);
  body.key(field::rejected).pack(r.rejected);
}

void encode_stats_reply(MapWriter& body, const StatsReply& s) {
  body.key(field::pid).pack(s.pid);
  body.key(field::generation).pack(s.generation);
  body.str(field::config_version, hex16(s.config_version));
  body.str(field::config, s.config);
  body.str(field::shm, s.shm);
  body.key(field::uptime_s).pack(s.uptime_s);
  body.key(field::pending_decisions).pack(s.pending_decisions);
  {
    const FastPathInfo& f = s.fast_path;
    MapWriter fp;
    fp.key(field::enabled).pack(f.enabled);
    if (f.enabled) {
      fp.str(field::table, f.table);
    } else {
      fp.str(field::why_not, f.why_not);
    }
    fp.key(field::clients).pack(f.clients);
    fp.key(field::records).pack(f.records);
    fp.key(field::rejected).pack(f.rejected);
    fp.key(field::view_dropped).pack(f.view_dropped);
    body.sub(field::fast_path, fp);
  }
  {
    const ReloadStatus& r = s.last_reload;
    MapWriter lr;
    lr.key(field::ok).pack(r.ok);
    if (r.at != 0) {
      pack_seconds(lr.key(field::at), r.at);
    } else {
      lr.key(field::at).pack_nil();
    }
    lr.key(field::failures).pack(r.failures);
    if (r.code) {
      MapWriter e;  // the shape of an error reply's `error`
      e.str(field::code, to_string(*r.code));
      e.str(field::message, r.message);
      lr.sub(field::error, e);
    } else {
      lr.key(field::error).pack_nil();
    }
    body.sub(field::last_reload, lr);
  }
  body.key(field::counters).pack_array(static_cast<std::uint32_t>(s.counters.size()));
  for (const auto& row : s.counters) body.body().write(row.data(), row.size());
  body.key(field::breakers).pack_array(static_cast<std::uint32_t>(s.breakers.size()));
  for (const auto& b : s.breakers) {
    MapWriter m;
    m.str(field::target, b.target);
    if (b.endpoint) {
      m.str(field::endpoint, *b.endpoint);
    } else {
      m.key(field::endpoint).pack_nil();
    }
    m.str(field::phase, to_string(b.phase));
    m.key(field::consecutive_failures).pack(b.consecutive_failures);
    m.key(field::times_opened).pack(b.times_opened);
    m.key(field::inflight).pack(b.inflight);
    m.emit(body.body());
  }
  body.key(field::kv_events).pack_array(static_cast<std::uint32_t>(s.kv_events.size()));
  for (const auto& row : s.kv_events) body.body().write(row.data(), row.size());
  body.key(field::migrations).pack_array(static_cast<std::uint32_t>(s.migrations.size()));
  for (const auto& m : s.migrations) body.body().write(m.data(), m.size());
}

namespace {

/// A time of the run as the wire's seconds; nil while it has not happened (0).
void pack_time(MapWriter& m, std::string_view k, TimeMs at) {
  if (at == 0) {
    m.key(k).pack_nil();
  } else {
    pack_seconds(m.key(k), at);
  }
}

void encode_arm(MapWriter& m, const ArmCounts& a) {
  m.key(field::outcomes).pack(a.outcomes);
  m.key(field::errors).pack(a.errors);
  m.key(field::ttft_checked).pack(a.ttft_checked);
  m.key(field::ttft_over).pack(a.ttft_over);
  m.key(field::latency_checked).pack(a.latency_checked);
  m.key(field::latency_over).pack(a.latency_over);
  m.key(field::verdicts).pack(a.verdicts);
  m.key(field::rejected).pack(a.rejected);
  m.key(field::priced).pack(a.priced);
  m.str(field::cost_usd, a.cost.to_usd_string());
}

}  // namespace

void encode_migration_transition(MapWriter& m, const MigrationTransition& t) {
  pack_seconds(m.key(field::at), t.at);
  m.str(field::from_phase, to_string(t.from));
  m.str(field::to_phase, to_string(t.to));
  m.key(field::step).pack(t.step);
  m.str(field::cause, to_string(t.cause));
  m.str(field::detail, t.detail);
  m.key(field::candidate_outcomes).pack(t.candidate_outcomes);
  m.key(field::baseline_outcomes).pack(t.baseline_outcomes);
}

void encode_migration_status(MapWriter& m, const Config& config, const MigrationStatus& status) {
  const Scenario& scenario = config.scenarios[status.scenario];
  const MigrationSpec& spec = *scenario.migration;  // a status is only made for a scenario with one
  const MigrationRun& run = status.run;
  m.str(field::scenario, scenario.name);
  m.str(field::stage, to_string(spec.stage));
  m.str(field::phase, to_string(run.phase));
  m.key(field::step).pack(run.step);
  m.key(field::steps).pack(spec.steps);
  m.key(field::candidate_percent).pack(status.candidate_percent);
  m.str(field::baseline, config.targets[spec.baseline].name);
  m.str(field::candidate, config.targets[spec.candidate].name);
  m.str(field::incident_owner, spec.incident_owner);
  m.key(field::attempt).pack(spec.attempt);
  pack_time(m, field::started_at, run.started_at);
  pack_time(m, field::step_started_at, run.step_started_at);
  pack_time(m, field::deadline_at, status.deadline_at);
  m.key(field::step_outcomes).pack(run.step_outcomes);
  m.key(field::min_samples).pack(spec.min_samples);
  m.key(field::delta).pack(spec.delta);
  {
    MapWriter arms;
    MapWriter baseline;
    MapWriter candidate;
    encode_arm(baseline, run.baseline);
    encode_arm(candidate, run.candidate);
    arms.sub(field::baseline, baseline);
    arms.sub(field::candidate, candidate);
    m.sub(field::arms, arms);
  }
  m.key(field::criteria).pack_array(static_cast<std::uint32_t>(status.criteria.size()));
  for (const CriterionResult& c : status.criteria) {
    MapWriter cm;
    cm.str(field::metric, to_string(c.metric));
    cm.key(field::candidate).pack(c.candidate);
    cm.key(field::baseline).pack(c.baseline);
    cm.key(field::lo).pack(c.lo);
    cm.key(field::hi).pack(c.hi);
    cm.key(field::min_effect).pack(c.min_effect);
    cm.str(field::verdict, to_string(c.verdict));
    cm.emit(m.body());
  }
  m.key(field::transitions).pack_array(static_cast<std::uint32_t>(run.transitions.size()));
  for (const MigrationTransition& t : run.transitions) {
    MapWriter tm;
    encode_migration_transition(tm, t);
    tm.emit(m.body());
  }
}

void encode_migration_status_reply(MapWriter& body, const Config& config,
                                   const std::vector<MigrationStatus>& statuses) {
  body.key(field::migrations).pack_array(static_cast<std::uint32_t>(statuses.size()));
  for (const MigrationStatus& s : statuses) {
    MapWriter m;
    encode_migration_status(m, config, s);
    m.emit(body.body());
  }
}

void encode_migration_command_reply(MapWriter& body, const Config& config, const MigrationTransition& t,
                                    const MigrationStatus& status) {
  MapWriter tm;
  encode_migration_transition(tm, t);
  body.sub(field::transition, tm);
  MapWriter sm;
  encode_migration_status(sm, config, status);
  body.sub(field::migration, sm);
}

void encode_health_reply(MapWriter& body, const HealthReply& h) {
  body.str(field::status, h.status);
  body.key(field::pid).pack(h.pid);
  body.key(field::generation).pack(h.generation);
  body.str(field::config_version, hex16(h.config_version));
  body.key(field::uptime_s).pack(h.uptime_s);
}

void encode_reload_reply(MapWriter& body, const ReloadReply& r) {
  body.str(field::config_version, hex16(r.config_version));
  body.key(field::generation).pack(r.generation);
}

// ------------------------------------------------------------------------------------ reply decoders

Result<Reply> decode_reply(std::string_view payload) {
  Reply out;
  try {
    out.message = msgpack::unpack(payload.data(), payload.size());
  } catch (const std::exception& e) {
    return make_error(ErrorCode::bad_message, std::string("not a msgpack message (") + e.what() + ")");
  }
  auto fields = Fields::of(out.message.get());
  if (!fields) return std::move(fields).error();
  out.fields = std::move(fields).value();
  out.id = out.fields.get(field::id);
  return decoding([&]() -> Reply {
    const Reader in(out.fields);
    const auto v = in.count(field::v);
    if (!v || static_cast<std::uint64_t>(*v) != kVersion) bad(ErrorCode::bad_message, "a reply of another version");
    const auto ok = in.boolean(field::ok);
    if (!ok) bad(ErrorCode::bad_message, "'ok' is required");
    if (!*ok) {
      const Fields e = in.map(field::error);
      const Reader err(e);
      const auto code = error_code_from_string(err.required_str(field::code));
      out.error = Error{code.value_or(ErrorCode::internal), err.string(field::message)};
    }
    return std::move(out);
  });
}

Result<DecisionReply> decode_decision_reply(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    DecisionReply d;
    d.decision_id = in.required_id(field::decision_id);
    d.scenario = in.string(field::scenario);
    d.target = in.string(field::target);
    d.endpoint = in.optional_string(field::endpoint);
    const auto& fb = in.array(field::fallbacks);
    for (std::uint32_t i = 0; i < fb.size; ++i) d.fallbacks.emplace_back(as_str(fb.ptr[i], "'fallbacks'"));
    const auto& fe = in.array(field::fallback_endpoints);
    if (fe.size != fb.size) bad(ErrorCode::bad_message, "'fallback_endpoints' must have one entry per fallback");
    for (std::uint32_t i = 0; i < fe.size; ++i) {
      const msgpack::object& e = fe.ptr[i];
      d.fallback_endpoints.push_back(
          e.type == msgpack::type::NIL ? std::nullopt : std::optional<std::string>(as_str(e, "'fallback_endpoints'")));
    }
    const auto& rs = in.array(field::reasons);
    for (std::uint32_t i = 0; i < rs.size; ++i) d.reasons.emplace_back(as_str(rs.ptr[i], "'reasons'"));
    d.predicted_cost = in.usd(field::predicted_cost_usd);
    d.reserved_cost = in.usd(field::reserved_cost_usd);
    d.expected_cached_tokens = in.count(field::expected_cached_tokens).value_or(0);
    d.cache_key = in.hex(field::cache_key);
    d.config_version = in.hex(field::config_version);
    d.at = in.seconds(field::at).value_or(0);
    return d;
  });
}

Result<ReportReceipt> decode_receipt_reply(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    ReportReceipt r;
    r.duplicate = in.boolean(field::duplicate).value_or(false);
    r.fallback = in.boolean(field::fallback).value_or(false);
    r.priced = in.boolean(field::priced).value_or(false);
    r.cost = in.usd(field::cost_usd);
    const Fields u = in.map(field::usage);
    const Reader usage(u);
    for (const TokenKind& k : kTokenKinds) r.usage.*k.tokens = usage.integer(k.column).value_or(0);
    return r;
  });
}

Result<StatsReply> decode_stats_reply(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    StatsReply s;
    s.pid = in.integer(field::pid).value_or(0);
    s.generation = static_cast<std::uint64_t>(in.count(field::generation).value_or(0));
    s.config_version = in.hex(field::config_version);
    s.config = in.string(field::config);
    s.shm = in.string(field::shm);
    s.uptime_s = in.number(field::uptime_s).value_or(0);
    s.pending_decisions = static_cast<std::uint64_t>(in.count(field::pending_decisions).value_or(0));
    {
      const Fields fp = in.map(field::fast_path);
      const Reader p(fp);
      s.fast_path.enabled = p.boolean(field::enabled).value_or(false);
      s.fast_path.table = p.optional_string(field::table).value_or("");
      s.fast_path.why_not = p.optional_string(field::why_not).value_or("");
      s.fast_path.clients = static_cast<std::uint32_t>(p.count(field::clients).value_or(0));
      s.fast_path.records = static_cast<std::uint64_t>(p.count(field::records).value_or(0));
      s.fast_path.rejected = static_cast<std::uint64_t>(p.count(field::rejected).value_or(0));
      s.fast_path.view_dropped = static_cast<std::uint64_t>(p.count(field::view_dropped).value_or(0));
    }
    if (in.get(field::last_reload) != nullptr) {  // absent from older sidecars
      const Fields lr = in.map(field::last_reload);
      const Reader r(lr);
      s.last_reload.ok = r.boolean(field::ok).value_or(true);
      s.last_reload.at = r.seconds(field::at).value_or(0);
      s.last_reload.failures = static_cast<std::uint64_t>(r.count(field::failures).value_or(0));
      if (r.get(field::error) != nullptr) {
        const Fields e = r.map(field::error);
        const Reader err(e);
        s.last_reload.code = error_code_from_string(err.required_str(field::code)).value_or(ErrorCode::internal);
        s.last_reload.message = err.string(field::message);
      }
    }
    const auto& rows = in.array(field::counters);
    for (std::uint32_t i = 0; i < rows.size; ++i) {
      if (rows.ptr[i].type != msgpack::type::MAP) bad(ErrorCode::bad_message, "'counters' must be an array of maps");
      msgpack::sbuffer row;
      msgpack::pack(row, rows.ptr[i]);
      s.counters.emplace_back(row.data(), row.size());
    }
    const auto& breakers = in.array(field::breakers);
    for (std::uint32_t i = 0; i < breakers.size; ++i) {
      auto fields = Fields::of(breakers.ptr[i]);
      if (!fields) bad(ErrorCode::bad_message, "'breakers' must be an array of maps");
      const Reader b(fields.value());
      BreakerInfo info;
      info.target = b.string(field::target);
      info.endpoint = b.optional_string(field::endpoint);
      const auto phase = b.required_str(field::phase);
      bool known = false;
      for (const auto p : {Breaker::Phase::closed, Breaker::Phase::open, Breaker::Phase::half_open}) {
        if (phase == to_string(p)) {
          info.phase = p;
          known = true;
        }
      }
      if (!known) bad(ErrorCode::bad_message, "unknown breaker phase '" + std::string(phase) + "'");
      info.consecutive_failures = static_cast<std::uint32_t>(b.count(field::consecutive_failures).value_or(0));
      info.times_opened = static_cast<std::uint64_t>(b.count(field::times_opened).value_or(0));
      info.inflight = b.integer(field::inflight).value_or(0);
      s.breakers.push_back(std::move(info));
    }
    const auto& kv = in.array(field::kv_events);
    for (std::uint32_t i = 0; i < kv.size; ++i) {
      if (kv.ptr[i].type != msgpack::type::MAP) bad(ErrorCode::bad_message, "'kv_events' must be an array of maps");
      msgpack::sbuffer row;
      msgpack::pack(row, kv.ptr[i]);
      s.kv_events.emplace_back(row.data(), row.size());
    }
    if (in.get(field::migrations) != nullptr) {  // absent from older sidecars
      const auto& ms = in.array(field::migrations);
      for (std::uint32_t i = 0; i < ms.size; ++i) {
        if (ms.ptr[i].type != msgpack::type::MAP) bad(ErrorCode::bad_message, "'migrations' must be an array of maps");
        msgpack::sbuffer m;
        msgpack::pack(m, ms.ptr[i]);
        s.migrations.emplace_back(m.data(), m.size());
      }
    }
    return s;
  });
}

Result<HealthReply> decode_health_reply(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    HealthReply h;
    h.status = in.string(field::status);
    h.pid = in.integer(field::pid).value_or(0);
    h.generation = static_cast<std::uint64_t>(in.count(field::generation).value_or(0));
    h.config_version = in.hex(field::config_version);
    h.uptime_s = in.number(field::uptime_s).value_or(0);
    return h;
  });
}

Result<ReloadReply> decode_reload_reply(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    ReloadReply r;
    r.config_version = in.hex(field::config_version);
    r.generation = static_cast<std::uint64_t>(in.count(field::generation).value_or(0));
    return r;
  });
}

Result<LocalDecisionReply> decode_settle_local_reply(const Fields& f) {
  return decoding([&] {
    const Reader in(f);
    LocalDecisionReply r;
    r.decision_id = in.required_id(field::decision_id);
    r.duplicate = in.boolean(field::duplicate).value_or(false);
    r.rejected = static_cast<std::uint64_t>(in.count(field::rejected).value_or(0));
    return r;
  });
}

}  // namespace turnout::protocol
