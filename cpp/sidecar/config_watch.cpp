#include "sidecar/config_watch.hpp"

#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace turnout::sidecar {

FileStamp FileStamp::of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {true, st.st_dev, st.st_ino, st.st_size,
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

Result<ConfigWatch> ConfigWatch::open(const std::string& path) {
  ConfigWatch w;
  w.path_ = path;
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  w.name_ = slash == std::string::npos ? path : path.substr(slash + 1);
  w.fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (w.fd_ < 0) return os_error(errno, "config watch: inotify");
  // The directory, not the file: a replaced file is a new inode, a ConfigMap update a symlink swap.
  constexpr std::uint32_t kEvents = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM;
  if (::inotify_add_watch(w.fd_, dir.c_str(), kEvents) < 0) return os_error(errno, "config watch: " + dir);
  w.settling_ = FileStamp::of(path);
  return w;
}

ConfigWatch::ConfigWatch(ConfigWatch&& other) noexcept
    : path_(std::move(other.path_)),
      name_(std::move(other.name_)),
      fd_(std::exchange(other.fd_, -1)),
      writing_(other.writing_),
      due_ms_(other.due_ms_),
      settling_(other.settling_) {}

ConfigWatch& ConfigWatch::operator=(ConfigWatch&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    name_ = std::move(other.name_);
    fd_ = std::exchange(other.fd_, -1);
    writing_ = other.writing_;
    due_ms_ = other.due_ms_;
    settling_ = other.settling_;
  }
  return *this;
}

ConfigWatch::~ConfigWatch() {
  if (fd_ >= 0) ::close(fd_);
}

void ConfigWatch::on_events(std::int64_t now_ms) {
  alignas(inotify_event) char buf[4096];
  ssize_t n = 0;
  bool look = false;
  while ((n = ::read(fd_, buf, sizeof buf)) > 0) {
    for (ssize_t off = 0; off < n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
      const bool ours = e->len > 0 && name_ == e->name;
      if (ours && (e->mask & IN_MODIFY) != 0) writing_ = true;  // wait for the writer to close it
      if (ours && (e->mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM)) != 0) {
        writing_ = false;  // closed, or a new file in its place
      }
      // Another name renamed or linked in may be what the path resolves through (a symlink swap).
      if (ours || (e->mask & (IN_MOVED_TO | IN_CREATE | IN_Q_OVERFLOW)) != 0) look = true;
      if ((e->mask & IN_Q_OVERFLOW) != 0) writing_ = false;
    }
  }
  if (look) {
    due_ms_ = now_ms + kSettleMs;
    settling_ = FileStamp::of(path_);
  }
}

bool ConfigWatch::changed(std::int64_t now_ms, FileStamp& served) {
  if (due_ms_ == 0 || writing_ || now_ms < due_ms_) return false;
  const FileStamp current = FileStamp::of(path_);
  if (current != settling_) {  // still moving: look again after another interval
    settling_ = current;
    due_ms_ = now_ms + kSettleMs;
    return false;
  }
  due_ms_ = 0;
  if (current == served) return false;
  served = current;
  return true;
}

}  // namespace turnout::sidecar
