"""The capacity plan: what a scenario costs per month on MaaS, on its own GPUs, or both.

The pool is sized by simulation (:func:`turnout.capacity.size_pool`: the smallest pool whose
simulated TTFT and latency p95 meet the scenario's SLO at peak), never by dividing a token rate by a
throughput. Its month is then *fully loaded*: the production pool and its reserve, the staging,
test/debug and canary pools, engineering, observability, evals and incidents, every GPU-hour paid
whether busy or not. Against it: MaaS-only and a hybrid (a pool for the base load, MaaS for the
spikes), each measured in the simulator; the break-even volume; and how the answer moves with
utilization and with the expected cache hit rate. docs/plan.md explains each figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pandas as pd

from turnout import _core, capacity
from turnout._errors import PlanError
from turnout.capacity import Demand, Measure, Sizing, Slo
from turnout.pricing import price_usage, usage_for
from turnout.replay import to_picodollar

HOURS_PER_MONTH = int(capacity.HOURS_PER_MONTH)
"""The month every monthly figure uses, 730 h (the routing table prorates ``cost.monthly`` with it
too), as an integer for exact money."""
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
DAY_LEVELS = 4
"""A diurnal day is measured at this many load levels: its 24 hours sorted by load and cut into
equal groups, each simulated at its group's mean rate and weighted by its hours."""
UTILIZATIONS = tuple(Decimal(p) / 100 for p in range(10, 101, 10))
CACHE_HIT_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OPTIONS = ("maas_only", "self_hosted_only", "hybrid")
"""The options a plan compares, in the order of :attr:`Plan.options`."""
_POOLS = ("staging", "test", "canary")
POOL_ITEMS = {
    "staging": "staging",
    "test": "test",
    "test_debug": "test",
    "debug": "test",
    "canary": "canary",
}
"""The ``cost.monthly`` items that price a pool beside production, and the pool each prices."""
_SIZED = ("production", "reserve")
"""The lines priced from the sized pool, never given in USD."""
_USD_ITEMS = ("engineering", "observability", "evals", "incidents")


def _usd(value: Decimal | int | str) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass(frozen=True)
class Overheads:
    """The fully loaded extras beyond the production pool, per month: a reserve of production
    replicas, the staging, test/debug and canary pools (in replicas, priced like production), and
    the monthly USD of engineering, observability, evals and incidents. ``given_usd`` holds the
    table's other monthly items as (name, USD); a pool named there (staging, test, canary) is
    priced as given instead of in replicas."""

    reserve: float = 0.2
    staging_replicas: int = 1
    test_replicas: int = 1
    canary_replicas: int = 1
    engineering_usd: Decimal = Decimal(0)
    observability_usd: Decimal = Decimal(0)
    evals_usd: Decimal = Decimal(0)
    incidents_usd: Decimal = Decimal(0)
    given_usd: tuple[tuple[str, Decimal], ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.reserve) and self.reserve >= 0):
            raise PlanError(f"cannot plan: reserve must be a share >= 0, got {self.reserve}")
        for pool in _POOLS:
            n = getattr(self, f"{pool}_replicas")
            if not isinstance(n, int) or n < 0:
                raise PlanError(f"cannot plan: {pool}_replicas must be an integer >= 0, got {n!r}")
        for item in _USD_ITEMS:
            object.__setattr__(self, f"{item}_usd", _usd(getattr(self, f"{item}_usd")))
        given = tuple((name, _usd(usd)) for name, usd in self.given_usd)
        object.__setattr__(self, "given_usd", given)
        for name, usd in (*((i, getattr(self, f"{i}_usd")) for i in _USD_ITEMS), *given):
            if not usd.is_finite() or usd < 0:
                raise PlanError(f"cannot plan: {name} must be USD >= 0 per month, got {usd}")
        for name, _ in given:
            if name in _SIZED:  # their lines are computed: a given figure would count them twice
                raise PlanError(
                    f"cannot plan: the monthly item '{name}' would count the {name} pool twice: "
                    f"the plan prices it in replicas (production sized by simulation, the reserve "
                    "as a share of it: Overheads.reserve, --reserve); rename or remove the item"
                )
            pool = POOL_ITEMS.get(name)
            if pool is not None and getattr(self, f"{pool}_replicas"):
                raise PlanError(
                    f"cannot plan: the {pool} pool is given both in USD ({name}) and in replicas"
                )

    @classmethod
    def from_target(cls, config: _core.Config, target: str, **override: Any) -> Overheads:
        """The table's ``cost.monthly`` items of `target` (``engineering``, ``observability``,
        ``evals``, ``incidents`` into their fields; ``staging``, ``test``/``test_debug``,
        ``canary`` price that pool as given; any other item is kept as given), the pools the table
        does not price at one replica each, then `override`."""
        monthly: Mapping[str, Decimal] = _cost_of(config, target).get("monthly") or {}
        values: dict[str, Any] = {}
        given: list[tuple[str, Decimal]] = []
        for name, usd in monthly.items():
            if name in _USD_ITEMS:
                values[f"{name}_usd"] = _usd(usd)
                continue
            pool = POOL_ITEMS.get(name)
            if pool is not None:
                values[f"{pool}_replicas"] = 0
            given.append((name, _usd(usd)))
        values["given_usd"] = tuple(given)
        values.update(override)
        return cls(**values)


def cost_per_mtok(
    gpus_per_replica: int,
    usd_per_gpu_hour: Decimal | str | float,
    output_tokens_per_s: int,
    utilization: Decimal | str | float,
) -> Decimal:
    """USD per million output tokens of a replica of `gpus_per_replica` GPUs at
    `usd_per_gpu_hour` that decodes `output_tokens_per_s` at full load, busy `utilization` of the
    time (0 < u <= 1): exact, to the picodollar (the core's one definition). Raises
    :class:`~turnout.InvalidArgumentError` for zero throughput or a utilization out of range."""
    # Numbers go to the core as their shortest text (0.24, not 0.2399999...): exact from there.
    if isinstance(usd_per_gpu_hour, (int, float)):
        usd_per_gpu_hour = repr(usd_per_gpu_hour)
    if isinstance(utilization, (int, float)):
        utilization = repr(utilization)
    return _core.self_hosted_cost_per_mtok(
        gpus_per_replica, usd_per_gpu_hour, output_tokens_per_s, utilization
    )


def _cost_of(config: _core.Config, target: str) -> dict[str, Any]:
    capacity._self_hosted(config, target)
    cost = config.target_info(target).get("cost")
    if cost is None:
        raise PlanError(f"cannot plan: target '{target}' has no cost block (is it self-hosted?)")
    return cost


def replica_usd_per_month(config: _core.Config, target: str) -> Decimal:
    """One replica of `target` for a month: GPUs x USD per GPU-hour x 730 h, exact."""
    cost = _cost_of(config, target)
    return int(cost["gpus_per_replica"]) * _usd(cost["usd_per_gpu_hour"]) * HOURS_PER_MONTH


def reserve_replicas(reserve: float, replicas: int) -> int:
    """The reserve for a pool of `replicas`: ``reserve`` x replicas, rounded up (in decimal, so
    0.3 x 10 is 3, not 4)."""
    share = Decimal(repr(reserve)) * replicas
    return int(share.to_integral_value(rounding=ROUND_CEILING))


def fully_loaded_lines(
    config: _core.Config, target: str, replicas: int, overheads: Overheads
) -> pd.DataFrame:
    """The fully loaded month of a `target` pool of `replicas` production replicas, one line per
    item: item, pool (the pool a line pays for, or None), replicas, gpus, usd_per_month (exact
    ``Decimal``). Pools are priced at their GPUs x USD per GPU-hour x 730 h."""
    cost = _cost_of(config, target)
    gpus = int(cost["gpus_per_replica"])
    per_replica = replica_usd_per_month(config, target)
    rows: list[dict[str, Any]] = []

    def pool(item: str, n: int) -> None:
        rows.append(
            {
                "item": item,
                "pool": item,
                "replicas": n,
                "gpus": n * gpus,
                "usd_per_month": n * per_replica,
            }
        )

    pool("production", replicas)
    pool("reserve", reserve_replicas(overheads.reserve, replicas))
    given = dict(overheads.given_usd)
    for name in _POOLS:
        if not any(POOL_ITEMS.get(g) == name for g in given):
            pool(name, getattr(overheads, f"{name}_replicas"))
    for name, usd in overheads.given_usd:
        rows.append(
            {
                "item": name,
                "pool": POOL_ITEMS.get(name),
                "replicas": None,
                "gpus": None,
                "usd_per_month": usd,
            }
        )
    for item in _USD_ITEMS:
        rows.append(
            {
                "item": item,
                "pool": None,
                "replicas": None,
                "gpus": None,
                "usd_per_month": getattr(overheads, f"{item}_usd"),
            }
        )
    frame = pd.DataFrame(rows, columns=["item", "pool", "replicas", "gpus", "usd_per_month"])
    return frame.astype({"replicas": "Int64", "gpus": "Int64"})


# ---------------------------------------------------------------------------------------------
# Measuring an option over the day


def day_levels(demand: Demand) -> list[tuple[float, float]]:
    """The day as (rate_rps, hours) levels: flat, one level at the mean; diurnal, its hours
    sorted by load and cut into :data:`DAY_LEVELS` groups, each at its group's mean rate."""
    if demand.diurnal is None:
        return [(demand.mean_rps, 24.0)]
    hours = sorted(demand.diurnal)
    size = math.ceil(len(hours) / DAY_LEVELS)
    groups = [hours[i : i + size] for i in range(0, len(hours), size)]
    scale = 24.0 / len(hours)
    return [(demand.mean_rps * sum(g) / len(g), len(g) * scale) for g in groups]


@dataclass(frozen=True)
class DayMeasure:
    """An option measured over the day: each level's Measure with its hours, and the option at
    peak. Shares are request-weighted over the levels."""

    levels: tuple[tuple[Measure, float], ...]
    peak: Measure

    def _weighted(self, value: Any) -> float | None:
        total = 0.0
        weight = 0.0
        for m, hours in self.levels:
            v = value(m)
            if v is None:
                continue
            w = m.rate_rps * hours
            total += v * w
            weight += w
        return total / weight if weight else None

    @property
    def accepted_share(self) -> float:
        """Accepted outcomes per request (the simulated quality gate)."""
        return self._weighted(lambda m: m.accepted / m.requests if m.requests else None) or 0.0

    @property
    def availability(self) -> float:
        """Requests served or fallen back, per request."""
        return self._weighted(lambda m: m.availability) or 0.0

    def share_on(self, target: str) -> float:
        """Requests completed on `target`, per request."""
        return (
            self._weighted(
                lambda m: m.by_target.get(target, 0) / m.requests if m.requests else None
            )
            or 0.0
        )

    @property
    def cache_hit_rate(self) -> float | None:
        """Cached input tokens per input token (realized)."""
        return self._weighted(lambda m: m.cache_hit_rate)

    def usd_per_month(self, share: Any = None) -> Decimal:
        """The simulated spend over a month: each level's cost per request x the requests it sees
        in a month (exact in, rounded to the picodollar). `share(m)`: the part of a measure's cost
        to count (default all of it)."""
        total = Decimal(0)
        for m, hours in self.levels:
            if not m.requests:
                continue
            cost = m.cost_usd if share is None else share(m)
            month_requests = Decimal(repr(m.rate_rps * hours * 3600)) * HOURS_PER_MONTH / 24
            total += cost / m.requests * month_requests
        return to_picodollar(total)


def _measure_day(
    config: _core.Config,
    scenario: str,
    demand: Demand,
    *,
    table: str,
    models: Mapping[str, Any] | None,
    slo: Slo,
    seed: int,
    duration_s: float,
    peak: Measure | None = None,
) -> DayMeasure:
    def at(rate: float) -> Measure:
        return capacity.measure(
            config,
            scenario,
            demand,
            rate_rps=rate,
            duration_s=duration_s,
            models=models,
            seed=seed,
            slo=slo,
            table=table,
        )

    levels = tuple((at(rate), hours) for rate, hours in day_levels(demand))
    if peak is None:
        flat = demand.diurnal is None and demand.peak_rps == demand.mean_rps
        peak = levels[0][0] if flat else at(demand.peak_rps)
    return DayMeasure(levels, peak)


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    """A capacity plan for one scenario: a self-hosted target against a MaaS target. Money is
    exact ``Decimal`` USD per month (730 h). See docs/plan.md."""

    scenario: str
    self_hosted: str
    maas: str
    demand: Demand
    slo: Slo
    sizing: Sizing
    lines: pd.DataFrame
    options: pd.DataFrame
    breakeven_requests_per_month: float | None
    curve: pd.DataFrame
    sensitivity: pd.DataFrame
    recommendation: str
    reasons: list[str]
    overheads: Overheads = field(default_factory=Overheads)
    replica_usd_per_month: Decimal = Decimal(0)
    """One production replica for a month (GPUs x USD per GPU-hour x 730 h)."""
    fixed_usd_per_month: Decimal = Decimal(0)
    """The month's lines that do not grow with volume: the staging, test and canary pools and
    the USD items."""
    maas_usd_per_request: Decimal = Decimal(0)
    """MaaS's measured cost per request at its measured cache hit rate (the break-even slope)."""
    hybrid_replicas: int = 0
    """The hybrid's production pool (sized for the mean load)."""
    hybrid_spill_at: int | None = None
    """Requests in flight per replica from which the hybrid spills over to MaaS (None: at the
    table's own max_inflight)."""
    min_accept_rate: float | None = None
    """The scenario's quality gate (accepted share), if it has one."""
    replica_rps: float = 0.0
    """The peak load one replica carries within the SLO (found by simulation): the break-even and
    the curve add a replica per this many requests/s of peak."""
    capacity_trials: list[Measure] = field(default_factory=list)
    """The one-replica runs that found :attr:`replica_rps`."""

    @property
    def self_hosted_usd_per_month(self) -> Decimal:
        """The fully loaded month: the sum of :attr:`lines`."""
        return sum(self.lines["usd_per_month"], Decimal(0))

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data: money as decimal strings, frames as lists of records."""
        sizing = self.sizing
        return _jsonable(
            {
                "scenario": self.scenario,
                "self_hosted": self.self_hosted,
                "maas": self.maas,
                "demand": asdict(self.demand),
                "requests_per_month": self.demand.requests_per_month(),
                "slo": asdict(self.slo),
                "min_accept_rate": self.min_accept_rate,
                "sizing": {
                    "target": sizing.target,
                    "replicas": sizing.replicas,
                    "replica_rps": sizing.replica_rps,
                    "at_peak": asdict(sizing.at_peak),
                    "below": None if sizing.below is None else asdict(sizing.below),
                    "trials": [asdict(m) for m in sizing.trials],
                },
                "replica_rps": self.replica_rps,
                "capacity_trials": [asdict(m) for m in self.capacity_trials],
                "overheads": asdict(self.overheads),
                "lines": self.lines.to_dict("records"),
                "self_hosted_usd_per_month": self.self_hosted_usd_per_month,
                "replica_usd_per_month": self.replica_usd_per_month,
                "fixed_usd_per_month": self.fixed_usd_per_month,
                "maas_usd_per_request": self.maas_usd_per_request,
                "hybrid_replicas": self.hybrid_replicas,
                "hybrid_spill_at": self.hybrid_spill_at,
                "options": self.options.to_dict("records"),
                "breakeven_requests_per_month": self.breakeven_requests_per_month,
                "curve": self.curve.to_dict("records"),
                "sensitivity": self.sensitivity.to_dict("records"),
                "recommendation": self.recommendation,
                "reasons": self.reasons,
            }
        )

    def to_markdown(self) -> str:
        """The plan as a Markdown report: demand and SLO, the month's lines, the options, the
        break-even volume, the sensitivity tables, the recommendation and its reasons."""
        d = self.demand
        slo = ", ".join(
            f"{name} {value:g} ms"
            for name, value in (
                ("TTFT p95", self.slo.ttft_p95_ms),
                ("latency p95", self.slo.latency_p95_ms),
            )
            if value is not None
        )
        out = [
            f"# Capacity plan: {self.scenario}",
            "",
            f"**Recommendation: {self.recommendation}**",
            "",
            *(f"- {r}" for r in self.reasons),
            "",
            "## Demand and SLO",
            "",
            f"- {d.mean_rps:g} requests/s on average, peak {d.peak_rps:g} "
            f"(x{d.peak_rps / d.mean_rps:.3g}), "
            f"{d.requests_per_month():,.0f} requests/month; {d.input_tokens} prompt tokens "
            f"({d.shared_prefix_tokens} shared), {d.output_tokens} output tokens",
            f"- SLO: {slo}"
            + (f"; quality gate {self.min_accept_rate:g}" if self.min_accept_rate else ""),
            f"- {self.self_hosted}: {_replicas(self.sizing.replicas)} meet the SLO at peak "
            f"({self.sizing.replica_rps:.3g} requests/s per replica)",
            "",
            f"## The fully loaded month of {self.self_hosted}",
            "",
            _md_table(self.lines),
            "",
            f"Total: **${money_text(self.self_hosted_usd_per_month)}** per month.",
            "",
            f"## Options ({self.maas} for MaaS)",
            "",
            _md_table(self.options),
            "",
            "## Break-even",
            "",
            (
                f"Self-hosted, fully loaded, costs what MaaS does at "
                f"**{self.breakeven_requests_per_month:,.0f} requests/month**."
                if self.breakeven_requests_per_month is not None
                else "Self-hosted never costs less than MaaS at any volume."
            ),
            "",
            "## Sensitivity",
            "",
            _md_table(self.sensitivity),
            "",
        ]
        return "\n".join(out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _jsonable(value.item())
    return value


def money_text(value: Decimal) -> str:
    """An exact amount for reading: every significant digit, at least cents ("2200.00",
    "0.000693565"); JSON keeps the amounts as they are."""
    text = format(value.normalize(), "f")
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _md_cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Decimal):
        return money_text(value)
    return str(value)


def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join(_md_cell(v) for v in row) + " |"
        for row in frame.astype(object).itertuples(index=False)
    ]
    return "\n".join([head, rule, *body])


def _check_targets(config: _core.Config, scenario: str, self_hosted: str, maas: str) -> None:
    """PlanError unless the table has `scenario`, a self-hosted `self_hosted` and a MaaS `maas`
    (capacity's checks and messages: one definition)."""
    capacity._scenario(config, scenario)
    capacity._self_hosted(config, self_hosted)
    capacity._maas(config, maas)


def _replicas_for(peak_rps: float, replica_rps: float) -> int:
    # The figures come from floating-point division: a hair above an integer is that integer.
    return max(1, math.ceil(peak_rps / replica_rps - 1e-9))


def self_hosted_usd(
    requests_per_month: float,
    *,
    peak_to_mean: float,
    replica_rps: float,
    replica_usd: Decimal,
    reserve: float,
    fixed_usd: Decimal,
) -> Decimal:
    """The fully loaded month at a volume: ceil(peak / replica_rps) production replicas plus
    their reserve, each a `replica_usd` month, plus the `fixed_usd` lines (a step function)."""
    peak = requests_per_month / SECONDS_PER_MONTH * peak_to_mean
    n = _replicas_for(peak, replica_rps)
    return (n + reserve_replicas(reserve, n)) * replica_usd + fixed_usd


def breakeven(
    *,
    maas_usd_per_request: Decimal,
    peak_to_mean: float,
    replica_rps: float,
    replica_usd: Decimal,
    reserve: float,
    fixed_usd: Decimal,
) -> float | None:
    """The smallest volume (requests/month) at which the self-hosted month
    (:func:`self_hosted_usd`) is no more than MaaS's (volume x `maas_usd_per_request`); None when
    no volume gets there (a replica, with its reserve, costs more than MaaS for what it carries)."""
    if maas_usd_per_request <= 0:
        return None
    # Requests a month one production replica carries within the SLO at the demand's peak.
    per_replica = Decimal(repr(replica_rps)) * SECONDS_PER_MONTH / Decimal(repr(peak_to_mean))
    maas_per_replica = maas_usd_per_request * per_replica
    slope = replica_usd * (1 + Decimal(repr(reserve)))
    if maas_per_replica <= slope:
        return None  # each replica (and its reserve) costs at least the MaaS traffic it takes
    # Past k_max replicas, MaaS's volume is above the self-hosted month in every step.
    k_max = int((replica_usd + fixed_usd) / (maas_per_replica - slope)) + 2
    for k in range(1, k_max + 1):
        month = (k + reserve_replicas(reserve, k)) * replica_usd + fixed_usd
        volume = month / maas_usd_per_request  # where MaaS reaches this step's month
        if volume <= k * per_replica:
            return float(max(volume, (k - 1) * per_replica))
    return None  # pragma: no cover - k_max is past the crossing


def maas_usd_per_request_at(
    config: _core.Config,
    maas: str,
    demand: Demand,
    hit_rate: float,
) -> Decimal:
    """The table's exact price of the demand's median request on `maas` with ``hit_rate`` x its
    prompt read from the provider's cache (the provider's own usage shape, priced by the core)."""
    provider = config.target_info(maas)["provider"]
    cached = int(demand.input_tokens * hit_rate)
    usage = usage_for(provider, demand.input_tokens, cached, demand.output_tokens)
    return price_usage(config, maas, usage).cost_usd


def _option_row(
    name: str, usd: Decimal, day: DayMeasure, demand: Demand, slo_met: bool
) -> dict[str, Any]:
    requests = Decimal(repr(demand.requests_per_month()))
    accepted = requests * Decimal(repr(day.accepted_share))
    return {
        "option": name,
        "usd_per_month": usd,
        "usd_per_request": to_picodollar(usd / requests),
        "usd_per_accepted": to_picodollar(usd / accepted) if accepted else None,
        "accepted_share": day.accepted_share,  # unrounded: the quality gate compares it
        "ttft_p95_ms": day.peak.ttft_p95_ms,
        "latency_p95_ms": day.peak.latency_p95_ms,
        "availability": round(day.availability, 6),
        "slo_met": bool(slo_met),
        "cache_hit_rate": day.cache_hit_rate,
    }


def _throughput(
    config: _core.Config, target: str, models: Mapping[str, Any] | None
) -> tuple[int | None, str]:
    """A replica's output tokens/s at full load, and where it comes from."""
    row = ((models or {}).get(target) or {}).get("throughput")
    if row:
        return int(row["output_tokens_per_s"]), "the models file's throughput row"
    decode = _cost_of(config, target).get("decode_tokens_per_s")
    if decode:
        return int(decode), "the table's decode_tokens_per_s"
    return None, "unknown"


@dataclass(frozen=True)
class _Measured:
    """The three options measured over the day (see :func:`_measure_options`)."""

    frame: pd.DataFrame
    maas_day: DayMeasure
    hybrid_day: DayMeasure
    base: Sizing  # the hybrid's pool, sized for the mean load
    maas_usd: Decimal  # MaaS only, per month
    hybrid_spill: Decimal  # the hybrid's MaaS spend, per month
    spill_at: int | None  # in flight per replica from which the hybrid spills (None: the table's)


def _measure_options(
    config: _core.Config,
    scenario: str,
    self_hosted: str,
    maas: str,
    demand: Demand,
    sizing: Sizing,
    self_usd: Decimal,
    overheads: Overheads,
    slo: Slo,
    run: Mapping[str, Any],
) -> _Measured:
    """MaaS only, self-hosted only (the SLO pool, `self_usd` a month) and the hybrid, each
    simulated over the day and priced for a month."""
    # MaaS only: what the provider bills over the day.
    maas_day = _measure_day(
        capacity.maas_table(config, scenario, maas),
        scenario,
        demand,
        table="maas_only",
        slo=slo,
        **run,
    )
    maas_usd = maas_day.usd_per_month()
    # Self-hosted only: the SLO pool (its reserve held back), at peak as sized.
    pool = capacity.pool_table(config, scenario, self_hosted, sizing.replicas)
    self_day = _measure_day(
        pool, scenario, demand, table="self_hosted_only", slo=slo, peak=sizing.at_peak, **run
    )
    # Hybrid: a pool sized for the mean load; MaaS takes the spikes through spillover.
    base = capacity.size_pool(
        config,
        scenario,
        self_hosted,
        replace(demand, peak_to_mean=1.0, diurnal=None),
        slo=slo,
        **run,
    )
    spill_at = _spill_threshold(
        config, scenario, self_hosted, maas, base.replicas, demand, slo=slo, **run
    )
    hybrid = capacity.hybrid_table(
        config, scenario, self_hosted, base.replicas, maas, spill_at=spill_at
    )
    hybrid_day = _measure_day(hybrid, scenario, demand, table="hybrid", slo=slo, **run)
    spill_per_request = maas_usd / Decimal(repr(demand.requests_per_month()))

    def spilled(m: Measure) -> Decimal:
        # The MaaS part of a hybrid window: its requests served off the pool (spilled to `maas`
        # or fallen back to the scenario's other MaaS targets) at MaaS's measured price.
        off_pool = sum(n for target, n in m.by_target.items() if target != self_hosted)
        return off_pool * spill_per_request

    hybrid_lines = fully_loaded_lines(config, self_hosted, base.replicas, overheads)
    hybrid_spill = hybrid_day.usd_per_month(spilled)
    hybrid_usd = sum(hybrid_lines["usd_per_month"], Decimal(0)) + hybrid_spill

    options = pd.DataFrame(
        [
            _option_row("maas_only", maas_usd, maas_day, demand, maas_day.peak.slo_met),
            _option_row("self_hosted_only", self_usd, self_day, demand, sizing.at_peak.slo_met),
            _option_row("hybrid", hybrid_usd, hybrid_day, demand, hybrid_day.peak.slo_met),
        ]
    )
    return _Measured(options, maas_day, hybrid_day, base, maas_usd, hybrid_spill, spill_at)


def _spill_threshold(
    config: _core.Config,
    scenario: str,
    self_hosted: str,
    maas: str,
    replicas: int,
    demand: Demand,
    *,
    slo: Slo,
    models: Mapping[str, Any] | None,
    seed: int,
    duration_s: float,
) -> int | None:
    """Requests in flight per replica from which the hybrid's pool spills over to MaaS: the largest
    that still meets the SLO at peak, found by bisection on simulated peak runs (more in flight per
    replica means less spillover and slower replicas). The table's own ``max_inflight`` (None)
    when that already meets it, or when no threshold does (MaaS itself misses the SLO)."""

    def meets(spill_at: int | None) -> bool:
        table = capacity.hybrid_table(
            config, scenario, self_hosted, replicas, maas, spill_at=spill_at
        )
        run = capacity.measure(
            table,
            scenario,
            demand,
            rate_rps=demand.peak_rps,
            duration_s=duration_s,
            models=models,
            seed=seed,
            slo=slo,
            table="hybrid",
        )
        return run.slo_met

    if meets(None):
        return None
    lo, hi = 1, max(config.target_info(self_hosted)["max_inflight"])
    if not meets(lo):
        return None
    while hi - lo > 1:  # meets(lo), and every threshold from hi up misses
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def plan(
    config: _core.Config,
    scenario: str,
    *,
    self_hosted: str,
    maas: str,
    demand: Demand,
    models: Mapping[str, Any] | None = None,
    overheads: Overheads | None = None,
    seed: int = 0,
    duration_s: float = 600.0,
) -> Plan:
    """Plans `scenario`'s capacity on the self-hosted target `self_hosted` against the MaaS target
    `maas` for `demand`: sizes the pool at peak by simulation, prices its fully loaded month,
    measures MaaS-only, self-hosted-only and hybrid over the day, finds the break-even volume and
    the sensitivities, and recommends. Raises :class:`~turnout.PlanError` (unknown scenario or
    target, no SLO, no pool size that meets the SLO) and the simulator's errors for bad models."""
    _check_targets(config, scenario, self_hosted, maas)
    slo = Slo.of(config, scenario)  # size_pool refuses a scenario without one
    info = config.scenario_info(scenario)
    min_accept = info.get("min_accept_rate")
    overheads = overheads or Overheads.from_target(config, self_hosted)
    run = {"models": models, "seed": seed, "duration_s": duration_s}
    sizing = capacity.size_pool(config, scenario, self_hosted, demand, slo=slo, **run)
    lines = fully_loaded_lines(config, self_hosted, sizing.replicas, overheads)
    replica_usd = replica_usd_per_month(config, self_hosted)
    scaling = lines["item"].isin(["production", "reserve"])
    fixed = sum(lines.loc[~scaling, "usd_per_month"], Decimal(0))

    measured = _measure_options(
        config,
        scenario,
        self_hosted,
        maas,
        demand,
        sizing,
        sum(lines["usd_per_month"], Decimal(0)),
        overheads,
        slo,
        run,
    )
    options, maas_day, base = measured.frame, measured.maas_day, measured.base
    maas_usd, hybrid_spill = measured.maas_usd, measured.hybrid_spill
    maas_per_request = to_picodollar(maas_usd / Decimal(repr(demand.requests_per_month())))
    replica_rps, capacity_trials = _replica_capacity(
        config, scenario, self_hosted, demand, sizing, slo, run
    )
    economics = {
        "peak_to_mean": demand.peak_rps / demand.mean_rps,
        "replica_rps": replica_rps,
        "replica_usd": replica_usd,
        "reserve": overheads.reserve,
        "fixed_usd": fixed,
    }
    be = breakeven(maas_usd_per_request=maas_per_request, **economics)
    curve = _curve(demand, be, maas_per_request, economics, base.replicas, hybrid_spill)
    sensitivity, tokens_note = _sensitivity(
        config,
        self_hosted,
        maas,
        demand,
        models,
        maas_day.cache_hit_rate or 0.0,
        maas_per_request,
        economics,
    )
    recommendation, reasons = _recommend(
        options, min_accept, sizing, be, demand, maas, self_hosted, maas_day, lines, tokens_note
    )
    spill = measured.hybrid_day.share_on(maas)
    reasons.append(
        f"hybrid: {_replicas(base.replicas)} of {self_hosted} sized by simulation for the mean "
        f"load ({demand.mean_rps:g} requests/s), {spill:.1%} of requests "
        f"spill over to {maas}"
        + (
            f" (each replica takes at most {measured.spill_at} in flight: the most that still "
            "meets the SLO at peak, by simulation)"
            if measured.spill_at is not None
            else " (at the table's own max_inflight)"
        )
        + (
            "; the mean load needs as many replicas as the peak, so it saves nothing here"
            if base.replicas >= sizing.replicas
            else ""
        )
    )
    return Plan(
        scenario=scenario,
        self_hosted=self_hosted,
        maas=maas,
        demand=demand,
        slo=slo,
        sizing=sizing,
        lines=lines,
        options=options,
        breakeven_requests_per_month=be,
        curve=curve,
        sensitivity=sensitivity,
        recommendation=recommendation,
        reasons=reasons,
        overheads=overheads,
        replica_usd_per_month=replica_usd,
        fixed_usd_per_month=fixed,
        maas_usd_per_request=maas_per_request,
        hybrid_replicas=base.replicas,
        hybrid_spill_at=measured.spill_at,
        min_accept_rate=min_accept,
        replica_rps=replica_rps,
        capacity_trials=capacity_trials,
    )


def _replica_capacity(
    config: _core.Config,
    scenario: str,
    target: str,
    demand: Demand,
    sizing: Sizing,
    slo: Slo,
    run: Mapping[str, Any],
) -> tuple[float, list[Measure]]:
    """The highest arrival rate one replica serves within the SLO (to 5 %), by simulation; the
    break-even and the curve scale the pool with it. It is kept between the sized pool's own
    figures (peak / replicas, and below peak / (replicas - 1)), so the step function gives the
    sized pool at the plan's own volume."""
    one = capacity.pool_table(config, scenario, target, 1)
    trials: list[Measure] = []

    def met(rate: float) -> bool:
        m = capacity.measure(
            one, scenario, demand, rate_rps=rate, slo=slo, table=f"{target}x1", **run
        )
        trials.append(m)
        return m.slo_met

    lo = sizing.replica_rps
    if sizing.replicas > 1 and not met(lo):
        return lo, trials  # one replica alone does worse than its share of the pool
    hi = lo * 2
    for _ in range(10):
        if not met(hi):
            break
        lo, hi = hi, hi * 2
    else:
        hi = lo
    while hi > lo * 1.05:
        mid = (lo + hi) / 2
        if met(mid):
            lo = mid
        else:
            hi = mid
    return _within_sizing(lo, demand.peak_rps, sizing.replicas), trials


def _within_sizing(capacity_rps: float, rate: float, replicas: int) -> float:
    """`capacity_rps` kept between rate / replicas (what the sized pool carries) and just below
    rate / (replicas - 1), so that ceil(rate / capacity) gives back the sized pool."""
    if replicas > 1:
        capacity_rps = min(capacity_rps, rate / (replicas - 1) * (1 - 1e-6))
    return max(capacity_rps, rate / replicas)


def _curve(
    demand: Demand,
    be: float | None,
    maas_per_request: Decimal,
    economics: dict[str, Any],
    hybrid_replicas: int,
    hybrid_spill: Decimal,
) -> pd.DataFrame:
    """Monthly cost of each option over volumes from a tenth of the demand to ten times it (or
    twice the break-even). The hybrid scales its base pool with the mean load (a replica per
    replica_rps) and keeps its measured MaaS spend per request."""
    volume = demand.requests_per_month()
    top = max(volume * 10, 2 * be if be else 0.0)
    points = sorted(
        {
            *(volume / 10 * (top / (volume / 10)) ** (i / 59) for i in range(60)),
            volume,
            *([be] if be else []),
        }
    )
    base_rps = _within_sizing(economics["replica_rps"], demand.mean_rps, hybrid_replicas)
    spill_share = hybrid_spill / Decimal(repr(volume))  # MaaS's part, per request
    rows = []
    for v in points:
        mean = v / SECONDS_PER_MONTH
        n = _replicas_for(mean, base_rps)
        pool = (n + reserve_replicas(economics["reserve"], n)) * economics["replica_usd"]
        rows.append(
            {
                "requests_per_month": v,
                "maas_usd": to_picodollar(maas_per_request * Decimal(repr(v))),
                "self_hosted_usd": self_hosted_usd(v, **economics),
                "hybrid_usd": to_picodollar(
                    pool + economics["fixed_usd"] + spill_share * Decimal(repr(v))
                ),
            }
        )
    return pd.DataFrame(rows)


def _sensitivity(
    config: _core.Config,
    self_hosted: str,
    maas: str,
    demand: Demand,
    models: Mapping[str, Any] | None,
    measured_hit: float,
    maas_per_request: Decimal,
    economics: dict[str, Any],
) -> tuple[pd.DataFrame, str]:
    rows: list[dict[str, Any]] = []
    cost = _cost_of(config, self_hosted)
    tokens, source = _throughput(config, self_hosted, models)
    if tokens:
        for u in UTILIZATIONS:
            rows.append(
                {
                    "parameter": "utilization",
                    "value": float(u),
                    "usd_per_mtok": cost_per_mtok(
                        cost["gpus_per_replica"], cost["usd_per_gpu_hour"], tokens, u
                    ),
                    "maas_usd_per_request": None,
                    "breakeven_requests_per_month": None,
                }
            )
    # MaaS re-priced exactly: the measured cost per request, plus the price difference of the
    # median request read from the cache at `rate` instead of at the measured rate.
    measured_price = maas_usd_per_request_at(config, maas, demand, measured_hit)
    for rate in (*CACHE_HIT_RATES, measured_hit):
        per_request = maas_per_request + maas_usd_per_request_at(config, maas, demand, rate)
        per_request -= measured_price
        rows.append(
            {
                "parameter": "cache_hit_rate",
                "value": float(rate),
                "usd_per_mtok": None,
                "maas_usd_per_request": per_request,
                "breakeven_requests_per_month": breakeven(
                    maas_usd_per_request=per_request, **economics
                ),
            }
        )
    frame = pd.DataFrame(
        rows,
        columns=[
            "parameter",
            "value",
            "usd_per_mtok",
            "maas_usd_per_request",
            "breakeven_requests_per_month",
        ],
    )
    frame = frame.drop_duplicates(subset=["parameter", "value"]).sort_values(
        ["parameter", "value"], kind="stable"
    )
    note = ""
    if tokens:
        slo_tokens = int(economics["replica_rps"] * demand.output_tokens)
        if slo_tokens > 0:
            at_slo = cost_per_mtok(
                cost["gpus_per_replica"], cost["usd_per_gpu_hour"], slo_tokens, 1
            )
            full = cost_per_mtok(cost["gpus_per_replica"], cost["usd_per_gpu_hour"], tokens, 1)
            note = (
                f"a token-price spreadsheet would use {tokens} output tokens/s per replica "
                f"({source}): ${money_text(full)} per million at 100 % utilization; within the "
                f"SLO a replica carries {economics['replica_rps']:.3g} requests/s = {slo_tokens} "
                f"output tokens/s: ${money_text(at_slo)} per million, before the reserve and the "
                "other pools"
            )
    return frame.reset_index(drop=True), note


def _replicas(n: int) -> str:
    return f"{n} replica" + ("" if n == 1 else "s")


def _recommend(
    options: pd.DataFrame,
    min_accept: float | None,
    sizing: Sizing,
    be: float | None,
    demand: Demand,
    maas: str,
    self_hosted: str,
    maas_day: DayMeasure,
    lines: pd.DataFrame,
    tokens_note: str,
) -> tuple[str, list[str]]:
    reasons: list[str] = []
    eligible: list[dict[str, Any]] = []
    for row in options.to_dict("records"):
        why = []
        if not row["slo_met"]:
            why.append(
                f"misses the SLO at peak (TTFT p95 {_md_cell(row['ttft_p95_ms'])} ms, latency "
                f"p95 {_md_cell(row['latency_p95_ms'])} ms, availability "
                f"{row['availability']:.4f})"
            )
        if min_accept is not None and row["accepted_share"] < min_accept:
            why.append(
                f"fails the quality gate: {row['accepted_share']:.4f} accepted < {min_accept:g}"
            )
        if why:
            reasons.append(f"{row['option']} {'; '.join(why)}")
        else:
            eligible.append(row)
    if not eligible:
        return "cannot_recommend", [
            "no option meets the SLO and the quality gate; see each option's reason",
            *reasons,
        ]
    # None (nothing accepted) sorts last; a $0 option is the cheapest, not "no figure".
    best = min(
        eligible,
        key=lambda r: (
            Decimal("Infinity") if r["usd_per_accepted"] is None else r["usd_per_accepted"]
        ),
    )
    others = ", ".join(
        f"{r['option']} ${money_text(r['usd_per_accepted'])}" for r in eligible if r is not best
    )
    head = [
        f"{best['option']} has the lowest fully loaded cost per accepted outcome among the "
        f"options that meet the SLO and the quality gate: ${money_text(best['usd_per_accepted'])}"
        + (f" (vs {others})" if others else ""),
        f"{_replicas(sizing.replicas)} of {self_hosted}: the smallest pool that meets the SLO at "
        f"peak ({demand.peak_rps:g} requests/s) in simulation"
        + (f"; {_replicas(sizing.replicas - 1)} do not" if sizing.below is not None else ""),
        "the self-hosted month counts every pool, not only production: "
        + ", ".join(
            f"{r['item']} ${money_text(r['usd_per_month'])}"
            for r in lines.to_dict("records")
            if r["usd_per_month"]
        )
        + "".join(
            f"; {r['item']} counted as $0 (no figure given)"
            for r in lines.to_dict("records")
            if not r["usd_per_month"]
        ),
    ]
    volume = demand.requests_per_month()
    if be is None:
        head.append(
            f"self-hosted never breaks even with {maas}: a replica and its reserve cost "
            "more per month than the MaaS traffic it can carry within the SLO"
        )
    else:
        side = "above" if volume >= be else "below"
        head.append(
            f"break-even at {be:,.0f} requests/month; this demand "
            f"({volume:,.0f}/month) is {side} it"
        )
    hit = maas_day.cache_hit_rate
    head.append(
        f"MaaS is priced at the cache hit rate measured on {maas} in simulation "
        f"({'-' if hit is None else f'{hit:.1%}'}), the destination's own TTL, prices and "
        "locality: a migration forecasts with the new rate, never the one measured on the "
        "old target"
    )
    if tokens_note:
        head.append(tokens_note)
    return best["option"], [*head, *reasons]


__all__ = [
    "HOURS_PER_MONTH",
    "POOL_ITEMS",
    "DayMeasure",
    "Overheads",
    "Plan",
    "breakeven",
    "cost_per_mtok",
    "day_levels",
    "fully_loaded_lines",
    "maas_usd_per_request_at",
    "plan",
    "replica_usd_per_month",
    "reserve_replicas",
    "self_hosted_usd",
]
