"""The notebooks run as scripts (jupytext percent format) and replays are exact."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import turnout
from turnout.replay import replay
from turnout.traces import TraceRow

ROOT = Path(__file__).resolve().parents[2]


def test_compare_policies_notebook_runs(tmp_path: Path) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "notebooks" / "compare_policies.py"),
            "--out",
            str(tmp_path),
            "--requests",
            "1200",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    png = (tmp_path / "cost_per_accepted.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    with (tmp_path / "summary.csv").open() as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"maas_only", "self_hosted_only", "hybrid"}
    # MaaS-only never touches the pool; self-hosted-only never pays a token price.
    assert Decimal(rows["maas_only"]["self_hosted_marginal_usd"]) == 0
    assert Decimal(rows["self_hosted_only"]["maas_usd"]) == 0
    for r in rows.values():
        assert Decimal(r["per_accepted_fully_loaded_usd"]) >= Decimal(
            r["per_accepted_marginal_usd"]
        )
    # The pool's provisioned day: 2 replicas x 2 GPUs x $2.99 x 24 h = $287.04, plus each monthly
    # overhead x 24/730 h, each rounded to the picodollar: staging 2200 -> 72.328767123288,
    # canary 1100 -> 36.164383561644, engineering 16000 -> 526.027397260274, observability 900 ->
    # 29.589041095890, evals 1500 -> 49.315068493151; total 1000.464657534247.
    loaded = Decimal(rows["self_hosted_only"]["self_hosted_fully_loaded_usd"])
    assert loaded == Decimal("1000.464657534247")
    assert loaded > 100 * Decimal(rows["self_hosted_only"]["self_hosted_marginal_usd"])


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
