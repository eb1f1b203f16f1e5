#include "turnout/shm/segment.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>

#include "turnout/shm/private_file.hpp"

namespace turnout::shm {

namespace bip = boost::interprocess;

namespace {

// A failed Boost.Interprocess call: the OS reason under the code its errno stands for.
Error boost_error(const bip::interprocess_exception& e, std::string what) {
  if (e.get_native_error() != 0) return os_error(e.get_native_error(), std::move(what));
  return make_error(ErrorCode::io_error, std::move(what) + ": " + e.what());
}

std::string segment_path(const std::string& name) { return "/dev/shm/" + name; }

// Checks an open segment is private to us: our uid, no group or other mode bits; and not empty.
Result<Ok> check_private(int fd, const std::string& name) {
  if (auto ok = check_private_fd(fd, "shared-memory segment", segment_path(name)); !ok) return ok;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return os_error(errno, "shared-memory segment '" + name + "': cannot stat");
  if (st.st_size == 0) {
    return make_error(ErrorCode::incompatible_layout,
                      "shared-memory segment '" + name + "' is empty: not a Turnout segment");
  }
  return Ok{};
}

}  // namespace

std::string lock_path(const std::string& name) { return segment_path(name) + ".lock"; }

Result<Ok> check_segment_name(const std::string& name) {
  const bool ok =
      !name.empty() && name.size() <= 200 && name[0] != '.' && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
               c == '-';
      });
  if (!ok) {
    return make_error(ErrorCode::invalid_argument,
                      "invalid shared-memory name '" + name + "': use 1-200 of A-Z a-z 0-9 . _ -");
  }
  return Ok{};
}

Result<std::unique_ptr<bip::mapped_region>> create_private_segment(const std::string& name, std::size_t size) {
  const std::string what = "shared-memory segment '" + name + "'";
  // Only one of ours is replaced; another user's is theirs to remove (root too refuses it).
  if (auto ok = check_replaceable("shared-memory segment", segment_path(name)); !ok) return std::move(ok).error();
  if (!bip::shared_memory_object::remove(name.c_str()) && errno != ENOENT) {
    return os_error(errno, what + ": cannot remove the old one");
  }
  const char* step = "create";
  try {
    bip::permissions perms(0600);
    bip::shared_memory_object shm(bip::create_only, name.c_str(), bip::read_write, perms);
    step = "size";
    shm.truncate(static_cast<bip::offset_t>(size));
    // On the created descriptor itself (created exclusively: no one else's file).
    const int fd = shm.get_mapping_handle().handle;
    ::fchmod(fd, 0600);  // whatever the umask was
    const int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (rc != 0) {
      bip::shared_memory_object::remove(name.c_str());
      return os_error(rc, what + ": cannot reserve " + std::to_string((size + 1023) >> 10) + " KiB in /dev/shm");
    }
    step = "map";
    auto region = std::make_unique<bip::mapped_region>(shm, bip::read_write);
    std::memset(region->get_address(), 0, region->get_size());
    return region;
  } catch (const bip::interprocess_exception& e) {
    return boost_error(e, what + ": cannot " + step);
  }
}

Result<Ok> replace_segment(const std::string& from, const std::string& to) {
  // shm_open names are files of /dev/shm (as create_private_segment's chmod assumes): rename(2) there
  // is atomic.
  if (::rename(("/dev/shm/" + from).c_str(), ("/dev/shm/" + to).c_str()) != 0) {
    const int err = errno;
    bip::shared_memory_object::remove(from.c_str());
    return os_error(err, "cannot rename shared-memory segment '" + from + "' to '" + to + "'");
  }
  return Ok{};
}

Result<std::unique_ptr<bip::mapped_region>> map_private_segment(const std::string& name, bool writable) {
  const auto mode = writable ? bip::read_write : bip::read_only;
  bip::shared_memory_object shm;
  try {
    shm = bip::shared_memory_object(bip::open_only, name.c_str(), mode);
  } catch (const bip::interprocess_exception& e) {
    return boost_error(e, "shared-memory segment '" + name + "': cannot open");
  }
  if (auto ok = check_private(shm.get_mapping_handle().handle, name); !ok) return std::move(ok).error();
  try {
    return std::make_unique<bip::mapped_region>(shm, mode);
  } catch (const bip::interprocess_exception& e) {
    return boost_error(e, "shared-memory segment '" + name + "': cannot map");
  }
}

}  // namespace turnout::shm
