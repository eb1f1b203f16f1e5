"""Every notebook in notebooks/ (jupytext percent format) executes in a real Jupyter kernel on
bundled data, and what it writes is checked; replays are exact and reproducible."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import turnout
from turnout.replay import replay
from turnout.traces import TraceRow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
KERNEL_TIMEOUT_S = 300  # per cell; each notebook runs in well under a minute at its default size


def execute(notebook: nbformat.NotebookNode, cwd: Path, out: Path) -> nbformat.NotebookNode:
    """Runs `notebook` in a python3 kernel started in `cwd`, its output folder `out` (the
    notebooks read TURNOUT_NOTEBOOK_OUT: a kernel has no argv); raises CellExecutionError when a
    cell raises. The kernel is this interpreter (the kernelspec's "python" is sys.executable)
    with this environment, so it imports the same turnout."""
    env = {
        **os.environ,
        "TURNOUT_NOTEBOOK_OUT": str(out),
        "TURNOUT_NOTEBOOK_DIR": str(ROOT / "notebooks"),
        "MPLBACKEND": "Agg",
    }
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=KERNEL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=env)
    return notebook


def run_notebook(path: Path, tmp_path: Path) -> tuple[nbformat.NotebookNode, Path]:
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    return execute(jupytext.read(path), cwd, out), out


def pngs(out: Path) -> list[Path]:
    found = sorted(out.glob("*.png"))
    for png in found:
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), png
    return found


def check_compare_policies(out: Path) -> None:
    assert {p.name for p in pngs(out)} >= {
        "cost_per_accepted.png",
        "latency_cdf.png",
        "availability_slo.png",
    }
    with (out / "summary.csv").open() as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"maas_only", "self_hosted_only", "hybrid"}
    # MaaS-only never touches the pool; self-hosted-only never pays a token price.
    assert Decimal(rows["maas_only"]["self_hosted_marginal_usd"]) == 0
    assert Decimal(rows["self_hosted_only"]["maas_usd"]) == 0
    for r in rows.values():
        assert Decimal(r["per_accepted_fully_loaded_usd"]) >= Decimal(
            r["per_accepted_marginal_usd"]
        )
        assert 0 < float(r["availability"]) <= 1
    # The simulated outage and error rates make availability a measurement, not a constant.
    assert float(rows["maas_only"]["availability"]) < 1
    assert int(rows["maas_only"]["failed"]) > 0
    assert float(rows["self_hosted_only"]["availability"]) == 1
    # The pool's provisioned day: 2 replicas x 2 GPUs x $2.99 x 24 h = $287.04, plus each monthly
    # overhead x 24/730 h, each rounded to the picodollar: staging 2200 -> 72.328767123288,
    # canary 1100 -> 36.164383561644, engineering 16000 -> 526.027397260274, observability 900 ->
    # 29.589041095890, evals 1500 -> 49.315068493151; total 1000.464657534247.
    loaded = Decimal(rows["self_hosted_only"]["self_hosted_fully_loaded_usd"])
    assert loaded == Decimal("1000.464657534247")
    assert loaded > 100 * Decimal(rows["self_hosted_only"]["self_hosted_marginal_usd"])
    # The closing cell's words, checked against the figures the notebook computed.
    decision = json.loads((out / "decision.json").read_text(encoding="utf-8"))
    assert decision["cheapest_fully_loaded"] == "maas_only"
    assert decision["fully_loaded_over_maas"] > 100
    marginal_ratio = Decimal(decision["maas_per_accepted_usd"]) / Decimal(
        decision["self_hosted_per_accepted_marginal_usd"]
    )
    assert 2.5 < marginal_ratio < 4  # "about three times cheaper" on marginal GPU time
    assert 1e6 < decision["breakeven_accepted_per_day"] < 1e7  # "above a million a day"
    assert 0.99 < decision["maas_availability"] < 1  # "above 99 % through an outage"
    # "MaaS misses the SLO (800 / 4,000 ms) at p95 where the pool meets both"
    assert decision["maas_ttft_p95_ms"] > 800 > decision["self_hosted_ttft_p95_ms"]
    assert decision["maas_latency_p95_ms"] > 4000 > decision["self_hosted_latency_p95_ms"]


def check_cache_forecast(out: Path) -> None:
    assert {p.name for p in pngs(out)} >= {"hit_rate_by_policy.png", "hit_rate_over_time.png"}
    with (out / "hit_rates.csv").open() as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"maas", "self_hosted_affinity", "self_hosted_no_affinity"}
    for r in rows.values():
        assert 0 <= float(r["predicted"]) <= 1
        assert 0 <= float(r["realized"]) <= 1
    # Prefix affinity keeps sessions and system prompts warm on one replica: it pays.
    assert float(rows["self_hosted_affinity"]["realized"]) > float(
        rows["self_hosted_no_affinity"]["realized"]
    )
    forecast = json.loads((out / "forecast.json").read_text(encoding="utf-8"))
    assert forecast["old_rate"] == float(rows["maas"]["realized"])
    for name, pool in forecast["pools"].items():
        assert pool["new_rate"] == float(rows[name]["realized"])
        realized = Decimal(pool["realized_usd"])
        assert realized == Decimal(rows[name]["cost_usd"])
        # The forecast with the pool's own rate is the replay's cost, but for the per-request
        # rounding of the router's prices (at most half a picodollar each).
        error = abs(Decimal(pool["forecast_new_rate_usd"]) - realized)
        assert error <= Decimal(forecast["requests"]) * Decimal("0.5e-12")
    # With affinity the provider's rate happens to be close; without, it misprices the pool by
    # about a fifth (the closing cell's words).
    assert abs(forecast["pools"]["self_hosted_affinity"]["old_rate_error_pct"]) < 5
    assert -30 < forecast["pools"]["self_hosted_no_affinity"]["old_rate_error_pct"] < -15


def check_capacity_plan(out: Path) -> None:
    assert {p.name for p in pngs(out)} >= {"breakeven.png", "utilization.png"}
    assert (out / "decision.md").read_text(encoding="utf-8").strip()


CHECKS: dict[str, Callable[[Path], None]] = {
    "compare_policies.py": check_compare_policies,
    "cache_forecast.py": check_cache_forecast,
    "capacity_plan.py": check_capacity_plan,
}


def test_the_notebooks_are_found() -> None:
    assert {"compare_policies.py", "cache_forecast.py"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_in_a_kernel(path: Path, tmp_path: Path) -> None:
    notebook, out = run_notebook(path, tmp_path)
    assert list((tmp_path / "cwd").iterdir()) == []  # everything goes to the output folder
    errors = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert errors == []
    # Every notebook plots, and ends with the decision it supports, in words.
    assert pngs(out), f"{path.name} wrote no plot"
    last = notebook.cells[-1]
    assert last.cell_type == "markdown"
    heading, _, words = last.source.lstrip().partition("\n")
    assert heading.startswith("#"), heading  # e.g. "## Decision"
    assert len(words.split()) >= 30  # the decision, in words
    check = CHECKS.get(path.name)
    if check is not None:
        check(out)


@pytest.mark.parametrize(
    ("name", "requests", "written"),
    [("compare_policies.py", 1200, "summary.csv"), ("cache_forecast.py", 1500, "forecast.json")],
)
def test_notebook_runs_as_a_script(name: str, requests: int, written: str, tmp_path: Path) -> None:
    # As `python notebooks/NAME --out DIR` (argv, __file__), at a smaller size.
    script = ROOT / "notebooks" / name
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--requests", str(requests)],
        capture_output=True,
        text=True,
        env={**os.environ, "MPLBACKEND": "Agg"},
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert pngs(tmp_path)
    assert (tmp_path / written).exists()


def test_a_notebook_that_raises_fails(tmp_path: Path) -> None:
    broken = jupytext.reads(
        "# %%\nx = 1\n\n# %%\nraise RuntimeError('the replay went wrong')\n", fmt="py:percent"
    )
    with pytest.raises(CellExecutionError, match="the replay went wrong"):
        execute(broken, tmp_path, tmp_path / "out")


def test_the_kernel_imports_this_turnout(tmp_path: Path) -> None:
    probe = jupytext.reads(
        "# %%\nimport json, os, sys\nimport turnout\n"
        "open(os.environ['TURNOUT_NOTEBOOK_OUT'], 'w').write(json.dumps("
        "{'turnout': turnout.__file__, 'python': sys.executable, 'cwd': os.getcwd()}))\n",
        fmt="py:percent",
    )
    execute(probe, tmp_path, tmp_path / "probe.json")
    seen = json.loads((tmp_path / "probe.json").read_text(encoding="utf-8"))
    assert seen["turnout"] == turnout.__file__
    assert Path(seen["python"]).resolve() == Path(sys.executable).resolve()
    assert Path(seen["cwd"]).resolve() == tmp_path.resolve()


def test_replay_is_exact_and_reproducible() -> None:
    config = turnout.load_config(ROOT / "notebooks" / "policies" / "hybrid.yaml")
    text = turnout.canonical_prompt(
        [{"role": "system", "content": "Summarize. " * 600}, {"role": "user", "content": "ticket"}]
    )
    reqs = [
        TraceRow(
            at=1_767_225_600.0 + i,
            scenario="support-summarization",
            key=f"t{i}",
            input_tokens=len(text) // 4,
            output_tokens=200,
            text=text,
        )
        for i in range(300)
    ]
    models = {"llama-70b": {"accept_rate": 0.9}, "gpt-4.1-mini": {"error_rate": 0.05}}
    a = replay(config, reqs, models=models, seed=3)
    b = replay(config, reqs, models=models, seed=3)
    assert a.summary == b.summary
    assert a.requests.equals(b.requests)
    # The summary's money is the per-request integer picodollars, summed exactly.
    total = sum(int(c) for c in a.requests["cost_picos"])
    assert a.summary["cost_usd"] == Decimal(total).scaleb(-12)
    assert a.summary["requests"] == 300
    # The shared system prompt is warm after the first request on each target.
    assert a.requests["cached_realized"].sum() > 0
