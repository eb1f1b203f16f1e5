#include "sidecar/trace_recorder.hpp"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <utility>

#include "turnout/prefix.hpp"
#include "turnout/protocol.hpp"
#include "turnout/shm/private_file.hpp"

namespace turnout::sidecar {

namespace {

// Decisions waiting for their ok outcome, at most (the oldest is written without one beyond either).
constexpr std::size_t kMaxPending = std::size_t{1} << 16;
constexpr std::size_t kMaxPendingBytes = std::size_t{64} << 20;
// How often the writer looks at the buffer when nobody asks it to.
constexpr auto kWriterTick = std::chrono::milliseconds(20);
constexpr std::string_view kHeader = "{\"turnout_trace\": 1}\n";

enum class EventKind : std::uint8_t { decided, outcome, verdict };
enum class PromptForm : std::uint8_t { none, token_ids, text };

/// One event in the buffer, followed by its payload bytes: scenario, key, data class, prompt.
struct EventHead {
  EventKind kind = EventKind::decided;
  PromptForm prompt = PromptForm::none;
  Status status = Status::ok;
  std::int8_t accepted = -1;  // -1: not given
  std::uint32_t scenario_bytes = 0;
  std::uint32_t key_bytes = 0;
  std::uint32_t data_class_bytes = 0;
  std::uint64_t prompt_bytes = 0;
  std::uint64_t id = 0;
  TimeMs at = 0;
  std::int64_t input_tokens = -1;  // decided: the caller's (or estimated); outcome: the usage's (-1: none)
  std::int64_t output_tokens = -1;
};

std::int8_t tristate(std::optional<bool> b) { return b ? static_cast<std::int8_t>(*b) : std::int8_t{-1}; }

std::uint64_t rotl(std::uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// Opens the trace file as --record promises: appended to, created 0600, never through a symlink,
/// ours and private. `fresh`: it was empty (the header is due).
Result<int> open_trace_file(const std::string& path, bool& fresh) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == ELOOP) {
      return make_error(ErrorCode::permission_denied,
                        "--record " + path + " is a symbolic link: refusing it (the trace file is never followed)");
    }
    return os_error(errno, "--record " + path + ": cannot open");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorCode::invalid_argument, "--record " + path + " is not a regular file");
  }
  if (auto ok = shm::check_private_fd(fd, "--record file", path); !ok) {
    ::close(fd);
    return std::move(ok).error();
  }
  fresh = st.st_size == 0;
  return fd;
}

/// Writes all of `bytes`; the bytes written (all, or fewer with errno set).
std::size_t write_all(int fd, std::string_view bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = ENOSPC;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  return done;
}

}  // namespace

std::uint64_t siphash24(const std::uint64_t (&key)[2], std::string_view data) noexcept {
  std::uint64_t v0 = 0x736f6d6570736575ULL ^ key[0];
  std::uint64_t v1 = 0x646f72616e646f6dULL ^ key[1];
  std::uint64_t v2 = 0x6c7967656e657261ULL ^ key[0];
  std::uint64_t v3 = 0x7465646279746573ULL ^ key[1];
  const auto round = [&] {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
  };
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const std::size_t full = data.size() / 8 * 8;
  for (std::size_t i = 0; i < full; i += 8) {
    std::uint64_t m = 0;
    for (int b = 7; b >= 0; --b) m = (m << 8) | p[i + static_cast<std::size_t>(b)];  // little-endian
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  std::uint64_t last = static_cast<std::uint64_t>(data.size()) << 56;
  for (std::size_t i = full; i < data.size(); ++i) last |= static_cast<std::uint64_t>(p[i]) << (8 * (i - full));
  v3 ^= last;
  round();
  round();
  v0 ^= last;
  v2 ^= 0xff;
  for (int i = 0; i < 4; ++i) round();
  return v0 ^ v1 ^ v2 ^ v3;
}

void append_json_string(std::string& out, std::string_view text) {
  out.push_back('"');
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      if (c == '"' || c == '\\') {
        out.push_back('\\');
        out.push_back(static_cast<char>(c));
      } else if (c < 0x20) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
        out += esc;
      } else {
        out.push_back(static_cast<char>(c));
      }
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
    std::size_t len = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    bool ok = len != 0 && i + len <= n && p[i + 1] >= lo && p[i + 1] <= hi;
    for (std::size_t k = 2; ok && k < len; ++k) ok = p[i + k] >= 0x80 && p[i + k] <= 0xBF;
    if (ok) {
      out.append(text.substr(i, len));
      i += len;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  out.push_back('"');
}

// ------------------------------------------------------------------------------------------ writer

/// A decision waiting for its first ok outcome: every field of its line but the token counts.
struct TraceRecorder::Pending {
  TimeMs at = 0;
  std::string fields;              // "scenario", "key" and "data_class", as JSON
  std::string prompt;              // ', "blocks": [...], "block_tokens": 16' (or the prompt itself), or ""
  std::int64_t input_tokens = -1;  // the caller's, or estimated from the prompt
  std::int8_t accepted = -1;
  [[nodiscard]] std::size_t bytes() const { return sizeof(Pending) + fields.size() + prompt.size(); }
};

/// The writer thread's state.
struct TraceRecorder::Writer {
  std::unordered_map<std::uint64_t, Pending> pending;
  std::deque<std::uint64_t> order;  // decision ids in arrival order (some already written)
  std::size_t pending_bytes = 0;
  std::string out;  // lines not yet written
  std::uint64_t lines = 0;
  std::vector<std::uint64_t> chain;
  bool failing = false;  // the last write failed (logged once until one succeeds)
  bool cut = false;      // it stopped inside a line: the next write starts a new one
};

Result<std::unique_ptr<TraceRecorder>> TraceRecorder::open(TraceOptions options, Log log) {
  if (options.buffer_bytes < sizeof(EventHead)) {
    return make_error(ErrorCode::invalid_argument,
                      "--record-buffer must be at least " + std::to_string(sizeof(EventHead)) + " bytes");
  }
  std::unique_ptr<TraceRecorder> r(new TraceRecorder());
  bool fresh = false;
  auto fd = open_trace_file(options.path, fresh);
  if (!fd) return std::move(fd).error();
  r->fd_ = fd.value();
  if (fresh && write_all(r->fd_, kHeader) != kHeader.size()) {
    const int err = errno;
    ::close(r->fd_);
    return os_error(err, "--record " + options.path + ": cannot write");
  }
  if (::getrandom(r->hash_key_, sizeof r->hash_key_, 0) != static_cast<ssize_t>(sizeof r->hash_key_)) {
    const int err = errno;
    ::close(r->fd_);
    return os_error(err, "--record: no random key for hashing request keys");
  }
  r->front_.resize(options.buffer_bytes);
  r->back_.resize(options.buffer_bytes);
  r->options_ = std::move(options);
  r->log_ = std::move(log);
  r->writer_ = std::make_unique<Writer>();
  r->thread_ = std::thread([p = r.get()] { p->run(); });
  return r;
}

TraceRecorder::~TraceRecorder() {
  if (thread_.joinable()) {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  if (fd_ >= 0) ::close(fd_);
}

void TraceRecorder::push(const void* head, std::size_t head_bytes, std::span<const std::string_view> parts) noexcept {
  std::size_t total = head_bytes;
  for (const auto part : parts) total += part.size();
  std::lock_guard lock(mu_);
  if (total > front_.size() - used_) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::memcpy(front_.data() + used_, head, head_bytes);
  used_ += head_bytes;
  for (const auto part : parts) {
    if (part.empty()) continue;
    std::memcpy(front_.data() + used_, part.data(), part.size());
    used_ += part.size();
  }
}

void TraceRecorder::decided(std::uint64_t id, TimeMs at, std::string_view scenario,
                            const RouteRequest* request) noexcept {
  EventHead h;
  h.kind = EventKind::decided;
  h.id = id;
  h.at = at;
  std::string_view key;
  std::string_view data_class;
  std::string_view prompt;
  if (request != nullptr) {
    key = request->key;
    data_class = request->data_class;
    if (!request->token_ids.empty()) {
      h.prompt = PromptForm::token_ids;
      prompt = {reinterpret_cast<const char*>(request->token_ids.data()), request->token_ids.size_bytes()};
    } else if (!request->text.empty()) {
      h.prompt = PromptForm::text;
      prompt = request->text;
    }
    h.input_tokens = request->input_tokens >= 0
                         ? request->input_tokens
                         : estimate_input_tokens(
                               h.prompt == PromptForm::token_ids ? std::optional(request->token_ids) : std::nullopt,
                               h.prompt == PromptForm::text ? std::optional(request->text) : std::nullopt);
  }
  h.scenario_bytes = static_cast<std::uint32_t>(scenario.size());
  h.key_bytes = static_cast<std::uint32_t>(key.size());
  h.data_class_bytes = static_cast<std::uint32_t>(data_class.size());
  h.prompt_bytes = prompt.size();
  const std::string_view parts[] = {scenario, key, data_class, prompt};
  push(&h, sizeof h, parts);
}

void TraceRecorder::outcome(std::uint64_t id, Status status, const Usage* usage,
                            std::optional<bool> accepted) noexcept {
  EventHead h;
  h.kind = EventKind::outcome;
  h.id = id;
  h.status = status;
  h.accepted = tristate(accepted);
  if (usage != nullptr) {
    h.input_tokens = usage->input_tokens();
    h.output_tokens = usage->output_tokens;
  }
  push(&h, sizeof h, {});
}

void TraceRecorder::verdict(std::uint64_t id, bool accepted) noexcept {
  EventHead h;
  h.kind = EventKind::verdict;
  h.id = id;
  h.accepted = tristate(accepted);
  push(&h, sizeof h, {});
}

void TraceRecorder::reopen() noexcept {
  {
    std::lock_guard lock(mu_);
    reopen_ = true;
  }
  wake_.notify_one();
}

void TraceRecorder::sync() {
  std::unique_lock lock(mu_);
  const std::uint64_t ticket = ++wanted_;
  wake_.notify_one();
  done_.wait(lock, [&] { return synced_ >= ticket || !thread_.joinable(); });
}

TraceRecorder::Stats TraceRecorder::stats() const noexcept {
  return {records_.load(std::memory_order_relaxed), dropped_.load(std::memory_order_relaxed),
          write_errors_.load(std::memory_order_relaxed)};
}

namespace {

/// Appends one trace line.
void append_line(std::string& out, TimeMs at, const std::string& fields, std::int64_t input_tokens,
                 std::int64_t output_tokens, std::int8_t accepted, const std::string& prompt) {
  char number[64];
  std::snprintf(number, sizeof number, "%.3f", static_cast<double>(at) / 1000.0);
  out += "{\"at\": ";
  out += number;
  out += fields;
  out += ", \"input_tokens\": ";
  out += std::to_string(std::max<std::int64_t>(input_tokens, 0));
  out += ", \"output_tokens\": ";
  out += std::to_string(std::max<std::int64_t>(output_tokens, 0));
  out += ", \"accepted\": ";
  out += accepted < 0 ? "null" : accepted == 1 ? "true" : "false";
  out += prompt;
  out += "}\n";
}

void append_blocks(std::string& out, std::span<const std::uint64_t> blocks) {
  out += ", \"blocks\": [";
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(blocks[i]);
  }
  out += "], \"block_tokens\": ";
  out += std::to_string(kTraceBlockTokens);
}

}  // namespace

void TraceRecorder::run() {
  Writer& w = *writer_;
  const auto finish = [&](std::unordered_map<std::uint64_t, Pending>::iterator it, std::int64_t input,
                          std::int64_t output) {
    const Pending& p = it->second;
    append_line(w.out, p.at, p.fields, input, output, p.accepted, p.prompt);
    ++w.lines;
    w.pending_bytes -= p.bytes();
    w.pending.erase(it);
  };
  const auto on_decided = [&](const EventHead& h, const char* payload) {
    const std::string_view scenario(payload, h.scenario_bytes);
    const std::string_view key(payload + h.scenario_bytes, h.key_bytes);
    const std::string_view data_class(key.data() + key.size(), h.data_class_bytes);
    const std::string_view prompt(data_class.data() + data_class.size(), h.prompt_bytes);
    Pending p;
    p.at = h.at;
    p.input_tokens = h.input_tokens;
    p.fields = ", \"scenario\": ";
    append_json_string(p.fields, scenario);
    p.fields += ", \"key\": ";
    if (key.empty()) {
      p.fields += "null";
    } else if (options_.raw_keys) {
      append_json_string(p.fields, key);
    } else {
      p.fields += '"' + protocol::hex16(siphash24(hash_key_, key)) + '"';
    }
    p.fields += ", \"data_class\": ";
    if (data_class.empty()) {
      p.fields += "null";
    } else {
      append_json_string(p.fields, data_class);
    }
    w.chain.clear();
    if (h.prompt == PromptForm::token_ids) {
      std::vector<std::uint32_t> tokens(prompt.size() / sizeof(std::uint32_t));
      if (!tokens.empty()) std::memcpy(tokens.data(), prompt.data(), tokens.size() * sizeof(std::uint32_t));
      if (options_.prompt_text) {
        p.prompt = ", \"token_ids\": [";
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          if (i != 0) p.prompt += ", ";
          p.prompt += std::to_string(tokens[i]);
        }
        p.prompt += ']';
      } else {
        sim::chain_of(tokens, w.chain);
        append_blocks(p.prompt, w.chain);
      }
    } else if (h.prompt == PromptForm::text) {
      if (options_.prompt_text) {
        p.prompt = ", \"text\": ";
        append_json_string(p.prompt, prompt);
      } else {
        // 64-byte links (16 tokens at kCharsPerToken): the chain the replay computes from the text itself.
        PrefixHasher::hash_text(prompt, static_cast<std::size_t>(kTraceBlockTokens), 0, w.chain);
        append_blocks(p.prompt, w.chain);
      }
    }
    w.pending_bytes += p.bytes();
    if (auto [it, added] = w.pending.try_emplace(h.id, std::move(p)); added) {
      w.order.push_back(h.id);
    } else {
      w.pending_bytes -= p.bytes();  // an id decided twice (never issued so): the first stays
    }
  };
  const auto on_outcome = [&](const EventHead& h) {
    const auto it = w.pending.find(h.id);
    if (it == w.pending.end()) return;  // written already (a fallback's later report), or never recorded
    if (h.accepted >= 0) it->second.accepted = h.accepted;
    if (h.status != Status::ok) return;  // a fallback may still serve it
    const bool usage = h.input_tokens >= 0;
    finish(it, usage ? h.input_tokens : it->second.input_tokens, usage ? h.output_tokens : 0);
  };
  // Written without an ok outcome: too old (no outcome can come now), too many waiting, or the stop.
  const auto expire = [&](bool all) {
    const TimeMs now = now_ms();
    while (!w.order.empty()) {
      const auto it = w.pending.find(w.order.front());
      if (it != w.pending.end()) {
        const bool due = all || now - it->second.at >= options_.wait_ms || w.pending.size() > kMaxPending ||
                         w.pending_bytes > kMaxPendingBytes;
        if (!due) break;
        finish(it, it->second.input_tokens, 0);
      }
      w.order.pop_front();
    }
    // Ids written long ago behind one still waiting: dropped, so the queue stays the size of `pending`.
    if (w.order.size() > 2 * w.pending.size() + 1024) {
      std::erase_if(w.order, [&](std::uint64_t id) { return !w.pending.contains(id); });
    }
  };
  const auto write_out = [&] {
    if (w.out.empty()) return;
    const std::size_t mend = w.cut ? 1 : 0;  // a newline ending the line a failed write cut short
    if (w.cut) w.out.insert(w.out.begin(), '\n');
    const std::size_t done = write_all(fd_, w.out);
    const int err = errno;
    if (done > mend) w.cut = w.out[done - 1] != '\n';
    const auto written =
        done > mend ? static_cast<std::uint64_t>(std::count(w.out.begin() + static_cast<std::ptrdiff_t>(mend),
                                                            w.out.begin() + static_cast<std::ptrdiff_t>(done), '\n'))
                    : 0U;
    records_.fetch_add(written, std::memory_order_relaxed);
    if (done < w.out.size()) {
      write_errors_.fetch_add(w.lines - written, std::memory_order_relaxed);
      if (!w.failing) {
        log_("--record " + options_.path + ": write failed (" + std::strerror(err) +
             "): lines are lost until a write succeeds (turnout_trace_write_errors_total); serving goes on");
      }
      w.failing = true;
    } else if (w.failing) {
      w.failing = false;
      log_("--record " + options_.path + ": writing again");
    }
    w.out.clear();
    w.lines = 0;
  };
  const auto reopen_file = [&] {
    bool fresh = false;
    auto fd = open_trace_file(options_.path, fresh);
    if (!fd) {
      log_("SIGHUP: still writing the trace to the file open before: " + fd.error().message);
      return;
    }
    if (fresh && write_all(fd.value(), kHeader) != kHeader.size()) {
      log_("SIGHUP: still writing the trace to the file open before: --record " + options_.path +
           ": cannot write: " + std::strerror(errno));
      ::close(fd.value());
      return;
    }
    ::close(fd_);
    fd_ = fd.value();
    w.cut = false;  // a line cut short stays in the old file
    log_(std::string("SIGHUP: trace reopened: ") + options_.path + (fresh ? " (new file)" : ""));
  };

  for (;;) {
    std::size_t used = 0;
    bool reopen = false;
    bool stop = false;
    std::uint64_t wanted = 0;
    {
      std::unique_lock lock(mu_);
      wake_.wait_for(lock, kWriterTick, [&] { return stop_ || reopen_ || wanted_ != synced_; });
      std::swap(front_, back_);
      used = std::exchange(used_, 0);
      reopen = std::exchange(reopen_, false);
      stop = stop_;
      wanted = wanted_;
    }
    for (std::size_t at = 0; at < used;) {
      EventHead h;
      std::memcpy(&h, back_.data() + at, sizeof h);
      at += sizeof h;
      switch (h.kind) {
        case EventKind::decided:
          on_decided(h, back_.data() + at);
          at += h.scenario_bytes + h.key_bytes + h.data_class_bytes + h.prompt_bytes;
          break;
        case EventKind::outcome: on_outcome(h); break;
        case EventKind::verdict:
          if (const auto it = w.pending.find(h.id); it != w.pending.end()) it->second.accepted = h.accepted;
          break;
      }
    }
    expire(stop);
    write_out();
    if (reopen) reopen_file();
    {
      std::lock_guard lock(mu_);
      synced_ = wanted;
    }
    done_.notify_all();
    if (stop) return;
  }
}

}  // namespace turnout::sidecar
