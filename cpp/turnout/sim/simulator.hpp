#pragma once
// The what-if engine: a discrete-event simulation that runs every request of a trace through the real
// Router (route, report, verdicts, directories, breakers, budgets, spillover) against simulated MaaS
// providers (provider.hpp) and self-hosted replicas (replica.hpp), with the one retry/fallback policy
// (attempts.hpp). Results: one row per request, a per-interval series, a summary, and every move of the
// table's migrations (the Router's own canary state machine, run on the simulated clock).

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "turnout/attempts.hpp"
#include "turnout/config.hpp"
#include "turnout/migration.hpp"
#include "turnout/result.hpp"
#include "turnout/sim/prompt.hpp"
#include "turnout/sim/provider.hpp"
#include "turnout/sim/replica.hpp"

namespace turnout::sim {

/// How one target behaves in the simulation: `provider` for a MaaS target, `engine` for each replica of
/// a self-hosted one (its `gpus` is the table's cost.gpus_per_replica), and the quality of its answers.
struct TargetModel {
  ProviderSpec provider;
  EngineSpec engine;
  double accept_rate = 1.0;  ///< probability an answered request is accepted (unless the trace labels it)
  /// Its answers are this many times the trace's output tokens (rounded, at least 1): a verbose model,
  /// dearer per request (a cost regression to rehearse a canary on). Within (0, 100].
  double output_scale = 1.0;
};

/// Documented defaults of a simulation.
struct SimOptions {
  std::uint64_t seed = 0;  ///< the Router's, the providers', the policy's jitter and the verdicts' seed
  /// Feed each replica's KV events to the router (pools whose table is precise). false: the precise
  /// pools' event streams are lost, their directories learn nothing.
  bool precise_kv = true;
  SimTime series_interval = 60 * kMicrosPerS;  ///< width of one row of the series
  RetrySpec retry;                             ///< the policy every request follows
  /// Requests the router refuses as no_eligible_target (a full pool) wait in one FIFO queue, as a worker
  /// pool bounded by the replicas' max_inflight does, and route again when an attempt ends; false: they
  /// back off and retry per `retry`. A refusal while no attempt runs always goes to the policy.
  bool admission_queue = false;
};

/// One request of a trace (names resolved by Simulator::add).
struct TraceRequest {
  SimTime arrival = 0;
  std::string_view scenario;
  std::string_view key;         ///< "" = none
  std::string_view data_class;  ///< "" = the scenario's
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  std::int8_t accepted = -1;  ///< the trace's label: 1 / 0, -1 = none (the target's accept_rate decides)
};

/// How a request ended: exactly one per request.
enum class RequestOutcome : std::uint8_t {
  served,    ///< by the decision's own placement
  fallback,  ///< by one of its fallbacks
  failed,    ///< not served: every candidate failed, the policy gave up, or the router refused
};
[[nodiscard]] const char* to_string(RequestOutcome o) noexcept;

/// One row per request, in the order they were added.
struct RequestRow {
  SimTime arrival = 0;
  std::uint32_t scenario = kNone;
  std::uint32_t target = kNone;   ///< the last target attempted (kNone when the router refused)
  std::uint32_t replica = kNone;  ///< its replica (self-hosted)
  RequestOutcome outcome = RequestOutcome::failed;
  std::uint16_t attempts = 0;         ///< calls to targets (retries included; refused routes are not)
  SimTime queue = 0;                  ///< time outside any target's call: backoffs, refused routes, the admission queue
  SimTime ttft = -1;                  ///< arrival to first token of the serving attempt (-1 unserved)
  SimTime latency = 0;                ///< arrival to the end (served or given up)
  std::int64_t cached_predicted = 0;  ///< the router's Decision::expected_cached_tokens
  std::int64_t cached_realized = 0;   ///< cached tokens the serving target really had
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  std::int64_t cost_picos = 0;  ///< the ledger's cost of every reported attempt
  std::int8_t accepted = -1;    ///< the verdict (-1 unserved)
  const char* error = nullptr;  ///< failed: the last status or the router's error code (static text)
};

/// One row per series interval (times from the first arrival).
struct SeriesRow {
  SimTime start = 0;
  std::uint64_t arrivals = 0;
  double in_flight = 0;         ///< time-averaged requests in the system
  double queue_depth = 0;       ///< waiting in replicas' queues and the admission queue, at the end
  double utilization = 0;       ///< busy fraction of all replicas over the interval
  std::int64_t cost_picos = 0;  ///< cost reported in the interval
};

/// Per target over the run.
struct TargetStats {
  std::uint64_t attempts = 0;
  std::uint64_t served = 0;  ///< requests it answered
  std::uint64_t failed_attempts = 0;
  std::int64_t input_tokens = 0;  ///< of requests it answered
  std::int64_t cached_predicted = 0;
  std::int64_t cached_realized = 0;
  std::int64_t cost_picos = 0;
};

struct Summary {
  std::uint64_t requests = 0, served = 0, fallback = 0, failed = 0;
  SimTime start = 0, end = 0;        ///< first arrival, last completion
  double gpu_hours = 0;              ///< every replica x its GPUs over [start, end]
  double mean_in_flight = 0;         ///< time-averaged over [start, end]
  std::vector<TargetStats> targets;  ///< by target index
};

/// One arm of a migration as the simulator saw it, since the first arrival: requests whose decision placed
/// them on the arm's target, and the outcomes of those placements (fallback calls are not counted, as the
/// Router's analysis does not count them).
struct ArmTally {
  std::uint64_t requests = 0;   ///< routed to the arm's target (arrived; some may still be in flight)
  std::uint64_t outcomes = 0;   ///< their reported outcomes on it
  std::uint64_t errors = 0;     ///< outcomes that failed (status not ok)
  std::uint64_t answered = 0;   ///< outcomes that answered (ok): what the cost is spread over
  std::uint64_t rejected = 0;   ///< answers the quality verdict rejected
  std::int64_t cost_picos = 0;  ///< the ledger's cost of those outcomes
  friend bool operator==(const ArmTally&, const ArmTally&) = default;
};

/// A move of a scenario's migration during the replay, with what the canary had cost by then.
struct MigrationEvent {
  std::uint32_t scenario = kNone;
  MigrationTransition transition;
  std::uint32_t candidate_percent = 0;  ///< the candidate's traffic share after the move
  std::uint64_t requests = 0;           ///< the scenario's requests arrived before the move
  ArmTally baseline, candidate;
  /// What the candidate's answers would have cost at the baseline's mean cost per answer so far
  /// (rounded to the picodollar; 0 while the baseline has no answer).
  std::int64_t baseline_equivalent_picos = 0;
  friend bool operator==(const MigrationEvent&, const MigrationEvent&) = default;
};

struct SimResult {
  std::vector<RequestRow> requests;
  std::vector<SeriesRow> series;
  Summary summary;
  std::vector<MigrationEvent> migrations;  ///< every migration move, in time order
  bool stopped = false;                    ///< the progress callback asked to stop: rows past the stop are unfinished
};

/// Called about every 1 % of requests finished with (finished, total); returning false stops the run.
using Progress = std::function<bool(std::size_t, std::size_t)>;

class Simulator {
 public:
  /// `models` by target name (absent targets use TargetModel{}). unknown_target for a name the table
  /// lacks, invalid_argument for a model out of range.
  [[nodiscard]] static Result<std::unique_ptr<Simulator>> create(
      ConfigPtr config, const std::unordered_map<std::string, TargetModel>& models, SimOptions options = {});
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  /// Adds a request whose prompt is `token_ids`. unknown_scenario, a data class the table lacks
  /// (invalid_argument), one no target of its scenario may serve or a prompt that fits no target's
  /// context window (no_eligible_target), token counts out of range (invalid_argument).
  [[nodiscard]] Result<Ok> add(const TraceRequest& request, std::span<const std::uint32_t> token_ids);
  /// Adds a request whose prompt is known by its trace block hashes (synthesize_tokens).
  [[nodiscard]] Result<Ok> add_blocks(const TraceRequest& request, std::span<const std::uint64_t> blocks,
                                      std::int64_t block_tokens);
  [[nodiscard]] std::size_t size() const noexcept;

  /// Runs every added request to its end. Once per Simulator (invalid_argument after that).
  [[nodiscard]] Result<SimResult> run(const Progress& progress = {});

 private:
  struct Impl;
  explicit Simulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace turnout::sim
