"""Capacity by simulation: a scenario's demand, its SLO, and the smallest self-hosted pool that
meets the SLO at peak.

A pool is sized by replaying synthetic load through the real router in the what-if engine
(:func:`turnout.replay.replay`), never by dividing tokens per second: queueing, batching, the KV
cache and the router's own placement decide whether the p95s hold. :func:`size_pool` starts from a
throughput-based lower bound, steps and bisects up to the smallest pool that meets the SLO, and
keeps the run of one replica fewer as the proof that it is the smallest. The tables it runs are
derived from the routing table's own file (:func:`pool_table`, :func:`hybrid_table`,
:func:`maas_table`). Reserve and the other fully loaded pools are the plan's (turnout.plan).
The model: docs/plan.md, "Sizing a pool by simulation".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from turnout._core import Config, load_config_text
from turnout._errors import ConfigError, NoEligibleTargetError, PlanError
from turnout.replay import Trace, _chunks, replay
from turnout.traces import DEFAULT_START_S, TraceColumns

HOURS_PER_MONTH = 730.0
"""Hours in a month of the plan (8760 / 12)."""

PEAK_QUANTILE = 0.99
"""The per-minute arrival count a trace's peak is read at (the highest minute is one draw of the
noise: at 5 requests/s a Poisson minute exceeds its mean by 8 % once in 10 minutes)."""

MAX_POOL = 64
"""A routing table's pool holds at most 64 replicas (docs/config.md, ``replicas``)."""

INPUT_SIGMA = 0.5
"""Spread (lognormal sigma) of the synthetic load's prompt sizes (their unshared part)."""

OUTPUT_SIGMA = 0.6
"""Spread (lognormal sigma) of the synthetic load's answer sizes."""

PREFIX_BLOCK_TOKENS = 16
"""Tokens per block id of the synthetic load's shared prefix (the caches' chain resolution)."""

MAX_LOAD_REQUESTS = 1_000_000
"""The most requests one synthetic run simulates (rate x duration): the simulator holds every
request (600,000 take about 1.5 GB), so a larger run is refused, not attempted."""

MAX_TOKENS = 2**31 - 1
"""The largest prompt or answer a demand describes (token counts are 64-bit in the simulator;
anything near this is beyond every context window, which the planner then names)."""

DIURNAL_MEAN_TOLERANCE = 1e-6
"""How far from 1 the mean of a diurnal shape's 24 multipliers may be (rounding)."""

FIRST_PORT = 9000
"""Derived tables give replica i the endpoint ``http://127.0.0.1:(FIRST_PORT + i)``."""


def _cannot(reason: str) -> PlanError:
    return PlanError(f"cannot plan: {reason}")


# ---------------------------------------------------------------------------------------------
# Demand and SLO


@dataclass(frozen=True)
class Demand:
    """A scenario's load: its mean rate, how far above it the peak goes, its daily shape and its
    typical request."""

    mean_rps: float  # > 0
    peak_to_mean: float = 1.0  # >= 1
    diurnal: tuple[float, ...] | None = None  # 24 hourly multipliers (UTC), mean 1; None = flat
    input_tokens: int = 1000  # median prompt tokens
    output_tokens: int = 200  # median output tokens
    shared_prefix_tokens: int = 0  # leading tokens every request shares (system prompt): cacheable

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean_rps) and self.mean_rps > 0):
            raise _cannot(f"the demand's mean_rps must be > 0 (got {self.mean_rps})")
        if not (math.isfinite(self.peak_to_mean) and self.peak_to_mean >= 1):
            raise _cannot(f"the demand's peak_to_mean must be >= 1 (got {self.peak_to_mean})")
        if self.diurnal is not None:
            d = tuple(float(x) for x in self.diurnal)
            if len(d) != 24 or not all(math.isfinite(x) and x >= 0 for x in d):
                raise _cannot("the demand's diurnal shape must be 24 hourly multipliers >= 0")
            if abs(sum(d) / 24 - 1) > DIURNAL_MEAN_TOLERANCE:
                raise _cannot(
                    f"the demand's diurnal multipliers must average 1 (got {sum(d) / 24})"
                )
            object.__setattr__(self, "diurnal", d)
        for name in ("input_tokens", "output_tokens", "shared_prefix_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise _cannot(f"the demand's {name} must be an integer (got {value!r})")
            if value > MAX_TOKENS:
                raise _cannot(f"the demand's {name} must be <= {MAX_TOKENS} (got {value})")
        if self.input_tokens < 1 or self.output_tokens < 1:
            raise _cannot("the demand's input_tokens and output_tokens must be >= 1")
        if not 0 <= self.shared_prefix_tokens < self.input_tokens:
            raise _cannot(
                f"the demand's shared_prefix_tokens ({self.shared_prefix_tokens}) must be >= 0 and "
                f"below its input_tokens ({self.input_tokens})"
            )

    @property
    def peak_rps(self) -> float:
        """The rate to size for: ``mean_rps * peak_to_mean``, and at least the diurnal curve's
        busiest hour."""
        top = max(self.diurnal) if self.diurnal else 1.0
        return self.mean_rps * max(self.peak_to_mean, top)

    def requests_per_month(self) -> float:
        """``mean_rps * 730 * 3600``."""
        return self.mean_rps * HOURS_PER_MONTH * 3600.0

    @classmethod
    def from_trace(
        cls, trace: Trace, *, scenario: str | None = None, format: str = "auto"
    ) -> Demand:
        """The demand a trace shows (a path, a reader, chunks of columns or rows, as
        :func:`turnout.replay.replay` takes): the requests of `scenario` (and those naming none),
        or all of them. ``mean_rps`` is (n - 1) / the time from the first arrival to the last;
        ``peak_to_mean`` the 99th percentile of the per-minute arrival counts over their mean
        (full minutes only; 1 with fewer than two); ``diurnal`` the arrival rate per UTC hour over
        its mean when the trace spans a day; token sizes the medians. The shared prefix is not
        measured (0)."""
        arrivals, inputs, outputs = [], [], []
        chunks, where, _ = _chunks(trace, format, False)
        for chunk in chunks:
            keep = np.ones(len(chunk), dtype=bool)
            if scenario is not None:
                keep = np.array([s is None or s == scenario for s in chunk.scenario], dtype=bool)
            arrivals.append(np.asarray(chunk.arrival_s, dtype=np.float64)[keep])
            inputs.append(np.asarray(chunk.input_tokens, dtype=np.int64)[keep])
            outputs.append(np.asarray(chunk.output_tokens, dtype=np.int64)[keep])
        at = np.sort(np.concatenate(arrivals)) if arrivals else np.zeros(0)
        of = f" of scenario '{scenario}'" if scenario is not None else ""
        if at.size < 2 or at[-1] <= at[0]:
            raise _cannot(
                f"{where}: {at.size} request(s){of} at one instant: a rate needs two arrival times"
            )
        span = float(at[-1] - at[0])
        return cls(
            mean_rps=(at.size - 1) / span,
            peak_to_mean=_peak_to_mean(at),
            diurnal=_diurnal(at) if span >= 86_400.0 else None,
            input_tokens=max(1, round(float(np.median(np.concatenate(inputs))))),
            output_tokens=max(1, round(float(np.median(np.concatenate(outputs))))),
        )


def _peak_to_mean(at: np.ndarray) -> float:
    """The 99th percentile of per-minute arrival counts over their mean, over the full minutes
    from the first arrival (1.0 with fewer than two)."""
    minutes = int((at[-1] - at[0]) // 60.0)
    if minutes < 2:
        return 1.0
    counts = np.bincount(((at - at[0]) // 60.0).astype(np.int64), minlength=minutes + 1)[:minutes]
    mean = float(counts.mean())
    return max(1.0, float(np.quantile(counts, PEAK_QUANTILE)) / mean) if mean > 0 else 1.0


def _diurnal(at: np.ndarray) -> tuple[float, ...]:
    """Arrivals per second of each UTC hour of the day (counts over the seconds the trace spends
    in that hour), over their mean."""
    first_hour = int(at[0] // 3600.0)
    hours = np.arange(first_hour, int(at[-1] // 3600.0) + 1)
    counts = np.bincount((at // 3600.0).astype(np.int64) - first_hour, minlength=len(hours))
    start = np.maximum(hours * 3600.0, at[0])
    end = np.minimum((hours + 1) * 3600.0, at[-1])
    exposure = np.maximum(end - start, 0.0)
    of_day = hours % 24
    rate = np.bincount(of_day, counts, 24) / np.maximum(np.bincount(of_day, exposure, 24), 1e-9)
    shape = rate / rate.mean()
    shape = shape * (24 / shape.sum())  # exactly mean 1 after rounding noise
    return tuple(float(x) for x in shape)


@dataclass(frozen=True)
class Slo:
    """A scenario's latency bounds at p95 (milliseconds; None: unbounded)."""

    ttft_p95_ms: float | None = None
    latency_p95_ms: float | None = None

    @classmethod
    def of(cls, config: Config, scenario: str) -> Slo:
        """The scenario's ``slo`` of the routing table."""
        info = config.scenario_info(scenario)
        return cls(info.get("ttft_p95_ms"), info.get("latency_p95_ms"))

    @property
    def bounded(self) -> bool:
        """Whether it bounds anything."""
        return self.ttft_p95_ms is not None or self.latency_p95_ms is not None

    def holds(self, ttft_p95_ms: float | None, latency_p95_ms: float | None) -> bool:
        """Whether p95s are within every bound (a bounded p95 that was not measured is not)."""
        return _within(ttft_p95_ms, self.ttft_p95_ms) and _within(
            latency_p95_ms, self.latency_p95_ms
        )


def _within(value: float | None, bound: float | None) -> bool:
    return bound is None or (value is not None and value <= bound)


# ---------------------------------------------------------------------------------------------
# Synthetic load


def synthetic_load(
    demand: Demand, *, scenario: str, rate_rps: float, duration_s: float, seed: int = 0
) -> TraceColumns:
    """Steady load for `demand` (added to the planned API): Poisson arrivals at `rate_rps` for
    `duration_s` (given their count, ``round(rate_rps * duration_s)``, at least one), prompt and
    answer sizes lognormal around the demand's medians, every prompt starting with the same
    ``shared_prefix_tokens`` (as equal leading block ids, so the caches see it; the rest of a
    prompt is its own)."""
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise _cannot(f"the load's rate must be > 0 requests/s (got {rate_rps})")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise _cannot(f"the load's duration must be > 0 s (got {duration_s})")
    rng = np.random.default_rng(seed)
    # A Poisson process given its count: exactly rate x duration arrivals, uniformly spread, so a
    # short run is at the rate asked for rather than at one draw of it.
    count = rate_rps * duration_s
    if count > MAX_LOAD_REQUESTS:
        shown = f"{count:,.0f}" if count < 1e15 else f"{count:.4g}"
        raise _cannot(
            f"{rate_rps:.4g} requests/s for {duration_s:g} s is {shown} requests, more than one "
            f"simulated run holds ({MAX_LOAD_REQUESTS:,}): shorten the duration (duration_s, "
            "--duration)"
        )
    n = max(1, round(rate_rps * duration_s))
    offsets = np.sort(rng.uniform(0.0, duration_s, n))
    shared_blocks = demand.shared_prefix_tokens // PREFIX_BLOCK_TOKENS
    shared = shared_blocks * PREFIX_BLOCK_TOKENS
    own = max(1, demand.input_tokens - shared)
    input_tokens = shared + _lognormal(rng, own, INPUT_SIGMA, n)
    output_tokens = _lognormal(rng, demand.output_tokens, OUTPUT_SIGMA, n)
    # Only the shared blocks are given: tokens past a prompt's blocks are never cached, so the
    # rest of each prompt is its own without naming it.
    prefix = (np.arange(shared_blocks, dtype=np.uint64) + np.uint64(0x7475726E)) * np.uint64(
        0x9E3779B97F4A7C15
    )
    return TraceColumns(
        arrival_s=DEFAULT_START_S + offsets,
        scenario=[scenario] * n,
        key=[None] * n,
        data_class=[None] * n,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        accepted=np.full(n, -1, dtype=np.int8),
        prompt="blocks",
        offsets=np.arange(n + 1, dtype=np.int64) * shared_blocks,
        values=np.tile(prefix, n),
        block_tokens=PREFIX_BLOCK_TOKENS,
    )


def _lognormal(rng: np.random.Generator, median: int, sigma: float, n: int) -> np.ndarray:
    draws = np.rint(rng.lognormal(math.log(median), sigma, n))
    return np.clip(draws, 1, 64 * median).astype(np.int64)


def _one_request(demand: Demand, scenario: str) -> TraceColumns:
    """A single request of the demand's median sizes."""
    shared_blocks = demand.shared_prefix_tokens // PREFIX_BLOCK_TOKENS
    return TraceColumns(
        arrival_s=np.array([DEFAULT_START_S]),
        scenario=[scenario],
        key=[None],
        data_class=[None],
        input_tokens=np.array([demand.input_tokens], dtype=np.int64),
        output_tokens=np.array([demand.output_tokens], dtype=np.int64),
        accepted=np.full(1, -1, dtype=np.int8),
        prompt="blocks",
        offsets=np.array([0, shared_blocks], dtype=np.int64),
        values=np.arange(1, shared_blocks + 1, dtype=np.uint64),
        block_tokens=PREFIX_BLOCK_TOKENS,
    )


# ---------------------------------------------------------------------------------------------
# Measuring a table


@dataclass(frozen=True)
class Measure:
    """One simulated run of one table at one arrival rate."""

    table: str
    rate_rps: float
    duration_s: float
    requests: int
    served: int
    fallbacks: int
    failed: int
    accepted: int
    cost_usd: Decimal  # exact, the ledger's for the window (self-hosted: marginal, not idle)
    ttft_p95_ms: float | None
    latency_p95_ms: float | None
    slo_attainment: float | None  # share of completed requests within every SLO bound
    slo_met: bool  # p95s within the SLO and no failed request
    availability: float  # (served + fallbacks) / requests
    cache_hit_rate: float | None  # realized
    utilization: float | None  # self-hosted busy share
    gpu_hours: float
    by_target: dict[str, int]  # requests completed per target


def measure(
    config: Config,
    scenario: str,
    demand: Demand,
    *,
    rate_rps: float,
    duration_s: float = 600.0,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    slo: Slo | None = None,
    table: str = "",
) -> Measure:
    """Replays :func:`synthetic_load` at `rate_rps` for `duration_s` through `config` (one
    simulation, seeded) and reduces it to a :class:`Measure` against `slo` (default: the
    scenario's)."""
    slo = Slo.of(config, scenario) if slo is None else slo
    load = synthetic_load(
        demand, scenario=scenario, rate_rps=rate_rps, duration_s=duration_s, seed=seed
    )
    result = replay(config, [load], models=models, seed=seed, scenario=scenario)
    s = result.summary
    r = result.request_columns
    done = np.asarray(r["outcome"], dtype=object) != "failed"
    ttft = np.asarray(r["ttft_ms"], dtype=np.float64)[done]
    latency = np.asarray(r["latency_ms"], dtype=np.float64)[done]
    attainment = None
    if slo.bounded and ttft.size:
        within = np.ones(ttft.size, dtype=bool)
        if slo.ttft_p95_ms is not None:
            within &= ttft <= slo.ttft_p95_ms
        if slo.latency_p95_ms is not None:
            within &= latency <= slo.latency_p95_ms
        attainment = round(float(within.mean()), 6)
    targets, counts = np.unique(np.asarray(r["target"], dtype=object)[done], return_counts=True)
    ttft_p95, latency_p95 = s["ttft_ms"]["p95"], s["latency_ms"]["p95"]
    return Measure(
        table=table,
        rate_rps=rate_rps,
        duration_s=duration_s,
        requests=s["requests"],
        served=s["served"],
        fallbacks=s["fallbacks"],
        failed=s["failed"],
        accepted=s["accepted"],
        cost_usd=s["cost_usd"],
        ttft_p95_ms=ttft_p95,
        latency_p95_ms=latency_p95,
        slo_attainment=attainment,
        slo_met=s["failed"] == 0 and slo.holds(ttft_p95, latency_p95),
        availability=(s["served"] + s["fallbacks"]) / s["requests"],
        cache_hit_rate=s["cache_hit_rate"]["realized"],
        utilization=s["utilization"],
        gpu_hours=s["gpu_hours"],
        by_target={str(t): int(c) for t, c in zip(targets, counts, strict=True)},
    )


# ---------------------------------------------------------------------------------------------
# Table variants: derived from the routing table's own file


_DERIVED: dict[str, str] = {}
"""The YAML text of every table derived here, by its source name (a derived table's source is
not a file), so a table can be derived from a derived one."""


def _document(config: Config) -> dict[str, Any]:
    """The routing table's YAML as data: re-read from its file (checked to be the bytes `config`
    was loaded from), or the text a derived table was made of."""
    import yaml

    source = config.source
    text = _DERIVED.get(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as e:
            raise _cannot(
                f"cannot read the routing table's file '{source}' to derive a table from it: "
                f"{e.strerror or e}"
            ) from None
        if load_config_text(text, source).version != config.version:
            raise _cannot(f"the routing table's file '{source}' changed since it was loaded")
    return yaml.safe_load(text)


def _kind(config: Config, target: str) -> str:
    if target not in config.targets:
        raise _cannot(f"the routing table has no target '{target}' (targets: {config.targets})")
    return str(config.target_info(target)["kind"])


def _self_hosted(config: Config, target: str) -> None:
    kind = _kind(config, target)
    if kind != "self_hosted":
        raise _cannot(f"target '{target}' is {kind}, not a self-hosted pool: only a pool is sized")


def _maas(config: Config, target: str) -> None:
    kind = _kind(config, target)
    if kind != "maas":
        raise _cannot(f"target '{target}' is {kind}, not a MaaS target")


def _scenario(config: Config, scenario: str) -> None:
    if scenario not in config.scenarios:
        raise _cannot(
            f"the routing table has no scenario '{scenario}' (scenarios: {config.scenarios})"
        )


def _derive(config: Config, label: str, edit: Any) -> Config:
    """The table `config` with `edit(document)` applied, loaded under the source
    ``<source>#<label>`` (a relative ``from_litellm`` path is made absolute first)."""
    import yaml

    doc = copy.deepcopy(_document(config))
    base = Path(config.source.split("#", 1)[0]).parent
    for t in (doc.get("targets") or {}).values():
        price = t.get("price") if isinstance(t, dict) else None
        if isinstance(price, dict) and isinstance(price.get("from_litellm"), str):
            path = Path(price["from_litellm"])
            price["from_litellm"] = str(path if path.is_absolute() else (base / path).resolve())
    edit(doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    source = f"{config.source.split('#', 1)[0]}#{label}"
    try:
        derived = load_config_text(text, source)
    except ConfigError as e:  # the loader's reason, e.g. a data class the pool may not hold
        raise _cannot(
            f"the table '{label}' derived from '{config.source}' is invalid: {e}"
        ) from None
    _DERIVED[source] = text
    return derived


def _set_replicas(doc: dict[str, Any], target: str, replicas: int) -> None:
    """The pool `target` with `replicas` replicas, each like the original ones (cycled)."""
    if not 1 <= replicas <= MAX_POOL:
        raise _cannot(f"a pool has 1 to {MAX_POOL} replicas (asked for {replicas})")
    original = doc["targets"][target]["replicas"]
    doc["targets"][target]["replicas"] = [
        {**original[i % len(original)], "endpoint": f"http://127.0.0.1:{FIRST_PORT + i}"}
        for i in range(replicas)
    ]


def _route(
    doc: dict[str, Any],
    scenario: str,
    target: str,
    fallback: list[str],
    spillover: dict[str, Any] | None,
) -> None:
    s = doc["scenarios"][scenario]
    s["routes"] = [{"target": target}]
    s.pop("spillover", None)
    s.pop("fallback", None)
    if fallback:
        s["fallback"] = fallback
    if spillover is not None:
        s["spillover"] = spillover


def _maas_fallbacks(config: Config, doc: dict[str, Any], scenario: str, first: str) -> list[str]:
    """`first`, then the scenario's MaaS fallbacks after it."""
    chain = doc["scenarios"][scenario].get("fallback") or []
    return [first] + [t for t in chain if t != first and _kind(config, t) == "maas"]


def pool_table(config: Config, scenario: str, target: str, replicas: int) -> Config:
    """`config` with `scenario` routed only to the self-hosted `target` (no fallback, no
    spillover), a pool of `replicas` replicas."""
    _scenario(config, scenario)
    _self_hosted(config, target)

    def edit(doc: dict[str, Any]) -> None:
        _set_replicas(doc, target, replicas)
        _route(doc, scenario, target, [], None)

    return _derive(config, f"pool:{scenario}:{target}x{replicas}", edit)


def hybrid_table(
    config: Config,
    scenario: str,
    target: str,
    replicas: int,
    maas: str,
    *,
    spill_at: int | None = None,
) -> Config:
    """`config` with `scenario` on the self-hosted `target` (`replicas` replicas, for the base
    load), spilling over to `maas` when the pool is busy and falling back to it (then to the
    scenario's other MaaS fallbacks). The pool is busy at the scenario's own
    ``when_inflight_ratio`` (else 0.9) of its replicas' ``max_inflight``; with `spill_at`, each
    replica takes at most `spill_at` requests (its ``max_inflight``) and the rest spill over."""
    _scenario(config, scenario)
    _self_hosted(config, target)
    _maas(config, maas)
    if spill_at is not None and spill_at < 1:
        raise _cannot(f"a replica spills over from at least 1 request in flight (got {spill_at})")

    def edit(doc: dict[str, Any]) -> None:
        _set_replicas(doc, target, replicas)
        ratio = (doc["scenarios"][scenario].get("spillover") or {}).get("when_inflight_ratio", 0.9)
        if spill_at is not None:
            for replica in doc["targets"][target]["replicas"]:
                replica["max_inflight"] = spill_at
            ratio = 1.0
        spill = {"target": maas, "when_inflight_ratio": ratio}
        _route(doc, scenario, target, _maas_fallbacks(config, doc, scenario, maas), spill)

    label = f"hybrid:{scenario}:{target}x{replicas}+{maas}"
    return _derive(config, label if spill_at is None else f"{label}@{spill_at}", edit)


def maas_table(config: Config, scenario: str, maas: str) -> Config:
    """`config` with `scenario` routed only to `maas` (falling back to the scenario's other MaaS
    fallbacks, no spillover)."""
    _scenario(config, scenario)
    _maas(config, maas)

    def edit(doc: dict[str, Any]) -> None:
        fallback = _maas_fallbacks(config, doc, scenario, maas)[1:]
        _route(doc, scenario, maas, fallback, None)

    return _derive(config, f"maas:{scenario}:{maas}", edit)


# ---------------------------------------------------------------------------------------------
# Sizing


@dataclass(frozen=True)
class Sizing:
    """The smallest pool meeting the SLO at peak, with the runs that show it."""

    target: str
    replicas: int  # smallest pool meeting the SLO at peak
    at_peak: Measure  # that pool at peak
    below: Measure | None  # one replica fewer at peak (None when replicas == 1)
    trials: list[Measure] = field(default_factory=list)  # every pool size simulated, in order
    replica_rps: float = 0.0  # peak_rps / replicas: the load one replica carries within the SLO


def size_pool(
    config: Config,
    scenario: str,
    target: str,
    demand: Demand,
    *,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    slo: Slo | None = None,
    max_replicas: int = MAX_POOL,
    duration_s: float = 600.0,
    seed: int = 0,
) -> Sizing:
    """The smallest pool of the self-hosted `target` whose run at ``demand.peak_rps`` for
    `duration_s` (:func:`measure` on :func:`pool_table`) meets `slo` (default: the scenario's):
    p95 TTFT and latency within the bounds and no failed request. Raises :class:`PlanError` when
    the scenario has no SLO, the target is not self-hosted, the model serves nothing, one request
    alone is beyond the SLO, or no pool of up to `max_replicas` meets it."""
    _scenario(config, scenario)
    _self_hosted(config, target)
    if not 1 <= max_replicas <= MAX_POOL:
        raise _cannot(f"max_replicas must be 1 to {MAX_POOL} (got {max_replicas})")
    if slo is None:
        slo = Slo.of(config, scenario)
    if not slo.bounded:
        raise _cannot(
            f"scenario '{scenario}' has no SLO to size a pool to: set slo.ttft_p95_ms or "
            "slo.latency_p95_ms in the routing table (or pass slo=Slo(...))"
        )
    throughput = _output_tokens_per_s(config, target, models)
    _check_one_request(config, scenario, target, demand, models, seed, slo)

    peak = demand.peak_rps
    runs: dict[int, Measure] = {}
    trials: list[Measure] = []

    def met(n: int) -> bool:
        if n not in runs:
            runs[n] = measure(
                pool_table(config, scenario, target, n),
                scenario,
                demand,
                rate_rps=peak,
                duration_s=duration_s,
                models=models,
                seed=seed,
                slo=slo,
                table=f"{target}x{n}",
            )
            trials.append(runs[n])
        return runs[n].slo_met

    first = 1
    if throughput is not None:
        first = math.ceil(peak * demand.output_tokens / throughput - 1e-9)
    first = min(max(first, 1), max_replicas)
    # lo: a size known to fail (0 always does), hi: one known to meet the SLO.
    if met(first):
        lo, hi = 0, first
        if first > 1:
            if met(first - 1):
                hi = first - 1
            else:
                lo = first - 1
    else:
        lo, hi, step = first, None, 1
        while hi is None:
            n = min(lo + step, max_replicas)
            if met(n):
                hi = n
            elif n == max_replicas:
                raise _unservable(scenario, target, peak, slo, runs, max_replicas)
            else:
                lo, step = n, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if met(mid):
            hi = mid
        else:
            lo = mid
    return Sizing(
        target=target,
        replicas=hi,
        at_peak=runs[hi],
        below=runs[lo] if lo > 0 else None,
        trials=trials,
        replica_rps=peak / hi,
    )


def _output_tokens_per_s(
    config: Config, target: str, models: Mapping[str, Mapping[str, Any]] | None
) -> float | None:
    """One replica's output tokens/s at saturation, as its performance model publishes it (the
    model's ``throughput`` row, else the table's ``cost.decode_tokens_per_s``); None if neither."""
    model = (models or {}).get(target) or {}
    row = model.get("throughput")
    if isinstance(row, Mapping) and "output_tokens_per_s" in row:
        tps = row["output_tokens_per_s"]
        if isinstance(tps, (int, float)) and not tps > 0:
            raise _cannot(
                f"the performance model of '{target}' has no throughput "
                f"(models['{target}'].throughput.output_tokens_per_s = {tps}): its pool serves "
                "nothing at any size"
            )
        return float(tps) if isinstance(tps, (int, float)) else None
    cost = config.target_info(target).get("cost") or {}
    decode = cost.get("decode_tokens_per_s")
    return float(decode) if decode else None


def _check_one_request(
    config: Config,
    scenario: str,
    target: str,
    demand: Demand,
    models: Mapping[str, Mapping[str, Any]] | None,
    seed: int,
    slo: Slo,
) -> None:
    """PlanError when one request of the demand's median sizes, alone on one replica, is already
    beyond the SLO: no pool size can help."""
    request = (
        f"a single request of {demand.input_tokens} input and {demand.output_tokens} output tokens"
    )
    try:
        res = replay(
            pool_table(config, scenario, target, 1),
            [_one_request(demand, scenario)],
            models=models,
            seed=seed,
            scenario=scenario,
        )
    except NoEligibleTargetError as e:  # refused before it runs: "<trace>:1: <reason>"
        reason = str(e).split(": ", 1)[-1]
        raise _cannot(
            f"{request} cannot go to '{target}' (scenario '{scenario}'): {reason}"
        ) from None
    r = res.request_columns
    if r["outcome"][0] == "failed":
        raise _cannot(
            f"{request} fails on one replica of '{target}' (scenario '{scenario}'): {r['error'][0]}"
        )
    for what, value, bound in (
        ("TTFT", float(r["ttft_ms"][0]), slo.ttft_p95_ms),
        ("latency", float(r["latency_ms"][0]), slo.latency_p95_ms),
    ):
        if not _within(value, bound):
            raise _cannot(
                f"{request} alone on one replica of '{target}' takes {what} {value:.0f} ms, "
                f"beyond scenario '{scenario}''s SLO of {bound:g} ms: no pool size can meet it"
            )


def _unservable(
    scenario: str, target: str, peak: float, slo: Slo, runs: dict[int, Measure], largest: int
) -> PlanError:
    """No pool met the SLO: the best p95s any pool size reached, against the bounds."""

    def best(values: list[float | None], bound: float | None) -> str:
        seen = [v for v in values if v is not None]
        shown = f"{min(seen):.0f} ms" if seen else "none completed"
        return shown + ("" if bound is None else f" (bound {bound:g} ms)")

    ttft = best([m.ttft_p95_ms for m in runs.values()], slo.ttft_p95_ms)
    latency = best([m.latency_p95_ms for m in runs.values()], slo.latency_p95_ms)
    return _cannot(
        f"no pool of up to {largest} replicas of '{target}' serves scenario '{scenario}' at its "
        f"peak of {peak:.4g} requests/s within the SLO: the best p95s seen over {len(runs)} pool "
        f"sizes were TTFT {ttft} and latency {latency}; the largest pool had "
        f"{runs[largest].failed} of {runs[largest].requests} requests failed"
    )


__all__ = [
    "Demand",
    "Measure",
    "PlanError",
    "Sizing",
    "Slo",
    "hybrid_table",
    "maas_table",
    "measure",
    "pool_table",
    "size_pool",
    "synthetic_load",
]
