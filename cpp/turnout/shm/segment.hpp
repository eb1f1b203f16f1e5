#pragma once
// Private shared-memory segments: POSIX shm objects in /dev/shm that only this user can have written.
// What the sidecar and its workers create and map; the layouts inside are their own.

#include <cstddef>
#include <memory>
#include <string>

#include "turnout/result.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace turnout::shm {

/// Where the lock file of segment `name` lives (next to the segment, in /dev/shm).
[[nodiscard]] std::string lock_path(const std::string& name);
/// Checks a segment name: 1-200 of [A-Za-z0-9._-].
[[nodiscard]] Result<Ok> check_segment_name(const std::string& name);

/// Creates (replacing an old one of ours; another user's is refused, permission_denied) a segment of
/// `size` bytes, exclusively, mode 0600 whatever the umask, backed for real (a full /dev/shm fails
/// here, not with SIGBUS on first touch) and zeroed.
[[nodiscard]] Result<std::unique_ptr<boost::interprocess::mapped_region>> create_private_segment(
    const std::string& name, std::size_t size);
/// Renames segment `from` over `to` in one step: whoever opens `to` by name finds the old segment
/// or the new one, never none (mappings of the old one stay valid). On error `from` is removed and
/// `to` is untouched.
[[nodiscard]] Result<Ok> replace_segment(const std::string& from, const std::string& to);
/// Maps an existing segment, read-only or read-write, if it is private to this user: owned by our
/// uid, no group or other mode bits (anyone else could have written it). not_found,
/// permission_denied, incompatible_layout (empty) or io_error (the OS reason) otherwise.
[[nodiscard]] Result<std::unique_ptr<boost::interprocess::mapped_region>> map_private_segment(const std::string& name,
                                                                                              bool writable);

}  // namespace turnout::shm
