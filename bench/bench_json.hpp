#pragma once
// Runs the registered Google Benchmarks with repetitions and prints one JSON document: for each
// benchmark the median and p99 (over repetitions) of the time per operation, and the ratios this
// program declares, each against a baseline measured in the same run (machines here are noisy).

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace turnout::bench {

struct Ratio {
  std::string name;       ///< e.g. "decide_vs_key_hash"
  std::string benchmark;  ///< numerator
  std::string baseline;   ///< denominator
  double target = 0;      ///< the issue's target for this ratio (0 = none)
};

class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs) {
      if (run.run_type != Run::RT_Iteration || run.error_occurred) continue;
      samples_[run.run_name.function_name].push_back(run.GetAdjustedRealTime());
      for (const auto& [name, counter] : run.counters) counters_[run.benchmark_name() + "." + name] = counter.value;
    }
    ConsoleReporter::ReportRuns(runs);
  }
  [[nodiscard]] const std::map<std::string, std::vector<double>>& samples() const { return samples_; }
  /// User counters (rates, sizes) of the last repetition, by "benchmark.counter".
  [[nodiscard]] const std::map<std::string, double>& counters() const { return counters_; }

 private:
  std::map<std::string, std::vector<double>> samples_;
  std::map<std::string, double> counters_;
};

inline double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const auto idx = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

/// main() body: runs everything, console table to stderr, JSON summary to stdout.
inline int run_and_print(int argc, char** argv, const std::vector<Ratio>& ratios) {
  benchmark::Initialize(&argc, argv);
  CollectingReporter reporter;
  reporter.SetOutputStream(&std::cerr);
  reporter.SetErrorStream(&std::cerr);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  std::map<std::string, std::pair<double, double>> stats;  // name -> (median, p99) in ns
  std::printf("{\n  \"unit\": \"ns\",\n  \"benchmarks\": {");
  bool first = true;
  for (const auto& [name, v] : reporter.samples()) {
    const double median = quantile(v, 0.5);
    const double p99 = quantile(v, 0.99);
    stats[name] = {median, p99};
    std::printf("%s\n    \"%s\": {\"median\": %.2f, \"p99\": %.2f, \"repetitions\": %zu}", first ? "" : ",",
                name.c_str(), median, p99, v.size());
    first = false;
  }
  std::printf("\n  },\n  \"counters\": {");
  first = true;
  for (const auto& [name, value] : reporter.counters()) {
    std::printf("%s\n    \"%s\": %.6g", first ? "" : ",", name.c_str(), value);
    first = false;
  }
  std::printf("\n  },\n  \"ratios\": {");
  first = true;
  for (const auto& r : ratios) {
    auto a = stats.find(r.benchmark);
    auto b = stats.find(r.baseline);
    if (a == stats.end() || b == stats.end()) continue;
    std::printf("%s\n    \"%s\": {\"median\": %.3f, \"p99\": %.3f, \"target\": %.3f}", first ? "" : ",", r.name.c_str(),
                a->second.first / b->second.first, a->second.second / b->second.second, r.target);
    first = false;
  }
  std::printf("\n  }\n}\n");
  return 0;
}

}  // namespace turnout::bench
