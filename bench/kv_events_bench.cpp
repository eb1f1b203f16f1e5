// Ingestion throughput of precise mode, decode side: decode_kv_events on batches of 32 BlockStored events,
// each 16 blocks x 16 tokens (512 blocks, 8192 token ids per batch), in vLLM's two encodings. The issue's
// target is >= 1M blocks/s on one core for decode + apply (the directory's apply side is measured
// separately); these numbers are decode only.
//
// Every benchmark times one batch and reports the time per block (manual time = batch time / 512), so
// the JSON medians (bench_json.hpp) are ns per block: blocks/s = 1e9 / median, and the 1M blocks/s target
// is a median of at most 1000 ns. The blocks_per_second counter (console table and JSON) says it directly.
// Baseline: msgpack::unpack alone of the same payload (the floor any msgpack decoder pays), as a ratio.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>

#include "bench_json.hpp"
#include "kv_event_payloads.hpp"
#include "turnout/kv_events.hpp"

namespace {

using turnout::test::pack_text;
using turnout::test::Packer;

constexpr int kRepetitions = 30;
/// Manual time counts per block: 0.05 s of wall time per repetition is this much of it.
constexpr double kMinTimeSeconds = 0.05 / (32.0 * 16.0);
constexpr std::uint32_t kEvents = 32;
constexpr std::uint32_t kBlocksPerEvent = 16;
constexpr std::uint32_t kBlockSize = 16;
constexpr double kBlocksPerBatch = double{kEvents} * kBlocksPerEvent;

/// A batch as vLLM sends it: hashes are uint64 (half of them >= 2^63), each event's parent the previous
/// event's last block, token ids spread over a 150k vocabulary (1, 3 or 5 bytes each in msgpack).
std::string make_batch(bool tagged_maps) {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::uint32_t> token(0, 150'000);
  return turnout::test::packed([&](Packer& p) {
    if (tagged_maps) {
      p.pack_map(3);
      pack_text(p, "ts");
      p.pack_double(1718000000.25);
      pack_text(p, "events");
    } else {
      p.pack_array(3);
      p.pack_double(1718000000.25);
    }
    p.pack_array(kEvents);
    std::uint64_t parent = 0;
    for (std::uint32_t e = 0; e < kEvents; ++e) {
      auto field = [&](const char* name) {
        if (tagged_maps) pack_text(p, name);
      };
      if (tagged_maps) {
        p.pack_map(8);
        pack_text(p, "type");
      } else {
        p.pack_array(8);
      }
      pack_text(p, "BlockStored");
      field("block_hashes");
      p.pack_array(kBlocksPerEvent);
      std::uint64_t last = 0;
      for (std::uint32_t b = 0; b < kBlocksPerEvent; ++b) p.pack_uint64(last = rng());
      field("parent_block_hash");
      if (e == 0) {
        p.pack_nil();
      } else {
        p.pack_uint64(parent);
      }
      parent = last;
      field("token_ids");
      p.pack_array(kBlocksPerEvent * kBlockSize);
      for (std::uint32_t t = 0; t < kBlocksPerEvent * kBlockSize; ++t) p.pack_uint32(token(rng));
      field("block_size");
      p.pack_uint32(kBlockSize);
      field("lora_id");
      p.pack_nil();
      field("medium");
      pack_text(p, "GPU");
      field("lora_name");
      p.pack_nil();
    }
    if (tagged_maps) pack_text(p, "data_parallel_rank");
    p.pack_uint32(0);
  });
}

const std::string& map_batch() {
  static const std::string s = make_batch(true);
  return s;
}
const std::string& array_batch() {
  static const std::string s = make_batch(false);
  return s;
}

template <class F>
void per_block(benchmark::State& state, F&& decode_one_batch) {
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    decode_one_batch();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    state.SetIterationTime(elapsed.count() / kBlocksPerBatch);
  }
  state.counters["blocks_per_second"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

bool reference(msgpack::type::object_type /*type*/, std::size_t /*length*/, void* /*user_data*/) { return true; }

void msgpack_unpack_only(benchmark::State& state) {
  const std::string& payload = map_batch();
  per_block(state, [&] {
    msgpack::object_handle h = msgpack::unpack(payload.data(), payload.size(), reference);
    benchmark::DoNotOptimize(h.get().via.map.size);
  });
}

void run_decode(benchmark::State& state, const std::string& payload) {
  const auto bytes = turnout::test::as_payload(payload);
  bool ok = true;
  per_block(state, [&] {
    auto batch = turnout::decode_kv_events(bytes);
    ok = ok && batch.ok() && batch->events.size() == kEvents;
    benchmark::DoNotOptimize(batch);
  });
  if (!ok) state.SkipWithError("the batch did not decode");
}

void decode_tagged_maps(benchmark::State& state) { run_decode(state, map_batch()); }
void decode_positional(benchmark::State& state) { run_decode(state, array_batch()); }

BENCHMARK(msgpack_unpack_only)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds)->UseManualTime();
BENCHMARK(decode_tagged_maps)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds)->UseManualTime();
BENCHMARK(decode_positional)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds)->UseManualTime();

}  // namespace

int main(int argc, char** argv) {
  std::fprintf(stderr, "kv events bench: %zu-byte tagged-map batch, %zu-byte positional batch, %.0f blocks each\n",
               map_batch().size(), array_batch().size(), kBlocksPerBatch);
  return turnout::bench::run_and_print(
      argc, argv,
      {{"decode_tagged_maps_vs_unpack", "decode_tagged_maps", "msgpack_unpack_only", 0},
       {"decode_positional_vs_unpack", "decode_positional", "msgpack_unpack_only", 0}});
}
