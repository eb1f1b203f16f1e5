#pragma once
// A self-hosted engine replica on the simulated clock, modelled on vLLM v1's scheduler: continuous
// batching under a per-step token budget with chunked prefill, a linear step-time model, a true prefix KV
// cache (blocks, LRU of unreferenced blocks, capacity) whose hits skip prefill, recompute preemption when
// KV runs out, and vLLM-shaped KV events for the router's precise mode. Event-driven: between changes of
// the batch every step is the same, so runs of identical steps are applied at once (docs in replica.cpp).

#include <array>
#include <cstdint>
#include <deque>
#include <optional>
#include <string_view>
#include <vector>

#include "turnout/kv_events.hpp"
#include "turnout/result.hpp"
#include "turnout/sim/prompt.hpp"

namespace turnout::sim {

/// One engine step's time: a fixed overhead, plus each prefill token, plus each decoding sequence.
/// Steps round to whole microseconds (at least 1).
struct StepModel {
  double overhead_ms = 6.0;
  double ms_per_prefill_token = 0.012;
  double ms_per_decode_seq = 0.1;
};

/// An engine replica's shape (vLLM's scheduler and cache settings).
struct EngineSpec {
  StepModel step;
  std::int64_t max_batched_tokens = 8192;  ///< per-step token budget (vLLM max_num_batched_tokens); >= max_seqs
  std::int64_t max_seqs = 256;             ///< vLLM max_num_seqs
  std::int64_t block_size = 16;            ///< KV block tokens, a multiple of kChainTokens
  std::int64_t capacity_blocks = 0;        ///< KV capacity in blocks; 0 = unbounded
  std::int64_t gpus = 1;                   ///< GPUs per replica (for GPU-hours; not in the step model)
};

/// Whether `spec` is usable (a full step takes at most 10 minutes); the error says which field is wrong
/// (ErrorCode::invalid_argument).
[[nodiscard]] Result<Ok> check_spec(const EngineSpec& spec);

/// A published throughput measurement: output tokens per second of one replica at saturation, for
/// requests of `input_tokens` in and `output_tokens` out with `concurrency` of them in flight.
struct ThroughputRow {
  double output_tokens_per_s = 0;
  std::int64_t input_tokens = 0;
  std::int64_t output_tokens = 0;
  std::int64_t concurrency = 0;
};

/// A published row with where it comes from, for calibrating replicas of a known model and GPU.
struct PublishedRow {
  std::string_view name;
  std::string_view source;
  std::int64_t gpus;
  ThroughputRow row;
};

/// NVIDIA's TensorRT-LLM performance overview ("Throughput Measurements", Total Output Throughput at
/// maximum load, requests at an infinite rate; docs/source/performance/perf-overview.md of
/// github.com/NVIDIA/TensorRT-LLM, v1.0 tables), ISL/OSL 1000/1000. The table does not state the batch the
/// engine ran; 256 (EngineSpec::max_seqs' default) is our assumption.
inline constexpr std::array<PublishedRow, 2> kPublishedRows{{
    {"llama-3.1-8b-fp8-h100x1",
     "TensorRT-LLM perf-overview, Llama 3.1 8B, H100 TP1 (FP8), 1000/1000",
     1,
     {15'220.0, 1000, 1000, 256}},
    {"llama-3.3-70b-fp8-h100x2",
     "TensorRT-LLM perf-overview, Llama 3.3 70B, H100 TP2 (FP8), 1000/1000",
     2,
     {4'205.0, 1000, 1000, 256}},
}};

/// Whether `row` can calibrate a replica of `spec` (positive figures, concurrency at most 2^16; a request
/// of its shape fits the KV capacity); the error says what is wrong (ErrorCode::invalid_argument).
[[nodiscard]] Result<Ok> check_row(const EngineSpec& spec, const ThroughputRow& row);

/// The StepModel whose saturated throughput on `row`'s shape is `row.output_tokens_per_s`: `spec.step`
/// scaled by one factor (its overhead : prefill : decode proportions are kept, so they should come from
/// config or these defaults), found by simulating a saturated replica of `spec` (every request queued at
/// once, `row.concurrency` of them running: max_seqs). Scaling every step time by a factor scales that
/// throughput by its inverse exactly (the batches do not depend on time), so one measurement suffices; a
/// second corrects the rounding of steps to whole microseconds. Throws std::invalid_argument with
/// check_spec()'s or check_row()'s message.
[[nodiscard]] StepModel calibrate(const EngineSpec& spec, const ThroughputRow& row);

/// Output tokens per second of a replica of `spec` kept saturated with `row.concurrency` requests of
/// `row`'s shape (closed loop), measured in steady state (after the first `concurrency` requests end).
[[nodiscard]] double saturated_throughput(const EngineSpec& spec, const ThroughputRow& row);

/// A request as the replica sees it. `prompt.chain` gives the prefix blocks the cache keys on (a link per
/// 16 tokens; the replica keeps every block_size/16-th); its token ids are needed only for KV events.
struct SeqSpec {
  std::uint64_t id = 0;
  Prompt prompt;
  std::int64_t input_tokens = 0;   ///< >= 1
  std::int64_t output_tokens = 0;  ///< >= 1
};

/// What a sequence's client observes. `cached_tokens` is the realized prefix-cache hit of the prefill
/// that produced the first token; `preemptions` how often the sequence was preempted so far.
struct ReplicaEvent {
  enum class Kind : std::uint8_t { first_token, finished };
  Kind kind = Kind::first_token;
  std::uint64_t id = 0;
  SimTime at = 0;
  std::int64_t cached_tokens = 0;
  std::int64_t preemptions = 0;
};

/// Cumulative counters of one replica (the engine's utilization, throughput and cache statistics).
struct ReplicaStats {
  SimTime busy_us = 0;  ///< time spent in steps
  std::int64_t steps = 0;
  std::int64_t runs = 0;            ///< runs of identical steps scheduled: steps - runs were applied analytically
  std::int64_t prefill_tokens = 0;  ///< tokens computed by prefill chunks (recomputes included)
  std::int64_t decode_tokens = 0;   ///< one per decoding sequence per step
  std::int64_t preemptions = 0;
  std::int64_t admitted = 0;  ///< admissions (a preempted sequence is admitted again)
  std::int64_t finished = 0;
  std::int64_t prefix_lookup_tokens = 0;  ///< tokens to compute at each admission
  std::int64_t prefix_hit_tokens = 0;     ///< of those, found in the prefix cache
  std::int64_t blocks_stored = 0;         ///< prompt blocks entered into the prefix cache
  std::int64_t blocks_evicted = 0;        ///< cached blocks evicted at the free queue's head for new ones
};

/// One engine replica. Not thread-safe. Usage: `advance(t)` before `submit(seq, t)`; call `advance` at
/// `next_event()` (or any later time) to let it run. A step is scheduled when `advance` reaches its start:
/// a sequence submitted at that very time waits for the next step.
///
/// The KV cache holds blocks of block_size tokens. A prompt's full blocks are keyed by its chain (link
/// (k+1) x block_size / 16 - 1 for block k) and enter the prefix cache when the sequence's prefill ends;
/// blocks of generated tokens (and a prompt's partial last block) count against capacity but are never
/// cached (their token ids are unknown). A block computed while another copy is cached stays private.
/// Unreferenced blocks, cached or not, wait in a free queue in the order they were freed (a sequence's
/// last block first); a new block comes from its head, leaving the prefix cache if it was in it (vLLM's
/// free_block_queue: an LRU of unreferenced blocks). Token ids are kept only with emit_kv_events.
/// Admission takes the longest cached prefix, at most (tokens - 1) / block_size blocks (vLLM recomputes at
/// least one token for the logits).
class Replica {
 public:
  /// Throws std::invalid_argument for a spec check_spec() rejects.
  Replica(EngineSpec spec, bool emit_kv_events);

  /// Queues a sequence at `now` (>= the last advance). Copies what it keeps. Throws std::invalid_argument
  /// for a sequence that could never run (no tokens, or more KV blocks than the capacity; see fits()),
  /// and std::logic_error when the replica was not advanced to `now`.
  void submit(const SeqSpec& seq, SimTime now);
  /// Whether a sequence of this shape can run at all: 1 to 2^32 tokens each way, its KV blocks within
  /// the capacity.
  [[nodiscard]] bool fits(std::int64_t input_tokens, std::int64_t output_tokens) const noexcept;

  /// When the batch next changes (the end of the current run of identical steps, or a step due now);
  /// kNever when idle. Advancing there may emit no event.
  [[nodiscard]] SimTime next_event() const noexcept;
  /// Runs every step ending at or before `until` and schedules the one starting then. Appends observable
  /// events in time order (at one time: by id, first token before finish) to `events`, and, when
  /// emitting, BlockStored / BlockRemoved events in cache order to `kv.events` (`kv.ts` = `until` in s).
  void advance(SimTime until, std::vector<ReplicaEvent>& events, KvEventBatch& kv);

  [[nodiscard]] const ReplicaStats& stats() const noexcept { return stats_; }
  [[nodiscard]] std::int64_t waiting() const noexcept { return static_cast<std::int64_t>(waiting_.size()); }
  [[nodiscard]] std::int64_t running() const noexcept { return running_; }
  /// Blocks held by running sequences (a shared block once).
  [[nodiscard]] std::int64_t kv_blocks_used() const noexcept { return in_use_; }
  /// Blocks in the prefix cache (held or not).
  [[nodiscard]] std::int64_t kv_blocks_cached() const noexcept { return cached_; }
  [[nodiscard]] const EngineSpec& spec() const noexcept { return spec_; }

 private:
  static constexpr std::uint32_t kNil = 0xFFFFFFFFU;

  enum class Phase : std::uint8_t { free, waiting, prefill, decode };

  struct Seq {
    std::uint64_t id = 0;
    std::int64_t input = 0;
    std::int64_t output = 0;
    std::int64_t generated = 0;      // materialized (decoders: as of step decode_from)
    std::int64_t computed = 0;       // tokens in KV (decoders: as of step decode_from)
    std::int64_t decode_from = 0;    // the step a decoder's counters are as of
    std::int64_t cached_tokens = 0;  // realized hit of the prefill that gives the first token
    std::int64_t preemptions = 0;
    std::uint32_t generation = 0;  // bumps when it leaves the decoders (stale heap entries)
    std::uint32_t prev = kNil;     // running list, oldest first
    std::uint32_t next = kNil;
    Phase phase = Phase::free;
    bool first_token_sent = false;
    std::vector<std::uint64_t> hashes;  // one per full prompt block
    std::vector<std::uint32_t> tokens;  // the prompt (emit_kv_events only)
    std::vector<std::uint32_t> refs;    // cached blocks it holds, in block order
    std::vector<std::uint32_t> ref_at;  // the block index of each (the others are private)
    std::uint64_t order = 0;            // admission number: the running list's order
  };

  // A node of the free queue (vLLM's free_block_queue: every unreferenced block, least recently freed
  // first; allocation takes the head, evicting it from the prefix cache if cached): a cached block, or a
  // run of `free_run` private blocks freed together (no identity needed).
  struct Block {
    std::uint64_t hash = 0;
    std::int64_t free_run = 0;  // > 0: a run of free private blocks (not in the prefix cache)
    std::uint32_t refs = 0;     // running sequences holding this cached block; 0 = on the free queue
    std::uint32_t prev = kNil;  // towards the head (least recent)
    std::uint32_t next = kNil;  // towards the tail (most recent)
  };

  struct Finish {  // a decoder's last step
    std::int64_t step;
    std::uint32_t seq;
    std::uint32_t generation;
  };

  struct Run {  // identical steps from `start`; the first one scheduled explicitly
    SimTime start = 0;
    SimTime step_us = 0;
    std::int64_t steps = 0;     // remaining (0 = none scheduled)
    bool first = false;         // the first remaining step is the explicitly scheduled one
    std::int64_t decoders = 0;  // decoding sequences in each step
    std::int64_t first_prefill_tokens = 0;
    std::uint32_t prefiller = kNil;  // the partial prefill continuing in the later steps
    std::int64_t chunk = 0;          // its tokens per later step
  };

  // Scheduling and running.
  [[nodiscard]] bool has_work() const noexcept { return running_ > 0 || !waiting_.empty(); }
  void schedule(KvEventBatch& kv);
  [[nodiscard]] std::int64_t extension(std::int64_t left, bool blocked, KvEventBatch& kv);
  [[nodiscard]] std::int64_t run_blocks(std::uint32_t prefiller, std::int64_t chunk, std::int64_t steps) const;
  void complete(std::int64_t k, KvEventBatch& kv);
  void end_of_run(std::vector<ReplicaEvent>& events, KvEventBatch& kv);
  void finish_prefill(std::uint32_t s, std::vector<ReplicaEvent>& events, KvEventBatch& kv);
  void finish(std::uint32_t s, std::vector<ReplicaEvent>& events);
  void end_sequences(std::vector<ReplicaEvent>& events);
  void preempt(std::uint32_t s);
  [[nodiscard]] bool try_admit(std::uint32_t s, std::int64_t left, bool commit, std::int64_t& chunk, KvEventBatch& kv);
  void leave_decoders(Seq& q) noexcept;
  [[nodiscard]] std::int64_t decoder_blocks(std::int64_t first_step, std::int64_t count) const noexcept;
  void materialize(Seq& q) const noexcept;
  [[nodiscard]] std::size_t phase_of(const Seq& q) const noexcept;
  [[nodiscard]] std::int64_t blocks_for(std::int64_t tokens) const noexcept { return (tokens + bs_ - 1) / bs_; }
  void drop_stale_finishes();

  // Running list and sequence slots.
  void append_running(std::uint32_t s) noexcept;
  void remove_running(std::uint32_t s) noexcept;
  [[nodiscard]] std::uint32_t new_seq();

  // The KV cache.
  [[nodiscard]] std::int64_t avail() const noexcept { return capacity_ - in_use_; }
  void allocate(std::int64_t blocks, KvEventBatch& kv);
  void release(Seq& q);
  void ref_block(std::uint32_t b) noexcept;
  void free_private(std::int64_t blocks);  // to the free queue (in_use_ is the caller's)
  [[nodiscard]] std::uint32_t new_node();
  [[nodiscard]] std::size_t home(std::uint64_t hash) const noexcept;
  [[nodiscard]] std::uint32_t find(std::uint64_t hash) const noexcept;
  std::uint32_t insert(std::uint64_t hash);
  void erase(std::uint32_t b) noexcept;
  void lru_push(std::uint32_t b) noexcept;
  void lru_unlink(std::uint32_t b) noexcept;
  void grow_table();
  void store_prompt(Seq& q, KvEventBatch& kv);

  EngineSpec spec_;
  bool emit_;
  std::int64_t bs_;
  std::int64_t capacity_;  // blocks (a huge number when unbounded)
  ReplicaStats stats_;

  SimTime now_ = 0;              // the last boundary (the start of run_ when one is scheduled)
  std::int64_t step_index_ = 0;  // steps completed
  Run run_;
  std::vector<std::pair<std::uint32_t, std::int64_t>> first_prefills_;  // (seq, chunk) of run_'s first step

  std::vector<Seq> seqs_;
  std::vector<std::uint32_t> free_seqs_;
  std::deque<std::uint32_t> waiting_;  // FCFS; preempted sequences go back to the front
  std::uint32_t run_head_ = kNil;      // oldest running
  std::uint32_t run_tail_ = kNil;      // newest running
  std::int64_t running_ = 0;
  std::int64_t decoders_ = 0;
  std::vector<std::int64_t> phases_;  // decoders by the step residue at which they take a new block
  std::vector<Finish> finishes_;      // min-heap by step

  std::vector<Block> blocks_;
  std::vector<std::uint32_t> free_blocks_;
  struct Slot {  // the prefix cache's index: the hash beside its block (a probe reads no block)
    std::uint64_t hash = 0;
    std::uint32_t block = kNil;
  };
  std::vector<Slot> table_;  // open addressing, linear probing
  std::int64_t cached_ = 0;
  std::int64_t in_use_ = 0;
  std::uint32_t lru_head_ = kNil;  // the free queue's head (least recent)
  std::uint32_t lru_tail_ = kNil;
  std::vector<std::uint32_t> scratch_;  // hit blocks of an admission
  std::vector<std::uint32_t> ending_;   // sequences ending at the end of a run
  std::uint64_t admissions_ = 0;
  std::vector<std::uint64_t> removed_;  // hashes evicted by one allocation
};

}  // namespace turnout::sim
