#pragma once
// The config file watch: tells the daemon when the routing table file holds a complete new version.
// inotify on the file's directory; a version counts once its writer closed it (IN_CLOSE_WRITE) or it
// was renamed or linked into place (IN_MOVED_TO, IN_CREATE: atomic replace, Kubernetes ConfigMap
// symlink swaps), and then held still for a settling interval. A file modified and still open for
// writing is never loaded: a valid prefix of the new table must not be served.

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "turnout/result.hpp"

namespace turnout::sidecar {

/// What identifies one version of the config file without reading it: in-place writes change the
/// size or mtime, replacing the file changes the inode.
struct FileStamp {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  std::int64_t mtime_ns = 0;
  bool operator==(const FileStamp&) const = default;
  /// The stamp of `path` now (following symlinks).
  [[nodiscard]] static FileStamp of(const std::string& path);
};

class ConfigWatch {
 public:
  /// How long a closed or replaced file must stay unchanged before it is offered.
  static constexpr std::int64_t kSettleMs = 200;

  /// Watches the directory of `path`. Errors (no inotify) are one line for the log.
  [[nodiscard]] static Result<ConfigWatch> open(const std::string& path);
  ConfigWatch(ConfigWatch&& other) noexcept;
  ConfigWatch& operator=(ConfigWatch&& other) noexcept;
  ConfigWatch(const ConfigWatch&) = delete;
  ConfigWatch& operator=(const ConfigWatch&) = delete;
  ~ConfigWatch();

  /// The inotify descriptor, to poll for readability.
  [[nodiscard]] int fd() const noexcept { return fd_; }
  /// Reads the waiting events (call when fd() is readable).
  void on_events(std::int64_t now_ms);
  /// True once, when a new complete version has settled (or the file is gone: !served.exists): the
  /// caller reads the file and reloads. `served` is the stamp of the version being served; it is
  /// updated to the offered one.
  [[nodiscard]] bool changed(std::int64_t now_ms, FileStamp& served);

 private:
  ConfigWatch() = default;
  std::string path_;
  std::string name_;  // the file's name in its directory
  int fd_ = -1;
  bool writing_ = false;     // modified, not yet closed: wait for the close
  std::int64_t due_ms_ = 0;  // when to look (0: nothing pending)
  FileStamp settling_;       // the stamp seen at the last look
};

}  // namespace turnout::sidecar
