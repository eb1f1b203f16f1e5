#include "turnout/state.hpp"

#include <algorithm>

namespace turnout {

const char* to_string(Status status) noexcept {
  switch (status) {
    case Status::ok: return "ok";
    case Status::error: return "error";
    case Status::timeout: return "timeout";
    case Status::rate_limited: return "rate_limited";
    case Status::context_overflow: return "context_overflow";
    case Status::content_filter: return "content_filter";
  }
  return "unknown";
}

std::optional<Status> status_from_string(std::string_view name) noexcept {
  for (std::size_t i = 0; i < kStatusCount; ++i) {
    const auto s = static_cast<Status>(i);
    if (name == to_string(s)) return s;
  }
  return std::nullopt;
}

const char* to_string(ReasonCode code) noexcept {
  switch (code) {
    case ReasonCode::weight: return "weight";
    case ReasonCode::spillover: return "spillover";
    case ReasonCode::fallback: return "fallback";
    case ReasonCode::boundary: return "boundary";
    case ReasonCode::region: return "region";
    case ReasonCode::context_window: return "context_window";
    case ReasonCode::breaker_open: return "breaker_open";
    case ReasonCode::half_open_probe: return "half_open_probe";
    case ReasonCode::saturated: return "saturated";
    case ReasonCode::budget: return "budget";
    case ReasonCode::least_loaded: return "least_loaded";
    case ReasonCode::prefix_overlap: return "prefix_overlap";
    case ReasonCode::affinity: return "affinity";
  }
  return "unknown";
}

const char* to_string(Breaker::Phase phase) noexcept {
  switch (phase) {
    case Breaker::Phase::closed: return "closed";
    case Breaker::Phase::open: return "open";
    case Breaker::Phase::half_open: return "half_open";
  }
  return "unknown";
}

Breaker::Phase Breaker::phase(const BreakerSpec& spec, TimeMs now) const noexcept {
  if (phase_ == Phase::open && now - opened_at_ >= spec.cooldown_ms) return Phase::half_open;
  return phase_;
}

bool Breaker::allows(const BreakerSpec& spec, TimeMs now) const noexcept {
  switch (phase(spec, now)) {
    case Phase::closed: return true;
    case Phase::open: return false;
    case Phase::half_open: return !probe_inflight_;
  }
  return false;
}

bool Breaker::on_dispatch(const BreakerSpec& spec, TimeMs now) noexcept {
  if (phase(spec, now) != Phase::half_open) return false;
  phase_ = Phase::half_open;
  probe_inflight_ = true;
  return true;
}

void Breaker::open(TimeMs now) noexcept {
  phase_ = Phase::open;
  opened_at_ = now;
  probe_inflight_ = false;
  ++times_opened_;
}

void Breaker::roll_window(const BreakerSpec& spec, TimeMs now) noexcept {
  const std::int64_t width = std::max<std::int64_t>(1, spec.window_ms / static_cast<std::int64_t>(kBuckets));
  const std::int64_t epoch = now / width;
  if (epoch <= window_epoch_) return;  // same bucket, or a clock that went backwards: keep counting
  const std::int64_t stale = std::min<std::int64_t>(epoch - window_epoch_, kBuckets);
  for (std::int64_t i = 1; i <= stale; ++i) {
    const auto b = static_cast<std::size_t>((window_epoch_ + i) % static_cast<std::int64_t>(kBuckets));
    outcomes_[b] = 0;
    failures_[b] = 0;
  }
  window_epoch_ = epoch;
}

void Breaker::on_outcome(const BreakerSpec& spec, bool failure, bool probe, TimeMs now) noexcept {
  roll_window(spec, now);
  const auto b = static_cast<std::size_t>(window_epoch_ % static_cast<std::int64_t>(kBuckets));
  ++outcomes_[b];
  if (failure) ++failures_[b];
  consecutive_failures_ = failure ? consecutive_failures_ + 1 : 0;

  const Phase current = phase(spec, now);
  if (current == Phase::half_open) {
    if (!probe) return;  // only the probe's verdict decides; late outcomes of older requests do not
    if (failure) {
      open(now);
    } else {
      phase_ = Phase::closed;
      probe_inflight_ = false;
      outcomes_.fill(0);
      failures_.fill(0);
    }
    return;
  }
  if (current == Phase::open || !failure) return;
  if (consecutive_failures_ >= spec.consecutive_failures) {
    open(now);
    return;
  }
  std::uint64_t total = 0;
  std::uint64_t failed = 0;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    total += outcomes_[i];
    failed += failures_[i];
  }
  if (total >= spec.min_requests && static_cast<double>(failed) >= spec.error_rate * static_cast<double>(total)) {
    open(now);
  }
}

RouterState::RouterState(const Config& config) : target_count(config.targets.size()) {
  std::size_t units = 0;
  for (const auto& t : config.targets) {
    first_unit.push_back(units);
    units += t.kind == TargetKind::maas ? 1 : t.replicas.size();
  }
  breakers.resize(units);
  inflight.resize(units, 0);
  active_blocks.resize(units, 0);
  recent_load.resize(units, 0);
  cache_held.resize(units, 0);
  pools.resize(config.targets.size());
  maas_holder.assign(config.targets.size(), kNone);
  std::vector<CacheDirectory::HolderSpec> maas_specs;
  for (std::uint32_t ti = 0; ti < config.targets.size(); ++ti) {
    const Target& t = config.targets[ti];
    if (t.kind == TargetKind::maas) {
      maas_holder[ti] = static_cast<std::uint32_t>(maas_specs.size());
      maas_specs.push_back({.capacity_blocks = kMaasHolderBlocks, .ttl_ms = t.cache.ttl_s * 1000});
      continue;
    }
    const std::int64_t capacity = t.kv.capacity_blocks > 0 ? t.kv.capacity_blocks : kDefaultReplicaBlocks;
    std::vector<CacheDirectory::HolderSpec> specs(
        t.replicas.size(), {.capacity_blocks = capacity, .ttl_ms = t.kv.precise ? 0 : t.kv.ttl_s * 1000});
    pools[ti] = std::make_unique<CacheDirectory>(std::move(specs));
    pool_events.emplace(ti, std::vector<KvIngestStats>(t.replicas.size()));
    pool_groups.emplace(ti, std::vector<KvCacheGroups>(t.replicas.size()));
  }
  if (!maas_specs.empty()) maas = std::make_unique<CacheDirectory>(std::move(maas_specs));
  for (const auto& pool : pools) pool_index.push_back(pool.get());
  maas_index = maas.get();
  budgets.resize(config.scenarios.size());
  candidate_percent.resize(config.scenarios.size(), 0);
  migration_runs.resize(config.scenarios.size());
  for (std::uint32_t si = 0; si < config.scenarios.size(); ++si) {
    const auto& spec = config.scenarios[si].migration;
    if (!spec) continue;
    migration_runs[si] = start_run(*spec);
    candidate_percent[si] = turnout::candidate_percent(*spec, migration_runs[si]);
    migrating.push_back(si);
  }
  ledger.resize(config.scenarios.size() * target_count);
  listed.resize(ledger.size(), 0);
}

void RouterState::note_placement(const Target& t, std::uint32_t target, std::uint32_t replica) noexcept {
  if (t.kind != TargetKind::self_hosted || replica >= t.replicas.size()) return;
  const auto window = kRecentWindowPerReplica * static_cast<std::int64_t>(t.replicas.size());
  const std::size_t first = first_unit[target];
  for (std::size_t u = first; u < first + t.replicas.size(); ++u) recent_load[u] -= recent_load[u] / window;
  recent_load[first + replica] += kPlacementWeight;
}

void RouterState::note_held(std::uint32_t target) noexcept {
  const CacheDirectory* dir = target < pools.size() ? pools[target].get() : nullptr;
  // A client deciding from the sidecar's mapped view keeps the figures the sidecar published.
  if (dir == nullptr || pool_index[target] != dir) return;
  for (std::uint32_t r = 0; r < dir->holders(); ++r) {
    cache_held[first_unit[target] + r] = static_cast<std::int64_t>(dir->held(r));
  }
}

}  // namespace turnout
