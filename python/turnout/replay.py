"""Replay a trace through a routing table in the what-if engine, and read the results.

The decisions are the production ones: every request goes through the real ``Router`` (decide,
commit, report, directories, breakers, budgets, spillover) in ``turnout._core.Simulation``, on a
simulated clock, against simulated MaaS providers (their own prompt caches, latency, rate limits,
outages) and self-hosted replicas (continuous batching, a true KV cache, queueing). This module
feeds it a trace (:mod:`turnout.traces`) and turns its result columns into DataFrames and the
per-policy summary; :func:`sweep` replays several tables (and seeds) in parallel processes. The
command and the summary's keys: docs/replay.md, "Replaying".
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from turnout import _core
from turnout._errors import InvalidArgumentError, ModelsError, TraceError, TurnoutError
from turnout.traces import (
    ReadStats,
    TraceColumns,
    TraceReader,
    TraceRow,
    columns_from_rows,
    scenario_resolver,
)

_PICO = Decimal(1).scaleb(-12)
SERIES_INTERVAL_S = 60.0
"""Width of the result's time-series intervals (per-minute series)."""

SUMMARY_KEYS = (
    "requests",
    "served",
    "fallbacks",
    "failed",
    "cost_usd",
    "accepted",
    "cost_per_accepted_usd",
    "ttft_ms",
    "latency_ms",
    "cache_hit_rate",
    "gpu_hours",
    "utilization",
    "scenarios",
    "migrations",
)
"""The keys of a policy's summary (``turnout replay --json`` prints one object per policy)."""

SCENARIO_KEYS = (
    "requests",
    "ttft_slo_attainment",
    "latency_slo_attainment",
    "slo_met",
    "accept_rate",
    "quality_gate",
)
"""The keys of each scenario's entry in a summary's ``scenarios``."""

MIGRATION_KEYS = (
    "baseline",
    "candidate",
    "stage",
    "steps",
    "outcome",
    "transitions",
    "abort",
)
"""The keys of each scenario's entry in a summary's ``migrations``; see
docs/replay.md, "Rehearsing a canary"."""

MIGRATION_OUTCOMES = {
    "pending": "pending",
    "ramp": "ramping",
    "paused": "paused",
    "promoted": "promoted",
    "aborted": "aborted",
}
"""A migration's outcome in a replay by the phase it ended in (``ramping``, ``paused``: at the
trace's end)."""

Bounds = Mapping[str, float | None]
"""A scenario's ``ttft_p95_ms``, ``latency_p95_ms`` and ``min_accept_rate`` (None: not set)."""


def scenario_bounds(config: _core.Config) -> dict[str, dict[str, float | None]]:
    """Each scenario's SLO and quality gate, as the routing table sets them (:data:`Bounds`)."""
    out: dict[str, dict[str, float | None]] = {}
    for name in config.scenarios:
        info = config.scenario_info(name)
        out[name] = {k: info.get(k) for k in ("ttft_p95_ms", "latency_p95_ms", "min_accept_rate")}
    return out


Progress = Callable[[int, int], None]
Trace = str | os.PathLike[str] | TraceReader | Iterable[TraceColumns] | Iterable[TraceRow]


def load_models(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The simulated models of a JSON file: ``{target: {key: value, ...}, ...}`` (the keys of
    ``turnout._core.Simulation``; docs/replay.md). The shape is checked here, each model's keys by
    the simulator."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelsError(f"{p}: cannot open: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ModelsError(f"{p}:{e.lineno}: not JSON: {e.msg}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ModelsError(f"{p}: must be a JSON object of target name -> model object")
    return data


def to_picodollar(value: Decimal) -> Decimal:
    """`value` (USD) rounded half to even to the picodollar, the ledger's unit (zero reads "0")."""
    rounded = value.quantize(_PICO, rounding=ROUND_HALF_EVEN)
    return rounded if rounded else Decimal(0)


def usd(picos: int) -> Decimal:
    """Exact USD of an integer amount of picodollars (zero reads "0", not "0E-12")."""
    picos = int(picos)
    return Decimal(picos).scaleb(-12) if picos else Decimal(0)


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


def summarize(
    requests: Mapping[str, Any],
    series: Mapping[str, Any],
    summary: Mapping[str, Any],
    scenarios: Mapping[str, Bounds] | None = None,
    migrations: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A policy's summary (:data:`SUMMARY_KEYS`) from a simulation's result columns. Money is summed
    as integer picodollars and given as exact ``Decimal`` USD; latencies and cache hit rates are
    over the requests that completed (served or fallen back). ``scenarios`` holds an entry per
    scenario of the requests (:func:`scenario_summary`) against `scenarios`' bounds
    (:func:`scenario_bounds`; a scenario without an entry is unbounded); ``migrations`` an entry per
    migration of the table (:func:`migration_summary` of the simulation's ``migrations``)."""
    outcome = np.asarray(requests["outcome"], dtype=object)
    n = len(outcome)
    done = outcome != "failed"
    cost_picos = sum(int(c) for c in np.asarray(requests["cost_picos"], dtype=np.int64).tolist())
    accepted_flags = np.asarray(requests["accepted"], dtype=np.int8)
    accepted = int(np.count_nonzero((accepted_flags == 1) & done))
    cost = usd(cost_picos)
    input_tokens = int(np.asarray(requests["input_tokens"], dtype=np.int64)[done].sum())

    def hit_rate(column: str) -> float | None:
        if input_tokens == 0:
            return None
        cached = int(np.asarray(requests[column], dtype=np.int64)[done].sum())
        return round(cached / input_tokens, 6)

    utilization = summary.get("utilization")
    if utilization is None:
        u = np.asarray(series.get("utilization", []), dtype=np.float64)
        utilization = float(u.mean()) if u.size else None
    return {
        "requests": n,
        "served": int(np.count_nonzero(outcome == "served")),
        "fallbacks": int(np.count_nonzero(outcome == "fallback")),
        "failed": int(np.count_nonzero(~done)),
        "cost_usd": cost,
        "accepted": accepted,
        "cost_per_accepted_usd": (
            to_picodollar(cost / accepted) if accepted else None
        ),
        "ttft_ms": _percentiles(np.asarray(requests["ttft_ms"], dtype=np.float64)[done]),
        "latency_ms": _percentiles(np.asarray(requests["latency_ms"], dtype=np.float64)[done]),
        "cache_hit_rate": {
            "predicted": hit_rate("cached_predicted"),
            "realized": hit_rate("cached_realized"),
        },
        "gpu_hours": float(summary.get("gpu_hours", 0.0)),
        "utilization": None if utilization is None else round(float(utilization), 6),
        "scenarios": scenario_summary(requests, scenarios or {}),
        "migrations": migration_summary(migrations or {}),
    }


def migration_summary(migrations: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per scenario with a migration (:data:`MIGRATION_KEYS`), from the simulation's
    ``migrations``: its baseline, candidate, stage and steps; the ``outcome``
    (:data:`MIGRATION_OUTCOMES`: ``promoted``, ``aborted``, ``paused`` or ``ramping`` at the
    trace's end, ``pending`` when the canary never began); every transition (``at_s`` from the
    first arrival, ``from``, ``to``, ``step``, ``percent``, ``cause``, ``detail``, ``requests``:
    the scenario's requests arrived before it, ``candidate_requests``: those placed on the
    candidate); and for an abort, ``abort``: when, after how many requests, and what the candidate
    had cost by then (:func:`_regression_cost`). Else ``abort`` is null."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in migrations.items():
        moves = list(m.get("transitions", ()))
        last = moves[-1]["to"] if moves else "pending"
        abort = None
        if last == "aborted":
            end = moves[-1]
            abort = {
                "at_s": end["at_s"],
                "cause": end["cause"],
                "requests": int(end["requests"]),
                "candidate_requests": int(end["candidate"]["requests"]),
                "cost_of_regression": _regression_cost(end),
            }
        out[name] = {
            "baseline": m["baseline"],
            "candidate": m["candidate"],
            "stage": m["stage"],
            "steps": list(m["steps"]),
            "outcome": MIGRATION_OUTCOMES[last],
            "transitions": [
                {
                    "at_s": round(float(t["at_s"]), 3),
                    "from": t["from"],
                    "to": t["to"],
                    "step": int(t["step"]),
                    "percent": int(t["percent"]),
                    "cause": t["cause"],
                    "detail": t["detail"],
                    "requests": int(t["requests"]),
                    "candidate_requests": int(t["candidate"]["requests"]),
                }
                for t in moves
            ],
            "abort": abort,
        }
    return out


def _regression_cost(move: Mapping[str, Any]) -> dict[str, Any]:
    """What the candidate cost until `move`: its answers' cost (``candidate_usd``), what they would
    have cost at the baseline's mean cost per answer so far (``baseline_equivalent_usd``), the
    difference (``extra_usd``, exact; negative when the candidate is cheaper), and its outcomes that
    failed (``failed``) and answers rejected by the quality verdict (``rejected``)."""
    candidate = move["candidate"]
    spent, equivalent = int(candidate["cost_picos"]), int(move["baseline_equivalent_picos"])
    return {
        "candidate_usd": usd(spent),
        "baseline_equivalent_usd": usd(equivalent),
        "extra_usd": usd(spent - equivalent),
        "failed": int(candidate["errors"]),
        "rejected": int(candidate["rejected"]),
    }


def scenario_summary(
    requests: Mapping[str, Any], scenarios: Mapping[str, Bounds]
) -> dict[str, dict[str, Any]]:
    """Per scenario of the requests (:data:`SCENARIO_KEYS`), over its completed requests: the share
    within the TTFT and the latency bound, whether both p95s are within them (``slo_met``; null
    when the scenario sets neither), the share accepted, and the quality gate (``"pass"`` when
    that share reaches ``min_accept_rate``, else ``"fail"``; null without a gate or without a
    completed request)."""
    names = np.asarray(requests["scenario"], dtype=object)
    done_all = np.asarray(requests["outcome"], dtype=object) != "failed"
    ttft_all = np.asarray(requests["ttft_ms"], dtype=np.float64)
    latency_all = np.asarray(requests["latency_ms"], dtype=np.float64)
    accepted_all = np.asarray(requests["accepted"], dtype=np.int8) == 1
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({str(n) for n in names.tolist()}):
        mine = names == name
        done = mine & done_all
        bounds = scenarios.get(name) or {}
        ttft_bound, latency_bound = bounds.get("ttft_p95_ms"), bounds.get("latency_p95_ms")
        ttft, latency = ttft_all[done], latency_all[done]
        slo_met = None
        if ttft_bound is not None or latency_bound is not None:
            slo_met = _p95_within(ttft, ttft_bound) and _p95_within(latency, latency_bound)
        accept_rate = _share(accepted_all[done]) if ttft.size else None
        accepted = int(np.count_nonzero(accepted_all[done]))
        gate = bounds.get("min_accept_rate")
        out[name] = {
            "requests": int(np.count_nonzero(mine)),
            "ttft_slo_attainment": None if ttft_bound is None else _share(ttft <= ttft_bound),
            "latency_slo_attainment": (
                None if latency_bound is None else _share(latency <= latency_bound)
            ),
            "slo_met": slo_met,
            "accept_rate": accept_rate,
            "quality_gate": (
                None
                if gate is None or accept_rate is None
                # the share itself, not its 6-digit rounding (0.9499996 is below 0.95)
                else ("pass" if accepted / ttft.size >= gate else "fail")
            ),
        }
    return out


def _share(flags: np.ndarray) -> float | None:
    """The share of true flags (None when there are none at all)."""
    return round(float(np.count_nonzero(flags)) / flags.size, 6) if flags.size else None


def _p95_within(values: np.ndarray, bound: float | None) -> bool:
    """Whether the p95 of `values` is within `bound` (no bound: yes; no value: no)."""
    p95 = _percentiles(values)["p95"]
    return bound is None or (p95 is not None and p95 <= bound)


def _frame(columns: Mapping[str, Any]) -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the test extra
        raise ImportError("result frames need pandas: pip install 'turnout[frames]'") from None
    return pd.DataFrame({k: np.asarray(v) for k, v in columns.items()})


@dataclass
class ReplayResult:
    """What a replay produced: per-request and per-interval columns (as DataFrames through
    :attr:`requests` and :attr:`series`), the policy's :attr:`summary`, the simulator's own summary
    (``gpu_hours``, ``simulated_s``, per-target stats), what reading the trace found, and the
    table's migrations as the simulation ran them (:attr:`migrations`: per scenario, every move
    with both arms' tallies; the summary's ``migrations`` condenses them)."""

    request_columns: dict[str, Any]
    series_columns: dict[str, Any]
    sim_summary: dict[str, Any]
    read: ReadStats = field(default_factory=ReadStats)
    scenarios: dict[str, dict[str, float | None]] = field(default_factory=dict)  # their bounds
    migrations: dict[str, dict[str, Any]] = field(default_factory=dict)  # the simulation's moves

    @property
    def requests(self) -> Any:
        """One row per request: arrival_s, scenario, target, replica, outcome, attempts, queue_ms,
        ttft_ms, latency_ms, cached_predicted, cached_realized, input/output tokens, cost_picos
        (exact integers), accepted, error."""
        return _frame(self.request_columns)

    @property
    def series(self) -> Any:
        """One row per interval: t_s, arrivals, in_flight, queue_depth, utilization, cost_picos."""
        return _frame(self.series_columns)

    @property
    def summary(self) -> dict[str, Any]:
        """The policy's summary (:data:`SUMMARY_KEYS`; money as exact ``Decimal`` USD)."""
        return summarize(
            self.request_columns,
            self.series_columns,
            self.sim_summary,
            self.scenarios,
            self.migrations,
        )

    @property
    def cost_usd(self) -> Decimal:
        """The replay's whole cost, exact."""
        return self.summary["cost_usd"]

    def write(self, out: str | os.PathLike[str]) -> None:
        """Writes ``requests.parquet`` and ``series.parquet`` (CSV without pyarrow) and
        ``summary.json`` into the folder `out`."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        _write_table(folder / "requests", self.request_columns)
        _write_table(folder / "series", self.series_columns)
        (folder / "summary.json").write_text(
            json.dumps(self.summary, default=_json_default, indent=2) + "\n", encoding="utf-8"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _write_table(stem: Path, columns: Mapping[str, Any]) -> Path:
    """`columns` as ``stem.parquet``, or ``stem.csv`` when pyarrow is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        import csv

        path = stem.with_suffix(".csv")
        names = list(columns)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            writer.writerows(zip(*(np.asarray(columns[c]).tolist() for c in names), strict=False))
        return path
    path = stem.with_suffix(".parquet")
    table = pa.table({k: pa.array(np.asarray(v)) for k, v in columns.items()})
    pq.write_table(table, path)
    return path


def _chunks(
    trace: Trace, format: str, skip_bad: bool
) -> tuple[Iterable[TraceColumns], str, TraceReader | None]:
    """The trace as chunks of columns, where it comes from (for errors), and its reader if any."""
    if isinstance(trace, (str, os.PathLike)):
        trace = TraceReader(trace, format, skip_bad=skip_bad)
    if isinstance(trace, TraceReader):
        return trace.chunks(), str(trace.path), trace
    items = iter(trace)
    first = next(items, None)
    if first is None:
        return [], "<trace>", None

    def rest() -> Iterable[Any]:
        yield first
        yield from items

    if isinstance(first, TraceColumns):
        return rest(), "<trace>", None
    return columns_from_rows(rest()), "<trace>", None


def replay(
    config: _core.Config,
    trace: Trace,
    *,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    precise_kv: bool = True,
    format: str = "auto",
    scenario: str | None = None,
    skip_bad: bool = False,
    series_interval_s: float = SERIES_INTERVAL_S,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replays `trace` (a file path, a :class:`~turnout.traces.TraceReader`, chunks of columns, or
    :class:`~turnout.traces.TraceRow` s / Turnout-format dicts) through the table `config` in the
    simulator. Requests naming no scenario go to `scenario`, or to the table's only one; unknown
    scenarios raise :class:`~turnout.UnknownScenarioError`. ``progress(done, total)`` is called as
    the simulation runs; Ctrl-C stops it (``KeyboardInterrupt``). Deterministic for a given seed."""
    resolve = scenario_resolver(config.scenarios, scenario)
    chunks, where, reader = _chunks(trace, format, skip_bad)
    stream = iter(chunks)
    first = next(stream, None)  # a trace's first errors come before the simulator is built
    stats = reader.stats if reader is not None else ReadStats()  # this read's (chunks() began it)
    if first is None:
        raise TraceError(f"{where}: the trace holds no request")
    resolve(first, where)
    sim = _core.Simulation(
        config,
        {k: dict(v) for k, v in (models or {}).items()},
        seed=seed,
        precise_kv=precise_kv,
        series_interval_s=series_interval_s,
    )
    added = _add(sim, first, where, 0, stats, skip_bad)
    for chunk in stream:
        resolve(chunk, where)
        added = _add(sim, chunk, where, added, stats, skip_bad)
    if reader is None:
        stats.requests = added
    if added == 0:
        raise TraceError(f"{where}: the simulator refused every request of the trace")
    res = sim.run(progress=progress)
    return ReplayResult(
        request_columns=dict(res["requests"]),
        series_columns=dict(res["series"]),
        sim_summary=dict(res["summary"]),
        read=stats,
        scenarios=scenario_bounds(config),
        migrations=dict(res["migrations"]),
    )


_REFUSED = re.compile(r"request (\d+): (.*)", re.DOTALL)


def _add(
    sim: Any, chunk: TraceColumns, where: str, added: int, stats: ReadStats, skip_bad: bool
) -> int:
    """Adds a chunk to the simulator; returns how many requests it holds now. A request the
    simulator refuses ("request N: ...", N counting every request added) is reported at its line
    of the trace; with `skip_bad`, a refused value (invalid_argument) is counted and skipped."""
    while len(chunk):
        try:
            sim.add(**chunk.add_kwargs())
            return added + len(chunk)
        except TurnoutError as e:
            refused = _REFUSED.match(str(e))
            if refused is None:
                raise
            i = int(refused.group(1)) - added  # the requests before it stayed added
            line = int(chunk.lines[i]) if chunk.lines is not None else added + i + 1
            message = f"{where}:{line}: {refused.group(2)}"
            if not (skip_bad and isinstance(e, InvalidArgumentError)):
                error = type(e)(message)
                error.code = e.code
                raise error from None
            stats.skip(message)
            added += i
            chunk = chunk.tail(i + 1)
    return added


# ---------------------------------------------------------------------------------------------
# Sweeps: several tables (and seeds) over one trace, in parallel processes.


@dataclass(frozen=True)
class Job:
    """One replay of a sweep: a table (by path) over a trace file, with a seed."""

    policy: str
    config: str
    trace: str
    seed: int = 0
    format: str = "auto"
    scenario: str | None = None
    models: Mapping[str, Mapping[str, Any]] | None = None
    precise_kv: bool = True
    skip_bad: bool = False
    out: str | None = None  # the job's results go in out/<label>
    name: str | None = None  # its label in results, bars and files (default: the policy)

    @property
    def label(self) -> str:
        """The job's name in a sweep: ``name``, else the policy."""
        return self.name or self.policy


@dataclass
class JobResult:
    """What one job of a sweep returns to the parent: the summary and the trace's read stats."""

    job: Job
    summary: dict[str, Any]
    read: ReadStats


_progress_queue: Any = None


def _init_worker(queue: Any) -> None:
    # The parent alone answers Ctrl-C: it terminates the workers, which print nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _progress_queue
    _progress_queue = queue


def run_job(job: Job, progress: Progress | None = None) -> JobResult:
    """Runs one job (in this process): loads its table, replays, writes its results if asked."""
    from turnout import load_config

    if progress is None and _progress_queue is not None:
        queue = _progress_queue
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if done == total or now - last[0] >= 0.2:
                last[0] = now
                queue.put((job.label, done, total))

    result = replay(
        load_config(job.config),
        job.trace,
        models=job.models,
        seed=job.seed,
        precise_kv=job.precise_kv,
        format=job.format,
        scenario=job.scenario,
        skip_bad=job.skip_bad,
        progress=progress,
    )
    if job.out is not None:
        result.write(Path(job.out) / job.label)
    return JobResult(job, result.summary, result.read)


class _Bars:
    """One progress bar per job on stderr (tqdm)."""

    def __init__(self, labels: Sequence[str], enabled: bool) -> None:
        from tqdm import tqdm

        self._bars = {
            label: tqdm(
                desc=label,
                total=0,
                unit="req",
                unit_scale=True,
                position=i,
                leave=True,
                disable=not enabled,
                mininterval=0.2,
            )
            for i, label in enumerate(labels)
        }

    def update(self, label: str, done: int, total: int) -> None:
        bar = self._bars[label]
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def sweep(
    jobs: Sequence[Job], *, processes: int | None = None, progress: bool = True
) -> list[JobResult]:
    """Runs `jobs`, in parallel processes when more than one process is allowed, with a progress
    bar per job on stderr. Results come back in the jobs' order. The first error stops the sweep
    and is raised; Ctrl-C terminates the workers and raises ``KeyboardInterrupt``."""
    labels = [job.label for job in jobs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two jobs have the same name: {labels}")
    processes = min(processes or os.cpu_count() or 1, len(jobs))
    bars = _Bars(labels, progress)
    try:
        if processes <= 1:
            return [
                run_job(job, lambda d, t, label=job.label: bars.update(label, d, t))
                for job in jobs
            ]
        return _parallel(jobs, processes, bars)
    finally:
        bars.close()


def _parallel(jobs: Sequence[Job], processes: int, bars: _Bars) -> list[JobResult]:
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    executor = ProcessPoolExecutor(
        max_workers=processes, mp_context=ctx, initializer=_init_worker, initargs=(queue,)
    )
    futures: list[Future[JobResult]] = [executor.submit(run_job, job) for job in jobs]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
            while True:
                try:
                    label, d, t = queue.get_nowait()
                except queue_module.Empty:
                    break
                bars.update(label, d, t)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]
    except BaseException:
        _terminate(executor)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        queue.close()
        queue.join_thread()


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stops a pool's workers now (Ctrl-C, or another job failed): no result is waited for."""
    processes = dict(getattr(executor, "_processes", None) or {})  # no public way before 3.14
    executor.shutdown(wait=False, cancel_futures=True)
    for p in processes.values():
        if p.is_alive():
            p.terminate()
    for p in processes.values():
        p.join(timeout=5)


def summary_json(result: JobResult) -> str:
    """A job's summary as one line of JSON (money as decimal strings)."""
    return json.dumps(result.summary, default=_json_default)


def write_sweep_summary(out: str | os.PathLike[str], results: Sequence[JobResult]) -> Path:
    """``out/summary.json``: each job's summary by its name."""
    path = Path(out) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {r.job.label: {**r.summary, "read": asdict(r.read)} for r in results}
    path.write_text(json.dumps(data, default=_json_default, indent=2) + "\n", encoding="utf-8")
    return path
