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

// A prompt of which no replica holds at least 1 / kColdShare of the blocks is cold: a small overlap
// (a chat template's first block) does not pull it onto the replica that happens to hold it.
constexpr std::int64_t kColdShare = 8;

// Filters that depend on the state: breakers and, for pools, a replica with a free slot.
// On success fills `replica` (kNone for MaaS). With prefix overlap, the replicas within
// kv.balance_slack in-flight requests of the least busy one and within kv.recent_slack placements
// of the mean recent load compete; the one of least weight x blocks-to-prefill + active blocks
// (Dynamo's cost) wins. Without overlap, the least loaded. Ties (every cold prompt while nothing is
// in flight) go to the warmer replica, then to the one of least recent load + cache pressure, so
// sequential traffic spreads, and cold prefixes land where they evict least.
std::optional<ReasonCode> state_filter(const Config& config, const RouterState& state, std::uint32_t target, TimeMs now,
                                       std::uint32_t& replica, const PoolOverlap* overlap = nullptr) noexcept {
  const Target& t = config.targets[target];
  replica = kNone;
  if (t.kind == TargetKind::maas) {
    return state.breakers[state.unit(target, kNone)].allows(t.breaker, now)
               ? std::nullopt
               : std::optional<ReasonCode>(ReasonCode::breaker_open);
  }
  // The replicas that may take the request (breaker, free slot): the least in-flight among them,
  // their mean recent load and the longest prefix any of them holds.
  bool any_allowed = false;
  std::int64_t admitted = 0;
  std::int64_t least_inflight = INT64_MAX;
  std::int64_t recent_sum = 0;
  std::uint32_t warmest = 0;
  for (std::uint32_t r = 0; r < t.replicas.size(); ++r) {
    const std::size_t u = state.unit(target, r);
    if (!state.breakers[u].allows(t.breaker, now)) continue;
    any_allowed = true;
    if (state.inflight[u] >= t.replicas[r].max_inflight) continue;
    ++admitted;
    least_inflight = std::min(least_inflight, state.inflight[u]);
    recent_sum += state.recent_load[u];
    if (overlap != nullptr) warmest = std::max(warmest, overlap->matched[r]);
  }
  if (admitted == 0) return any_allowed ? ReasonCode::saturated : ReasonCode::breaker_open;
  // Balance guards: a hot prefix cannot pile its family onto one replica (SGLang's balance
  // threshold), neither while its requests run (in-flight) nor one after the other (recent load).
  const bool guarded = overlap != nullptr;
  const std::int64_t inflight_limit = guarded && overlap->slack >= 0 ? least_inflight + overlap->slack : INT64_MAX;
  const std::int64_t recent_limit =
      guarded && t.kv.recent_slack >= 0 ? recent_sum / admitted + t.kv.recent_slack * kPlacementWeight : INT64_MAX;
  const bool cold = overlap == nullptr || static_cast<std::int64_t>(warmest) * kColdShare < overlap->blocks;
  // Recent load in windows (1.0: a full window's even share) plus the share of KV capacity held.
  const double per_window = 1.0 / static_cast<double>(kRecentWindowPerReplica * kPlacementWeight);
  const double per_capacity =
      1.0 / static_cast<double>(t.kv.capacity_blocks > 0 ? t.kv.capacity_blocks : kDefaultReplicaBlocks);
  auto pick = [&](std::int64_t recent_cap) {
    double best_cost = 0;
    double best_spread = 0;
    double best_load = 2.0;
    std::uint32_t best_matched = 0;
    for (std::uint32_t r = 0; r < t.replicas.size(); ++r) {
      const std::size_t u = state.unit(target, r);
      const auto max = t.replicas[r].max_inflight;
      if (!state.breakers[u].allows(t.breaker, now) || state.inflight[u] >= max) continue;
      if (state.inflight[u] > inflight_limit || state.recent_load[u] > recent_cap) continue;
      const double load = static_cast<double>(state.inflight[u]) / static_cast<double>(max);
      const std::uint32_t matched = cold ? 0 : overlap->matched[r];
      const double cost = overlap != nullptr ? overlap->weight * static_cast<double>(overlap->blocks - matched) +
                                                   static_cast<double>(state.active_blocks[u])
                                             : load;
      const double spread = static_cast<double>(state.recent_load[u]) * per_window +
                            static_cast<double>(state.cache_held[u]) * per_capacity;
      if (replica == kNone || cost < best_cost ||
          (cost == best_cost &&
           (matched > best_matched ||
            (matched == best_matched && (spread < best_spread || (spread == best_spread && load < best_load)))))) {
        best_cost = cost;
        best_spread = spread;
        best_load = load;
        best_matched = matched;
        replica = r;
      }
    }
  };
  pick(recent_limit);
  // The in-flight guard comes first: when the replicas it admits are all above the recent limit
  // (a busy replica that was quiet before), they compete without it.
  if (replica == kNone) pick(INT64_MAX);
  return std::nullopt;
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

// What decide() knows of the request before it looks at a target: computed once per decision.
struct RequestFacts {
  RequestFacts(const Config& c, const RouterState& st, const Request& r)
      : config(c), state(st), request(r), scenario(c.scenarios[r.scenario]), chains(r) {
    required = 1ULL << scenario.data_class;
    if (r.data_class != kNone) required |= 1ULL << r.data_class;
    input = std::max<std::int64_t>(0, r.input_tokens);
    max_output = r.max_output_tokens >= 0 ? r.max_output_tokens : scenario.max_output_tokens;
    needed = input + max_output;
    affinity = scenario.prefix_affinity && chains.present();
    const BudgetState& budget = st.budgets[r.scenario];
    committed = budget.day == budget_day(r.now) ? budget.spent + budget.reserved : Money{};
  }

  // The prefix family: the chain hash at (at most) 1024 tokens. It is the cache key a worker hands the
  // provider, and, with affinity and no explicit key, the sticky key that keeps a family on one target.
  std::uint64_t prefix_family() {
    if (!chains.present()) return 0;
    const auto& m = chains.maas();
    return m.empty() ? 0 : m[std::min<std::size_t>(m.size(), 1024 / kMaasBlockTokens) - 1];
  }

  const Config& config;
  const RouterState& state;
  const Request& request;
  const Scenario& scenario;
  std::uint64_t required = 0;  // data classes a target must allow
  std::int64_t input = 0;
  std::int64_t max_output = 0;
  std::int64_t needed = 0;  // tokens of context: input + max output
  bool affinity = false;    // rank a pool's replicas by the prefix they hold
  Money committed;          // today's spent + reserved against the scenario's budget
  PromptChains chains;
  std::array<std::uint32_t, CacheDirectory::kMaxHolders> matched{};  // per holder, no allocation
};

// The sticky key: the request's own key, else (with affinity) its prefix family, else the decision.
std::uint64_t sticky_hash(const Request& request, bool affinity, std::uint64_t family, std::uint64_t seed,
                          std::uint64_t decision_id) {
  if (!request.key.empty()) return XXH3_64bits_withSeed(request.key.data(), request.key.size(), seed);
  if (affinity && family != 0) return XXH3_64bits_withSeed(&family, sizeof family, seed);
  return XXH3_64bits_withSeed(&decision_id, sizeof decision_id, seed);
}

// One target as a home for the request: the filter that refused it, or where on it the request
// goes, the warm prefix it holds and what that costs.
struct Candidate {
  std::uint32_t target = kNone;
  std::optional<Reason> refusal;  // filtered (fail closed): why
  std::uint32_t replica = kNone;
  Money cost;               // predicted
  Money reserve;            // the budget's worst case; 0 without a budget
  std::int64_t cached = 0;  // expected cached input tokens
  std::int64_t active_blocks = 0;
  const std::vector<std::uint64_t>* chain = nullptr;  // the prompt's blocks here, if a directory was asked
  bool learn = false;  // the directory learns `chain` from this decision (approximate mode)
  bool self_hosted = false;
  bool by_overlap = false;  // the replica was ranked by the prefix it holds
  bool probe = false;       // the replica's breaker is half-open: this is its probe

  // The reasons this candidate adds to a decision that looked at it.
  void explain(std::vector<Reason>& out) const {
    if (refusal) {
      out.push_back(*refusal);
      return;
    }
    if (self_hosted) {
      out.push_back({by_overlap ? ReasonCode::prefix_overlap : ReasonCode::least_loaded, target, replica});
    }
    if (cached > 0) out.push_back({ReasonCode::affinity, target, cached});
    if (probe) out.push_back({ReasonCode::half_open_probe, target, 0});
  }
};

// What the directory knows of this prompt on `target`: its chain there (null if no directory is
// asked), with `f.matched` per holder and, for a pool, the overlap its replicas are ranked by.
const std::vector<std::uint64_t>* match_prompt(RequestFacts& f, std::uint32_t target, PoolOverlap& overlap) {
  if (!f.chains.present()) return nullptr;
  const Target& t = f.config.targets[target];
  if (t.kind == TargetKind::self_hosted && f.state.pool_index[target] != nullptr) {
    const auto& chain = f.chains.pool(t, target);
    f.state.pool_index[target]->match(chain, f.request.now, f.matched);
    overlap = {std::span<const std::uint32_t>(f.matched).first(t.replicas.size()),
               static_cast<std::int64_t>(chain.size()), t.kv.overlap_weight, t.kv.balance_slack};
    return &chain;
  }
  if (t.kind == TargetKind::maas && f.state.maas_index != nullptr) {
    const auto& chain = f.chains.maas();
    f.state.maas_index->match(chain, f.request.now, f.matched);
    return &chain;
  }
  return nullptr;
}

// Applies the filters to one target and, if it passes them, places and prices the request there.
Candidate evaluate(RequestFacts& f, std::uint32_t target) {
  const Target& t = f.config.targets[target];
  const Scenario& s = f.scenario;
  Candidate c{.target = target, .self_hosted = t.kind == TargetKind::self_hosted};
  if (auto why = static_filter(t, s, f.required, f.needed)) {
    c.refusal = Reason{*why, target, *why == ReasonCode::context_window ? f.needed : 0};
    return c;
  }
  PoolOverlap overlap;
  c.chain = match_prompt(f, target, overlap);
  c.by_overlap = f.affinity && c.chain != nullptr && c.self_hosted;
  if (auto why = state_filter(f.config, f.state, target, f.request.now, c.replica, c.by_overlap ? &overlap : nullptr)) {
    c.refusal = Reason{*why, target, 0};
    return c;
  }
  if (c.chain != nullptr && c.self_hosted) {
    c.cached = static_cast<std::int64_t>(f.matched[c.replica]) * t.kv.block_size;
  } else if (c.chain != nullptr) {
    c.cached = static_cast<std::int64_t>(f.matched[f.state.maas_holder[target]]) * kMaasBlockTokens;
    if (c.cached < t.cache.min_prefix_tokens) c.cached = 0;  // below the provider's minimum: no cache
  }
  c.cached = std::min(std::max(c.cached, f.request.expected_cached_tokens), f.input);
  c.cost = predicted_cost(t, f.input, c.cached, f.max_output, s.mode);
  // Only a budget reserves anything (and pays for pricing the worst case).
  if (s.budget_per_day) {
    c.reserve = reserved_cost(t, f.input, c.cached, f.max_output, s.mode);
    if (c.reserve > *s.budget_per_day - f.committed) {  // no overflow near the int64 top
      c.refusal = Reason{ReasonCode::budget, target, c.reserve.picos()};
      return c;
    }
  }
  // Approximate mode learns from its own decisions; a precise pool only believes its engines.
  c.learn = c.chain != nullptr && !(c.self_hosted && t.kv.precise);
  if (c.self_hosted) {
    c.active_blocks = c.chain != nullptr ? static_cast<std::int64_t>(c.chain->size()) : f.input / t.kv.block_size;
  }
  const Breaker& breaker = f.state.breakers[f.state.unit(target, c.replica)];
  c.probe = breaker.phase(t.breaker, f.request.now) == Breaker::Phase::half_open;
  return c;
}

// The targets a decision has looked at: a bit each, in a word for tables of up to 64 targets (no
// allocation per decision), in a vector for larger ones.
class TargetSet {
 public:
  explicit TargetSet(std::size_t targets) {
    if (targets > 64) many_.resize(targets, 0);
  }
  [[nodiscard]] bool contains(std::uint32_t target) const {
    return many_.empty() ? ((few_ >> target) & 1U) != 0 : many_[target] != 0;
  }
  void insert(std::uint32_t target) {
    if (many_.empty()) {
      few_ |= 1ULL << target;
    } else {
      many_[target] = 1;
    }
  }

 private:
  std::uint64_t few_ = 0;
  std::vector<std::uint8_t> many_;
};

// The candidates in order: the routes by sticky weighted rank (a pool at its threshold hands its
// turn to the spillover target), then the fallback chain. The first eligible one takes the request;
// every candidate looked at leaves its reasons in the decision.
class Ranking {
 public:
  Ranking(RequestFacts& facts, Decision& d) : f_(facts), d_(d), tried_(facts.config.targets.size()) {}

  // Places the decision; false if no candidate was eligible.
  bool place(std::uint64_t key_hash) {
    const Scenario& s = f_.scenario;
    for (const auto& [score, route_index] : routes_by_rank(key_hash)) {
      const Route& route = s.routes[route_index];
      std::int64_t load = 0;
      if (at_spillover_threshold(route.target, load)) {
        d_.reasons.push_back({ReasonCode::spillover, route.target, load});
        if (take(s.spillover->target)) {
          d_.spilled = true;
          return true;
        }
      }
      if (take(route.target)) {
        d_.reasons.insert(d_.reasons.begin(), {ReasonCode::weight, route.target, weight(route_index)});
        return true;
      }
    }
    for (std::uint32_t target : s.fallback) {
      if (take(target)) {
        d_.reasons.insert(d_.reasons.begin(), {ReasonCode::fallback, target, 0});
        return true;
      }
    }
    return false;
  }
  // Whether a candidate was refused only because the budget could not cover it.
  [[nodiscard]] bool budget_blocked() const { return budget_blocked_; }

 private:
  // A route's weight now: the table's, or in a migration the run's split (baseline 100 - p, candidate p).
  [[nodiscard]] std::uint32_t weight(std::uint32_t route_index) const {
    const Scenario& s = f_.scenario;
    if (!s.migration) return s.routes[route_index].weight;
    const std::uint32_t p = f_.state.candidate_percent[f_.request.scenario];
    return route_index == 0 ? 100 - p : p;
  }

  // (score, route index), best first.
  [[nodiscard]] std::vector<std::pair<double, std::uint32_t>> routes_by_rank(std::uint64_t key_hash) const {
    const Scenario& s = f_.scenario;
    std::vector<std::pair<double, std::uint32_t>> ranked;
    ranked.reserve(s.routes.size());
    for (std::uint32_t i = 0; i < s.routes.size(); ++i) {
      const std::uint32_t w = weight(i);
      if (w > 0) ranked.emplace_back(rendezvous_score(key_hash, f_.config.targets[s.routes[i].target], w), i);
    }
    std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    return ranked;
  }

  // A self-hosted pool at its in-flight threshold hands the request to the spillover target.
  bool at_spillover_threshold(std::uint32_t target, std::int64_t& load) const {
    const Scenario& s = f_.scenario;
    const Target& t = f_.config.targets[target];
    return t.kind == TargetKind::self_hosted && s.spillover && s.spillover->target != target &&
           !tried_.contains(target) &&
           pool_at_threshold(t, f_.state, target, f_.request.now, s.spillover->when_inflight_ratio, load);
  }

  // Looks at a target once per decision; places the decision there if it is eligible.
  bool take(std::uint32_t target) {
    if (tried_.contains(target)) return false;
    tried_.insert(target);
    const Candidate c = evaluate(f_, target);
    c.explain(d_.reasons);
    if (c.refusal) {
      budget_blocked_ = budget_blocked_ || c.refusal->code == ReasonCode::budget;
      return false;
    }
    d_.placement = {target, c.replica};
    d_.predicted_cost = c.cost;
    d_.reserved_cost = c.reserve;
    d_.expected_cached_tokens = c.cached;
    if (c.learn) d_.prefix = *c.chain;
    d_.active_blocks = c.active_blocks;
    return true;
  }

  RequestFacts& f_;
  Decision& d_;
  TargetSet tried_;
  bool budget_blocked_ = false;
};

// The error of a decision no candidate would take, naming each target's reason.
Error no_placement(const RequestFacts& f, const Decision& d, bool budget_blocked) {
  std::string why;
  for (const auto& r : d.reasons) {
    if (r.target == kNone || r.code == ReasonCode::spillover) continue;
    why += (why.empty() ? "" : "; ") + f.config.targets[r.target].name + ": " + to_string(r.code);
  }
  const std::string& name = f.scenario.name;
  if (budget_blocked) {
    return make_error(ErrorCode::budget_exhausted,
                      "scenario '" + name + "' has no budget left today for this request (" + why + ")");
  }
  return make_error(ErrorCode::no_eligible_target,
                    "scenario '" + name + "' has no eligible target (" + (why.empty() ? "no routes" : why) + ")");
}

// The fallback chain beside the chosen target, filtered by the same constraints (a forbidden data
// class never appears here).
void offer_fallbacks(const RequestFacts& f, Decision& d) {
  const Scenario& s = f.scenario;
  for (std::uint32_t target : s.fallback) {
    if (target == d.placement.target) continue;
    const Target& t = f.config.targets[target];
    std::uint32_t replica = kNone;
    if (static_filter(t, s, f.required, f.needed) || state_filter(f.config, f.state, target, f.request.now, replica)) {
      continue;
    }
    // A fallback must fit what the budget has left beside this decision's own reservation.
    if (s.budget_per_day &&
        reserved_cost(t, f.input, 0, f.max_output, s.mode) > *s.budget_per_day - f.committed - d.reserved_cost) {
      continue;
    }
    d.fallbacks.push_back({target, replica});
  }
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
  // The bound normalize_usage and the pricing enforce: larger counts are not real requests.
  if (request.input_tokens > kMaxTokensPerCall || request.max_output_tokens > kMaxTokensPerCall) {
    return make_error(ErrorCode::invalid_argument,
                      "input_tokens and max_output_tokens must be at most " + std::string(kMaxTokensPerCallText));
  }
  RequestFacts facts(config, state, request);
  const std::uint64_t family = facts.prefix_family();
  Decision d;
  d.id = decision_id;
  d.scenario = request.scenario;
  d.config_version = config.content_hash;
  d.at = request.now;
  d.cache_key = family;
  Ranking ranking(facts, d);
  if (!ranking.place(sticky_hash(request, facts.affinity, family, seed, decision_id))) {
    return no_placement(facts, d, ranking.budget_blocked());
  }
  offer_fallbacks(facts, d);
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
