#include "turnout/usage.hpp"

#include <charconv>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <system_error>

// Each provider's usage object is read straight from the msgpack value (no conversion to an intermediate
// map, no msgpack::convert, which would throw): normalizing one usage sits on the report() path.

namespace turnout {
namespace {

// kTokenKinds names every token member of Usage (all but reported_cost and batch_tier): a member added without its
// line there stops this binding from compiling.
[[maybe_unused]] void every_token_kind_is_listed(Usage& u) {
  [[maybe_unused]] auto& [uncached_input, cache_read, cache_write_5m, cache_write_1h, output, reasoning, reported_cost,
                          batch_tier] = u;
  static_assert(kTokenKinds.size() == 6, "a token member of Usage is missing from kTokenKinds");
}

namespace mp = msgpack::type;

constexpr std::int64_t kMaxTokens = kMaxTokensPerCall;

/// Where a field sits in the caller's object ("stream[3].usage.prompt_tokens"). A chain of stack
/// values, rendered only when an error is reported, so the success path never allocates.
/// Keep every Path that has children in a named variable: a child points at its parent.
struct Path {
  const Path* parent = nullptr;
  std::string_view key;  // empty: an array step
  std::uint32_t index = 0;

  [[nodiscard]] Path child(std::string_view k) const { return Path{this, k, 0}; }
  [[nodiscard]] Path item(std::uint32_t i) const { return Path{this, {}, i}; }

  void append_to(std::string& out) const {
    if (parent != nullptr) parent->append_to(out);
    if (key.empty()) {
      out += '[';
      out += std::to_string(index);
      out += ']';
    } else {
      if (!out.empty()) out += '.';
      out += key;
    }
  }
  [[nodiscard]] std::string str() const {
    std::string s;
    append_to(s);
    return s;
  }
};

/// The value stored under `key`, or nullptr when the key is absent. Maps in usage objects have a
/// handful of keys, so a linear scan beats any index.
const msgpack::object* find(const msgpack::object& map, std::string_view key) noexcept {
  if (map.type != mp::MAP) return nullptr;
  const msgpack::object_map& m = map.via.map;
  for (std::uint32_t i = 0; i < m.size; ++i) {
    const msgpack::object& k = m.ptr[i].key;
    if (k.type == mp::STR && std::string_view(k.via.str.ptr, k.via.str.size) == key) return &m.ptr[i].val;
  }
  return nullptr;
}

bool is_nil(const msgpack::object* o) noexcept { return o == nullptr || o->type == mp::NIL; }

/// A map-valued entry that is present and not nil, else nullptr (no type check: callers that need one
/// use Reader::nested).
const msgpack::object* find_map(const msgpack::object& map, std::string_view key) noexcept {
  const msgpack::object* v = find(map, key);
  return v != nullptr && v->type == mp::MAP ? v : nullptr;
}

std::string number_text(double d) {
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d);
  return res.ec == std::errc() ? std::string(buf, res.ptr) : std::string("?");
}

/// What a value is, for "expected X, got Y" messages: the type, and the value when it is short.
std::string describe(const msgpack::object& o) {
  switch (o.type) {
    case mp::NIL: return "nil";
    case mp::BOOLEAN: return o.via.boolean ? "boolean true" : "boolean false";
    case mp::POSITIVE_INTEGER: return std::to_string(o.via.u64);
    case mp::NEGATIVE_INTEGER: return std::to_string(o.via.i64);
    case mp::FLOAT32:
    case mp::FLOAT64:
      if (std::isnan(o.via.f64)) return "NaN";
      return number_text(o.via.f64);
    case mp::STR: {
      constexpr std::uint32_t kShown = 40;
      std::string s = "string \"";
      s.append(o.via.str.ptr, o.via.str.size < kShown ? o.via.str.size : kShown);
      s += o.via.str.size > kShown ? "...\"" : "\"";
      return s;
    }
    case mp::BIN: return "binary";
    case mp::ARRAY: return "array";
    case mp::MAP: return "map";
    case mp::EXT: return "ext";
  }
  return "unknown type";
}

Error invalid(std::string message) { return make_error(ErrorCode::usage_invalid, std::move(message)); }

/// Reads fields and keeps the first error. Readers return 0 / nullptr after an error; callers check
/// failed() before using what they read. Keeps the provider functions free of per-field plumbing.
class Reader {
 public:
  [[nodiscard]] bool failed() const noexcept { return failed_; }
  [[nodiscard]] Error take_error() { return invalid(std::move(message_)); }

  void fail(const Path& at, std::string_view what) {
    if (failed_) return;
    failed_ = true;
    message_ = at.str();
    message_ += ": ";
    message_ += what;
  }
  void fail(std::string message) {
    if (failed_) return;
    failed_ = true;
    message_ = std::move(message);
  }

  /// A token count: a non-negative integer, or a float holding a whole number (some JSON-to-msgpack
  /// converters turn every JSON number into a double), at most kMaxTokens.
  std::int64_t count(const msgpack::object& o, const Path& at) {
    switch (o.type) {
      case mp::POSITIVE_INTEGER:
        if (o.via.u64 <= static_cast<std::uint64_t>(kMaxTokens)) return static_cast<std::int64_t>(o.via.u64);
        too_large(at, std::to_string(o.via.u64));
        return 0;
      case mp::NEGATIVE_INTEGER:
        if (o.via.i64 >= 0 && o.via.i64 <= kMaxTokens) return o.via.i64;  // hand-built objects only
        break;
      case mp::FLOAT32:
      case mp::FLOAT64: {
        const double d = o.via.f64;
        if (std::isfinite(d) && d >= 0.0 && d == std::floor(d)) {
          if (d <= static_cast<double>(kMaxTokens)) return static_cast<std::int64_t>(d);
          too_large(at, number_text(d));
          return 0;
        }
        break;
      }
      default: break;
    }
    fail(at, "expected a non-negative integer, got " + describe(o));
    return 0;
  }

  /// A count the provider always sends: absent is an error, never a silent zero.
  std::int64_t required(const msgpack::object& map, const Path& at, std::string_view key, std::string_view alias = {}) {
    std::string_view found = key;
    const msgpack::object* v = lookup(map, key, alias, found);
    const Path field = at.child(found);
    if (v == nullptr) {
      fail(field, "missing (required)");
      return 0;
    }
    return count(*v, field);
  }

  /// A count the provider omits when it is zero (or sends as null): nullopt when absent or nil.
  std::optional<std::int64_t> optional(const msgpack::object& map, const Path& at, std::string_view key,
                                       std::string_view alias = {}) {
    std::string_view found = key;
    const msgpack::object* v = lookup(map, key, alias, found);
    if (is_nil(v)) return std::nullopt;
    const std::int64_t n = count(*v, at.child(found));
    if (failed_) return std::nullopt;
    return n;
  }

  /// A nested object that may be absent or null (vLLM sends `prompt_tokens_details: null`).
  const msgpack::object* nested(const msgpack::object& map, const Path& at, std::string_view key) {
    const msgpack::object* v = find(map, key);
    if (is_nil(v)) return nullptr;
    if (v->type != mp::MAP) {
      fail(at.child(key), "expected a map or null, got " + describe(*v));
      return nullptr;
    }
    return v;
  }

 private:
  static const msgpack::object* lookup(const msgpack::object& map, std::string_view key, std::string_view alias,
                                       std::string_view& found) noexcept {
    if (const msgpack::object* v = find(map, key)) return v;
    if (alias.empty()) return nullptr;
    found = alias;
    const msgpack::object* v = find(map, alias);
    if (v == nullptr) found = key;
    return v;
  }

  void too_large(const Path& at, const std::string& shown) {
    fail(at, shown + " tokens is beyond any real request (at most " + std::string(kMaxTokensPerCallText) +
                 " tokens of one kind per call)");
  }

  bool failed_ = false;
  std::string message_;
};

/// "a.b (12) exceeds c.d (10)", the wording every consistency error uses.
std::string exceeds(const Path& part, std::int64_t part_value, const Path& whole, std::int64_t whole_value) {
  return part.str() + " (" + std::to_string(part_value) + ") exceeds " + whole.str() + " (" +
         std::to_string(whole_value) + ")";
}

// ---- OpenAI chat / Responses, and everything OpenAI-shaped (OpenRouter, vLLM, SGLang) -------------

struct OpenAiNames {
  std::string_view input, output, input_details, output_details;
};
constexpr OpenAiNames kChatNames{"prompt_tokens", "completion_tokens", "prompt_tokens_details",
                                 "completion_tokens_details"};
constexpr OpenAiNames kResponsesNames{"input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details"};

/// A cost in USD as the provider sent it (a JSON number). Floats go through their shortest round-trip
/// decimal text, so 0.000095 becomes exactly 95,000,000 picodollars; digits below a picodollar (a
/// float that was itself computed) round to the nearest picodollar.
std::optional<Money> read_usd(Reader& r, const msgpack::object& o, const Path& at) {
  switch (o.type) {
    case mp::POSITIVE_INTEGER:
      if (o.via.u64 <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max() / Money::kPerUsd)) {
        return Money::from_picos(static_cast<std::int64_t>(o.via.u64) * Money::kPerUsd);
      }
      break;
    case mp::FLOAT32:
    case mp::FLOAT64: {
      const double d = o.via.f64;
      if (!std::isfinite(d) || d < 0.0) break;
      char buf[64];
      const auto shortest = o.type == mp::FLOAT32 ? std::to_chars(buf, buf + sizeof buf, static_cast<float>(d))
                                                  : std::to_chars(buf, buf + sizeof buf, d);
      if (shortest.ec == std::errc()) {
        if (auto exact = parse_usd(std::string_view(buf, static_cast<std::size_t>(shortest.ptr - buf)))) {
          return *exact;
        }
      }
      const auto rounded = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::fixed, 12);
      if (rounded.ec == std::errc()) {
        if (auto near = parse_usd(std::string_view(buf, static_cast<std::size_t>(rounded.ptr - buf)))) {
          return *near;
        }
      }
      break;
    }
    default: break;
  }
  r.fail(at, "expected a non-negative number of USD (below 9.2 million), got " + describe(o));
  return std::nullopt;
}

Usage openai_usage(Reader& r, const msgpack::object& u, const Path& at, bool read_cost) {
  // The Responses API names its fields differently; a usage object is one shape or the other.
  const bool responses = find(u, kChatNames.input) == nullptr && find(u, kResponsesNames.input) != nullptr;
  const OpenAiNames& names = responses ? kResponsesNames : kChatNames;

  const std::int64_t prompt = r.required(u, at, names.input);
  const std::int64_t completion = r.required(u, at, names.output);
  const Path input_details_at = at.child(names.input_details);
  const Path output_details_at = at.child(names.output_details);
  std::int64_t cached = 0;
  std::int64_t reasoning = 0;
  std::optional<std::int64_t> write_in_details;
  if (const msgpack::object* d = r.nested(u, at, names.input_details)) {
    cached = r.optional(*d, input_details_at, "cached_tokens").value_or(0);
    write_in_details = r.optional(*d, input_details_at, "cache_write_tokens");
  }
  const std::optional<std::int64_t> write_top = r.optional(u, at, "cache_write_tokens");
  if (const msgpack::object* d = r.nested(u, at, names.output_details)) {
    reasoning = r.optional(*d, output_details_at, "reasoning_tokens").value_or(0);
  }
  std::optional<Money> cost;
  const Path cost_at = at.child("cost");
  if (read_cost) {
    if (const msgpack::object* c = find(u, "cost"); !is_nil(c)) cost = read_usd(r, *c, cost_at);
  }
  if (r.failed()) return {};

  const Path prompt_at = at.child(names.input);
  const Path completion_at = at.child(names.output);
  const Path cached_at = input_details_at.child("cached_tokens");
  const Path write_details_at = input_details_at.child("cache_write_tokens");
  const Path write_top_at = at.child("cache_write_tokens");
  const Path reasoning_at = output_details_at.child("reasoning_tokens");

  // Cache writes may be reported in the details or at the top level; both at once must agree.
  const Path* write_at = write_in_details ? &write_details_at : &write_top_at;
  const std::int64_t write = write_in_details.value_or(write_top.value_or(0));
  if (write_in_details && write_top && *write_in_details != *write_top) {
    r.fail(write_top_at.str() + " (" + std::to_string(*write_top) + ") disagrees with " + write_details_at.str() +
           " (" + std::to_string(*write_in_details) + ")");
  } else if (cached > prompt) {
    r.fail(exceeds(cached_at, cached, prompt_at, prompt));
  } else if (write > prompt) {
    r.fail(exceeds(*write_at, write, prompt_at, prompt));
  } else if (cached + write > prompt) {
    r.fail(cached_at.str() + " (" + std::to_string(cached) + ") + " + write_at->str() + " (" + std::to_string(write) +
           ") exceed " + prompt_at.str() + " (" + std::to_string(prompt) + ")");
  } else if (reasoning > completion) {
    r.fail(exceeds(reasoning_at, reasoning, completion_at, completion));
  }
  if (r.failed()) return {};

  Usage out;
  out.uncached_input_tokens = prompt - cached - write;  // both are parts of prompt_tokens
  out.cache_read_tokens = cached;
  out.cache_write_5m_tokens = write;
  out.output_tokens = completion;  // reasoning is already inside completion_tokens
  out.reasoning_tokens = reasoning;
  out.reported_cost = cost;
  return out;
}

// ---- DeepSeek ------------------------------------------------------------------------------------

Usage deepseek_usage(Reader& r, const msgpack::object& u, const Path& at) {
  // DeepSeek also sends prompt_tokens_details.cached_tokens (equal to the hit count): ignored, so the
  // hit tokens are counted once.
  const std::int64_t hit = r.required(u, at, "prompt_cache_hit_tokens");
  const std::int64_t miss = r.required(u, at, "prompt_cache_miss_tokens");
  const std::optional<std::int64_t> prompt = r.optional(u, at, "prompt_tokens");
  const std::int64_t completion = r.required(u, at, "completion_tokens");
  const Path output_details_at = at.child("completion_tokens_details");
  std::int64_t reasoning = 0;
  if (const msgpack::object* d = r.nested(u, at, "completion_tokens_details")) {
    reasoning = r.optional(*d, output_details_at, "reasoning_tokens").value_or(0);
  }
  if (r.failed()) return {};

  if (prompt && hit + miss != *prompt) {
    r.fail(at.child("prompt_cache_hit_tokens").str() + " (" + std::to_string(hit) + ") + " +
           at.child("prompt_cache_miss_tokens").str() + " (" + std::to_string(miss) +
           ") = " + std::to_string(hit + miss) + " does not match " + at.child("prompt_tokens").str() + " (" +
           std::to_string(*prompt) + ")");
  } else if (reasoning > completion) {
    r.fail(exceeds(output_details_at.child("reasoning_tokens"), reasoning, at.child("completion_tokens"), completion));
  }
  if (r.failed()) return {};

  Usage out;
  out.uncached_input_tokens = miss;
  out.cache_read_tokens = hit;
  out.output_tokens = completion;
  out.reasoning_tokens = reasoning;
  return out;
}

// ---- Anthropic -----------------------------------------------------------------------------------

/// Anthropic fields as sent so far. A stream sends them in several events; later values override
/// earlier ones (message_delta counts are cumulative).
struct AnthropicCounts {
  std::optional<std::int64_t> input, output, cache_read, cache_creation, write_5m, write_1h;
  std::uint32_t creation_event = 0;  ///< the event the latest cache_creation_input_tokens came in
  std::uint32_t split_event = 0;     ///< ... and the latest cache_creation split
  bool batch_tier = false;           ///< service_tier: "batch"
};

/// Reads the usage `u` of event `event` (0 for a single usage object) into `c`.
void read_anthropic(Reader& r, const msgpack::object& u, const Path& at, std::uint32_t event, AnthropicCounts& c) {
  auto take = [](std::optional<std::int64_t>& slot, std::optional<std::int64_t> v) {
    if (v) slot = v;
    return v.has_value();
  };
  take(c.input, r.optional(u, at, "input_tokens"));
  take(c.output, r.optional(u, at, "output_tokens"));
  take(c.cache_read, r.optional(u, at, "cache_read_input_tokens"));
  if (take(c.cache_creation, r.optional(u, at, "cache_creation_input_tokens"))) c.creation_event = event;
  const Path split_at = at.child("cache_creation");
  if (const msgpack::object* split = r.nested(u, at, "cache_creation")) {
    take(c.write_5m, r.optional(*split, split_at, "ephemeral_5m_input_tokens"));
    take(c.write_1h, r.optional(*split, split_at, "ephemeral_1h_input_tokens"));
    c.split_event = event;
  }
  // "standard", "priority" or "batch": a batch call is billed at the batch prices.
  if (const msgpack::object* tier = find(u, "service_tier"); !is_nil(tier)) {
    if (tier->type != mp::STR) {
      r.fail(at.child("service_tier"), "expected a string, got " + describe(*tier));
    } else {
      c.batch_tier = std::string_view(tier->via.str.ptr, tier->via.str.size) == "batch";
    }
  }
}

/// `at` names the usage in messages; `stream` says the counts were merged from several events.
Usage finish_anthropic(Reader& r, const AnthropicCounts& c, const Path& at, bool stream) {
  const std::string_view missing =
      stream ? "missing from every event of the stream (message_start.message.usage carries it)" : "missing (required)";
  if (!c.input) r.fail(at.child("input_tokens"), missing);
  if (!c.output) r.fail(at.child("output_tokens"), missing);
  if (r.failed()) return {};

  // cache_read_input_tokens and cache_creation_input_tokens are absent on requests without
  // cache_control from older API versions and some proxies: absent means no cache activity.
  std::int64_t write_5m = 0;
  std::int64_t write_1h = 0;
  if (c.write_5m || c.write_1h) {
    write_5m = c.write_5m.value_or(0);
    write_1h = c.write_1h.value_or(0);
    // A later event's cumulative total wins over an earlier split (message_delta may report more
    // cache writes than message_start did): the tokens the split does not cover were written at the
    // default 5 min TTL. Counts never shrink, and one event's own split must add up.
    if (c.cache_creation && c.creation_event > c.split_event && *c.cache_creation > write_5m + write_1h) {
      write_5m = *c.cache_creation - write_1h;
    }
    if (c.cache_creation && *c.cache_creation != write_5m + write_1h) {
      const Path split_at = at.child("cache_creation");
      r.fail(split_at.child("ephemeral_5m_input_tokens").str() + " (" + std::to_string(write_5m) + ") + " +
             split_at.child("ephemeral_1h_input_tokens").str() + " (" + std::to_string(write_1h) +
             ") = " + std::to_string(write_5m + write_1h) + " does not match " +
             at.child("cache_creation_input_tokens").str() + " (" + std::to_string(*c.cache_creation) + ")");
      return {};
    }
  } else {
    write_5m = c.cache_creation.value_or(0);  // no breakdown: the default (and only, before 1 h) TTL
  }

  Usage out;
  out.uncached_input_tokens = *c.input;  // Anthropic's input_tokens is already the uncached part
  out.cache_read_tokens = c.cache_read.value_or(0);
  out.cache_write_5m_tokens = write_5m;
  out.cache_write_1h_tokens = write_1h;
  out.output_tokens = *c.output;  // extended thinking is billed inside output_tokens
  out.batch_tier = c.batch_tier;
  return out;
}

// ---- Gemini --------------------------------------------------------------------------------------

Usage gemini_usage(Reader& r, const msgpack::object& m, const Path& at) {
  // The API speaks proto3 JSON, which omits zero counts: only promptTokenCount is always there. The
  // snake_case aliases are what the google-genai Python SDK's model_dump() produces.
  const std::int64_t prompt = r.required(m, at, "promptTokenCount", "prompt_token_count");
  const std::int64_t cached = r.optional(m, at, "cachedContentTokenCount", "cached_content_token_count").value_or(0);
  const std::int64_t candidates = r.optional(m, at, "candidatesTokenCount", "candidates_token_count").value_or(0);
  const std::int64_t thoughts = r.optional(m, at, "thoughtsTokenCount", "thoughts_token_count").value_or(0);
  const std::int64_t tool_use = r.optional(m, at, "toolUsePromptTokenCount", "tool_use_prompt_token_count").value_or(0);
  if (r.failed()) return {};
  if (cached > prompt) {
    r.fail(exceeds(at.child("cachedContentTokenCount"), cached, at.child("promptTokenCount"), prompt));
    return {};
  }

  Usage out;
  out.uncached_input_tokens = prompt - cached + tool_use;  // cached is inside promptTokenCount
  out.cache_read_tokens = cached;
  out.output_tokens = candidates + thoughts;  // thoughts are billed as output but not in candidates
  out.reasoning_tokens = thoughts;
  return out;
}

// ---- Locating the usage in what the caller passed ------------------------------------------------

enum class Shape { openai, openrouter, anthropic, gemini, deepseek };

Shape shape_of(Provider provider) noexcept {
  switch (provider) {
    case Provider::anthropic: return Shape::anthropic;
    case Provider::gemini: return Shape::gemini;
    case Provider::deepseek: return Shape::deepseek;
    case Provider::openrouter: return Shape::openrouter;
    case Provider::openai:
    case Provider::vllm:
    case Provider::sglang: return Shape::openai;
  }
  return Shape::openai;
}

/// Parses one usage map of an OpenAI-like or DeepSeek provider.
Usage chat_like_usage(Reader& r, Shape shape, const msgpack::object& u, const Path& at) {
  if (shape == Shape::deepseek) return deepseek_usage(r, u, at);
  return openai_usage(r, u, at, shape == Shape::openrouter);
}

/// The usage map inside a single response or event, or nullptr (then `m` is taken as the bare usage).
/// `key_out`/`outer_out` name where it was found: `outer.key`, or just `key` when outer is empty.
const msgpack::object* embedded_usage(Shape shape, const msgpack::object& m, std::string_view& outer_out,
                                      std::string_view& key_out) noexcept {
  outer_out = {};
  if (shape == Shape::gemini) {
    for (std::string_view key : {std::string_view("usageMetadata"), std::string_view("usage_metadata")}) {
      if (const msgpack::object* v = find(m, key)) {
        key_out = key;
        return v;
      }
    }
    key_out = "usageMetadata";
    return nullptr;
  }
  key_out = "usage";
  if (const msgpack::object* v = find(m, "usage")) return v;
  // Anthropic message_start carries message.usage; OpenAI Responses events carry response.usage.
  const std::string_view outer = shape == Shape::anthropic ? "message" : "response";
  if (const msgpack::object* o = find_map(m, outer)) {
    if (const msgpack::object* v = find(*o, "usage")) {
      outer_out = outer;
      return v;
    }
  }
  return nullptr;
}

Result<Usage> finish(Reader& r, Usage usage) {
  if (r.failed()) return r.take_error();
  return usage;
}

Result<Usage> normalize_single(Shape shape, const msgpack::object& m) {
  Reader r;
  std::string_view outer;
  std::string_view key;
  const msgpack::object* embedded = embedded_usage(shape, m, outer, key);
  const Path outer_at{nullptr, outer, 0};
  const Path at = outer.empty() ? Path{nullptr, key, 0} : outer_at.child(key);
  const msgpack::object* u = embedded != nullptr ? embedded : &m;
  if (u->type != mp::MAP) {
    const std::string_view why =
        u->type == mp::NIL
            ? "is null: a streaming chunk without usage (pass every chunk, with stream_options.include_usage)"
            : "expected a map";
    return invalid(at.str() + ": " + std::string(why) + (u->type == mp::NIL ? std::string() : ", got " + describe(*u)));
  }
  switch (shape) {
    case Shape::anthropic: {
      AnthropicCounts counts;
      read_anthropic(r, *u, at, 0, counts);
      if (r.failed()) return r.take_error();
      return finish(r, finish_anthropic(r, counts, at, false));
    }
    case Shape::gemini: return finish(r, gemini_usage(r, *u, at));
    default: return finish(r, chat_like_usage(r, shape, *u, at));
  }
}

/// An array of streaming events/chunks (the parsed `data:` payloads of the SSE stream).
Result<Usage> normalize_stream(Shape shape, const msgpack::object& events) {
  const Path stream_at{nullptr, "stream", 0};
  const msgpack::object_array& a = events.via.array;
  if (a.size == 0) return invalid("stream: empty (expected the streaming events or chunks)");

  Reader r;
  AnthropicCounts counts;
  bool any_usage = false;
  std::uint32_t last = 0;  // OpenAI-like and Gemini: the last usage wins (it is cumulative)
  const msgpack::object* last_usage = nullptr;
  std::string_view last_outer;
  std::string_view last_key;
  for (std::uint32_t i = 0; i < a.size; ++i) {
    const msgpack::object& e = a.ptr[i];
    const Path event_at = stream_at.item(i);
    if (e.type == mp::NIL || e.type == mp::STR) continue;  // e.g. the "[DONE]" sentinel
    if (e.type != mp::MAP) return invalid(event_at.str() + ": expected a map (one event), got " + describe(e));
    std::string_view outer;
    std::string_view key;
    const msgpack::object* u = embedded_usage(shape, e, outer, key);
    if (u == nullptr || u->type == mp::NIL) continue;  // chunks before the last carry `usage: null`
    const Path outer_at = outer.empty() ? event_at : event_at.child(outer);
    const Path at = outer_at.child(key);
    if (u->type != mp::MAP) return invalid(at.str() + ": expected a map or null, got " + describe(*u));
    any_usage = true;
    if (shape == Shape::anthropic) {
      read_anthropic(r, *u, at, i, counts);
      if (r.failed()) return r.take_error();
    } else {
      last = i;
      last_usage = u;
      last_outer = outer;
      last_key = key;
    }
  }
  if (!any_usage) {
    switch (shape) {
      case Shape::anthropic: return invalid("stream: no event carries usage (expected message_start)");
      case Shape::gemini: return invalid("stream: no chunk carries usageMetadata");
      default:
        return invalid(
            "stream: no chunk carries a usage object (did the request set "
            "stream_options.include_usage?)");
    }
  }
  if (shape == Shape::anthropic) return finish(r, finish_anthropic(r, counts, Path{nullptr, "usage", 0}, true));

  const Path event_at = stream_at.item(last);
  const Path outer_at = last_outer.empty() ? event_at : event_at.child(last_outer);
  const Path at = outer_at.child(last_key);
  if (shape == Shape::gemini) return finish(r, gemini_usage(r, *last_usage, at));
  return finish(r, chat_like_usage(r, shape, *last_usage, at));
}

}  // namespace

Result<Usage> normalize_usage(Provider provider, const msgpack::object& native) {
  try {
    const Shape shape = shape_of(provider);
    if (native.type == mp::MAP) return normalize_single(shape, native);
    if (native.type == mp::ARRAY) return normalize_stream(shape, native);
    return invalid(
        "usage: expected a usage object, a response containing one, or an array of streaming "
        "events, got " +
        describe(native));
  } catch (const std::exception& e) {  // only std::bad_alloc can get here: nothing else throws
    return invalid(std::string("usage: could not be read: ") + e.what());
  }
}

}  // namespace turnout
