#pragma once
// Feeds a KV-event subscriber's batches to a Router's pool directories. Replicas are addressed by
// (target name, replica endpoint), resolved on every batch against whichever Router `current()`
// returns, so a sidecar that swaps Routers on reload keeps its subscriptions.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "turnout/io/kv_subscriber.hpp"
#include "turnout/router.hpp"

namespace turnout::io {

struct ReplicaName {
  std::string target;
  std::string endpoint;
};

/// Every replica of `config` that names a `kv_events` publisher, in config order.
inline std::pair<std::vector<KvPublisher>, std::vector<ReplicaName>> kv_publishers(const Config& config) {
  std::pair<std::vector<KvPublisher>, std::vector<ReplicaName>> out;
  for (const auto& t : config.targets) {
    for (const auto& r : t.replicas) {
      if (r.kv_events.empty()) continue;
      out.first.push_back({r.kv_events, r.kv_replay});
      out.second.push_back({t.name, r.endpoint});
    }
  }
  return out;
}

class RouterKvSink : public KvEventSink {
 public:
  using RouterSource = std::function<std::shared_ptr<Router>()>;

  RouterKvSink(RouterSource current, std::vector<ReplicaName> replicas)
      : current_(std::move(current)), replicas_(std::move(replicas)) {}

  void on_batch(std::size_t publisher, const KvEventBatch& batch) override {
    auto router = current_();
    if (auto where = resolve(*router, publisher))
      (void)router->apply_kv_events(where->first, where->second, batch, now());
  }
  void on_reset(std::size_t publisher, const std::string& /*reason*/) override {
    auto router = current_();
    if (auto where = resolve(*router, publisher)) (void)router->reset_kv(where->first, where->second);
  }
  void on_rejected(std::size_t /*publisher*/, const std::string& /*reason*/) override {}  // counted in stats()

 private:
  static TimeMs now() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  // The (target, replica) indices of a publisher in this Router's table; none if a reload removed it.
  std::optional<std::pair<std::uint32_t, std::uint32_t>> resolve(const Router& router, std::size_t publisher) const {
    const Config& config = *router.config();
    const ReplicaName& name = replicas_[publisher];
    const std::uint32_t t = config.find_target(name.target);
    if (t == kNone) return std::nullopt;
    const auto& reps = config.targets[t].replicas;
    for (std::uint32_t i = 0; i < reps.size(); ++i) {
      if (reps[i].endpoint == name.endpoint) return std::pair{t, i};
    }
    return std::nullopt;
  }

  RouterSource current_;
  std::vector<ReplicaName> replicas_;
};

}  // namespace turnout::io
