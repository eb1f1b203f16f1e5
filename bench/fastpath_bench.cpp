// The shared-memory fast path's decision latency against the in-process Router, same table, same
// requests, same run (issue target: <= 1.5x). A Server in this process publishes its table; its
// directory is first warmed through the fast path itself, then a thread empties the rings without
// applying them (the sidecar's apply cost is its own core's, not the worker's; a worker that outruns
// it gets `unavailable` and uses the socket, counted here as `refused`).
//
// `fastpath_bench --probe-syscalls N` instead routes N requests between two marker writes to stderr,
// for bench/fastpath_syscalls.py to count the system calls in between under strace (target: none).

#include <unistd.h>

#include <atomic>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_json.hpp"
#include "sidecar/fastpath.hpp"
#include "sidecar/server.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/policy.hpp"
#include "turnout/shm/segment.hpp"

namespace {

using namespace turnout;
constexpr std::int64_t kNow = 1'767'225'600'000;

// A self-hosted pool of 8 replicas with limited KV and two MaaS targets; prefix affinity on.
constexpr const char* kTable = R"(version: 1
targets:
  pool:
    kind: self_hosted
    engine: vllm
    model: m
    data_classes: [public]
    context_window: 100000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}
    kv: {block_size: 16, capacity_blocks: 20000}
    replicas:
      - {endpoint: "http://127.0.0.1:8001", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8002", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8003", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8004", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8005", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8006", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8007", max_inflight: 100000}
      - {endpoint: "http://127.0.0.1:8008", max_inflight: 100000}
  api-a:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  api-b:
    kind: maas
    provider: anthropic
    model: claude
    data_classes: [public]
    context_window: 200000
    price: {input_per_mtok: 3, cache_read_per_mtok: 0.30, cache_write_5m_per_mtok: 3.75,
           cache_write_1h_per_mtok: 6, output_per_mtok: 15}
scenarios:
  keyed:
    data_class: public
    max_output_tokens: 400
    routes: [{target: pool, weight: 70}, {target: api-a, weight: 20}, {target: api-b, weight: 10}]
    fallback: [api-a, api-b]
  chat:
    data_class: public
    max_output_tokens: 400
    routes: [{target: pool, weight: 90}, {target: api-a, weight: 10}]
    fallback: [api-a]
    affinity: {prefix: true}
)";

// One process-wide sidecar: the table file, the Server, and its drain thread.
struct Sidecar {
  std::string name = "sy-fpbench-" + std::to_string(::getpid());
  std::string path = "/tmp/" + name + ".yaml";
  std::unique_ptr<sidecar::Server> server;
  std::unique_ptr<sidecar::RingReader> discard;  // a second reader of the same rings
  std::atomic<bool> stop{false};
  std::atomic<bool> apply{true};
  std::thread drainer;

  Sidecar() {
    std::ofstream(path) << kTable;
    auto s = sidecar::Server::start(path, name);
    if (!s) {
      std::fprintf(stderr, "cannot start: %s\n", s.error().message.c_str());
      std::exit(1);
    }
    server = std::move(s.value().server);
    discard = std::move(sidecar::RingReader::open(name).value());
    drainer = std::thread([this] {
      while (!stop.load()) {
        if (apply.load()) {
          server->drain_rings(kNow);
        } else {
          discard->drain([](std::uint32_t, std::string_view) { return shm::RecordFate{}; }, 1U << 20);
        }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    });
  }
  ~Sidecar() {
    stop = true;
    drainer.join();
    server.reset();
    namespace bip = boost::interprocess;
    bip::shared_memory_object::remove(name.c_str());
    bip::shared_memory_object::remove(client::rings_segment_name(name).c_str());
    std::remove(shm::lock_path(name).c_str());
    std::remove(path.c_str());
  }
  static Sidecar& get() {
    static Sidecar s;
    return s;
  }
};

std::vector<std::string> keys() {
  std::vector<std::string> k;
  for (int i = 0; i < 1024; ++i) k.push_back("user-" + std::to_string(i * 7919));
  return k;
}

// 64 conversations over 16 system prompts, 2,048 tokens each.
std::vector<std::vector<std::uint32_t>> prompts() {
  std::vector<std::vector<std::uint32_t>> out;
  for (std::uint32_t c = 0; c < 64; ++c) {
    std::vector<std::uint32_t> t;
    for (std::uint32_t i = 0; i < 1024; ++i) t.push_back((c % 16) * 100'000 + i);
    for (std::uint32_t i = 0; i < 1024; ++i) t.push_back(9'000'000 + c * 10'000 + i);
    out.push_back(std::move(t));
  }
  return out;
}

RouteRequest keyed(const std::string& key) {
  RouteRequest r;
  r.scenario = "keyed";
  r.key = key;
  r.input_tokens = 1500;
  r.now = kNow;
  return r;
}
RouteRequest chat(const std::vector<std::uint32_t>& tokens) {
  RouteRequest r;
  r.scenario = "chat";
  r.token_ids = tokens;
  r.input_tokens = static_cast<std::int64_t>(tokens.size());
  r.now = kNow;
  return r;
}

std::unique_ptr<client::FastClient> fast_client() {
  Sidecar& s = Sidecar::get();
  auto f = client::FastClient::attach(s.name);
  if (!f) {
    std::fprintf(stderr, "cannot attach: %s\n", f.error().message.c_str());
    std::exit(1);
  }
  // Warm the sidecar's directory with every prompt, applied for real, then only empty the rings.
  s.apply = true;
  for (const auto& p : prompts()) {
    while (!f.value()->route(chat(p))) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s.apply = false;
  return std::move(f).value();
}

// The pure decide() over the same table (no lock, no commit): the floor.
void decide_keyed(benchmark::State& state) {
  const auto k = keys();
  auto config = load_config_text(kTable, "bench").value();
  const RouterState st(*config);
  Request r;
  r.scenario = 0;
  r.input_tokens = 1500;
  r.now = kNow;
  std::size_t i = 0;
  for (auto _ : state) {
    r.key = k[i & 1023];
    benchmark::DoNotOptimize(decide(*config, st, r, 0, ++i));
  }
}

void in_process_route_keyed(benchmark::State& state) {
  const auto k = keys();
  Router router(load_config_text(kTable, "bench").value());
  std::size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(router.route(keyed(k[i++ & 1023])));
}

void fast_path_route_keyed(benchmark::State& state) {
  const auto k = keys();
  auto fast = fast_client();
  std::size_t i = 0;
  std::size_t refused = 0;
  for (auto _ : state) {
    auto d = fast->route(keyed(k[i++ & 1023]));
    if (!d) ++refused;  // ring full: the drainer fell behind
    benchmark::DoNotOptimize(d);
  }
  state.counters["refused"] = static_cast<double>(refused);
}

void in_process_route_2048(benchmark::State& state) {
  const auto p = prompts();
  Router router(load_config_text(kTable, "bench").value());
  std::size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(router.route(chat(p[i++ & 63])));
}

void fast_path_route_2048(benchmark::State& state) {
  const auto p = prompts();
  auto fast = fast_client();
  std::size_t i = 0;
  std::size_t refused = 0;
  for (auto _ : state) {
    auto d = fast->route(chat(p[i++ & 63]));
    if (!d) ++refused;
    benchmark::DoNotOptimize(d);
  }
  state.counters["refused"] = static_cast<double>(refused);
}

BENCHMARK(decide_keyed)->Repetitions(15)->MinTime(0.02);
BENCHMARK(in_process_route_keyed)->Repetitions(15)->MinTime(0.02);
BENCHMARK(fast_path_route_keyed)->Repetitions(15)->MinTime(0.02);
BENCHMARK(in_process_route_2048)->Repetitions(15)->MinTime(0.02);
BENCHMARK(fast_path_route_2048)->Repetitions(15)->MinTime(0.02);

int probe_syscalls(long n) {
  auto fast = fast_client();
  const auto k = keys();
  const auto p = prompts();
  // Warm up past every first-time allocation (the local router's pending table fills, then cycles).
  for (long i = 0; i < (1L << 18) + 20'000; ++i) {
    (void)fast->route(i % 2 == 0 ? keyed(k[i & 1023]) : chat(p[i & 63]));
    if ((i & 1023) == 0) std::this_thread::sleep_for(std::chrono::microseconds(500));  // let the drainer keep up
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const char begin[] = "probe-begin\n";
  const char end[] = "probe-end\n";
  long refused = 0;
  (void)!::write(2, begin, sizeof begin - 1);
  for (long i = 0; i < n; ++i) {
    if (!fast->route(i % 2 == 0 ? keyed(k[i & 1023]) : chat(p[i & 63]))) ++refused;
    if ((i & 63) == 63) {  // pace to what a drainer slowed by strace empties (the clock is vDSO: no syscall)
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
      while (std::chrono::steady_clock::now() < until) {
      }
    }
  }
  (void)!::write(2, end, sizeof end - 1);
  std::printf("{\"routes\": %ld, \"refused\": %ld, \"tid\": %d}\n", n, refused, static_cast<int>(::gettid()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "--probe-syscalls") == 0) {
    const int rc = probe_syscalls(std::atol(argv[2]));
    return rc;
  }
  return turnout::bench::run_and_print(
      argc, argv,
      {{"fast_path_vs_in_process_route_keyed", "fast_path_route_keyed", "in_process_route_keyed", 1.5},
       {"fast_path_vs_in_process_route_2048", "fast_path_route_2048", "in_process_route_2048", 1.5},
       {"fast_path_vs_bare_decide_keyed", "fast_path_route_keyed", "decide_keyed", 0}});
}
