#include "turnout/kv_events.hpp"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include <msgpack.hpp>

// What the engines put on the wire (vLLM's and SGLang's msgspec structs: map and array encodings, the
// three block-hash forms, KV cache groups of hybrid models) is described in docs/architecture.md,
// "KV events"; tests/cpp/kv_events_test.cpp holds payloads msgspec produced from the engines' own
// definitions.
//
// Decoding runs in three steps, each bounded: a structural pass over the bytes (no allocation: every
// container's claimed element count must fit in the bytes that remain, so msgpack-c never allocates for
// a billion elements claimed in five bytes), msgpack::unpack with an unpack_limit, then a walk of the
// object tree into plain values. Nothing throws out of decode_kv_events.

namespace turnout {
namespace {

namespace mp = msgpack::type;

/// Deepest nesting the structural pass tracks (KvDecodeLimits::max_depth is capped at this).
constexpr std::size_t kDepthCap = 64;
/// The least msgpack-c's array limit is set to: positional events have about ten elements.
constexpr std::size_t kMinArrayLimit = 256;
/// Most entries in any one map: events have about ten fields.
constexpr std::size_t kMaxMapEntries = 4096;
/// A bin block hash longer than this is not a digest.
constexpr std::uint32_t kMaxBinHashBytes = 64;

Error invalid(const std::string& message) { return make_error(ErrorCode::invalid_argument, "kv events: " + message); }

std::uint64_t read_be(const unsigned char* p, std::size_t n) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v = (v << 8U) | p[i];
  return v;
}

/// The structural pass. Walks the encoding once without allocating and checks that it is one complete
/// msgpack value ending exactly at the end of the payload, that str/bin/ext lengths fit in what remains,
/// that every value still owed by an open container can have at least one byte (so the element counts
/// claimed by all containers together never exceed the payload's size), and that nesting stays within
/// max_depth. Returns an empty string when the bytes are well formed.
std::string check_structure(const unsigned char* data, std::size_t size, std::size_t max_depth) {
  std::array<std::uint64_t, kDepthCap> open{};  // values still owed by each open container
  std::size_t depth = 0;
  std::uint64_t pending = 1;  // values still to read, over all open containers (+1 for the root)
  std::size_t pos = 0;
  auto at = [&](const std::string& what) { return what + " at byte " + std::to_string(pos); };

  while (pending > 0) {
    const std::size_t remaining = size - pos;
    if (pending > remaining) return at("truncated payload: values still owed");
    const unsigned char b = data[pos];
    std::size_t header = 1;      // bytes before the body
    std::uint64_t body = 0;      // str/bin/ext/number bytes after the header
    std::uint64_t children = 0;  // values this container holds (maps: keys and values)
    std::size_t length_bytes = 0;
    bool container = false;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
      // fixint, nil, bool: the byte is the value
    } else if (b <= 0x8f) {
      container = true;
      children = std::uint64_t{2} * (b & 0x0fU);
    } else if (b <= 0x9f) {
      container = true;
      children = b & 0x0fU;
    } else if (b <= 0xbf) {
      body = b & 0x1fU;
    } else {
      switch (b) {
        case 0xc4:
        case 0xd9: length_bytes = 1; break;  // bin8, str8
        case 0xc5:
        case 0xda: length_bytes = 2; break;  // bin16, str16
        case 0xc6:
        case 0xdb: length_bytes = 4; break;  // bin32, str32
        case 0xc7: length_bytes = 1; break;  // ext8 (the type byte follows the length)
        case 0xc8: length_bytes = 2; break;  // ext16
        case 0xc9: length_bytes = 4; break;  // ext32
        case 0xca: body = 4; break;
        case 0xcb: body = 8; break;
        case 0xcc:
        case 0xd0: body = 1; break;
        case 0xcd:
        case 0xd1: body = 2; break;
        case 0xce:
        case 0xd2: body = 4; break;
        case 0xcf:
        case 0xd3: body = 8; break;
        case 0xd4:  // fixext 1, 2, 4, 8, 16: type byte + data
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
          header = 2;
          body = std::uint64_t{1} << (b - 0xd4U);
          break;
        case 0xdc:  // array16, array32, map16, map32
        case 0xdd:
        case 0xde:
        case 0xdf:
          container = true;
          length_bytes = (b & 1U) != 0 ? 4 : 2;
          break;
        default: return at("invalid msgpack type byte 0xc1");
      }
    }
    if (length_bytes > 0) {
      if (remaining < 1 + length_bytes) return at("truncated length");
      const std::uint64_t n = read_be(data + pos + 1, length_bytes);
      header = 1 + length_bytes;
      if (b >= 0xc7 && b <= 0xc9) ++header;  // ext: the type byte follows the length
      if (!container) {
        body = n;
      } else {
        children = (b == 0xde || b == 0xdf) ? 2 * n : n;
      }
    }
    if (header > remaining || body > remaining - header) return at("truncated value");
    pos += header + static_cast<std::size_t>(body);
    --pending;
    if (depth > 0) --open[depth - 1];
    if (children > 0) {
      if (pending + children > size - pos) return at("container claims more elements than bytes remain");
      if (depth >= max_depth) return at("nesting deeper than " + std::to_string(max_depth));
      open[depth++] = children;
      pending += children;
    }
    while (depth > 0 && open[depth - 1] == 0) --depth;
  }
  if (pos != size) return at("trailing bytes after the batch");
  return {};
}

std::string_view str_of(const msgpack::object& o) noexcept { return {o.via.str.ptr, o.via.str.size}; }

/// What a value is, for "expected X, got Y" messages.
std::string describe(const msgpack::object& o) {
  switch (o.type) {
    case mp::NIL: return "nil";
    case mp::BOOLEAN: return o.via.boolean ? "true" : "false";
    case mp::POSITIVE_INTEGER: return std::to_string(o.via.u64);
    case mp::NEGATIVE_INTEGER: return std::to_string(o.via.i64);
    case mp::FLOAT32:
    case mp::FLOAT64: return "a float";
    case mp::STR: {
      const std::string_view s = str_of(o);
      return s.size() <= 32 ? "\"" + std::string(s) + "\"" : "a string";
    }
    case mp::BIN: return "a " + std::to_string(o.via.bin.size) + "-byte bin";
    case mp::ARRAY: return "an array of " + std::to_string(o.via.array.size);
    case mp::MAP: return "a map of " + std::to_string(o.via.map.size);
    case mp::EXT: return "an ext";
  }
  return "an unknown value";
}

enum class EventKind { stored, removed, cleared, unknown };

EventKind kind_of(std::string_view tag) noexcept {
  if (tag == "BlockStored") return EventKind::stored;
  if (tag == "BlockRemoved") return EventKind::removed;
  if (tag == "AllBlocksCleared") return EventKind::cleared;
  return EventKind::unknown;
}

/// The fields of one event, wherever they came from (array position or map key). nullptr = absent.
struct EventFields {
  const msgpack::object* block_hashes = nullptr;
  const msgpack::object* parent_block_hash = nullptr;
  const msgpack::object* token_ids = nullptr;
  const msgpack::object* block_size = nullptr;
  const msgpack::object* medium = nullptr;
  const msgpack::object* lora_name = nullptr;
  const msgpack::object* group_idx = nullptr;
  const msgpack::object* cache_kind = nullptr;  // kv_cache_spec_kind
};

enum class CacheKind { prefix, other, unknown };

/// vLLM's KVCacheSpecKind values: which hold whole prefixes (the kinds Dynamo's router indexes).
CacheKind classify(std::string_view kind) noexcept {
  if (kind == "full_attention" || kind == "mla_attention" || kind == "sink_full_attention") return CacheKind::prefix;
  if (kind == "sliding_window" || kind == "sliding_window_mla" || kind == "mamba" ||
      kind == "chunked_local_attention" || kind == "encoder_only_attention" || kind == "cross_attention") {
    return CacheKind::other;
  }
  return CacheKind::unknown;  // "", "unknown", kinds newer than this decoder
}

/// Walks the unpacked tree. Each read_* returns false after recording what was wrong in error_: for the
/// batch, the payload is rejected; for one event, that event is dropped and counted as unusable.
class BatchReader {
 public:
  explicit BatchReader(const KvDecodeLimits& limits) : limits_(limits) {}

  Result<KvEventBatch> read(const msgpack::object& root) {
    KvEventBatch batch;
    if (!read_batch(root, batch)) return invalid(error_);
    return batch;
  }

 private:
  bool fail(std::string message) {
    error_ = std::move(message);
    return false;
  }
  bool fail_event(std::size_t index, std::string_view what) {
    return fail("events[" + std::to_string(index) + "]: " + std::string(what));
  }
  bool fail_field(std::size_t index, EventKind kind, std::string_view field, const std::string& what) {
    const char* name = kind == EventKind::stored ? "BlockStored" : "BlockRemoved";
    return fail("events[" + std::to_string(index) + "] (" + name + ")." + std::string(field) + ": " + what);
  }

  bool read_batch(const msgpack::object& root, KvEventBatch& batch) {
    const msgpack::object* ts = nullptr;
    const msgpack::object* events = nullptr;
    const msgpack::object* rank = nullptr;
    if (root.type == mp::ARRAY) {  // [ts, events, data_parallel_rank?, ...]
      const msgpack::object_array& a = root.via.array;
      if (a.size < 2) return fail("batch array has " + std::to_string(a.size) + " elements, needs [ts, events]");
      ts = &a.ptr[0];
      events = &a.ptr[1];
      if (a.size > 2) rank = &a.ptr[2];
    } else if (root.type == mp::MAP) {  // {"ts", "events", "data_parallel_rank"}; other keys ignored
      const msgpack::object_map& m = root.via.map;
      for (std::uint32_t i = 0; i < m.size; ++i) {
        const msgpack::object& k = m.ptr[i].key;
        if (k.type != mp::STR) continue;
        const std::string_view key = str_of(k);
        if (key == "ts") {
          ts = &m.ptr[i].val;
        } else if (key == "events") {
          events = &m.ptr[i].val;
        } else if (key == "data_parallel_rank" || key == "attn_dp_rank") {
          rank = &m.ptr[i].val;
        }
      }
      if (ts == nullptr) return fail("batch map has no \"ts\"");
      if (events == nullptr) return fail("batch map has no \"events\"");
    } else {
      return fail("a batch is an array or a map, got " + describe(root));
    }

    if (ts->type == mp::FLOAT64 || ts->type == mp::FLOAT32) {
      batch.ts = ts->via.f64;
    } else if (ts->type == mp::POSITIVE_INTEGER) {
      batch.ts = static_cast<double>(ts->via.u64);
    } else if (ts->type == mp::NEGATIVE_INTEGER) {
      batch.ts = static_cast<double>(ts->via.i64);
    } else {
      return fail("ts: expected a number, got " + describe(*ts));
    }
    if (!std::isfinite(batch.ts)) return fail("ts: not a finite number");

    if (rank != nullptr && rank->type != mp::NIL) {
      if (rank->type != mp::POSITIVE_INTEGER || rank->via.u64 > static_cast<std::uint64_t>(INT64_MAX)) {
        return fail("data_parallel_rank: expected a non-negative integer or nil, got " + describe(*rank));
      }
      batch.data_parallel_rank = static_cast<std::int64_t>(rank->via.u64);
    }

    if (events->type != mp::ARRAY) return fail("events: expected an array, got " + describe(*events));
    const msgpack::object_array& list = events->via.array;
    if (list.size > limits_.max_events) {
      return fail("events: " + std::to_string(list.size) + " events, the limit is " +
                  std::to_string(limits_.max_events));
    }
    batch.events.reserve(list.size);
    for (std::uint32_t i = 0; i < list.size; ++i) {
      if (read_event(list.ptr[i], i, batch)) continue;
      if (batch.unusable++ == 0) batch.unusable_reason = std::move(error_);
    }
    return true;
  }

  bool read_event(const msgpack::object& o, std::size_t index, KvEventBatch& batch) {
    EventFields f;
    EventKind kind = EventKind::unknown;
    if (o.type == mp::ARRAY) {  // ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, ...]
      const msgpack::object_array& a = o.via.array;
      if (a.size == 0) return fail_event(index, "an empty array is not an event");
      if (a.ptr[0].type != mp::STR) return fail_event(index, "the event tag is " + describe(a.ptr[0]));
      kind = kind_of(str_of(a.ptr[0]));
      if (kind == EventKind::stored) {
        // lora_id (5) is not used; lora_id, medium and lora_name are absent in older engines.
        if (a.size < 5) {
          return fail_event(index, "BlockStored has " + std::to_string(a.size - 1) +
                                       " fields, needs block_hashes, parent_block_hash, token_ids, block_size");
        }
        f.block_hashes = &a.ptr[1];
        f.parent_block_hash = &a.ptr[2];
        f.token_ids = &a.ptr[3];
        f.block_size = &a.ptr[4];
        if (a.size > 6) f.medium = &a.ptr[6];
        if (a.size > 7) f.lora_name = &a.ptr[7];
        if (a.size > 9) f.group_idx = &a.ptr[9];  // after extra_keys (8)
        if (a.size > 10) f.cache_kind = &a.ptr[10];
      } else if (kind == EventKind::removed) {
        if (a.size < 2) return fail_event(index, "BlockRemoved has no block_hashes");
        f.block_hashes = &a.ptr[1];
        if (a.size > 2) f.medium = &a.ptr[2];
        if (a.size > 3) f.group_idx = &a.ptr[3];
      }
    } else if (o.type == mp::MAP) {  // {"type": "BlockStored", "block_hashes": ..., ...}
      const msgpack::object_map& m = o.via.map;
      const msgpack::object* tag = nullptr;
      for (std::uint32_t i = 0; i < m.size; ++i) {
        const msgpack::object& k = m.ptr[i].key;
        if (k.type != mp::STR) continue;
        const std::string_view key = str_of(k);
        const msgpack::object* v = &m.ptr[i].val;
        if (key == "type") {
          tag = v;
        } else if (key == "block_hashes") {
          f.block_hashes = v;
        } else if (key == "parent_block_hash") {
          f.parent_block_hash = v;
        } else if (key == "token_ids") {
          f.token_ids = v;
        } else if (key == "block_size") {
          f.block_size = v;
        } else if (key == "medium") {
          f.medium = v;
        } else if (key == "lora_name") {
          f.lora_name = v;
        } else if (key == "group_idx") {
          f.group_idx = v;
        } else if (key == "kv_cache_spec_kind") {
          f.cache_kind = v;
        }
      }
      if (tag == nullptr) return fail_event(index, "an event map has no \"type\"");
      if (tag->type != mp::STR) return fail_event(index, "the event type is " + describe(*tag));
      kind = kind_of(str_of(*tag));
      if (kind == EventKind::stored) {
        if (f.block_hashes == nullptr) return fail_event(index, "BlockStored has no block_hashes");
        if (f.parent_block_hash == nullptr) return fail_event(index, "BlockStored has no parent_block_hash");
        if (f.token_ids == nullptr) return fail_event(index, "BlockStored has no token_ids");
        if (f.block_size == nullptr) return fail_event(index, "BlockStored has no block_size");
      } else if (kind == EventKind::removed) {
        if (f.block_hashes == nullptr) return fail_event(index, "BlockRemoved has no block_hashes");
      }
    } else {
      return fail_event(index, "an event is an array or a map, got " + describe(o));
    }

    switch (kind) {
      case EventKind::stored: return read_stored(f, index, batch);
      case EventKind::removed: return read_removed(f, index, batch);
      case EventKind::cleared: batch.events.emplace_back(AllBlocksCleared{}); return true;
      case EventKind::unknown: ++batch.skipped_unknown; return true;
    }
    return true;
  }

  static bool read_hash(const msgpack::object& o, EngineHash& out) noexcept {
    switch (o.type) {
      case mp::POSITIVE_INTEGER: out = o.via.u64; return true;
      case mp::NEGATIVE_INTEGER: out = static_cast<std::uint64_t>(o.via.i64); return true;  // keeps the bits
      case mp::BIN:
        if (o.via.bin.size == 0 || o.via.bin.size > kMaxBinHashBytes) return false;
        out = XXH3_64bits(o.via.bin.ptr, o.via.bin.size);
        return true;
      default: return false;
    }
  }

  bool read_hashes(const msgpack::object& o, std::size_t index, EventKind kind, std::vector<EngineHash>& out) {
    if (o.type != mp::ARRAY) return fail_field(index, kind, "block_hashes", "expected an array, got " + describe(o));
    const msgpack::object_array& a = o.via.array;
    if (a.size > limits_.max_blocks_per_event) {
      return fail_field(
          index, kind, "block_hashes",
          std::to_string(a.size) + " hashes, the limit is " + std::to_string(limits_.max_blocks_per_event));
    }
    out.resize(a.size);
    for (std::uint32_t i = 0; i < a.size; ++i) {
      if (!read_hash(a.ptr[i], out[i])) {
        return fail_field(index, kind, "block_hashes[" + std::to_string(i) + "]",
                          "expected an integer or a 1-64 byte bin, got " + describe(a.ptr[i]));
      }
    }
    return true;
  }

  bool read_text(const msgpack::object* o, std::size_t index, EventKind kind, std::string_view field,
                 std::string& out) {
    if (o == nullptr || o->type == mp::NIL) return true;
    if (o->type != mp::STR) return fail_field(index, kind, field, "expected a string or nil, got " + describe(*o));
    out.assign(o->via.str.ptr, o->via.str.size);
    return true;
  }

  /// Reads group_idx and kv_cache_spec_kind (the Router decides with them whether the event is its own).
  bool read_group(const EventFields& f, std::size_t index, EventKind kind, std::optional<std::uint32_t>& group,
                  std::string* cache_kind) {
    if (f.group_idx != nullptr && f.group_idx->type != mp::NIL) {
      if (f.group_idx->type != mp::POSITIVE_INTEGER ||
          f.group_idx->via.u64 > std::numeric_limits<std::uint32_t>::max()) {
        return fail_field(index, kind, "group_idx",
                          "expected an unsigned 32-bit integer or nil, got " + describe(*f.group_idx));
      }
      group = static_cast<std::uint32_t>(f.group_idx->via.u64);
    }
    if (f.cache_kind != nullptr && f.cache_kind->type != mp::NIL) {
      if (f.cache_kind->type != mp::STR) {
        return fail_field(index, kind, "kv_cache_spec_kind",
                          "expected a string or nil, got " + describe(*f.cache_kind));
      }
      if (cache_kind != nullptr) cache_kind->assign(str_of(*f.cache_kind));
    }
    return true;
  }

  bool read_stored(const EventFields& f, std::size_t index, KvEventBatch& batch) {
    constexpr EventKind kind = EventKind::stored;
    BlockStored e;
    if (!read_hashes(*f.block_hashes, index, kind, e.block_hashes)) return false;

    if (f.parent_block_hash->type != mp::NIL) {
      EngineHash parent = 0;
      if (!read_hash(*f.parent_block_hash, parent)) {
        return fail_field(index, kind, "parent_block_hash",
                          "expected an integer, a 1-64 byte bin or nil, got " + describe(*f.parent_block_hash));
      }
      e.parent_block_hash = parent;
    }

    const msgpack::object& size = *f.block_size;
    if (size.type != mp::POSITIVE_INTEGER || size.via.u64 == 0 ||
        size.via.u64 > static_cast<std::uint64_t>(limits_.max_block_size)) {
      return fail_field(
          index, kind, "block_size",
          "expected an integer in [1, " + std::to_string(limits_.max_block_size) + "], got " + describe(size));
    }
    e.block_size = static_cast<std::int64_t>(size.via.u64);

    const msgpack::object& tokens = *f.token_ids;
    if (tokens.type != mp::ARRAY)
      return fail_field(index, kind, "token_ids", "expected an array, got " + describe(tokens));
    const msgpack::object_array& t = tokens.via.array;
    if (t.size > limits_.max_tokens_per_event) {
      return fail_field(index, kind, "token_ids",
                        std::to_string(t.size) + " ids, the limit is " + std::to_string(limits_.max_tokens_per_event));
    }
    // Both factors are bounded (block_size by max_block_size, hashes by the array limit): no overflow.
    const std::uint64_t expected = size.via.u64 * static_cast<std::uint64_t>(e.block_hashes.size());
    if (t.size != expected) {
      return fail_field(index, kind, "token_ids",
                        std::to_string(t.size) + " ids, but block_size " + std::to_string(size.via.u64) + " x " +
                            std::to_string(e.block_hashes.size()) + " block_hashes needs " + std::to_string(expected));
    }
    e.token_ids.resize(t.size);
    for (std::uint32_t i = 0; i < t.size; ++i) {
      const msgpack::object& id = t.ptr[i];
      if (id.type != mp::POSITIVE_INTEGER || id.via.u64 > std::numeric_limits<std::uint32_t>::max()) {
        return fail_field(index, kind, "token_ids[" + std::to_string(i) + "]",
                          "expected an unsigned 32-bit token id, got " + describe(id));
      }
      e.token_ids[i] = static_cast<std::uint32_t>(id.via.u64);
    }

    if (!read_text(f.medium, index, kind, "medium", e.medium)) return false;
    if (!read_text(f.lora_name, index, kind, "lora_name", e.lora_name)) return false;
    if (!read_group(f, index, kind, e.group_idx, &e.cache_kind)) return false;
    batch.events.emplace_back(std::move(e));
    return true;
  }

  bool read_removed(const EventFields& f, std::size_t index, KvEventBatch& batch) {
    constexpr EventKind kind = EventKind::removed;
    BlockRemoved e;
    if (!read_hashes(*f.block_hashes, index, kind, e.block_hashes)) return false;
    if (!read_text(f.medium, index, kind, "medium", e.medium)) return false;
    if (!read_group(f, index, kind, e.group_idx, nullptr)) return false;
    batch.events.emplace_back(std::move(e));
    return true;
  }

  const KvDecodeLimits& limits_;
  std::string error_;
};

/// msgpack-c may point str/bin/ext values into the payload instead of copying them: the payload outlives
/// the object tree (both live only inside decode_kv_events).
bool reference_payload(mp::object_type /*type*/, std::size_t /*length*/, void* /*user_data*/) { return true; }

}  // namespace

CacheTier medium_tier(std::string_view medium) noexcept {
  if (medium.empty() || medium == "GPU") return CacheTier::gpu;
  if (medium == "CPU" || medium == "CPU_TIER1") return CacheTier::host;
  return CacheTier::other;
}

bool KvCacheGroups::admit(const KvEvent& event) noexcept {
  if (const auto* stored = std::get_if<BlockStored>(&event)) return admit(stored->group_idx, stored->cache_kind);
  if (const auto* removed = std::get_if<BlockRemoved>(&event)) return admit(removed->group_idx, {});
  return true;
}

bool KvCacheGroups::admit(std::optional<std::uint32_t> group, std::string_view kind) noexcept {
  const std::uint64_t bit = group && *group < 64 ? std::uint64_t{1} << *group : 0;
  switch (classify(kind)) {
    case CacheKind::prefix:
      known_ |= bit;
      prefix_ |= bit;
      return true;
    case CacheKind::other:
      known_ |= bit;
      prefix_ &= ~bit;
      return false;
    case CacheKind::unknown: break;
  }
  if (!group) return true;
  if ((known_ & bit) != 0) return (prefix_ & bit) != 0;
  return *group == 0;
}

Result<KvEventBatch> decode_kv_events(std::span<const std::byte> payload, const KvDecodeLimits& limits) {
  if (payload.empty()) return invalid("empty payload");
  if (payload.size() > limits.max_payload_bytes) {
    return invalid("payload of " + std::to_string(payload.size()) + " bytes, the limit is " +
                   std::to_string(limits.max_payload_bytes));
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(payload.data());
  const std::size_t max_depth = std::clamp<std::size_t>(limits.max_depth, 1, kDepthCap);
  try {
    if (std::string why = check_structure(bytes, payload.size(), max_depth); !why.empty()) {
      return invalid("malformed msgpack: " + why);
    }
    // msgpack-c has one limit for every array; events and their fields are arrays too (kMinArrayLimit),
    // and BatchReader checks each count limit on its own.
    const std::size_t max_array =
        std::max({limits.max_events, limits.max_blocks_per_event, limits.max_tokens_per_event, kMinArrayLimit});
    const msgpack::unpack_limit unpack_limit(max_array, kMaxMapEntries, limits.max_string_bytes,
                                             limits.max_string_bytes, limits.max_string_bytes, max_depth + 1);
    std::size_t offset = 0;
    const msgpack::object_handle handle = msgpack::unpack(reinterpret_cast<const char*>(bytes), payload.size(), offset,
                                                          reference_payload, nullptr, unpack_limit);
    if (offset != payload.size()) return invalid("malformed msgpack: not one complete value");
    return BatchReader(limits).read(handle.get());
  } catch (const std::exception& e) {  // msgpack::unpack_error and its kin, std::bad_alloc
    return invalid(std::string("malformed msgpack: ") + e.what());
  }
}

}  // namespace turnout
