#pragma once
// Routing tables shared by the core tests.

#include <gtest/gtest.h>

#include <string>

#include "turnout/config.hpp"

namespace turnout::testing {

/// Two MaaS targets (one public-only), one self-hosted pool of two replicas, three scenarios.
inline constexpr const char* kBasicYaml = R"(version: 1
targets:
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public, deidentified]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
    breaker: {consecutive_failures: 3, cooldown_s: 10, min_requests: 10, error_rate: 0.5, window_s: 60}
  cheap:
    kind: maas
    provider: deepseek
    model: deepseek-chat
    data_classes: [public]
    context_window: 64000
    price: {input_per_mtok: 0.28, cache_read_per_mtok: 0.028, output_per_mtok: 0.42}
  pool:
    kind: self_hosted
    data_classes: [public, deidentified, restricted]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}
    breaker: {consecutive_failures: 2, cooldown_s: 5}
    replicas:
      - {endpoint: "http://127.0.0.1:9001", max_inflight: 2}
      - {endpoint: "http://127.0.0.1:9002", max_inflight: 2}
scenarios:
  summarize:
    data_class: deidentified
    max_output_tokens: 500
    routes: [{target: pool, weight: 80}, {target: mini, weight: 20}]
    fallback: [mini]
    spillover: {target: mini, when_inflight_ratio: 0.75}
    budget: {usd_per_day: 1}
  public-chat:
    data_class: public
    routes: [{target: cheap, weight: 50}, {target: mini, weight: 50}]
    fallback: [mini, cheap, pool]
  secret:
    data_class: restricted
    routes: [{target: pool}]
)";

inline ConfigPtr load_or_die(const std::string& yaml, const std::string& source = "test.yaml") {
  auto c = load_config_text(yaml, source);
  if (!c) ADD_FAILURE() << c.error().message;
  return c ? *c : nullptr;
}

}  // namespace turnout::testing
