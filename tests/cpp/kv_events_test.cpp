// decode_kv_events: the engines' payloads byte for byte (kv_event_payloads.hpp), then every way a payload
// can be wrong. Each bad input must give an error value, never a crash or an exception.

#include "turnout/kv_events.hpp"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <variant>

#include "kv_event_payloads.hpp"

namespace turnout {
namespace {

using test::as_payload;
using test::json_bytes;
using test::kH1;
using test::kH2;
using test::pack_text;
using test::packed;
using test::Packer;
using namespace std::string_view_literals;

Result<KvEventBatch> decode(std::string_view bytes, const KvDecodeLimits& limits = {}) {
  return decode_kv_events(as_payload(bytes), limits);
}

/// The error message, or a failure when the input decoded.
std::string error_of(std::string_view bytes, const KvDecodeLimits& limits = {}) {
  Result<KvEventBatch> r = decode(bytes, limits);
  if (r) {
    ADD_FAILURE() << "decoded, expected an error";
    return {};
  }
  EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
  return r.error().message;
}

#define EXPECT_DECODE_ERROR(bytes, fragment) \
  EXPECT_NE(error_of(bytes).find(fragment), std::string::npos) << error_of(bytes)

/// Why the one event of `bytes` the decoder could not use was dropped (the batch itself decodes).
std::string unusable_of(std::string_view bytes, const KvDecodeLimits& limits = {}) {
  Result<KvEventBatch> r = decode(bytes, limits);
  if (!r) {
    ADD_FAILURE() << "the batch was rejected: " << r.error().message;
    return {};
  }
  EXPECT_EQ(r->unusable, 1U);
  return r->unusable_reason;
}

#define EXPECT_UNUSABLE(bytes, fragment) \
  EXPECT_NE(unusable_of(bytes).find(fragment), std::string::npos) << unusable_of(bytes)

const BlockStored& stored(const KvEventBatch& b, std::size_t i) { return std::get<BlockStored>(b.events.at(i)); }
const BlockRemoved& removed(const KvEventBatch& b, std::size_t i) { return std::get<BlockRemoved>(b.events.at(i)); }

/// What a Router applies of a decoded batch: the events `groups` admits, learning kinds in order as
/// Router::apply_kv_events does with the replica's KvCacheGroups. `skipped` counts the others.
KvEventBatch admitted(KvEventBatch b, KvCacheGroups& groups, std::uint32_t& skipped) {
  skipped = 0;
  std::erase_if(b.events, [&](const KvEvent& e) {
    const bool keep = groups.admit(e);
    skipped += keep ? 0 : 1;
    return !keep;
  });
  return b;
}

std::uint64_t bits(std::int64_t v) { return static_cast<std::uint64_t>(v); }

std::string range_bytes(int from, int to) {
  std::string s;
  for (int i = from; i < to; ++i) s.push_back(static_cast<char>(i));
  return s;
}

// ---- what the engines send --------------------------------------------------------------------------

TEST(KvEventsEngines, VllmTaggedMapsWithUint64HashesAboveTwoTo63) {
  Result<KvEventBatch> r = decode(test::kVllmMapBatch);
  ASSERT_TRUE(r) << r.error().message;
  const KvEventBatch& b = *r;
  EXPECT_DOUBLE_EQ(b.ts, 1718000000.25);
  EXPECT_EQ(b.data_parallel_rank, 1);
  EXPECT_EQ(b.skipped_unknown, 0U);
  ASSERT_EQ(b.events.size(), 4U);

  const BlockStored& root = stored(b, 0);
  EXPECT_EQ(root.block_hashes, (std::vector<EngineHash>{kH1, kH2}));
  EXPECT_GE(root.block_hashes[0], std::uint64_t{1} << 63U);
  EXPECT_FALSE(root.parent_block_hash.has_value());
  EXPECT_EQ(root.token_ids, (std::vector<std::uint32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(root.block_size, 4);
  EXPECT_EQ(root.medium, "GPU");
  EXPECT_EQ(root.lora_name, "");
  EXPECT_FALSE(root.group_idx.has_value());

  // extra_keys and lora_id are not ours: ignored. Group 0, full attention: feeds the directory.
  const BlockStored& child = stored(b, 1);
  EXPECT_EQ(child.block_hashes, (std::vector<EngineHash>{7}));
  EXPECT_EQ(child.parent_block_hash, kH2);
  EXPECT_EQ(child.token_ids, (std::vector<std::uint32_t>{9, 10, 11, 12}));
  EXPECT_EQ(child.lora_name, "adapter-a");
  EXPECT_EQ(child.group_idx, 0U);
  EXPECT_EQ(child.cache_kind, "full_attention");

  EXPECT_EQ(removed(b, 2).block_hashes, (std::vector<EngineHash>{kH1}));
  EXPECT_EQ(removed(b, 2).medium, "GPU");
  EXPECT_TRUE(std::holds_alternative<AllBlocksCleared>(b.events[3]));
}

TEST(KvEventsEngines, VllmBinHashesAreFoldedWithXxh3) {
  Result<KvEventBatch> r = decode(test::kVllmBinHashes);
  ASSERT_TRUE(r) << r.error().message;
  const std::string d32 = range_bytes(0, 32);     // sha256-sized digest
  const std::string d16 = range_bytes(100, 116);  // xxh3_128-sized digest
  const EngineHash h32 = XXH3_64bits(d32.data(), d32.size());
  const EngineHash h16 = XXH3_64bits(d16.data(), d16.size());
  EXPECT_EQ(h32, 0x3523581fe96e4c05ULL);  // python-xxhash: xxh3_64_intdigest(bytes(range(32)))
  EXPECT_EQ(h16, 0x4e9908e11d3f623fULL);
  EXPECT_FALSE(r->data_parallel_rank.has_value());
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{h32}));
  EXPECT_EQ(stored(*r, 0).parent_block_hash, h16);
  EXPECT_EQ(stored(*r, 0).medium, "");  // nil
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{h32, h16}));
  EXPECT_EQ(removed(*r, 1).medium, "CPU");
}

TEST(KvEventsEngines, VllmPositionalArrays) {
  Result<KvEventBatch> r = decode(test::kVllmArrayBatch);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_DOUBLE_EQ(r->ts, 3.0);
  EXPECT_EQ(r->data_parallel_rank, 0);
  ASSERT_EQ(r->events.size(), 3U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{kH1}));
  EXPECT_EQ(stored(*r, 0).token_ids, (std::vector<std::uint32_t>{5, 6}));
  EXPECT_EQ(stored(*r, 0).block_size, 2);
  EXPECT_EQ(stored(*r, 0).medium, "GPU");
  EXPECT_EQ(removed(*r, 1).medium, "GPU");
  EXPECT_TRUE(std::holds_alternative<AllBlocksCleared>(r->events[2]));
}

TEST(KvEventsEngines, VllmArrayBatchOfTaggedMapEvents) {
  // Its one event is of group 1 and names no kind: not group 0, so not ours until group 1 is known to
  // be full attention.
  Result<KvEventBatch> r = decode(test::kVllmMixedBatch);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->data_parallel_rank, 2);
  std::uint32_t skipped = 0;
  KvCacheGroups fresh;
  EXPECT_TRUE(admitted(*r, fresh, skipped).events.empty());
  EXPECT_EQ(skipped, 1U);

  KvCacheGroups groups;
  EXPECT_TRUE(groups.admit(1, "full_attention"));
  r = admitted(*r, groups, skipped);
  EXPECT_EQ(skipped, 0U);
  ASSERT_EQ(r->events.size(), 1U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{kH2}));
  EXPECT_EQ(stored(*r, 0).parent_block_hash, kH1);
  EXPECT_EQ(stored(*r, 0).block_size, 3);
  EXPECT_EQ(stored(*r, 0).group_idx, 1U);
}

TEST(KvEventsEngines, SglangSignedHashesKeepTheirBits) {
  Result<KvEventBatch> r = decode(test::kSglangBatch);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->data_parallel_rank.has_value());  // attn_dp_rank written as nil
  ASSERT_EQ(r->events.size(), 2U);
  const BlockStored& e = stored(*r, 0);
  EXPECT_EQ(e.block_hashes, (std::vector<EngineHash>{bits(-5), bits(std::numeric_limits<std::int64_t>::min())}));
  EXPECT_EQ(e.block_hashes[0], 0xFFFFFFFFFFFFFFFBULL);
  EXPECT_EQ(e.parent_block_hash, bits(-77));
  EXPECT_EQ(e.medium, "");  // SGLang's BlockStored has no medium / lora_name: trailing fields absent
  EXPECT_EQ(e.lora_name, "");
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{bits(-5)}));
  EXPECT_EQ(removed(*r, 1).medium, "");  // BlockRemoved without medium
}

TEST(KvEventsEngines, SglangOneTokenPage) {
  Result<KvEventBatch> r = decode(test::kSglangNoRank);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_DOUBLE_EQ(r->ts, 5.5);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{42}));
  EXPECT_EQ(stored(*r, 0).token_ids, (std::vector<std::uint32_t>{8}));
}

TEST(KvEventsEngines, DepthOfTheDeepestVllmPayloadIsFive) {
  // batch map / events / event map / extra_keys / one key tuple: five levels.
  KvDecodeLimits limits;
  limits.max_depth = 5;
  EXPECT_TRUE(decode(test::kVllmMapBatch, limits));
  limits.max_depth = 4;
  EXPECT_NE(error_of(test::kVllmMapBatch, limits).find("nesting deeper than 4"), std::string::npos);
}

// ---- tolerated variations ---------------------------------------------------------------------------

TEST(KvEventsTolerance, OldestPositionalShapeWithoutTrailingFields) {
  // Batch without the rank, BlockStored without lora_id/medium/lora_name, BlockRemoved without medium.
  Result<KvEventBatch> r = decode(json_bytes(
      R"([12.5, [["BlockStored", [1, 2], 99, [1, 2, 3, 4], 2], ["BlockRemoved", [1]], ["AllBlocksCleared"]]])"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->data_parallel_rank.has_value());
  ASSERT_EQ(r->events.size(), 3U);
  EXPECT_EQ(stored(*r, 0).parent_block_hash, 99U);
  EXPECT_EQ(stored(*r, 0).medium, "");
  EXPECT_EQ(removed(*r, 1).medium, "");
}

TEST(KvEventsTolerance, UnknownFieldsAreIgnored) {
  const std::string bytes = packed([](Packer& p) {
    p.pack_map(4);
    pack_text(p, "producer");  // unknown batch key
    pack_text(p, "vllm-9");
    pack_text(p, "events");
    p.pack_array(2);
    // Positional with extra trailing elements (extra_keys, sliding window, future fields).
    p.pack_array(13);
    pack_text(p, "BlockStored");
    p.pack_array(1).pack_uint64(5);
    p.pack_nil();
    p.pack_array(2).pack_uint32(1).pack_uint32(2);
    p.pack_uint32(2);
    p.pack_nil();
    pack_text(p, "GPU");
    pack_text(p, "lora-x");
    p.pack_array(1).pack_nil();  // extra_keys
    p.pack_uint32(0);            // group_idx
    pack_text(p, "full_attention");
    p.pack_nil();                                   // kv_cache_spec_sliding_window
    p.pack_map(1).pack_uint32(1).pack_double(2.0);  // anything
    // Map with unknown keys, a non-string key, and "type" last.
    p.pack_map(5);
    pack_text(p, "block_hashes");
    p.pack_array(1).pack_uint64(5);
    pack_text(p, "locality");
    pack_text(p, "REMOTE");
    p.pack_uint32(7);  // a non-string key
    p.pack_true();
    pack_text(p, "estimated_bandwidth_bps");
    p.pack_double(1e9);
    pack_text(p, "type");
    pack_text(p, "BlockRemoved");
    pack_text(p, "ts");
    p.pack_double(1.0);
    pack_text(p, "data_parallel_rank");
    p.pack_nil();
  });
  Result<KvEventBatch> r = decode(bytes);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).lora_name, "lora-x");
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{5}));
  EXPECT_EQ(removed(*r, 1).medium, "");
}

TEST(KvEventsTolerance, UnknownEventTypesAreSkippedAndCounted) {
  Result<KvEventBatch> r = decode(json_bytes(R"([1.0, [
      ["BlockPinned", [1], {"anything": [1, 2, 3]}],
      ["BlockStored", [1], null, [7], 1],
      {"type": "KVCacheMoved", "from": "GPU", "to": "CPU"},
      ["AllBlocksCleared"]]])"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->skipped_unknown, 2U);
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_TRUE(std::holds_alternative<BlockStored>(r->events[0]));
  EXPECT_TRUE(std::holds_alternative<AllBlocksCleared>(r->events[1]));
}

TEST(KvEventsTolerance, NumbersAtTheirLimits) {
  const std::string bytes = packed([](Packer& p) {
    p.pack_array(2);
    p.pack_float(2.5F);  // float32 ts
    p.pack_array(1);
    p.pack_array(5);
    pack_text(p, "BlockStored");
    p.pack_array(3).pack_uint64(std::numeric_limits<std::uint64_t>::max()).pack_uint64(0).pack_bin(1);
    p.pack_bin_body("\x01", 1);
    p.pack_int64(std::numeric_limits<std::int64_t>::min());
    p.pack_array(3).pack_uint32(0).pack_uint32(std::numeric_limits<std::uint32_t>::max()).pack_uint32(5);
    p.pack_uint32(1);
  });
  Result<KvEventBatch> r = decode(bytes);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_DOUBLE_EQ(r->ts, 2.5);
  const BlockStored& e = stored(*r, 0);
  EXPECT_EQ(e.block_hashes[0], std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(e.block_hashes[1], 0U);
  EXPECT_EQ(e.block_hashes[2], XXH3_64bits("\x01", 1));
  EXPECT_EQ(e.parent_block_hash, std::uint64_t{1} << 63U);
  EXPECT_EQ(e.token_ids[1], std::numeric_limits<std::uint32_t>::max());

  Result<KvEventBatch> integer_ts = decode(json_bytes(R"([1718000000, []])"));
  ASSERT_TRUE(integer_ts);
  EXPECT_DOUBLE_EQ(integer_ts->ts, 1718000000.0);
  EXPECT_TRUE(decode(json_bytes(R"({"ts": 1.0, "events": []})")));
  EXPECT_TRUE(decode(json_bytes(R"([1.0, [["BlockStored", [], null, [], 16]]])")));  // no blocks, no tokens
}

// ---- KV cache groups (hybrid models) ----------------------------------------------------------------

// msgspec 0.22.0 over vLLM's declarations (vllm/distributed/kv_events.py, vllm-project/vllm @ 0181ea3173e5);
// H1 and H2 as in kv_event_payloads.hpp.
// EventBatch(ts=7.0, data_parallel_rank=0, events=[
//   BlockStored(block_hashes=[H1], parent_block_hash=None, token_ids=[1, 2], block_size=2, lora_id=None,
//               medium="GPU", lora_name=None, group_idx=0, kv_cache_spec_kind="sliding_window",
//               kv_cache_spec_sliding_window=128),
//   BlockStored(<the same block>, group_idx=1, kv_cache_spec_kind="full_attention"),
//   BlockRemoved(block_hashes=[H1], medium="GPU", group_idx=0),
//   BlockRemoved(block_hashes=[H2], medium="GPU", group_idx=1)])
constexpr std::string_view kHybridMapBatch =
    "\x83\xa2\x74\x73\xcb\x40\x1c\x00\x00\x00\x00\x00\x00\xa6\x65\x76\x65\x6e\x74\x73\x94\x8b\xa4\x74"
    "\x79\x70\x65\xab\x42\x6c\x6f\x63\x6b\x53\x74\x6f\x72\x65\x64\xac\x62\x6c\x6f\x63\x6b\x5f\x68\x61"
    "\x73\x68\x65\x73\x91\xcf\x80\x00\x00\x00\x00\x00\x30\x39\xb1\x70\x61\x72\x65\x6e\x74\x5f\x62\x6c"
    "\x6f\x63\x6b\x5f\x68\x61\x73\x68\xc0\xa9\x74\x6f\x6b\x65\x6e\x5f\x69\x64\x73\x92\x01\x02\xaa\x62"
    "\x6c\x6f\x63\x6b\x5f\x73\x69\x7a\x65\x02\xa7\x6c\x6f\x72\x61\x5f\x69\x64\xc0\xa6\x6d\x65\x64\x69"
    "\x75\x6d\xa3\x47\x50\x55\xa9\x6c\x6f\x72\x61\x5f\x6e\x61\x6d\x65\xc0\xa9\x67\x72\x6f\x75\x70\x5f"
    "\x69\x64\x78\x00\xb2\x6b\x76\x5f\x63\x61\x63\x68\x65\x5f\x73\x70\x65\x63\x5f\x6b\x69\x6e\x64\xae"
    "\x73\x6c\x69\x64\x69\x6e\x67\x5f\x77\x69\x6e\x64\x6f\x77\xbc\x6b\x76\x5f\x63\x61\x63\x68\x65\x5f"
    "\x73\x70\x65\x63\x5f\x73\x6c\x69\x64\x69\x6e\x67\x5f\x77\x69\x6e\x64\x6f\x77\xcc\x80\x8a\xa4\x74"
    "\x79\x70\x65\xab\x42\x6c\x6f\x63\x6b\x53\x74\x6f\x72\x65\x64\xac\x62\x6c\x6f\x63\x6b\x5f\x68\x61"
    "\x73\x68\x65\x73\x91\xcf\x80\x00\x00\x00\x00\x00\x30\x39\xb1\x70\x61\x72\x65\x6e\x74\x5f\x62\x6c"
    "\x6f\x63\x6b\x5f\x68\x61\x73\x68\xc0\xa9\x74\x6f\x6b\x65\x6e\x5f\x69\x64\x73\x92\x01\x02\xaa\x62"
    "\x6c\x6f\x63\x6b\x5f\x73\x69\x7a\x65\x02\xa7\x6c\x6f\x72\x61\x5f\x69\x64\xc0\xa6\x6d\x65\x64\x69"
    "\x75\x6d\xa3\x47\x50\x55\xa9\x6c\x6f\x72\x61\x5f\x6e\x61\x6d\x65\xc0\xa9\x67\x72\x6f\x75\x70\x5f"
    "\x69\x64\x78\x01\xb2\x6b\x76\x5f\x63\x61\x63\x68\x65\x5f\x73\x70\x65\x63\x5f\x6b\x69\x6e\x64\xae"
    "\x66\x75\x6c\x6c\x5f\x61\x74\x74\x65\x6e\x74\x69\x6f\x6e\x84\xa4\x74\x79\x70\x65\xac\x42\x6c\x6f"
    "\x63\x6b\x52\x65\x6d\x6f\x76\x65\x64\xac\x62\x6c\x6f\x63\x6b\x5f\x68\x61\x73\x68\x65\x73\x91\xcf"
    "\x80\x00\x00\x00\x00\x00\x30\x39\xa6\x6d\x65\x64\x69\x75\x6d\xa3\x47\x50\x55\xa9\x67\x72\x6f\x75"
    "\x70\x5f\x69\x64\x78\x00\x84\xa4\x74\x79\x70\x65\xac\x42\x6c\x6f\x63\x6b\x52\x65\x6d\x6f\x76\x65"
    "\x64\xac\x62\x6c\x6f\x63\x6b\x5f\x68\x61\x73\x68\x65\x73\x91\xcf\xfe\xdc\xba\x98\x76\x54\x32\x10"
    "\xa6\x6d\x65\x64\x69\x75\x6d\xa3\x47\x50\x55\xa9\x67\x72\x6f\x75\x70\x5f\x69\x64\x78\x01\xb2\x64"
    "\x61\x74\x61\x5f\x70\x61\x72\x61\x6c\x6c\x65\x6c\x5f\x72\x61\x6e\x6b\x00"sv;
// The same declarations with array_like=True (every field written):
// EventBatch(ts=8.0, data_parallel_rank=1, events=[
//   BlockStored(block_hashes=[H2], parent_block_hash=None, token_ids=[3], block_size=1, lora_id=None,
//               medium="GPU", lora_name=None, extra_keys=[None], group_idx=0),
//   BlockStored(block_hashes=[H1], parent_block_hash=H2, token_ids=[4], block_size=1, lora_id=None,
//               medium="GPU", lora_name=None, group_idx=1),
//   BlockRemoved(block_hashes=[H1], medium="GPU", group_idx=1),
//   BlockRemoved(block_hashes=[H2], medium="GPU", group_idx=0)])
constexpr std::string_view kGroupArrayBatch =
    "\x93\xcb\x40\x20\x00\x00\x00\x00\x00\x00\x94\x9c\xab\x42\x6c\x6f\x63\x6b\x53\x74\x6f\x72\x65\x64"
    "\x91\xcf\xfe\xdc\xba\x98\x76\x54\x32\x10\xc0\x91\x03\x01\xc0\xa3\x47\x50\x55\xc0\x91\xc0\x00\xc0"
    "\xc0\x9c\xab\x42\x6c\x6f\x63\x6b\x53\x74\x6f\x72\x65\x64\x91\xcf\x80\x00\x00\x00\x00\x00\x30\x39"
    "\xcf\xfe\xdc\xba\x98\x76\x54\x32\x10\x91\x04\x01\xc0\xa3\x47\x50\x55\xc0\xc0\x01\xc0\xc0\x94\xac"
    "\x42\x6c\x6f\x63\x6b\x52\x65\x6d\x6f\x76\x65\x64\x91\xcf\x80\x00\x00\x00\x00\x00\x30\x39\xa3\x47"
    "\x50\x55\x01\x94\xac\x42\x6c\x6f\x63\x6b\x52\x65\x6d\x6f\x76\x65\x64\x91\xcf\xfe\xdc\xba\x98\x76"
    "\x54\x32\x10\xa3\x47\x50\x55\x00\x01"sv;

TEST(KvEventsGroups, HybridModelFeedsOnlyTheFullAttentionGroup) {
  // Group 0 is the sliding window here: its store is dropped, and so is its removal of the same block
  // (which the full-attention group still holds). Group 1 was learned to be full attention from its
  // store, so its removal, which names no kind, is kept.
  Result<KvEventBatch> decoded = decode(kHybridMapBatch);
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->events.size(), 4U);
  KvCacheGroups groups;
  std::uint32_t skipped = 0;
  const KvEventBatch b = admitted(*decoded, groups, skipped);
  const KvEventBatch* r = &b;
  EXPECT_EQ(skipped, 2U);
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{kH1}));
  EXPECT_EQ(stored(*r, 0).group_idx, 1U);
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{kH2}));
  EXPECT_EQ(removed(*r, 1).group_idx, 1U);
}

TEST(KvEventsGroups, PositionalGroupIdx) {
  // No kinds: group 0 feeds the directory, group 1 does not.
  Result<KvEventBatch> decoded = decode(kGroupArrayBatch);
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->data_parallel_rank, 1);
  KvCacheGroups fresh;
  std::uint32_t skipped = 0;
  KvEventBatch b = admitted(*decoded, fresh, skipped);
  const KvEventBatch* r = &b;
  EXPECT_EQ(skipped, 2U);
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{kH2}));
  EXPECT_EQ(stored(*r, 0).group_idx, 0U);
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{kH2}));
  EXPECT_EQ(removed(*r, 1).group_idx, 0U);

  // Kinds learned earlier from this publisher's stores decide instead.
  KvCacheGroups groups;
  EXPECT_FALSE(groups.admit(0, "sliding_window"));
  EXPECT_TRUE(groups.admit(1, "full_attention"));
  b = admitted(*decoded, groups, skipped);
  EXPECT_EQ(skipped, 2U);
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{kH1}));
  EXPECT_EQ(stored(*r, 0).parent_block_hash, kH2);
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{kH1}));
}

TEST(KvEventsGroups, KindsAreLearnedAcrossPayloadsAndForgottenOnReset) {
  KvCacheGroups groups;
  std::uint32_t skipped = 0;
  auto decode_with = [&](std::string_view json) -> Result<KvEventBatch> {
    Result<KvEventBatch> d = decode_kv_events(as_payload(json_bytes(json)));
    if (!d) return d;
    return admitted(*d, groups, skipped);
  };
  Result<KvEventBatch> r = decode_with(R"({"ts": 1.0, "events": [
      {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": null, "token_ids": [1], "block_size": 1,
       "lora_id": null, "medium": "GPU", "lora_name": null, "group_idx": 3, "kv_cache_spec_kind": "mla_attention"},
      {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": null, "token_ids": [1], "block_size": 1,
       "lora_id": null, "medium": "GPU", "lora_name": null, "group_idx": 0, "kv_cache_spec_kind": "sliding_window_mla",
       "kv_cache_spec_sliding_window": 128}]})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->events.size(), 1U);
  EXPECT_EQ(skipped, 1U);

  const std::string removals = R"({"ts": 2.0, "events": [
      {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU", "group_idx": 0},
      {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU", "group_idx": 3}]})";
  r = decode_with(removals);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->events.size(), 1U);
  EXPECT_EQ(removed(*r, 0).group_idx, 3U);
  EXPECT_EQ(skipped, 1U);

  // The engine restarted: its groups are unknown again, group 0 is assumed to hold prefixes.
  groups.reset();
  r = decode_with(removals);
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->events.size(), 1U);
  EXPECT_EQ(removed(*r, 0).group_idx, 0U);

  // An unusable event teaches nothing.
  r = decode_with(R"([1.0, [["BlockStored", [1, 2], null, [1], 1, null, "GPU", null, null, 5, "full_attention"]]])");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->unusable, 1U);
  r = decode_with(R"([1.0, [["BlockRemoved", [1], "GPU", 5]]])");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(skipped, 1U) << "group 5 is still unknown: not group 0";
}

TEST(KvEventsGroups, EveryTruncationIsAnError) {
  for (std::string_view payload : {kHybridMapBatch, kGroupArrayBatch}) {
    for (std::size_t n = 0; n < payload.size(); ++n) EXPECT_FALSE(decode(payload.substr(0, n))) << n << " bytes";
  }
}

TEST(KvEventsGroups, KindsThisDecoderDoesNotKnowFallBackToTheGroup) {
  KvCacheGroups groups;
  EXPECT_TRUE(groups.admit(std::nullopt, ""));          // engines without groups (SGLang, older vLLM)
  EXPECT_TRUE(groups.admit(0, ""));                     // vLLM's first group
  EXPECT_FALSE(groups.admit(2, ""));                    // any other, until its kind is known
  EXPECT_TRUE(groups.admit(0, "unknown"));              // vLLM's KVCacheSpecKind.UNKNOWN
  EXPECT_FALSE(groups.admit(2, "gated_delta_net"));     // newer than this decoder
  EXPECT_TRUE(groups.admit(2, "sink_full_attention"));  // now known
  EXPECT_TRUE(groups.admit(2, ""));                     // and remembered
  EXPECT_FALSE(groups.admit(std::nullopt, "mamba"));    // a kind decides even without a group
  EXPECT_TRUE(groups.admit(1000, "full_attention"));    // past 64 groups: decided, not remembered
  EXPECT_FALSE(groups.admit(1000, ""));
  EXPECT_FALSE(groups.admit(0, "cross_attention"));
  EXPECT_FALSE(groups.admit(0, ""));  // group 0 learned as not holding prefixes
}

TEST(KvEventsGroups, WrongGroupTypesMakeTheEventUnusable) {
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, "GPU", null, null, -1]]])"),
                  "events[0] (BlockStored).group_idx: expected an unsigned 32-bit integer or nil, got -1");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, "GPU", null, null, "0"]]])"),
                  "group_idx");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, null, null, null, 4294967296]]])"),
                  "group_idx");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, null, null, null, 0, 7]]])"),
                  "kv_cache_spec_kind: expected a string or nil, got 7");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockRemoved", [1], "GPU", 1.5]]])"), "(BlockRemoved).group_idx");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": "BlockRemoved", "block_hashes": [1], "group_idx": [0]}]])"),
                  "(BlockRemoved).group_idx");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": null,
                                  "token_ids": [1], "block_size": 1, "kv_cache_spec_kind": {"a": 1}}]])"),
                  "kv_cache_spec_kind");
  // An event of a group the Router would skip is still checked whole.
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1, 2], null, [1], 1, null, "GPU", null, null, 1]]])"),
                  "token_ids");
  // nil is "not sent".
  Result<KvEventBatch> r =
      decode(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, "GPU", null, null, null, null, null],
                                  ["BlockRemoved", [1], "GPU", null]]])"));
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_FALSE(stored(*r, 0).group_idx.has_value());
  EXPECT_FALSE(removed(*r, 1).group_idx.has_value());
}

// ---- events this decoder cannot use: dropped and counted, the rest of the batch stands ---------------

TEST(KvEventsUnusable, VllmOffloadPlaceholderAmongValidEvents) {
  // Real wire bytes (msgspec, vLLM's array_like structs): the CPU offloading connector's placeholder store
  // (no token ids, block size 0) sits between two GPU stores and a CPU removal.
  Result<KvEventBatch> r = decode(test::kVllmOffloadBatch);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->unusable, 1U);
  EXPECT_NE(r->unusable_reason.find("events[1] (BlockStored).block_size"), std::string::npos) << r->unusable_reason;
  ASSERT_EQ(r->events.size(), 3U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{test::kO1, test::kO2}));
  EXPECT_EQ(stored(*r, 0).token_ids.size(), 32U);
  EXPECT_EQ(stored(*r, 1).block_hashes, (std::vector<EngineHash>{test::kO3}));
  EXPECT_EQ(stored(*r, 1).parent_block_hash, test::kO2);
  EXPECT_EQ(removed(*r, 2).block_hashes, (std::vector<EngineHash>{test::kO2}));
  EXPECT_EQ(removed(*r, 2).medium, "CPU");
}

/// `[ts, [a valid store, <event>, a valid removal]]`: the event must be dropped, the other two kept.
void expect_dropped_alone(const std::string& event, std::string_view fragment) {
  msgpack::sbuffer buffer;
  Packer p(buffer);
  p.pack_array(2).pack_double(1.0).pack_array(3);
  p.pack_array(5);
  pack_text(p, "BlockStored");
  p.pack_array(1).pack(std::uint64_t{9});
  p.pack_nil();
  p.pack_array(1).pack(std::uint32_t{4});
  p.pack(1);
  buffer.write(event.data(), event.size());
  p.pack_array(2);
  pack_text(p, "BlockRemoved");
  p.pack_array(1).pack(std::uint64_t{8});
  Result<KvEventBatch> r = decode(std::string_view(buffer.data(), buffer.size()));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->unusable, 1U);
  EXPECT_NE(r->unusable_reason.find(fragment), std::string::npos) << r->unusable_reason;
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{9}));
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{8}));
}

TEST(KvEventsUnusable, EachShapeTheEnginesSendIsDroppedAlone) {
  // A sliding-window group's store skips its null blocks: fewer hashes than 32 token ids of 16 imply.
  expect_dropped_alone(json_bytes(R"(["BlockStored", [1], null, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
      17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32], 16, null, "GPU", null, null, 1,
      "sliding_window"])"),
                       "events[1] (BlockStored).token_ids: 32 ids, but block_size 16 x 1 block_hashes needs 16");
  // A Mamba group's the same (map encoding).
  expect_dropped_alone(json_bytes(R"({"type": "BlockStored", "block_hashes": [1, 2], "parent_block_hash": null,
      "token_ids": [1, 2, 3, 4, 5, 6], "block_size": 2, "medium": "GPU", "group_idx": 2, "kv_cache_spec_kind": "mamba"})"),
                       "token_ids: 6 ids");
  // A Mooncake connector's placeholder.
  expect_dropped_alone(json_bytes(R"({"type": "BlockStored", "block_hashes": [3], "parent_block_hash": null,
      "token_ids": [], "block_size": 0, "medium": "CPU"})"),
                       "block_size: expected an integer in [1, 4096], got 0");
  // SGLang with EAGLE: bigram pages, a pair of ids for each token.
  expect_dropped_alone(json_bytes(R"(["BlockStored", [5], null, [[1, 2], [2, 3]], 2, null])"),
                       "token_ids[0]: expected an unsigned 32-bit token id, got an array of 2");
  // More blocks than the limit (65,536).
  const std::string huge = packed([](Packer& p) {
    constexpr std::uint32_t kBlocks = (1U << 16) + 1;
    p.pack_array(5);
    pack_text(p, "BlockStored");
    p.pack_array(kBlocks);
    for (std::uint32_t i = 0; i < kBlocks; ++i) p.pack(i);
    p.pack_nil();
    p.pack_array(kBlocks);
    for (std::uint32_t i = 0; i < kBlocks; ++i) p.pack(i);
    p.pack(1);
  });
  expect_dropped_alone(huge, "65537 hashes, the limit is 65536");
  // An event of a type this decoder knows but with a field of the wrong type.
  expect_dropped_alone(json_bytes(R"(["BlockRemoved", "not hashes"])"), "(BlockRemoved).block_hashes");
}

TEST(KvEventsUnusable, ABatchThatIsNotABatchIsStillRejected) {
  EXPECT_DECODE_ERROR(json_bytes(R"({"ts": 1.0, "events": {"0": ["AllBlocksCleared"]}})"), "events: expected an array");
  EXPECT_DECODE_ERROR(json_bytes(R"([["BlockStored"], []])"), "ts: expected a number");
  EXPECT_DECODE_ERROR("\x92\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\x91\xc1"sv, "malformed msgpack");
}

// ---- wrong shapes and values ------------------------------------------------------------------------

TEST(KvEventsErrors, BatchShape) {
  EXPECT_DECODE_ERROR("", "empty payload");
  EXPECT_DECODE_ERROR(json_bytes("7"), "a batch is an array or a map");
  EXPECT_DECODE_ERROR(json_bytes("[1.0]"), "needs [ts, events]");
  EXPECT_DECODE_ERROR(json_bytes(R"({"events": []})"), "no \"ts\"");
  EXPECT_DECODE_ERROR(json_bytes(R"({"ts": 1.0})"), "no \"events\"");
  EXPECT_DECODE_ERROR(json_bytes(R"(["yesterday", []])"), "ts: expected a number");
  EXPECT_DECODE_ERROR(json_bytes("[NaN, []]"), "ts: not a finite number");
  EXPECT_DECODE_ERROR(json_bytes(R"([1.0, {"0": 1}])"), "events: expected an array");
  EXPECT_DECODE_ERROR(json_bytes("[1.0, [], -1]"), "data_parallel_rank");
  EXPECT_DECODE_ERROR(json_bytes(R"([1.0, [], "0"])"), "data_parallel_rank");
}

TEST(KvEventsErrors, EventShape) {
  EXPECT_UNUSABLE(json_bytes("[1.0, [5]]"), "events[0]: an event is an array or a map");
  EXPECT_UNUSABLE(json_bytes("[1.0, [[]]]"), "events[0]: an empty array");
  EXPECT_UNUSABLE(json_bytes("[1.0, [[3, [1]]]]"), "events[0]: the event tag is 3");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"block_hashes": [1]}]])"), "has no \"type\"");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": null}]])"), "the event type is nil");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["AllBlocksCleared"], ["BlockStored", [1], null, [1]]]])"),
                  "events[1]: BlockStored has 3 fields");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockRemoved"]]])"), "BlockRemoved has no block_hashes");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": "BlockStored", "block_hashes": [1], "parent_block_hash": null,
                                  "block_size": 1}]])"),
                  "BlockStored has no token_ids");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": "BlockStored", "block_hashes": [1], "token_ids": [1],
                                  "block_size": 1}]])"),
                  "BlockStored has no parent_block_hash");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": "BlockRemoved", "medium": "GPU"}]])"),
                  "BlockRemoved has no block_hashes");
}

TEST(KvEventsErrors, FieldTypes) {
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", 1, null, [1], 1]]])"),
                  "events[0] (BlockStored).block_hashes: expected an array, got 1");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", ["abc"], null, [1], 1]]])"), "block_hashes[0]");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1.5], null, [1], 1]]])"), "block_hashes[0]");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], "root", [1], 1]]])"), "parent_block_hash");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], "1"]]])"), "block_size");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [], 0]]])"), "block_size");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], -1]]])"), "block_size");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 4097]]])"), "block_size");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, {"0": 1}, 1]]])"), "token_ids: expected an array");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [-1], 1]]])"), "token_ids[0]");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [4294967296], 1]]])"), "token_ids[0]");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, ["a"], 1]]])"), "token_ids[0]");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, 5]]])"), "medium");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1], 1, null, "GPU", 5]]])"), "lora_name");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockRemoved", [1], [2]]]])"), "events[0] (BlockRemoved).medium");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [{"type": "BlockRemoved", "block_hashes": [true]}]])"), "block_hashes[0]");

  const std::string empty_bin = packed([](Packer& p) {
    p.pack_array(2).pack_double(1.0).pack_array(1).pack_array(2);
    pack_text(p, "BlockRemoved");
    p.pack_array(1).pack_bin(0);
  });
  EXPECT_UNUSABLE(empty_bin, "block_hashes[0]");
  const std::string long_bin = packed([](Packer& p) {
    p.pack_array(2).pack_double(1.0).pack_array(1).pack_array(2);
    pack_text(p, "BlockRemoved");
    p.pack_array(1).pack_bin(65);
    const std::string body(65, 'x');
    p.pack_bin_body(body.data(), 65);
  });
  EXPECT_UNUSABLE(long_bin, "65-byte bin");
}

TEST(KvEventsErrors, TokenCountMustBeBlockSizeTimesBlocks) {
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1, 2], null, [1, 2, 3], 2]]])"),
                  "token_ids: 3 ids, but block_size 2 x 2 block_hashes needs 4");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [1], null, [1, 2, 3], 2]]])"), "needs 2");
  EXPECT_UNUSABLE(json_bytes(R"([1.0, [["BlockStored", [], null, [1], 1]]])"), "needs 0");
  // One unusable event is dropped and counted; the others stand.
  Result<KvEventBatch> r = decode(json_bytes(
      R"([1.0, [["BlockStored", [1], null, [1], 1], ["BlockStored", [1], null, [], 1], ["BlockRemoved", [1]]]])"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->unusable, 1U);
  EXPECT_NE(r->unusable_reason.find("events[1] (BlockStored).token_ids"), std::string::npos) << r->unusable_reason;
  ASSERT_EQ(r->events.size(), 2U);
  EXPECT_EQ(stored(*r, 0).block_hashes, (std::vector<EngineHash>{1}));
  EXPECT_EQ(removed(*r, 1).block_hashes, (std::vector<EngineHash>{1}));
}

TEST(KvEventsErrors, Limits) {
  KvDecodeLimits small;
  small.max_events = 2;
  small.max_blocks_per_event = 2;
  small.max_tokens_per_event = 4;
  small.max_block_size = 2;
  small.max_payload_bytes = 128;
  small.max_string_bytes = 16;
  auto fails_with = [&](std::string_view bytes, std::string_view fragment) {
    const std::string message = error_of(bytes, small);
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  };
  fails_with(json_bytes(R"([1.0, [["AllBlocksCleared"], ["AllBlocksCleared"], ["AllBlocksCleared"]]])"),
             "events: 3 events, the limit is 2");
  auto unusable_with = [&](std::string_view bytes, std::string_view fragment) {
    const std::string message = unusable_of(bytes, small);
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  };
  unusable_with(json_bytes(R"([1.0, [["BlockRemoved", [1, 2, 3]]]])"), "3 hashes, the limit is 2");
  unusable_with(json_bytes(R"([1.0, [["BlockStored", [1], null, [1, 2, 3], 3]]])"), "block_size");
  fails_with(std::string(129, '\xc0'), "payload of 129 bytes, the limit is 128");
  fails_with(json_bytes(R"([1.0, [["BlockRemoved", [1], "a very long medium"]]])"), "str size overflow");
  // An array longer than every count limit (and 256) is refused by msgpack-c's unpack_limit, before
  // allocation.
  fails_with(packed([](Packer& p) {
               p.pack_array(2).pack_double(1.0).pack_array(257);
               for (int i = 0; i < 257; ++i) p.pack_nil();
             }),
             "payload of");  // 257 nils are over 128 bytes: the payload limit comes first
  KvDecodeLimits tiny_counts;
  tiny_counts.max_events = 1;
  tiny_counts.max_blocks_per_event = 1;
  tiny_counts.max_tokens_per_event = 1;
  const std::string over = error_of(packed([](Packer& p) {
                                      p.pack_array(2).pack_double(1.0).pack_array(257);
                                      for (int i = 0; i < 257; ++i) p.pack_nil();
                                    }),
                                    tiny_counts);
  EXPECT_NE(over.find("array size overflow"), std::string::npos) << over;

  KvDecodeLimits few_tokens;
  few_tokens.max_tokens_per_event = 3;
  const std::string message =
      unusable_of(json_bytes(R"([1.0, [["BlockStored", [1, 2], null, [1, 2, 3, 4], 2]]])"), few_tokens);
  EXPECT_NE(message.find("token_ids: 4 ids, the limit is 3"), std::string::npos) << message;
}

// ---- malformed msgpack: absurd sizes, truncation, nesting ---------------------------------------------

TEST(KvEventsMalformed, AbsurdSizesAreRefusedBeforeAllocation) {
  // Each claims far more than the payload holds; the structural pass refuses it before msgpack-c would
  // allocate (msgpack-c allocates a claimed array's elements up front).
  EXPECT_DECODE_ERROR(std::string("\xdd\x3b\x9a\xca\x00", 5), "claims more elements than bytes remain");  // 1e9
  EXPECT_DECODE_ERROR(std::string("\xdd\xff\xff\xff\xff", 5), "claims more elements");
  EXPECT_DECODE_ERROR(std::string("\xdf\xff\xff\xff\xff", 5), "claims more elements");  // map32
  EXPECT_DECODE_ERROR(std::string("\xdb\xff\xff\xff\xff", 5), "truncated value");       // str32 of 4 GiB
  EXPECT_DECODE_ERROR(std::string("\xc6\x7f\xff\xff\xff", 5), "truncated value");       // bin32
  EXPECT_DECODE_ERROR(std::string("\xc9\x7f\xff\xff\xff\x01", 6), "truncated value");   // ext32
  EXPECT_DECODE_ERROR(std::string("\x92\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xdd\x3b\x9a\xca\x00", 15),
                      "claims more elements");  // [1.0, <a billion events>]
  // A claim just too big for what is left: 100 elements in 60 bytes of nils.
  std::string hundred("\xdc\x00\x64", 3);
  hundred.append(60, '\xc0');
  EXPECT_DECODE_ERROR(hundred, "claims more elements");
}

TEST(KvEventsMalformed, EveryTruncationOfEveryPayloadIsAnError) {
  for (std::string_view payload : test::kAllPayloads) {
    ASSERT_TRUE(decode(payload));
    for (std::size_t n = 0; n < payload.size(); ++n) {
      Result<KvEventBatch> r = decode(payload.substr(0, n));
      EXPECT_FALSE(r) << "prefix of " << n << " bytes decoded";
    }
  }
}

TEST(KvEventsMalformed, TrailingBytesAndReservedByte) {
  std::string extra(test::kVllmArrayBatch);
  extra.push_back('\xc0');
  EXPECT_DECODE_ERROR(extra, "trailing bytes");
  EXPECT_DECODE_ERROR(std::string("\x92\xc1\x90", 3), "0xc1");
}

TEST(KvEventsMalformed, DeepNesting) {
  for (const std::size_t depth : {33U, 100U, 100000U}) {
    std::string deep(depth, '\x91');
    deep.push_back('\xc0');
    EXPECT_DECODE_ERROR(deep, "nesting deeper than 32");
  }
  // Within the limit the shape is what fails, not the parser.
  std::string ok_depth(31, '\x91');
  ok_depth.push_back('\xc0');
  EXPECT_DECODE_ERROR(ok_depth, "needs [ts, events]");
  // An unknown event is skipped, but its depth is still bounded.
  const std::string nested = packed([](Packer& p) {
    p.pack_array(2).pack_double(1.0).pack_array(1).pack_array(2);
    pack_text(p, "Unknown");
    for (int i = 0; i < 40; ++i) p.pack_array(1);
    p.pack_nil();
  });
  EXPECT_DECODE_ERROR(nested, "nesting deeper");
}

TEST(KvEventsMalformed, GarbageNeverThrows) {
  const std::string_view inputs[] = {
      "\xff"sv,     "\x00"sv, "\x90"sv,         "\x80"sv,         "\xa5hello"sv,
      "\xcb\x00"sv, "\xd4"sv, "\xc7\x02\x01"sv, "\x92\x01\x02"sv, "\x82\x01\x02\x03\x04"sv};
  for (std::string_view in : inputs) EXPECT_FALSE(decode(in)) << "input of " << in.size() << " bytes";
}

}  // namespace
}  // namespace turnout
