#include "turnout/policy.hpp"

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>

#include "turnout/prefix.hpp"
#include "turnout/pricing.hpp"

namespace turnout {
namespace {

// Filters that depend only on the config and the request: data boundary, region, context window.
std::optional<ReasonCode> static_filter(const Target& t, const Scenario& s, std::uint64_t required_classes,
                                        std::int64_t needed_tokens) noexcept {
  if ((t.data_class_mask & required_classes) != required_classes) return ReasonCode::boundary;
  if (s.region_mask != 0 && (t.region == kNone || ((s.region_mask >> t.region) & 1U) == 0)) {
    return ReasonCode::region;
  }
  if (needed_tokens > t.context_window) return ReasonCode::context_window;
  return std::nullopt;
}

// How many leading blocks of the prompt each replica of a pool holds, for cache-aware ranking.
struct PoolOverlap {
  std::span<const std::uint32_t> matched;  // per replica
  std::int64_t blocks = 0;                 // the prompt's full blocks
  double weight = 1.0;                     // kv.overlap_weight
  std::int64_t slack = 0;                  // kv.balance_slack (< 0: off)
};

// Filters that depend on the state: breakers and, for pools, a replica with a free slot.
// On success fills `replica` (kNone for MaaS): with prefix overlap, the replica of least
// weight x blocks-to-prefill + active blocks (Dynamo's cost); without, the least loaded.
std::optional<ReasonCode> state_filter(const Config& config, const RouterState& state, std::uint32_t target, TimeMs now,
                                       std::uint32_t& replica, const PoolOverlap* overlap = nullptr) noexcept {
  const Target& t = config.targets[target];
  replica = kNone;
  if (t.kind == TargetKind::maas) {
    return state.breakers[state.unit(target, kNone)].allows(t.breaker, now)
               ? std::nullopt
               : std::optional<ReasonCode>(ReasonCode::breaker_open);
  }
  // Balance guard: only replicas within `slack` in-flight requests of the least busy one compete on
  // cost, so a hot prefix cannot pile its family onto one replica (SGLang's balance threshold).
  std::int64_t least_inflight = INT64_MAX;
  if (overlap != nullptr && overlap->slack >= 0) {
    for (std::uint32_t r = 0; r < t.replicas.size(); ++r) {
      const std::size_t u = state.unit(target, r);
      if (state.breakers[u].allows(t.breaker, now) && state.inflight[u] < t.replicas[r].max_inflight) {
        least_inflight = std::min(least_inflight, state.inflight[u]);
      }
    }
  }
  bool any_allowed = false;
  double best_cost = 0;
  double best_load = 2.0;
  std::uint32_t best_matched = 0;
  for (std::uint32_t r = 0; r < t.replicas.size(); ++r) {
    const std::size_t u = state.unit(target, r);
    if (!state.breakers[u].allows(t.breaker, now)) continue;
    any_allowed = true;
    const auto max = t.replicas[r].max_inflight;
    if (state.inflight[u] >= max) continue;
    if (least_inflight != INT64_MAX && state.inflight[u] > least_inflight + overlap->slack) continue;
    const double load = static_cast<double>(state.inflight[u]) / static_cast<double>(max);
    double cost = load;
    const std::uint32_t matched = overlap != nullptr ? overlap->matched[r] : 0;
    if (overlap != nullptr) {
      cost = overlap->weight * static_cast<double>(overlap->blocks - matched) +
             static_cast<double>(state.active_blocks[u]);
    }
    // Ties go to the warmer replica, then to the less loaded one.
    if (replica == kNone || cost < best_cost ||
        (cost == best_cost && (matched > best_matched || (matched == best_matched && load < best_load)))) {
      best_cost = cost;
      best_load = load;
      best_matched = matched;
      replica = r;
    }
  }
  if (replica != kNone) return std::nullopt;
  return any_allowed ? ReasonCode::saturated : ReasonCode::breaker_open;
}

// The prompt's block chains, hashed on first use: one per pool (its block size and model) and one
// for the MaaS directory. Keeps decide() from hashing for targets it never looks at.
class PromptChains {
 public:
  explicit PromptChains(const Request& r) : request_(r) {}
  [[nodiscard]] bool present() const { return !request_.token_ids.empty() || !request_.text.empty(); }

  const std::vector<std::uint64_t>& pool(const Target& t, std::uint32_t target) {
    for (auto& [idx, chain] : pools_) {
      if (idx == target) return chain;
    }
    auto& [idx, chain] = pools_.emplace_back(target, std::vector<std::uint64_t>{});
    hash(static_cast<std::size_t>(t.kv.block_size), PrefixHasher::root_seed(t.model), chain);
    return chain;
  }
  const std::vector<std::uint64_t>& maas() {
    if (!maas_done_) hash(kMaasBlockTokens, PrefixHasher::root_seed("maas"), maas_);
    maas_done_ = true;
    return maas_;
  }

 private:
  void hash(std::size_t block, std::uint64_t root, std::vector<std::uint64_t>& out) const {
    if (!request_.token_ids.empty()) {
      PrefixHasher::hash_tokens(request_.token_ids, block, root, out);
    } else {
      PrefixHasher::hash_text(request_.text, block, root, out);
    }
  }
  const Request& request_;
  std::vector<std::pair<std::uint32_t, std::vector<std::uint64_t>>> pools_;
  std::vector<std::uint64_t> maas_;
  bool maas_done_ = false;
};

// Whether a pool's in-flight over the capacity of replicas whose breakers admit traffic has reached
// `ratio` (compared exactly, not rounded); `permille` reports the load for the reason.
bool pool_at_threshold(const Target& t, const RouterState& state, std::uint32_t target, TimeMs now, double ratio,
                       std::int64_t& permille) {
  std::int64_t inflight = 0;
  std::int64_t capacity = 0;
  for (std::uint32_t r = 0; r < t.replicas.size(); ++r) {
    const std::size_t u = state.unit(target, r);
    if (!state.breakers[u].allows(t.breaker, now)) continue;
    inflight += state.inflight[u];
    capacity += t.replicas[r].max_inflight;
  }
  permille = capacity == 0 ? 1000 : inflight * 1000 / capacity;
  return capacity == 0 || static_cast<double>(inflight) >= ratio * static_cast<double>(capacity);
}

}  // namespace

double rendezvous_score(std::uint64_t key_hash, const Target& target, std::uint32_t weight) noexcept {
  const std::uint64_t h = XXH3_64bits_withSeed(&key_hash, sizeof key_hash, target.name_hash);
  const double u = (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;  // uniform in (0, 1)
  return static_cast<double>(weight) / -std::log(u);
}

Result<Decision> decide(const Config& config, const RouterState& state, const Request& request, std::uint64_t seed,
                        std::uint64_t decision_id) {
  if (request.scenario >= config.scenarios.size()) {
    return make_error(ErrorCode::unknown_scenario, "unknown scenario index");
  }
  const Scenario& s = config.scenarios[request.scenario];
  // The bound normalize_usage and the pricing enforce: larger counts are not real requests.
  if (request.input_tokens > (1LL << 31) || request.max_output_tokens > (1LL << 31)) {
    return make_error(ErrorCode::invalid_argument, "input_tokens and max_output_tokens must be at most 2^31");
  }
  std::uint64_t required = 1ULL << s.data_class;
  if (request.data_class != kNone) required |= 1ULL << request.data_class;
  const std::int64_t input = std::max<std::int64_t>(0, request.input_tokens);
  const std::int64_t max_output = request.max_output_tokens >= 0 ? request.max_output_tokens : s.max_output_tokens;
  const std::int64_t needed = input + max_output;
  PromptChains chains(request);
  const bool affinity = s.prefix_affinity && chains.present();
  // The prefix family: the chain hash at (at most) 1024 tokens. It is the cache key a worker hands the
  // provider, and, with affinity and no explicit key, the sticky key that keeps a family on one target.
  std::uint64_t family = 0;
  if (chains.present()) {
    const auto& m = chains.maas();
    if (!m.empty()) family = m[std::min<std::size_t>(m.size(), 1024 / kMaasBlockTokens) - 1];
  }
  std::uint64_t key_hash = XXH3_64bits_withSeed(&decision_id, sizeof decision_id, seed);
  if (!request.key.empty()) {
    key_hash = XXH3_64bits_withSeed(request.key.data(), request.key.size(), seed);
  } else if (affinity && family != 0) {
    key_hash = XXH3_64bits_withSeed(&family, sizeof family, seed);
  }
  const std::int64_t day = budget_day(request.now);
  const BudgetState& budget = state.budgets[request.scenario];
  const Money committed = budget.day == day ? budget.spent + budget.reserved : Money{};

  Decision d;
  d.id = decision_id;
  d.scenario = request.scenario;
  d.config_version = config.content_hash;
  d.at = request.now;
  d.cache_key = family;
  std::array<std::uint32_t, CacheDirectory::kMaxHolders> matched{};  // per holder, no allocation

  // Candidates in order: routes by sticky weighted rank, then the fallback chain.
  std::vector<std::pair<double, std::uint32_t>> ranked;  // (score, route index)
  ranked.reserve(s.routes.size());
  for (std::uint32_t i = 0; i < s.routes.size(); ++i) {
    const auto& r = s.routes[i];
    if (r.weight > 0) ranked.emplace_back(rendezvous_score(key_hash, config.targets[r.target], r.weight), i);
  }
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first > b.first; });

  std::vector<std::uint8_t> tried(config.targets.size(), 0);
  bool budget_blocked = false;

  // Tries one target; on success fills d.placement and the cost, else records why not.
  auto try_target = [&](std::uint32_t target) -> bool {
    if (tried[target] != 0) return false;
    tried[target] = 1;
    const Target& t = config.targets[target];
    if (auto why = static_filter(t, s, required, needed)) {
      d.reasons.push_back({*why, target, *why == ReasonCode::context_window ? needed : 0});
      return false;
    }
    // What the directory knows of this prompt on this target.
    const std::vector<std::uint64_t>* chain = nullptr;
    PoolOverlap overlap;
    if (chains.present()) {
      if (t.kind == TargetKind::self_hosted && state.pool_index[target] != nullptr) {
        chain = &chains.pool(t, target);
        state.pool_index[target]->match(*chain, request.now, matched);
        overlap = {std::span<const std::uint32_t>(matched).first(t.replicas.size()),
                   static_cast<std::int64_t>(chain->size()), t.kv.overlap_weight, t.kv.balance_slack};
      } else if (t.kind == TargetKind::maas && state.maas_index != nullptr) {
        chain = &chains.maas();
        state.maas_index->match(*chain, request.now, matched);
      }
    }
    std::uint32_t replica = kNone;
    const bool by_overlap = affinity && chain != nullptr && t.kind == TargetKind::self_hosted;
    if (auto why = state_filter(config, state, target, request.now, replica, by_overlap ? &overlap : nullptr)) {
      d.reasons.push_back({*why, target, 0});
      return false;
    }
    std::int64_t cached = 0;
    if (chain != nullptr && t.kind == TargetKind::self_hosted) {
      cached = static_cast<std::int64_t>(matched[replica]) * t.kv.block_size;
    } else if (chain != nullptr) {
      cached = static_cast<std::int64_t>(matched[state.maas_holder[target]]) * kMaasBlockTokens;
      if (cached < t.cache.min_prefix_tokens) cached = 0;  // below the provider's minimum: no cache
    }
    cached = std::min(std::max(cached, request.expected_cached_tokens), input);
    const Money cost = predicted_cost(t, input, cached, max_output, s.mode);
    // Only a budget reserves anything (and pays for pricing the worst case).
    const Money reserve = s.budget_per_day ? reserved_cost(t, input, cached, max_output, s.mode) : Money{};
    if (s.budget_per_day && reserve > *s.budget_per_day - committed) {  // no overflow near the int64 top
      d.reasons.push_back({ReasonCode::budget, target, reserve.picos()});
      budget_blocked = true;
      return false;
    }
    d.placement = {target, replica};
    d.predicted_cost = cost;
    d.reserved_cost = reserve;
    d.expected_cached_tokens = cached;
    // Approximate mode learns from its own decisions; a precise pool only believes its engines.
    if (chain != nullptr && !(t.kind == TargetKind::self_hosted && t.kv.precise)) d.prefix = *chain;
    if (t.kind == TargetKind::self_hosted) {
      d.active_blocks = chain != nullptr ? static_cast<std::int64_t>(chain->size()) : input / t.kv.block_size;
      d.reasons.push_back({by_overlap ? ReasonCode::prefix_overlap : ReasonCode::least_loaded, target, replica});
    }
    if (cached > 0) d.reasons.push_back({ReasonCode::affinity, target, cached});
    if (state.breakers[state.unit(target, replica)].phase(t.breaker, request.now) == Breaker::Phase::half_open) {
      d.reasons.push_back({ReasonCode::half_open_probe, target, 0});
    }
    return true;
  };

  bool chosen = false;
  for (const auto& [score, route_index] : ranked) {
    const Route& route = s.routes[route_index];
    const Target& t = config.targets[route.target];
    // A self-hosted pool at its in-flight threshold hands the request to the spillover target.
    if (t.kind == TargetKind::self_hosted && s.spillover && s.spillover->target != route.target &&
        tried[route.target] == 0) {
      std::int64_t load = 0;
      if (pool_at_threshold(t, state, route.target, request.now, s.spillover->when_inflight_ratio, load)) {
        d.reasons.push_back({ReasonCode::spillover, route.target, load});
        if (try_target(s.spillover->target)) {
          d.spilled = true;
          chosen = true;
          break;
        }
      }
    }
    if (try_target(route.target)) {
      d.reasons.insert(d.reasons.begin(), {ReasonCode::weight, route.target, route.weight});
      chosen = true;
      break;
    }
  }
  if (!chosen) {
    for (std::uint32_t target : s.fallback) {
      if (try_target(target)) {
        d.reasons.insert(d.reasons.begin(), {ReasonCode::fallback, target, 0});
        chosen = true;
        break;
      }
    }
  }
  if (!chosen) {
    std::string why;
    for (const auto& r : d.reasons) {
      if (r.target == kNone || r.code == ReasonCode::spillover) continue;
      why += (why.empty() ? "" : "; ") + config.targets[r.target].name + ": " + to_string(r.code);
    }
    if (budget_blocked) {
      return make_error(ErrorCode::budget_exhausted,
                        "scenario '" + s.name + "' has no budget left today for this request (" + why + ")");
    }
    return make_error(ErrorCode::no_eligible_target,
                      "scenario '" + s.name + "' has no eligible target (" + (why.empty() ? "no routes" : why) + ")");
  }

  // The fallback chain, filtered by the same constraints (a forbidden data class never appears here).
  for (std::uint32_t target : s.fallback) {
    if (target == d.placement.target) continue;
    const Target& t = config.targets[target];
    std::uint32_t replica = kNone;
    if (static_filter(t, s, required, needed) || state_filter(config, state, target, request.now, replica)) continue;
    // A fallback must fit what the budget has left beside this decision's own reservation.
    if (s.budget_per_day &&
        reserved_cost(t, input, 0, max_output, s.mode) > *s.budget_per_day - committed - d.reserved_cost) {
      continue;
    }
    d.fallbacks.push_back({target, replica});
  }
  return d;
}

std::string reason_text(const Config& config, const Reason& reason) {
  std::string s = to_string(reason.code);
  if (reason.target != kNone) s += ":" + config.targets[reason.target].name;
  switch (reason.code) {
    case ReasonCode::weight: s += " (" + std::to_string(reason.value) + "%)"; break;
    case ReasonCode::spillover: s += " (in-flight " + std::to_string(reason.value / 10) + "%)"; break;
    case ReasonCode::context_window: s += " (needs " + std::to_string(reason.value) + " tokens)"; break;
    case ReasonCode::budget: s += " (worst case $" + Money::from_picos(reason.value).to_usd_string() + ")"; break;
    case ReasonCode::affinity: s += " (" + std::to_string(reason.value) + " cached tokens)"; break;
    case ReasonCode::prefix_overlap:
    case ReasonCode::least_loaded:
      s += " (" + config.targets[reason.target].replicas[static_cast<std::size_t>(reason.value)].endpoint + ")";
      break;
    default: break;
  }
  return s;
}

}  // namespace turnout
