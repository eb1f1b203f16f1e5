// The codes shared memory fails with, each from a real segment in /dev/shm: missing (not_found), not
// private to this user (permission_denied), another layout (incompatible_layout), held by a live
// sidecar (busy); and the OS-error helper they are built on.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "sidecar/fastpath.hpp"
#include "sidecar/server.hpp"
#include "sidecar/shm.hpp"
#include "turnout/client/counters.hpp"
#include "turnout/client/fastpath.hpp"
#include "turnout/shm/segment.hpp"

namespace turnout::sidecar {

using client::FastClient;
using client::rings_segment_name;
using client::SegmentReader;
using client::table_segment_name;
using shm::lock_path;
namespace {

namespace bip = boost::interprocess;

const std::string kExample = std::string(TURNOUT_EXAMPLES_DIR) + "/routing.yaml";
constexpr uid_t kNobody = 65534;

class ShmErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> n{0};
    name_ = "turnout-errtest-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  }
  void TearDown() override {
    bip::shared_memory_object::remove(name_.c_str());
    bip::shared_memory_object::remove(rings_segment_name(name_).c_str());
    for (int g = 0; g < 8; ++g) bip::shared_memory_object::remove(table_segment_name(name_, g).c_str());
    std::remove(lock_path(name_).c_str());
  }

  // A segment file of `bytes` bytes of `fill`, with exactly `mode` (whatever the umask).
  void plant(const std::string& name, mode_t mode, std::size_t bytes = 4096, char fill = 0x5A) const {
    const std::string path = "/dev/shm/" + name;
    const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
    const std::string data(bytes, fill);
    ASSERT_EQ(::write(fd, data.data(), data.size()), static_cast<::ssize_t>(data.size()));
    ASSERT_EQ(::fchmod(fd, mode), 0);
    ::close(fd);
  }

  std::unique_ptr<Server> start() {
    auto s = Server::start(kExample, name_);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return s.ok() ? std::move(s.value().server) : nullptr;
  }

  std::string name_;
};

// Whether `r` failed with `code` and a message holding `text`.
template <class T>
::testing::AssertionResult fails_with(const Result<T>& r, ErrorCode code, const std::string& text) {
  if (r.ok()) return ::testing::AssertionFailure() << "it succeeded";
  if (r.error().code != code || r.error().message.find(text) == std::string::npos) {
    return ::testing::AssertionFailure() << to_string(r.error().code) << ": " << r.error().message;
  }
  return ::testing::AssertionSuccess();
}

TEST(OsError, TheErrnoChoosesTheCodeAndTheMessageEndsWithTheReason) {
  EXPECT_EQ(error_code_of_errno(ENOENT), ErrorCode::not_found);
  EXPECT_EQ(error_code_of_errno(EACCES), ErrorCode::permission_denied);
  EXPECT_EQ(error_code_of_errno(EPERM), ErrorCode::permission_denied);
  EXPECT_EQ(error_code_of_errno(EIO), ErrorCode::io_error);
  EXPECT_EQ(error_code_of_errno(ENOSPC), ErrorCode::io_error);
  const Error e = os_error(ENOENT, "/x/routing.yaml: cannot open");
  EXPECT_EQ(e.code, ErrorCode::not_found);
  EXPECT_EQ(e.message, std::string("/x/routing.yaml: cannot open: ") + std::strerror(ENOENT));
}

TEST_F(ShmErrorsTest, AMissingSegmentIsNotFound) {
  EXPECT_TRUE(fails_with(SegmentReader::attach(name_), ErrorCode::not_found, "No such file or directory"));
  EXPECT_TRUE(fails_with(FastClient::attach(name_), ErrorCode::not_found, "'" + name_ + "': cannot open"));
}

TEST_F(ShmErrorsTest, AMissingTableIsNotFound) {
  auto server = start();
  ASSERT_TRUE(server);
  ASSERT_TRUE(bip::shared_memory_object::remove(table_segment_name(name_, server->generation()).c_str()));
  EXPECT_TRUE(
      fails_with(FastClient::attach(name_), ErrorCode::not_found, table_segment_name(name_, server->generation())));
}

TEST_F(ShmErrorsTest, ASegmentOthersCanWriteIsRefused) {
  plant(name_, 0666);
  EXPECT_TRUE(
      fails_with(SegmentReader::attach(name_), ErrorCode::permission_denied, "mode 0666) is open to other users"));
  EXPECT_TRUE(fails_with(FastClient::attach(name_), ErrorCode::permission_denied, "is open to other users"));
}

TEST_F(ShmErrorsTest, ASegmentOfAnotherUserIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a segment to uid 65534";
  plant(name_, 0600);
  ASSERT_EQ(::chown(("/dev/shm/" + name_).c_str(), kNobody, kNobody), 0);
  EXPECT_TRUE(fails_with(SegmentReader::attach(name_), ErrorCode::permission_denied,
                         "(owner uid 65534, mode 0600) belongs to another user"));
  EXPECT_TRUE(fails_with(FastClient::attach(name_), ErrorCode::permission_denied,
                         "(owner uid 65534, mode 0600) belongs to another user"));
}

TEST_F(ShmErrorsTest, ASegmentOfAnotherLayoutIsIncompatible) {
  plant(name_, 0600);  // private, but 0x5A bytes: no magic
  EXPECT_TRUE(fails_with(SegmentReader::attach(name_), ErrorCode::incompatible_layout, "bad magic"));
  EXPECT_TRUE(fails_with(FastClient::attach(name_), ErrorCode::incompatible_layout, "bad magic"));
  bip::shared_memory_object::remove(name_.c_str());
  plant(name_, 0600, 0);
  EXPECT_TRUE(fails_with(SegmentReader::attach(name_), ErrorCode::incompatible_layout, "is empty"));
  bip::shared_memory_object::remove(name_.c_str());
  plant(name_, 0600, 16);
  EXPECT_TRUE(fails_with(SegmentReader::attach(name_), ErrorCode::incompatible_layout, "too small"));
}

TEST_F(ShmErrorsTest, RingsOfAnotherBuildAreIncompatible) {
  auto server = start();
  ASSERT_TRUE(server);
  {
    bip::shared_memory_object shm(bip::open_only, rings_segment_name(name_).c_str(), bip::read_write);
    bip::mapped_region region(shm, bip::read_write);
    std::memset(region.get_address(), 0, 8);  // the magic
  }
  EXPECT_TRUE(fails_with(FastClient::attach(name_), ErrorCode::incompatible_layout, "another build"));
}

TEST_F(ShmErrorsTest, ASegmentHeldByALiveSidecarIsBusy) {
  auto first = Segment::open(name_, 16);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE(fails_with(Segment::open(name_, 16), ErrorCode::busy, "owned by a live sidecar"));
}

TEST_F(ShmErrorsTest, TheSidecarRebuildsAStaleSegmentThatIsNotPrivate) {
  plant(name_, 0666);
  auto opened = Segment::open(name_, 16);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_NE(opened.value().note.find("not re-attached"), std::string::npos) << opened.value().note;
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + name_).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600U);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST_F(ShmErrorsTest, ASegmentNameThatIsNotOneIsAnInvalidArgument) {
  EXPECT_TRUE(
      fails_with(SegmentReader::attach("../etc/passwd"), ErrorCode::invalid_argument, "invalid shared-memory name"));
}

}  // namespace
}  // namespace turnout::sidecar
