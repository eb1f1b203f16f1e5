#include "sidecar/shm.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/mapped_region.hpp>
#include <cerrno>
#include <cstring>

#include "turnout/shm/private_file.hpp"
#include "turnout/shm/segment.hpp"
#include "turnout/shm/seqlock.hpp"

namespace turnout::sidecar {

using namespace turnout::client;  // the layout this writer writes
using shm::check_segment_name;
using shm::create_private_segment;
using shm::lock_path;
using shm::map_private_segment;
using shm::replace_segment;

namespace {

void copy_name(char (&dst)[kShmNameBytes], const std::string& src) {
  std::memset(dst, 0, sizeof dst);
  std::memcpy(dst, src.data(), std::min(src.size(), sizeof dst - 1));
}
template <std::size_t N>
void copy_short(char (&dst)[N], const char* src) {
  std::memset(dst, 0, N);
  std::strncpy(dst, src, N - 1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------- writer

Slot& Segment::slot(std::size_t i) const noexcept {
  return *reinterpret_cast<Slot*>(static_cast<char*>(base_) + kSlotsOffset + i * sizeof(Slot));
}

Result<Segment::Opened> Segment::open(const std::string& name, std::size_t min_slots) {
  if (auto ok = check_segment_name(name); !ok) return std::move(ok).error();
  std::unique_ptr<Segment> seg(new Segment());
  seg->name_ = name;
  const std::string lock = lock_path(name);
  auto lock_fd = shm::open_private_lock(lock);  // another user's lock file is refused, not adopted
  if (!lock_fd) return std::move(lock_fd).error();
  seg->lock_fd_ = lock_fd.value();
  if (::flock(seg->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return os_error(errno, "cannot lock " + lock);
    std::string who;
    if (auto reader = SegmentReader::attach(name); reader) {
      who = " (pid " + std::to_string(reader.value()->header().creator_pid) + ")";
    }
    return make_error(ErrorCode::busy, "shared-memory segment '" + name + "' is owned by a live sidecar" + who +
                                           "; stop it or choose another --shm name");
  }

  Opened out;
  std::uint64_t generation = 1;
  bool reuse = false;
  // Only a segment private to us is re-attached: one that anyone else could have written is rebuilt.
  auto old = map_private_segment(name, true);
  if (!old) {
    out.note = old.error().code == ErrorCode::not_found
                   ? "created segment '" + name + "'"
                   : "stale segment '" + name + "' is not re-attached (" + old.error().message + "): rebuilding";
  } else if (old.value()->get_size() < sizeof(ShmHeader)) {
    out.note = "stale segment '" + name + "' is too small to be ours: rebuilding";
  } else {
    auto region = std::move(old).value();
    auto& h = *static_cast<ShmHeader*>(region->get_address());
    const std::string why = layout_mismatch(h, region->get_size());
    if (h.magic == kShmMagic && h.layout_version == kShmLayoutVersion) {
      generation = h.generation.load() + 1;
    }
    if (!why.empty()) {
      out.note = "stale segment '" + name + "' does not match this sidecar: " + why + "; rebuilding under generation " +
                 std::to_string(generation) + " (its counters are not read)";
    } else {
      const auto count = std::min(h.slot_count.load(), h.slot_capacity);
      auto* slots = reinterpret_cast<Slot*>(static_cast<char*>(region->get_address()) + kSlotsOffset);
      std::size_t torn = 0;
      for (std::uint32_t i = 0; i < count; ++i) {
        Slot& s = slots[i];
        SlotPayload p{};
        if ((s.seq.load() & 1U) != 0) {
          ++torn;  // the owner died inside this write: the words are each old or new, take them
          std::uint64_t words[kSlotWords];
          for (std::size_t w = 0; w < kSlotWords; ++w) words[w] = s.words[w].load();
          std::memcpy(&p, words, sizeof p);
        } else if (!read_slot(s, p)) {
          continue;
        }
        out.recovered.push_back({read_name(p.scenario), read_name(p.target), read_name(p.kind), read_name(p.provider),
                                 p.counters, p.objectives});
      }
      out.note = "re-attached segment '" + name + "' of dead sidecar pid " + std::to_string(h.creator_pid.load()) +
                 ": " + std::to_string(out.recovered.size()) + " counter rows recovered" +
                 (torn ? " (" + std::to_string(torn) + " caught mid-write)" : "") + ", generation " +
                 std::to_string(generation);
      if (h.slot_capacity >= min_slots) {
        reuse = true;
        seg->region_ = std::move(region);
        seg->base_ = seg->region_->get_address();
        seg->size_ = seg->region_->get_size();
        h.ready.store(0);
        h.retired.store(0);
        h.creator_pid.store(static_cast<std::int64_t>(::getpid()));
        h.generation.store(generation);
      } else {
        h.retired.store(1);  // readers of the old mapping re-open by name
      }
    }
  }
  if (!reuse) {
    if (auto ok = seg->create(min_slots, generation); !ok) return std::move(ok).error();
  }
  out.segment = std::move(seg);
  return out;
}

namespace {

/// A new counter segment `name` of at least `min_slots` slots (twice that: room to grow), its header
/// written, not yet ready.
Result<std::unique_ptr<boost::interprocess::mapped_region>> new_counter_segment(const std::string& name,
                                                                                std::size_t min_slots,
                                                                                std::uint64_t generation) {
  const std::size_t slots = std::max<std::size_t>(64, min_slots * 2);
  auto region = create_private_segment(name, counters_segment_size(slots));
  if (!region) return region;
  auto& h = *static_cast<ShmHeader*>(region.value()->get_address());
  h.magic = kShmMagic;
  h.layout_version = kShmLayoutVersion;
  h.header_size = sizeof(ShmHeader);
  h.slot_size = sizeof(Slot);
  h.payload_size = sizeof(SlotPayload);
  h.counters_size = sizeof(Counters);
  h.slot_capacity = static_cast<std::uint32_t>(slots);
  const std::string fp = layout_fingerprint();
  std::memcpy(h.fingerprint, fp.data(), fp.size());
  h.creator_pid.store(static_cast<std::int64_t>(::getpid()));
  h.generation.store(generation);
  return region;
}

}  // namespace

Result<Ok> Segment::create(std::size_t min_slots, std::uint64_t generation) {
  unmap();
  auto region = new_counter_segment(name_, min_slots, generation);
  if (!region) return std::move(region).error();
  adopt(std::move(region).value());
  return Ok{};
}

void Segment::adopt(std::unique_ptr<boost::interprocess::mapped_region> region) noexcept {
  region_ = std::move(region);
  base_ = region_->get_address();
  size_ = region_->get_size();
  slot_of_.clear();
}

void Segment::unmap() noexcept {
  region_.reset();
  base_ = nullptr;
  size_ = 0;
  slot_of_.clear();
}

Segment::~Segment() {
  unmap();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // drops the flock: the next sidecar re-attaches
}

std::uint64_t Segment::generation() const noexcept { return head().generation.load(); }
std::size_t Segment::capacity() const noexcept { return head().slot_capacity; }

void Segment::begin_generation(std::uint64_t generation) noexcept {
  head().generation.store(generation, std::memory_order_release);
}

Result<Ok> Segment::rebuild(std::size_t min_slots, std::uint64_t generation) {
  const std::string next = name_ + ".next";
  auto region = new_counter_segment(next, min_slots, generation);
  if (!region) {
    return Error{region.error().code, "cannot grow the counter segment '" + name_ + "' to " +
                                          std::to_string(min_slots) + " rows: " + region.error().message};
  }
  if (auto swapped = replace_segment(next, name_); !swapped) {
    return Error{swapped.error().code, "cannot grow the counter segment '" + name_ + "': " + swapped.error().message};
  }
  head().retired.store(1, std::memory_order_release);  // readers of this mapping re-open by name: the new one
  adopt(std::move(region).value());
  return Ok{};
}

Result<Ok> Segment::publish_all(const Config& config, const std::vector<CounterRow>& rows) {
  if (rows.size() > capacity()) {
    return make_error(ErrorCode::internal, "routing table needs " + std::to_string(rows.size()) +
                                               " counter slots, the segment has " + std::to_string(capacity()) +
                                               " (the caller rebuilds it first)");
  }
  ShmHeader& h = head();
  h.ready.store(0, std::memory_order_seq_cst);
  h.slot_count.store(0, std::memory_order_seq_cst);
  slot_of_.clear();
  for (std::uint32_t i = 0; i < rows.size(); ++i) {
    Slot& s = slot(i);
    const auto seq = s.seq.load(std::memory_order_relaxed);
    if ((seq & 1U) != 0) s.seq.store(seq + 1, std::memory_order_relaxed);  // a dead writer's torn slot
    slot_of_[(static_cast<std::uint64_t>(rows[i].scenario) << 32) | rows[i].target] = i;
    publish(config, rows[i]);
  }
  h.config_version.store(config.content_hash);
  h.slot_count.store(static_cast<std::uint32_t>(rows.size()), std::memory_order_release);
  h.ready.store(1, std::memory_order_release);
  return Ok{};
}

void Segment::publish(const Config& config, const CounterRow& row) {
  const auto it = slot_of_.find((static_cast<std::uint64_t>(row.scenario) << 32) | row.target);
  if (it == slot_of_.end()) return;  // not a row of this table
  SlotPayload p{};
  copy_name(p.scenario, config.scenarios[row.scenario].name);
  const Target& t = config.targets[row.target];
  copy_name(p.target, t.name);
  copy_short(p.kind, to_string(t.kind));
  copy_short(p.provider, to_string(t.provider));
  p.objectives = objectives(config.scenarios[row.scenario]);
  p.counters = row.counters;
  write_slot(slot(it->second), p);
}

void Segment::heartbeat(std::int64_t now_ms) noexcept { head().heartbeat_ms.store(now_ms, std::memory_order_release); }

}  // namespace turnout::sidecar
