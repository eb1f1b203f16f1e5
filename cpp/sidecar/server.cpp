#include "sidecar/server.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <utility>

#include "turnout/detail/fast_path_access.hpp"
#include "turnout/prefix.hpp"

namespace turnout::sidecar {

namespace {

// ------------------------------------------------------------------------------------ reply encoding

using Packer = msgpack::packer<msgpack::sbuffer>;

void pack_str(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<std::uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
}

/// A msgpack map under construction: entries are counted, the header is written by emit().
class MapOut {
 public:
  Packer& key(std::string_view k) {
    ++n_;
    pack_str(pk_, k);
    return pk_;
  }
  void str(std::string_view k, std::string_view v) { pack_str(key(k), v); }
  void sub(std::string_view k, const MapOut& m) {
    key(k);
    m.emit(body_);
  }
  void emit(msgpack::sbuffer& out) const {
    Packer p(out);
    p.pack_map(n_);
    out.write(body_.data(), body_.size());
  }
  /// The entries without the map header (to merge them into another map).
  void emit_fields(msgpack::sbuffer& out) const { out.write(body_.data(), body_.size()); }
  [[nodiscard]] std::uint32_t size() const { return n_; }
  [[nodiscard]] msgpack::sbuffer& body() { return body_; }

 private:
  msgpack::sbuffer body_{256};  // most maps are small: not the default 8 KiB per map
  Packer pk_{body_};
  std::uint32_t n_ = 0;
};

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string int128_string(Int128 v) {
  if (v == 0) return "0";
  const bool neg = v < 0;
  UInt128 u = neg ? static_cast<UInt128>(-(v + 1)) + 1 : static_cast<UInt128>(v);
  std::string s;
  while (u != 0) {
    s.push_back(static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  }
  if (neg) s.push_back('-');
  return {s.rbegin(), s.rend()};
}

struct WireError {
  std::string code;
  std::string message;
};

std::string reply_bytes(const msgpack::object* id, const WireError* error, const MapOut* body) {
  msgpack::sbuffer out{512};
  Packer p(out);
  p.pack_map(3 + (error != nullptr ? 1 : (body != nullptr ? body->size() : 0)));
  pack_str(p, "v");
  p.pack(kProtocolVersion);
  pack_str(p, "id");
  if (id != nullptr) {
    p.pack(*id);
  } else {
    p.pack_nil();
  }
  pack_str(p, "ok");
  p.pack(error == nullptr);
  if (error != nullptr) {
    MapOut e;
    e.str("code", error->code);
    e.str("message", error->message);
    pack_str(p, "error");
    e.emit(out);
  } else if (body != nullptr) {
    body->emit_fields(out);
  }
  return {out.data(), out.size()};
}

bool reply_ok(std::string_view reply) {
  try {
    const auto oh = msgpack::unpack(reply.data(), reply.size());
    const auto& m = oh.get();
    if (m.type != msgpack::type::MAP) return false;
    for (std::uint32_t i = 0; i < m.via.map.size; ++i) {
      const auto& kv = m.via.map.ptr[i];
      if (kv.key.type == msgpack::type::STR && std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == "ok") {
        return kv.val.type == msgpack::type::BOOLEAN && kv.val.via.boolean;
      }
    }
  } catch (const std::exception&) {
  }
  return false;
}

// ------------------------------------------------------------------------------------ request decoding

/// Thrown only inside handle(), caught there: a field of the wrong type or range.
struct BadField {
  WireError error;
};

[[noreturn]] void bad(std::string code, std::string message) { throw BadField{{std::move(code), std::move(message)}}; }

class Fields {
 public:
  explicit Fields(const msgpack::object& map) {
    fields_.reserve(map.via.map.size);
    for (std::uint32_t i = 0; i < map.via.map.size; ++i) {
      const auto& kv = map.via.map.ptr[i];
      if (kv.key.type != msgpack::type::STR) bad("bad_message", "request keys must be strings");
      const std::string_view key(kv.key.via.str.ptr, kv.key.via.str.size);
      if (find(key) == nullptr) fields_.emplace_back(key, &kv.val);  // the first of repeated keys wins
    }
  }
  [[nodiscard]] const msgpack::object* get(std::string_view k) const {
    const msgpack::object* o = find(k);
    if (o == nullptr || o->type == msgpack::type::NIL) return nullptr;
    return o;
  }
  [[nodiscard]] std::optional<std::string_view> str(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type != msgpack::type::STR) bad("bad_message", "'" + std::string(k) + "' must be a string");
    return std::string_view(o->via.str.ptr, o->via.str.size);
  }
  [[nodiscard]] std::string_view required_str(std::string_view k) const {
    auto v = str(k);
    if (!v) bad("bad_message", "'" + std::string(k) + "' is required");
    return *v;
  }
  [[nodiscard]] std::optional<std::int64_t> count(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type == msgpack::type::POSITIVE_INTEGER) {
      if (o->via.u64 > static_cast<std::uint64_t>(INT64_MAX))
        bad("invalid_argument", "'" + std::string(k) + "' is too large");
      return static_cast<std::int64_t>(o->via.u64);
    }
    if (o->type == msgpack::type::NEGATIVE_INTEGER) {
      bad("invalid_argument", "'" + std::string(k) + "' must be >= 0 (nil means unknown)");
    }
    bad("bad_message", "'" + std::string(k) + "' must be an integer");
  }
  [[nodiscard]] std::uint64_t required_id(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) bad("bad_message", "'" + std::string(k) + "' is required");
    if (o->type != msgpack::type::POSITIVE_INTEGER)
      bad("bad_message", "'" + std::string(k) + "' must be a positive integer");
    return o->via.u64;
  }
  [[nodiscard]] std::optional<double> number(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    switch (o->type) {
      case msgpack::type::POSITIVE_INTEGER: return static_cast<double>(o->via.u64);
      case msgpack::type::NEGATIVE_INTEGER: return static_cast<double>(o->via.i64);
      case msgpack::type::FLOAT32:
      case msgpack::type::FLOAT64: return o->via.f64;
      default: bad("bad_message", "'" + std::string(k) + "' must be a number");
    }
  }
  [[nodiscard]] std::optional<bool> boolean(std::string_view k) const {
    const auto* o = get(k);
    if (o == nullptr) return std::nullopt;
    if (o->type != msgpack::type::BOOLEAN) bad("bad_message", "'" + std::string(k) + "' must be a boolean");
    return o->via.boolean;
  }

 private:
  // A request has about a dozen keys (the decoder caps a map at 256): a flat list beats a tree.
  [[nodiscard]] const msgpack::object* find(std::string_view k) const {
    for (const auto& [key, value] : fields_) {
      if (key == k) return value;
    }
    return nullptr;
  }
  std::vector<std::pair<std::string_view, const msgpack::object*>> fields_;
};

TimeMs now_of(const Fields& f, std::int64_t now_ms) {
  const auto now = f.number("now");
  if (!now) return now_ms;
  if (!std::isfinite(*now) || *now < 0) bad("invalid_argument", "now must be a finite, non-negative time in seconds");
  return static_cast<TimeMs>(std::llround(*now * 1000.0));
}

/// route/explain fields -> RouteRequest (views into the message; `tokens` holds the token ids).
RouteRequest route_request(const Fields& f, std::int64_t now_ms, std::vector<std::uint32_t>& tokens) {
  RouteRequest r;
  r.scenario = f.required_str("scenario");
  r.key = f.str("key").value_or("");
  r.data_class = f.str("data_class").value_or("");
  r.text = f.str("text").value_or("");
  const bool has_text = f.get("text") != nullptr;
  if (const auto* ids = f.get("token_ids")) {
    if (ids->type != msgpack::type::ARRAY) bad("bad_message", "'token_ids' must be an array of integers");
    tokens.reserve(ids->via.array.size);
    for (std::uint32_t i = 0; i < ids->via.array.size; ++i) {
      const auto& t = ids->via.array.ptr[i];
      if (t.type != msgpack::type::POSITIVE_INTEGER || t.via.u64 > 0xFFFFFFFFULL) {
        bad("invalid_argument", "token ids must be integers that fit in 32 bits");
      }
      tokens.push_back(static_cast<std::uint32_t>(t.via.u64));
    }
    r.token_ids = tokens;
  }
  if (auto n = f.count("input_tokens")) {
    r.input_tokens = *n;
  } else if (f.get("token_ids") != nullptr) {
    r.input_tokens = static_cast<std::int64_t>(tokens.size());
  } else if (has_text) {
    r.input_tokens = static_cast<std::int64_t>((r.text.size() + kCharsPerToken - 1) / kCharsPerToken);
  }
  r.max_output_tokens = f.count("max_output_tokens").value_or(-1);
  r.expected_cached_tokens = f.count("expected_cached_tokens").value_or(0);
  r.now = now_of(f, now_ms);
  return r;
}

/// adopt fields -> the Decision a fast-path client made (indices into the table it names).
Decision adopted_decision(const Fields& f, std::int64_t now_ms) {
  auto index = [](const msgpack::object& o, std::string_view k) {
    if (o.type != msgpack::type::POSITIVE_INTEGER || o.via.u64 > 0xFFFFFFFFULL) {
      bad("bad_message", "'" + std::string(k) + "' must be an index (a 32-bit unsigned integer)");
    }
    return static_cast<std::uint32_t>(o.via.u64);
  };
  auto required = [&](std::string_view k) -> const msgpack::object& {
    const auto* o = f.get(k);
    if (o == nullptr) bad("bad_message", "'" + std::string(k) + "' is required");
    return *o;
  };
  Decision d;
  d.id = f.required_id("decision_id");
  d.config_version = f.required_id("config_version");
  d.scenario = index(required("scenario"), "scenario");
  d.placement = {index(required("target"), "target"), index(required("replica"), "replica")};
  if (const auto* fb = f.get("fallbacks")) {
    if (fb->type != msgpack::type::ARRAY) bad("bad_message", "'fallbacks' must be an array of [target, replica]");
    for (std::uint32_t i = 0; i < fb->via.array.size; ++i) {
      const auto& p = fb->via.array.ptr[i];
      if (p.type != msgpack::type::ARRAY || p.via.array.size != 2) {
        bad("bad_message", "'fallbacks' must be an array of [target, replica]");
      }
      d.fallbacks.push_back({index(p.via.array.ptr[0], "fallbacks"), index(p.via.array.ptr[1], "fallbacks")});
    }
  }
  d.spilled = f.boolean("spilled").value_or(false);
  d.reserved_cost = Money::from_picos(f.count("reserved_cost").value_or(0));
  d.active_blocks = f.count("active_blocks").value_or(0);
  if (const auto* p = f.get("prefix")) {
    if (p->type != msgpack::type::BIN || p->via.bin.size % 8 != 0) {
      bad("bad_message", "'prefix' must be bin of little-endian 64-bit block hashes");
    }
    d.prefix.resize(p->via.bin.size / 8);
    std::memcpy(d.prefix.data(), p->via.bin.ptr, p->via.bin.size);
  }
  // Figures a real decision cannot have are refused: they would overflow the budget sums.
  if (d.reserved_cost.picos() > 1'000'000'000'000'000LL) bad("invalid_argument", "reserved_cost above 1,000 USD");
  if (d.active_blocks > (1LL << 26)) bad("invalid_argument", "active_blocks above 2^26");
  // The client's clock, but never ahead of ours (a future time would expire every pending decision).
  d.at = std::min<std::int64_t>(f.count("at").value_or(now_ms), now_ms);
  return d;
}

void pack_usage(MapOut& m, const Usage& u) {
  m.key("uncached_input_tokens").pack(u.uncached_input_tokens);
  m.key("cache_read_tokens").pack(u.cache_read_tokens);
  m.key("cache_write_5m_tokens").pack(u.cache_write_5m_tokens);
  m.key("cache_write_1h_tokens").pack(u.cache_write_1h_tokens);
  m.key("output_tokens").pack(u.output_tokens);
  m.key("reasoning_tokens").pack(u.reasoning_tokens);
}

void pack_decision(MapOut& m, const Config& c, const Decision& d) {
  const Target& t = c.targets[d.placement.target];
  m.key("decision_id").pack(d.id);
  m.str("scenario", c.scenarios[d.scenario].name);
  m.str("target", t.name);
  if (d.placement.replica == kNone) {
    m.key("endpoint").pack_nil();
  } else {
    m.str("endpoint", t.replicas[d.placement.replica].endpoint);
  }
  auto& fb = m.key("fallbacks");
  fb.pack_array(static_cast<std::uint32_t>(d.fallbacks.size()));
  for (const auto& f : d.fallbacks) pack_str(fb, c.targets[f.target].name);
  const auto reasons = reason_strings(c, d);
  auto& rs = m.key("reasons");
  rs.pack_array(static_cast<std::uint32_t>(reasons.size()));
  for (const auto& r : reasons) pack_str(rs, r);
  m.str("predicted_cost_usd", d.predicted_cost.to_usd_string());
  m.key("expected_cached_tokens").pack(d.expected_cached_tokens);
  if (d.cache_key == 0) {
    m.key("cache_key").pack_nil();
  } else {
    m.str("cache_key", hex16(d.cache_key));
  }
  m.str("config_version", hex16(d.config_version));
  m.key("at").pack(static_cast<double>(d.at) / 1000.0);
}

void pack_counters(MapOut& m, const std::string& scenario, const Target& t, const Counters& c) {
  m.str("scenario", scenario);
  m.str("target", t.name);
  m.str("kind", to_string(t.kind));
  m.str("provider", to_string(t.provider));
  m.key("requests").pack(c.requests);
  m.key("spillovers").pack(c.spillovers);
  m.key("outcomes").pack(c.outcomes);
  m.key("fallbacks").pack(c.fallbacks);
  for (std::size_t i = 0; i < kStatusCount; ++i) m.key(to_string(static_cast<Status>(i))).pack(c.by_status[i]);
  m.key("unpriced").pack(c.unpriced);
  m.key("accepted").pack(c.accepted);
  m.key("rejected").pack(c.rejected);
  pack_usage(m, c.tokens);
  m.str("cost_usd", c.cost.to_usd_string());
  m.str("accepted_cost_usd", c.accepted_cost.to_usd_string());
  m.key("latency_count").pack(c.latency.count);
  m.key("latency_sum_ms").pack(c.latency.sum_ms);
  m.key("ttft_count").pack(c.ttft.count);
  m.key("ttft_sum_ms").pack(c.ttft.sum_ms);
}

void add_delta(Counters& dst, const Counters& after, const Counters& before) {
  dst.requests += after.requests - before.requests;
  dst.spillovers += after.spillovers - before.spillovers;
  dst.outcomes += after.outcomes - before.outcomes;
  dst.fallbacks += after.fallbacks - before.fallbacks;
  for (std::size_t i = 0; i < kStatusCount; ++i) dst.by_status[i] += after.by_status[i] - before.by_status[i];
  dst.unpriced += after.unpriced - before.unpriced;
  dst.accepted += after.accepted - before.accepted;
  dst.rejected += after.rejected - before.rejected;
  dst.tokens.uncached_input_tokens += after.tokens.uncached_input_tokens - before.tokens.uncached_input_tokens;
  dst.tokens.cache_read_tokens += after.tokens.cache_read_tokens - before.tokens.cache_read_tokens;
  dst.tokens.cache_write_5m_tokens += after.tokens.cache_write_5m_tokens - before.tokens.cache_write_5m_tokens;
  dst.tokens.cache_write_1h_tokens += after.tokens.cache_write_1h_tokens - before.tokens.cache_write_1h_tokens;
  dst.tokens.output_tokens += after.tokens.output_tokens - before.tokens.output_tokens;
  dst.tokens.reasoning_tokens += after.tokens.reasoning_tokens - before.tokens.reasoning_tokens;
  dst.cost += Money::from_picos(static_cast<std::int64_t>(after.cost.picos() - before.cost.picos()));
  dst.accepted_cost +=
      Money::from_picos(static_cast<std::int64_t>(after.accepted_cost.picos() - before.accepted_cost.picos()));
  for (auto [d, a, b] :
       {std::tuple{&dst.ttft, &after.ttft, &before.ttft}, std::tuple{&dst.latency, &after.latency, &before.latency}}) {
    for (std::size_t i = 0; i < d->buckets.size(); ++i) d->buckets[i] += a->buckets[i] - b->buckets[i];
    d->count += a->count - b->count;
    d->sum_ms += a->sum_ms - b->sum_ms;
  }
}

bool same_histogram(const Histogram& a, const Histogram& b) {
  return a.buckets == b.buckets && a.count == b.count && a.sum_ms == b.sum_ms;
}

bool same_counters(const Counters& a, const Counters& b) {
  return a.requests == b.requests && a.spillovers == b.spillovers && a.outcomes == b.outcomes &&
         a.fallbacks == b.fallbacks && a.by_status == b.by_status && a.unpriced == b.unpriced &&
         a.accepted == b.accepted && a.rejected == b.rejected && a.tokens == b.tokens && a.cost == b.cost &&
         a.accepted_cost == b.accepted_cost && same_histogram(a.ttft, b.ttft) && same_histogram(a.latency, b.latency);
}

WireError core_error(const Error& e) { return {to_string(e.code), e.message}; }

}  // namespace

std::vector<std::string> reason_strings(const Config& config, const Decision& d) {
  std::vector<std::string> out;
  for (const auto& r : d.reasons) {
    std::string s = to_string(r.code);
    if (r.target != kNone) s += ":" + config.targets[r.target].name;
    switch (r.code) {
      case ReasonCode::weight: s += " (" + std::to_string(r.value) + "%)"; break;
      case ReasonCode::spillover: s += " (in-flight " + std::to_string(r.value / 10) + "%)"; break;
      case ReasonCode::context_window: s += " (needs " + std::to_string(r.value) + " tokens)"; break;
      case ReasonCode::budget: s += " (worst case $" + Money::from_picos(r.value).to_usd_string() + ")"; break;
      case ReasonCode::affinity: s += " (" + std::to_string(r.value) + " cached tokens)"; break;
      case ReasonCode::prefix_overlap:
      case ReasonCode::least_loaded:
        s += " (" + config.targets[r.target].replicas[static_cast<std::size_t>(r.value)].endpoint + ")";
        break;
      default: break;
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Table segments of other generations: a sidecar that died (or failed to start) left them. The
// caller holds the segment's lock, so no live sidecar owns them.
static void remove_stale_tables(const std::string& shm, std::uint64_t keep) {
  std::error_code ec;
  const std::string prefix = shm + ".t";
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string_view digits = std::string_view(name).substr(prefix.size());
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    if (name != table_segment_name(shm, keep)) std::filesystem::remove(entry.path(), ec);
  }
}

// ------------------------------------------------------------------------------------------ Server

Result<Server::Started> Server::start(const std::string& config_path, const std::string& shm_name) {
  auto config = load_config_file(config_path);
  if (!config) return make_error(config.error().code, "invalid config: " + config.error().message);
  std::unique_ptr<Server> s(new Server());
  s->config_path_ = config_path;
  s->started_ms_ =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  auto probe = std::make_shared<Router>(config.value());
  const auto rows = probe->counters();
  auto opened = Segment::open(shm_name, rows.size());
  if (!opened) return std::move(opened).error();
  s->segment_ = std::move(opened.value().segment);
  s->first_id_ = s->segment_->generation() << kGenerationShift;
  auto router = std::make_shared<Router>(config.value(), RouterOptions{.first_decision_id = s->first_id_ | 1U});
  // Carry the dead owner's counters over by (scenario, target) names.
  std::vector<CounterRow> restored;
  for (const auto& rec : opened.value().recovered) {
    const auto& c = *router->config();
    for (const auto& row : rows) {
      if (c.scenarios[row.scenario].name == rec.scenario && c.targets[row.target].name == rec.target) {
        restored.push_back({row.scenario, row.target, rec.counters});
      }
    }
  }
  if (auto ok = router->restore_counters(restored); !ok) return std::move(ok).error();
  s->router_ = std::move(router);
  s->published_ = s->router_->counters();
  if (auto ok = s->segment_->publish_all(*s->router_->config(), s->published_); !ok) return std::move(ok).error();
  if (auto rings = RingReader::open(shm_name); rings) {
    s->rings_ = std::move(rings).value();
    remove_stale_tables(shm_name, s->segment_->generation());
    s->publish_table(s->segment_->generation(), *s->router_, nullptr);
  } else {
    s->fast_note_ = rings.error().message;
  }
  std::string note = std::move(opened.value().note);
  if (!s->fast_note_.empty()) note += "; fast path off: " + s->fast_note_;
  return Started{std::move(s), std::move(note)};
}

Server::~Server() {
  if (table_ && router_) table_->detach(*router_);
}

void Server::publish_table(std::uint64_t generation, Router& router, Router* replaced) {
  if (!rings_) return;
  auto fresh = TablePublisher::create(segment_->name(), generation, router, 0);
  if (table_ && replaced != nullptr) table_->detach(*replaced);
  table_.reset();  // retires the old table: clients map the new one on their next route
  if (fresh) {
    table_ = std::move(fresh).value();
    fast_note_.clear();
  } else {
    fast_note_ = fresh.error().message;
  }
}

void Server::publish_state() {
  if (table_) table_->publish_state(*router_);
}

std::uint32_t Server::fast_clients() const noexcept { return rings_ ? rings_->clients() : 0; }

Server::FastPathStats Server::fast_path() const noexcept {
  return {static_cast<bool>(table_), ring_applied_, ring_rejected_, table_ ? table_->dropped() : 0};
}

std::size_t Server::drain_rings(std::int64_t now_ms) {
  if (!rings_) return 0;
  return rings_->drain([&](std::uint32_t ring, std::string_view record) {
    const std::string reply = handle(record, now_ms, ring);
    ++ring_applied_;
    // Nobody waits for this reply: an error is counted (and shown by stats and /metrics).
    if (!reply_ok(reply)) ++ring_rejected_;
  });
}

std::shared_ptr<Router> Server::router() const {
  std::lock_guard lock(router_mu_);
  return router_;
}

std::uint64_t Server::generation() const { return segment_->generation(); }
std::string Server::config_version() const { return hex16(router()->config()->content_hash); }

void Server::heartbeat(std::int64_t now_ms) noexcept {
  segment_->heartbeat(now_ms);
  if (now_ms - last_expiry_ms_ >= 1000) {  // TTLs of the directories (and so of their views)
    last_expiry_ms_ = now_ms;
    try {
      router_->expire_directories(now_ms);
    } catch (...) {  // a lock that failed: the next beat tries again
    }
  }
}

void Server::sync_rows_locked(const Router& r) {
  auto rows = r.counters();
  const Config& c = *r.config();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (i < published_.size() && published_[i].scenario == rows[i].scenario && published_[i].target == rows[i].target &&
        same_counters(published_[i].counters, rows[i].counters)) {
      continue;
    }
    segment_->publish(c, rows[i]);
  }
  published_ = std::move(rows);
}

void Server::sync_rows() { sync_rows_locked(*router_); }

void Server::sync_row(std::uint32_t scenario, std::uint32_t target) {
  for (auto& row : published_) {
    if (row.scenario != scenario || row.target != target) continue;
    row.counters = router_->counter(scenario, target);
    segment_->publish(*router_->config(), row);
    return;
  }
  sync_rows();  // not a row we knew: take the whole snapshot
}

void Server::flush() {
  sync_rows();
  segment_->heartbeat(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

void Server::carry_delta(const Router& old, const std::vector<CounterRow>& before) {
  const auto after = old.counters();
  const Config& oc = *old.config();
  const Config& nc = *router_->config();
  auto current = router_->counters();
  std::vector<CounterRow> changed;
  for (std::size_t i = 0; i < after.size() && i < before.size(); ++i) {
    if (same_counters(after[i].counters, before[i].counters)) continue;
    for (auto& row : current) {
      if (nc.scenarios[row.scenario].name == oc.scenarios[after[i].scenario].name &&
          nc.targets[row.target].name == oc.targets[after[i].target].name) {
        add_delta(row.counters, after[i].counters, before[i].counters);
        changed.push_back(row);
      }
    }
  }
  (void)router_->restore_counters(changed);  // rows come from router_ itself: always in range
}

Result<Ok> Server::reload() {
  auto config = load_config_file(config_path_);
  if (!config) return std::move(config).error();
  // The same bytes again (a file watch and a reload op racing): keep the table, and with it the
  // table before it, whose decisions still report.
  if (config.value()->content_hash == router_->config()->content_hash) return Ok{};
  const auto generation = segment_->advance_generation();
  const std::uint64_t first = generation << kGenerationShift;
  auto fresh = std::make_shared<Router>(config.value(), RouterOptions{.first_decision_id = first | 1U});
  const auto old_rows = router_->counters();
  const Config& oc = *router_->config();
  const Config& nc = *fresh->config();
  auto rows = fresh->counters();
  for (auto& row : rows) {
    for (const auto& o : old_rows) {
      if (oc.scenarios[o.scenario].name == nc.scenarios[row.scenario].name &&
          oc.targets[o.target].name == nc.targets[row.target].name) {
        row.counters = o.counters;
      }
    }
  }
  if (auto ok = fresh->restore_counters(rows); !ok) return std::move(ok).error();
  if (rows.size() > segment_->capacity()) {
    if (auto ok = segment_->rebuild(rows.size()); !ok) return std::move(ok).error();
  }
  // Published (and observing the new directories) before the swap: no block the KV thread stores
  // into them is missed. A rebuild above started yet another generation: name the table after it.
  publish_table(segment_->generation(), *fresh, router_.get());
  {
    std::lock_guard lock(router_mu_);
    previous_ = std::move(router_);
    previous_first_id_ = first_id_;
    router_ = std::move(fresh);
    first_id_ = first;
  }
  published_ = rows;
  auto ok = segment_->publish_all(nc, published_);
  publish_state();
  return ok;
}

// ------------------------------------------------------------------------------------------ handle

std::string Server::handle(std::string_view payload, std::int64_t now_ms) noexcept {
  return handle(payload, now_ms, kNone);
}

std::string Server::handle(std::string_view payload, std::int64_t now_ms, std::uint32_t ring) noexcept {
  const msgpack::object* id = nullptr;
  msgpack::object_handle oh;  // outlives the try: error replies echo `id`, which points into it
  try {
    std::size_t offset = 0;
    const msgpack::unpack_limit limit(limits_.array, limits_.map, limits_.str, limits_.bin, limits_.ext, limits_.depth);
    try {
      oh = msgpack::unpack(payload.data(), payload.size(), offset, nullptr, nullptr, limit);
    } catch (const msgpack::depth_size_overflow&) {
      bad("too_deep", "message nested deeper than " + std::to_string(limits_.depth) + " levels");
    } catch (const msgpack::size_overflow& e) {
      bad("too_large", std::string("message exceeds a decoder limit (") + e.what() + ")");
    } catch (const std::exception& e) {
      bad("bad_message", std::string("not a msgpack message (") + e.what() + ")");
    }
    if (offset != payload.size()) bad("bad_message", "trailing bytes after the msgpack message");
    const msgpack::object& req = oh.get();
    if (req.type != msgpack::type::MAP) bad("bad_message", "a request is a msgpack map");
    const Fields f(req);
    for (std::uint32_t i = 0; i < req.via.map.size; ++i) {
      const auto& kv = req.via.map.ptr[i];
      if (std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == "id") id = &kv.val;
    }
    const auto* v = f.get("v");
    if (v == nullptr || v->type != msgpack::type::POSITIVE_INTEGER || v->via.u64 != kProtocolVersion) {
      bad("bad_message", "unsupported protocol version (this sidecar speaks v=1)");
    }
    const std::string_view op = f.required_str("op");
    // A ring carries what a fast-path client did, nothing else; an adopt comes only from its ring.
    if (ring != kNone && op != "adopt" && op != "report" && op != "verdict") {
      bad("bad_message", "a fast-path ring carries adopt, report and verdict records only");
    }
    if (ring == kNone && op == "adopt") bad("bad_message", "adopt comes only through a fast-path ring");
    MapOut body;
    auto router = router_;  // the serving thread is the only writer of router_
    const Config& config = *router->config();

    if (op == "route" || op == "explain") {
      std::vector<std::uint32_t> tokens;
      const auto rq = route_request(f, now_ms, tokens);
      auto d = op == "route" ? router->route(rq) : router->explain(rq);
      if (!d) {
        const auto e = core_error(d.error());
        return reply_bytes(id, &e, nullptr);
      }
      if (op == "route") {
        sync_row(d->scenario, d->placement.target);
        publish_state();
      }
      pack_decision(body, config, d.value());
    } else if (op == "report" || op == "verdict") {
      const auto decision_id = f.required_id("decision_id");
      // A decision of the table before the last reload reports to that table; its gains move here.
      // Fast-path ids (bit 63) carry no generation: ask which table holds them.
      const bool old = previous_ && ((decision_id & kFastIdBit) != 0
                                         ? !router->has_pending(decision_id) && previous_->has_pending(decision_id)
                                         : decision_id < first_id_ && (decision_id >> kGenerationShift) ==
                                                                          (previous_first_id_ >> kGenerationShift));
      Router& target_router = old ? *previous_ : *router;
      std::vector<CounterRow> before;
      if (old) before = previous_->counters();
      if (op == "report") {
        OutcomeReport o;
        o.decision_id = decision_id;
        o.target = f.required_str("target");
        const auto status = f.required_str("status");
        const auto st = status_from_string(status);
        if (!st) {
          bad("invalid_argument", "unknown status '" + std::string(status) +
                                      "'; expected ok, error, timeout, rate_limited, context_overflow or "
                                      "content_filter");
        }
        o.status = *st;
        o.usage = f.get("usage");
        auto ms = [&](std::string_view k) -> std::int64_t {
          const auto x = f.number(k);
          if (!x) return -1;
          if (!std::isfinite(*x) || *x < 0) bad("invalid_argument", std::string(k) + " must be >= 0");
          return std::llround(*x);
        };
        o.ttft_ms = ms("ttft_ms");
        o.latency_ms = ms("latency_ms");
        o.accepted = f.boolean("accepted");
        o.now = now_of(f, now_ms);
        auto receipt = target_router.report(o);
        if (!receipt) {
          const auto e = core_error(receipt.error());
          return reply_bytes(id, &e, nullptr);
        }
        body.key("duplicate").pack(receipt->duplicate);
        body.key("fallback").pack(receipt->fallback);
        body.key("priced").pack(receipt->priced);
        body.str("cost_usd", receipt->cost.to_usd_string());
        MapOut u;
        pack_usage(u, receipt->usage);
        body.sub("usage", u);
      } else {
        const auto accepted = f.boolean("accepted");
        if (!accepted) bad("bad_message", "'accepted' is required");
        auto r = target_router.verdict(decision_id, *accepted, now_of(f, now_ms));
        if (!r) {
          const auto e = core_error(r.error());
          return reply_bytes(id, &e, nullptr);
        }
      }
      if (old) carry_delta(*previous_, before);
      sync_rows();
      publish_state();
    } else if (op == "adopt") {
      // A fast-path client's decision, decided from the table it names (this one, or the one before).
      Decision d = adopted_decision(f, now_ms);
      // Ids are partitioned by ring: a client cannot take the sidecar's ids or another ring's.
      if ((d.id & kFastIdBit) == 0 || ((d.id >> kRingShift) & 0x7FFFFFU) != ring) {
        bad("invalid_argument",
            "decision id " + std::to_string(d.id) + " is not one of ring " + std::to_string(ring) + "'s ids");
      }
      const bool old =
          previous_ && d.config_version != config.content_hash && d.config_version == previous_->config()->content_hash;
      Router& target_router = old ? *previous_ : *router;
      std::vector<CounterRow> before;
      if (old) before = previous_->counters();
      const Placement placed = d.placement;
      const std::uint32_t scenario = d.scenario;
      if (auto r = detail::FastPathAccess::adopt(target_router, std::move(d)); !r) {
        const auto e = core_error(r.error());
        return reply_bytes(id, &e, nullptr);
      }
      if (old) {
        carry_delta(*previous_, before);
        sync_rows();
      } else {
        sync_row(scenario, placed.target);  // the one row an adopt changes
      }
      publish_state();
    } else if (op == "stats") {
      body.key("pid").pack(static_cast<std::int64_t>(::getpid()));
      body.key("generation").pack(segment_->generation());
      body.str("config_version", hex16(config.content_hash));
      body.str("config", config.source);
      body.str("shm", segment_->name());
      body.key("uptime_s").pack(static_cast<double>(now_ms - started_ms_) / 1000.0);
      body.key("pending_decisions").pack(static_cast<std::uint64_t>(router->pending_decisions()));
      {
        MapOut fp;
        fp.key("enabled").pack(static_cast<bool>(table_));
        if (table_) {
          fp.str("table", table_->name());
        } else {
          fp.str("why_not", fast_note_);
        }
        fp.key("clients").pack(fast_clients());
        fp.key("records").pack(ring_applied_);
        fp.key("rejected").pack(ring_rejected_);
        fp.key("view_dropped").pack(table_ ? table_->dropped() : 0);
        body.sub("fast_path", fp);
      }
      const auto rows = router->counters();
      auto& arr = body.key("counters");
      arr.pack_array(static_cast<std::uint32_t>(rows.size()));
      for (const auto& row : rows) {
        MapOut m;
        pack_counters(m, config.scenarios[row.scenario].name, config.targets[row.target], row.counters);
        m.emit(body.body());
      }
      const auto breakers = router->breakers(now_ms);
      auto& br = body.key("breakers");
      br.pack_array(static_cast<std::uint32_t>(breakers.size()));
      for (const auto& b : breakers) {
        MapOut m;
        const Target& t = config.targets[b.target];
        m.str("target", t.name);
        if (b.replica == kNone) {
          m.key("endpoint").pack_nil();
        } else {
          m.str("endpoint", t.replicas[b.replica].endpoint);
        }
        m.str("phase", to_string(b.phase));
        m.key("consecutive_failures").pack(b.consecutive_failures);
        m.key("times_opened").pack(b.times_opened);
        m.key("inflight").pack(b.inflight);
        m.emit(body.body());
      }
    } else if (op == "health") {
      body.str("status", "serving");
      body.key("pid").pack(static_cast<std::int64_t>(::getpid()));
      body.key("generation").pack(segment_->generation());
      body.str("config_version", hex16(config.content_hash));
      body.key("uptime_s").pack(static_cast<double>(now_ms - started_ms_) / 1000.0);
    } else if (op == "reload") {
      if (auto r = reload(); !r) {
        const auto e = core_error(r.error());
        return reply_bytes(id, &e, nullptr);
      }
      body.str("config_version", hex16(router_->config()->content_hash));
      body.key("generation").pack(segment_->generation());
    } else {
      bad("unknown_op", "unknown op '" + std::string(op) +
                            "'; expected route, report, verdict, adopt, explain, stats, health or reload");
    }
    return reply_bytes(id, nullptr, &body);
  } catch (const BadField& b) {
    try {
      return reply_bytes(id, &b.error, nullptr);
    } catch (...) {
    }
  } catch (const std::exception& e) {
    try {
      const WireError w{"internal", e.what()};
      return reply_bytes(id, &w, nullptr);
    } catch (...) {
    }
  } catch (...) {
  }
  return {};  // out of memory: the caller drops the request
}

// ------------------------------------------------------------------------------------------ metrics

namespace {

std::string label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace

std::string Server::metrics(std::int64_t now_ms) const {
  const auto r = router();
  const Config& c = *r->config();
  const auto rows = r->counters();
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
  };
  auto labels = [&](const CounterRow& row) {
    return "scenario=\"" + label(c.scenarios[row.scenario].name) + "\",target=\"" + label(c.targets[row.target].name) +
           "\"";
  };
  auto simple = [&](const char* name, const char* type, const char* help, auto get) {
    family(name, type, help);
    for (const auto& row : rows) out += std::string(name) + "{" + labels(row) + "} " + get(row.counters) + "\n";
  };
  auto u = [](std::uint64_t v) { return std::to_string(v); };

  family("turnout_up", "gauge", "1 while the sidecar serves.");
  out += "turnout_up 1\n";
  family("turnout_generation", "gauge", "Segment generation (bumped on start and reload).");
  out += "turnout_generation " + std::to_string(segment_->generation()) + "\n";
  family("turnout_config_info", "gauge", "The routing table being served.");
  out += "turnout_config_info{version=\"" + hex16(c.content_hash) + "\",source=\"" + label(c.source) + "\"} 1\n";
  family("turnout_uptime_seconds", "gauge", "Seconds since the sidecar started.");
  out += "turnout_uptime_seconds " + std::to_string(static_cast<double>(now_ms - started_ms_) / 1000.0) + "\n";
  family("turnout_pending_decisions", "gauge", "Decisions waiting for their outcome or verdict.");
  out += "turnout_pending_decisions " + std::to_string(r->pending_decisions()) + "\n";

  simple("turnout_requests_total", "counter", "Decisions that chose the target.",
         [&](const Counters& k) { return u(k.requests); });
  simple("turnout_spillovers_total", "counter", "Decisions that spilled over to the target.",
         [&](const Counters& k) { return u(k.spillovers); });
  simple("turnout_fallbacks_total", "counter", "Outcomes on the target as a fallback.",
         [&](const Counters& k) { return u(k.fallbacks); });
  simple("turnout_unpriced_total", "counter", "ok outcomes reported without usage.",
         [&](const Counters& k) { return u(k.unpriced); });
  simple("turnout_accepted_total", "counter", "Outcomes accepted by their quality verdict.",
         [&](const Counters& k) { return u(k.accepted); });
  simple("turnout_rejected_total", "counter", "Outcomes rejected by their quality verdict.",
         [&](const Counters& k) { return u(k.rejected); });
  family("turnout_outcomes_total", "counter", "Reported outcomes by status.");
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < kStatusCount; ++i) {
      out += "turnout_outcomes_total{" + labels(row) + ",status=\"" + to_string(static_cast<Status>(i)) + "\"} " +
             u(row.counters.by_status[i]) + "\n";
    }
  }
  family("turnout_tokens_total", "counter", "Tokens of priced outcomes by kind.");
  for (const auto& row : rows) {
    const Usage& t = row.counters.tokens;
    const std::pair<const char*, std::int64_t> kinds[] = {{"uncached_input", t.uncached_input_tokens},
                                                          {"cache_read", t.cache_read_tokens},
                                                          {"cache_write_5m", t.cache_write_5m_tokens},
                                                          {"cache_write_1h", t.cache_write_1h_tokens},
                                                          {"output", t.output_tokens},
                                                          {"reasoning", t.reasoning_tokens}};
    for (const auto& [kind, n] : kinds) {
      out += "turnout_tokens_total{" + labels(row) + ",kind=\"" + kind + "\"} " + std::to_string(n) + "\n";
    }
  }
  family("turnout_cost_usd", "gauge", "Cost of priced outcomes in USD (float view of the exact counter).");
  for (const auto& row : rows) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.12g", static_cast<double>(row.counters.cost.picos()) / 1e12);
    out += "turnout_cost_usd{" + labels(row) + "} " + buf + "\n";
  }
  simple("turnout_cost_picodollars_total", "counter", "Exact cost of priced outcomes in picodollars.",
         [&](const Counters& k) { return int128_string(k.cost.picos()); });
  simple("turnout_accepted_cost_picodollars_total", "counter", "Exact cost of accepted outcomes in picodollars.",
         [&](const Counters& k) { return int128_string(k.accepted_cost.picos()); });
  for (const auto& [name, help, pick] :
       {std::tuple{"turnout_latency_ms", "Outcome latency in milliseconds.", &Counters::latency},
        std::tuple{"turnout_ttft_ms", "Time to first token in milliseconds.", &Counters::ttft}}) {
    family(name, "histogram", help);
    for (const auto& row : rows) {
      const Histogram& h = row.counters.*pick;
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < h.buckets.size(); ++i) {
        cumulative += h.buckets[i];
        const std::string le = i < kLatencyBoundsMs.size() ? std::to_string(kLatencyBoundsMs[i]) : "+Inf";
        out += std::string(name) + "_bucket{" + labels(row) + ",le=\"" + le + "\"} " + u(cumulative) + "\n";
      }
      out += std::string(name) + "_sum{" + labels(row) + "} " + std::to_string(h.sum_ms) + "\n";
      out += std::string(name) + "_count{" + labels(row) + "} " + u(h.count) + "\n";
    }
  }
  family("turnout_breaker_state", "gauge", "Circuit breaker phase: 0 closed, 1 open, 2 half-open.");
  for (const auto& b : r->breakers(now_ms)) {
    const Target& t = c.targets[b.target];
    out += "turnout_breaker_state{target=\"" + label(t.name) + "\",endpoint=\"" +
           (b.replica == kNone ? std::string() : label(t.replicas[b.replica].endpoint)) + "\"} " +
           std::to_string(static_cast<int>(b.phase)) + "\n";
  }
  family("turnout_inflight", "gauge", "Requests in flight per target replica.");
  for (const auto& b : r->breakers(now_ms)) {
    const Target& t = c.targets[b.target];
    out += "turnout_inflight{target=\"" + label(t.name) + "\",endpoint=\"" +
           (b.replica == kNone ? std::string() : label(t.replicas[b.replica].endpoint)) + "\"} " +
           std::to_string(b.inflight) + "\n";
  }
  return out;
}

}  // namespace turnout::sidecar
