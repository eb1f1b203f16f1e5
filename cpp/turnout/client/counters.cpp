#include "turnout/client/counters.hpp"

#include <algorithm>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/version.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "turnout/shm/segment.hpp"
#include "turnout/shm/seqlock.hpp"

namespace turnout::client {

namespace bip = boost::interprocess;
using shm::check_segment_name;
using shm::map_private_segment;

void write_slot(Slot& s, const SlotPayload& payload) noexcept {
  std::uint64_t words[kSlotWords] = {};
  std::memcpy(words, &payload, sizeof payload);
  const shm::SeqlockWrite write(s.seq);
  for (std::size_t i = 0; i < kSlotWords; ++i) s.words[i].store(words[i], std::memory_order_relaxed);
}

bool read_slot(const Slot& s, SlotPayload& out) {
  std::uint64_t words[kSlotWords];
  const auto read = shm::seqlock_read(
      s.seq, 1000,
      [&] {
        for (std::size_t i = 0; i < kSlotWords; ++i) words[i] = s.words[i].load(std::memory_order_relaxed);
      },
      [] { std::this_thread::yield(); });
  if (!read) return false;
  std::memcpy(&out, words, sizeof out);
  return true;
}

std::string layout_mismatch(const ShmHeader& h, std::size_t mapped) {
  if (h.magic != kShmMagic) return "it is not a Turnout segment (bad magic)";
  if (h.layout_version != kShmLayoutVersion) {
    return "its layout version is " + std::to_string(h.layout_version) + ", this build uses " +
           std::to_string(kShmLayoutVersion);
  }
  if (h.header_size != sizeof(ShmHeader) || h.slot_size != sizeof(Slot) || h.payload_size != sizeof(SlotPayload) ||
      h.counters_size != sizeof(Counters)) {
    return "its struct sizes differ from this build's";
  }
  const std::string fp = layout_fingerprint();
  if (read_name(h.fingerprint) != fp) {
    return "it was written by '" + read_name(h.fingerprint) + "', this build is '" + fp + "'";
  }
  if (mapped < counters_segment_size(h.slot_capacity)) return "it is shorter than its header says";
  return {};
}

std::string layout_fingerprint() {
  // The ledger's field list first (a truncated compiler version never cuts it off): a segment written
  // with other counters, even of the same size, is not read as ours.
  char ledger[32];
  std::snprintf(ledger, sizeof ledger, "ledger %016llx ", static_cast<unsigned long long>(ledger_fingerprint()));
  std::string fp = ledger;
#if defined(__clang__)
  fp += "clang " __clang_version__;
#elif defined(__GNUC__)
  fp += "gcc " __VERSION__;
#else
  fp += "unknown compiler";
#endif
  fp += " boost " BOOST_LIB_VERSION;
  return fp.substr(0, sizeof(ShmHeader::fingerprint) - 1);
}

Result<std::unique_ptr<bip::mapped_region>> map_counters_segment(const std::string& name) {
  auto region = map_private_segment(name, false);
  if (!region) return region;
  if (region.value()->get_size() < sizeof(ShmHeader)) {
    return make_error(ErrorCode::incompatible_layout,
                      "shared-memory segment '" + name + "' is too small to be a Turnout segment");
  }
  const auto& h = *static_cast<const ShmHeader*>(region.value()->get_address());
  if (const std::string why = layout_mismatch(h, region.value()->get_size()); !why.empty()) {
    return make_error(ErrorCode::incompatible_layout, "cannot read shared-memory segment '" + name + "': " + why);
  }
  return region;
}

// ---------------------------------------------------------------------------------------------- reader

Result<std::unique_ptr<SegmentReader>> SegmentReader::attach(const std::string& name) {
  if (auto ok = check_segment_name(name); !ok) return std::move(ok).error();
  std::unique_ptr<SegmentReader> r(new SegmentReader());
  r->name_ = name;
  if (auto ok = r->map(); !ok) return std::move(ok).error();
  return r;
}

SegmentReader::~SegmentReader() { unmap(); }

void SegmentReader::unmap() noexcept {
  region_.reset();
  base_ = nullptr;
  size_ = 0;
}

Result<Ok> SegmentReader::map() {
  unmap();
  auto region = map_counters_segment(name_);
  if (!region) return std::move(region).error();
  region_ = std::move(region).value();
  base_ = region_->get_address();
  size_ = region_->get_size();
  return Ok{};
}

HeaderInfo SegmentReader::header() const noexcept {
  if (base_ == nullptr) return {};
  const auto& h = *static_cast<const ShmHeader*>(base_);
  return {h.creator_pid.load(), h.generation.load(), h.heartbeat_ms.load(), h.config_version.load(),
          h.ready.load(std::memory_order_acquire) != 0};
}

Result<std::vector<NamedCounters>> SegmentReader::counters(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    if (base_ == nullptr) {
      if (auto ok = map(); !ok) return std::move(ok).error();
    }
    const auto& h = *static_cast<const ShmHeader*>(base_);
    if (h.retired.load(std::memory_order_acquire) != 0) {
      unmap();
      continue;
    }
    if (h.ready.load(std::memory_order_acquire) != 0) {
      const auto generation = h.generation.load(std::memory_order_acquire);
      const auto count = std::min(h.slot_count.load(std::memory_order_acquire), h.slot_capacity);
      const auto* slots = reinterpret_cast<const Slot*>(static_cast<const char*>(base_) + kSlotsOffset);
      std::vector<NamedCounters> out;
      out.reserve(count);
      bool torn = false;
      for (std::uint32_t i = 0; i < count && !torn; ++i) {
        SlotPayload p;
        if (!read_slot(slots[i], p)) {
          torn = true;
          break;
        }
        out.push_back({read_name(p.scenario), read_name(p.target), read_name(p.kind), read_name(p.provider), p.counters,
                       p.objectives});
      }
      std::atomic_thread_fence(std::memory_order_acquire);
      if (!torn && h.ready.load(std::memory_order_relaxed) != 0 &&
          h.generation.load(std::memory_order_relaxed) == generation) {
        return out;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return make_error(ErrorCode::unavailable,
                        "shared-memory segment '" + name_ + "' stayed not ready (is its sidecar starting?)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace turnout::client
