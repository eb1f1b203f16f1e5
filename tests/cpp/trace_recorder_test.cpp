// The trace recorder of --record: the keyed hash, the JSON strings, the lines it writes and how it
// survives a failing disk (tests/python/test_record.py drives it through the real daemon).

#include "sidecar/trace_recorder.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "turnout/sim/prompt.hpp"

namespace turnout::sidecar {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "trace-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::unique_ptr<TraceRecorder> open_recorder(TraceOptions options, std::vector<std::string>* logged = nullptr) {
  auto r = TraceRecorder::open(std::move(options), [logged](std::string_view m) {
    if (logged != nullptr) logged->emplace_back(m);
  });
  EXPECT_TRUE(r) << r.error().message;
  return std::move(r).value();
}

TEST(TraceRecorder, SipHashMatchesTheReferenceVectors) {
  // The SipHash paper's key 00 01 .. 0f; messages 00 01 .. (n-1).
  const std::uint64_t key[2] = {0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};
  std::string message;
  EXPECT_EQ(siphash24(key, message), 0x726fdb47dd0e0e31ULL);
  for (int i = 0; i < 15; ++i) message.push_back(static_cast<char>(i));
  EXPECT_EQ(siphash24(key, message), 0xa129ca6149be45e5ULL);
}

TEST(TraceRecorder, JsonStringsEscapeAndReplaceInvalidUtf8) {
  std::string out;
  append_json_string(out, "a\"b\\c\n\x01 h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\u000a\\u0001 h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  out.clear();
  // A lone continuation byte, an overlong 2-byte form, a surrogate, a truncated sequence.
  append_json_string(out, "\x80|\xc0\xaf|\xed\xa0\x80|\xe2\x82");
  EXPECT_EQ(out, "\"\\ufffd|\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|\\ufffd\\ufffd\"");
}

TEST(TraceRecorder, WritesOneLinePerDecisionAtItsFirstOkOutcome) {
  TempDir dir;
  const fs::path path = dir.path() / "trace.jsonl";
  auto recorder = open_recorder({.path = path.string()});
  std::vector<std::uint32_t> tokens(40);
  std::iota(tokens.begin(), tokens.end(), 7U);
  RouteRequest request{.scenario = "chat", .key = "user-1", .token_ids = tokens};
  // Decided just now: far from --record-wait, so it waits for its ok outcome.
  const TimeMs at =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
              .count() /
          1000 * 1000 +
      123;
  recorder->decided(5, at, "chat", &request);
  recorder->outcome(5, Status::error, nullptr, std::nullopt);  // a fallback may still serve it
  recorder->sync();
  EXPECT_EQ(read_lines(path).size(), 1U);  // the header only
  Usage usage;
  usage.uncached_input_tokens = 30;
  usage.cache_read_tokens = 12;
  usage.output_tokens = 9;
  recorder->outcome(5, Status::ok, &usage, true);
  recorder->outcome(5, Status::ok, &usage, std::nullopt);  // a second ok outcome: written once
  recorder->sync();

  std::vector<std::uint64_t> chain;
  sim::chain_of(tokens, chain);
  ASSERT_EQ(chain.size(), 2U);
  const auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 2U);
  EXPECT_EQ(lines[0], "{\"turnout_trace\": 1}");
  const std::string& line = lines[1];
  EXPECT_EQ(line.find("user-1"), std::string::npos);
  EXPECT_EQ(line.rfind("{\"at\": " + std::to_string(at / 1000) + ".123, \"scenario\": \"chat\", \"key\": \"", 0), 0U)
      << line;
  const std::string tail =
      ", \"data_class\": null, \"input_tokens\": 42, \"output_tokens\": 9, \"accepted\": true, "
      "\"blocks\": [" +
      std::to_string(chain[0]) + ", " + std::to_string(chain[1]) + "], \"block_tokens\": 16}";
  EXPECT_NE(line.find(tail), std::string::npos) << line;
  EXPECT_EQ(recorder->stats().records, 1U);
  EXPECT_EQ(fs::status(path).permissions(), fs::perms::owner_read | fs::perms::owner_write);
}

TEST(TraceRecorder, ADecisionWithoutAnOkOutcomeIsWrittenAfterTheWaitAndAtTheStop) {
  TempDir dir;
  const fs::path path = dir.path() / "trace.jsonl";
  {
    auto recorder = open_recorder({.path = path.string(), .wait_ms = 0});
    RouteRequest request{.scenario = "chat", .input_tokens = 12};
    recorder->decided(1, 1000, "chat", &request);
    recorder->verdict(1, false);
    recorder->sync();
    ASSERT_EQ(read_lines(path).size(), 2U);
    EXPECT_NE(read_lines(path)[1].find("\"input_tokens\": 12, \"output_tokens\": 0, \"accepted\": false}"),
              std::string::npos);
  }
  {
    auto recorder = open_recorder({.path = path.string()});  // appends: no second header
    RouteRequest request{.scenario = "chat", .text = "short"};
    recorder->decided(2, 2000, "chat", &request);
  }  // the stop writes it
  const auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 3U);
  EXPECT_NE(lines[2].find("\"input_tokens\": 2, \"output_tokens\": 0, \"accepted\": null, \"blocks\": [], "
                          "\"block_tokens\": 16}"),
            std::string::npos)
      << lines[2];
}

TEST(TraceRecorder, AFullBufferDropsAndCounts) {
  TempDir dir;
  auto recorder = open_recorder({.path = (dir.path() / "t.jsonl").string(), .buffer_bytes = 256});
  std::vector<std::uint32_t> tokens(100);
  RouteRequest request{.scenario = "chat", .token_ids = tokens};
  recorder->decided(1, 1000, "chat", &request);  // 400 bytes of tokens: never fits
  EXPECT_EQ(recorder->stats().dropped, 1U);
  EXPECT_EQ(recorder->stats().records, 0U);
}

TEST(TraceRecorder, RefusesASymlinkAndAnOpenFile) {
  TempDir dir;
  const fs::path link = dir.path() / "link";
  fs::create_symlink(dir.path() / "elsewhere", link);
  auto r = TraceRecorder::open({.path = link.string()}, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::permission_denied);
  EXPECT_NE(r.error().message.find("is a symbolic link"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir.path() / "elsewhere"));

  const fs::path open_file = dir.path() / "open";
  std::ofstream(open_file) << "";
  fs::permissions(open_file, fs::perms::owner_read | fs::perms::owner_write | fs::perms::others_read);
  r = TraceRecorder::open({.path = open_file.string()}, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::permission_denied);

  r = TraceRecorder::open({.path = dir.path().string()}, {});  // a directory
  ASSERT_FALSE(r);
}

TEST(TraceRecorder, AFailingWriteIsLoggedOnceAndCountedAndRecordingGoesOn) {
  TempDir dir;
  const fs::path path = dir.path() / "trace.jsonl";
  std::vector<std::string> logged;
  auto recorder = open_recorder({.path = path.string()}, &logged);
  RouteRequest request{.scenario = "chat", .input_tokens = 1};
  Usage usage;
  usage.output_tokens = 1;
  // The disk is "full": writes past the file's current size fail with EFBIG (SIGXFSZ ignored).
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto* const previous = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit full = saved;
  full.rlim_cur = static_cast<rlim_t>(fs::file_size(path));
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &full), 0);
  for (std::uint64_t id = 1; id <= 2; ++id) {
    recorder->decided(id, 1000, "chat", &request);
    recorder->outcome(id, Status::ok, &usage, std::nullopt);
    recorder->sync();
  }
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  std::signal(SIGXFSZ, previous);
  EXPECT_EQ(recorder->stats().write_errors, 2U);
  EXPECT_EQ(recorder->stats().records, 0U);
  ASSERT_EQ(logged.size(), 1U);
  EXPECT_NE(logged[0].find("write failed"), std::string::npos);

  recorder->decided(3, 1000, "chat", &request);
  recorder->outcome(3, Status::ok, &usage, std::nullopt);
  recorder->sync();
  EXPECT_EQ(recorder->stats().records, 1U);
  EXPECT_EQ(read_lines(path).size(), 2U);
  ASSERT_EQ(logged.size(), 2U);
  EXPECT_NE(logged[1].find("writing again"), std::string::npos);
}

}  // namespace
}  // namespace turnout::sidecar
