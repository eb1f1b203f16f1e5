// KV-event subscription for an in-process Router: the io layer's subscriber feeding the Router's pool
// directories from the replicas' `kv_events` publishers. Registered by module.cpp.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "turnout/io/kv_subscriber.hpp"
#include "turnout/io/router_sink.hpp"
#include "turnout/router.hpp"

namespace py = pybind11;
using namespace turnout;

namespace {

/// A running subscription; stops when closed, collected, or its `with` block ends.
class KvSubscription {
 public:
  // The Router is kept alive by the Python object (keep_alive); the sink borrows it.
  KvSubscription(Router& router, std::vector<io::KvPublisher> publishers, std::vector<io::ReplicaName> names,
                 io::KvSubscriberOptions options)
      : names_(names),
        endpoints_(publishers),
        sink_([&router] { return std::shared_ptr<Router>(std::shared_ptr<Router>{}, &router); }, std::move(names)),
        subscriber_(std::move(publishers), sink_, std::move(options)) {}
  void start() {
    auto started = subscriber_.start();
    if (!started) bindings::raise(started.error());
  }
  void stop() { subscriber_.stop(); }
  [[nodiscard]] py::list stats() const {
    py::list out;
    const auto all = subscriber_.stats();
    for (std::size_t i = 0; i < all.size(); ++i) {
      const auto& s = all[i];
      py::dict d;
      d["target"] = names_[i].target;
      d["endpoint"] = names_[i].endpoint;
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
  std::vector<io::ReplicaName> names_;
  std::vector<io::KvPublisher> endpoints_;
  io::RouterKvSink sink_;
  io::KvEventSubscriber subscriber_;
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
        auto [publishers, names] = io::kv_publishers(*router.config());
        if (publishers.empty()) {
          bindings::raise(
              {ErrorCode::invalid_argument, "no replica in this routing table names a kv_events publisher"});
        }
        io::KvSubscriberOptions options;
        options.topic = topic;
        options.replay_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(replay_timeout_s * 1000));
        auto sub = std::make_unique<KvSubscription>(router, std::move(publishers), std::move(names), options);
        sub->start();
        return sub;
      },
      py::arg("router"), py::arg("topic") = "", py::arg("replay_timeout_s") = 0.5, py::keep_alive<0, 1>());
}
