#include "turnout/config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <initializer_list>
#include <set>
#include <sstream>

namespace turnout {

const char* to_string(TargetKind kind) noexcept { return kind == TargetKind::maas ? "maas" : "self_hosted"; }

const char* to_string(Provider provider) noexcept {
  switch (provider) {
    case Provider::openai: return "openai";
    case Provider::anthropic: return "anthropic";
    case Provider::gemini: return "gemini";
    case Provider::deepseek: return "deepseek";
    case Provider::openrouter: return "openrouter";
    case Provider::vllm: return "vllm";
    case Provider::sglang: return "sglang";
  }
  return "unknown";
}

std::optional<Provider> provider_from_string(std::string_view name) noexcept {
  for (auto p : {Provider::openai, Provider::anthropic, Provider::gemini, Provider::deepseek, Provider::openrouter,
                 Provider::vllm, Provider::sglang}) {
    if (name == to_string(p)) return p;
  }
  return std::nullopt;
}

ProviderDefaults provider_defaults(Provider provider) noexcept {
  switch (provider) {
    case Provider::openai: return {"chat_completions", "https://api.openai.com/v1", "OPENAI_API_KEY"};
    case Provider::anthropic: return {"messages", "https://api.anthropic.com", "ANTHROPIC_API_KEY"};
    case Provider::gemini: return {"generate_content", "https://generativelanguage.googleapis.com", "GEMINI_API_KEY"};
    case Provider::deepseek: return {"chat_completions", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"};
    case Provider::openrouter: return {"chat_completions", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"};
    case Provider::vllm:
    case Provider::sglang: return {"chat_completions", "", ""};
  }
  return {};
}

std::vector<std::string_view> provider_apis(Provider provider) {
  if (provider == Provider::openai) return {"chat_completions", "responses"};
  return {provider_defaults(provider).api};
}

std::uint32_t Config::find_target(std::string_view name) const {
  auto it = target_index.find(std::string(name));
  return it == target_index.end() ? kNone : it->second;
}
std::uint32_t Config::find_scenario(std::string_view name) const {
  auto it = scenario_index.find(std::string(name));
  return it == scenario_index.end() ? kNone : it->second;
}
std::uint32_t Config::find_data_class(std::string_view name) const {
  auto it = data_class_index.find(std::string(name));
  return it == data_class_index.end() ? kNone : it->second;
}
std::size_t Config::replica_count() const {
  std::size_t n = 0;
  for (const auto& t : targets) n += t.replicas.size();
  return n;
}

namespace {

// The loader stops at the first problem; this internal exception never leaves this file.
struct Fault {
  YAML::Mark mark;
  std::string message;
};

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

class Loader {
 public:
  explicit Loader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] static void fail(const YAML::Node& at, std::string message) {
    throw Fault{at.Mark(), std::move(message)};
  }

  // Checks `node` is a map with only `allowed` keys (and no key twice); `what` names it in messages.
  static void expect_map(const YAML::Node& node, const std::string& what, std::initializer_list<const char*> allowed,
                         std::initializer_list<const char*> required = {}) {
    if (!node.IsMap()) fail(node, what + " must be a mapping");
    std::set<std::string> seen;
    for (const auto& kv : node) {
      const auto key = kv.first.Scalar();
      if (std::find_if(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; }) == allowed.end()) {
        std::vector<std::string> names(allowed.begin(), allowed.end());
        fail(kv.first, "unknown key '" + key + "' in " + what + "; expected one of: " + join(names));
      }
      if (!seen.insert(key).second) fail(kv.first, "duplicate key '" + key + "' in " + what);
    }
    for (const char* r : required) {
      if (!node[r]) fail(node, what + " is missing required key '" + std::string(r) + "'");
    }
  }

  static const std::string& scalar(const YAML::Node& node, const std::string& what) {
    if (!node.IsScalar()) fail(node, what + " must be a scalar value");
    return node.Scalar();
  }

  // A number or boolean written in quotes is a string in YAML: refuse it rather than guess.
  static const std::string& unquoted(const YAML::Node& node, const std::string& what, const char* expected) {
    const auto& s = scalar(node, what);
    if (node.Tag() == "!") fail(node, what + " must be " + expected + ", got the quoted string \"" + s + "\"");
    return s;
  }

  static std::string string_value(const YAML::Node& node, const std::string& what) {
    const auto& s = scalar(node, what);
    if (s.empty()) fail(node, what + " must not be empty");
    return s;
  }

  static std::int64_t int_value(const YAML::Node& node, const std::string& what, std::int64_t lo, std::int64_t hi) {
    const auto& s = unquoted(node, what, "an integer");
    std::int64_t v = 0;
    const auto* end = s.data() + s.size();
    auto [p, ec] = std::from_chars(s.data(), end, v);
    if (ec != std::errc() || p != end) fail(node, what + " must be an integer, got '" + s + "'");
    if (v < lo || v > hi) {
      fail(node, what + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + s);
    }
    return v;
  }

  static double double_value(const YAML::Node& node, const std::string& what, double lo, double hi) {
    const auto& s = unquoted(node, what, "a number");
    double v = 0;
    const auto* end = s.data() + s.size();
    auto [p, ec] = std::from_chars(s.data(), end, v);
    if (ec != std::errc() || p != end || !std::isfinite(v)) {
      fail(node, what + " must be a number, got '" + s + "'");
    }
    if (v < lo || v > hi) {
      std::ostringstream os;
      os << what << " must be between " << lo << " and " << hi << ", got " << s;
      fail(node, os.str());
    }
    return v;
  }

  static bool bool_value(const YAML::Node& node, const std::string& what) {
    const auto& s = unquoted(node, what, "true or false");
    if (s == "true") return true;
    if (s == "false") return false;
    fail(node, what + " must be true or false, got '" + s + "'");
  }

  static TokenPrice price_value(const YAML::Node& node, const std::string& what) {
    auto p = parse_usd_per_mtok(scalar(node, what));
    if (!p) fail(node, what + " (USD per million tokens) " + p.error().message);
    return *p;
  }

  static Money usd_value(const YAML::Node& node, const std::string& what) {
    auto m = parse_usd(scalar(node, what));
    if (!m) fail(node, what + " (USD) " + m.error().message);
    return *m;
  }

  template <class F>
  static void each_in_sequence(const YAML::Node& node, const std::string& what, F&& f) {
    if (!node.IsSequence()) fail(node, what + " must be a list");
    std::size_t i = 0;
    for (const auto& item : node) f(item, what + "[" + std::to_string(i++) + "]");
  }

  ConfigPtr load(std::string_view text) {
    auto config = std::make_shared<Config>();
    config->source = source_;
    config->content_hash = XXH3_64bits(text.data(), text.size());
    config->text = std::string(text);
    YAML::Node root = YAML::Load(std::string(text));
    if (!root.IsDefined() || root.IsNull()) fail(root, "the routing table is empty");
    expect_map(root, "the routing table", {"version", "data_classes", "regions", "targets", "scenarios"},
               {"version", "targets", "scenarios"});
    config->schema_version = static_cast<int>(int_value(root["version"], "version", 1, 1));

    load_data_classes(*config, root["data_classes"]);
    if (root["regions"]) {
      each_in_sequence(root["regions"], "regions",
                       [&](const YAML::Node& n, const std::string& w) { add_region(*config, n, w, /*declare=*/true); });
      regions_declared_ = true;
    }

    const auto& targets = root["targets"];
    if (!targets.IsMap()) fail(targets, "targets must be a mapping of target name to target");
    for (const auto& kv : targets) load_target(*config, kv.first, kv.second);
    if (config->targets.empty()) fail(targets, "targets must declare at least one target");
    const auto maas = std::count_if(config->targets.begin(), config->targets.end(),
                                    [](const Target& t) { return t.kind == TargetKind::maas; });
    if (maas > 64) fail(targets, "at most 64 MaaS targets are supported (the MaaS cache directory's holders)");

    const auto& scenarios = root["scenarios"];
    if (!scenarios.IsMap()) fail(scenarios, "scenarios must be a mapping of scenario name to scenario");
    for (const auto& kv : scenarios) load_scenario(*config, kv.first, kv.second);
    if (config->scenarios.empty()) fail(scenarios, "scenarios must declare at least one scenario");
    config->warnings = warnings();
    return config;
  }

  /// The warnings of the load so far, each "source:line:col: message".
  [[nodiscard]] std::vector<std::string> warnings() const;

 private:
  static void load_data_classes(Config& config, const YAML::Node& node) {
    if (!node) {
      for (const char* c : {"public", "internal", "deidentified", "confidential", "restricted"}) {
        config.data_class_index.emplace(c, static_cast<std::uint32_t>(config.data_classes.size()));
        config.data_classes.emplace_back(c);
      }
      return;
    }
    each_in_sequence(node, "data_classes", [&](const YAML::Node& n, const std::string& what) {
      auto name = string_value(n, what);
      if (config.data_class_index.contains(name)) fail(n, "data class '" + name + "' is listed twice");
      if (config.data_classes.size() == 64) fail(n, "at most 64 data classes are supported");
      config.data_class_index.emplace(name, static_cast<std::uint32_t>(config.data_classes.size()));
      config.data_classes.push_back(name);
    });
  }

  std::uint32_t add_region(Config& config, const YAML::Node& n, const std::string& what, bool declare) const {
    auto name = string_value(n, what);
    auto it = std::find(config.regions.begin(), config.regions.end(), name);
    if (it != config.regions.end()) {
      if (declare) fail(n, "region '" + name + "' is listed twice");
      return static_cast<std::uint32_t>(it - config.regions.begin());
    }
    if (regions_declared_) {
      fail(n, "unknown region '" + name + "'; declared regions: " + join(config.regions));
    }
    if (config.regions.size() == 64) fail(n, "at most 64 regions are supported");
    config.regions.push_back(name);
    return static_cast<std::uint32_t>(config.regions.size() - 1);
  }

  static std::uint32_t data_class(const Config& config, const YAML::Node& n, const std::string& what) {
    auto name = string_value(n, what);
    auto idx = config.find_data_class(name);
    if (idx == kNone) {
      fail(n, "unknown data class '" + name + "' in " + what + "; known: " + join(config.data_classes));
    }
    return idx;
  }

  static void load_rates(const YAML::Node& node, const std::string& what, PriceRates& rates, Provider provider) {
    rates.input = price_value(node["input_per_mtok"], what + ".input_per_mtok");
    rates.output = price_value(node["output_per_mtok"], what + ".output_per_mtok");
    // A missing cache-read price must never make reads free: it defaults to the input price.
    rates.cache_read = node["cache_read_per_mtok"]
                           ? price_value(node["cache_read_per_mtok"], what + ".cache_read_per_mtok")
                           : rates.input;
    // Anthropic bills writes above input (1.25x / 2x): guessing would misprice, so demand them.
    if (provider == Provider::anthropic) {
      for (const char* k : {"cache_write_5m_per_mtok", "cache_write_1h_per_mtok"}) {
        if (!node[k]) {
          fail(node, what + " is missing '" + std::string(k) +
                         "': anthropic bills cache writes above the input price (1.25x for 5 min, 2x "
                         "for 1 h)");
        }
      }
    }
    rates.cache_write_5m = node["cache_write_5m_per_mtok"]
                               ? price_value(node["cache_write_5m_per_mtok"], what + ".cache_write_5m_per_mtok")
                               : rates.input;
    rates.cache_write_1h = node["cache_write_1h_per_mtok"]
                               ? price_value(node["cache_write_1h_per_mtok"], what + ".cache_write_1h_per_mtok")
                               : rates.cache_write_5m;
  }

  void load_price(Target& t, const YAML::Node& node, const std::string& what) {
    if (node.IsMap() && node["from_litellm"]) {
      load_litellm_price(t, node, what);
      return;
    }
    expect_map(node, what,
               {"input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_5m_per_mtok",
                "cache_write_1h_per_mtok", "cache_storage_per_mtok_hour", "batch_discount_pct", "tiers"},
               {"input_per_mtok", "output_per_mtok"});
    auto& price = t.price;
    price.present = true;
    load_rates(node, what, price.base, t.provider);
    if (node["cache_storage_per_mtok_hour"]) {
      price.cache_storage_per_hour =
          price_value(node["cache_storage_per_mtok_hour"], what + ".cache_storage_per_mtok_hour");
    }
    if (node["batch_discount_pct"]) {
      price.batch_discount_pct = int_value(node["batch_discount_pct"], what + ".batch_discount_pct", 0, 100);
    }
    if (node["tiers"]) {
      std::int64_t previous = 0;
      each_in_sequence(node["tiers"], what + ".tiers", [&](const YAML::Node& n, const std::string& w) {
        expect_map(n, w,
                   {"above_input_tokens", "input_per_mtok", "output_per_mtok", "cache_read_per_mtok",
                    "cache_write_5m_per_mtok", "cache_write_1h_per_mtok"},
                   {"above_input_tokens", "input_per_mtok", "output_per_mtok"});
        PriceTier tier;
        tier.above_input_tokens = int_value(n["above_input_tokens"], w + ".above_input_tokens", 1, 1LL << 40);
        if (tier.above_input_tokens <= previous) {
          fail(n["above_input_tokens"], w + ".above_input_tokens must be larger than the previous tier's");
        }
        previous = tier.above_input_tokens;
        load_rates(n, w, tier.rates, t.provider);
        price.tiers.push_back(tier);
      });
    }
  }

  // The LiteLLM model price map (per-token USD, JSON): reused as teams already keep it. yaml-cpp reads
  // JSON and keeps each number's text, so "3e-06" is parsed exactly, never through a double.
  const YAML::Node& litellm_map(const YAML::Node& at, const std::string& file) {
    std::filesystem::path path(file);
    if (path.is_relative()) path = std::filesystem::path(source_).parent_path() / path;
    const std::string key = path.string();
    auto it = litellm_maps_.find(key);
    if (it != litellm_maps_.end()) return it->second;
    YAML::Node map;
    try {
      map = YAML::LoadFile(key);
    } catch (const YAML::BadFile&) {
      fail(at, "cannot read the LiteLLM price map '" + key + "'");
    } catch (const YAML::Exception& e) {
      fail(at, "the LiteLLM price map " + key + ":" + std::to_string(e.mark.line + 1) + ":" +
                   std::to_string(e.mark.column + 1) + " is not valid JSON: " + e.msg);
    }
    if (!map.IsMap()) fail(at, "the LiteLLM price map '" + key + "' must be a JSON object of model entries");
    return litellm_maps_.emplace(key, map).first->second;
  }

  void load_litellm_price(Target& t, const YAML::Node& node, const std::string& what) {
    expect_map(node, what, {"from_litellm", "litellm_model", "batch_discount_pct"}, {"from_litellm"});
    const auto file = string_value(node["from_litellm"], what + ".from_litellm");
    const std::string model =
        node["litellm_model"] ? string_value(node["litellm_model"], what + ".litellm_model") : t.model;
    const YAML::Node& map = litellm_map(node["from_litellm"], file);
    const YAML::Node entry = map[model];
    if (!entry || !entry.IsMap()) {
      fail(node, what + ": model '" + model + "' is not in the LiteLLM price map '" + file + "'");
    }
    const std::string where = what + " (LiteLLM '" + model + "')";
    // The map is written from doubles: a price with digits below a picodollar per token is float noise
    // (3.6000000000000003e-06), rounded to the nearest picodollar with a warning.
    auto field = [&](const std::string& key) -> std::optional<TokenPrice> {
      const YAML::Node v = entry[key];
      if (!v || v.IsNull()) return std::nullopt;
      if (!v.IsScalar()) fail(node, where + "." + key + " must be a number");
      auto p = parse_usd_per_token_nearest(v.Scalar());
      if (!p) fail(node, where + "." + key + " (USD per token) " + p.error().message);
      if (p->rounded) {
        warn(node, where + "." + key + " " + v.Scalar() +
                       " is not a whole number of picodollars per token: rounded to " +
                       Money::from_picos(p->price.picos_per_token()).to_usd_string());
      }
      return p->price;
    };
    auto required = [&](const std::string& key) {
      auto p = field(key);
      if (!p) fail(node, where + " has no '" + key + "'");
      return *p;
    };
    auto rates_with_suffix = [&](const std::string& suffix, const PriceRates* base) {
      PriceRates r;
      r.input = base ? field("input_cost_per_token" + suffix).value_or(base->input) : required("input_cost_per_token");
      r.output =
          base ? field("output_cost_per_token" + suffix).value_or(base->output) : required("output_cost_per_token");
      // As in YAML prices: a missing cache price is never cheaper than input.
      r.cache_read = field("cache_read_input_token_cost" + suffix).value_or(r.input);
      auto write = field("cache_creation_input_token_cost" + suffix);
      if (!write && t.provider == Provider::anthropic) {
        fail(node, where + " has no 'cache_creation_input_token_cost" + suffix +
                       "': anthropic bills cache writes above the input price");
      }
      r.cache_write_5m = write.value_or(r.input);
      // Without its own 1 h write price: Anthropic's published rule is 2x that tier's input price;
      // for others never below the tier's 5 min price nor the base 1 h one.
      TokenPrice fallback_1h = base ? std::max(r.cache_write_5m, base->cache_write_1h) : r.cache_write_5m;
      if (t.provider == Provider::anthropic) {
        fallback_1h = TokenPrice::from_picos_per_token(2 * r.input.picos_per_token());
      }
      r.cache_write_1h = field("cache_creation_input_token_cost_above_1hr" + suffix).value_or(fallback_1h);
      return r;
    };
    // Batch prices per token kind (`<key><tier suffix>_batches`): a kind the map gives no batch price
    // costs its online price scaled by the input's batch-to-online ratio (else the output's; else
    // undiscounted), rounded to the nearest picodollar.
    std::optional<TokenPrice> batch_input = field("input_cost_per_token_batches");
    std::optional<TokenPrice> batch_output = field("output_cost_per_token_batches");
    bool any_batch_price = batch_input || batch_output;
    auto batch_rates = [&](const std::string& suffix, const PriceRates& online, const PriceRates& base) {
      std::int64_t num = 1;
      std::int64_t den = 1;
      if (batch_input && base.input.picos_per_token() > 0) {
        num = batch_input->picos_per_token();
        den = base.input.picos_per_token();
      } else if (batch_output && base.output.picos_per_token() > 0) {
        num = batch_output->picos_per_token();
        den = base.output.picos_per_token();
      }
      auto batch = [&](const std::string& key, TokenPrice online_price) {
        if (auto p = field(key + suffix + "_batches")) {
          any_batch_price = true;
          return *p;
        }
        return scaled_price(online_price, num, den);
      };
      PriceRates r;
      r.input = batch("input_cost_per_token", online.input);
      r.output = batch("output_cost_per_token", online.output);
      r.cache_read = batch("cache_read_input_token_cost", online.cache_read);
      r.cache_write_5m = batch("cache_creation_input_token_cost", online.cache_write_5m);
      r.cache_write_1h = batch("cache_creation_input_token_cost_above_1hr", online.cache_write_1h);
      return r;
    };
    auto& price = t.price;
    price.present = true;
    price.base = rates_with_suffix("", nullptr);
    price.batch = batch_rates("", price.base, price.base);
    // Long-context tiers: "input_cost_per_token_above_200k_tokens" and friends.
    for (const auto& kv : entry) {
      const std::string key = kv.first.Scalar();
      const std::string prefix = "input_cost_per_token_above_";
      const std::string tail = "k_tokens";
      if (key.rfind(prefix, 0) != 0 || key.size() <= prefix.size() + tail.size() ||
          key.compare(key.size() - tail.size(), tail.size(), tail) != 0) {
        continue;
      }
      const std::string digits = key.substr(prefix.size(), key.size() - prefix.size() - tail.size());
      std::int64_t thousands = 0;
      auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), thousands);
      if (ec != std::errc() || p != digits.data() + digits.size() || thousands <= 0) continue;
      PriceTier tier;
      tier.above_input_tokens = thousands * 1000;
      tier.rates = rates_with_suffix("_above_" + digits + "k_tokens", &price.base);
      tier.batch = batch_rates("_above_" + digits + "k_tokens", tier.rates, price.base);
      price.tiers.push_back(tier);
    }
    std::sort(price.tiers.begin(), price.tiers.end(),
              [](const PriceTier& a, const PriceTier& b) { return a.above_input_tokens < b.above_input_tokens; });
    // A batch_discount_pct in the routing table overrides the map's batch prices.
    if (node["batch_discount_pct"]) {
      price.batch_discount_pct = int_value(node["batch_discount_pct"], what + ".batch_discount_pct", 0, 100);
    } else {
      price.batch_rates = any_batch_price;
    }
  }

  /// `price` × num / den, to the nearest picodollar (halves up); num, den > 0.
  static TokenPrice scaled_price(TokenPrice price, std::int64_t num, std::int64_t den) {
    const Int128 scaled =
        (static_cast<Int128>(price.picos_per_token()) * num * 2 + den) / (2 * static_cast<Int128>(den));
    return TokenPrice::from_picos_per_token(static_cast<std::int64_t>(scaled));
  }

  /// Notes what the loader changed to accept the table (Config::warnings), located like a fault.
  void warn(const YAML::Node& at, const std::string& message) {
    const bool known =
        std::any_of(warnings_.begin(), warnings_.end(), [&](const Fault& w) { return w.message == message; });
    if (!known) warnings_.push_back({at.Mark(), message});  // a price read twice warns once
  }

  static void load_breaker(BreakerSpec& b, const YAML::Node& node, const std::string& what) {
    expect_map(node, what, {"consecutive_failures", "error_rate", "min_requests", "window_s", "cooldown_s"});
    if (node["consecutive_failures"]) {
      b.consecutive_failures = static_cast<std::uint32_t>(
          int_value(node["consecutive_failures"], what + ".consecutive_failures", 1, 1'000'000));
    }
    if (node["error_rate"]) b.error_rate = double_value(node["error_rate"], what + ".error_rate", 0.01, 1.0);
    if (node["min_requests"]) {
      b.min_requests =
          static_cast<std::uint32_t>(int_value(node["min_requests"], what + ".min_requests", 1, 1'000'000));
    }
    if (node["window_s"]) b.window_ms = 1000 * int_value(node["window_s"], what + ".window_s", 1, 86'400);
    if (node["cooldown_s"]) {
      b.cooldown_ms = 1000 * int_value(node["cooldown_s"], what + ".cooldown_s", 1, 86'400);
    }
  }

  static void load_cost(SelfHostedCost& c, const YAML::Node& node, const std::string& what) {
    expect_map(node, what,
               {"gpus_per_replica", "usd_per_gpu_hour", "prefill_tokens_per_s", "decode_tokens_per_s", "monthly"},
               {"gpus_per_replica", "usd_per_gpu_hour"});
    c.gpus_per_replica = int_value(node["gpus_per_replica"], what + ".gpus_per_replica", 1, 4096);
    c.usd_per_gpu_hour = usd_value(node["usd_per_gpu_hour"], what + ".usd_per_gpu_hour");
    if (node["prefill_tokens_per_s"]) {
      c.prefill_tokens_per_s = int_value(node["prefill_tokens_per_s"], what + ".prefill_tokens_per_s", 1, 1LL << 32);
    }
    if (node["decode_tokens_per_s"]) {
      c.decode_tokens_per_s = int_value(node["decode_tokens_per_s"], what + ".decode_tokens_per_s", 1, 1LL << 32);
    }
    if (const auto& m = node["monthly"]) {
      if (!m.IsMap()) fail(m, what + ".monthly must map an overhead name to USD per month");
      for (const auto& kv : m) {
        auto name = string_value(kv.first, what + ".monthly key");
        c.monthly_overheads.emplace_back(name, usd_value(kv.second, what + ".monthly." + name));
      }
    }
  }

  // The worker SDK's keys of a target: its API, base URL, where its key is, its timeouts.
  void load_call(Target& t, const YAML::Node& node, const std::string& what) const {
    const ProviderDefaults defaults = provider_defaults(t.provider);
    CallSpec& c = t.call;
    c.api = defaults.api;
    if (const auto& n = node["api"]) {
      c.api = string_value(n, what + ".api");
      const auto apis = provider_apis(t.provider);
      if (std::find(apis.begin(), apis.end(), c.api) == apis.end()) {
        fail(n, what + ".api '" + c.api + "' is not an API of " + to_string(t.provider) +
                    "; expected one of: " + join(std::vector<std::string>(apis.begin(), apis.end())));
      }
    }
    c.base_url = defaults.base_url;
    if (const auto& n = node["base_url"]) c.base_url = base_url(n, what + ".base_url");
    c.api_key_env = defaults.api_key_env;
    if (const auto& n = node["api_key_env"]) {
      c.api_key_env = string_value(n, what + ".api_key_env");
      const bool name_ok = std::all_of(c.api_key_env.begin(), c.api_key_env.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
      });
      if (!name_ok || std::isdigit(static_cast<unsigned char>(c.api_key_env[0]))) {
        fail(n,
             what + ".api_key_env must name an environment variable (letters, digits, _), got '" + c.api_key_env + "'");
      }
    }
    if (const auto& n = node["api_key_file"]) {
      std::filesystem::path path = string_value(n, what + ".api_key_file");
      // Relative to the table's own folder, so a table and its key file move together.
      if (path.is_relative() && !source_.empty()) {
        path = std::filesystem::absolute(std::filesystem::path(source_)).parent_path() / path;
      }
      c.api_key_file = path.lexically_normal().string();
    }
    if (const auto& n = node["timeout_ms"]) c.timeout_ms = int_value(n, what + ".timeout_ms", 1, kMaxOutcomeMs);
    if (const auto& n = node["first_token_timeout_ms"]) {
      c.first_token_timeout_ms = int_value(n, what + ".first_token_timeout_ms", 1, c.timeout_ms);
    } else {
      c.first_token_timeout_ms = std::min(c.first_token_timeout_ms, c.timeout_ms);
    }
  }

  // An API root: http(s), no credentials in it, https unless on loopback (a key must not cross the
  // network in clear). Its trailing slash is dropped.
  static std::string base_url(const YAML::Node& n, const std::string& what) {
    std::string url = string_value(n, what);
    const bool https = url.starts_with("https://");
    if (!https && !url.starts_with("http://")) fail(n, what + " must be an http:// or https:// URL, got '" + url + "'");
    const std::string_view rest = std::string_view(url).substr(https ? 8 : 7);
    const std::string_view authority = rest.substr(0, rest.find('/'));
    if (authority.empty()) fail(n, what + " has no host: '" + url + "'");
    if (authority.find('@') != std::string_view::npos) {
      fail(n, what + ": credentials never go in the routing table (the URL has a user part)");
    }
    if (in_clear(url)) {
      fail(n, what +
                  " must use https:// (only a loopback host may use http://): the API key would cross the "
                  "network in clear");
    }
    while (url.ends_with('/')) url.pop_back();
    return url;
  }

  // Whether a key sent to `url` would cross the network in clear: http:// to a host not on loopback
  // (127.0.0.0/8, localhost, [::1]; "localhost.example.com" is not).
  static bool in_clear(std::string_view url) {
    if (!url.starts_with("http://")) return false;
    url.remove_prefix(7);
    std::string_view host = url.substr(0, url.find_first_of("/?#"));
    host = host.starts_with('[') ? host.substr(0, host.find(']') + 1) : host.substr(0, host.find(':'));
    const bool v4_loopback =
        host.starts_with("127.") && host.find_first_not_of("0123456789.") == std::string_view::npos;
    return !(v4_loopback || host == "localhost" || host == "[::1]");
  }

  void load_target(Config& config, const YAML::Node& key, const YAML::Node& node) {
    Target t;
    t.name = string_value(key, "target name");
    t.name_hash = XXH3_64bits(t.name.data(), t.name.size());
    t.line = key.Mark().line + 1;
    const std::string what = "target '" + t.name + "'";
    if (!node.IsMap()) fail(node, what + " must be a mapping");
    if (const auto& k = node["api_key"]) {
      fail(k, what +
                  ".api_key: credentials never go in the routing table; name the environment variable "
                  "(api_key_env) or the file (api_key_file) that holds the key");
    }
    if (!node["kind"]) fail(node, what + " is missing required key 'kind' (maas or self_hosted)");
    const auto kind = string_value(node["kind"], what + ".kind");
    if (kind == "maas") {
      t.kind = TargetKind::maas;
      expect_map(node, what,
                 {"kind", "provider", "model", "region", "data_classes", "context_window", "price", "cache", "breaker",
                  "api", "base_url", "api_key_env", "api_key_file", "timeout_ms", "first_token_timeout_ms"},
                 {"provider", "model", "data_classes", "context_window", "price"});
      const auto provider = string_value(node["provider"], what + ".provider");
      auto p = provider_from_string(provider);
      if (!p || *p == Provider::vllm || *p == Provider::sglang) {
        fail(node["provider"], what + ".provider '" + provider +
                                   "' is not a MaaS provider; expected one of: openai, anthropic, gemini, "
                                   "deepseek, openrouter");
      }
      t.provider = *p;
    } else if (kind == "self_hosted") {
      t.kind = TargetKind::self_hosted;
      expect_map(node, what,
                 {"kind", "engine", "model", "region", "data_classes", "context_window", "cost", "kv", "replicas",
                  "breaker", "api", "api_key_env", "api_key_file", "timeout_ms", "first_token_timeout_ms"},
                 {"data_classes", "context_window", "cost", "replicas"});
      t.provider = Provider::vllm;
      if (node["engine"]) {
        const auto engine = string_value(node["engine"], what + ".engine");
        if (engine == "vllm")
          t.provider = Provider::vllm;
        else if (engine == "sglang")
          t.provider = Provider::sglang;
        else
          fail(node["engine"], what + ".engine must be vllm or sglang, got '" + engine + "'");
      }
    } else {
      fail(node["kind"], what + ".kind must be maas or self_hosted, got '" + kind + "'");
    }
    if (node["model"]) t.model = string_value(node["model"], what + ".model");
    if (node["region"]) t.region = add_region(config, node["region"], what + ".region", false);
    each_in_sequence(node["data_classes"], what + ".data_classes", [&](const YAML::Node& n, const std::string& w) {
      t.data_class_mask |= 1ULL << data_class(config, n, w);
    });
    if (t.data_class_mask == 0) fail(node["data_classes"], what + ".data_classes must not be empty");
    t.context_window = int_value(node["context_window"], what + ".context_window", 1, 1LL << 32);
    if (node["breaker"]) load_breaker(t.breaker, node["breaker"], what + ".breaker");

    load_call(t, node, what);

    if (t.kind == TargetKind::maas) {
      if (!node["price"].IsMap()) fail(node["price"], what + ".price must be a mapping");
      load_price(t, node["price"], what + ".price");
      if (const auto& c = node["cache"]) {
        expect_map(c, what + ".cache", {"ttl_s", "min_prefix_tokens"});
        if (c["ttl_s"]) t.cache.ttl_s = int_value(c["ttl_s"], what + ".cache.ttl_s", 0, 7LL * 86'400);
        if (c["min_prefix_tokens"]) {
          t.cache.min_prefix_tokens = int_value(c["min_prefix_tokens"], what + ".cache.min_prefix_tokens", 0, 1 << 20);
        }
      }
    } else {
      load_cost(t.cost, node["cost"], what + ".cost");
      if (const auto& kv = node["kv"]) {
        expect_map(kv, what + ".kv",
                   {"block_size", "capacity_blocks", "ttl_s", "overlap_weight", "balance_slack", "recent_slack"});
        if (kv["balance_slack"]) {
          t.kv.balance_slack = int_value(kv["balance_slack"], what + ".kv.balance_slack", -1, 1'000'000);
        }
        if (kv["recent_slack"]) {
          t.kv.recent_slack = int_value(kv["recent_slack"], what + ".kv.recent_slack", -1, 1'000'000);
        }
        if (kv["ttl_s"]) t.kv.ttl_s = int_value(kv["ttl_s"], what + ".kv.ttl_s", 1, 7LL * 86'400);
        if (kv["overlap_weight"]) {
          t.kv.overlap_weight = double_value(kv["overlap_weight"], what + ".kv.overlap_weight", 0.0, 1000.0);
        }
        if (kv["block_size"]) t.kv.block_size = int_value(kv["block_size"], what + ".kv.block_size", 1, 4096);
        if (kv["capacity_blocks"]) {
          t.kv.capacity_blocks = int_value(kv["capacity_blocks"], what + ".kv.capacity_blocks", 0, 1LL << 32);
        }
      }
      each_in_sequence(node["replicas"], what + ".replicas", [&](const YAML::Node& n, const std::string& w) {
        expect_map(n, w, {"endpoint", "max_inflight", "kv_events", "kv_replay"}, {"endpoint", "max_inflight"});
        Replica r;
        r.endpoint = string_value(n["endpoint"], w + ".endpoint");
        r.max_inflight = int_value(n["max_inflight"], w + ".max_inflight", 1, 1'000'000);
        if (n["kv_events"]) r.kv_events = string_value(n["kv_events"], w + ".kv_events");
        if (n["kv_replay"]) r.kv_replay = string_value(n["kv_replay"], w + ".kv_replay");
        t.replicas.push_back(std::move(r));
      });
      if (t.replicas.empty()) fail(node["replicas"], what + ".replicas must list at least one replica");
      if (!t.call.api_key_env.empty() || !t.call.api_key_file.empty()) {
        for (std::size_t i = 0; i < t.replicas.size(); ++i) {
          if (in_clear(t.replicas[i].endpoint)) {
            fail(node["replicas"][i]["endpoint"], what + ".replicas[" + std::to_string(i) +
                                                      "].endpoint must use https:// when the pool has a key (only a "
                                                      "loopback host may use http://): the key would cross the "
                                                      "network in clear");
          }
        }
      }
      if (t.replicas.size() > 64) fail(node["replicas"], what + ".replicas: at most 64 replicas per pool");
      // Precise mode needs every replica's events; a pool with some publishers missing stays approximate.
      t.kv.precise =
          std::all_of(t.replicas.begin(), t.replicas.end(), [](const Replica& r) { return !r.kv_events.empty(); });
    }
    if (config.target_index.contains(t.name)) fail(key, "target '" + t.name + "' is declared twice");
    config.target_index.emplace(t.name, static_cast<std::uint32_t>(config.targets.size()));
    config.targets.push_back(std::move(t));
  }

  // Resolves a target name and checks the scenario may ever send data there (fail closed at load).
  static std::uint32_t scenario_target(const Config& config, const Scenario& s, const YAML::Node& n,
                                       const std::string& what) {
    auto name = string_value(n, what);
    auto idx = config.find_target(name);
    if (idx == kNone) {
      std::vector<std::string> names;
      for (const auto& t : config.targets) names.push_back(t.name);
      fail(n, what + " names unknown target '" + name + "'; known targets: " + join(names));
    }
    const auto& t = config.targets[idx];
    if ((t.data_class_mask & (1ULL << s.data_class)) == 0) {
      std::vector<std::string> allowed;
      for (std::size_t i = 0; i < config.data_classes.size(); ++i) {
        if ((t.data_class_mask >> i) & 1U) allowed.push_back(config.data_classes[i]);
      }
      fail(n, what + ": target '" + name + "' does not accept data class '" + config.data_classes[s.data_class] +
                  "' (it accepts " + join(allowed) + "), so scenario '" + s.name + "' may never send data there");
    }
    if (s.region_mask != 0 && (t.region == kNone || ((s.region_mask >> t.region) & 1U) == 0)) {
      fail(n, what + ": target '" + name + "' is outside the regions scenario '" + s.name + "' allows");
    }
    return idx;
  }

  // The scenario's weighted routes: percentages that sum to 100.
  static void load_routes(const Config& config, Scenario& s, const YAML::Node& routes, const std::string& what) {
    std::int64_t weight_sum = 0;
    each_in_sequence(routes, what + ".routes", [&](const YAML::Node& n, const std::string& w) {
      expect_map(n, w, {"target", "weight"}, {"target"});
      Route r;
      r.target = scenario_target(config, s, n["target"], w + ".target");
      for (const auto& other : s.routes) {
        if (other.target == r.target) fail(n["target"], w + " repeats target '" + config.targets[r.target].name + "'");
      }
      r.weight = n["weight"] ? static_cast<std::uint32_t>(int_value(n["weight"], w + ".weight", 0, 100)) : 100U;
      weight_sum += r.weight;
      s.routes.push_back(r);
    });
    if (s.routes.empty()) fail(routes, what + ".routes must list at least one target");
    if (weight_sum != 100) {
      fail(routes, what + ".routes weights are percentages and must sum to 100, got " + std::to_string(weight_sum));
    }
  }

  // The key node of `name` in the mapping `node` (where a message about the whole entry points).
  static YAML::Node key_node(const YAML::Node& node, const char* name) {
    for (const auto& kv : node) {
      if (kv.first.Scalar() == name) return kv.first;
    }
    return node;
  }

  // A number in an interval open at `lo` and open or closed at `hi`.
  static double open_value(const YAML::Node& node, const std::string& what, double lo, double hi, bool hi_closed) {
    const double v = double_value(node, what, -1e300, 1e300);
    if (v <= lo || (hi_closed ? v > hi : v >= hi)) {
      std::ostringstream os;
      os << what << " must be above " << lo << " and " << (hi_closed ? "at most " : "below ") << hi << ", got "
         << node.Scalar();
      fail(node, os.str());
    }
    return v;
  }

  // XXH3 of what makes a run the same run: baseline and candidate names, steps and attempt.
  static std::uint64_t migration_identity(const Config& config, const MigrationSpec& m) {
    std::string key;
    for (std::uint32_t target : {m.baseline, m.candidate}) {
      key += config.targets[target].name;
      key += '\0';  // names cannot run together
    }
    const auto add = [&](std::uint32_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); };
    for (std::uint32_t step : m.steps) add(step);
    add(m.attempt);
    return XXH3_64bits(key.data(), key.size());
  }

  // The scenario's `migration` block; its routes become [{baseline, 100}, {candidate, 0}] (the Router
  // weighs them by the run's phase and step).
  static void load_migration(const Config& config, Scenario& s, const YAML::Node& scenario, const std::string& what) {
    const YAML::Node node = scenario["migration"];
    expect_map(node, what,
               {"baseline", "candidate", "stage", "steps", "min_samples", "max_step_s", "interval_s", "incident_owner",
                "delta", "attempt", "stop", "guardrails"},
               {"baseline", "candidate", "stage", "incident_owner"});
    MigrationSpec m;
    m.line = key_node(scenario, "migration").Mark().line + 1;
    m.baseline = scenario_target(config, s, node["baseline"], what + ".baseline");
    m.candidate = scenario_target(config, s, node["candidate"], what + ".candidate");
    if (m.candidate == m.baseline) {
      fail(node["candidate"], what + ".candidate: the candidate must differ from the baseline ('" +
                                  config.targets[m.baseline].name + "')");
    }
    const auto stage = string_value(node["stage"], what + ".stage");
    const auto* found = std::find(kMigrationStages.begin(), kMigrationStages.end(), stage);
    if (found == kMigrationStages.end()) {
      fail(node["stage"], what + ".stage must be one of: " +
                              join(std::vector<std::string>(kMigrationStages.begin(), kMigrationStages.end())) +
                              "; got '" + stage + "'");
    }
    m.stage = static_cast<MigrationStage>(found - kMigrationStages.begin());
    if (const auto& steps = node["steps"]) {
      each_in_sequence(steps, what + ".steps", [&](const YAML::Node& n, const std::string& w) {
        const auto step = static_cast<std::uint32_t>(int_value(n, w + " (candidate traffic %)", 1, 100));
        if (!m.steps.empty() && step <= m.steps.back()) {
          fail(n, w + " must be larger than the step before it (" + std::to_string(m.steps.back()) +
                      "): steps increase strictly");
        }
        m.steps.push_back(step);
      });
      if (m.steps.empty()) fail(steps, what + ".steps must list at least one step");
    } else {
      m.steps = {1, 5, 25, 50, 100};
    }
    if (node["min_samples"]) {
      m.min_samples =
          static_cast<std::uint32_t>(int_value(node["min_samples"], what + ".min_samples", 1, 1'000'000'000));
    }
    constexpr std::int64_t kMaxStepS = 30LL * 86'400;
    if (node["max_step_s"]) m.max_step_ms = int_value(node["max_step_s"], what + ".max_step_s", 1, kMaxStepS) * 1000;
    if (node["interval_s"]) {
      m.interval_ms = int_value(node["interval_s"], what + ".interval_s", 1, kMaxStepS) * 1000;
      if (m.interval_ms > m.max_step_ms) {
        fail(node["interval_s"], what + ".interval_s must be at most max_step_s (" +
                                     std::to_string(m.max_step_ms / 1000) + "), got " + node["interval_s"].Scalar());
      }
    } else {
      m.interval_ms = std::min(m.interval_ms, m.max_step_ms);
    }
    m.incident_owner = string_value(node["incident_owner"], what + ".incident_owner");
    if (node["delta"]) m.delta = open_value(node["delta"], what + ".delta", 0.0, 0.5, false);
    if (node["attempt"]) {
      m.attempt = static_cast<std::uint32_t>(int_value(node["attempt"], what + ".attempt", 1, 1'000'000));
    }
    if (node["stop"]) {
      load_stop(s, m, node["stop"], what + ".stop");
    } else {
      m.stop.push_back({StopMetric::errors, kDefaultMinEffect[0]});
      if (s.ttft_p95_ms > 0) m.stop.push_back({StopMetric::ttft, kDefaultMinEffect[1]});
      if (s.latency_p95_ms > 0) m.stop.push_back({StopMetric::latency, kDefaultMinEffect[2]});
      if (s.min_accept_rate > 0) m.stop.push_back({StopMetric::acceptance, kDefaultMinEffect[3]});
    }
    if (const auto& g = node["guardrails"]) load_guardrails(m.guardrails, g, what + ".guardrails");
    m.identity = migration_identity(config, m);
    s.routes = {Route{m.baseline, 100}, Route{m.candidate, 0}};
    s.migration = std::move(m);
  }

  // Each stop criterion's minimum effect when the table does not set one, in kStopMetrics order.
  static constexpr std::array<double, 5> kDefaultMinEffect{0.02, 0.05, 0.05, 0.03, 0.10};

  // `stop`: the criteria, each on a metric something reports, kept in kStopMetrics order.
  static void load_stop(const Scenario& s, MigrationSpec& m, const YAML::Node& node, const std::string& what) {
    expect_map(node, what, {"errors", "ttft", "latency", "acceptance", "cost_per_accepted"});
    for (std::size_t i = 0; i < kStopMetrics.size(); ++i) {
      const auto metric = static_cast<StopMetric>(i);
      const std::string name(kStopMetrics[i]);
      const YAML::Node n = node[name];
      if (!n) continue;
      const std::string w = what + "." + name;
      const char* missing = metric == StopMetric::ttft && s.ttft_p95_ms == 0         ? "slo.ttft_p95_ms"
                            : metric == StopMetric::latency && s.latency_p95_ms == 0 ? "slo.latency_p95_ms"
                            : metric == StopMetric::acceptance && s.min_accept_rate <= 0
                                ? "quality_gate.min_accept_rate"
                                : nullptr;
      if (missing != nullptr) {
        fail(key_node(node, name.c_str()), w + ": nothing reports this metric: scenario '" + s.name + "' has no " +
                                               missing + " (set it, or remove the criterion)");
      }
      StopCriterion c{metric, kDefaultMinEffect[i]};
      if (metric == StopMetric::cost) {
        expect_map(n, w, {"max_ratio", "max_usd", "min_effect"});
        if (static_cast<bool>(n["max_ratio"]) == static_cast<bool>(n["max_usd"])) {
          fail(n, w + " needs exactly one of max_ratio (to the baseline's cost per accepted outcome) or max_usd "
                      "(a ceiling)");
        }
        if (n["max_ratio"]) m.cost_max_ratio = open_value(n["max_ratio"], w + ".max_ratio", 0.0, 100.0, true);
        if (n["max_usd"]) {
          const Money ceiling = usd_value(n["max_usd"], w + ".max_usd");
          if (ceiling.picos() <= 0) fail(n["max_usd"], w + ".max_usd must be above 0, got " + n["max_usd"].Scalar());
          m.cost_ceiling = ceiling;
        }
        if (n["min_effect"]) c.min_effect = open_value(n["min_effect"], w + ".min_effect", 0.0, 10.0, true);
      } else {
        expect_map(n, w, {"min_effect"});
        if (n["min_effect"]) c.min_effect = open_value(n["min_effect"], w + ".min_effect", 0.0, 1.0, true);
      }
      m.stop.push_back(c);
    }
  }

  // `guardrails`: each optional; what is unset is off.
  static void load_guardrails(Guardrails& g, const YAML::Node& node, const std::string& what) {
    expect_map(node, what, {"error_rate", "latency_p99_ms", "budget_usd", "min_samples"});
    if (node["error_rate"]) g.error_rate = open_value(node["error_rate"], what + ".error_rate", 0.0, 1.0, true);
    if (node["latency_p99_ms"]) {
      g.latency_p99_ms = int_value(node["latency_p99_ms"], what + ".latency_p99_ms", 1, 3'600'000);
    }
    if (node["budget_usd"]) {
      const Money budget = usd_value(node["budget_usd"], what + ".budget_usd");
      if (budget.picos() <= 0) {
        fail(node["budget_usd"], what + ".budget_usd must be above 0, got " + node["budget_usd"].Scalar());
      }
      g.budget = budget;
    }
    if (node["min_samples"]) {
      g.min_samples =
          static_cast<std::uint32_t>(int_value(node["min_samples"], what + ".min_samples", 1, 1'000'000'000));
    }
  }

  void load_scenario(Config& config, const YAML::Node& key, const YAML::Node& node) {
    Scenario s;
    s.name = string_value(key, "scenario name");
    const std::string what = "scenario '" + s.name + "'";
    expect_map(node, what,
               {"data_class", "regions", "slo", "quality_gate", "mode", "max_output_tokens", "routes", "fallback",
                "spillover", "budget", "affinity", "inflight_lease_ms", "owner", "description", "migration"},
               {"data_class"});
    s.data_class = data_class(config, node["data_class"], what + ".data_class");
    if (node["regions"]) {
      each_in_sequence(node["regions"], what + ".regions", [&](const YAML::Node& n, const std::string& w) {
        auto name = string_value(n, w);
        auto it = std::find(config.regions.begin(), config.regions.end(), name);
        if (it == config.regions.end()) {
          fail(n, w + " names region '" + name + "' that no target is in; " +
                      (config.regions.empty() ? std::string("no target declares a region")
                                              : "regions in use: " + join(config.regions)));
        }
        s.region_mask |= 1ULL << (it - config.regions.begin());
      });
    }
    if (const auto& slo = node["slo"]) {
      expect_map(slo, what + ".slo", {"ttft_p95_ms", "latency_p95_ms"});
      if (slo["ttft_p95_ms"]) s.ttft_p95_ms = int_value(slo["ttft_p95_ms"], what + ".slo.ttft_p95_ms", 1, 3'600'000);
      if (slo["latency_p95_ms"]) {
        s.latency_p95_ms = int_value(slo["latency_p95_ms"], what + ".slo.latency_p95_ms", 1, 3'600'000);
      }
    }
    if (const auto& q = node["quality_gate"]) {
      expect_map(q, what + ".quality_gate", {"min_accept_rate"});
      if (q["min_accept_rate"]) {
        s.min_accept_rate = double_value(q["min_accept_rate"], what + ".quality_gate.min_accept_rate", 0, 1);
      }
    }
    if (node["mode"]) {
      const auto mode = string_value(node["mode"], what + ".mode");
      if (mode == "online")
        s.mode = ProcessingMode::online;
      else if (mode == "batch")
        s.mode = ProcessingMode::batch;
      else
        fail(node["mode"], what + ".mode must be online or batch, got '" + mode + "'");
    }
    if (node["inflight_lease_ms"]) {
      s.inflight_lease_ms = int_value(node["inflight_lease_ms"], what + ".inflight_lease_ms", 1'000, 86'400'000);
    }
    if (node["max_output_tokens"]) {
      s.max_output_tokens = int_value(node["max_output_tokens"], what + ".max_output_tokens", 1, 1 << 24);
    }

    if (node["migration"]) {
      if (node["routes"]) {
        fail(key_node(node, "routes"),
             what + ".routes: a scenario with a migration routes through its baseline and candidate; remove routes");
      }
      load_migration(config, s, node, what + ".migration");
    } else {
      if (!node["routes"]) fail(node, what + " is missing required key 'routes' (or a 'migration' block)");
      load_routes(config, s, node["routes"], what);
    }

    if (node["fallback"]) {
      each_in_sequence(node["fallback"], what + ".fallback", [&](const YAML::Node& n, const std::string& w) {
        auto idx = scenario_target(config, s, n, w);
        if (std::find(s.fallback.begin(), s.fallback.end(), idx) != s.fallback.end()) {
          fail(n, w + " repeats target '" + config.targets[idx].name + "'");
        }
        s.fallback.push_back(idx);
      });
    }
    if (const auto& sp = node["spillover"]) {
      expect_map(sp, what + ".spillover", {"target", "when_inflight_ratio"}, {"target"});
      Spillover spill;
      spill.target = scenario_target(config, s, sp["target"], what + ".spillover.target");
      if (sp["when_inflight_ratio"]) {
        spill.when_inflight_ratio =
            double_value(sp["when_inflight_ratio"], what + ".spillover.when_inflight_ratio", 0.01, 1.0);
      }
      s.spillover = spill;
    }
    if (const auto& b = node["budget"]) {
      expect_map(b, what + ".budget", {"usd_per_day"}, {"usd_per_day"});
      s.budget_per_day = usd_value(b["usd_per_day"], what + ".budget.usd_per_day");
    }
    if (const auto& a = node["affinity"]) {
      expect_map(a, what + ".affinity", {"prefix"});
      if (a["prefix"]) s.prefix_affinity = bool_value(a["prefix"], what + ".affinity.prefix");
    }
    if (node["owner"]) s.owner = string_value(node["owner"], what + ".owner");
    if (node["description"]) s.description = scalar(node["description"], what + ".description");

    if (config.scenario_index.contains(s.name)) fail(key, "scenario '" + s.name + "' is declared twice");
    config.scenario_index.emplace(s.name, static_cast<std::uint32_t>(config.scenarios.size()));
    config.scenarios.push_back(std::move(s));
  }

  std::string source_;
  bool regions_declared_ = false;
  std::unordered_map<std::string, YAML::Node> litellm_maps_;  // per load, each file read once
  std::vector<Fault> warnings_;                               // where and what, as a fault
};

std::string located(const std::string& source, const YAML::Mark& mark, const std::string& message) {
  if (mark.is_null()) return source + ":1:1: " + message;
  return source + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": " + message;
}

std::vector<std::string> Loader::warnings() const {
  std::vector<std::string> out;
  out.reserve(warnings_.size());
  for (const Fault& w : warnings_) out.push_back(located(source_, w.mark, w.message));
  return out;
}

// The whole file, or why it cannot be read: "path: cannot open: <the OS reason>" (a file that cannot
// be read has no line and column to point at).
Result<std::string> read_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return os_error(errno, path + ": cannot open");
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    return os_error(EISDIR, path + ": cannot read");
  }
  std::string text;
  char buf[1 << 16];
  for (;;) {
    const ::ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return os_error(err, path + ": cannot read");
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

}  // namespace

Result<ConfigPtr> load_config_text(std::string_view text, const std::string& source) {
  try {
    Loader loader(source);
    return ConfigPtr(loader.load(text));
  } catch (const Fault& f) {
    return make_error(ErrorCode::config_invalid, located(source, f.mark, f.message));
  } catch (const YAML::Exception& e) {
    return make_error(ErrorCode::config_invalid, located(source, e.mark, "invalid YAML: " + e.msg));
  }
}

Result<ConfigPtr> load_config_file(const std::string& path) {
  auto text = read_file(path);
  if (!text) return std::move(text).error();
  return load_config_text(text.value(), path);
}

}  // namespace turnout
