#pragma once
// The sidecar's /metrics: Prometheus text exposition (version 0.0.4) of the ledger, generated from its
// field list (turnout/ledger.hpp), plus the sidecar's own gauges, breakers and in-flight counts.

#include <cstdint>
#include <string>
#include <vector>

#include "turnout/ledger.hpp"
#include "turnout/router.hpp"

namespace turnout::sidecar {

/// What a metric family's samples show of its field.
enum class MetricValue : std::uint8_t {
  exact,      ///< the counts (and, for money, the exact picodollars)
  usd_float,  ///< money as a float of USD: for plotting, not for sums
  histogram,  ///< cumulative buckets, _sum and _count
};

/// One family of /metrics that a ledger field is exported as.
struct MetricFamily {
  std::string name;  ///< as on the # TYPE line: turnout_requests_total, turnout_latency_ms
  const char* type;  ///< counter, gauge or histogram
  std::string help;
  MetricValue value;
};

/// The families a ledger field is exported as, by its kind (none when the field is not exported):
/// count turnout_<m>_total; by_status and tokens the same with a status / kind label; money
/// turnout_<m>_usd and turnout_<m>_picodollars_total; histogram turnout_<m>_ms.
[[nodiscard]] std::vector<MetricFamily> metric_families(const CounterField& field);

/// The figures of the sidecar itself that /metrics shows beside a Router's.
struct SidecarGauges {
  std::uint64_t generation = 0;
  double uptime_s = 0;
  std::string config_version;  ///< hex, as the stats reply gives it
};

/// The whole /metrics page for `router`'s table: sidecar gauges, every exported ledger family per
/// scenario x target, breaker phases and in-flight counts per target replica.
[[nodiscard]] std::string metrics_text(const Router& router, const SidecarGauges& sidecar, TimeMs now_ms);

}  // namespace turnout::sidecar
