// turnout._core: a thin binding over the C++ core. Errors become the exception classes of
// turnout._errors (which subclass built-ins) through errors.hpp; money becomes decimal.Decimal; time is
// seconds.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

#include "errors.hpp"
#include "rows.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/config.hpp"
#include "turnout/kv_events.hpp"
#include "turnout/prefix.hpp"
#include "turnout/pricing.hpp"
#include "turnout/router.hpp"
#include "turnout/sim/prompt.hpp"
#include "turnout/usage.hpp"

namespace py = pybind11;
using namespace turnout;
using namespace turnout::bindings;

namespace {

TimeMs now_ms(const std::optional<double>& now) {
  if (now) return unwrap(time_from_seconds(*now));
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Python value -> msgpack object (the core's generic value), allocated in `zone`.
msgpack::object to_msgpack(py::handle value, msgpack::zone& zone, int depth = 0) {
  if (depth > 32) raise({ErrorCode::usage_invalid, "usage is nested deeper than 32 levels"});
  msgpack::object out;
  if (value.is_none()) {
    out.type = msgpack::type::NIL;
  } else if (py::isinstance<py::bool_>(value)) {
    out = msgpack::object(value.cast<bool>());
  } else if (py::isinstance<py::int_>(value)) {
    try {
      out = msgpack::object(value.cast<std::int64_t>());
    } catch (const py::cast_error&) {
      raise({ErrorCode::usage_invalid, "usage holds an integer outside 64 bits"});
    }
  } else if (py::isinstance<py::float_>(value)) {
    out = msgpack::object(value.cast<double>());
  } else if (py::isinstance<py::str>(value)) {
    const auto s = value.cast<std::string>();
    char* mem = static_cast<char*>(zone.allocate_align(s.size() + 1));
    std::copy(s.begin(), s.end(), mem);
    out.type = msgpack::type::STR;
    out.via.str.size = static_cast<std::uint32_t>(s.size());
    out.via.str.ptr = mem;
  } else if (py::isinstance<py::dict>(value)) {
    auto d = value.cast<py::dict>();
    out.type = msgpack::type::MAP;
    out.via.map.size = static_cast<std::uint32_t>(d.size());
    out.via.map.ptr = static_cast<msgpack::object_kv*>(zone.allocate_align(sizeof(msgpack::object_kv) * d.size()));
    std::size_t i = 0;
    for (auto item : d) {
      out.via.map.ptr[i].key = to_msgpack(item.first, zone, depth + 1);
      out.via.map.ptr[i].val = to_msgpack(item.second, zone, depth + 1);
      ++i;
    }
  } else if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
    auto seq = value.cast<py::sequence>();
    out.type = msgpack::type::ARRAY;
    out.via.array.size = static_cast<std::uint32_t>(seq.size());
    out.via.array.ptr = static_cast<msgpack::object*>(zone.allocate_align(sizeof(msgpack::object) * seq.size()));
    for (std::size_t i = 0; i < seq.size(); ++i) out.via.array.ptr[i] = to_msgpack(seq[i], zone, depth + 1);
  } else {
    raise({ErrorCode::usage_invalid, "usage holds a value of unsupported type " +
                                         py::str(py::type::of(value).attr("__name__")).cast<std::string>()});
  }
  return out;
}

// Token ids from a list, a tuple or any buffer of 32/64-bit integers (numpy arrays), checked to be
// valid u32 token ids.
std::vector<std::uint32_t> token_vector(const py::object& obj) {
  std::vector<std::uint32_t> out;
  if (py::isinstance<py::buffer>(obj) && !py::isinstance<py::bytes>(obj) && !py::isinstance<py::str>(obj)) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    if (info.ndim == 1 && (info.format == "I" || info.format == "i" || info.format == "L" || info.format == "l" ||
                           info.format == "q" || info.format == "Q")) {
      out.resize(static_cast<std::size_t>(info.shape[0]));
      for (std::size_t i = 0; i < out.size(); ++i) {
        const auto* p = static_cast<const char*>(info.ptr) + static_cast<std::ptrdiff_t>(i) * info.strides[0];
        std::int64_t v = 0;
        if (info.itemsize == 4) {
          std::int32_t x = 0;
          std::memcpy(&x, p, 4);
          v = info.format == "I" || info.format == "L" ? static_cast<std::int64_t>(static_cast<std::uint32_t>(x)) : x;
        } else {
          std::memcpy(&v, p, 8);
        }
        if (v < 0 || v > 0xFFFFFFFFLL) raise({ErrorCode::invalid_argument, "token ids must fit in 32 bits"});
        out[i] = static_cast<std::uint32_t>(v);
      }
      return out;
    }
  }
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj)) {
    raise({ErrorCode::invalid_argument, "token_ids must be a sequence of integers"});
  }
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  out.reserve(seq.size());
  for (auto item : seq) {
    const long long v = PyLong_AsLongLong(item.ptr());
    if (v == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      raise({ErrorCode::invalid_argument, "token_ids must be a sequence of integers"});
    }
    if (v < 0 || v > 0xFFFFFFFFLL) raise({ErrorCode::invalid_argument, "token ids must fit in 32 bits"});
    out.push_back(static_cast<std::uint32_t>(v));
  }
  return out;
}

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

/// The names of a decision the sidecar made, as its route/explain reply carries them (the indices of
/// its table mean nothing in this process).
struct DecisionNames {
  std::string scenario;
  std::string target;
  std::optional<std::string> endpoint;
  std::vector<std::string> fallbacks;
  std::vector<std::optional<std::string>> fallback_endpoints;
  std::vector<std::string> reasons;
};

/// A Decision together with the config it was made against (for names); or, detached, a decision
/// of the sidecar's with the names its reply carried (then `config` is null).
struct DecisionView {
  Decision d;
  ConfigPtr config;
  std::shared_ptr<const DecisionNames> names;  ///< set only when detached

  [[nodiscard]] std::string scenario() const { return names ? names->scenario : config->scenarios[d.scenario].name; }
  [[nodiscard]] std::string target() const { return names ? names->target : config->targets[d.placement.target].name; }
  [[nodiscard]] py::object endpoint() const {
    if (names) return names->endpoint ? py::object(py::str(*names->endpoint)) : py::object(py::none());
    if (d.placement.replica == kNone) return py::none();
    return py::str(config->targets[d.placement.target].replicas[d.placement.replica].endpoint);
  }
  [[nodiscard]] std::vector<std::string> fallbacks() const {
    if (names) return names->fallbacks;
    std::vector<std::string> out;
    for (const auto& f : d.fallbacks) out.push_back(config->targets[f.target].name);
    return out;
  }
  [[nodiscard]] std::vector<std::optional<std::string>> fallback_endpoints() const {
    if (names) return names->fallback_endpoints;
    std::vector<std::optional<std::string>> out;
    for (const auto& f : d.fallbacks) {
      if (f.replica == kNone) {
        out.emplace_back(std::nullopt);
      } else {
        out.emplace_back(config->targets[f.target].replicas[f.replica].endpoint);
      }
    }
    return out;
  }
  [[nodiscard]] std::vector<std::string> reasons() const {
    if (names) return names->reasons;
    std::vector<std::string> out;
    for (const auto& r : d.reasons) out.push_back(reason_text(*config, r));
    return out;
  }
  [[nodiscard]] std::string version() const { return hex16(d.config_version); }
  [[nodiscard]] py::object cache_key() const {
    return d.cache_key == 0 ? py::object(py::none()) : py::object(py::str(hex16(d.cache_key)));
  }
};

// A 64-bit id from its 16 hex digits, as hex16() writes it.
std::uint64_t from_hex16(const std::string& text, const char* what) {
  std::uint64_t v = 0;
  const auto* end = text.data() + text.size();
  const auto [at, ec] = std::from_chars(text.data(), end, v, 16);
  if (text.size() != 16 || ec != std::errc{} || at != end) {
    raise({ErrorCode::invalid_argument, std::string(what) + " must be 16 hex digits, got '" + text + "'"});
  }
  return v;
}

// An exact USD amount from its decimal text (never through a double).
Money usd_from_text(const std::string& text, const char* what) {
  auto m = parse_usd(text);
  if (!m) raise({ErrorCode::invalid_argument, std::string(what) + ": " + m.error().message});
  return *m;
}

// A detached Decision from the fields of the sidecar's route/explain reply (the client reads them by
// their wire names); amounts are decimal text, so they stay exact.
DecisionView detached_decision(std::uint64_t id, std::string scenario, std::string target,
                               std::optional<std::string> endpoint, std::vector<std::string> fallbacks,
                               std::vector<std::optional<std::string>> fallback_endpoints,
                               std::vector<std::string> reasons, const std::string& predicted_cost_usd,
                               const std::string& reserved_cost_usd, std::int64_t expected_cached_tokens,
                               const std::optional<std::string>& cache_key, const std::string& config_version,
                               double at) {
  if (!std::isfinite(at) || at < 0) raise({ErrorCode::invalid_argument, "at must be a finite, non-negative time"});
  if (fallback_endpoints.size() != fallbacks.size()) {
    raise({ErrorCode::invalid_argument, "fallback_endpoints must have one entry per fallback"});
  }
  DecisionView v;
  v.d.id = id;
  v.d.predicted_cost = usd_from_text(predicted_cost_usd, "predicted_cost_usd");
  v.d.reserved_cost = usd_from_text(reserved_cost_usd, "reserved_cost_usd");
  v.d.expected_cached_tokens = expected_cached_tokens;
  v.d.cache_key = cache_key ? from_hex16(*cache_key, "cache_key") : 0;
  v.d.config_version = from_hex16(config_version, "config_version");
  v.d.at = static_cast<TimeMs>(std::llround(at * 1000.0));
  v.names = std::make_shared<const DecisionNames>(DecisionNames{std::move(scenario), std::move(target),
                                                                std::move(endpoint), std::move(fallbacks),
                                                                std::move(fallback_endpoints), std::move(reasons)});
  return v;
}

// (target index, replica index) from a target name and a replica index or endpoint.
std::pair<std::uint32_t, std::uint32_t> replica_of(const Config& config, const std::string& target,
                                                   const py::object& replica) {
  const auto ti = config.find_target(target);
  if (ti == kNone) raise({ErrorCode::unknown_target, "unknown target '" + target + "'"});
  const Target& t = config.targets[ti];
  if (t.kind != TargetKind::self_hosted) {
    raise({ErrorCode::invalid_argument, "target '" + target + "' is not a self-hosted pool"});
  }
  if (py::isinstance<py::int_>(replica)) {
    const auto i = replica.cast<std::int64_t>();
    if (i < 0 || static_cast<std::size_t>(i) >= t.replicas.size()) {
      raise({ErrorCode::invalid_argument, "replica index out of range for '" + target + "'"});
    }
    return {ti, static_cast<std::uint32_t>(i)};
  }
  const auto endpoint = replica.cast<std::string>();
  for (std::uint32_t i = 0; i < t.replicas.size(); ++i) {
    if (t.replicas[i].endpoint == endpoint) return {ti, i};
  }
  raise({ErrorCode::invalid_argument, "'" + target + "' has no replica '" + endpoint + "'"});
}

// `tokens` keeps the converted token ids alive while the request (a view) is used.
RouteRequest make_request(const std::string& scenario, const std::optional<std::string>& key,
                          const std::optional<std::string>& data_class, std::optional<std::int64_t> input_tokens,
                          std::optional<std::int64_t> max_output_tokens, const py::object& token_ids,
                          const std::optional<std::string>& text, std::optional<double> now,
                          std::vector<std::uint32_t>& tokens) {
  for (auto v : {input_tokens, max_output_tokens}) {
    if (v && *v < 0) raise({ErrorCode::invalid_argument, "token counts must be >= 0 (None means unknown)"});
  }
  RouteRequest r;
  r.scenario = scenario;
  if (key) r.key = *key;
  if (data_class) r.data_class = *data_class;
  if (!token_ids.is_none()) {
    tokens = token_vector(token_ids);
    r.token_ids = tokens;
  }
  if (text) r.text = *text;
  if (input_tokens) {
    r.input_tokens = *input_tokens;
  } else {
    r.input_tokens = estimate_input_tokens(token_ids.is_none() ? std::nullopt : std::optional(r.token_ids),
                                           text ? std::optional(r.text) : std::nullopt);
  }
  r.max_output_tokens = max_output_tokens.value_or(-1);
  r.now = now_ms(now);
  return r;
}

py::dict counter_row(const Config& config, const CounterRow& row) {
  const Target& t = config.targets[row.target];
  const Scenario& s = config.scenarios[row.scenario];
  return counter_row_dict(s.name, t.name, to_string(t.kind), to_string(t.provider), row.counters, objectives(s));
}

}  // namespace

// Router.route (Commit) and Router.explain share their Python signature.
template <bool Commit>
DecisionView decide_py(Router& r, const std::string& scenario, const std::optional<std::string>& key,
                       const std::optional<std::string>& data_class, std::optional<std::int64_t> input_tokens,
                       std::optional<std::int64_t> max_output_tokens, const py::object& token_ids,
                       const std::optional<std::string>& text, std::optional<double> now) {
  std::vector<std::uint32_t> tokens;
  auto req = make_request(scenario, key, data_class, input_tokens, max_output_tokens, token_ids, text, now, tokens);
  return DecisionView{unwrap(Commit ? r.route(req) : r.explain(req)), r.config()};
}

// FastPath.route (Commit: decide and post) and FastPath.explain, with Router.route's signature.
template <bool Commit>
DecisionView fast_decide_py(client::FastClient& f, const std::string& scenario, const std::optional<std::string>& key,
                            const std::optional<std::string>& data_class, std::optional<std::int64_t> input_tokens,
                            std::optional<std::int64_t> max_output_tokens, const py::object& token_ids,
                            const std::optional<std::string>& text, std::optional<double> now) {
  std::vector<std::uint32_t> tokens;
  auto req = make_request(scenario, key, data_class, input_tokens, max_output_tokens, token_ids, text, now, tokens);
  ConfigPtr decided_by;
  auto d = Commit ? f.route(req, &decided_by) : f.explain(req, &decided_by);
  return DecisionView{unwrap(std::move(d)), decided_by};
}

// Router.report and the fast path's receipt share their Python signature and their conversions.
template <class Report>
py::dict report_py(Report&& report, std::uint64_t decision_id, const std::string& target, const std::string& status,
                   const py::object& usage, std::optional<double> ttft_ms, std::optional<double> latency_ms,
                   std::optional<bool> accepted, std::optional<double> now) {
  auto st = status_from_string(status);
  if (!st) {
    raise({ErrorCode::invalid_argument, "unknown status '" + status +
                                            "'; expected ok, error, timeout, rate_limited, "
                                            "context_overflow or content_filter"});
  }
  auto ms = [](std::optional<double> v, const char* name) -> std::int64_t {
    if (!v) return -1;
    const auto r = duration_ms(*v, name);
    if (!r) raise(r.error());
    return *r;
  };
  msgpack::zone zone;
  msgpack::object native;
  OutcomeReport o;
  o.decision_id = decision_id;
  o.target = target;
  o.status = *st;
  if (!usage.is_none()) {
    native = to_msgpack(usage, zone);
    o.usage = &native;
  }
  o.ttft_ms = ms(ttft_ms, "ttft_ms");
  o.latency_ms = ms(latency_ms, "latency_ms");
  o.accepted = accepted;
  o.now = now_ms(now);
  auto receipt = unwrap(report(o));
  py::dict d;
  d["duplicate"] = receipt.duplicate;
  d["fallback"] = receipt.fallback;
  d["priced"] = receipt.priced;
  d["cost_usd"] = money(receipt.cost);
  d["usage"] = usage_dict(receipt.usage);
  return d;
}

#define REPORT_ARGS                                                                                       \
  py::arg("decision_id"), py::kw_only(), py::arg("target"), py::arg("status"),                            \
      py::arg("usage") = py::none(), py::arg("ttft_ms") = py::none(), py::arg("latency_ms") = py::none(), \
      py::arg("accepted") = py::none(), py::arg("now") = py::none()

// The keyword arguments of route/explain (and of the no-op baseline with the same signature).
#define ROUTE_ARGS                                                                                                     \
  py::arg("scenario"), py::kw_only(), py::arg("key") = py::none(), py::arg("data_class") = py::none(),                 \
                                      py::arg("input_tokens") = py::none(), py::arg("max_output_tokens") = py::none(), \
                                      py::arg("token_ids") = py::none(), py::arg("text") = py::none(),                 \
                                      py::arg("now") = py::none()

void bind_sidecar(py::module_& m);   // bindings/sidecar.cpp
void bind_kv(py::module_& m);        // bindings/kv.cpp
void bind_ledger(py::module_& m);    // bindings/ledger.cpp
void bind_protocol(py::module_& m);  // bindings/protocol.cpp
void bind_sim(py::module_& m);       // bindings/sim.cpp

/// Adds the migration calls to Router (bindings/migration.cpp).
void bind_migration(py::module_& m);

namespace {

// A catalog's rates as USD per million tokens (exact Decimal).
py::dict price_rates_dict(const PriceRates& r) {
  constexpr std::int64_t kTokensPerMtok = 1'000'000;
  auto per_mtok = [](TokenPrice p) { return money(p.times(kTokensPerMtok)); };
  return py::dict(py::arg("input_per_mtok") = per_mtok(r.input), py::arg("output_per_mtok") = per_mtok(r.output),
                  py::arg("cache_read_per_mtok") = per_mtok(r.cache_read),
                  py::arg("cache_write_5m_per_mtok") = per_mtok(r.cache_write_5m),
                  py::arg("cache_write_1h_per_mtok") = per_mtok(r.cache_write_1h));
}

py::object optional_int(std::int64_t v) { return v > 0 ? py::object(py::int_(v)) : py::object(py::none()); }

py::dict scenario_info(const ConfigHandle& c, const std::string& name) {
  const auto idx = c.ptr->find_scenario(name);
  if (idx == kNone) raise({ErrorCode::unknown_scenario, "unknown scenario '" + name + "'"});
  const Config& config = *c.ptr;
  const Scenario& s = config.scenarios[idx];
  auto optional_str = [](const std::string& v) { return v.empty() ? py::object(py::none()) : py::object(py::str(v)); };
  py::dict d;
  d["name"] = s.name;
  d["description"] = optional_str(s.description);
  d["owner"] = optional_str(s.owner);
  d["data_class"] =
      s.data_class == kNone ? py::object(py::none()) : py::object(py::str(config.data_classes[s.data_class]));
  std::vector<std::string> regions;
  for (std::size_t i = 0; i < config.regions.size(); ++i) {
    if ((s.region_mask >> i) & 1U) regions.push_back(config.regions[i]);
  }
  d["regions"] = regions;
  d["ttft_p95_ms"] = optional_int(s.ttft_p95_ms);
  d["latency_p95_ms"] = optional_int(s.latency_p95_ms);
  d["min_accept_rate"] = s.min_accept_rate > 0 ? py::object(py::float_(s.min_accept_rate)) : py::object(py::none());
  d["mode"] = s.mode == ProcessingMode::batch ? "batch" : "online";
  d["max_output_tokens"] = s.max_output_tokens;
  py::list routes;
  for (const Route& r : s.routes) {
    routes.append(py::dict(py::arg("target") = config.targets[r.target].name, py::arg("weight") = r.weight));
  }
  d["routes"] = routes;
  std::vector<std::string> fallback;
  for (const std::uint32_t t : s.fallback) fallback.push_back(config.targets[t].name);
  d["fallback"] = fallback;
  d["spillover"] = s.spillover ? py::object(py::dict(py::arg("target") = config.targets[s.spillover->target].name,
                                                     py::arg("when_inflight_ratio") = s.spillover->when_inflight_ratio))
                               : py::object(py::none());
  d["budget_usd_per_day"] = s.budget_per_day ? money(*s.budget_per_day) : py::object(py::none());
  d["prefix_affinity"] = s.prefix_affinity;
  return d;
}

// Parts per million of a share given as Decimal, str, int or float (floats through their repr, so 0.24
// is exactly 240000), rounded half to even.
std::int64_t share_ppm(const py::object& share) {
  static py::object decimal = py::module_::import("decimal").attr("Decimal");
  const py::object d = py::isinstance<py::float_>(share) ? decimal(py::repr(share)) : decimal(py::str(share));
  const py::object ppm = (d * decimal("1000000")).attr("to_integral_value")();
  if (!py::bool_(ppm.attr("is_finite")())) {
    raise({ErrorCode::invalid_argument,
           "utilization must be a finite number, got " + py::str(share).cast<std::string>()});
  }
  return ppm.cast<py::int_>().cast<std::int64_t>();
}

/// Config, load_config, load_config_text.
void bind_config(py::module_& m) {
  py::class_<ConfigHandle>(m, "Config", "A validated, immutable routing table.")
      .def_property_readonly("source", [](const ConfigHandle& c) { return c.ptr->source; })
      .def_property_readonly(
          "version", [](const ConfigHandle& c) { return hex16(c.ptr->content_hash); },
          "Content hash of the file: the config version decisions carry.")
      .def_property_readonly("scenarios",
                             [](const ConfigHandle& c) {
                               std::vector<std::string> out;
                               for (const auto& s : c.ptr->scenarios) out.push_back(s.name);
                               return out;
                             })
      .def_property_readonly("targets",
                             [](const ConfigHandle& c) {
                               std::vector<std::string> out;
                               for (const auto& t : c.ptr->targets) out.push_back(t.name);
                               return out;
                             })
      .def_property_readonly(
          "warnings", [](const ConfigHandle& c) { return c.ptr->warnings; },
          "What the loader changed to accept the table ('path:line:col: what it did'), e.g. a rounded price.")
      .def(
          "target_info",
          [](const ConfigHandle& c, const std::string& name) {
            auto idx = c.ptr->find_target(name);
            if (idx == kNone) raise({ErrorCode::unknown_target, "unknown target '" + name + "'"});
            const Target& t = c.ptr->targets[idx];
            py::dict d;
            d["name"] = t.name;
            d["kind"] = to_string(t.kind);
            d["provider"] = to_string(t.provider);
            d["model"] = t.model;
            d["region"] = t.region == kNone ? py::object(py::none()) : py::object(py::str(c.ptr->regions[t.region]));
            std::vector<std::string> classes;
            for (std::size_t i = 0; i < c.ptr->data_classes.size(); ++i) {
              if ((t.data_class_mask >> i) & 1U) classes.push_back(c.ptr->data_classes[i]);
            }
            d["data_classes"] = classes;
            d["context_window"] = t.context_window;
            std::vector<std::string> endpoints;
            std::vector<std::int64_t> max_inflight;
            for (const auto& r : t.replicas) {
              endpoints.push_back(r.endpoint);
              max_inflight.push_back(r.max_inflight);
            }
            d["endpoints"] = endpoints;
            d["max_inflight"] = max_inflight;
            d["price"] = t.price.present ? py::object(price_rates_dict(t.price.base)) : py::object(py::none());
            d["cache"] =
                py::dict(py::arg("ttl_s") = t.cache.ttl_s, py::arg("min_prefix_tokens") = t.cache.min_prefix_tokens);
            const CallSpec& call = t.call;
            auto or_none = [](const std::string& v) {
              return v.empty() ? py::object(py::none()) : py::object(py::str(v));
            };
            d["call"] =
                py::dict(py::arg("api") = call.api, py::arg("base_url") = or_none(call.base_url),
                         py::arg("api_key_env") = or_none(call.api_key_env),
                         py::arg("api_key_file") = or_none(call.api_key_file), py::arg("timeout_ms") = call.timeout_ms,
                         py::arg("first_token_timeout_ms") = call.first_token_timeout_ms);
            if (t.kind == TargetKind::self_hosted) {
              py::dict monthly;
              for (const auto& [item, usd] : t.cost.monthly_overheads) monthly[py::str(item)] = money(usd);
              d["cost"] =
                  py::dict(py::arg("gpus_per_replica") = t.cost.gpus_per_replica,
                           py::arg("usd_per_gpu_hour") = money(t.cost.usd_per_gpu_hour),
                           py::arg("prefill_tokens_per_s") = t.cost.prefill_tokens_per_s,
                           py::arg("decode_tokens_per_s") = t.cost.decode_tokens_per_s, py::arg("monthly") = monthly);
              d["kv"] =
                  py::dict(py::arg("block_size") = t.kv.block_size, py::arg("capacity_blocks") = t.kv.capacity_blocks);
            } else {
              d["cost"] = py::none();
              d["kv"] = py::none();
            }
            return d;
          },
          py::arg("name"),
          "What the table says of a target: kind, provider, model, region, data classes, context window, "
          "endpoints and max_inflight per replica, base price (USD per million tokens), cache, and for a "
          "self-hosted pool its cost (GPUs, $/GPU-hour, throughputs, monthly overheads) and kv.")
      .def("scenario_info", &scenario_info, py::arg("name"),
           "What the table says of a scenario: owner, description, data class, regions, SLO, quality gate, "
           "mode, max output, routes, fallback, spillover, budget and prefix affinity.")
      .def("__repr__", [](const ConfigHandle& c) {
        return "<turnout.Config " + c.ptr->source + " (" + std::to_string(c.ptr->targets.size()) + " targets, " +
               std::to_string(c.ptr->scenarios.size()) + " scenarios)>";
      });

  m.def(
      "load_config", [](const std::string& path) { return ConfigHandle{unwrap(load_config_file(path))}; },
      py::arg("path"), "Loads and validates a YAML routing table; raises ConfigError with path:line:col.");
  m.def(
      "load_config_text",
      [](const std::string& text, const std::string& source) {
        return ConfigHandle{unwrap(load_config_text(text, source))};
      },
      py::arg("text"), py::arg("source") = "<string>");
}

/// Decision (whichever path made it).
void bind_decision(py::module_& m) {
  py::class_<DecisionView>(m, "Decision",
                           "Where one request goes, and why: the same attributes whichever made it (this "
                           "process's Router, the fast path, or the sidecar through its socket).")
      .def_property_readonly("id", [](const DecisionView& d) { return d.d.id; })
      .def_property_readonly("scenario", &DecisionView::scenario)
      .def_property_readonly("target", &DecisionView::target)
      .def_property_readonly("endpoint", &DecisionView::endpoint,
                             "Replica endpoint for self-hosted targets, else None.")
      .def_property_readonly("fallbacks", &DecisionView::fallbacks, "Ordered fallback targets, already filtered.")
      .def_property_readonly("fallback_endpoints", &DecisionView::fallback_endpoints,
                             "Each fallback's replica endpoint (self-hosted), else None; parallel to fallbacks.")
      .def_property_readonly("reasons", &DecisionView::reasons)
      .def_property_readonly("predicted_cost_usd", [](const DecisionView& d) { return money(d.d.predicted_cost); })
      .def_property_readonly(
          "reserved_cost_usd", [](const DecisionView& d) { return money(d.d.reserved_cost); },
          "What the scenario's budget reserved: the worst case, cache writes at their dearest.")
      .def_property_readonly("expected_cached_tokens", [](const DecisionView& d) { return d.d.expected_cached_tokens; })
      .def_property_readonly(
          "cache_key", &DecisionView::cache_key,
          "Prefix family of the prompt (its first <= 1024 tokens): pass it as the provider's cache key "
          "(OpenAI prompt_cache_key) so one family stays on one cache. None without a prompt.")
      .def_property_readonly("config_version", &DecisionView::version)
      .def_property_readonly("at", [](const DecisionView& d) { return static_cast<double>(d.d.at) / 1000.0; })
      .def("to_dict",
           [](const DecisionView& d) {
             py::dict out;
             out["id"] = d.d.id;
             out["scenario"] = d.scenario();
             out["target"] = d.target();
             out["endpoint"] = d.endpoint();
             out["fallbacks"] = d.fallbacks();
             out["fallback_endpoints"] = d.fallback_endpoints();
             out["reasons"] = d.reasons();
             out["predicted_cost_usd"] = money(d.d.predicted_cost);
             out["reserved_cost_usd"] = money(d.d.reserved_cost);
             out["expected_cached_tokens"] = d.d.expected_cached_tokens;
             out["cache_key"] = d.cache_key();
             out["config_version"] = d.version();
             return out;
           })
      .def("__repr__",
           [](const DecisionView& d) {
             return "<turnout.Decision " + std::to_string(d.d.id) + " -> " + d.target() + " ($" +
                    d.d.predicted_cost.to_usd_string() + ")>";
           })
      .def_static("_detached", &detached_decision, py::arg("id"), py::arg("scenario"), py::arg("target"),
                  py::arg("endpoint"), py::arg("fallbacks"), py::arg("fallback_endpoints"), py::arg("reasons"),
                  py::arg("predicted_cost_usd"), py::arg("reserved_cost_usd"), py::arg("expected_cached_tokens"),
                  py::arg("cache_key"), py::arg("config_version"), py::arg("at"),
                  "A Decision the sidecar made, from its reply's fields (turnout.Client reads them by wire name).");
}

/// Router: the in-process router and its ledger, directories and KV events.
void bind_router(py::module_& m) {
  py::class_<Router>(m, "Router", "In-process router: the same decisions the sidecar makes.")
      .def(py::init([](const ConfigHandle& config, std::uint64_t seed, double decision_ttl_s, std::size_t max_pending,
                       std::size_t max_settled, std::uint64_t first_decision_id) {
             if (!(decision_ttl_s > 0)) raise({ErrorCode::invalid_argument, "decision_ttl_s must be positive"});
             if (first_decision_id == 0) raise({ErrorCode::invalid_argument, "first_decision_id must be positive"});
             return std::make_unique<Router>(
                 config.ptr, RouterOptions{.seed = seed,
                                           .decision_ttl_ms = static_cast<TimeMs>(decision_ttl_s * 1000.0),
                                           .max_pending = max_pending,
                                           .max_settled = max_settled,
                                           .first_decision_id = first_decision_id});
           }),
           py::arg("config"), py::arg("seed") = 0, py::arg("decision_ttl_s") = 3600.0,
           py::arg("max_pending") = RouterOptions{}.max_pending, py::arg("max_settled") = RouterOptions{}.max_settled,
           py::arg("first_decision_id") = RouterOptions{}.first_decision_id)
      .def("route", &decide_py<true>, ROUTE_ARGS,
           "Decides where a request of `scenario` goes and commits the decision.")
      .def("explain", &decide_py<false>, ROUTE_ARGS, "What route() would decide now, without committing anything.")
      .def(
          "report",
          [](Router& r, std::uint64_t decision_id, const std::string& target, const std::string& status,
             const py::object& usage, std::optional<double> ttft_ms, std::optional<double> latency_ms,
             std::optional<bool> accepted, std::optional<double> now) {
            return report_py([&](const OutcomeReport& o) { return r.report(o); }, decision_id, target, status, usage,
                             ttft_ms, latency_ms, accepted, now);
          },
          REPORT_ARGS, "Accounts what happened to a decision on `target`. Idempotent per (decision, target).")
      .def(
          "verdict",
          [](Router& r, std::uint64_t decision_id, bool accepted, std::optional<double> now) {
            unwrap(r.verdict(decision_id, accepted, now_ms(now)));
          },
          py::arg("decision_id"), py::arg("accepted"), py::kw_only(), py::arg("now") = py::none(),
          "Records the quality verdict for a decision whose ok outcome was reported.")
      .def(
          "counters",
          [](const Router& r) {
            py::list out;
            for (const auto& row : r.counters()) out.append(counter_row(*r.config(), row));
            return out;
          },
          "Ledger rows per scenario x target.")
      .def(
          "breakers",
          [](const Router& r, std::optional<double> now) {
            py::list out;
            const auto& config = *r.config();
            for (const auto& b : r.breakers(now_ms(now))) {
              const Target& t = config.targets[b.target];
              py::dict d;
              d["target"] = t.name;
              d["endpoint"] =
                  b.replica == kNone ? py::object(py::none()) : py::object(py::str(t.replicas[b.replica].endpoint));
              d["phase"] = to_string(b.phase);
              d["consecutive_failures"] = b.consecutive_failures;
              d["times_opened"] = b.times_opened;
              d["inflight"] = b.inflight;
              out.append(d);
            }
            return out;
          },
          py::kw_only(), py::arg("now") = py::none())
      .def(
          "budgets",
          [](const Router& r, std::optional<double> now) {
            py::list out;
            for (const auto& b : r.budgets(now_ms(now))) {
              py::dict d;
              d["scenario"] = r.config()->scenarios[b.scenario].name;
              d["limit_usd"] = money(b.limit);
              d["spent_usd"] = money(b.spent);
              d["reserved_usd"] = money(b.reserved);
              out.append(d);
            }
            return out;
          },
          py::kw_only(), py::arg("now") = py::none())
      .def(
          "self_hosted_costs",
          [](const Router& r, double period_s) {
            if (!(period_s > 0)) raise({ErrorCode::invalid_argument, "period_s must be positive"});
            py::list out;
            for (const auto& row : r.self_hosted_costs(static_cast<TimeMs>(std::llround(period_s * 1000.0)))) {
              const Target& t = r.config()->targets[row.target];
              py::dict d;
              d["target"] = t.name;
              d["replicas"] = t.replicas.size();
              d["gpus"] = static_cast<std::int64_t>(t.replicas.size()) * t.cost.gpus_per_replica;
              d["period_s"] = period_s;
              d["outcomes"] = row.outcomes;
              d["accepted"] = row.accepted;
              d["marginal_usd"] = money(row.marginal);
              d["gpu_usd"] = money(row.provisioned.gpu);
              d["overheads_usd"] = money(row.provisioned.overheads);
              d["fully_loaded_usd"] = money(row.provisioned.fully_loaded());
              auto per = [&](const py::object& total) -> py::object {
                return row.accepted == 0 ? py::object(py::none()) : total.attr("__truediv__")(py::int_(row.accepted));
              };
              d["marginal_per_accepted_usd"] = per(d["marginal_usd"]);
              d["fully_loaded_per_accepted_usd"] = per(d["fully_loaded_usd"]);
              out.append(d);
            }
            return out;
          },
          py::arg("period_s"),
          "Self-hosted pools: marginal GPU cost of the ledger's outcomes next to the fully loaded cost of "
          "`period_s` (GPUs for the whole period plus monthly overheads). Two views, never mixed.")
      .def(
          "apply_kv_events",
          [](Router& r, const std::string& target, const py::object& replica, const py::bytes& payload,
             std::optional<double> now) {
            const auto [ti, ri] = replica_of(*r.config(), target, replica);
            const std::string_view bytes = payload;
            auto batch = unwrap(decode_kv_events(std::as_bytes(std::span(bytes.data(), bytes.size()))));
            const auto stats = unwrap(r.apply_kv_events(ti, ri, batch, now_ms(now)));
            py::dict d;
            stats.visit_fields([&d](const char* name, std::uint64_t value) { d[name] = value; });
            d["skipped_unknown"] = batch.skipped_unknown;
            d["unusable_reason"] = batch.unusable_reason;
            return d;
          },
          py::arg("target"), py::arg("replica"), py::arg("payload"), py::kw_only(), py::arg("now") = py::none(),
          "Feeds one msgpack KV-event payload, as a vLLM/SGLang replica publishes it, to the pool's directory. "
          "`replica` is the replica's index or endpoint.")
      .def(
          "reset_kv",
          [](Router& r, const std::string& target, const py::object& replica) {
            const auto [ti, ri] = replica_of(*r.config(), target, replica);
            unwrap(r.reset_kv(ti, ri));
          },
          py::arg("target"), py::arg("replica"), "Forgets every block a replica holds (its engine restarted).")
      .def(
          "directory_stats",
          [](const Router& r) {
            py::list out;
            const Config& config = *r.config();
            for (const auto& row : r.directory_stats()) {
              py::dict d;
              d["target"] =
                  row.target == kNone ? py::object(py::none()) : py::object(py::str(config.targets[row.target].name));
              d["kind"] = row.target == kNone ? "maas" : "self_hosted";
              std::vector<std::string> holders;
              if (row.target == kNone) {
                for (const auto& t : config.targets) {
                  if (t.kind == TargetKind::maas) holders.push_back(t.name);
                }
              } else {
                for (const auto& rep : config.targets[row.target].replicas) holders.push_back(rep.endpoint);
              }
              d["mode"] = row.target == kNone ? "approximate"
                                              : (config.targets[row.target].kv.precise ? "precise" : "approximate");
              d["holders"] = holders;
              d["blocks"] = row.stats.blocks;
              d["held"] = row.stats.held;
              d["evicted"] = row.stats.evicted;
              d["expired"] = row.stats.expired;
              d["removed"] = row.stats.removed;
              d["bytes"] = row.stats.bytes;
              std::size_t entries = 0;
              for (auto h : row.stats.held) entries += h;
              d["bytes_per_entry"] =
                  entries == 0
                      ? py::object(py::none())
                      : py::object(py::float_(static_cast<double>(row.stats.bytes) / static_cast<double>(entries)));
              py::list events;
              for (const auto& e : row.events) {
                py::dict ev;
                e.visit_fields([&ev](const char* name, std::uint64_t value) { ev[name] = value; });
                events.append(ev);
              }
              d["events"] = events;
              out.append(d);
            }
            return out;
          },
          "The cache directories: one per self-hosted pool and one for the MaaS targets.")
      .def_property_readonly("pending_decisions", &Router::pending_decisions)
      .def_property_readonly("config", [](const Router& r) { return ConfigHandle{r.config()}; });
}

/// Pricing and prefix hashing as free functions.
void bind_pricing(py::module_& m) {
  m.def(
      "_price_usage",
      [](const ConfigHandle& config, const std::string& target, const py::object& usage,
         const std::optional<std::string>& provider, bool batch) {
        auto idx = config.ptr->find_target(target);
        if (idx == kNone) raise({ErrorCode::unknown_target, "unknown target '" + target + "'"});
        Target t = config.ptr->targets[idx];
        if (provider) {
          auto p = provider_from_string(*provider);
          if (!p) raise({ErrorCode::invalid_argument, "unknown provider '" + *provider + "'"});
          t.provider = *p;
        }
        msgpack::zone zone;
        const msgpack::object native = to_msgpack(usage, zone);
        auto u = unwrap(normalize_usage(t.provider, native));
        auto cost = unwrap(actual_cost(t, u, batch ? ProcessingMode::batch : ProcessingMode::online));
        py::dict d = usage_dict(u);
        d["cost_usd"] = money(cost);
        d["reported_cost_usd"] = u.reported_cost ? money(*u.reported_cost) : py::object(py::none());
        return d;
      },
      py::arg("config"), py::arg("target"), py::arg("usage"), py::arg("provider") = py::none(),
      py::arg("batch") = false);

  m.def(
      "self_hosted_cost_per_mtok",
      [](std::int64_t gpus_per_replica, const py::object& usd_per_gpu_hour, std::int64_t output_tokens_per_s,
         const py::object& utilization) {
        SelfHostedCost cost;
        cost.gpus_per_replica = gpus_per_replica;
        cost.usd_per_gpu_hour = usd_from_text(py::str(usd_per_gpu_hour).cast<std::string>(), "usd_per_gpu_hour");
        return money(unwrap(self_hosted_cost_per_mtok(cost, output_tokens_per_s, share_ppm(utilization))));
      },
      py::arg("gpus_per_replica"), py::arg("usd_per_gpu_hour"), py::arg("output_tokens_per_s"),
      py::arg("utilization") = 1,
      "Exact GPU cost (Decimal USD, to the picodollar) of one million output tokens on replicas of "
      "`gpus_per_replica` GPUs at `usd_per_gpu_hour` each, sustaining `output_tokens_per_s` per replica at "
      "full load and busy `utilization` (a share in (0, 1], to the millionth) of the time.");

  m.def(
      "canonical_prompt",
      [](const std::vector<std::pair<std::string, std::string>>& messages, const std::vector<std::string>& tools) {
        std::vector<PromptMessage> ms;
        ms.reserve(messages.size());
        for (const auto& [role, content] : messages) ms.push_back({role, content});
        return canonical_prompt(ms, tools);
      },
      py::arg("messages"), py::arg("tools") = std::vector<std::string>{},
      "Canonical text of a chat prompt ((role, content) pairs; tool schemas as strings): system first, "
      "tools sorted, then turns. Route with text=canonical_prompt(...) so a conversation's prefix hashes "
      "the same from every worker.");
  m.def(
      "prefix_hashes",
      [](const py::object& token_ids, const std::optional<std::string>& text, std::size_t block_size,
         const std::string& model, const std::string& lora, const std::string& salt) {
        if (block_size == 0) raise({ErrorCode::invalid_argument, "block_size must be positive"});
        std::vector<std::uint64_t> out;
        const auto root = PrefixHasher::root_seed(model, lora, salt);
        if (!token_ids.is_none()) {
          PrefixHasher::hash_tokens(token_vector(token_ids), block_size, root, out);
        } else if (text) {
          PrefixHasher::hash_text(*text, block_size, root, out);
        } else {
          raise({ErrorCode::invalid_argument, "give token_ids or text"});
        }
        return out;
      },
      py::kw_only(), py::arg("token_ids") = py::none(), py::arg("text") = py::none(), py::arg("block_size") = 16,
      py::arg("model") = "", py::arg("lora") = "", py::arg("salt") = "",
      "The chained XXH3-64 block hashes of a prompt, as the router and the cache directory compute them.");
  m.def(
      "trace_blocks",
      [](const py::object& token_ids, const std::optional<std::string>& text) {
        std::vector<std::uint64_t> out;
        if (!token_ids.is_none()) {
          sim::chain_of(token_vector(token_ids), out);
        } else if (text) {
          PrefixHasher::hash_text(*text, static_cast<std::size_t>(sim::kChainTokens), 0, out);
        } else {
          raise({ErrorCode::invalid_argument, "give token_ids or text"});
        }
        return out;
      },
      py::kw_only(), py::arg("token_ids") = py::none(), py::arg("text") = py::none(),
      "A Turnout trace's `blocks` for a prompt (block_tokens 16): the simulator's chain (sim::chain_of), or "
      "for text its 64-byte links (hash_text, 16 tokens of 4 characters, root 0).");
}

/// FastPath: a sidecar's table mapped from shared memory, and the route baseline for the bench.
void bind_fast_path(py::module_& m) {
  py::class_<client::FastClient>(m, "FastPath",
                                 "A sidecar's table mapped from shared memory: route() decides here, with the same "
                                 "decide(), and posts the decision to this process's ring (no system call).")
      .def("route", &fast_decide_py<true>, ROUTE_ARGS,
           "Decides from the mapped table and posts the decision; UnavailableError if the ring is full.")
      .def("explain", &fast_decide_py<false>, ROUTE_ARGS,
           "What route() would decide now from the mapped table and state; commits nothing.")
      .def(
          "receipt",
          [](client::FastClient& f, std::uint64_t decision_id, const std::string& target, const std::string& status,
             const py::object& usage, std::optional<double> ttft_ms, std::optional<double> latency_ms,
             std::optional<bool> accepted, std::optional<double> now) {
            return report_py([&](const OutcomeReport& o) { return f.receipt(o); }, decision_id, target, status, usage,
                             ttft_ms, latency_ms, accepted, now);
          },
          REPORT_ARGS, "What report() would answer for one of this client's recent decisions, priced here.")
      .def(
          "post", [](client::FastClient& f, const py::bytes& message) { return f.post(std::string_view(message)); },
          py::arg("message"), "Posts one wire message (report, verdict) to the ring; False if it is full.")
      .def_property_readonly("config",
                             [](client::FastClient& f) -> std::optional<ConfigHandle> {
                               auto c = f.config();
                               if (!c) return std::nullopt;
                               return ConfigHandle{c};
                             })
      .def_property_readonly("generation", &client::FastClient::generation)
      .def_property_readonly("ring", &client::FastClient::ring);

  m.def(
      "attach_fast_path",
      [](const std::string& shm, bool ring) { return unwrap(client::FastClient::attach(shm, ring)); }, py::arg("shm"),
      py::arg("ring") = true, "Maps sidecar `shm`'s table and claims a ring for this process (ring=False: read only).");

  // Baseline for bench/route_bench.py: the same signature as Router.route, doing nothing.
  m.def(
      "_noop_route",
      [](const std::string&, const std::optional<std::string>&, const std::optional<std::string>&,
         std::optional<std::int64_t>, std::optional<std::int64_t>, const py::object&, const std::optional<std::string>&,
         std::optional<double>) {},
      ROUTE_ARGS);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Turnout C++ core (private: import turnout instead)";
  m.attr("__version__") = TURNOUT_VERSION;
  m.attr("LATENCY_BUCKETS_MS") = std::vector<std::int64_t>(kLatencyBoundsMs.begin(), kLatencyBoundsMs.end());

  bind_config(m);
  bind_decision(m);
  bind_router(m);
  bind_migration(m);  // adds to Router
  bind_pricing(m);
  bind_fast_path(m);
  bind_errors(m);
  bind_sidecar(m);
  bind_kv(m);
  bind_ledger(m);
  bind_protocol(m);
  bind_sim(m);
}
