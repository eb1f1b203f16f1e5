// decide() for a scenario over 8 targets (issue target: median <= 1 us), and the full Router
// route+report commit path, against the cheapest thing any sticky router does: hashing the key.

#include <xxhash.h>

#include <string>
#include <vector>

#include "bench_json.hpp"
#include "turnout/policy.hpp"
#include "turnout/router.hpp"

namespace {

using namespace turnout;

// 6 MaaS targets and 2 self-hosted pools of 4 replicas; 8 weighted routes and a 3-deep fallback.
std::string eight_target_yaml() {
  std::string y = "version: 1\ntargets:\n";
  for (int i = 0; i < 6; ++i) {
    y += "  maas-" + std::to_string(i) +
         ": {kind: maas, provider: openai, model: m, data_classes: [public, deidentified], context_window: 128000, "
         "price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}}\n";
  }
  for (int i = 0; i < 2; ++i) {
    y += "  pool-" + std::to_string(i) +
         ":\n    kind: self_hosted\n    data_classes: [public, deidentified, restricted]\n    context_window: 131072\n"
         "    cost: {gpus_per_replica: 2, usd_per_gpu_hour: 2.99, prefill_tokens_per_s: 12000, decode_tokens_per_s: "
         "2400}\n"
         "    replicas:\n";
    for (int r = 0; r < 4; ++r) {
      y +=
          "      - {endpoint: \"http://127.0.0.1:" + std::to_string(8000 + 10 * i + r) + "\", max_inflight: 1000000}\n";
    }
  }
  y += "scenarios:\n  s:\n    data_class: deidentified\n    routes:\n";
  const int weights[8] = {30, 20, 10, 10, 10, 10, 5, 5};
  const char* names[8] = {"pool-0", "pool-1", "maas-0", "maas-1", "maas-2", "maas-3", "maas-4", "maas-5"};
  for (int i = 0; i < 8; ++i) {
    y += "      - {target: " + std::string(names[i]) + ", weight: " + std::to_string(weights[i]) + "}\n";
  }
  y += "    fallback: [maas-0, maas-1, maas-2]\n    spillover: {target: maas-0, when_inflight_ratio: 0.9}\n";
  return y;
}

const ConfigPtr& config() {
  static const ConfigPtr c = *load_config_text(eight_target_yaml(), "bench.yaml");
  return c;
}

std::vector<std::string> keys() {
  std::vector<std::string> k;
  for (int i = 0; i < 1024; ++i) k.push_back("conversation-" + std::to_string(i * 7919));
  return k;
}

constexpr TimeMs kNow = 1'767'225'600'000;

void baseline_key_hash(benchmark::State& state) {
  const auto k = keys();
  std::size_t i = 0;
  for (auto _ : state) {
    const auto& key = k[i++ & 1023];
    benchmark::DoNotOptimize(XXH3_64bits_withSeed(key.data(), key.size(), 0));
  }
}

void decide_8_targets(benchmark::State& state) {
  const auto k = keys();
  const RouterState st(*config());
  Request r;
  r.scenario = 0;
  r.input_tokens = 1500;
  r.max_output_tokens = 400;
  r.now = kNow;
  std::size_t i = 0;
  for (auto _ : state) {
    r.key = k[i & 1023];
    auto d = decide(*config(), st, r, 0, ++i);
    benchmark::DoNotOptimize(d);
  }
}

void router_route_and_report(benchmark::State& state) {
  const auto k = keys();
  Router router(config());
  RouteRequest r;
  r.scenario = "s";
  r.input_tokens = 1500;
  r.max_output_tokens = 400;
  r.now = kNow;
  std::size_t i = 0;
  for (auto _ : state) {
    r.key = k[i++ & 1023];
    auto d = router.route(r);
    OutcomeReport o;
    o.decision_id = d->id;
    o.target = router.config()->targets[d->placement.target].name;
    o.now = kNow;
    benchmark::DoNotOptimize(router.report(o));
  }
}

BENCHMARK(baseline_key_hash)->Repetitions(25)->MinTime(0.02);
BENCHMARK(decide_8_targets)->Repetitions(25)->MinTime(0.02);
BENCHMARK(router_route_and_report)->Repetitions(25)->MinTime(0.02);

}  // namespace

int main(int argc, char** argv) {
  return turnout::bench::run_and_print(argc, argv,
                                       {{"decide_vs_key_hash", "decide_8_targets", "baseline_key_hash", 0},
                                        {"route_report_vs_decide", "router_route_and_report", "decide_8_targets", 0}});
}
