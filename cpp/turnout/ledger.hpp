#pragma once
// The ledger: what the Router counts per scenario x target (Counters), and the one list of its fields
// (visit_fields) that every edge iterates: the Router's and the sidecar's row arithmetic, the stats reply,
// the shared-memory layout fingerprint, /metrics, and the Python rows and DataFrames. Adding a counter
// is a member in Counters and its line in visit_fields(); see HACKING.md, "Adding a counter".

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "turnout/decision.hpp"
#include "turnout/money.hpp"
#include "turnout/usage.hpp"

namespace turnout {

/// Latency histogram with fixed millisecond bounds (the last bucket is +Inf).
inline constexpr std::array<std::int64_t, 12> kLatencyBoundsMs = {10,   25,   50,   100,   250,   500,
                                                                  1000, 2500, 5000, 10000, 30000, 60000};
struct Histogram {
  std::array<std::uint64_t, kLatencyBoundsMs.size() + 1> buckets{};
  std::uint64_t count = 0;
  std::int64_t sum_ms = 0;
  void observe(std::int64_t ms) noexcept;
  friend bool operator==(const Histogram&, const Histogram&) = default;
};

/// Outcomes per Status, indexed by the enum.
using StatusCounts = std::array<std::uint64_t, kStatusCount>;

/// Ledger counters of one scenario x target. What each member means is said once, in visit_fields().
struct Counters {
  std::uint64_t requests = 0;
  std::uint64_t spillovers = 0;
  std::uint64_t outcomes = 0;
  std::uint64_t fallbacks = 0;
  StatusCounts by_status{};
  std::uint64_t unpriced = 0;
  std::uint64_t accepted = 0;
  std::uint64_t rejected = 0;
  Usage tokens;  ///< token sums by kind (reported_cost unused)
  MoneyTotal cost;
  MoneyTotal accepted_cost;
  Histogram ttft;
  Histogram latency;
  std::uint64_t ttft_slo_checked = 0;
  std::uint64_t ttft_within_slo = 0;
  std::uint64_t latency_slo_checked = 0;
  std::uint64_t latency_within_slo = 0;

  /// Every field equal (through visit_fields(), like every other operation on a row).
  friend bool operator==(const Counters& a, const Counters& b) noexcept;
};

struct Scenario;

/// What a scenario asks of its outcomes: its `slo` bounds and its `quality_gate` (0: not set). A row's
/// SLO counts are checked against it and its derived columns judge by it. Plain numbers, because a
/// shared-memory slot carries it beside the row (a reader needs no routing table).
struct Objectives {
  std::int64_t ttft_p95_ms = 0;
  std::int64_t latency_p95_ms = 0;
  double min_accept_rate = 0.0;  ///< 0 is no gate (an accept rate is never below 0)
  friend bool operator==(const Objectives&, const Objectives&) = default;
};

/// The objectives of `s`, as its table states them.
[[nodiscard]] Objectives objectives(const Scenario& s) noexcept;

/// Counts an outcome's reported times (-1: not reported) in its row, once per outcome: each reported
/// time in its histogram and, when the scenario sets that bound, checked against it (within: at most
/// the bound). So `<x>_within_slo / <x>_slo_checked` is the share of the outcomes the histogram saw
/// under the bound that met it.
void observe_times(Counters& row, const Objectives& o, std::int64_t ttft_ms, std::int64_t latency_ms) noexcept;

/// What a field holds, and so how each edge shows it:
/// count      std::uint64_t  column `name`; metric turnout_<metric>_total
/// by_status  StatusCounts   a column per status (`ok`, `error`...); turnout_<metric>_total{status}
/// tokens     Usage          a column per token kind (`cache_read_tokens`...); turnout_<metric>_total{kind}
/// money      MoneyTotal     column `<name>_usd` (exact); turnout_<metric>_usd (float) and
///                           turnout_<metric>_picodollars_total (exact)
/// histogram  Histogram      columns `<name>_count`, `<name>_sum_ms`, `<name>_buckets`; turnout_<metric>_ms
enum class FieldKind : std::uint8_t { count, by_status, tokens, money, histogram };

[[nodiscard]] const char* to_string(FieldKind kind) noexcept;

/// One field of the ledger, as visit_fields() names it.
struct CounterField {
  std::string_view name;  ///< the column stem and the wire name
  FieldKind kind = FieldKind::count;
  std::string_view help;    ///< what it counts, a noun phrase (the /metrics HELP adds the unit)
  std::string_view metric;  ///< the /metrics stem when it is not `name`
  bool exported = true;     ///< false: not a /metrics family of its own (help says where it shows)

  [[nodiscard]] constexpr std::string_view metric_stem() const noexcept { return metric.empty() ? name : metric; }
};

namespace detail {

template <FieldKind K>
struct FieldValue;
template <>
struct FieldValue<FieldKind::count> {
  using type = std::uint64_t;
};
template <>
struct FieldValue<FieldKind::by_status> {
  using type = StatusCounts;
};
template <>
struct FieldValue<FieldKind::tokens> {
  using type = Usage;
};
template <>
struct FieldValue<FieldKind::money> {
  using type = MoneyTotal;
};
template <>
struct FieldValue<FieldKind::histogram> {
  using type = Histogram;
};

/// One line of the list: checks that the member has the type its kind says, then visits it.
template <FieldKind K, class V, class... M>
constexpr void field(V& v, CounterField f, M&... members) {
  static_assert((std::is_same_v<std::remove_const_t<M>, typename FieldValue<K>::type> && ...),
                "a counter's member type must match its FieldKind");
  f.kind = K;
  v(static_cast<const CounterField&>(f), members...);
}

}  // namespace detail

/// THE field list: calls `v(field, rows.member...)` for every field of the ledger, in one order, on
/// any number of rows at once (const or not), so one visitor can add, compare or print them.
template <class V, class... Rows>
constexpr void visit_fields(V&& v, Rows&... rows) {
  static_assert(sizeof...(Rows) > 0 && (std::is_same_v<std::remove_const_t<Rows>, Counters> && ...),
                "visit_fields() walks ledger rows (Counters)");
  using enum FieldKind;
  using detail::field;
  field<count>(v, {.name = "requests", .help = "Decisions that chose the target"}, rows.requests...);
  field<count>(
      v, {.name = "spillovers", .help = "Decisions that spilled over to the target (the self-hosted pool was full)"},
      rows.spillovers...);
  field<count>(v,
               {.name = "outcomes",
                .help = "Outcomes reported for the target (on /metrics: turnout_outcomes_total by status)",
                .exported = false},
               rows.outcomes...);
  field<count>(v, {.name = "fallbacks", .help = "Outcomes on the target as a fallback"}, rows.fallbacks...);
  field<by_status>(v, {.name = "by_status", .help = "Reported outcomes", .metric = "outcomes"}, rows.by_status...);
  field<count>(v, {.name = "unpriced", .help = "ok outcomes reported without usage (cost unknown, not zero)"},
               rows.unpriced...);
  field<count>(v, {.name = "accepted", .help = "Outcomes accepted by their quality verdict"}, rows.accepted...);
  field<count>(v, {.name = "rejected", .help = "Outcomes rejected by their quality verdict"}, rows.rejected...);
  field<tokens>(v, {.name = "tokens", .help = "Tokens of priced outcomes"}, rows.tokens...);
  field<money>(v, {.name = "cost", .help = "Cost of priced outcomes"}, rows.cost...);
  field<money>(v, {.name = "accepted_cost", .help = "Cost of the outcomes later accepted"}, rows.accepted_cost...);
  field<histogram>(v, {.name = "ttft", .help = "Time to first token"}, rows.ttft...);
  field<histogram>(v, {.name = "latency", .help = "Outcome latency"}, rows.latency...);
  field<count>(v,
               {.name = "ttft_slo_checked",
                .help = "Outcomes whose reported TTFT was checked against the scenario's slo.ttft_p95_ms"},
               rows.ttft_slo_checked...);
  field<count>(
      v, {.name = "ttft_within_slo", .help = "Outcomes whose reported TTFT was within the scenario's slo.ttft_p95_ms"},
      rows.ttft_within_slo...);
  field<count>(v,
               {.name = "latency_slo_checked",
                .help = "Outcomes whose reported latency was checked against the scenario's slo.latency_p95_ms"},
               rows.latency_slo_checked...);
  field<count>(v,
               {.name = "latency_within_slo",
                .help = "Outcomes whose reported latency was within the scenario's slo.latency_p95_ms"},
               rows.latency_within_slo...);
}

/// The fields in list order (their names, kinds and help; no values).
inline constexpr auto kCounterFields = [] {
  constexpr std::size_t n = [] {
    std::size_t count = 0;
    const Counters row{};
    visit_fields([&count](const CounterField&, const auto&) { ++count; }, row);
    return count;
  }();
  std::array<CounterField, n> out{};
  std::size_t i = 0;
  const Counters row{};
  visit_fields([&](const CounterField& f, const auto&) { out[i++] = f; }, row);
  return out;
}();

/// dst += src, field by field.
void add(Counters& dst, const Counters& src) noexcept;
/// dst -= src, field by field (unsigned counts wrap, so dst += after - before always lands right).
void subtract(Counters& dst, const Counters& src) noexcept;
/// What a row gained between two snapshots: after - before.
[[nodiscard]] Counters delta(const Counters& after, const Counters& before) noexcept;

/// Calls `f(field, column, value)` for each column of a ledger row, in order: what the stats reply and
/// the Python row dicts hold. `value` is a std::uint64_t, a std::int64_t, a MoneyTotal or an array of
/// bucket counts; column names follow FieldKind.
template <class F>
void visit_columns(const Counters& row, F&& f) {
  std::string column;
  const auto named = [&column](std::string_view stem, std::string_view suffix) -> std::string_view {
    column.assign(stem);
    column += suffix;
    return column;
  };
  visit_fields(
      [&](const CounterField& field, const auto& value) {
        using T = std::remove_cvref_t<decltype(value)>;
        if constexpr (std::is_same_v<T, std::uint64_t>) {
          f(field, field.name, value);
        } else if constexpr (std::is_same_v<T, StatusCounts>) {
          for (std::size_t i = 0; i < kStatusCount; ++i) {
            f(field, std::string_view(to_string(static_cast<Status>(i))), value[i]);
          }
        } else if constexpr (std::is_same_v<T, Usage>) {
          for (const TokenKind& k : kTokenKinds) f(field, k.column, value.*k.tokens);
        } else if constexpr (std::is_same_v<T, MoneyTotal>) {
          f(field, named(field.name, "_usd"), value);
        } else {
          static_assert(std::is_same_v<T, Histogram>);
          f(field, named(field.name, "_count"), value.count);
          f(field, named(field.name, "_sum_ms"), value.sum_ms);
          f(field, named(field.name, "_buckets"), value.buckets);
        }
      },
      row);
}

/// How a derived column's value reads: `share` a fraction in [0, 1], `gate` "pass" or "fail".
enum class DerivedKind : std::uint8_t { share, gate };

[[nodiscard]] const char* to_string(DerivedKind kind) noexcept;

/// A column a ledger row derives from its counts and its scenario's Objectives (none: the value is
/// undefined, as a share of nothing or a gate that is not set).
struct DerivedColumn {
  std::string_view name;
  DerivedKind kind = DerivedKind::share;
  std::string_view help;
};

/// THE derived columns, in row order (after the counters' own columns).
inline constexpr std::array<DerivedColumn, 4> kDerivedColumns = {{
    {"ttft_slo_attainment", DerivedKind::share,
     "ttft_within_slo / ttft_slo_checked; none without slo.ttft_p95_ms or before an outcome reports its TTFT"},
    {"latency_slo_attainment", DerivedKind::share,
     "latency_within_slo / latency_slo_checked; none without slo.latency_p95_ms or before an outcome reports its "
     "latency"},
    {"accept_rate", DerivedKind::share, "accepted / (accepted + rejected); none before the first verdict"},
    {"quality_gate", DerivedKind::gate,
     "pass when accept_rate >= quality_gate.min_accept_rate, else fail; none without a gate or a verdict"},
}};

/// The derived values of one row, in kDerivedColumns' order.
struct Derived {
  std::optional<double> ttft_slo_attainment;
  std::optional<double> latency_slo_attainment;
  std::optional<double> accept_rate;
  std::optional<bool> quality_gate_passed;
};

/// What `row` says against the objectives `o` of its scenario.
[[nodiscard]] Derived derive(const Counters& row, const Objectives& o) noexcept;

/// Calls `f(column, value)` for each derived column of a row, in order: `value` is a
/// std::optional<double> (share) or a std::optional<std::string_view> (gate: "pass" or "fail").
template <class F>
void visit_derived(const Counters& row, const Objectives& o, F&& f) {
  const Derived d = derive(row, o);
  f(kDerivedColumns[0], d.ttft_slo_attainment);
  f(kDerivedColumns[1], d.latency_slo_attainment);
  f(kDerivedColumns[2], d.accept_rate);
  f(kDerivedColumns[3],
    d.quality_gate_passed ? std::optional<std::string_view>(*d.quality_gate_passed ? "pass" : "fail") : std::nullopt);
}

/// A hash of the field list (names, kinds, columns, histogram bounds): the shared-memory layout
/// fingerprint includes it, so a segment written with other counters is never read as ours.
[[nodiscard]] std::uint64_t ledger_fingerprint();

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

}  // namespace turnout
