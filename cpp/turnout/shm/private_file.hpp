#pragma once
// The node's boundary on the file system: every file the sidecar and its clients open or connect to
// (segments, lock files, the ipc socket and its directory) must be this user's and private to it;
// another local user's is refused with permission_denied naming the path, its owner and its mode.

#include <string>

#include "turnout/result.hpp"

namespace turnout::shm {

/// Checks the open descriptor `fd` of `path` (a fstat: no check-then-open race): owned by this
/// process's effective uid, no group or other mode bits. permission_denied naming `what`, `path`,
/// the owner and the mode otherwise.
[[nodiscard]] Result<Ok> check_private_fd(int fd, const std::string& what, const std::string& path);

/// Before removing `path` to create it afresh: refuses (permission_denied) a file of another user
/// or a symbolic link; one of ours is fine whatever its mode, and so is no file at all.
[[nodiscard]] Result<Ok> check_replaceable(const std::string& what, const std::string& path);

/// Opens (creating it 0600) the lock file `path` without following a symlink, and checks it is a
/// private regular file of ours. Returns the descriptor (the caller closes it).
[[nodiscard]] Result<int> open_private_lock(const std::string& path);

/// Checks the directory an ipc socket lives in: owned by us (or root), and not writable by others
/// unless sticky (then others cannot replace our socket in it).
[[nodiscard]] Result<Ok> check_socket_dir(const std::string& dir);

/// Checks an ipc socket file before connecting to it: a socket of ours that others cannot connect to
/// (no group or other write bit), in a directory check_socket_dir() accepts. A missing file is fine (the sidecar may
/// not have started yet) when its directory passes.
[[nodiscard]] Result<Ok> check_private_socket(const std::string& path);

/// The default ipc endpoint, defined once for the sidecar and every client:
/// ipc://$XDG_RUNTIME_DIR/turnout/sidecar.sock, else ipc:///run/user/$UID/turnout/sidecar.sock when
/// /run/user/$UID is ours, else ipc://$HOME/.turnout/sidecar.sock. Never a shared directory such as
/// /tmp. With `create`, the turnout directory is made (0700) if missing and checked to be ours and
/// private.
[[nodiscard]] Result<std::string> default_endpoint(bool create);

}  // namespace turnout::shm
