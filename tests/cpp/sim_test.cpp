// The what-if engine: the one retry/fallback policy (AttemptPolicy) and the discrete-event simulator
// over the real Router, checked against invariants (every request ends once, GPU-hours, Little's law),
// queueing theory (M/M/c against Erlang C) and its bad-input errors.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "test_configs.hpp"
#include "turnout/attempts.hpp"
#include "turnout/sim/simulator.hpp"

namespace turnout {
namespace {

using sim::kMicrosPerMs;
using sim::kMicrosPerS;
using sim::RequestOutcome;
using sim::SimOptions;
using sim::SimResult;
using sim::Simulator;
using sim::TargetModel;
using sim::TraceRequest;

// ---- AttemptPolicy ---------------------------------------------------------------------------------

TEST(AttemptPolicy, ServedOnTheFirstAttempt) {
  AttemptPolicy p;
  p.start(3);
  const Step s = p.after_attempt(Status::ok, -1, 1000);
  EXPECT_EQ(s.next, NextStep::served);
  EXPECT_EQ(s.candidate, 0U);
  EXPECT_FALSE(p.on_fallback());
  EXPECT_EQ(p.attempts(), 1U);
}

TEST(AttemptPolicy, RateLimitedHonoursRetryAfterThenFailsOverAfterTheRetryLimit) {
  RetrySpec spec;
  spec.max_retries = 2;
  AttemptPolicy p(spec, 7);
  p.start(2);
  Step s = p.after_attempt(Status::rate_limited, 1500, 10'000);
  EXPECT_EQ(s.next, NextStep::retry);
  EXPECT_EQ(s.candidate, 0U);
  EXPECT_EQ(s.at, 11'500);  // exactly the Retry-After
  s = p.after_attempt(Status::rate_limited, 200, 11'500);
  EXPECT_EQ(s.next, NextStep::retry);
  EXPECT_EQ(s.at, 11'700);
  s = p.after_attempt(Status::rate_limited, 200, 11'700);  // third 429: the retry limit is reached
  EXPECT_EQ(s.next, NextStep::fail_over);
  EXPECT_EQ(s.candidate, 1U);
  EXPECT_EQ(s.at, 11'700);
  EXPECT_TRUE(p.on_fallback());
  s = p.after_attempt(Status::ok, -1, 12'000);
  EXPECT_EQ(s.next, NextStep::served);
  EXPECT_EQ(p.attempts(), 4U);
}

TEST(AttemptPolicy, ARetryAfterLongerThanTheLimitFailsOverAtOnce) {
  RetrySpec spec;
  spec.max_retry_after_ms = 5'000;
  AttemptPolicy p(spec);
  p.start(2);
  const Step s = p.after_attempt(Status::rate_limited, 5'001, 0);
  EXPECT_EQ(s.next, NextStep::fail_over);
  EXPECT_EQ(s.candidate, 1U);
}

TEST(AttemptPolicy, ServerErrorsBackOffExponentiallyWithJitterUnderTheCap) {
  RetrySpec spec;
  spec.max_retries = 6;
  spec.base_backoff_ms = 100;
  spec.backoff_multiplier = 2.0;
  spec.max_backoff_ms = 1'000;
  spec.jitter = 0.5;
  AttemptPolicy p(spec, 3);
  EXPECT_EQ(p.backoff_ms(1), 100);
  EXPECT_EQ(p.backoff_ms(2), 200);
  EXPECT_EQ(p.backoff_ms(4), 800);
  EXPECT_EQ(p.backoff_ms(5), 1'000);  // capped
  EXPECT_EQ(p.backoff_ms(60), 1'000);
  p.start(1);
  TimeMs now = 0;
  for (std::uint32_t retry = 1; retry <= 6; ++retry) {
    const Step s = p.after_attempt(Status::error, -1, now);
    ASSERT_EQ(s.next, NextStep::retry) << retry;
    const std::int64_t wait = s.at - now;
    EXPECT_GE(wait, p.backoff_ms(retry) / 2) << retry;  // jitter 0.5: within [b/2, b]
    EXPECT_LE(wait, p.backoff_ms(retry)) << retry;
    now = s.at;
  }
  EXPECT_EQ(p.after_attempt(Status::error, -1, now).next, NextStep::give_up);  // no fallback left
}

TEST(AttemptPolicy, JitterIsDeterministicForASeedAndDiffersAcrossSeeds) {
  auto waits = [](std::uint64_t seed) {
    RetrySpec spec;
    spec.max_retries = 5;
    AttemptPolicy p(spec, seed);
    p.start(1);
    std::vector<TimeMs> out;
    for (int i = 0; i < 5; ++i) out.push_back(p.after_attempt(Status::error, -1, 0).at);
    return out;
  };
  EXPECT_EQ(waits(1), waits(1));
  EXPECT_NE(waits(1), waits(2));
}

TEST(AttemptPolicy, TimeoutsAndContextOverflowFailOverAndGiveUpWhenNoneIsLeft) {
  AttemptPolicy p;
  p.start(3);
  EXPECT_EQ(p.after_attempt(Status::timeout, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(p.candidate(), 1U);
  EXPECT_EQ(p.after_attempt(Status::context_overflow, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(p.candidate(), 2U);
  const Step s = p.after_attempt(Status::context_overflow, -1, 0);  // overflowed on every target
  EXPECT_EQ(s.next, NextStep::give_up);
  EXPECT_EQ(s.candidate, 2U);
}

TEST(AttemptPolicy, AuthAndBillingFailOverAtOnceWithoutRetryingTheTarget) {
  for (const FailureClass c : {FailureClass::auth, FailureClass::billing}) {
    AttemptPolicy p;  // max_retries 2: a transient failure would retry this target first
    p.start(2);
    const Step s = p.after_failure(c, -1, 100);
    EXPECT_EQ(s.next, NextStep::fail_over) << to_string(c);
    EXPECT_EQ(s.candidate, 1U);
    EXPECT_EQ(s.at, 100);
    EXPECT_EQ(p.after_failure(c, -1, 200).next, NextStep::give_up) << to_string(c);  // no candidate left
    EXPECT_EQ(failure_status(c), Status::error);
  }
}

TEST(AttemptPolicy, ARetryNeverSpendsTheAttemptsLaterCandidatesNeed) {
  RetrySpec spec;
  spec.max_retries = 5;
  spec.max_attempts = 3;
  AttemptPolicy p(spec);
  p.start(3);  // two fallbacks: each keeps one of the three attempts
  EXPECT_EQ(p.after_failure(FailureClass::transient, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(p.candidate(), 1U);
  EXPECT_EQ(p.after_failure(FailureClass::transient, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(p.candidate(), 2U);
  EXPECT_EQ(p.after_failure(FailureClass::transient, -1, 0).next, NextStep::give_up);
  p.start(1);  // no fallback: the attempts go to retries
  EXPECT_EQ(p.after_failure(FailureClass::transient, -1, 0).next, NextStep::retry);
  EXPECT_EQ(p.after_failure(FailureClass::rate_limited, 10, 0).next, NextStep::retry);
  EXPECT_EQ(p.after_failure(FailureClass::transient, -1, 0).next, NextStep::give_up);
}

TEST(AttemptPolicy, ATargetThatCannotTakeTheRequestFailsOverAtOnce) {
  AttemptPolicy p;
  p.start(2);
  EXPECT_EQ(p.after_failure(FailureClass::not_found, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(failure_status(FailureClass::not_found), Status::error);
}

TEST(AttemptPolicy, AnInvalidRequestGivesUpOnTheFirstTarget) {
  AttemptPolicy p;
  p.start(3);
  const Step s = p.after_failure(FailureClass::invalid_request, -1, 0);
  EXPECT_EQ(s.next, NextStep::give_up);
  EXPECT_EQ(s.candidate, 0U);
}

TEST(AttemptPolicy, EveryFailureClassHasANameAndAStatusThatClassifyMapsBack) {
  for (std::size_t i = 0; i < kFailureClassCount; ++i) {
    const auto c = static_cast<FailureClass>(i);
    EXPECT_EQ(failure_class_from_string(to_string(c)), c);
    const Status s = failure_status(c);
    // The classes with a status of their own round-trip; the rest are errors, classified transient.
    EXPECT_EQ(classify(s), s == Status::error ? FailureClass::transient : c) << to_string(c);
  }
  EXPECT_FALSE(failure_class_from_string("overloaded").has_value());
}

TEST(AttemptPolicy, AContentFilterPassesThroughWithoutTryingAFallback) {
  AttemptPolicy p;
  p.start(3);
  EXPECT_EQ(p.after_attempt(Status::content_filter, -1, 0).next, NextStep::give_up);
  EXPECT_EQ(p.candidate(), 0U);
}

TEST(AttemptPolicy, MaxAttemptsBoundsEverything) {
  RetrySpec spec;
  spec.max_retries = 100;
  spec.max_attempts = 3;
  AttemptPolicy p(spec);
  p.start(5);  // more candidates than attempts: no retry, each attempt a new candidate
  EXPECT_EQ(p.after_attempt(Status::error, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(p.after_attempt(Status::error, -1, 0).next, NextStep::fail_over);
  EXPECT_EQ(p.after_attempt(Status::error, -1, 0).next, NextStep::give_up);
  EXPECT_EQ(p.attempts(), 3U);
  p.start(1);
  EXPECT_EQ(p.after_attempt(Status::error, -1, 0).next, NextStep::retry);
  EXPECT_EQ(p.after_attempt(Status::error, -1, 0).next, NextStep::retry);
  EXPECT_EQ(p.after_attempt(Status::error, -1, 0).next, NextStep::give_up);
}

TEST(AttemptPolicy, RefusedRoutesRetryWhileCapacityMayFreeAndGiveUpOnABudget) {
  RetrySpec spec;
  spec.max_route_retries = 2;
  AttemptPolicy p(spec);
  p.start(0);
  EXPECT_EQ(p.after_refusal(ErrorCode::no_eligible_target, 0).next, NextStep::retry);
  EXPECT_EQ(p.after_refusal(ErrorCode::no_eligible_target, 0).next, NextStep::retry);
  EXPECT_EQ(p.after_refusal(ErrorCode::no_eligible_target, 0).next, NextStep::give_up);
  p.start(0);
  EXPECT_EQ(p.after_refusal(ErrorCode::budget_exhausted, 0).next, NextStep::give_up);
}

TEST(AttemptPolicy, ClassifiesEveryStatus) {
  EXPECT_EQ(classify(Status::ok), FailureClass::none);
  EXPECT_EQ(classify(Status::rate_limited), FailureClass::rate_limited);
  EXPECT_EQ(classify(Status::error), FailureClass::transient);
  EXPECT_EQ(classify(Status::timeout), FailureClass::timeout);
  EXPECT_EQ(classify(Status::context_overflow), FailureClass::context_overflow);
  EXPECT_EQ(classify(Status::content_filter), FailureClass::content_filter);
}

TEST(AttemptPolicy, ASpecOutOfRangeIsAnError) {
  auto code_of = [](RetrySpec s) {
    auto v = s.validate();
    return v ? std::string("ok") : v.error().message;
  };
  EXPECT_EQ(code_of(RetrySpec{}), "ok");
  RetrySpec s;
  s.jitter = 1.5;
  EXPECT_NE(code_of(s).find("jitter"), std::string::npos);
  s = RetrySpec{};
  s.backoff_multiplier = 0.5;
  EXPECT_NE(code_of(s).find("backoff_multiplier"), std::string::npos);
  s = RetrySpec{};
  s.max_backoff_ms = 1;
  EXPECT_NE(code_of(s).find("max_backoff_ms"), std::string::npos);
  s = RetrySpec{};
  s.max_attempts = 0;
  EXPECT_NE(code_of(s).find("max_attempts"), std::string::npos);
}

// ---- The simulator ---------------------------------------------------------------------------------

/// Two MaaS targets (and one only for confidential data, which no scenario uses) and a pool of 3 replicas x 2 GPUs
/// (precise KV events); a public scenario over all of them with fallbacks, and a restricted one only the pool may
/// serve.
constexpr const char* kMixedYaml = R"(version: 1
targets:
  api:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  backup:
    kind: maas
    provider: anthropic
    model: claude-sonnet-4-20250514
    data_classes: [public]
    context_window: 200000
    price: {input_per_mtok: 3.00, output_per_mtok: 15.00, cache_read_per_mtok: 0.30, cache_write_5m_per_mtok: 3.75,
            cache_write_1h_per_mtok: 6.00}
  vault:
    kind: maas
    provider: openai
    model: gpt-4.1
    data_classes: [confidential]
    context_window: 100000
    price: {input_per_mtok: 2.00, cache_read_per_mtok: 0.50, output_per_mtok: 8.00}
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public, restricted]
    context_window: 32000
    cost: {gpus_per_replica: 2, usd_per_gpu_hour: 2.00, prefill_tokens_per_s: 10000, decode_tokens_per_s: 2000}
    kv: {block_size: 16, capacity_blocks: 4096}
    replicas:
      - {endpoint: "http://127.0.0.1:9001", kv_events: "tcp://127.0.0.1:5601", max_inflight: 16}
      - {endpoint: "http://127.0.0.1:9002", kv_events: "tcp://127.0.0.1:5602", max_inflight: 16}
      - {endpoint: "http://127.0.0.1:9003", kv_events: "tcp://127.0.0.1:5603", max_inflight: 16}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 400
    routes: [{target: pool, weight: 50}, {target: api, weight: 50}]
    fallback: [backup, api]
    spillover: {target: api, when_inflight_ratio: 0.9}
  private:
    data_class: restricted
    routes: [{target: pool}]
)";

/// Where the generated traces start (simulated time is absolute: microseconds since the epoch).
constexpr sim::SimTime kStart = 1'700'000'000 * kMicrosPerS;

std::unordered_map<std::string, TargetModel> mixed_models() {
  std::unordered_map<std::string, TargetModel> m;
  TargetModel api;
  api.provider.rpm = 300;  // 5 requests/s after a minute's burst: the trace below exceeds it, so 429s happen
  api.provider.error_rate = 0.02;
  api.provider.outages.push_back(
      {.from = kStart + 60 * kMicrosPerS, .to = kStart + 120 * kMicrosPerS, .error_rate = 1.0});
  api.accept_rate = 0.9;
  m["api"] = api;
  TargetModel backup;
  backup.provider.outages.push_back({.from = kStart + 90 * kMicrosPerS,
                                     .to = kStart + 100 * kMicrosPerS,
                                     .error_rate = 1.0,
                                     .status = Status::timeout});
  m["backup"] = backup;
  TargetModel pool;
  pool.engine.max_seqs = 8;
  m["pool"] = pool;
  return m;
}

/// Multi-turn traffic: sessions share a system prompt and grow turn by turn; Poisson arrivals.
struct Trace {
  std::vector<TraceRequest> requests;
  std::vector<std::vector<std::uint32_t>> prompts;
  std::vector<std::string> keys;
};

Trace multi_turn(std::size_t n, double rate_per_s, std::uint64_t seed, const char* scenario = "chat") {
  Trace t;
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate_per_s);
  std::uniform_int_distribution<std::uint32_t> token(1, 50'000);
  std::uniform_int_distribution<int> session(0, 63);
  std::vector<std::vector<std::uint32_t>> sessions(64);
  std::vector<std::uint32_t> system(512);
  for (auto& x : system) x = token(rng);
  double at = static_cast<double>(kStart) / 1e6;
  t.keys.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    at += gap(rng);
    const int s = session(rng);
    auto& history = sessions[static_cast<std::size_t>(s)];
    if (history.empty() || history.size() > 6000) history = system;
    for (int k = 0; k < 200; ++k) history.push_back(token(rng));
    t.prompts.push_back(history);
    t.keys.push_back("session-" + std::to_string(s));
    TraceRequest r;
    r.arrival = static_cast<sim::SimTime>(at * 1e6);
    r.scenario = scenario;
    r.input_tokens = static_cast<std::int64_t>(history.size());
    r.output_tokens = 50 + static_cast<std::int64_t>(rng() % 200);
    t.requests.push_back(r);
  }
  for (std::size_t i = 0; i < n; ++i) t.requests[i].key = t.keys[i];
  return t;
}

std::unique_ptr<Simulator> make(const std::string& yaml, const std::unordered_map<std::string, TargetModel>& models,
                                SimOptions options = {}) {
  auto config = testing::load_or_die(yaml);
  auto s = Simulator::create(config, models, options);
  EXPECT_TRUE(s) << (s ? "" : s.error().message);
  return s ? std::move(s).value() : nullptr;
}

SimResult run_mixed(std::uint64_t seed, std::size_t n = 4'000) {
  SimOptions options;
  options.seed = seed;
  auto sim = make(kMixedYaml, mixed_models(), options);
  const Trace t = multi_turn(n, 25.0, seed);  // 160 s of traffic: before, during and after the outages
  for (std::size_t i = 0; i < n; ++i) {
    auto r = sim->add(t.requests[i], t.prompts[i]);
    EXPECT_TRUE(r) << (r ? "" : r.error().message);
  }
  auto res = sim->run();
  EXPECT_TRUE(res) << (res ? "" : res.error().message);
  return std::move(res).value();
}

TEST(Simulator, EveryRequestEndsExactlyOnceOnMixedTrafficWithOutagesAndRateLimits) {
  const SimResult res = run_mixed(11);
  const auto& s = res.summary;
  ASSERT_EQ(res.requests.size(), 4'000U);
  EXPECT_EQ(s.requests, 4'000U);
  EXPECT_EQ(s.served + s.fallback + s.failed, s.requests);
  std::uint64_t served = 0, fallback = 0, failed = 0, attempts = 0, retried = 0;
  for (const auto& row : res.requests) {
    ASSERT_GE(row.latency, 0);
    ASSERT_GE(row.queue, 0);
    ASSERT_LE(row.queue, row.latency);
    switch (row.outcome) {
      case RequestOutcome::served: ++served; break;
      case RequestOutcome::fallback: ++fallback; break;
      case RequestOutcome::failed: ++failed; break;
    }
    if (row.outcome == RequestOutcome::failed) {
      ASSERT_NE(row.error, nullptr);
      EXPECT_EQ(row.accepted, -1);
    } else {
      EXPECT_EQ(row.error, nullptr);
      EXPECT_NE(row.target, kNone);
      EXPECT_GE(row.attempts, 1);
      EXPECT_GE(row.ttft, 0);
      EXPECT_LE(row.ttft, row.latency);
      EXPECT_NE(row.accepted, -1);
    }
    attempts += row.attempts;
    retried += row.attempts > 1 ? 1 : 0;
  }
  EXPECT_EQ(served, s.served);
  EXPECT_EQ(fallback, s.fallback);
  EXPECT_EQ(failed, s.failed);
  // The outages and the RPM limit did act: fallbacks served requests and targets saw failed attempts.
  EXPECT_GT(s.fallback, 0U);
  std::uint64_t target_attempts = 0, failed_attempts = 0;
  for (const auto& t : s.targets) {
    target_attempts += t.attempts;
    failed_attempts += t.failed_attempts;
  }
  EXPECT_EQ(target_attempts, attempts);
  EXPECT_GT(failed_attempts, 0U);
  EXPECT_GT(retried, 0U);  // retries and fail-overs happened
  // Arrivals in the series add up.
  std::uint64_t arrivals = 0;
  for (const auto& row : res.series) arrivals += row.arrivals;
  EXPECT_EQ(arrivals, s.requests);
}

TEST(Simulator, GpuHoursAreReplicasTimesGpusTimesSimulatedTime) {
  const SimResult res = run_mixed(5, 1'000);
  const double hours = static_cast<double>(res.summary.end - res.summary.start) / (3600.0 * kMicrosPerS);
  ASSERT_GT(hours, 0);
  EXPECT_DOUBLE_EQ(res.summary.gpu_hours, 3 * 2 * hours);
}

TEST(Simulator, LittlesLawHolds) {
  // Over a run that starts and ends empty, the integral of requests in flight over time is exactly the
  // sum of their times in the system, so L = lambda x W up to floating-point rounding; a tolerance of
  // 1e-9 relative catches any request counted in flight too long, too short, or not at all.
  const SimResult res = run_mixed(3);
  const double span = static_cast<double>(res.summary.end - res.summary.start);
  const double lambda = static_cast<double>(res.summary.requests) / span;
  double w = 0;
  for (const auto& row : res.requests) w += static_cast<double>(row.latency);
  w /= static_cast<double>(res.requests.size());
  EXPECT_NEAR(res.summary.mean_in_flight, lambda * w, 1e-9 * lambda * w);
  EXPECT_GT(res.summary.mean_in_flight, 1.0);  // requests did overlap
}

TEST(Simulator, ASeedGivesIdenticalResultsTwice) {
  const SimResult a = run_mixed(21, 1'500);
  const SimResult b = run_mixed(21, 1'500);
  ASSERT_EQ(a.requests.size(), b.requests.size());
  for (std::size_t i = 0; i < a.requests.size(); ++i) {
    const auto& x = a.requests[i];
    const auto& y = b.requests[i];
    ASSERT_EQ(x.target, y.target) << i;
    ASSERT_EQ(x.replica, y.replica) << i;
    ASSERT_EQ(x.outcome, y.outcome) << i;
    ASSERT_EQ(x.attempts, y.attempts) << i;
    ASSERT_EQ(x.latency, y.latency) << i;
    ASSERT_EQ(x.ttft, y.ttft) << i;
    ASSERT_EQ(x.cached_realized, y.cached_realized) << i;
    ASSERT_EQ(x.cached_predicted, y.cached_predicted) << i;
    ASSERT_EQ(x.cost_picos, y.cost_picos) << i;
    ASSERT_EQ(x.accepted, y.accepted) << i;
  }
  EXPECT_EQ(a.summary.gpu_hours, b.summary.gpu_hours);
  const SimResult c = run_mixed(22, 1'500);
  bool differs = false;
  for (std::size_t i = 0; i < a.requests.size() && !differs; ++i)
    differs = a.requests[i].latency != c.requests[i].latency;
  EXPECT_TRUE(differs) << "another seed should change something";
}

TEST(Simulator, SelfHostedUsageCarriesTheReplicasRealizedHitsAndTheRouterPredictsThem) {
  const SimResult res = run_mixed(8, 2'000);
  std::int64_t predicted = 0, realized = 0;
  for (const auto& row : res.requests) {
    if (row.outcome == RequestOutcome::failed || row.target != 3) continue;  // the pool
    predicted += row.cached_predicted;
    realized += row.cached_realized;
    EXPECT_LE(row.cached_realized, row.input_tokens);
  }
  EXPECT_GT(realized, 0) << "multi-turn sessions reuse their prefixes on the pool";
  EXPECT_GT(predicted, 0) << "precise KV events taught the router's directory";
}

TEST(Simulator, OutputScaleLengthensTheAnswersOfAPoolAndOfAProvider) {
  // The same trace twice, the second time every target answering three times the trace's tokens: a
  // replica decodes longer (latency) and bills more completion tokens; a provider bills more output.
  auto run_scaled = [](double scale) {
    auto models = mixed_models();
    for (auto& [name, m] : models) m.output_scale = scale;
    SimOptions options;
    options.seed = 4;
    auto sim = make(kMixedYaml, models, options);
    const Trace t = multi_turn(300, 2.0, 4, "private");  // the pool only
    const Trace c = multi_turn(300, 2.0, 5, "chat");
    for (std::size_t i = 0; i < 300; ++i) {
      EXPECT_TRUE(sim->add(t.requests[i], t.prompts[i]));
      EXPECT_TRUE(sim->add(c.requests[i], c.prompts[i]));
    }
    auto res = sim->run();
    EXPECT_TRUE(res);
    return std::move(res).value();
  };
  const SimResult plain = run_scaled(1.0);
  const SimResult verbose = run_scaled(3.0);
  auto mean_latency = [](const SimResult& r, std::uint32_t scenario) {
    double sum = 0, n = 0;
    for (const auto& row : r.requests) {
      if (row.scenario != scenario || row.outcome == RequestOutcome::failed) continue;
      sum += static_cast<double>(row.latency);
      ++n;
    }
    return sum / n;
  };
  EXPECT_GT(mean_latency(verbose, 1), 2.0 * mean_latency(plain, 1));  // decode dominates on the pool
  EXPECT_GT(verbose.summary.targets[0].cost_picos, plain.summary.targets[0].cost_picos);  // api
  // The trace's tokens are what the rows keep.
  for (std::size_t i = 0; i < plain.requests.size(); ++i) {
    EXPECT_EQ(plain.requests[i].output_tokens, verbose.requests[i].output_tokens);
  }
}

/// Erlang C: the probability an arrival waits in an M/M/c queue with offered load a = lambda / mu.
double erlang_c(int c, double a) {
  double term = 1, sum = 1;  // sum_{k<c} a^k / k!
  for (int k = 1; k < c; ++k) {
    term *= a / k;
    sum += term;
  }
  const double last = term * a / c;  // a^c / c!
  const double rho = a / c;
  return last / (1 - rho) / (sum + last / (1 - rho));
}

TEST(Simulator, SingleSequenceReplicasMatchTheMMcQueue) {
  // c single-sequence replicas whose service is exponential (output lengths geometric with a mean of
  // 1000 one-millisecond decode steps, no prefill or step overhead), Poisson arrivals at rho = 0.7, the
  // router's least-loaded placement with one request per replica, and the workers' FIFO admission
  // queue: an M/M/c queue. With 300k requests (~30 simulated hours) the mean wait of seeds 42, 43 and 44
  // came within 2.9 %, 0.9 % and 2.4 % of Erlang C (the estimate's own noise; the seed is fixed).
  constexpr int kC = 4;
  constexpr double kRho = 0.7;
  constexpr double kServiceMs = 1000;
  const std::string yaml = R"(version: 1
targets:
  pool:
    kind: self_hosted
    model: m
    data_classes: [public]
    context_window: 1000000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 1.00}
    replicas:
      - {endpoint: "http://127.0.0.1:9001", max_inflight: 1}
      - {endpoint: "http://127.0.0.1:9002", max_inflight: 1}
      - {endpoint: "http://127.0.0.1:9003", max_inflight: 1}
      - {endpoint: "http://127.0.0.1:9004", max_inflight: 1}
scenarios:
  work:
    data_class: public
    max_output_tokens: 100000
    routes: [{target: pool}]
)";
  TargetModel pool;
  pool.engine.max_seqs = 1;
  pool.engine.step = {.overhead_ms = 0, .ms_per_prefill_token = 0, .ms_per_decode_seq = 1.0};
  SimOptions options;
  options.admission_queue = true;
  options.seed = 1;
  auto sim = make(yaml, {{"pool", pool}}, options);
  ASSERT_NE(sim, nullptr);
  constexpr std::size_t kN = 300'000;
  const double lambda_per_ms = kRho * kC / kServiceMs;
  std::mt19937_64 rng(42);
  std::exponential_distribution<double> gap(lambda_per_ms);
  std::geometric_distribution<std::int64_t> length(1.0 / kServiceMs);
  const std::vector<std::uint32_t> prompt(16, 7);
  double at_ms = 1.7e12;
  for (std::size_t i = 0; i < kN; ++i) {
    at_ms += gap(rng);
    TraceRequest r;
    r.arrival = static_cast<sim::SimTime>(at_ms * kMicrosPerMs);
    r.scenario = "work";
    r.input_tokens = 16;
    r.output_tokens = 1 + length(rng);
    ASSERT_TRUE(sim->add(r, prompt));
  }
  auto res = sim->run();
  ASSERT_TRUE(res) << res.error().message;
  double wait = 0, service = 0;
  for (const auto& row : res->requests) {
    ASSERT_NE(row.outcome, RequestOutcome::failed);
    wait += static_cast<double>(row.queue);
    service += static_cast<double>(row.latency - row.queue);
  }
  wait /= kN * 1000.0;  // ms
  service /= kN * 1000.0;
  // The service the replicas really gave (step granularity included) sets mu.
  const double a = lambda_per_ms * service;
  const double expected = erlang_c(kC, a) * service / (kC - a);
  EXPECT_NEAR(service, kServiceMs, 0.02 * kServiceMs);
  EXPECT_NEAR(wait, expected, 0.05 * expected) << "mean wait " << wait << " ms, Erlang C " << expected << " ms";
  std::printf("M/M/%d: mean wait %.2f ms, Erlang C %.2f ms (service %.2f ms)\n", kC, wait, expected, service);
}

TEST(Simulator, ProgressIsReportedAndCanStopTheRun) {
  auto sim = make(kMixedYaml, mixed_models());
  const Trace t = multi_turn(1'000, 25.0, 2);
  for (std::size_t i = 0; i < t.requests.size(); ++i) ASSERT_TRUE(sim->add(t.requests[i], t.prompts[i]));
  std::size_t calls = 0;
  auto res = sim->run([&](std::size_t done, std::size_t total) {
    EXPECT_EQ(total, 1'000U);
    EXPECT_LE(done, total);
    return ++calls < 10;
  });
  ASSERT_TRUE(res);
  EXPECT_TRUE(res->stopped);
  EXPECT_EQ(calls, 10U);
  EXPECT_LT(res->summary.served + res->summary.fallback + res->summary.failed, 1'000U);
  auto again = sim->run();
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::invalid_argument);
}

// ---- Bad input -------------------------------------------------------------------------------------

TEST(Simulator, BadModelsAreClearErrors) {
  auto config = testing::load_or_die(kMixedYaml);
  auto unknown = Simulator::create(config, {{"nope", TargetModel{}}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::unknown_target);
  EXPECT_NE(unknown.error().message.find("'nope'"), std::string::npos);

  TargetModel bad_rate;
  bad_rate.accept_rate = 1.5;
  auto r = Simulator::create(config, {{"api", bad_rate}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
  EXPECT_NE(r.error().message.find("accept_rate"), std::string::npos);

  for (const double scale : {0.0, -1.0, 100.5, std::nan("")}) {
    TargetModel bad_scale;
    bad_scale.output_scale = scale;
    r = Simulator::create(config, {{scale < 0 ? "pool" : "api", bad_scale}});
    ASSERT_FALSE(r) << scale;
    EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);
    EXPECT_NE(r.error().message.find("output_scale must be > 0 and <= 100"), std::string::npos) << r.error().message;
  }

  TargetModel bad_engine;
  bad_engine.engine.max_seqs = 0;
  r = Simulator::create(config, {{"pool", bad_engine}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("max_seqs"), std::string::npos);

  TargetModel bad_provider;
  bad_provider.provider.error_rate = -1;
  r = Simulator::create(config, {{"api", bad_provider}});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::invalid_argument);

  SimOptions bad_retry;
  bad_retry.retry.jitter = 2;
  r = Simulator::create(config, {}, bad_retry);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("jitter"), std::string::npos);
}

TEST(Simulator, BadRequestsAreClearErrors) {
  auto sim = make(kMixedYaml, mixed_models());
  const std::vector<std::uint32_t> prompt(100, 1);
  TraceRequest r;
  r.arrival = 1'700'000'000 * kMicrosPerS;
  r.scenario = "chat";
  r.input_tokens = 100;
  r.output_tokens = 10;
  ASSERT_TRUE(sim->add(r, prompt));

  auto expect_error = [&](TraceRequest bad, ErrorCode code, const char* words) {
    auto res = sim->add(bad, prompt);
    ASSERT_FALSE(res) << words;
    EXPECT_EQ(res.error().code, code) << res.error().message;
    EXPECT_NE(res.error().message.find(words), std::string::npos) << res.error().message;
  };
  TraceRequest bad = r;
  bad.scenario = "nope";
  expect_error(bad, ErrorCode::unknown_scenario, "'nope'");
  bad = r;
  bad.data_class = "secret-sauce";
  expect_error(bad, ErrorCode::invalid_argument, "'secret-sauce'");
  bad = r;
  bad.data_class = "confidential";  // a class of the table (vault's), but no target of "chat" may take it
  expect_error(bad, ErrorCode::no_eligible_target, "data class 'confidential'");
  bad = r;
  bad.scenario = "private";
  bad.input_tokens = 40'000;  // the pool's window is 32000 and its KV cache 65536 tokens
  expect_error(bad, ErrorCode::no_eligible_target, "impossible demand");
  bad = r;
  bad.output_tokens = 0;
  expect_error(bad, ErrorCode::invalid_argument, "output_tokens");
  bad = r;
  bad.input_tokens = 50;  // fewer than the prompt's 100 tokens
  expect_error(bad, ErrorCode::invalid_argument, "more tokens than input_tokens");
  bad = r;
  bad.arrival = -1;
  expect_error(bad, ErrorCode::invalid_argument, "arrival");
  auto blocks = sim->add_blocks(r, std::vector<std::uint64_t>{1, 2}, 0);
  ASSERT_FALSE(blocks);
  EXPECT_NE(blocks.error().message.find("block_tokens"), std::string::npos);
  EXPECT_EQ(sim->size(), 1U);  // nothing bad was added
}

TEST(Simulator, ARouterRefusalFailsTheRequestVisibly) {
  // A budget of a millionth of a dollar: the router refuses (budget_exhausted) and the request fails
  // with that code, counted, never dropped.
  const std::string yaml = R"(version: 1
targets:
  api:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
scenarios:
  chat:
    data_class: public
    routes: [{target: api}]
    budget: {usd_per_day: 0.000001}
)";
  auto sim = make(yaml, {});
  const std::vector<std::uint32_t> prompt(2000, 3);
  TraceRequest r;
  r.arrival = 1'700'000'000 * kMicrosPerS;
  r.scenario = "chat";
  r.input_tokens = 2000;
  r.output_tokens = 100;
  ASSERT_TRUE(sim->add(r, prompt));
  auto res = sim->run();
  ASSERT_TRUE(res) << res.error().message;
  ASSERT_EQ(res->requests.size(), 1U);
  EXPECT_EQ(res->requests[0].outcome, RequestOutcome::failed);
  ASSERT_NE(res->requests[0].error, nullptr);
  EXPECT_STREQ(res->requests[0].error, "budget_exhausted");
  EXPECT_EQ(res->requests[0].attempts, 0);
  EXPECT_EQ(res->summary.failed, 1U);
}

TEST(Simulator, PromptsGivenAsBlockHashesAreSynthesizedAndShareTheirPrefixes) {
  auto sim = make(kMixedYaml, mixed_models());
  TraceRequest r;
  r.scenario = "private";  // the pool only
  r.output_tokens = 20;
  const std::vector<std::uint64_t> blocks{11, 22, 33, 44};
  for (int i = 0; i < 20; ++i) {
    r.arrival = (1'700'000'000 + i * 10) * kMicrosPerS;  // one at a time: the second finds the first's cache
    r.input_tokens = 4 * 512;
    ASSERT_TRUE(sim->add_blocks(r, blocks, 512));
  }
  auto res = sim->run();
  ASSERT_TRUE(res) << res.error().message;
  std::int64_t hits = 0;
  for (const auto& row : res->requests) {
    EXPECT_EQ(row.outcome, RequestOutcome::served);
    hits += row.cached_realized;
  }
  EXPECT_GT(hits, 0);
}

}  // namespace
}  // namespace turnout
