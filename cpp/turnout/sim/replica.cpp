#include "turnout/sim/replica.hpp"

// How the replica follows vLLM v1's scheduler (vllm/v1/core/sched/scheduler.py, kv_cache_manager.py,
// block_pool.py):
// - Each step first serves the running sequences in admission order, then admits waiting ones FCFS while
//   the token budget (max_num_batched_tokens), max_num_seqs and KV blocks allow; a prompt that does not fit
//   the budget left is prefilled in chunks over several steps (chunked prefill). vLLM requires
//   max_num_batched_tokens >= max_num_seqs, so every decoding sequence gets its token every step; hence at
//   most one sequence is part-way through its prefill after a step, and it is the newest.
// - A running sequence that cannot get a KV block preempts the newest running sequence (recompute mode):
//   its blocks are freed, it goes back to the front of the waiting queue and later prefills its prompt and
//   the tokens it had generated again. A step that preempted admits no one.
// - Admission takes the longest cached prefix of the prompt, at most (tokens - 1) / block_size blocks.
//   Freed blocks join the LRU's recent end in reverse order (a sequence's tail is evicted first).
// Departures, documented in replica.hpp: prompt blocks enter the prefix cache when the prefill ends (vLLM
// caches each chunk as it is scheduled), generated tokens' blocks are never cached.
//
// Event-driven: after a step that completes nothing and admits no one, the following steps are identical
// (same decoders, the same prefill chunk) until a decoder finishes, the prefill ends, or a block runs
// out; a run of them is applied at once. Per decoder nothing is touched during a run: its counters are
// kept as of a step (decode_from) and decoders are counted by the step residue (mod block_size) at which
// they need a new block, so a run's block demand is O(block_size). A run is cut at a submit.

#include <algorithm>
#include <cassert>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace turnout::sim {

namespace {

constexpr std::int64_t kUnbounded = std::int64_t{1} << 60;
constexpr std::size_t kNone = ~std::size_t{0};
/// The longest a step may take (10 minutes), and the most tokens a sequence may have each way (2^32):
/// together they keep every run's end, 2^33 steps at most, inside the 64-bit clock.
constexpr double kMaxStepMs = 600'000.0;
constexpr std::int64_t kMaxSequenceTokens = std::int64_t{1} << 32;
/// The largest concurrency calibration simulates (8 x this many requests).
constexpr std::int64_t kMaxCalibrationConcurrency = std::int64_t{1} << 16;

bool finite_non_negative(double v) { return std::isfinite(v) && v >= 0; }

SimTime step_micros(const StepModel& m, std::int64_t prefill_tokens, std::int64_t decoders) {
  const double ms = m.overhead_ms + m.ms_per_prefill_token * static_cast<double>(prefill_tokens) +
                    m.ms_per_decode_seq * static_cast<double>(decoders);
  return std::max<SimTime>(1, std::llround(ms * static_cast<double>(kMicrosPerMs)));
}

std::int64_t residue(std::int64_t a, std::int64_t m) {
  const std::int64_t r = a % m;
  return r < 0 ? r + m : r;
}

Error invalid(std::string message) { return make_error(ErrorCode::invalid_argument, std::move(message)); }

}  // namespace

Result<Ok> check_spec(const EngineSpec& spec) {
  const StepModel& m = spec.step;
  if (!finite_non_negative(m.overhead_ms) || !finite_non_negative(m.ms_per_prefill_token) ||
      !finite_non_negative(m.ms_per_decode_seq)) {
    return invalid("engine spec: step times must be finite and >= 0");
  }
  if (m.overhead_ms + m.ms_per_prefill_token + m.ms_per_decode_seq <= 0) {
    return invalid("engine spec: a step model of all zeros");
  }
  if (spec.max_seqs < 1) return invalid("engine spec: max_seqs must be >= 1");
  if (spec.max_batched_tokens < spec.max_seqs) {
    return invalid(
        "engine spec: max_batched_tokens must be >= max_seqs (every decoding sequence gets its token "
        "each step, as vLLM requires)");
  }
  if (spec.block_size < kChainTokens || spec.block_size % kChainTokens != 0) {
    return invalid("engine spec: block_size must be a positive multiple of " + std::to_string(kChainTokens));
  }
  if (spec.capacity_blocks < 0) return invalid("engine spec: capacity_blocks must be >= 0 (0 = unbounded)");
  if (spec.gpus < 1) return invalid("engine spec: gpus must be >= 1");
  // The longest step: a full budget of prefill beside max_seqs decoders (in double: no overflow).
  const double longest = m.overhead_ms + m.ms_per_prefill_token * static_cast<double>(spec.max_batched_tokens) +
                         m.ms_per_decode_seq * static_cast<double>(spec.max_seqs);
  if (!(longest <= kMaxStepMs)) {
    return invalid(
        "engine spec: a full step (overhead + max_batched_tokens prefill tokens + max_seqs decoders) "
        "must take at most 10 minutes, got " +
        std::to_string(longest) + " ms");
  }
  return Ok{};
}

// ---- Calibration ---------------------------------------------------------------------------------------

double saturated_throughput(const EngineSpec& spec, const ThroughputRow& row) {
  EngineSpec s = spec;
  s.max_seqs = row.concurrency;
  s.max_batched_tokens = std::max(s.max_batched_tokens, row.concurrency);
  Replica replica(s, false);
  // Every request queued at once (a client at an infinite rate); the batch is the concurrency. Measured
  // between the concurrency-th and the (total - concurrency)-th completion: the full batch's steady state.
  const std::int64_t total = 8 * row.concurrency;
  SeqSpec seq{0, Prompt{}, row.input_tokens, row.output_tokens};
  for (std::int64_t i = 0; i < total; ++i) {
    seq.id = static_cast<std::uint64_t>(i);
    replica.submit(seq, 0);
  }
  std::vector<ReplicaEvent> events;
  KvEventBatch kv;
  std::int64_t finished = 0;
  SimTime from = 0;
  SimTime to = 0;
  while (finished < total - row.concurrency) {
    events.clear();
    replica.advance(replica.next_event(), events, kv);
    for (const ReplicaEvent& e : events) {
      if (e.kind != ReplicaEvent::Kind::finished) continue;
      ++finished;
      if (finished == row.concurrency) from = e.at;
      if (finished == total - row.concurrency) to = e.at;
    }
  }
  const auto tokens = static_cast<double>((total - 2 * row.concurrency) * row.output_tokens);
  return tokens / (static_cast<double>(to - from) / static_cast<double>(kMicrosPerS));
}

Result<Ok> check_row(const EngineSpec& spec, const ThroughputRow& row) {
  if (auto ok = check_spec(spec); !ok) return ok;
  if (!std::isfinite(row.output_tokens_per_s) || row.output_tokens_per_s <= 0) {
    return invalid("throughput row: output_tokens_per_s must be > 0");
  }
  if (row.input_tokens < 1 || row.output_tokens < 1 || row.concurrency < 1) {
    return invalid("throughput row: input_tokens, output_tokens and concurrency must be >= 1");
  }
  if (row.concurrency > kMaxCalibrationConcurrency) {
    return invalid("throughput row: concurrency must be at most " + std::to_string(kMaxCalibrationConcurrency));
  }
  if (!Replica(spec, false).fits(row.input_tokens, row.output_tokens)) {
    return invalid("throughput row: a request of this shape needs more KV blocks than capacity_blocks");
  }
  return Ok{};
}

StepModel calibrate(const EngineSpec& spec, const ThroughputRow& row) {
  if (auto ok = check_row(spec, row); !ok) throw std::invalid_argument(ok.error().message);
  EngineSpec s = spec;
  for (int pass = 0; pass < 2; ++pass) {
    const double factor = saturated_throughput(s, row) / row.output_tokens_per_s;
    s.step.overhead_ms *= factor;
    s.step.ms_per_prefill_token *= factor;
    s.step.ms_per_decode_seq *= factor;
  }
  return s.step;
}

// ---- Replica: sequences ------------------------------------------------------------------------------

Replica::Replica(EngineSpec spec, bool emit_kv_events)
    : spec_(spec),
      emit_(emit_kv_events),
      bs_(spec.block_size),
      capacity_(spec.capacity_blocks > 0 ? spec.capacity_blocks : kUnbounded) {
  if (auto ok = check_spec(spec_); !ok) throw std::invalid_argument(ok.error().message);
  phases_.assign(static_cast<std::size_t>(bs_), 0);
  table_.assign(64, Slot{});
  free_private(capacity_);  // the free queue starts as every block, none cached
}

bool Replica::fits(std::int64_t input_tokens, std::int64_t output_tokens) const noexcept {
  // The most a sequence ever holds: its prompt and every generated token but the last (never computed).
  return input_tokens >= 1 && output_tokens >= 1 && input_tokens <= kMaxSequenceTokens &&
         output_tokens <= kMaxSequenceTokens && blocks_for(input_tokens + output_tokens - 1) <= capacity_;
}

void Replica::submit(const SeqSpec& seq, SimTime now) {
  if (!fits(seq.input_tokens, seq.output_tokens)) {
    throw std::invalid_argument(
        "Replica::submit: sequence " + std::to_string(seq.id) + " (" + std::to_string(seq.input_tokens) + " in, " +
        std::to_string(seq.output_tokens) + " out) can never run: it needs at least one token each way and at most " +
        std::to_string(spec_.capacity_blocks) + " KV blocks of " + std::to_string(bs_) + " tokens");
  }
  if (run_.steps > 0) {
    if (now < run_.start || run_.start + run_.steps * run_.step_us <= now) {
      throw std::logic_error("Replica::submit: advance the replica to the submit time first");
    }
    // Steps that started by `now` were scheduled without this sequence; the rest are rescheduled.
    run_.steps = std::min(run_.steps, (now - run_.start) / run_.step_us + 1);
  } else if (has_work()) {
    if (now != now_) throw std::logic_error("Replica::submit: advance the replica to the submit time first");
  } else {
    if (now < now_) throw std::logic_error("Replica::submit: a submit before the replica's last step");
    now_ = now;
  }
  const std::uint32_t s = new_seq();
  Seq& q = seqs_[s];
  q.id = seq.id;
  q.input = seq.input_tokens;
  q.output = seq.output_tokens;
  // Full prompt blocks the cache can key: covered by the chain (and, for KV events, by token ids).
  std::int64_t keyed = std::min(static_cast<std::int64_t>(seq.prompt.chain.size()) * kChainTokens, q.input);
  if (emit_) keyed = std::min(keyed, static_cast<std::int64_t>(seq.prompt.token_ids.size()));
  const std::int64_t blocks = keyed / bs_;
  const std::int64_t links = bs_ / kChainTokens;
  for (std::int64_t k = 0; k < blocks; ++k) {
    q.hashes.push_back(seq.prompt.chain[static_cast<std::size_t>((k + 1) * links - 1)]);
  }
  if (emit_) q.tokens.assign(seq.prompt.token_ids.begin(), seq.prompt.token_ids.begin() + blocks * bs_);
  q.phase = Phase::waiting;
  waiting_.push_back(s);
}

std::uint32_t Replica::new_seq() {
  std::uint32_t s = 0;
  if (!free_seqs_.empty()) {
    s = free_seqs_.back();
    free_seqs_.pop_back();
  } else {
    s = static_cast<std::uint32_t>(seqs_.size());
    seqs_.emplace_back();
  }
  Seq& q = seqs_[s];
  q.generated = q.computed = q.decode_from = q.cached_tokens = q.preemptions = 0;
  q.prev = q.next = kNil;
  q.first_token_sent = false;
  q.hashes.clear();  // keeps capacity: a reused slot allocates nothing
  q.tokens.clear();
  q.refs.clear();
  q.ref_at.clear();
  return s;
}

void Replica::append_running(std::uint32_t s) noexcept {
  Seq& q = seqs_[s];
  q.order = admissions_++;
  q.prev = run_tail_;
  q.next = kNil;
  if (run_tail_ != kNil) {
    seqs_[run_tail_].next = s;
  } else {
    run_head_ = s;
  }
  run_tail_ = s;
  ++running_;
}

void Replica::remove_running(std::uint32_t s) noexcept {
  Seq& q = seqs_[s];
  if (q.prev != kNil) {
    seqs_[q.prev].next = q.next;
  } else {
    run_head_ = q.next;
  }
  if (q.next != kNil) {
    seqs_[q.next].prev = q.prev;
  } else {
    run_tail_ = q.prev;
  }
  q.prev = q.next = kNil;
  --running_;
}

// ---- Replica: stepping ----------------------------------------------------------------------------------

SimTime Replica::next_event() const noexcept {
  if (run_.steps > 0) return run_.start + run_.steps * run_.step_us;
  return has_work() ? now_ : kNever;
}

void Replica::advance(SimTime until, std::vector<ReplicaEvent>& events, KvEventBatch& kv) {
  const std::size_t kv_before = kv.events.size();
  for (;;) {
    if (run_.steps == 0) {
      if (!has_work() || now_ > until) break;
      schedule(kv);
    }
    const SimTime end = run_.start + run_.steps * run_.step_us;
    if (end > until) {
      const std::int64_t k = (until - run_.start) / run_.step_us;
      if (k > 0) complete(k, kv);
      break;
    }
    complete(run_.steps, kv);
    end_of_run(events, kv);
  }
  if (kv.events.size() != kv_before) kv.ts = static_cast<double>(until) / static_cast<double>(kMicrosPerS);
}

std::size_t Replica::phase_of(const Seq& q) const noexcept {
  // A decoder with c tokens in KV as of step d needs a new block at step h when c + (h - d) is a multiple
  // of the block size, i.e. when h + (c - d) is: it is counted under (c - d) mod block_size.
  return static_cast<std::size_t>(residue(q.computed - q.decode_from, bs_));
}

void Replica::materialize(Seq& q) const noexcept {
  if (q.phase != Phase::decode) return;
  const std::int64_t d = step_index_ - q.decode_from;
  q.computed += d;
  q.generated += d;
  q.decode_from = step_index_;
}

std::int64_t Replica::decoder_blocks(std::int64_t first_step, std::int64_t count) const noexcept {
  if (count <= 0) return 0;
  std::int64_t total = (count / bs_) * decoders_;
  for (std::int64_t i = 0; i < count % bs_; ++i) {
    total += phases_[static_cast<std::size_t>(residue(-(first_step + i), bs_))];
  }
  return total;
}

std::int64_t Replica::run_blocks(std::uint32_t prefiller, std::int64_t chunk, std::int64_t steps) const {
  // New blocks for `steps` steps after the current one (the prefiller's KV already counts this one's chunk).
  std::int64_t need = decoder_blocks(step_index_ + 1, steps);
  if (prefiller != kNil) {
    const std::int64_t c = seqs_[prefiller].computed + chunk;
    need += blocks_for(c + steps * chunk) - blocks_for(c);
  }
  return need;
}

void Replica::schedule(KvEventBatch& kv) {
  const std::int64_t budget = spec_.max_batched_tokens;
  // Running sequences first: every decoder's token, then the part-way prefill (the newest) if any.
  // Preempt the newest while their blocks do not fit.
  bool preempted = false;
  std::uint32_t p = kNil;
  std::int64_t chunk = 0;
  for (;;) {
    p = run_tail_ != kNil && seqs_[run_tail_].phase == Phase::prefill ? run_tail_ : kNil;
    std::int64_t need = phases_[static_cast<std::size_t>(residue(-step_index_, bs_))];
    chunk = 0;
    if (p != kNil) {
      const Seq& q = seqs_[p];
      chunk = std::min(q.input + q.generated - q.computed, budget - decoders_);
      need += blocks_for(q.computed + chunk) - blocks_for(q.computed);
    }
    if (need <= avail()) {
      allocate(need, kv);
      break;
    }
    preempt(run_tail_);
    preempted = true;
  }
  first_prefills_.clear();
  std::int64_t left = budget - decoders_;
  std::int64_t prefill = 0;
  if (p != kNil) {
    first_prefills_.emplace_back(p, chunk);
    left -= chunk;
    prefill += chunk;
  }
  // Then the waiting queue, FCFS, unless this step preempted.
  bool blocked = false;
  while (!preempted && !waiting_.empty() && running_ < spec_.max_seqs && left > 0) {
    const std::uint32_t h = waiting_.front();
    std::int64_t c = 0;
    if (!try_admit(h, left, true, c, kv)) {
      blocked = true;
      break;
    }
    waiting_.pop_front();
    seqs_[h].phase = Phase::prefill;
    append_running(h);
    first_prefills_.emplace_back(h, c);
    left -= c;
    prefill += c;
  }
  assert(decoders_ > 0 || prefill > 0);
  run_ = Run{now_, step_micros(spec_.step, prefill, decoders_), 1, true, decoders_, prefill, kNil, 0};
  ++stats_.runs;
  const std::int64_t more = extension(left, blocked, kv);
  if (more > 0) {
    run_.steps += more;
    if (!first_prefills_.empty()) {
      run_.prefiller = first_prefills_.front().first;
      run_.chunk = first_prefills_.front().second;
    }
  }
}

std::int64_t Replica::extension(std::int64_t left, bool blocked, KvEventBatch& kv) {
  // How many steps after this one repeat it exactly: nothing completes and no one is admitted in them.
  if (first_prefills_.size() > 1) return 0;  // a prefill ends in this step
  std::int64_t more = kUnbounded;
  std::uint32_t p = kNil;
  std::int64_t chunk = 0;
  if (!first_prefills_.empty()) {
    p = first_prefills_.front().first;
    chunk = first_prefills_.front().second;
    const Seq& q = seqs_[p];
    const std::int64_t rest = q.input + q.generated - q.computed - chunk;
    if (rest <= 0) return 0;  // its prefill ends in this step
    // It took the whole budget left: the same chunk while its rest is at least one chunk.
    assert(left == 0);
    more = rest / chunk;
  } else if (left > 0 && !waiting_.empty() && running_ < spec_.max_seqs && !blocked) {
    // Admission was not tried (this step preempted): would the next step admit?
    std::int64_t unused = 0;
    if (try_admit(waiting_.front(), left, false, unused, kv)) return 0;
    // It does not fit now; running sequences only take blocks until one ends, so it will not later.
  }
  if (decoders_ == 0 && p == kNil) return 0;
  drop_stale_finishes();
  if (!finishes_.empty()) more = std::min(more, finishes_.front().step - step_index_);
  if (more <= 0) return 0;
  // As many as the free and evictable blocks allow (a step that would lack one preempts: not identical).
  if (run_blocks(p, chunk, more) <= avail()) return more;
  std::int64_t lo = 0;
  std::int64_t hi = more;
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo + 1) / 2;
    if (run_blocks(p, chunk, mid) <= avail()) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

void Replica::complete(std::int64_t k, KvEventBatch& kv) {
  // Applies the first k remaining steps of the run: the first one's prefills (its blocks were taken when
  // it was scheduled), then the repeated steps' blocks and prefill chunks.
  const std::int64_t repeats = run_.first ? k - 1 : k;
  const std::int64_t first_step = run_.first ? step_index_ + 1 : step_index_;
  std::int64_t prefill = 0;
  if (run_.first) {
    for (const auto& [s, c] : first_prefills_) seqs_[s].computed += c;
    prefill += run_.first_prefill_tokens;
  }
  std::int64_t need = decoder_blocks(first_step, repeats);
  if (run_.prefiller != kNil && repeats > 0) {
    Seq& q = seqs_[run_.prefiller];
    need += blocks_for(q.computed + repeats * run_.chunk) - blocks_for(q.computed);
    q.computed += repeats * run_.chunk;
    prefill += repeats * run_.chunk;
  }
  allocate(need, kv);
  stats_.steps += k;
  stats_.busy_us += k * run_.step_us;
  stats_.decode_tokens += k * run_.decoders;
  stats_.prefill_tokens += prefill;
  step_index_ += k;
  now_ = run_.start + k * run_.step_us;
  run_.start = now_;
  run_.steps -= k;
  run_.first = false;
}

void Replica::end_of_run(std::vector<ReplicaEvent>& events, KvEventBatch& kv) {
  const std::size_t mark = events.size();
  for (const auto& [s, c] : first_prefills_) {
    const Seq& q = seqs_[s];
    if (q.phase == Phase::prefill && q.computed == q.input + q.generated) finish_prefill(s, events, kv);
  }
  first_prefills_.clear();
  drop_stale_finishes();
  while (!finishes_.empty() && finishes_.front().step == step_index_ - 1) {
    ending_.push_back(finishes_.front().seq);
    std::pop_heap(finishes_.begin(), finishes_.end(), [](const Finish& a, const Finish& b) { return a.step > b.step; });
    finishes_.pop_back();
    drop_stale_finishes();
  }
  assert(finishes_.empty() || finishes_.front().step >= step_index_);
  end_sequences(events);
  std::sort(events.begin() + static_cast<std::ptrdiff_t>(mark), events.end(),
            [](const ReplicaEvent& a, const ReplicaEvent& b) { return a.id != b.id ? a.id < b.id : a.kind < b.kind; });
}

void Replica::drop_stale_finishes() {
  const auto later = [](const Finish& a, const Finish& b) { return a.step > b.step; };
  while (!finishes_.empty()) {
    const Finish& f = finishes_.front();
    const Seq& q = seqs_[f.seq];
    if (q.generation == f.generation && q.phase == Phase::decode) return;
    std::pop_heap(finishes_.begin(), finishes_.end(), later);
    finishes_.pop_back();
  }
}

void Replica::finish_prefill(std::uint32_t s, std::vector<ReplicaEvent>& events, KvEventBatch& kv) {
  Seq& q = seqs_[s];
  ++q.generated;  // sampled at the end of the prefill
  if (!q.first_token_sent) {
    q.first_token_sent = true;
    events.push_back({ReplicaEvent::Kind::first_token, q.id, now_, q.cached_tokens, q.preemptions});
  }
  store_prompt(q, kv);
  if (q.generated >= q.output) {
    ending_.push_back(s);
    return;
  }
  q.phase = Phase::decode;
  q.decode_from = step_index_;
  ++decoders_;
  ++phases_[phase_of(q)];
  finishes_.push_back({step_index_ + (q.output - q.generated) - 1, s, q.generation});
  std::push_heap(finishes_.begin(), finishes_.end(), [](const Finish& a, const Finish& b) { return a.step > b.step; });
}

void Replica::leave_decoders(Seq& q) noexcept {
  if (q.phase != Phase::decode) return;
  materialize(q);
  --decoders_;
  --phases_[phase_of(q)];
  ++q.generation;  // its pending finish is stale
}

void Replica::end_sequences(std::vector<ReplicaEvent>& events) {
  // In running order, as vLLM frees them: the order their blocks join the free queue.
  std::sort(ending_.begin(), ending_.end(),
            [this](std::uint32_t a, std::uint32_t b) { return seqs_[a].order < seqs_[b].order; });
  for (const std::uint32_t s : ending_) finish(s, events);
  ending_.clear();
}

void Replica::finish(std::uint32_t s, std::vector<ReplicaEvent>& events) {
  Seq& q = seqs_[s];
  leave_decoders(q);
  events.push_back({ReplicaEvent::Kind::finished, q.id, now_, q.cached_tokens, q.preemptions});
  remove_running(s);
  release(q);
  q.phase = Phase::free;
  free_seqs_.push_back(s);
  ++stats_.finished;
}

void Replica::preempt(std::uint32_t s) {
  Seq& q = seqs_[s];
  leave_decoders(q);
  remove_running(s);
  release(q);
  q.computed = 0;
  q.phase = Phase::waiting;
  ++q.preemptions;
  ++stats_.preemptions;
  waiting_.push_front(s);
}

bool Replica::try_admit(std::uint32_t s, std::int64_t left, bool commit, std::int64_t& chunk, KvEventBatch& kv) {
  Seq& q = seqs_[s];
  const std::int64_t tokens = q.input + q.generated;  // a recompute prefills what it had generated too
  const auto most =
      static_cast<std::size_t>(std::min<std::int64_t>(static_cast<std::int64_t>(q.hashes.size()), (tokens - 1) / bs_));
  scratch_.clear();
  std::int64_t evictable = 0;  // hit blocks on the free queue: taking them leaves fewer free
  for (std::size_t k = 0; k < most; ++k) {
    const std::uint32_t b = find(q.hashes[k]);
    if (b == kNil) break;
    scratch_.push_back(b);
    if (blocks_[b].refs == 0) ++evictable;
  }
  const auto hit_blocks = static_cast<std::int64_t>(scratch_.size());
  const std::int64_t hit = hit_blocks * bs_;
  chunk = std::min(tokens - hit, left);
  const std::int64_t need = blocks_for(hit + chunk) - hit_blocks;
  if (need > avail() - evictable) return false;
  if (!commit) return true;
  for (const std::uint32_t b : scratch_) {
    ref_block(b);
    q.ref_at.push_back(static_cast<std::uint32_t>(q.refs.size()));
    q.refs.push_back(b);
  }
  allocate(need, kv);
  q.computed = hit;
  if (!q.first_token_sent) q.cached_tokens = hit;
  ++stats_.admitted;
  stats_.prefix_lookup_tokens += tokens;
  stats_.prefix_hit_tokens += hit;
  return true;
}

// ---- Replica: the KV cache ------------------------------------------------------------------------------

void Replica::allocate(std::int64_t blocks, KvEventBatch& kv) {
  // From the free queue's head: a run of private blocks is taken in one go, a cached block is evicted.
  if (blocks <= 0) return;
  assert(blocks <= avail());
  in_use_ += blocks;
  removed_.clear();
  while (blocks > 0) {
    const std::uint32_t b = lru_head_;
    Block& x = blocks_[b];
    if (x.free_run > 0) {
      const std::int64_t take = std::min(blocks, x.free_run);
      x.free_run -= take;
      blocks -= take;
      if (x.free_run == 0) {
        lru_unlink(b);
        free_blocks_.push_back(b);
      }
      continue;
    }
    lru_unlink(b);
    removed_.push_back(x.hash);
    erase(b);
    ++stats_.blocks_evicted;
    --blocks;
  }
  if (emit_ && !removed_.empty()) kv.events.emplace_back(BlockRemoved{removed_, "GPU", std::nullopt});
}

void Replica::release(Seq& q) {
  // Every block to the free queue's tail, the last block first (vLLM frees in reverse, so that a
  // sequence's tail is evicted before its prefix); a cached block only when no one else holds it.
  std::int64_t end = blocks_for(q.computed);
  in_use_ -= end - static_cast<std::int64_t>(q.refs.size());  // its private blocks
  for (std::size_t i = q.refs.size(); i-- > 0;) {
    const std::int64_t at = q.ref_at[i];
    free_private(end - at - 1);
    end = at;
    Block& b = blocks_[q.refs[i]];
    if (--b.refs == 0) {
      --in_use_;
      lru_push(q.refs[i]);
    }
  }
  free_private(end);
  q.refs.clear();
  q.ref_at.clear();
}

void Replica::free_private(std::int64_t blocks) {
  // Private blocks join the tail as one run (merged with a run already there).
  if (blocks <= 0) return;
  if (lru_tail_ != kNil && blocks_[lru_tail_].free_run > 0) {
    blocks_[lru_tail_].free_run += blocks;
    return;
  }
  const std::uint32_t b = new_node();
  blocks_[b] = Block{0, blocks, 0, kNil, kNil};
  lru_push(b);
}

std::uint32_t Replica::new_node() {
  if (!free_blocks_.empty()) {
    const std::uint32_t b = free_blocks_.back();
    free_blocks_.pop_back();
    return b;
  }
  blocks_.emplace_back();
  return static_cast<std::uint32_t>(blocks_.size() - 1);
}

void Replica::ref_block(std::uint32_t b) noexcept {
  if (blocks_[b].refs++ == 0) {
    lru_unlink(b);
    ++in_use_;
  }
}

void Replica::store_prompt(Seq& q, KvEventBatch& kv) {
  // The prompt's full blocks after its hit enter the cache (a block cached meanwhile stays private).
  std::size_t open = kNone;  // the BlockStored being extended, by index in kv.events
  for (std::size_t j = q.refs.size(); j < q.hashes.size(); ++j) {
    const std::uint64_t h = q.hashes[j];
    if (find(h) != kNil) {
      open = kNone;
      continue;
    }
    const std::uint32_t b = insert(h);
    blocks_[b].refs = 1;  // was one of its private blocks: in_use_ unchanged
    q.ref_at.push_back(static_cast<std::uint32_t>(j));
    q.refs.push_back(b);
    ++stats_.blocks_stored;
    if (!emit_) continue;
    if (open == kNone) {
      BlockStored stored;
      if (j > 0) stored.parent_block_hash = q.hashes[j - 1];
      stored.block_size = bs_;
      stored.medium = "GPU";
      open = kv.events.size();
      kv.events.emplace_back(std::move(stored));
    }
    auto& stored = std::get<BlockStored>(kv.events[open]);
    stored.block_hashes.push_back(h);
    const auto from = q.tokens.begin() + static_cast<std::ptrdiff_t>(j) * bs_;
    stored.token_ids.insert(stored.token_ids.end(), from, from + bs_);
  }
}

void Replica::lru_push(std::uint32_t b) noexcept {
  Block& x = blocks_[b];
  x.prev = lru_tail_;
  x.next = kNil;
  if (lru_tail_ != kNil) {
    blocks_[lru_tail_].next = b;
  } else {
    lru_head_ = b;
  }
  lru_tail_ = b;
}

void Replica::lru_unlink(std::uint32_t b) noexcept {
  Block& x = blocks_[b];
  if (x.prev != kNil) {
    blocks_[x.prev].next = x.next;
  } else {
    lru_head_ = x.next;
  }
  if (x.next != kNil) {
    blocks_[x.next].prev = x.prev;
  } else {
    lru_tail_ = x.prev;
  }
  x.prev = x.next = kNil;
}

std::size_t Replica::home(std::uint64_t hash) const noexcept {
  // Fibonacci hashing: test chains may be small integers.
  return static_cast<std::size_t>((hash * 0x9E3779B97F4A7C15ULL) >> 20) & (table_.size() - 1);
}

std::uint32_t Replica::find(std::uint64_t hash) const noexcept {
  const std::size_t mask = table_.size() - 1;
  for (std::size_t i = home(hash);; i = (i + 1) & mask) {
    const Slot& slot = table_[i];
    if (slot.block == kNil || slot.hash == hash) return slot.block;
  }
}

std::uint32_t Replica::insert(std::uint64_t hash) {
  if (static_cast<std::size_t>(cached_ + 1) * 2 > table_.size()) grow_table();
  const std::uint32_t b = new_node();
  blocks_[b] = Block{hash, 0, 0, kNil, kNil};
  const std::size_t mask = table_.size() - 1;
  std::size_t i = home(hash);
  while (table_[i].block != kNil) i = (i + 1) & mask;
  table_[i] = Slot{hash, b};
  ++cached_;
  return b;
}

void Replica::erase(std::uint32_t b) noexcept {
  const std::size_t mask = table_.size() - 1;
  std::size_t i = home(blocks_[b].hash);
  while (table_[i].block != b) i = (i + 1) & mask;
  // Backward-shift deletion: move up every later entry of the cluster whose home is not in (i, j].
  for (std::size_t j = (i + 1) & mask; table_[j].block != kNil; j = (j + 1) & mask) {
    const std::size_t h = home(table_[j].hash);
    const bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
    if (stays) continue;
    table_[i] = table_[j];
    i = j;
  }
  table_[i] = Slot{};
  free_blocks_.push_back(b);
  --cached_;
}

void Replica::grow_table() {
  std::vector<Slot> old(table_.size() * 2);
  old.swap(table_);
  const std::size_t mask = table_.size() - 1;
  for (const Slot& slot : old) {
    if (slot.block == kNil) continue;
    std::size_t i = home(slot.hash);
    while (table_[i].block != kNil) i = (i + 1) & mask;
    table_[i] = slot;
  }
}

}  // namespace turnout::sim
