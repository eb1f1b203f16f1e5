#include "sidecar/shm.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <boost/version.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

namespace turnout::sidecar {

namespace bip = boost::interprocess;

namespace {

constexpr std::size_t kSlotsOffset = sizeof(ShmHeader);
static_assert(kSlotsOffset % alignof(Slot) == 0);

std::size_t segment_size(std::size_t slots) { return kSlotsOffset + slots * sizeof(Slot); }

Error shm_error(std::string message) { return make_error(ErrorCode::invalid_argument, std::move(message)); }

void copy_name(char (&dst)[kShmNameBytes], const std::string& src) {
  std::memset(dst, 0, sizeof dst);
  std::memcpy(dst, src.data(), std::min(src.size(), sizeof dst - 1));
}
template <std::size_t N>
void copy_short(char (&dst)[N], const char* src) {
  std::memset(dst, 0, N);
  std::strncpy(dst, src, N - 1);
}
template <std::size_t N>
std::string read_name(const char (&src)[N]) {
  return {src, strnlen(src, N)};
}

// The layout check shared by writer (stale segment) and reader; empty string = compatible.
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
  if (mapped < segment_size(h.slot_capacity)) return "it is shorter than its header says";
  return {};
}

}  // namespace

void write_slot(Slot& slot, const SlotPayload& payload) noexcept {
  std::uint64_t words[kSlotWords] = {};
  std::memcpy(words, &payload, sizeof payload);
  const auto seq = slot.seq.load(std::memory_order_relaxed);
  slot.seq.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  for (std::size_t i = 0; i < kSlotWords; ++i) slot.words[i].store(words[i], std::memory_order_relaxed);
  slot.seq.store(seq + 2, std::memory_order_release);
}

bool read_slot(const Slot& slot, SlotPayload& out) noexcept {
  std::uint64_t words[kSlotWords];
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::uint64_t before = slot.seq.load(std::memory_order_acquire);
    if ((before & 1U) != 0) {
      std::this_thread::yield();
      continue;
    }
    for (std::size_t i = 0; i < kSlotWords; ++i) words[i] = slot.words[i].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (slot.seq.load(std::memory_order_relaxed) == before) {
      std::memcpy(&out, words, sizeof out);
      return true;
    }
  }
  return false;
}

std::string layout_fingerprint() {
#if defined(__clang__)
  std::string fp = "clang " __clang_version__;
#elif defined(__GNUC__)
  std::string fp = "gcc " __VERSION__;
#else
  std::string fp = "unknown compiler";
#endif
  fp += " boost " BOOST_LIB_VERSION;
  return fp.substr(0, sizeof(ShmHeader::fingerprint) - 1);
}

std::string lock_path(const std::string& name) { return "/dev/shm/" + name + ".lock"; }

Result<Ok> check_segment_name(const std::string& name) {
  const bool ok =
      !name.empty() && name.size() <= 200 && name[0] != '.' && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
               c == '-';
      });
  if (!ok) return shm_error("invalid shared-memory name '" + name + "': use 1-200 of A-Z a-z 0-9 . _ -");
  return Ok{};
}

// ---------------------------------------------------------------------------------------------- writer

Slot& Segment::slot(std::size_t i) const noexcept {
  return *reinterpret_cast<Slot*>(static_cast<char*>(base_) + kSlotsOffset + i * sizeof(Slot));
}

Result<Segment::Opened> Segment::open(const std::string& name, std::size_t min_slots) {
  if (auto ok = check_segment_name(name); !ok) return std::move(ok).error();
  std::unique_ptr<Segment> seg(new Segment());
  seg->name_ = name;
  const std::string lock = lock_path(name);
  seg->lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (seg->lock_fd_ < 0) return shm_error("cannot open lock file " + lock + ": " + std::strerror(errno));
  if (::flock(seg->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string who;
    if (auto reader = SegmentReader::attach(name); reader) {
      who = " (pid " + std::to_string(reader.value()->header().creator_pid) + ")";
    }
    return shm_error("shared-memory segment '" + name + "' is owned by a live sidecar" + who +
                     "; stop it or choose another --shm name");
  }

  Opened out;
  std::uint64_t generation = 1;
  bool reuse = false;
  try {
    bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_write);
    bip::offset_t size = 0;
    shm.get_size(size);
    if (static_cast<std::size_t>(size) < sizeof(ShmHeader)) {
      out.note = "stale segment '" + name + "' is too small to be ours: rebuilding";
    } else {
      auto region = std::make_unique<bip::mapped_region>(shm, bip::read_write);
      auto& h = *static_cast<ShmHeader*>(region->get_address());
      const std::string why = layout_mismatch(h, region->get_size());
      if (h.magic == kShmMagic && h.layout_version == kShmLayoutVersion) {
        generation = h.generation.load() + 1;
      }
      if (!why.empty()) {
        out.note = "stale segment '" + name + "' does not match this sidecar: " + why +
                   "; rebuilding under generation " + std::to_string(generation) + " (its counters are not read)";
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
          out.recovered.push_back(
              {read_name(p.scenario), read_name(p.target), read_name(p.kind), read_name(p.provider), p.counters});
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
  } catch (const bip::interprocess_exception&) {
    out.note = "created segment '" + name + "'";
  }
  if (!reuse) {
    if (auto ok = seg->create(min_slots, generation); !ok) return std::move(ok).error();
  }
  out.segment = std::move(seg);
  return out;
}

Result<std::unique_ptr<bip::mapped_region>> create_private_segment(const std::string& name, std::size_t size) {
  try {
    bip::shared_memory_object::remove(name.c_str());
    bip::permissions perms(0600);
    bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write, perms);
    shm.truncate(static_cast<bip::offset_t>(size));
    ::chmod(("/dev/shm/" + name).c_str(), 0600);  // whatever the umask was
    const int fd = ::open(("/dev/shm/" + name).c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
      ::close(fd);
      if (rc != 0) {
        bip::shared_memory_object::remove(name.c_str());
        return shm_error("cannot reserve " + std::to_string(size >> 20) + " MiB for '" + name +
                         "' in /dev/shm: " + std::strerror(rc));
      }
    }
    auto region = std::make_unique<bip::mapped_region>(shm, bip::read_write);
    std::memset(region->get_address(), 0, region->get_size());
    return region;
  } catch (const bip::interprocess_exception& e) {
    return shm_error("cannot create shared-memory segment '" + name + "': " + e.what());
  }
}

Result<Ok> Segment::create(std::size_t min_slots, std::uint64_t generation) {
  unmap();
  const std::size_t slots = std::max<std::size_t>(64, min_slots * 2);
  auto region = create_private_segment(name_, segment_size(slots));
  if (!region) return std::move(region).error();
  region_ = std::move(region).value();
  base_ = region_->get_address();
  size_ = region_->get_size();
  ShmHeader& h = head();
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
  return Ok{};
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

std::uint64_t Segment::advance_generation() noexcept { return head().generation.fetch_add(1) + 1; }

Result<Ok> Segment::rebuild(std::size_t min_slots) {
  const auto generation = head().generation.load() + 1;
  head().retired.store(1, std::memory_order_release);
  return create(min_slots, generation);
}

Result<Ok> Segment::publish_all(const Config& config, const std::vector<CounterRow>& rows) {
  if (rows.size() > capacity()) {
    return shm_error("routing table needs " + std::to_string(rows.size()) + " counter slots, the segment has " +
                     std::to_string(capacity()));
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
  p.counters = row.counters;
  write_slot(slot(it->second), p);
}

void Segment::heartbeat(std::int64_t now_ms) noexcept { head().heartbeat_ms.store(now_ms, std::memory_order_release); }

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
  try {
    bip::shared_memory_object shm(bip::open_only, name_.c_str(), bip::read_only);
    region_ = std::make_unique<bip::mapped_region>(shm, bip::read_only);
  } catch (const bip::interprocess_exception& e) {
    return shm_error("no shared-memory segment '" + name_ + "' (" + e.what() + ")");
  }
  if (region_->get_size() < sizeof(ShmHeader)) {
    unmap();
    return shm_error("shared-memory segment '" + name_ + "' is too small to be a Turnout segment");
  }
  const auto& h = *static_cast<const ShmHeader*>(region_->get_address());
  if (const std::string why = layout_mismatch(h, region_->get_size()); !why.empty()) {
    unmap();
    return shm_error("cannot read shared-memory segment '" + name_ + "': " + why);
  }
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
        out.push_back(
            {read_name(p.scenario), read_name(p.target), read_name(p.kind), read_name(p.provider), p.counters});
      }
      std::atomic_thread_fence(std::memory_order_acquire);
      if (!torn && h.ready.load(std::memory_order_relaxed) != 0 &&
          h.generation.load(std::memory_order_relaxed) == generation) {
        return out;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return make_error(ErrorCode::invalid_argument,
                        "shared-memory segment '" + name_ + "' stayed not ready (is its sidecar starting?)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace turnout::sidecar
