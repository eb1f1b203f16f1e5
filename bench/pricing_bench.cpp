// Cost of pricing one outcome on the report() path: normalize a provider's usage object (already
// unpacked from the wire) and price it on a catalog. Target: median <= 200 ns per usage.
//
// Prints (bench_json.hpp) the median and p99 over repetitions per benchmark on stdout, with the ratio to
// a baseline measured in the same run: finding and reading one integer field of the same object.

#include <cstdint>
#include <string_view>

#include "bench_json.hpp"
#include "msgpack_builder.hpp"
#include "turnout/pricing.hpp"
#include "turnout/usage.hpp"

namespace {

using turnout::PriceCatalog;
using turnout::PriceRates;
using turnout::Provider;

constexpr int kRepetitions = 30;
constexpr double kMinTimeSeconds = 0.05;

// The usage objects as the wire carries them: the `usage` field of a report.
const msgpack::object_handle& openai_chat_usage() {
  static const msgpack::object_handle h = turnout::test::from_json(R"({
    "prompt_tokens": 1500, "completion_tokens": 300, "total_tokens": 1800,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                  "rejected_prediction_tokens": 0}})");
  return h;
}

const msgpack::object_handle& anthropic_usage() {
  static const msgpack::object_handle h = turnout::test::from_json(R"({
    "input_tokens": 50, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 100000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 500, "service_tier": "standard"})");
  return h;
}

PriceCatalog catalog(const char* input, const char* output, const char* read, const char* write_5m,
                     const char* write_1h) {
  PriceCatalog c;
  c.present = true;
  c.base = PriceRates{turnout::parse_usd_per_mtok(input).value(), turnout::parse_usd_per_mtok(output).value(),
                      turnout::parse_usd_per_mtok(read).value(), turnout::parse_usd_per_mtok(write_5m).value(),
                      turnout::parse_usd_per_mtok(write_1h).value()};
  return c;
}

const PriceCatalog& gpt_4_1() {
  static const PriceCatalog c = catalog("2", "8", "0.50", "2", "2");
  return c;
}

const PriceCatalog& claude_sonnet_4() {
  static const PriceCatalog c = [] {
    PriceCatalog p = catalog("3", "15", "0.30", "3.75", "6");
    p.tiers.push_back({200'000, catalog("6", "22.50", "0.60", "7.50", "12").base});
    return p;
  }();
  return c;
}

// Baseline: find one key in the same map and read its integer — the floor any normalizer pays.
void read_one_field(benchmark::State& state) {
  const msgpack::object* usage = &openai_chat_usage().get();
  for (auto _ : state) {
    benchmark::DoNotOptimize(usage);  // also a memory clobber: the map is re-read every iteration
    std::uint64_t tokens = 0;
    const msgpack::object_map& m = usage->via.map;
    for (std::uint32_t i = 0; i < m.size; ++i) {
      const msgpack::object& k = m.ptr[i].key;
      if (std::string_view(k.via.str.ptr, k.via.str.size) == "prompt_tokens") {
        tokens = m.ptr[i].val.via.u64;
        break;
      }
    }
    benchmark::DoNotOptimize(tokens);
  }
}

void run_normalize_and_price(benchmark::State& state, Provider provider, const msgpack::object& usage,
                             const PriceCatalog& price) {
  for (auto _ : state) {
    auto normalized = turnout::normalize_usage(provider, usage);
    if (!normalized) {
      state.SkipWithError(normalized.error().message.c_str());
      break;
    }
    auto cost = turnout::price_usage(price, *normalized);
    benchmark::DoNotOptimize(cost);
  }
}

void normalize_and_price_openai_chat(benchmark::State& state) {
  run_normalize_and_price(state, Provider::openai, openai_chat_usage().get(), gpt_4_1());
}

void normalize_and_price_anthropic(benchmark::State& state) {
  run_normalize_and_price(state, Provider::anthropic, anthropic_usage().get(), claude_sonnet_4());
}

BENCHMARK(read_one_field)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds);
BENCHMARK(normalize_and_price_openai_chat)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds);
BENCHMARK(normalize_and_price_anthropic)->Repetitions(kRepetitions)->MinTime(kMinTimeSeconds);

}  // namespace

int main(int argc, char** argv) {
  // The 200 ns target is absolute (see the medians); the ratios make runs on different machines comparable.
  return turnout::bench::run_and_print(
      argc, argv,
      {{"openai_chat_vs_read_one_field", "normalize_and_price_openai_chat", "read_one_field", 0},
       {"anthropic_vs_read_one_field", "normalize_and_price_anthropic", "read_one_field", 0}});
}
