// zmq_echo: the C++ baseline of bench/sidecar_bench.py. A ZeroMQ ROUTER with the sidecar's socket
// options and envelope handling that does no work: each request's envelope goes back with the
// payload itself, or with a fixed payload of REPLY_BYTES (the sidecar's reply size) when given.
//
//   zmq_echo ENDPOINT [REPLY_BYTES]     prints "ready" once bound; runs until killed

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fputs("usage: zmq_echo ENDPOINT [REPLY_BYTES]\n", stderr);
    return 2;
  }
  const bool fixed = argc == 3;
  const std::string reply(fixed ? std::strtoul(argv[2], nullptr, 10) : 0, 'x');
  zmq::context_t ctx(1);
  zmq::socket_t sock(ctx, zmq::socket_type::router);
  try {
    // The sidecar's options (cpp/sidecar/main.cpp), so only the work differs.
    sock.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(8U << 20));
    sock.set(zmq::sockopt::linger, 1000);
    sock.set(zmq::sockopt::rcvhwm, 10000);
    sock.set(zmq::sockopt::sndhwm, 10000);
    sock.bind(argv[1]);
  } catch (const zmq::error_t& e) {
    std::fprintf(stderr, "zmq_echo: cannot bind %s: %s\n", argv[1], e.what());
    return 1;
  }
  std::puts("ready");
  std::fflush(stdout);
  std::vector<zmq::message_t> frames;
  for (;;) {
    frames.clear();
    try {
      if (!zmq::recv_multipart(sock, std::back_inserter(frames))) continue;
      if (frames.size() < 2) continue;
      // [identity, (empty delimiter), payload]: the envelope goes back as the sidecar sends it.
      for (std::size_t i = 0; i + 1 < frames.size(); ++i) {
        sock.send(std::move(frames[i]), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      }
      if (fixed) {
        sock.send(zmq::buffer(reply), zmq::send_flags::dontwait);
      } else {
        sock.send(std::move(frames.back()), zmq::send_flags::dontwait);
      }
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return 0;
      std::fprintf(stderr, "zmq_echo: %s\n", e.what());
    }
  }
}
