// KV-event subscription for an in-process Router: the io layer's subscriber feeding the Router's pool
// directories from the replicas' `kv_events` publishers. Registered by module.cpp.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/io/kv_subscriber.hpp"
#include "switchyard/router.hpp"

namespace py = pybind11;
using namespace switchyard;

namespace {

TimeMs wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Applies each publisher's batches to its (target, replica); runs on the subscriber's thread, so it
// touches only the Router (thread-safe) and never Python.
class RouterSink : public io::KvEventSink {
 public:
  RouterSink(Router& router, std::vector<std::pair<std::uint32_t, std::uint32_t>> replicas)
      : router_(router), replicas_(std::move(replicas)) {}
  void on_batch(std::size_t publisher, const KvEventBatch& batch) override {
    const auto [t, r] = replicas_[publisher];
    (void)router_.apply_kv_events(t, r, batch, wall_ms());
  }
  void on_reset(std::size_t publisher, const std::string& /*reason*/) override {
    const auto [t, r] = replicas_[publisher];
    (void)router_.reset_kv(t, r);
  }
  void on_rejected(std::size_t /*publisher*/, const std::string& /*reason*/) override {}  // counted by stats

 private:
  Router& router_;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> replicas_;
};

/// A running subscription; stops when closed, collected, or its `with` block ends.
class KvSubscription {
 public:
  KvSubscription(Router& router, std::vector<std::pair<std::uint32_t, std::uint32_t>> replicas,
                 std::vector<io::KvPublisher> publishers, io::KvSubscriberOptions options)
      : replicas_(replicas),
        endpoints_(publishers),
        sink_(router, std::move(replicas)),
        subscriber_(std::move(publishers), sink_, std::move(options)),
        config_(router.config()) {}
  void start() {
    auto started = subscriber_.start();
    if (!started) throw py::value_error(started.error().message);
  }
  void stop() { subscriber_.stop(); }
  [[nodiscard]] py::list stats() const {
    py::list out;
    const auto all = subscriber_.stats();
    for (std::size_t i = 0; i < all.size(); ++i) {
      const auto& s = all[i];
      py::dict d;
      d["target"] = config_->targets[replicas_[i].first].name;
      d["endpoint"] = config_->targets[replicas_[i].first].replicas[replicas_[i].second].endpoint;
      d["kv_events"] = endpoints_[i].endpoint;
      d["received"] = s.received;
      d["applied"] = s.applied;
      d["rejected"] = s.rejected;
      d["gaps"] = s.gaps;
      d["replayed"] = s.replayed;
      d["resets"] = s.resets;
      d["last_seq"] = s.last_seq ? py::object(py::int_(*s.last_seq)) : py::object(py::none());
      d["connected"] = s.connected;
      out.append(d);
    }
    return out;
  }

 private:
  std::vector<std::pair<std::uint32_t, std::uint32_t>> replicas_;
  std::vector<io::KvPublisher> endpoints_;
  RouterSink sink_;
  io::KvEventSubscriber subscriber_;
  ConfigPtr config_;
};

}  // namespace

void bind_kv(py::module_& m) {
  py::class_<KvSubscription>(m, "KvSubscription", "A running KV-event subscription of a Router's pools.")
      .def("stop", &KvSubscription::stop, py::call_guard<py::gil_scoped_release>(),
           "Stops the background thread (sequence numbers are kept).")
      .def("stats", &KvSubscription::stats, "Per publisher: received, applied, rejected, gaps, replays, resets.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](KvSubscription& s, const py::args&) {
        py::gil_scoped_release release;
        s.stop();
      });

  m.def(
      "_subscribe_kv_events",
      [](Router& router, const std::string& topic, double replay_timeout_s) {
        const Config& config = *router.config();
        std::vector<std::pair<std::uint32_t, std::uint32_t>> replicas;
        std::vector<io::KvPublisher> publishers;
        for (std::uint32_t t = 0; t < config.targets.size(); ++t) {
          const auto& reps = config.targets[t].replicas;
          for (std::uint32_t r = 0; r < reps.size(); ++r) {
            if (reps[r].kv_events.empty()) continue;
            replicas.emplace_back(t, r);
            publishers.push_back({reps[r].kv_events, reps[r].kv_replay});
          }
        }
        if (publishers.empty()) throw py::value_error("no replica in this routing table names a kv_events publisher");
        io::KvSubscriberOptions options;
        options.topic = topic;
        options.replay_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(replay_timeout_s * 1000));
        auto sub = std::make_unique<KvSubscription>(router, std::move(replicas), std::move(publishers), options);
        sub->start();
        return sub;
      },
      py::arg("router"), py::arg("topic") = "", py::arg("replay_timeout_s") = 0.5, py::keep_alive<0, 1>());
}
