#pragma once
// The sidecar's /metrics: Prometheus text exposition (version 0.0.4) of the ledger, generated from its
// field list and its families (turnout/ledger.hpp), plus the sidecar's own gauges, breakers and in-flight counts.

#include <cstdint>
#include <string>
#include <vector>

#include "sidecar/trace_recorder.hpp"
#include "turnout/ledger.hpp"
#include "turnout/protocol.hpp"
#include "turnout/router.hpp"

namespace turnout::sidecar {

/// The figures of the sidecar itself that /metrics shows beside a Router's.
struct SidecarGauges {
  std::uint64_t generation = 0;
  double uptime_s = 0;
  std::string config_version;  ///< hex, as the stats reply gives it
  protocol::ReloadStatus last_reload;
  bool snapshot_ok = true;           ///< the last state snapshot was written (or none was due)
  std::uint64_t unjournaled = 0;     ///< ring records applied that the journal could not take
  std::uint64_t unsent_replies = 0;  ///< replies dropped: the peer's queue was full or the peer gone
  TraceRecorder::Stats trace;        ///< --record's lines, dropped events and write errors (0 when off)
};

/// The whole /metrics page for `router`'s table: sidecar gauges, every exported ledger family per
/// scenario x target, breaker phases and in-flight counts per target replica.
[[nodiscard]] std::string metrics_text(const Router& router, const SidecarGauges& sidecar, TimeMs now_ms);

}  // namespace turnout::sidecar
