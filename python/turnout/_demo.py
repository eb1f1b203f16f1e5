"""The README's first command, ``turnout demo``: MaaS, self-hosted or hybrid, decided on data.

It generates the bundled workload (support-summarization traffic: shared system prompts, multi-turn
sessions, a diurnal curve and bursts; a fixed seed), replays it in the what-if engine under the
MaaS-only, self-hosted-only and hybrid tables (the notebooks' ``policies/``) with a progress bar per
policy, prints the comparison (availability, cost per accepted outcome marginal and fully loaded,
TTFT and latency, cache hit rate predicted vs realized, SLO attainment, quality gate) and the
decision record of each bundled scenario file (``examples/scenarios/``), and writes the plots, the
replays and the records to an output folder it names at the end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

import turnout
from turnout import TurnoutError
from turnout.replay import Job, sweep, to_picodollar, usd

POLICIES = ("maas_only", "self_hosted_only", "hybrid")
"""The three tables compared, by their file names in the bundled ``policies/``."""

SCENARIO = ("support-summarization", "deidentified")
"""The scenario the workload is made of (with its data class), as the policy tables name it."""

DEFAULT_REQUESTS = 20_000
RATE_RPS = 5.0  # mean arrival rate: the two-replica pool runs at about 80 % busy, bursts spill over
DEFAULT_SEED = 7
DEFAULT_OUT = "turnout-demo-out"


class DemoError(TurnoutError):
    """The demo cannot run: a missing optional dependency or an unusable output folder."""


def bundled(kind: str, name: str = "") -> Path:
    """A bundled example file or folder: ``kind`` is "routing.yaml", "policies" or "scenarios".
    Installed, they are in ``turnout/examples/``; in a source checkout, ``policies/`` is under
    ``notebooks/`` (the notebooks use the same tables) and the rest under ``examples/``."""
    installed = Path(str(resources.files("turnout"))) / "examples" / kind / name
    if installed.exists():
        return installed
    root = Path(__file__).resolve().parents[2]
    source = (root / "notebooks" if kind == "policies" else root / "examples") / kind / name
    return source


def simulated_models(start_s: float, end_s: float) -> dict[str, dict[str, Any]]:
    """The simulated targets (docs/replay.md, "Simulated providers"): MaaS latency, error rates and
    quality, and an outage of gpt-4.1-mini over a tenth of the traffic's span (30 % of calls fail:
    fallbacks and failures show in availability); the pool keeps its table's replicas."""
    span = max(end_s - start_s, 60.0)
    return {
        "gpt-4.1-mini": {
            "ttft_ms": {"p50": 450, "p95": 1200},
            "output_tokens_per_s": {"p50": 110, "p95": 60},
            "accept_rate": 0.96,
            "error_rate": 0.005,
            "outages": [
                {
                    "from_s": start_s + 0.4 * span,
                    "to_s": start_s + 0.5 * span,
                    "error_rate": 0.3,
                    "status": "error",
                }
            ],
        },
        "claude-sonnet-4": {
            "ttft_ms": {"p50": 700, "p95": 1800},
            "output_tokens_per_s": {"p50": 70, "p95": 40},
            "accept_rate": 0.98,
        },
        "llama-70b": {"accept_rate": 0.95},
    }


@dataclass(frozen=True)
class Workload:
    """The generated trace on disk and what it holds."""

    path: Path
    requests: int
    seed: int
    rate_rps: float
    start_s: float
    end_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": str(self.path),
            "scenario": SCENARIO[0],
            "requests": self.requests,
            "seed": self.seed,
            "rate_rps": self.rate_rps,
            "hours": round((self.end_s - self.start_s) / 3600, 3),
        }


def write_workload(folder: Path, requests: int, seed: int) -> Workload:
    """Generates the bundled workload into ``folder/workload.parquet`` (``.jsonl`` without
    pyarrow)."""
    from turnout.traces import TraceWriter
    from turnout.workload import generate

    try:
        import pyarrow  # noqa: F401

        path, fmt = folder / "workload.parquet", "parquet"
    except ImportError:
        path, fmt = folder / "workload.jsonl", "turnout"
    start, end = math.inf, -math.inf
    with TraceWriter(path, fmt) as writer:  # type: ignore[arg-type]
        for chunk in generate(requests, seed=seed, rate=RATE_RPS, scenarios=[SCENARIO]):
            start = min(start, float(chunk.arrival_s[0]))
            end = max(end, float(chunk.arrival_s[-1]))
            writer.write_columns(chunk)
    return Workload(path, requests, seed, RATE_RPS, start, end)


def _requests_frame(folder: Path) -> Any:
    """A replay's per-request table as written by the sweep (Parquet, or CSV without pyarrow)."""
    import pandas as pd

    parquet = folder / "requests.parquet"
    return pd.read_parquet(parquet) if parquet.exists() else pd.read_csv(folder / "requests.csv")


GATE_KEYS = (
    "ttft_slo_attainment",
    "latency_slo_attainment",
    "slo_met",
    "accept_rate",
    "quality_gate",
)
"""What a replay summary's ``scenarios`` entry says of the SLO and the quality gate."""


def scenario_gate(summary: Mapping[str, Any], scenario: str) -> dict[str, Any]:
    """The SLO attainment and quality gate of `scenario` in a replay summary (its ``scenarios``
    entry, :data:`turnout.replay.SCENARIO_KEYS`); None where the summary has none."""
    entry = (summary.get("scenarios") or {}).get(scenario) or {}
    return {key: entry.get(key) for key in GATE_KEYS}


def policy_row(name: str, config: turnout.Config, summary: Mapping[str, Any], frame: Any) -> dict:
    """One policy's line of the comparison. Marginal: what the requests cost (MaaS tokens, the
    pool's GPU time they used). Fully loaded: MaaS tokens plus the pool's whole provisioned cost
    (every GPU-hour of the replay and the table's monthly extras: staging, canary, engineering...)
    whenever the policy sends it any request."""
    pooled = {t for t in config.targets if config.target_info(t)["kind"] == "self_hosted"}
    on_pool = frame["target"].isin(pooled).to_numpy()
    picos = [int(c) for c in frame["cost_picos"]]
    maas = usd(sum(c for c, p in zip(picos, on_pool, strict=True) if not p))
    marginal_pool = usd(sum(c for c, p in zip(picos, on_pool, strict=True) if p))
    assert maas + marginal_pool == summary["cost_usd"]
    loaded_pool = Decimal(0)
    if on_pool.any():
        router = turnout.Router(config)
        gpus = sum(p["gpus"] for p in router.self_hosted_costs(3600))
        period_s = summary["gpu_hours"] * 3600 / gpus  # the replay's span, as GPU-hours count it
        loaded_pool = sum(
            (p["fully_loaded_usd"] for p in router.self_hosted_costs(period_s)), Decimal(0)
        )
    accepted = summary["accepted"]

    def per_accepted(total: Decimal) -> Decimal | None:
        return to_picodollar(total / accepted) if accepted else None

    hit = summary["cache_hit_rate"]
    return {
        "policy": name,
        "requests": summary["requests"],
        "served": summary["served"],
        "fallbacks": summary["fallbacks"],
        "failed": summary["failed"],
        "availability": round((summary["served"] + summary["fallbacks"]) / summary["requests"], 6),
        "accepted": accepted,
        "maas_usd": maas,
        "self_hosted_marginal_usd": marginal_pool,
        "self_hosted_fully_loaded_usd": loaded_pool,
        "per_accepted_marginal_usd": per_accepted(maas + marginal_pool),
        "per_accepted_fully_loaded_usd": per_accepted(maas + loaded_pool),
        "ttft_p95_ms": summary["ttft_ms"]["p95"],
        "latency_p95_ms": summary["latency_ms"]["p95"],
        "cache_hit_predicted": hit["predicted"],
        "cache_hit_realized": hit["realized"],
        "gpu_hours": summary["gpu_hours"],
        **scenario_gate(summary, SCENARIO[0]),
    }


def _plots(out: Path, rows: list[dict[str, Any]], frames: dict[str, Any]) -> list[Path]:
    """cost_per_accepted.png, latency_cdf.png, cache_hit_rate.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["policy"] for r in rows]
    x = np.arange(len(rows))
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, key, label in (
        (-0.2, "per_accepted_marginal_usd", "marginal"),
        (0.2, "per_accepted_fully_loaded_usd", "fully loaded"),
    ):
        ax.bar(x + offset, [float(r[key] or 0) for r in rows], width=0.4, label=label)
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_xlabel("policy")
    ax.set_ylabel("cost per accepted outcome (USD, log scale)")
    ax.set_title("Cost per accepted outcome: marginal vs fully loaded")
    ax.legend()
    fig.tight_layout()
    written.append(out / "cost_per_accepted.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, column, what in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "latency_ms", "end-to-end")):
        for name, frame in frames.items():
            values = np.sort(frame.loc[frame["outcome"] != "failed", column].dropna().to_numpy())
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size, label=name)
        ax.set_xscale("log")
        ax.set_xlabel(f"{what} latency (ms, log scale)")
        ax.set_ylabel("share of completed requests")
        ax.set_title(f"{what} latency CDF per policy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    written.append(out / "latency_cdf.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for offset, key, label in (
        (-0.2, "cache_hit_predicted", "predicted by the router"),
        (0.2, "cache_hit_realized", "realized by the caches"),
    ):
        axes[0].bar(x + offset, [100 * (r[key] or 0) for r in rows], width=0.4, label=label)
    axes[0].set_xticks(x, names)
    axes[0].set_xlabel("policy")
    axes[0].set_ylabel("cached input tokens (% of input tokens)")
    axes[0].set_title("Cache hit rate: predicted vs realized")
    axes[0].legend(loc="lower right")
    for name, frame in frames.items():
        done = frame[frame["outcome"] != "failed"]
        hour = ((done["arrival_s"] - done["arrival_s"].min()) // 600).astype(int)
        by = done.groupby(hour)[["cached_realized", "input_tokens"]].sum()
        axes[1].plot(by.index / 6, 100 * by["cached_realized"] / by["input_tokens"], label=name)
    axes[1].set_xlabel("time since the first request (hours, 10-minute bins)")
    axes[1].set_ylabel("realized cache hit rate (%)")
    axes[1].set_title("Realized cache hit rate over time")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    written.append(out / "cache_hit_rate.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def decision_records(out: Path, seed: int) -> list[dict[str, Any]]:
    """The decision record of each bundled scenario file, written as
    ``out/decisions/<name>/record.md`` and ``record.json``; an error is kept as a line."""
    try:
        from turnout.decide import decide, load_scenario
    except ImportError:
        return [{"error": "turnout.decide is not available: no decision records"}]
    records = []
    for path in sorted(bundled("scenarios").glob("*.yaml")):
        try:
            record = decide(load_scenario(path), plan=True, seed=seed)
        except TurnoutError as e:
            records.append({"scenario": path.stem, "file": str(path), "error": str(e)})
            continue
        folder = out / "decisions" / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        data = record.to_json()
        (folder / "record.md").write_text(record.to_markdown(), encoding="utf-8")
        (folder / "record.json").write_text(
            json.dumps(data, default=_json_default, indent=2) + "\n", encoding="utf-8"
        )
        records.append({"scenario": path.stem, "file": str(path), "record": data})
    return records


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _check_dependencies() -> None:
    missing = []
    for module in ("pandas", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DemoError(
            f"the demo needs {' and '.join(missing)} for its tables and plots: "
            "pip install 'turnout[notebooks]'"
        )


def run_demo(
    out: Path,
    *,
    requests: int = DEFAULT_REQUESTS,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    console: Console,
    as_json: bool,
    dump: Callable[[Any], None],
) -> None:
    """Runs the demo into the folder `out` (created; files in it are replaced)."""
    _check_dependencies()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"{out}: cannot create the output folder: {e.strerror or e}") from None
    workload = write_workload(out, requests, seed)
    models = simulated_models(workload.start_s, workload.end_s)
    tables = {name: bundled("policies", f"{name}.yaml") for name in POLICIES}
    if not as_json:
        console.print(
            f"Replaying {requests:,} {SCENARIO[0]} requests ({workload.to_json()['hours']} h at "
            f"{RATE_RPS:g} requests/s, seed {seed}) under {', '.join(POLICIES)}",
            highlight=False,
        )
    jobs = [
        Job(
            policy=name,
            config=str(path),
            trace=str(workload.path),
            seed=seed,
            models=models,
            out=str(out / "replays"),
        )
        for name, path in tables.items()
    ]
    results = sweep(jobs, progress=progress)
    frames = {r.job.label: _requests_frame(out / "replays" / r.job.label) for r in results}
    rows = [
        policy_row(name, turnout.load_config(tables[name]), r.summary, frames[name])
        for name, r in zip(POLICIES, results, strict=True)
    ]
    plots = _plots(out, rows, frames)
    records = decision_records(out, seed)
    document = {
        "out": str(out),
        "workload": workload.to_json(),
        "models": models,
        "policies": rows,
        "cheapest_fully_loaded": cheapest(rows),
        "decisions": records,
        "plots": [str(p) for p in plots],
    }
    (out / "summary.json").write_text(
        json.dumps(document, default=_json_default, indent=2) + "\n", encoding="utf-8"
    )
    if as_json:
        dump(document)
        return
    console.print(comparison_table(rows))
    console.print(_verdict(rows), highlight=False)
    for r in records:
        console.print(_record_text(r))
    console.print(
        Text.assemble(
            ("Wrote ", ""),
            (f"{out}/", "bold"),
            (": summary.json, the plots (", ""),
            (", ".join(p.name for p in plots), ""),
            ("), the workload, replays/<policy>/ (per-request results) and decisions/.", ""),
        )
    )


def cheapest(rows: list[dict[str, Any]]) -> str | None:
    """The policy with the lowest fully loaded cost per accepted outcome (None: none accepted)."""
    priced = [r for r in rows if r["per_accepted_fully_loaded_usd"] is not None]
    if not priced:
        return None
    return min(priced, key=lambda r: r["per_accepted_fully_loaded_usd"])["policy"]


def _verdict(rows: list[dict[str, Any]]) -> str:
    """The comparison in one sentence: the cheapest policy fully loaded, against the others."""
    best = cheapest(rows)
    if best is None:
        return "No policy had an accepted outcome: nothing to compare."
    by = {r["policy"]: r for r in rows}
    unit = by[best]["per_accepted_fully_loaded_usd"]
    others = ", ".join(
        f"{r['policy']} {r['per_accepted_fully_loaded_usd'] / unit:.1f}x"
        for r in rows
        if r["policy"] != best and r["per_accepted_fully_loaded_usd"] is not None
    )
    return (
        f"Cheapest per accepted outcome, fully loaded, on this traffic: {best} "
        f"(${short_money(unit)}); the others cost {others} as much."
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def short_money(value: Decimal | None) -> str:
    # A per-outcome average is a quotient: shown to a tenth of a micro-dollar (--json has it all).
    return "-" if value is None else str(value.quantize(Decimal("1e-7")))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def comparison_table(rows: list[dict[str, Any]]) -> Table:
    """The policies side by side."""
    table = Table(title=f"MaaS vs self-hosted vs hybrid: {SCENARIO[0]}")
    columns = (
        "requests", "available", "accepted", "$/accepted marginal", "$/accepted fully loaded",
        "p95 ms TTFT / latency", "within SLO TTFT / latency", "cache hit pred / real",
        "quality gate",
    )  # fmt: skip
    table.add_column("policy", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["policy"],
            f"{r['requests']:,}",
            _pct(r["availability"]),
            f"{r['accepted']:,}",
            short_money(r["per_accepted_marginal_usd"]),
            short_money(r["per_accepted_fully_loaded_usd"]),
            f"{_ms(r['ttft_p95_ms'])} / {_ms(r['latency_p95_ms'])}",
            f"{_pct(r['ttft_slo_attainment'])} / {_pct(r['latency_slo_attainment'])}",
            f"{_pct(r['cache_hit_predicted'])} / {_pct(r['cache_hit_realized'])}",
            f"{r['quality_gate'] or '-'} ({_pct(r['accept_rate'])})",
        )
    return table


def _record_text(entry: Mapping[str, Any]) -> Text:
    """A decision record in a few lines: the recommendation and why, what is missing (the whole
    record is in decisions/<scenario>/record.md)."""
    if "record" not in entry:
        where = f"{entry['scenario']}: " if "scenario" in entry else ""
        return Text(f"Decision record: {where}{entry['error']}", style="yellow")
    record = entry["record"]
    text = Text()
    text.append(f"Decision record: {entry['scenario']}", style="bold")
    text.append(f" -> {record['recommendation']}\n", style="bold green")
    for reason in record.get("reasons") or []:
        text.append(f"  because {reason}\n")
    fired = [rule["id"] for rule in record.get("rules") or [] if rule.get("fired")]
    text.append(f"  rules fired: {', '.join(fired) or 'none'}\n")
    for item in record.get("readiness") or []:
        if not item.get("ok"):
            missing = "; ".join(item.get("missing") or []) or item.get("note") or ""
            text.append(f"  not ready: {item['item']}: {missing}\n", style="yellow")
    for anti in record.get("anti_patterns") or []:
        text.append(f"  anti-pattern: {anti['title']}\n", style="red")
    if record.get("missing_fields"):
        text.append(f"  missing fields: {', '.join(record['missing_fields'])}\n", style="yellow")
    if record.get("plan") is None and record.get("plan_note"):
        text.append(f"  cost comparison not run: {record['plan_note']}\n")
    return text
