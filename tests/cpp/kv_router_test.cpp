// KV events applied by a Router (what the sidecar's subscriber and Router.apply_kv_events both call): a
// batch with an unusable event keeps the rest, tiers by medium, and group kinds kept per replica across
// batches.

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kv_event_payloads.hpp"
#include "test_configs.hpp"
#include "turnout/router.hpp"

namespace turnout {
namespace {

constexpr TimeMs kT0 = 1'767'225'600'000;

constexpr const char* kPool = R"(version: 1
targets:
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public]
    context_window: 32768
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2.00}
    kv: {block_size: 16, capacity_blocks: 1000}
    replicas:
      - {endpoint: "http://127.0.0.1:9000", max_inflight: 8, kv_events: "tcp://127.0.0.1:7000"}
      - {endpoint: "http://127.0.0.1:9001", max_inflight: 8, kv_events: "tcp://127.0.0.1:7001"}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 100
    routes: [{target: pool}]
    affinity: {prefix: true}
)";

std::vector<std::uint32_t> tokens(std::uint32_t first, std::uint32_t count) {
  std::vector<std::uint32_t> out(count);
  for (std::uint32_t i = 0; i < count; ++i) out[i] = first + i;
  return out;
}

/// What explain() expects: the replica it picks and the tokens it expects cached there.
std::pair<std::uint32_t, std::int64_t> warm(Router& router, const std::vector<std::uint32_t>& prompt) {
  RouteRequest r{.scenario = "chat", .input_tokens = static_cast<std::int64_t>(prompt.size()), .now = kT0};
  r.token_ids = prompt;
  auto d = router.explain(r);
  EXPECT_TRUE(d.ok()) << (d ? "" : d.error().message);
  if (!d) return {kNone, -1};
  return {d->placement.replica, d->expected_cached_tokens};
}

KvEventBatch decoded(std::string_view bytes) {
  Result<KvEventBatch> r = decode_kv_events(test::as_payload(bytes));
  EXPECT_TRUE(r) << r.error().message;
  return r ? *r : KvEventBatch{};
}

BlockStored store(std::vector<EngineHash> hashes, std::vector<std::uint32_t> ids, std::optional<std::uint32_t> group,
                  std::string kind, std::string medium = "GPU") {
  BlockStored s;
  s.block_hashes = std::move(hashes);
  s.token_ids = std::move(ids);
  s.block_size = 16;
  s.medium = std::move(medium);
  s.group_idx = group;
  s.cache_kind = std::move(kind);
  return s;
}

TEST(KvRouter, VllmOffloadBatchAppliesAroundItsPlaceholderAndKeepsTheGpuCopy) {
  auto config = testing::load_or_die(kPool);
  Router router(config);
  const std::uint32_t pool = config->find_target("pool");
  // Real wire bytes: GPU store of blocks 1-2, the offloading connector's placeholder (unusable), GPU store of
  // block 3 chained to block 2, then the CPU copy of block 2 removed.
  auto applied = router.apply_kv_events(pool, 1, decoded(test::kVllmOffloadBatch), kT0);
  ASSERT_TRUE(applied.ok());
  EXPECT_EQ(applied->stored, 3U);
  EXPECT_EQ(applied->unusable, 1U);
  EXPECT_EQ(applied->removed, 0U) << "the CPU removal must not take the GPU entry";
  EXPECT_EQ(warm(router, tokens(1, 48)), (std::pair<std::uint32_t, std::int64_t>{1, 48}));
  // The counter shows where the other KV counters show.
  const auto rows = router.directory_stats();
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows.front().events.at(1).unusable, 1U);
  EXPECT_EQ(rows.front().events.at(1).stored, 3U);

  // The GPU copy of block 2 goes: only block 1 is still a hit.
  BlockRemoved gpu;
  gpu.block_hashes = {test::kO2};
  gpu.medium = "GPU";
  applied = router.apply_kv_events(pool, 1, KvEventBatch{.events = {gpu}}, kT0);
  ASSERT_TRUE(applied.ok());
  EXPECT_EQ(applied->removed, 1U);
  EXPECT_EQ(warm(router, tokens(1, 48)).second, 16);
}

TEST(KvRouter, HostResidentBlocksAreTrackedButAreNoHit) {
  auto config = testing::load_or_die(kPool);
  Router router(config);
  const std::uint32_t pool = config->find_target("pool");
  // Replica 0 has the prefix only in host memory (SGLang HiCache's host pool), replica 1 on its GPU.
  ASSERT_TRUE(
      router.apply_kv_events(pool, 0, KvEventBatch{.events = {store({1, 2}, tokens(1, 32), {}, "", "CPU_TIER1")}}, kT0)
          .ok());
  ASSERT_TRUE(router.apply_kv_events(pool, 1, KvEventBatch{.events = {store({1}, tokens(1, 16), {}, "")}}, kT0).ok());
  EXPECT_EQ(warm(router, tokens(1, 32)), (std::pair<std::uint32_t, std::int64_t>{1, 16}));
  // Replica 0 loads it back to its GPU: now the longer hit there wins.
  ASSERT_TRUE(
      router.apply_kv_events(pool, 0, KvEventBatch{.events = {store({1, 2}, tokens(1, 32), {}, "")}}, kT0).ok());
  EXPECT_EQ(warm(router, tokens(1, 32)), (std::pair<std::uint32_t, std::int64_t>{0, 32}));
  // Its host copy is evicted: the GPU copy still counts.
  BlockRemoved host;
  host.block_hashes = {1, 2};
  host.medium = "CPU_TIER1";
  auto r = router.apply_kv_events(pool, 0, KvEventBatch{.events = {host}}, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed, 2U);
  EXPECT_EQ(warm(router, tokens(1, 32)), (std::pair<std::uint32_t, std::int64_t>{0, 32}));
}

TEST(KvRouter, GroupKindsAreKeptPerReplicaAcrossBatches) {
  auto config = testing::load_or_die(kPool);
  Router router(config);
  const std::uint32_t pool = config->find_target("pool");
  // A hybrid model: group 0 is a sliding window, group 1 full attention, under the same block hashes.
  KvEventBatch first{.events = {store({11, 12}, tokens(1, 32), 0, "sliding_window"),
                                store({11, 12}, tokens(1, 32), 1, "full_attention")}};
  auto r = router.apply_kv_events(pool, 0, first, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->skipped, 1U);
  EXPECT_EQ(r->stored, 2U);
  // A later batch: the sliding window drops block 12 (BlockRemoved names only its group). The prefix the
  // full-attention group still holds stays.
  BlockRemoved slid;
  slid.block_hashes = {12};
  slid.group_idx = 0;
  r = router.apply_kv_events(pool, 0, KvEventBatch{.events = {slid}}, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->skipped, 1U);
  EXPECT_EQ(r->removed, 0U);
  EXPECT_EQ(warm(router, tokens(1, 32)), (std::pair<std::uint32_t, std::int64_t>{0, 32}));
  // Kinds are per replica: replica 1 has learned nothing, so its group 0 is assumed to hold prefixes.
  ASSERT_TRUE(router.apply_kv_events(pool, 1, KvEventBatch{.events = {store({11}, tokens(1, 16), 0, "")}}, kT0).ok());
  // The full-attention group drops it: gone.
  BlockRemoved full = slid;
  full.group_idx = 1;
  r = router.apply_kv_events(pool, 0, KvEventBatch{.events = {full}}, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed, 1U);
  EXPECT_EQ(warm(router, tokens(1, 32)).second, 16);
  // The engine restarted (reset_kv): its kinds are forgotten with its blocks, group 0 holds prefixes again.
  ASSERT_TRUE(router.reset_kv(pool, 0).ok());
  ASSERT_TRUE(router.apply_kv_events(pool, 0, KvEventBatch{.events = {store({11}, tokens(1, 16), 0, "")}}, kT0).ok());
  BlockRemoved again = slid;
  again.block_hashes = {11};
  r = router.apply_kv_events(pool, 0, KvEventBatch{.events = {again}}, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed, 1U);
  EXPECT_EQ(r->skipped, 0U);
}

}  // namespace
}  // namespace turnout
