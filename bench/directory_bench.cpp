// Prefix hashing and the cache directory. Issue targets: hashing + directory lookup for a 2,048-token
// prompt <= 2x hashing alone (median, same run); KV-event ingestion (decode + apply) >= 1M blocks/s on
// one core; memory <= 64 bytes per (block, holder).

#include <msgpack.hpp>

#include <random>
#include <string>
#include <vector>

#include "bench_json.hpp"
#include "turnout/directory.hpp"
#include "turnout/kv_events.hpp"
#include "turnout/prefix.hpp"
#include "turnout/router.hpp"

namespace {

using namespace turnout;

constexpr std::int64_t kNow = 1'767'225'600'000;

std::vector<std::uint32_t> tokens(std::uint64_t seed, std::size_t n) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint32_t> t(n);
  for (auto& x : t) x = static_cast<std::uint32_t>(rng() % 128'000);
  return t;
}

// 8 replicas, each holding 20,000 blocks of other prompts plus, on replica 3, this prompt.
struct Fixture {
  CacheDirectory dir{std::vector<CacheDirectory::HolderSpec>(8, {.capacity_blocks = 200'000})};
  std::vector<std::uint32_t> prompt = tokens(1, 2048);
  std::uint64_t root = PrefixHasher::root_seed("llama");
  Fixture() {
    std::vector<std::uint64_t> chain;
    for (std::uint32_t h = 0; h < 8; ++h) {
      for (int p = 0; p < 160; ++p) {
        chain.clear();
        PrefixHasher::hash_tokens(tokens(std::uint64_t{1000} * h + static_cast<std::uint64_t>(p) + 7, 2048), 16, root,
                                  chain);
        dir.store(h, chain, kNow);
      }
    }
    chain.clear();
    PrefixHasher::hash_tokens(prompt, 16, root, chain);
    dir.store(3, chain, kNow);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void hash_2048_tokens(benchmark::State& state) {
  auto& f = fixture();
  std::vector<std::uint64_t> chain;
  chain.reserve(128);
  for (auto _ : state) {
    chain.clear();
    PrefixHasher::hash_tokens(f.prompt, 16, f.root, chain);
    benchmark::DoNotOptimize(chain.data());
  }
}

void hash_and_match_2048_tokens(benchmark::State& state) {
  auto& f = fixture();
  std::vector<std::uint64_t> chain;
  chain.reserve(128);
  std::vector<std::uint32_t> matched(8);
  for (auto _ : state) {
    chain.clear();
    PrefixHasher::hash_tokens(f.prompt, 16, f.root, chain);
    f.dir.match(chain, kNow, matched);  // a full 128-block walk: the warm (worst) case
    benchmark::DoNotOptimize(matched.data());
  }
  if (matched[3] != 128) state.SkipWithError("the prompt should be warm on replica 3");
}

// Memory at a realistic fill: 8 replicas of 50,000 blocks (800k tokens of KV each), every one full
// after twice its capacity of distinct 2,048-token prompts (no block shared: the worst case). Bytes of
// every array, as allocated, over (block, holder) entries. Argument 1: precise mode (engine hashes,
// no TTL); 0: approximate mode (the router's own decisions, 120 s TTL).
void directory_memory(benchmark::State& state) {
  const bool precise = state.range(0) == 1;
  constexpr std::int64_t kCapacity = 50'000;
  const CacheDirectory::HolderSpec spec{.capacity_blocks = kCapacity, .ttl_ms = precise ? 0 : 120'000};
  const std::uint64_t root = PrefixHasher::root_seed("llama");
  for (auto _ : state) {
    CacheDirectory dir(std::vector<CacheDirectory::HolderSpec>(8, spec));
    std::vector<std::uint64_t> chain;
    std::vector<std::uint64_t> engine;
    for (std::uint32_t h = 0; h < 8; ++h) {
      for (std::uint64_t p = 0; p < 2 * kCapacity / 128; ++p) {
        chain.clear();
        PrefixHasher::hash_tokens(tokens(std::uint64_t{100'000} * h + p, 2048), 16, root, chain);
        engine.resize(chain.size());
        for (std::size_t i = 0; i < chain.size(); ++i) engine[i] = chain[i] ^ 0x5555;
        dir.store(h, chain, kNow, precise ? std::span<const std::uint64_t>(engine) : std::span<const std::uint64_t>());
      }
    }
    const auto st = dir.stats();
    std::size_t entries = 0;
    for (auto n : st.held) entries += n;
    state.counters["bytes_per_entry"] = static_cast<double>(st.bytes) / static_cast<double>(entries);
    state.counters["entries"] = static_cast<double>(entries);
    state.counters["blocks"] = static_cast<double>(st.blocks);
  }
}

// A vLLM batch as the engine publishes it (positional arrays): 32 BlockStored events of 16 blocks.
std::string vllm_batch(std::uint64_t seed, std::uint64_t& next_hash, std::vector<std::uint64_t>& last_hashes) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_array(3);
  pk.pack(1.7e9);
  pk.pack_array(32);
  std::mt19937_64 rng(seed);
  for (int e = 0; e < 32; ++e) {
    pk.pack_array(8);
    pk.pack(std::string("BlockStored"));
    pk.pack_array(16);
    for (int b = 0; b < 16; ++b) {
      pk.pack(next_hash);
      last_hashes.push_back(next_hash++);
    }
    pk.pack_nil();  // a new root each event
    pk.pack_array(256);
    for (int t = 0; t < 256; ++t) pk.pack(static_cast<std::uint32_t>(rng() % 128'000));
    pk.pack(16);
    pk.pack_nil();
    pk.pack(std::string("GPU"));
    pk.pack_nil();
  }
  pk.pack_nil();
  return {buf.data(), buf.size()};
}

const ConfigPtr& pool_config() {
  static const ConfigPtr c = *load_config_text(R"(version: 1
targets:
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public]
    context_window: 131072
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2.99}
    kv: {block_size: 16, capacity_blocks: 100000}
    replicas: [{endpoint: a, max_inflight: 64, kv_events: "tcp://127.0.0.1:5557"}]
scenarios:
  s: {data_class: public, routes: [{target: pool}]}
)",
                                               "bench.yaml");
  return c;
}

void kv_ingest_decode_and_apply(benchmark::State& state) {
  Router router(pool_config());
  std::uint64_t next = 0x8000'0000'0000'0000ULL;
  std::vector<std::string> batches;
  std::vector<std::vector<std::uint64_t>> hashes(8);
  for (std::uint64_t i = 0; i < 8; ++i) batches.push_back(vllm_batch(i, next, hashes[i]));
  std::size_t i = 0;
  std::int64_t blocks = 0;
  for (auto _ : state) {
    const auto& payload = batches[i++ & 7];
    auto batch = decode_kv_events(std::as_bytes(std::span(payload.data(), payload.size())));
    auto applied = router.apply_kv_events(0, 0, *batch, kNow);
    blocks += static_cast<std::int64_t>(applied->stored);
  }
  state.counters["blocks_per_s"] = benchmark::Counter(static_cast<double>(blocks), benchmark::Counter::kIsRate);
}

BENCHMARK(hash_2048_tokens)->Repetitions(20)->MinTime(0.02);
BENCHMARK(hash_and_match_2048_tokens)->Repetitions(20)->MinTime(0.02);
BENCHMARK(directory_memory)->Arg(0)->Arg(1)->Iterations(1)->Repetitions(1);
BENCHMARK(kv_ingest_decode_and_apply)->Repetitions(10)->MinTime(0.05);

}  // namespace

int main(int argc, char** argv) {
  return turnout::bench::run_and_print(
      argc, argv, {{"hash_and_match_vs_hash", "hash_and_match_2048_tokens", "hash_2048_tokens", 2.0}});
}
