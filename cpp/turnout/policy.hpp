#pragma once
// The decision: filters first (failing closed), ranking second. A pure function of the config, a
// read-only view of the state, the request and the time passed in: replay makes the same decisions.

#include <cstdint>

#include "turnout/config.hpp"
#include "turnout/decision.hpp"
#include "turnout/result.hpp"
#include "turnout/state.hpp"

namespace turnout {

/// Decides where `request` goes. Does not change `state`: the Router commits the decision (in-flight
/// slot, half-open probe, budget reservation) under its lock. `seed` makes sticky hashing reproducible.
[[nodiscard]] Result<Decision> decide(const Config& config, const RouterState& state, const Request& request,
                                      std::uint64_t seed, std::uint64_t decision_id);

/// Sticky hash of a request key for one target: the same key keeps landing on the same target while
/// the set of eligible targets does not change (weighted rendezvous hashing).
[[nodiscard]] double rendezvous_score(std::uint64_t key_hash, const Target& target, std::uint32_t weight) noexcept;

}  // namespace turnout
