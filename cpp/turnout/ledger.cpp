#include "turnout/ledger.hpp"

#include <algorithm>

#include "turnout/config.hpp"

namespace turnout {

namespace {

// visit_fields() names every member of Counters: a member added without its line in the list stops
// this binding from compiling (and the count below tells the list's length apart from the struct's).
[[maybe_unused]] void every_member_is_listed(Counters& c) {
  [[maybe_unused]] auto& [requests, spillovers, outcomes, fallbacks, by_status, unpriced, accepted, rejected, tokens,
                          cost, accepted_cost, ttft, latency, ttft_slo_checked, ttft_within_slo, latency_slo_checked,
                          latency_within_slo] = c;
  static_assert(kCounterFields.size() == 17, "a member of Counters is missing from visit_fields()");
}
// The same for the parts a field's operations walk through.
[[maybe_unused]] void every_histogram_part_is_walked(Histogram& h) {
  [[maybe_unused]] auto& [buckets, count, sum_ms] = h;
}

/// Applies `op(a, b)` to each number of two values of one field kind (the leaves of a ledger row).
template <class Op, class A, class B>
void zip(Op& op, A& a, B& b) {
  using T = std::remove_const_t<A>;
  if constexpr (std::is_same_v<T, Usage>) {
    for (const TokenKind& k : kTokenKinds) op(a.*k.tokens, b.*k.tokens);
  } else if constexpr (std::is_same_v<T, Histogram>) {
    zip(op, a.buckets, b.buckets);
    op(a.count, b.count);
    op(a.sum_ms, b.sum_ms);
  } else if constexpr (std::is_same_v<T, std::uint64_t> || std::is_same_v<T, MoneyTotal>) {
    op(a, b);
  } else {
    for (std::size_t i = 0; i < a.size(); ++i) op(a[i], b[i]);  // by_status, buckets
  }
}

template <class Op, class A, class B>
void zip_rows(Op op, A& a, B& b) {
  visit_fields([&op](const CounterField&, auto& x, auto& y) { zip(op, x, y); }, a, b);
}

}  // namespace

const char* to_string(FieldKind kind) noexcept {
  switch (kind) {
    case FieldKind::count: return "count";
    case FieldKind::by_status: return "by_status";
    case FieldKind::tokens: return "tokens";
    case FieldKind::money: return "money";
    case FieldKind::histogram: return "histogram";
  }
  return "unknown";
}

const char* to_string(DerivedKind kind) noexcept {
  switch (kind) {
    case DerivedKind::share: return "share";
    case DerivedKind::gate: return "gate";
  }
  return "unknown";
}

Objectives objectives(const Scenario& s) noexcept {
  return {.ttft_p95_ms = s.ttft_p95_ms, .latency_p95_ms = s.latency_p95_ms, .min_accept_rate = s.min_accept_rate};
}

void observe_times(Counters& row, const Objectives& o, std::int64_t ttft_ms, std::int64_t latency_ms) noexcept {
  if (ttft_ms >= 0) {
    row.ttft.observe(ttft_ms);
    if (o.ttft_p95_ms > 0) {
      ++row.ttft_slo_checked;
      if (ttft_ms <= o.ttft_p95_ms) ++row.ttft_within_slo;
    }
  }
  if (latency_ms >= 0) {
    row.latency.observe(latency_ms);
    if (o.latency_p95_ms > 0) {
      ++row.latency_slo_checked;
      if (latency_ms <= o.latency_p95_ms) ++row.latency_within_slo;
    }
  }
}

namespace {

std::optional<double> share(std::uint64_t part, std::uint64_t whole) noexcept {
  if (whole == 0) return std::nullopt;
  return static_cast<double>(part) / static_cast<double>(whole);
}

}  // namespace

Derived derive(const Counters& row, const Objectives& o) noexcept {
  Derived d;
  if (o.ttft_p95_ms > 0) d.ttft_slo_attainment = share(row.ttft_within_slo, row.ttft_slo_checked);
  if (o.latency_p95_ms > 0) d.latency_slo_attainment = share(row.latency_within_slo, row.latency_slo_checked);
  d.accept_rate = share(row.accepted, row.accepted + row.rejected);
  if (o.min_accept_rate > 0 && d.accept_rate) d.quality_gate_passed = *d.accept_rate >= o.min_accept_rate;
  return d;
}

void Histogram::observe(std::int64_t ms) noexcept {
  const auto* const it = std::lower_bound(kLatencyBoundsMs.begin(), kLatencyBoundsMs.end(), ms);
  ++buckets[static_cast<std::size_t>(it - kLatencyBoundsMs.begin())];
  ++count;
  sum_ms += ms;
}

bool operator==(const Counters& a, const Counters& b) noexcept {
  bool same = true;
  zip_rows([&same](const auto& x, const auto& y) { same = same && x == y; }, a, b);
  return same;
}

void add(Counters& dst, const Counters& src) noexcept {
  zip_rows([](auto& d, const auto& s) { d += s; }, dst, src);
}

void subtract(Counters& dst, const Counters& src) noexcept {
  zip_rows([](auto& d, const auto& s) { d -= s; }, dst, src);
}

Counters delta(const Counters& after, const Counters& before) noexcept {
  Counters out = after;
  subtract(out, before);
  return out;
}

std::uint64_t ledger_fingerprint() {
  std::uint64_t h = 14695981039346656037ULL;  // FNV-1a 64
  const auto byte = [&h](unsigned char c) {
    h ^= c;
    h *= 1099511628211ULL;
  };
  const auto text = [&byte](std::string_view s) {
    for (const char c : s) byte(static_cast<unsigned char>(c));
    byte(0xFFU);  // a separator no name contains
  };
  const auto number = [&byte](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) byte(static_cast<unsigned char>(v >> (8 * i)));
  };
  const Counters row{};
  visit_columns(row, [&](const CounterField& field, std::string_view column, const auto&) {
    text(field.name);
    text(to_string(field.kind));
    text(column);
  });
  for (const auto bound : kLatencyBoundsMs) number(static_cast<std::uint64_t>(bound));
  number(sizeof(Counters));
  return h;
}

std::vector<MetricFamily> metric_families(const CounterField& field) {
  if (!field.exported) return {};
  const std::string stem = "turnout_" + std::string(field.metric_stem());
  const std::string help(field.help);
  switch (field.kind) {
    case FieldKind::count: return {{stem + "_total", "counter", help + ".", MetricValue::exact}};
    case FieldKind::by_status: return {{stem + "_total", "counter", help + " by status.", MetricValue::exact}};
    case FieldKind::tokens: return {{stem + "_total", "counter", help + " by kind.", MetricValue::exact}};
    case FieldKind::money:
      return {{stem + "_usd", "gauge", help + " in USD (float view of the exact counter).", MetricValue::usd_float},
              {stem + "_picodollars_total", "counter", help + " in picodollars (exact).", MetricValue::exact}};
    case FieldKind::histogram: return {{stem + "_ms", "histogram", help + " in milliseconds.", MetricValue::histogram}};
  }
  return {};
}

}  // namespace turnout
