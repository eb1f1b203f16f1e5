#include "turnout/shm/private_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace turnout::shm {

namespace {

std::string mode_text(mode_t mode) {
  char text[8];
  std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
  return text;
}

Error refused(const std::string& what, const std::string& path, const struct stat& st, const std::string& why) {
  return make_error(ErrorCode::permission_denied, what + " " + path + " (owner uid " + std::to_string(st.st_uid) +
                                                      ", mode " + mode_text(st.st_mode) + ") " + why);
}

// Ours and private: our effective uid, no group or other bits.
Result<Ok> check_private_stat(const struct stat& st, const std::string& what, const std::string& path) {
  if (st.st_uid != ::geteuid()) {
    return refused(what, path, st,
                   "belongs to another user, not to this one (uid " + std::to_string(::geteuid()) +
                       "): refusing it; remove it or choose another name");
  }
  if ((st.st_mode & 077) != 0) {
    return refused(what, path, st, "is open to other users (group or other mode bits): refusing it");
  }
  return Ok{};
}

// A directory of ours, 0700, made if missing. Opened without following a symlink and checked on the
// descriptor.
Result<Ok> private_dir(const std::string& dir, bool create) {
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return os_error(errno, "cannot create " + dir);
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT && !create) return Ok{};  // a client: the sidecar makes it
    return os_error(errno, "cannot open the directory " + dir);
  }
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return os_error(err, "cannot stat " + dir);
  return check_private_stat(st, "directory", dir);
}

bool usable_base(const char* dir) { return dir != nullptr && dir[0] == '/'; }

}  // namespace

Result<Ok> check_private_fd(int fd, const std::string& what, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return os_error(errno, what + " " + path + ": cannot stat");
  return check_private_stat(st, what, path);
}

Result<Ok> check_replaceable(const std::string& what, const std::string& path) {
  // O_PATH: needs no permission on the file itself (another user's 0600 file is still described).
  const int fd = ::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Ok{};
    return os_error(errno, what + " " + path + ": cannot open");
  }
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return os_error(err, what + " " + path + ": cannot stat");
  if (S_ISLNK(st.st_mode)) return refused(what, path, st, "is a symbolic link: refusing it");
  if (st.st_uid != ::geteuid()) {
    return refused(what, path, st,
                   "belongs to another user, not to this one (uid " + std::to_string(::geteuid()) +
                       "): refusing to adopt or replace it; remove it or choose another name");
  }
  return Ok{};
}

Result<int> open_private_lock(const std::string& path) {
  // An existing file is opened without O_CREAT (which the kernel's protected_regular may refuse in
  // a sticky directory before we could say whose file it is); a missing one is created exclusively.
  int fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    if (auto ok = check_replaceable("lock file", path); !ok) return std::move(ok).error();  // whose, and how
    return os_error(err, "cannot open lock file " + path);
  }
  struct stat st {};
  Result<Ok> ok = ::fstat(fd, &st) != 0  ? Result<Ok>(os_error(errno, "cannot stat lock file " + path))
                  : !S_ISREG(st.st_mode) ? Result<Ok>(refused("lock file", path, st, "is not a regular file"))
                                         : check_private_stat(st, "lock file", path);
  if (!ok) {
    ::close(fd);
    return std::move(ok).error();
  }
  return fd;
}

Result<Ok> check_socket_dir(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return os_error(errno, "socket directory " + dir);
  if (!S_ISDIR(st.st_mode)) return refused("socket directory", dir, st, "is not a directory");
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return refused("socket directory", dir, st, "belongs to another user: they could replace the socket");
  }
  if ((st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return refused("socket directory", dir, st, "is writable by other users: they could replace the socket");
  }
  return Ok{};
}

Result<Ok> check_private_socket(const std::string& path) {
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (auto ok = check_socket_dir(dir); !ok) {
    if (ok.error().code == ErrorCode::not_found) return Ok{};  // nothing there yet: the connect waits
    return ok;
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Ok{};
    return os_error(errno, "socket " + path);
  }
  if (!S_ISSOCK(st.st_mode)) return refused("socket", path, st, "is not a socket");
  if (st.st_uid != ::geteuid()) {
    return refused("socket", path, st,
                   "belongs to another user, not to this one (uid " + std::to_string(::geteuid()) +
                       "): it is not our sidecar; refusing to connect");
  }
  // On a socket only the write bits mean anything (connect); our sidecar makes it 0600.
  if ((st.st_mode & 022) != 0) return refused("socket", path, st, "lets other users connect: refusing it");
  return Ok{};
}

Result<std::string> default_endpoint(bool create) {
  std::string dir;
  const std::string run = "/run/user/" + std::to_string(::geteuid());
  struct stat st {};
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); usable_base(xdg)) {
    dir = std::string(xdg) + "/turnout";
  } else if (::lstat(run.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid() &&
             (st.st_mode & 077) == 0) {
    dir = run + "/turnout";
  } else if (const char* home = std::getenv("HOME"); usable_base(home)) {
    dir = std::string(home) + "/.turnout";
  } else {
    return make_error(ErrorCode::invalid_argument,
                      "no private directory for the default endpoint: set XDG_RUNTIME_DIR or HOME, or pass an "
                      "endpoint");
  }
  if (auto ok = private_dir(dir, create); !ok) return std::move(ok).error();
  return "ipc://" + dir + "/sidecar.sock";
}

}  // namespace turnout::shm
