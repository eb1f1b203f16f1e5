// switchyard-sidecar: the per-node routing daemon. Serves the Router over a ZeroMQ ROUTER socket
// (msgpack requests), mirrors the ledger into a shared-memory segment, and exposes /metrics and
// /healthz on a loopback HTTP port. See DESIGN.md section 3.

#include <fcntl.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>
#include "switchyard/io/router_sink.hpp"

#include "sidecar/server.hpp"

namespace {

using switchyard::sidecar::Server;

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
    std::fprintf(stderr, "%s switchyard-sidecar[%d]: %s\n", ts, static_cast<int>(::getpid()), msg);
  } else {
    ::syslog(priority, "%s", msg);
  }
}

/// A startup error: one line on stderr (or through the readiness pipe), exit 1.
[[noreturn]] void die(const std::string& message) {
  const std::string line = "switchyard-sidecar: " + message + "\n";
  if (g_ready_fd >= 0) {
    (void)!::write(g_ready_fd, line.data(), line.size());
  } else {
    (void)!::write(2, line.data(), line.size());
  }
  std::_Exit(1);
}

const char* kUsage =
    "usage: switchyard-sidecar CONFIG [--endpoint ipc://PATH|tcp://127.0.0.1:PORT] [--shm NAME]\n"
    "                          [--metrics 127.0.0.1:PORT] [--foreground]\n"
    "\n"
    "  CONFIG              the YAML routing table (reloaded on SIGHUP and by the reload op)\n"
    "  --endpoint E        ZeroMQ endpoint to bind (default ipc://$XDG_RUNTIME_DIR/switchyard/sidecar.sock,\n"
    "                      else ipc:///tmp/switchyard-$UID/sidecar.sock; socket file mode 0600)\n"
    "  --shm NAME          shared-memory segment for the counters (default switchyard-$UID)\n"
    "  --metrics HOST:PORT serve /metrics and /healthz over HTTP (loopback only; default off)\n"
    "  --foreground        stay in the foreground and log to stderr (default: daemonize, log to syslog)\n";

struct Options {
  std::string config;
  std::string endpoint;
  std::string shm;
  std::string metrics;
  bool foreground = false;
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
      std::puts("switchyard-sidecar " SWITCHYARD_VERSION);
      std::exit(0);
    } else if (a == "--foreground" || a == "-f") {
      o.foreground = true;
    } else if (a == "--endpoint" || a.rfind("--endpoint=", 0) == 0) {
      o.endpoint = value("--endpoint");
    } else if (a == "--shm" || a.rfind("--shm=", 0) == 0) {
      o.shm = value("--shm");
    } else if (a == "--metrics" || a.rfind("--metrics=", 0) == 0) {
      o.metrics = value("--metrics");
    } else if (!a.empty() && a[0] == '-') {
      die("unknown option " + a + " (see --help)");
    } else if (o.config.empty()) {
      o.config = a;
    } else {
      die("one CONFIG only, got '" + o.config + "' and '" + a + "'");
    }
  }
  if (o.config.empty()) die("missing CONFIG (see --help)");
  return o;
}

bool loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

std::string default_endpoint() {
  std::string dir;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    dir = std::string(xdg) + "/switchyard";
  } else {
    dir = "/tmp/switchyard-" + std::to_string(::getuid());
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    die("cannot create " + dir + ": " + std::strerror(errno));
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::getuid()) {
    die(dir + " is not a directory owned by this user; pass --endpoint");
  }
  return "ipc://" + dir + "/sidecar.sock";
}

/// Refuses what is not ipc:// or loopback tcp:// (CURVE keys for remote peers are not implemented).
void check_endpoint(const std::string& e) {
  if (e.rfind("ipc://", 0) == 0) {
    if (e.size() <= 6) die("--endpoint ipc:// needs a path");
    return;
  }
  if (e.rfind("tcp://", 0) == 0) {
    const std::string hostport = e.substr(6);
    const auto colon = hostport.rfind(':');
    if (colon == std::string::npos) die("--endpoint " + e + " needs a port (tcp://127.0.0.1:PORT)");
    const std::string host = hostport.substr(0, colon);
    if (!loopback_host(host)) {
      die("refusing to bind non-loopback address " + e +
          ": remote peers need ZeroMQ CURVE authentication, which this sidecar does not implement yet; "
          "bind ipc:// or tcp://127.0.0.1:PORT");
    }
    return;
  }
  die("--endpoint must be ipc://PATH or tcp://127.0.0.1:PORT, got '" + e + "'");
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
      std::fprintf(stderr, "switchyard-sidecar: started (pid %s)\n", got.substr(3).c_str());
      std::_Exit(0);
    }
    if (got.empty()) got = "switchyard-sidecar: exited during startup\n";
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
  ::openlog("switchyard-sidecar", LOG_PID, LOG_DAEMON);
}

int run(int argc, char** argv) {
  Options opt = parse(argc, argv);
  g_foreground = opt.foreground;
  ::umask(0077);  // every file we create (socket, segment, lock) is 0600
  if (opt.endpoint.empty()) opt.endpoint = default_endpoint();
  check_endpoint(opt.endpoint);
  if (opt.shm.empty()) opt.shm = "switchyard-" + std::to_string(::getuid());
  std::string metrics_host;
  int metrics_port = 0;
  if (!opt.metrics.empty()) {
    const auto colon = opt.metrics.rfind(':');
    if (colon == std::string::npos) die("--metrics must be HOST:PORT, e.g. 127.0.0.1:9464");
    metrics_host = opt.metrics.substr(0, colon);
    try {
      metrics_port = std::stoi(opt.metrics.substr(colon + 1));
    } catch (...) {
      die("--metrics port must be a number, got '" + opt.metrics.substr(colon + 1) + "'");
    }
    if (metrics_port <= 0 || metrics_port > 65535) die("--metrics port out of range");
    if (!loopback_host(metrics_host)) {
      die("refusing to serve /metrics on non-loopback address " + metrics_host + " (use 127.0.0.1)");
    }
  }
  if (!opt.foreground) daemonize();

  // Signals arrive on a signalfd polled with the socket; block them before any thread starts.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  const int sigfd = ::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0) die(std::string("signalfd: ") + std::strerror(errno));

  auto started = Server::start(opt.config, opt.shm);
  if (!started) die(started.error().message);
  std::unique_ptr<Server> server = std::move(started.value().server);

  // An ipc endpoint is also guarded by a lock file: ZeroMQ would silently take over a live socket.
  int endpoint_lock = -1;
  std::string ipc_path;
  if (opt.endpoint.rfind("ipc://", 0) == 0) {
    ipc_path = opt.endpoint.substr(6);
    const std::string lock = ipc_path + ".lock";
    endpoint_lock = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (endpoint_lock < 0) die("cannot open " + lock + ": " + std::strerror(errno));
    if (::flock(endpoint_lock, LOCK_EX | LOCK_NB) != 0) {
      die("endpoint " + opt.endpoint + " is in use by another live sidecar");
    }
  }

  zmq::context_t ctx(1);
  zmq::socket_t sock(ctx, zmq::socket_type::router);
  try {
    sock.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(switchyard::sidecar::kMaxMessageBytes));
    sock.set(zmq::sockopt::linger, 1000);
    sock.set(zmq::sockopt::rcvhwm, 10000);
    sock.set(zmq::sockopt::sndhwm, 10000);
    sock.bind(opt.endpoint);
  } catch (const zmq::error_t& e) {
    die("cannot bind " + opt.endpoint + ": " + e.what());
  }
  if (!ipc_path.empty()) ::chmod(ipc_path.c_str(), 0600);

  std::unique_ptr<httplib::Server> http;
  std::thread http_thread;
  if (metrics_port != 0) {
    http = std::make_unique<httplib::Server>();
    Server* srv = server.get();
    http->Get("/metrics", [srv](const httplib::Request&, httplib::Response& res) {
      res.set_content(srv->metrics(now_ms()), "text/plain; version=0.0.4; charset=utf-8");
    });
    http->Get("/healthz",
              [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
    if (!http->bind_to_port(metrics_host, metrics_port)) {
      die("cannot listen on " + opt.metrics + " for /metrics (address in use?)");
    }
    http_thread = std::thread([&http] { http->listen_after_bind(); });
  }

  // Precise mode: subscribe to the engines' KV events of the replicas that name a publisher. The
  // subscriptions follow the table loaded at start; the sink resolves replicas by name on the
  // current Router, so a reload that keeps them keeps working.
  namespace io = switchyard::io;
  std::unique_ptr<io::RouterKvSink> kv_sink;
  std::unique_ptr<io::KvEventSubscriber> kv_subscriber;
  if (auto [publishers, names] = io::kv_publishers(*server->router()->config()); !publishers.empty()) {
    Server* srv = server.get();
    kv_sink = std::make_unique<io::RouterKvSink>([srv] { return srv->router(); }, std::move(names));
    const auto count = publishers.size();
    kv_subscriber = std::make_unique<io::KvEventSubscriber>(std::move(publishers), *kv_sink);
    if (auto kv_started = kv_subscriber->start(); !kv_started) die("KV events: " + kv_started.error().message);
    log(LOG_INFO, "subscribed to KV events of %zu replicas", count);
  }

  log(LOG_INFO, "%s", started.value().note.c_str());
  log(LOG_INFO, "serving %s on %s, shm %s, generation %llu, config %s%s%s", opt.config.c_str(), opt.endpoint.c_str(),
      opt.shm.c_str(), static_cast<unsigned long long>(server->generation()), server->config_version().c_str(),
      metrics_port != 0 ? ", metrics http://" : "", metrics_port != 0 ? opt.metrics.c_str() : "");
  if (g_ready_fd >= 0) {
    const std::string ok = "ok " + std::to_string(::getpid());
    (void)!::write(g_ready_fd, ok.data(), ok.size());
    ::close(g_ready_fd);
    g_ready_fd = -1;
  }

  bool stopping = false;
  std::int64_t last_beat = 0;
  std::vector<zmq::message_t> frames;
  // One request: [identity, (empty delimiter from REQ peers), payload] -> same envelope + reply.
  auto serve_one = [&](bool wait) -> bool {
    frames.clear();
    try {
      const auto n = zmq::recv_multipart(sock, std::back_inserter(frames),
                                         wait ? zmq::recv_flags::none : zmq::recv_flags::dontwait);
      if (!n) return false;
      if (frames.size() < 2) return true;  // nothing to answer
      const auto& payload = frames.back();
      std::string reply = server->handle(std::string_view(payload.data<char>(), payload.size()), now_ms());
      if (reply.empty()) return true;
      for (std::size_t i = 0; i + 1 < frames.size(); ++i) {
        sock.send(std::move(frames[i]), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      }
      sock.send(zmq::buffer(reply), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      log(LOG_WARNING, "request dropped: %s", e.what());
    }
    return true;
  };

  while (!stopping) {
    zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, sigfd, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(100));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) log(LOG_ERR, "poll: %s", e.what());
    }
    if ((items[0].revents & ZMQ_POLLIN) != 0) {
      for (int i = 0; i < 1024 && serve_one(false); ++i) {
      }
    }
    if ((items[1].revents & ZMQ_POLLIN) != 0) {
      signalfd_siginfo si{};
      while (::read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        if (si.ssi_signo == SIGHUP) {
          if (auto r = server->reload(); r) {
            log(LOG_INFO, "SIGHUP: reloaded %s, config %s, generation %llu", opt.config.c_str(),
                server->config_version().c_str(), static_cast<unsigned long long>(server->generation()));
          } else {
            log(LOG_ERR, "SIGHUP: reload failed, still serving config %s: %s", server->config_version().c_str(),
                r.error().message.c_str());
          }
        } else {
          log(LOG_INFO, "%s: draining and stopping", strsignal(static_cast<int>(si.ssi_signo)));
          stopping = true;
        }
      }
    }
    const auto now = now_ms();
    if (now - last_beat >= 100) {
      server->heartbeat(now);
      last_beat = now;
    }
  }

  // Drain what already arrived, then stop accepting.
  int drained = 0;
  while (drained < 100'000 && serve_one(false)) ++drained;  // bounded: a flood cannot hold the exit
  try {
    sock.unbind(opt.endpoint);
  } catch (const zmq::error_t&) {
  }
  server->flush();
  if (http) {
    http->stop();
    http_thread.join();
  }
  sock.close();  // linger: queued replies still go out
  ctx.close();
  if (endpoint_lock >= 0) ::close(endpoint_lock);
  log(LOG_INFO, "stopped (%d requests drained)", drained);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The edge: nothing below throws on purpose (errors are values); anything unexpected ends here as
  // one line and a non-zero exit.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    const char* prefix = "switchyard-sidecar: internal error: ";
    const int fd = g_ready_fd >= 0 ? g_ready_fd : 2;
    (void)!::write(fd, prefix, std::strlen(prefix));
    (void)!::write(fd, e.what(), std::strlen(e.what()));
    (void)!::write(fd, "\n", 1);
  } catch (...) {
    const char* line = "switchyard-sidecar: internal error\n";
    (void)!::write(g_ready_fd >= 0 ? g_ready_fd : 2, line, std::strlen(line));
  }
  return 1;
}
