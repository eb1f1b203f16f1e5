// turnout-sidecar: the per-node routing daemon. Serves the Router over a ZeroMQ ROUTER socket
// (msgpack requests), mirrors the ledger into a shared-memory segment, and exposes /metrics and
// /healthz on a loopback HTTP port. See docs/operations.md.

#include <fcntl.h>
#include <malloc.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <httplib.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>
#include "turnout/io/router_sink.hpp"

#include "sidecar/config_watch.hpp"
#include "sidecar/server.hpp"
#include "turnout/shm/private_file.hpp"

namespace {

using turnout::ErrorCode;
using turnout::make_error;
using turnout::Result;
using turnout::sidecar::Server;

using turnout::sidecar::ConfigWatch;
using turnout::sidecar::FileStamp;

/// Messages queued per peer before ZeroMQ stops reading from it (backpressure, nothing is dropped):
/// with kMaxMessageBytes each, a peer holds at most (kPeerQueuedMessages + 1) x 8 MiB of the
/// daemon's memory (the +1: the message being received). See docs/operations.md.
constexpr int kPeerQueuedMessages = 4;
/// Replies queued per peer that does not read them; beyond that a reply is dropped and counted (the
/// request itself was applied). Replies are small, so this bounds a non-reading peer to a few MiB.
constexpr int kPeerQueuedReplies = 4096;

bool g_foreground = false;
int g_ready_fd = -1;  // background mode: the parent waits on this pipe for "ok" or the error line

void log(int priority, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void log(int priority, const char* fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);  // NOLINT(clang-analyzer-valist.Uninitialized): va_start above
  va_end(ap);
  if (g_foreground) {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char ts[32];
    std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    std::fprintf(stderr, "%s turnout-sidecar[%d]: %s\n", ts, static_cast<int>(::getpid()), msg);
  } else {
    ::syslog(priority, "%s", msg);
  }
}

/// A startup error: one line on stderr (or through the readiness pipe), exit 1.
[[noreturn]] void die(const std::string& message) {
  const std::string line = "turnout-sidecar: " + message + "\n";
  if (g_ready_fd >= 0) {
    (void)!::write(g_ready_fd, line.data(), line.size());
  } else {
    (void)!::write(2, line.data(), line.size());
  }
  std::_Exit(1);
}

const char* kUsage =
    "usage: turnout-sidecar CONFIG [--endpoint ipc://PATH|tcp://HOST:PORT] [--shm NAME] [--state-dir DIR]\n"
    "                          [--metrics 127.0.0.1:PORT] [--foreground] [--no-watch]\n"
    "                          [--curve-secret-key FILE --curve-authorized-keys FILE]\n"
    "                          [--insecure-tcp read-only|read-write]\n"
    "                          [--record PATH [--record-keys] [--record-text] [--record-buffer BYTES]\n"
    "                          [--record-wait SECONDS]]\n"
    "\n"
    "  CONFIG              the YAML routing table (reloaded on SIGHUP, by the reload op and when the\n"
    "                      file changes)\n"
    "  --endpoint E        ZeroMQ endpoint to bind (default ipc://$XDG_RUNTIME_DIR/turnout/sidecar.sock,\n"
    "                      else ipc:///run/user/$UID/turnout/sidecar.sock, else\n"
    "                      ipc://$HOME/.turnout/sidecar.sock; socket file mode 0600); tcp:// needs the\n"
    "                      two --curve options (or, on loopback only, --insecure-tcp)\n"
    "  --shm NAME          shared-memory segment for the counters (default turnout-$UID)\n"
    "  --state-dir DIR     where the ledger, budgets, breakers and pending decisions are kept across\n"
    "                      restarts and reboots, in DIR/NAME (default $STATE_DIRECTORY, else\n"
    "                      $XDG_STATE_HOME/turnout, else ~/.local/state/turnout; created mode 0700)\n"
    "  --metrics HOST:PORT serve /metrics and /healthz over HTTP (loopback only; default off)\n"
    "  --foreground        stay in the foreground and log to stderr (default: daemonize, log to syslog)\n"
    "  --no-watch          do not reload when the CONFIG file changes (SIGHUP and the reload op still do)\n"
    "  --curve-secret-key FILE\n"
    "                      the server's CURVE secret key (40 Z85 characters; the file must be mode 0600):\n"
    "                      peers must use ZeroMQ CURVE with the matching public key (logged at start)\n"
    "  --curve-authorized-keys FILE\n"
    "                      the client public keys allowed in, one Z85 key per line ('#' comments);\n"
    "                      re-read on SIGHUP\n"
    "  --insecure-tcp MODE serve loopback tcp:// without CURVE: every local user can then connect.\n"
    "                      read-only: explain, stats and health only; read-write: every op\n"
    "  --record PATH       append every decision to PATH in the Turnout trace format (JSON Lines, mode\n"
    "                      0600; keys and prompts hashed); reopened on SIGHUP\n"
    "  --record-keys       record request keys as given (default: a keyed hash)\n"
    "  --record-text       record the prompt as sent: text or token ids (default: its block hashes)\n"
    "  --record-buffer BYTES\n"
    "                      recording events waiting for the writer (default 8388608); beyond, dropped\n"
    "                      and counted\n"
    "  --record-wait SECONDS\n"
    "                      how long a decision waits for its ok outcome before it is written without\n"
    "                      one (default 3600)\n";

struct Options {
  std::string config;
  std::string endpoint;
  std::string shm;
  std::string state_dir;
  std::string metrics;
  std::string curve_secret_key;
  std::string curve_authorized_keys;
  std::string insecure_tcp;               ///< "", "read-only" or "read-write"
  turnout::sidecar::TraceOptions record;  ///< --record and its companions
  bool foreground = false;
  bool watch = true;
  std::string metrics_host;  ///< --metrics, split (port 0: off)
  int metrics_port = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* flag) -> std::string {
      const std::string prefix = std::string(flag) + "=";
      if (a.rfind(prefix, 0) == 0) return a.substr(prefix.size());
      if (i + 1 >= args.size()) die(std::string(flag) + " needs a value (see --help)");
      return args[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--version") {
      std::puts("turnout-sidecar " TURNOUT_VERSION);
      std::exit(0);
    } else if (a == "--foreground" || a == "-f") {
      o.foreground = true;
    } else if (a == "--no-watch") {
      o.watch = false;
    } else if (a == "--curve-secret-key" || a.rfind("--curve-secret-key=", 0) == 0) {
      o.curve_secret_key = value("--curve-secret-key");
    } else if (a == "--curve-authorized-keys" || a.rfind("--curve-authorized-keys=", 0) == 0) {
      o.curve_authorized_keys = value("--curve-authorized-keys");
    } else if (a == "--insecure-tcp" || a.rfind("--insecure-tcp=", 0) == 0) {
      o.insecure_tcp = value("--insecure-tcp");
      if (o.insecure_tcp != "read-only" && o.insecure_tcp != "read-write") {
        die("--insecure-tcp must be read-only or read-write, got '" + o.insecure_tcp + "'");
      }
    } else if (a == "--endpoint" || a.rfind("--endpoint=", 0) == 0) {
      o.endpoint = value("--endpoint");
    } else if (a == "--shm" || a.rfind("--shm=", 0) == 0) {
      o.shm = value("--shm");
    } else if (a == "--state-dir" || a.rfind("--state-dir=", 0) == 0) {
      o.state_dir = value("--state-dir");
    } else if (a == "--metrics" || a.rfind("--metrics=", 0) == 0) {
      o.metrics = value("--metrics");
    } else if (a == "--record" || a.rfind("--record=", 0) == 0) {
      o.record.path = value("--record");
      if (o.record.path.empty()) die("--record needs a file path");
    } else if (a == "--record-keys") {
      o.record.raw_keys = true;
    } else if (a == "--record-text") {
      o.record.prompt_text = true;
    } else if (a == "--record-buffer" || a.rfind("--record-buffer=", 0) == 0) {
      const std::string v = value("--record-buffer");
      if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 12) {
        die("--record-buffer must be a number of bytes, got '" + v + "'");
      }
      o.record.buffer_bytes = std::stoull(v);
    } else if (a == "--record-wait" || a.rfind("--record-wait=", 0) == 0) {
      const std::string v = value("--record-wait");
      if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 9) {
        die("--record-wait must be a whole number of seconds, got '" + v + "'");
      }
      o.record.wait_ms = std::stoll(v) * 1000;
    } else if (!a.empty() && a[0] == '-') {
      die("unknown option " + a + " (see --help)");
    } else if (o.config.empty()) {
      o.config = a;
    } else {
      die("one CONFIG only, got '" + o.config + "' and '" + a + "'");
    }
  }
  if (o.config.empty()) die("missing CONFIG (see --help)");
  if (o.record.path.empty() && (o.record.raw_keys || o.record.prompt_text ||
                                o.record.buffer_bytes != turnout::sidecar::TraceOptions{}.buffer_bytes ||
                                o.record.wait_ms != turnout::sidecar::TraceOptions{}.wait_ms)) {
    die("the --record-* options need --record PATH");
  }
  if (o.curve_secret_key.empty() != o.curve_authorized_keys.empty()) {
    die("CURVE needs both --curve-secret-key and --curve-authorized-keys");
  }
  return o;
}

bool loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

std::string default_endpoint() {
  auto endpoint = turnout::shm::default_endpoint(true);
  if (!endpoint) die(endpoint.error().message + "; pass --endpoint");
  return std::move(endpoint).value();
}

/// Refuses what is not ipc:// or tcp://; tcp:// only with CURVE, or on loopback with --insecure-tcp.
void check_endpoint(const std::string& e, bool curve, bool insecure_tcp) {
  if (e.rfind("ipc://", 0) == 0) {
    if (e.size() <= 6) die("--endpoint ipc:// needs a path");
    return;
  }
  if (e.rfind("tcp://", 0) == 0) {
    const std::string hostport = e.substr(6);
    const auto colon = hostport.rfind(':');
    if (colon == std::string::npos) die("--endpoint " + e + " needs a port (tcp://127.0.0.1:PORT)");
    const std::string host = hostport.substr(0, colon);
    if (!loopback_host(host) && !curve) {
      die("refusing to bind non-loopback address " + e +
          " without ZeroMQ CURVE authentication: give --curve-secret-key and --curve-authorized-keys, "
          "or bind ipc://PATH");
    }
    if (!curve && !insecure_tcp) {
      die("refusing to bind " + e +
          " without ZeroMQ CURVE authentication: every local user could connect. Give "
          "--curve-secret-key and --curve-authorized-keys, bind ipc://PATH, or opt in with "
          "--insecure-tcp read-only (or read-write)");
    }
    return;
  }
  die("--endpoint must be ipc://PATH or tcp://HOST:PORT, got '" + e + "'");
}

// ------------------------------------------------------------------------------------------- CURVE

/// Client public keys as ZAP hands them over: 32 raw bytes.
using KeySet = std::set<std::string>;

std::string z85(std::string_view key) {
  char out[41] = {};
  ::zmq_z85_encode(out, reinterpret_cast<const std::uint8_t*>(key.data()), key.size());
  return out;
}

/// Reads a key file through one descriptor (the mode checked is the file's that is read). Bits of
/// `forbidden` set in its mode refuse it with `why`.
Result<std::string> read_key_file(const std::string& flag, const std::string& path, mode_t forbidden, const char* why) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(ErrorCode::invalid_argument, flag + " " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorCode::invalid_argument, flag + " " + path + " is not a regular file");
  }
  if ((st.st_mode & forbidden) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return make_error(ErrorCode::invalid_argument, flag + " " + path + " is mode " + mode + ": " + why);
  }
  std::string text;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return text;
}

/// Z85 keys, one per line. A line's first word is a key when it is 40 Z85 characters (a key may
/// start with '#', a Z85 digit), else a comment when it starts with '#' (so '#' before a key
/// comments it out), else an error naming path:line. Returns raw 32-byte keys.
Result<std::vector<std::string>> parse_keys(const std::string& text, const std::string& path) {
  std::vector<std::string> keys;
  std::istringstream lines(text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    std::istringstream words(line);
    std::string word;
    if (!(words >> word)) continue;
    std::uint8_t key[32];
    if (word.size() == 40 && ::zmq_z85_decode(key, word.c_str()) != nullptr) {
      keys.emplace_back(reinterpret_cast<const char*>(key), sizeof key);
    } else if (word[0] != '#') {
      return make_error(ErrorCode::invalid_argument,
                        path + ":" + std::to_string(number) + ": not a Z85 CURVE key (40 characters)");
    }
  }
  return keys;
}

/// The server's secret key, in Z85; refused unless only its owner can read it.
Result<std::string> load_secret_key(const std::string& path) {
  auto text =
      read_key_file("--curve-secret-key", path, 0077, ("only its owner may read it (chmod 600 " + path + ")").c_str());
  if (!text) return std::move(text).error();
  auto keys = parse_keys(text.value(), path);
  if (!keys) return std::move(keys).error();
  if (keys.value().size() != 1) {
    return make_error(ErrorCode::invalid_argument, "--curve-secret-key " + path + " must hold exactly one Z85 key");
  }
  return z85(keys.value()[0]);
}

/// The client public keys allowed in; refused if others could add theirs.
Result<KeySet> load_authorized_keys(const std::string& path) {
  auto text = read_key_file("--curve-authorized-keys", path, 0022,
                            ("others could add keys to it (chmod go-w " + path + ")").c_str());
  if (!text) return std::move(text).error();
  auto keys = parse_keys(text.value(), path);
  if (!keys) return std::move(keys).error();
  if (keys.value().empty())
    return make_error(ErrorCode::invalid_argument, "--curve-authorized-keys " + path + " holds no key");
  return KeySet(keys.value().begin(), keys.value().end());
}

/// Answers the ZAP requests (RFC 27) libzmq sends for each CURVE handshake on this context: only
/// authorized client keys pass. A denied key is logged once (a peer retrying must not flood the log).
void answer_zap(zmq::socket_t& zap, const KeySet& authorized, KeySet& denied_logged) {
  std::vector<zmq::message_t> req;
  for (int i = 0; i < 1024; ++i) {
    req.clear();
    if (!zmq::recv_multipart(zap, std::back_inserter(req), zmq::recv_flags::dontwait)) return;
    // version, request id, domain, address, identity, mechanism, client public key
    std::string status = "400";
    std::string text = "client key not authorized";
    std::string user;
    if (req.size() != 7 || req[0].to_string_view() != "1.0" || req[5].to_string_view() != "CURVE" ||
        req[6].size() != 32) {
      status = "500";
      text = "unexpected ZAP request";
    } else if (const std::string key = req[6].to_string(); authorized.contains(key)) {
      status = "200";
      text = "OK";
      user = z85(key);
    } else if (denied_logged.size() < 1024 && denied_logged.insert(key).second) {
      log(LOG_WARNING, "CURVE: denied client key %s from %s", z85(key).c_str(), req[3].to_string().c_str());
    }
    const std::string request_id = req.size() > 1 ? req[1].to_string() : std::string();
    const std::array<zmq::const_buffer, 6> reply = {zmq::str_buffer("1.0"), zmq::buffer(request_id),
                                                    zmq::buffer(status),    zmq::buffer(text),
                                                    zmq::buffer(user),      zmq::const_buffer()};
    (void)zmq::send_multipart(zap, reply);
  }
}

// ----------------------------------------------------------------------------------- file watch

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return std::move(out).str();
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// Background mode: fork; the parent waits for the child's readiness line and exits with its status.
void daemonize() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) die(std::string("pipe: ") + std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
  if (pid > 0) {
    ::close(fds[1]);
    std::string got;
    char buf[512];
    ssize_t n = 0;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
    if (got.rfind("ok", 0) == 0) {
      std::fprintf(stderr, "turnout-sidecar: started (pid %s)\n", got.substr(3).c_str());
      std::_Exit(0);
    }
    if (got.empty()) got = "turnout-sidecar: exited during startup\n";
    (void)!::write(2, got.data(), got.size());
    std::_Exit(1);
  }
  ::close(fds[0]);
  g_ready_fd = fds[1];
  ::setsid();
  const int null = ::open("/dev/null", O_RDWR);
  if (null >= 0) {
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(null, 2);
    if (null > 2) ::close(null);
  }
  ::openlog("turnout-sidecar", LOG_PID, LOG_DAEMON);
}

// ---------------------------------------------------------------------------------------- start-up

/// Step 1: the flags, checked, with their defaults filled in (dies with one line on a bad one).
Options parse_flags(int argc, char** argv) {
  Options opt = parse(argc, argv);
  g_foreground = opt.foreground;
  ::umask(0077);  // every file we create (socket, segment, lock) is 0600
  if (opt.endpoint.empty()) opt.endpoint = default_endpoint();
  const bool curve = !opt.curve_secret_key.empty();
  check_endpoint(opt.endpoint, curve, !opt.insecure_tcp.empty());
  if (!opt.insecure_tcp.empty() && (curve || opt.endpoint.rfind("tcp://", 0) != 0)) {
    die("--insecure-tcp applies to a tcp:// endpoint without CURVE only");
  }
  if (opt.shm.empty()) opt.shm = "turnout-" + std::to_string(::getuid());
  if (opt.state_dir.empty()) opt.state_dir = turnout::sidecar::default_state_dir();
  if (!opt.metrics.empty()) {
    const auto colon = opt.metrics.rfind(':');
    if (colon == std::string::npos) die("--metrics must be HOST:PORT, e.g. 127.0.0.1:9464");
    opt.metrics_host = opt.metrics.substr(0, colon);
    try {
      opt.metrics_port = std::stoi(opt.metrics.substr(colon + 1));
    } catch (...) {
      die("--metrics port must be a number, got '" + opt.metrics.substr(colon + 1) + "'");
    }
    if (opt.metrics_port <= 0 || opt.metrics_port > 65535) die("--metrics port out of range");
    if (!loopback_host(opt.metrics_host)) {
      die("refusing to serve /metrics on non-loopback address " + opt.metrics_host + " (use 127.0.0.1)");
    }
  }
  return opt;
}

/// The CURVE server's keys: its secret (Z85) and the client keys let in.
struct CurveKeys {
  std::string secret;
  KeySet authorized;
};

/// Step 2: the CURVE keys, read before daemonizing so that a bad key file fails on the terminal.
std::optional<CurveKeys> load_curve_keys(const Options& opt) {
  if (opt.curve_secret_key.empty()) return std::nullopt;
  if (::zmq_has("curve") == 0) die("this libzmq was built without CURVE support; cannot use --curve-secret-key");
  auto secret = load_secret_key(opt.curve_secret_key);
  if (!secret) die(secret.error().message);
  auto keys = load_authorized_keys(opt.curve_authorized_keys);
  if (!keys) die(keys.error().message);
  return CurveKeys{std::move(secret).value(), std::move(keys).value()};
}

/// The running daemon: what start-up acquires, step by step (each a member below, called in order by
/// run()), then the serving loop and the orderly stop.
class Daemon {
 public:
  Daemon(Options opt, std::optional<CurveKeys> curve, int sigfd)
      : opt_(std::move(opt)), curve_(std::move(curve)), sigfd_(sigfd) {}

  void open_state();
  void bind_socket();
  void start_metrics();
  void subscribe_kv_events();
  void announce_ready();
  void serve_loop();
  /// Drains what already arrived, then stops accepting; returns the exit status.
  int drain_and_stop();

 private:
  bool serve_one();
  void reload(const char* why);
  void log_config_warnings();
  void watch(std::int64_t now);
  void read_signals();

  Options opt_;
  std::optional<CurveKeys> curve_;
  int sigfd_ = -1;
  FileStamp watched_;                        // the config version being served
  std::optional<ConfigWatch> config_watch_;  // off with --no-watch
  std::int64_t last_beat_ = 0;
  std::unique_ptr<Server> server_;
  std::string start_note_;
  int endpoint_lock_ = -1;
  zmq::context_t ctx_{1};  // its threads start with the first socket (bind_socket)
  zmq::socket_t sock_;
  zmq::socket_t zap_;
  std::string curve_public_;
  KeySet denied_logged_;
  std::vector<zmq::message_t> frames_;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  std::unique_ptr<turnout::io::RouterKvSink> kv_sink_;
  std::unique_ptr<turnout::io::KvEventSubscriber> kv_subscriber_;
  bool stopping_ = false;
};

/// Step 3: signals arrive on a signalfd polled with the socket; blocked before any thread starts (a
/// thread with them unblocked would take SIGTERM's default action).
int block_signals() {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  const int sigfd = ::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) die(std::string("signalfd: ") + std::strerror(errno));
  return sigfd;
}

/// Step 4: the table, the shared-memory segment and its counters (re-attached after a crash).
void Daemon::open_state() {
  // Stamped before the load: a change that lands during start-up is still seen.
  watched_ = FileStamp::of(opt_.config);
  if (opt_.watch) {
    if (auto w = ConfigWatch::open(opt_.config); w) {
      config_watch_ = std::move(w).value();
    } else {
      log(LOG_WARNING, "config watch off (%s): SIGHUP and the reload op still reload", w.error().message.c_str());
    }
  }
  auto started = Server::start(opt_.config, opt_.shm, opt_.state_dir);
  if (!started) die(started.error().message);
  server_ = std::move(started.value().server);
  server_->set_read_only(opt_.insecure_tcp == "read-only");
  server_->set_trusted(opt_.insecure_tcp.empty());  // tcp:// without CURVE is only ever --insecure-tcp
  server_->on_migration([](const std::string& line) { log(LOG_NOTICE, "%s", line.c_str()); });
  if (!opt_.record.path.empty()) {
    auto recorder = turnout::sidecar::TraceRecorder::open(
        opt_.record, [](std::string_view m) { log(LOG_ERR, "%.*s", static_cast<int>(m.size()), m.data()); });
    if (!recorder) die(recorder.error().message);
    server_->record(std::move(recorder).value());
  }
  start_note_ = std::move(started.value().note);
  // Every reload is logged, the reload op's too, in one place.
  server_->on_reload([this](std::string_view why, const Result<turnout::Ok>& r) {
    const std::string by(why);
    if (r) {
      log(LOG_INFO, "%s: reloaded %s, config %s, generation %llu", by.c_str(), opt_.config.c_str(),
          server_->config_version().c_str(), static_cast<unsigned long long>(server_->generation()));
      log_config_warnings();
    } else {
      log(LOG_ERR, "%s: reload failed, still serving config %s: %s", by.c_str(), server_->config_version().c_str(),
          r.error().message.c_str());
    }
  });
}

/// Step 5: the ROUTER socket (0600 ipc, loopback TCP, or a CURVE server with its ZAP handler).
void Daemon::bind_socket() {
  // An ipc endpoint is also guarded by a lock file: ZeroMQ would silently take over a live socket.
  std::string ipc_path;
  if (opt_.endpoint.rfind("ipc://", 0) == 0) {
    ipc_path = opt_.endpoint.substr(6);
    const auto slash = ipc_path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : ipc_path.substr(0, slash);
    if (auto ok = turnout::shm::check_socket_dir(dir); !ok) die(ok.error().message);
    auto lock = turnout::shm::open_private_lock(ipc_path + ".lock");  // another user's is refused
    if (!lock) die(lock.error().message);
    endpoint_lock_ = lock.value();
    if (::flock(endpoint_lock_, LOCK_EX | LOCK_NB) != 0) {
      die("endpoint " + opt_.endpoint + " is in use by another live sidecar");
    }
  }
  sock_ = zmq::socket_t(ctx_, zmq::socket_type::router);
  // The ZAP handler must be bound before the first handshake: without one, libzmq lets every CURVE
  // client in.
  if (curve_) {
    zap_ = zmq::socket_t(ctx_, zmq::socket_type::rep);
    zap_.set(zmq::sockopt::linger, 0);
    zap_.bind("inproc://zeromq.zap.01");
    char pub[41] = {};
    if (::zmq_curve_public(pub, curve_->secret.c_str()) != 0) die("--curve-secret-key: not a CURVE secret key");
    curve_public_ = pub;
  }
  try {
    sock_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(turnout::protocol::kMaxMessageBytes));
    sock_.set(zmq::sockopt::linger, 1000);
    sock_.set(zmq::sockopt::rcvhwm, kPeerQueuedMessages);
    sock_.set(zmq::sockopt::sndhwm, kPeerQueuedReplies);
    sock_.set(zmq::sockopt::router_mandatory, true);  // a full or gone peer is told to us, not silently dropped
    if (curve_) {
      sock_.set(zmq::sockopt::curve_server, true);
      sock_.set(zmq::sockopt::curve_secretkey, curve_->secret.c_str());
    }
    sock_.bind(opt_.endpoint);
  } catch (const zmq::error_t& e) {
    die("cannot bind " + opt_.endpoint + ": " + e.what());
  }
  if (!ipc_path.empty()) ::chmod(ipc_path.c_str(), 0600);
}

/// Step 6: /metrics and /healthz on the loopback HTTP port, if asked for.
void Daemon::start_metrics() {
  if (opt_.metrics_port == 0) return;
  http_ = std::make_unique<httplib::Server>();
  Server* srv = server_.get();
  http_->Get("/metrics", [srv](const httplib::Request&, httplib::Response& res) {
    res.set_content(srv->metrics(now_ms()), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_->Get("/healthz",
             [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  if (!http_->bind_to_port(opt_.metrics_host, opt_.metrics_port)) {
    die("cannot listen on " + opt_.metrics + " for /metrics (address in use?)");
  }
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
}

/// Step 7, precise mode: the engines' KV events of the replicas that name a publisher. The
/// subscriptions follow the table loaded at start; the sink resolves replicas by name on the current
/// Router, so a reload that keeps them keeps working.
void Daemon::subscribe_kv_events() {
  namespace io = turnout::io;
  auto [publishers, names] = io::kv_publishers(*server_->router()->config());
  if (publishers.empty()) return;
  Server* srv = server_.get();
  kv_sink_ = std::make_unique<io::RouterKvSink>([srv] { return srv->router(); }, std::move(names));
  const auto count = publishers.size();
  kv_subscriber_ = std::make_unique<io::KvEventSubscriber>(std::move(publishers), *kv_sink_);
  if (auto started = kv_subscriber_->start(); !started) die("KV events: " + started.error().message);
  log(LOG_INFO, "subscribed to KV events of %zu replicas", count);
}

/// Step 8: the log lines of a started sidecar, and "ok" to a parent waiting in the background mode.
void Daemon::announce_ready() {
  log(LOG_INFO, "%s", start_note_.c_str());
  log_config_warnings();
  if (!opt_.insecure_tcp.empty()) {
    log(LOG_WARNING,
        "INSECURE: %s without CURVE (--insecure-tcp %s): every local user can connect and %s; use ipc:// or "
        "CURVE",
        opt_.endpoint.c_str(), opt_.insecure_tcp.c_str(),
        opt_.insecure_tcp == "read-write" ? "route, report, verdict and reload" : "read explain, stats and health");
  }
  if (curve_) {
    log(LOG_INFO, "CURVE on: server public key %s, %zu authorized client keys", curve_public_.c_str(),
        curve_->authorized.size());
  }
  const bool metrics = opt_.metrics_port != 0;
  log(LOG_INFO, "serving %s on %s, shm %s, generation %llu, config %s%s%s", opt_.config.c_str(), opt_.endpoint.c_str(),
      opt_.shm.c_str(), static_cast<unsigned long long>(server_->generation()), server_->config_version().c_str(),
      metrics ? ", metrics http://" : "", metrics ? opt_.metrics.c_str() : "");
  if (g_ready_fd >= 0) {
    const std::string ok = "ok " + std::to_string(::getpid());
    (void)!::write(g_ready_fd, ok.data(), ok.size());
    ::close(g_ready_fd);
    g_ready_fd = -1;
  }
}

/// Step 9: requests, ring records, ZAP handshakes, signals, the heartbeat and the config watch,
/// until SIGTERM or SIGINT.
void Daemon::serve_loop() {
  while (!stopping_) {
    const int watch_fd = config_watch_ ? config_watch_->fd() : -1;  // poll() skips a negative fd
    zmq::pollitem_t items[] = {{sock_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, sigfd_, ZMQ_POLLIN, 0},
                               {nullptr, watch_fd, ZMQ_POLLIN, 0},
                               {zap_.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      // Fast-path clients post to rings, not the socket: look at them every millisecond while any exist.
      zmq::poll(items, curve_ ? 4 : 3, std::chrono::milliseconds(server_->fast_clients() > 0 ? 1 : 100));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) log(LOG_ERR, "poll: %s", e.what());
    }
    if ((items[2].revents & ZMQ_POLLIN) != 0) config_watch_->on_events(now_ms());
    if (curve_ && (items[3].revents & ZMQ_POLLIN) != 0) {
      try {
        answer_zap(zap_, curve_->authorized, denied_logged_);
      } catch (const zmq::error_t& e) {
        log(LOG_WARNING, "ZAP: %s", e.what());
      }
    }
    // Rings first: a report sent through the socket must not overtake the adopt of its decision.
    server_->drain_rings(now_ms());
    if ((items[0].revents & ZMQ_POLLIN) != 0) {
      for (int i = 0; i < 1024 && serve_one(); ++i) {
      }
    }
    if ((items[1].revents & ZMQ_POLLIN) != 0) read_signals();
    const auto now = now_ms();
    server_->migration_tick(now);  // cheap unless an analysis is due
    if (now - last_beat_ >= 100) {
      server_->heartbeat(now);
      last_beat_ = now;
    }
    watch(now);
  }
}

/// Step 10: what already arrived is answered (bounded: a flood cannot hold the exit), then the
/// socket, the metrics server and the segment are closed in order.
int Daemon::drain_and_stop() {
  int drained = 0;
  while (drained < 100'000 && serve_one()) ++drained;
  server_->drain_rings(now_ms());  // what fast-path clients posted
  try {
    sock_.unbind(opt_.endpoint);
  } catch (const zmq::error_t&) {
  }
  server_->flush();
  if (http_) {
    http_->stop();
    http_thread_.join();
  }
  sock_.close();  // linger: queued replies still go out
  zap_.close();   // after the ROUTER: a handshake must never find the handler gone
  ctx_.close();
  if (endpoint_lock_ >= 0) ::close(endpoint_lock_);
  log(LOG_INFO, "stopped (%d requests drained)", drained);
  return 0;
}

/// One waiting request: [identity, (empty delimiter from REQ peers), payload] -> same envelope +
/// reply. False when none was waiting.
bool Daemon::serve_one() {
  frames_.clear();
  try {
    const auto n = zmq::recv_multipart(sock_, std::back_inserter(frames_), zmq::recv_flags::dontwait);
    if (!n) return false;
    if (frames_.size() < 2) return true;  // nothing to answer
    const auto& payload = frames_.back();
    std::string reply = server_->handle(std::string_view(payload.data<char>(), payload.size()), now_ms());
    if (reply.empty()) return true;
    // With router_mandatory the first frame fails as a whole (nothing of the reply is queued) when the
    // peer's queue is full or the peer is gone.
    for (std::size_t i = 0; i + 1 < frames_.size(); ++i) {
      if (!sock_.send(std::move(frames_[i]), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        server_->count_unsent_reply();
        return true;
      }
    }
    sock_.send(zmq::buffer(reply), zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    server_->count_unsent_reply();
    if (e.num() != EHOSTUNREACH) log(LOG_WARNING, "reply dropped: %s", e.what());
  }
  return true;
}

// SIGHUP and file changes reload the same way as the op: validated first, the old table serves on
// error, and the outcome is logged (the hook set in open_state).
void Daemon::reload(const char* why) { (void)server_->reload(why, now_ms()); }

// What the loader changed to accept the served table (a rounded price...), one line each.
void Daemon::log_config_warnings() {
  for (const auto& w : server_->router()->config()->warnings) log(LOG_WARNING, "config: %s", w.c_str());
}

// A new version is loaded once complete (its writer closed it, or it was renamed into place) and
// settled (ConfigWatch), and only once. Content already being served (reloaded by SIGHUP or the op)
// is not reloaded again.
void Daemon::watch(std::int64_t now) {
  if (!config_watch_ || !config_watch_->changed(now, watched_)) return;
  if (!watched_.exists) {
    log(LOG_WARNING, "config %s is gone, still serving config %s", opt_.config.c_str(),
        server_->config_version().c_str());
  } else if (read_file(opt_.config) != server_->router()->config()->text) {
    reload("file change");
  }
}

// SIGHUP reloads the table (and the CURVE allow-list); SIGTERM and SIGINT drain and stop.
void Daemon::read_signals() {
  signalfd_siginfo si{};
  while (::read(sigfd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    if (si.ssi_signo != SIGHUP) {
      log(LOG_INFO, "%s: draining and stopping", strsignal(static_cast<int>(si.ssi_signo)));
      stopping_ = true;
      continue;
    }
    reload("SIGHUP");
    server_->reopen_trace();
    if (!curve_) continue;
    if (auto keys = load_authorized_keys(opt_.curve_authorized_keys); keys) {
      curve_->authorized = std::move(keys).value();
      log(LOG_INFO, "SIGHUP: %zu authorized client keys", curve_->authorized.size());
    } else {
      log(LOG_ERR, "SIGHUP: keeping %zu authorized client keys: %s", curve_->authorized.size(),
          keys.error().message.c_str());
    }
  }
}

int run(int argc, char** argv) {
  // Messages above 1 MiB get their own mapping, returned to the OS when freed: a flood of large
  // messages must not leave the heap grown (glibc would otherwise raise this threshold to 32 MiB).
  ::mallopt(M_MMAP_THRESHOLD, 1 << 20);
  Options opt = parse_flags(argc, argv);
  auto curve = load_curve_keys(opt);
  if (!opt.foreground) daemonize();
  const int sigfd = block_signals();
  Daemon daemon(std::move(opt), std::move(curve), sigfd);
  daemon.open_state();
  daemon.bind_socket();
  daemon.start_metrics();
  daemon.subscribe_kv_events();
  daemon.announce_ready();
  daemon.serve_loop();
  return daemon.drain_and_stop();
}

}  // namespace

int main(int argc, char** argv) {
  // The edge: nothing below throws on purpose (errors are values); anything unexpected ends here as
  // one line and a non-zero exit.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    const char* prefix = "turnout-sidecar: internal error: ";
    const int fd = g_ready_fd >= 0 ? g_ready_fd : 2;
    (void)!::write(fd, prefix, std::strlen(prefix));
    (void)!::write(fd, e.what(), std::strlen(e.what()));
    (void)!::write(fd, "\n", 1);
  } catch (...) {
    const char* line = "turnout-sidecar: internal error\n";
    (void)!::write(g_ready_fd >= 0 ? g_ready_fd : 2, line, std::strlen(line));
  }
  return 1;
}
