// The what-if engine's speed: simulated requests per second on one core, for the default models (a
// MaaS target and a pool of 8 replicas, TargetModel{}), on a generated multi-turn trace whose prompts are
// given as prefix block hashes (Mooncake-style, 512 tokens per block). Time per operation is per
// simulated request (the run's time / its requests); the router's own route + report is the baseline.
// Counters: requests_per_s, and max_rss_mib (the whole process, trace included).

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_json.hpp"
#include "turnout/router.hpp"
#include "turnout/sim/simulator.hpp"

namespace {

using namespace turnout;

constexpr const char* kYaml = R"(version: 1
targets:
  api:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public]
    context_window: 131072
    cost: {gpus_per_replica: 2, usd_per_gpu_hour: 2.99}
    kv: {block_size: 16, capacity_blocks: 200000}
    replicas:
      - {endpoint: "http://127.0.0.1:8001", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8002", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8003", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8004", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8005", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8006", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8007", max_inflight: 64}
      - {endpoint: "http://127.0.0.1:8008", max_inflight: 64}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 1024
    routes: [{target: pool, weight: 70}, {target: api, weight: 30}]
    fallback: [api]
    spillover: {target: api, when_inflight_ratio: 0.9}
    affinity: {prefix: true}
)";

ConfigPtr config() {
  static ConfigPtr c = [] {
    auto r = load_config_text(kYaml, "sim_bench.yaml");
    if (!r) std::abort();
    return *r;
  }();
  return c;
}

/// A generated multi-turn trace: 2000 sessions sharing 16 system prompts (4 blocks each); every turn
/// adds one 512-token block to its session; Poisson arrivals at `rate` per second.
struct Trace {
  std::vector<sim::TraceRequest> requests;
  std::vector<std::uint64_t> blocks;
  std::vector<std::size_t> offsets;
  std::vector<std::string> keys;
};

Trace generate(std::size_t n, double rate, std::int64_t block_tokens, std::uint64_t seed) {
  Trace t;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  constexpr std::size_t kSessions = 2000;
  std::vector<std::vector<std::uint64_t>> sessions(kSessions);
  t.keys.reserve(kSessions);
  for (std::size_t s = 0; s < kSessions; ++s) t.keys.push_back("session-" + std::to_string(s));
  double at = 1.7e9;
  t.offsets.push_back(0);
  for (std::size_t i = 0; i < n; ++i) {
    at += gap(rng);
    const std::size_t s = rng() % kSessions;
    auto& h = sessions[s];
    if (h.empty() || h.size() >= 12) {
      const std::uint64_t system = rng() % 16;
      h = {system * 4 + 1, system * 4 + 2, system * 4 + 3, system * 4 + 4};
    }
    h.push_back(rng() | 1ULL << 63U);
    t.blocks.insert(t.blocks.end(), h.begin(), h.end());
    t.offsets.push_back(t.blocks.size());
    sim::TraceRequest r;
    r.arrival = static_cast<sim::SimTime>(at * 1e6);
    r.scenario = "chat";
    r.key = t.keys[s];
    r.input_tokens =
        static_cast<std::int64_t>(h.size()) * block_tokens - static_cast<std::int64_t>(rng() % (block_tokens / 2));
    r.output_tokens = 50 + static_cast<std::int64_t>(rng() % 400);
    t.requests.push_back(r);
  }
  return t;
}

/// Mooncake's 512-token blocks (prompts of 2.3k-6k tokens), or 16-token ones (prompts of 72-192 tokens:
/// the per-request floor, with little per-token work).
const Trace& trace(std::int64_t block_tokens) {
  static const Trace long_prompts = generate(200'000, 100.0, 512, 1);
  static const Trace short_prompts = generate(200'000, 400.0, 16, 1);
  return block_tokens == 512 ? long_prompts : short_prompts;
}

double max_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

void simulate_multi_turn(benchmark::State& state, std::int64_t block_tokens) {
  const Trace& t = trace(block_tokens);
  const auto n = t.requests.size();
  double total_s = 0;
  std::size_t total_requests = 0;
  for (auto _ : state) {
    auto sim = sim::Simulator::create(config(), {});
    if (!sim) {
      state.SkipWithError(sim.error().message.c_str());
      return;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::span<const std::uint64_t> blocks(t.blocks.data() + t.offsets[i], t.offsets[i + 1] - t.offsets[i]);
      if (!(*sim)->add_blocks(t.requests[i], blocks, block_tokens)) {
        state.SkipWithError("add failed");
        return;
      }
    }
    const auto start = std::chrono::steady_clock::now();
    auto res = (*sim)->run();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!res || res->summary.served + res->summary.fallback + res->summary.failed != n) {
      state.SkipWithError("run failed");
      return;
    }
    benchmark::DoNotOptimize(res->summary.gpu_hours);
    state.SetIterationTime(s / static_cast<double>(n));  // per simulated request
    total_s += s;
    total_requests += n;
  }
  state.counters["requests_per_s"] = static_cast<double>(total_requests) / total_s;
  state.counters["max_rss_mib"] = max_rss_mib();
}

/// The router alone on the same requests with the same (synthesized) token ids: what every simulated
/// request costs at least.
void router_route_and_report(benchmark::State& state, std::int64_t block_tokens) {
  Router router(config());
  const Trace& t = trace(block_tokens);
  constexpr std::size_t kPrompts = 4096;
  std::vector<std::vector<std::uint32_t>> prompts(kPrompts);
  for (std::size_t k = 0; k < kPrompts; ++k) {
    const std::span<const std::uint64_t> blocks(t.blocks.data() + t.offsets[k], t.offsets[k + 1] - t.offsets[k]);
    sim::synthesize_tokens(blocks, block_tokens, t.requests[k].input_tokens, k, prompts[k]);
  }
  std::size_t i = 0;
  for (auto _ : state) {
    const std::size_t k = i++ % kPrompts;
    const auto& req = t.requests[k];
    RouteRequest r;
    r.token_ids = prompts[k];
    r.scenario = "chat";
    r.key = req.key;
    r.input_tokens = req.input_tokens;
    r.max_output_tokens = req.output_tokens;
    r.now = req.arrival / 1000;
    auto d = router.route(r);
    if (!d) continue;
    OutcomeReport o;
    o.decision_id = d->id;
    o.target = router.config()->targets[d->placement.target].name;
    o.now = r.now;
    benchmark::DoNotOptimize(router.report(o));
  }
}

BENCHMARK_CAPTURE(simulate_multi_turn, long_prompts, 512)->UseManualTime()->Iterations(1)->Repetitions(5);
BENCHMARK_CAPTURE(simulate_multi_turn, short_prompts, 16)->UseManualTime()->Iterations(1)->Repetitions(5);
BENCHMARK_CAPTURE(router_route_and_report, long_prompts, 512)->Repetitions(10)->MinTime(0.05);
BENCHMARK_CAPTURE(router_route_and_report, short_prompts, 16)->Repetitions(10)->MinTime(0.05);

}  // namespace

int main(int argc, char** argv) {
  return turnout::bench::run_and_print(argc, argv,
                                       {{"simulated_request_vs_route_report_long", "simulate_multi_turn/long_prompts",
                                         "router_route_and_report/long_prompts", 0},
                                        {"simulated_request_vs_route_report_short", "simulate_multi_turn/short_prompts",
                                         "router_route_and_report/short_prompts", 0}});
}
