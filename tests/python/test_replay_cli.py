"""``turnout replay``: the real command (a subprocess, or click's runner) on real trace files
through the simulator (``turnout._core.Simulation``): the --json contract, exact money, several
policies in parallel processes, --out files, Ctrl-C, and every kind of bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import turnout
from turnout import _core
from turnout.cli import main as cli_main
from turnout.replay import SCENARIO_KEYS, SUMMARY_KEYS, Job, replay, scenario_summary, sweep
from turnout.traces import TraceError, TraceRow, TraceWriter
from turnout.workload import generate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "routing.yaml"
DATA = Path(__file__).resolve().parent / "data"

needs_sim = pytest.mark.skipif(
    not hasattr(_core, "Simulation"), reason="turnout._core.Simulation is not built in"
)


def run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_trace(path: Path, n: int, seed: int = 1, rate: float = 20.0) -> Path:
    with TraceWriter(path, "parquet" if path.suffix == ".parquet" else "turnout") as w:
        for chunk in generate(n, seed=seed, rate=rate):
            w.write_columns(chunk)
    return path


# --- Bad input that is refused before any simulation ------------------------------------------


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    result = run("replay", EXAMPLE, DATA / "mooncake_sample.jsonl", "--format", "sharegpt")
    assert result.returncode == 2
    assert "'sharegpt' is not one of 'auto', 'turnout', 'mooncake', 'azure', 'burstgpt'" in (
        " ".join(result.stderr.split())
    )
    odd = tmp_path / "odd.txt"
    odd.write_text("hello\n")
    result = run("replay", EXAMPLE, odd)
    assert result.returncode == 2
    assert "cannot tell the trace format" in result.stderr


def test_unknown_scenario_lists_the_tables(tmp_path: Path) -> None:
    result = run("replay", EXAMPLE, DATA / "mooncake_sample.jsonl", "--scenario", "chat")
    assert result.returncode == 2
    assert "unknown scenario 'chat'" in result.stderr
    assert "support-summarization, contract-extraction, agent-assist" in result.stderr
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"turnout_trace": 1}\n{"at": 1767225600.0, "scenario": "agent-assist", '
        '"input_tokens": 10, "output_tokens": 5}\n{"at": 1767225601.0, "scenario": "faq", '
        '"input_tokens": 10, "output_tokens": 5}\n'
    )
    result = run("replay", EXAMPLE, trace)
    assert result.returncode == 2
    assert f"{trace}:3: unknown scenario 'faq': the routing table has" in result.stderr


def test_a_trace_without_scenarios_needs_one(tmp_path: Path) -> None:
    result = run("replay", EXAMPLE, DATA / "azure_conv_sample.csv")
    assert result.returncode == 2
    assert "azure_conv_sample.csv:2: the request names no scenario" in result.stderr
    assert "give one (--scenario)" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_lines_fail_with_their_line_numbers(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(
        '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'
        '{"timestamp": 10, "input_length": "many", "output_length": 5, "hash_ids": [0]}\n'
    )
    result = run("replay", EXAMPLE, trace, "--scenario", "agent-assist")
    assert result.returncode == 2
    assert f"{trace}:2: 'input_length' must be an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_empty_trace_is_an_error(tmp_path: Path) -> None:
    trace = tmp_path / "empty.jsonl"
    trace.write_text('{"turnout_trace": 1}\n')
    result = run("replay", EXAMPLE, trace)
    assert result.returncode == 2
    assert f"{trace}: the trace holds no request" in result.stderr


def test_models_file_must_be_an_object_of_objects(tmp_path: Path) -> None:
    bad = tmp_path / "models.json"
    bad.write_text('{"gpt-4.1-mini": 3}')
    result = run("replay", EXAMPLE, DATA / "turnout_sample.jsonl", "--models", bad)
    assert result.returncode == 2
    assert f"{bad}: must be a JSON object of target name -> model object" in result.stderr
    bad.write_text("{nope")
    result = run("replay", EXAMPLE, DATA / "turnout_sample.jsonl", "--models", bad)
    assert result.returncode == 2
    assert f"{bad}:1: not JSON" in result.stderr


def test_policy_specs_are_checked() -> None:
    result = CliRunner().invoke(
        cli_main, ["replay", str(EXAMPLE), str(DATA / "turnout_sample.jsonl"), "--policy", "x"]
    )
    assert result.exit_code == 2
    assert "give NAME=CONFIG" in result.output
    result = CliRunner().invoke(
        cli_main,
        ["replay", str(EXAMPLE), str(DATA / "turnout_sample.jsonl"),
         "--policy", f"routing={EXAMPLE}"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "two policies are named 'routing'" in result.output


# --- Through the simulator --------------------------------------------------------------------


@needs_sim
def test_models_file_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"gpt-4.1-mini": {"ttft_ms": {"p50": 300, "p95": 900},
                                                   "warp_factor": 9}}))  # fmt: skip
    result = run("replay", EXAMPLE, DATA / "turnout_sample.jsonl", "--models", models)
    assert result.returncode == 2, result.stderr
    assert "warp_factor" in result.stderr
    assert "Traceback" not in result.stderr


@needs_sim
def test_json_summary_has_exactly_the_contract_keys_and_exact_money(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "day.parquet", 600)
    out = tmp_path / "out"
    result = run("replay", EXAMPLE, trace, "--json", "--out", out, "--seed", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert tuple(s) == SUMMARY_KEYS
    assert s["requests"] == 600
    assert s["served"] + s["fallbacks"] + s["failed"] == 600
    for k in ("ttft_ms", "latency_ms"):
        assert set(s[k]) == {"p50", "p95", "p99"}
    assert set(s["cache_hit_rate"]) == {"predicted", "realized"}
    assert set(s["scenarios"]) <= {"agent-assist", "support-summarization", "contract-extraction"}
    assert all(tuple(entry) == SCENARIO_KEYS for entry in s["scenarios"].values())
    assert sum(entry["requests"] for entry in s["scenarios"].values()) == 600
    # Money: the per-request integer picodollars, summed as integers, are the summary's USD.
    requests = pq.read_table(out / "routing" / "requests.parquet").to_pydict()
    assert len(requests["cost_picos"]) == 600
    total = sum(int(c) for c in requests["cost_picos"])
    assert Decimal(s["cost_usd"]) == Decimal(total).scaleb(-12)
    if s["accepted"]:
        expected = (Decimal(total).scaleb(-12) / s["accepted"]).quantize(Decimal("1e-12"))
        assert Decimal(s["cost_per_accepted_usd"]) == expected
    assert (out / "routing" / "series.parquet").is_file()
    assert json.loads((out / "routing" / "summary.json").read_text())["requests"] == 600
    assert json.loads((out / "summary.json").read_text())["routing"]["requests"] == 600


@needs_sim
def test_several_policies_replay_in_parallel_processes(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.jsonl", 400)
    result = run(
        "replay", EXAMPLE, trace, "--json", "--jobs", "2",
        "--policy", f"again={EXAMPLE}", "--policy", f"third={EXAMPLE}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    # Same table, trace and seed in three processes: the same result, exactly.
    assert lines[0] == lines[1] == lines[2]
    for name in ("routing", "again", "third"):  # a progress bar per policy on stderr
        assert name in result.stderr


@needs_sim
def test_seeds_sweep_each_policy(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.jsonl", 300)
    out = tmp_path / "out"
    result = run(
        "replay", EXAMPLE, trace, "--json", "--seed", "1", "--seed", "2", "--out", out,
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["requests"] for s in lines] == [300, 300]
    assert sorted(json.loads((out / "summary.json").read_text())) == [
        "routing-seed1",
        "routing-seed2",
    ]
    assert (out / "routing-seed2" / "requests.parquet").is_file()


@needs_sim
def test_public_formats_replay_with_a_scenario(tmp_path: Path) -> None:
    # BurstGPT's failed request (0 response tokens) is left out, and said so.
    expected = {
        "mooncake_sample.jsonl": (8, ""),
        "azure_conv_sample.csv": (8, ""),
        "burstgpt_sample.csv": (5, "left out 1 requests that failed in the source"),
    }
    for sample, (requests, note) in expected.items():
        result = run(
            "replay", EXAMPLE, DATA / sample, "--scenario", "agent-assist", "--json",
            "--no-progress",
        )  # fmt: skip
        assert result.returncode == 0, (sample, result.stderr)
        assert json.loads(result.stdout)["requests"] == requests
        assert note in result.stderr
        assert bool(note) == bool(result.stderr.strip())


@needs_sim
def test_skip_bad_counts_and_replays_the_rest(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    good = (
        '{"at": 1767225600.0, "scenario": "agent-assist", "input_tokens": 900, '
        '"output_tokens": 50}'
    )
    trace.write_text("\n".join([good, "{broken", good, '{"at": 3}', good]) + "\n")
    result = run("replay", EXAMPLE, trace, "--json", "--skip-bad", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == 3
    assert f"skipped 2 bad trace lines; first: {trace}:2: not JSON" in " ".join(
        result.stderr.split()
    )


@needs_sim
def test_requests_the_simulator_refuses_are_named_by_line(tmp_path: Path) -> None:
    good = (
        '{"at": 1767225600.0, "scenario": "agent-assist", "input_tokens": 900, '
        '"output_tokens": 50}'
    )
    empty = (  # no prompt at all: the reader takes it, the simulator refuses it
        '{"at": 1767225601.0, "scenario": "agent-assist", "input_tokens": 0, '
        '"output_tokens": 50}'
    )
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(['{"turnout_trace": 1}', good, empty, good]) + "\n")
    result = run("replay", EXAMPLE, trace, "--json", "--no-progress")
    assert result.returncode == 2
    assert f"{trace}:3: " in result.stderr
    assert "Traceback" not in result.stderr
    result = run("replay", EXAMPLE, trace, "--json", "--no-progress", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == 2
    assert f"skipped 1 bad trace lines; first: {trace}:3: " in " ".join(result.stderr.split())


@needs_sim
def test_ctrl_c_stops_workers_cleanly(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "big.parquet", 500_000, rate=2000.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout.cli", "replay", str(EXAMPLE), str(trace), "--jobs", "2",
         "--policy", f"again={EXAMPLE}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")))
    reader.start()
    deadline = time.monotonic() + 240
    # Interrupt once a worker's simulation has reported progress (a bar past 0 %).
    while not re.search(r"[1-9]\d*%\|", "".join(seen)):
        assert proc.poll() is None, "".join(seen)
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    proc.stderr.close()
    assert proc.stdout is not None
    proc.stdout.close()
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err
    # No worker is left behind: soon nothing is left in the command's session (multiprocessing's
    # resource tracker exits once its parent is gone).
    deadline = time.monotonic() + 10
    while True:
        left = subprocess.run(
            ["pgrep", "-s", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == []


@needs_sim
def test_python_api_returns_frames_and_is_deterministic(tmp_path: Path) -> None:
    config = turnout.load_config(EXAMPLE)
    rows = [
        TraceRow(at=1_767_225_600.0 + i * 0.5, scenario="support-summarization",
                 key=f"t{i}", input_tokens=2000, output_tokens=200, blocks=[1, 2, 3, 4 + i],
                 block_tokens=512)
        for i in range(200)
    ]  # fmt: skip
    a = replay(config, rows, seed=4)
    b = replay(config, rows, seed=4)
    assert len(a.requests) == 200
    assert {"arrival_s", "target", "outcome", "cost_picos", "cached_realized"} <= set(
        a.requests.columns
    )
    assert a.summary == b.summary
    assert np.array_equal(a.requests["cost_picos"].to_numpy(), b.requests["cost_picos"].to_numpy())
    assert "utilization" in a.series.columns
    assert a.cost_usd == Decimal(int(a.requests["cost_picos"].sum())).scaleb(-12)
    with pytest.raises(TraceError, match="holds no request"):
        replay(config, [], seed=0)


@needs_sim
@pytest.mark.parametrize(("rejected", "gate"), [(1, "pass"), (2, "fail")])
def test_summary_has_slo_attainment_and_the_quality_gate_per_scenario(
    rejected: int, gate: str
) -> None:
    # support-summarization: slo {ttft_p95_ms: 800, latency_p95_ms: 4000}, min_accept_rate 0.95;
    # agent-assist: ttft_p95_ms 1500 only, no gate; contract-extraction: neither.
    config = turnout.load_config(EXAMPLE)
    rows = [
        TraceRow(at=1_767_225_600.0 + i, scenario="support-summarization", key=f"t{i}",
                 input_tokens=1500, output_tokens=150, accepted=i >= rejected)
        for i in range(20)
    ] + [
        TraceRow(at=1_767_225_600.5 + i, scenario=name, key=f"{name}{i}", input_tokens=1200,
                 output_tokens=100)
        for i in range(6) for name in ("agent-assist", "contract-extraction")
    ]  # fmt: skip
    res = replay(config, rows, seed=2)
    scenarios = res.summary["scenarios"]
    assert list(scenarios) == ["agent-assist", "contract-extraction", "support-summarization"]
    assert all(tuple(entry) == SCENARIO_KEYS for entry in scenarios.values())
    r = res.requests
    done = r[r["outcome"] != "failed"]
    support = done[done["scenario"] == "support-summarization"]
    s = scenarios["support-summarization"]
    assert s["requests"] == 20
    assert s["accept_rate"] == (len(support) - rejected) / len(support)  # 0.95 passes, 0.9 not
    assert s["quality_gate"] == gate
    assert s["ttft_slo_attainment"] == round(float((support["ttft_ms"] <= 800).mean()), 6)
    assert s["latency_slo_attainment"] == round(float((support["latency_ms"] <= 4000).mean()), 6)
    p95 = {k: float(np.percentile(support[k], 95)) for k in ("ttft_ms", "latency_ms")}
    assert s["slo_met"] == (p95["ttft_ms"] <= 800 and p95["latency_ms"] <= 4000)
    a = scenarios["agent-assist"]
    assert a["requests"] == 6
    assert a["latency_slo_attainment"] is None
    assert a["ttft_slo_attainment"] is not None
    assert a["quality_gate"] is None  # no gate
    c = scenarios["contract-extraction"]
    assert c["slo_met"] is None  # no SLO
    assert c["ttft_slo_attainment"] is None
    assert c["accept_rate"] == 1.0  # no labels: the target's accept_rate (1 by default)


@needs_sim
def test_a_tight_slo_is_not_met(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "slo: {ttft_p95_ms: 800, latency_p95_ms: 4000}", "slo: {ttft_p95_ms: 1, latency_p95_ms: 2}"
    )
    table = tmp_path / "tight.yaml"
    table.write_text(text, encoding="utf-8")
    rows = [
        TraceRow(at=1_767_225_600.0 + i, scenario="support-summarization", input_tokens=1500,
                 output_tokens=150)
        for i in range(10)
    ]  # fmt: skip
    s = replay(turnout.load_config(table), rows).summary["scenarios"]["support-summarization"]
    assert s["slo_met"] is False
    assert s["ttft_slo_attainment"] == 0.0
    assert s["latency_slo_attainment"] == 0.0


def test_a_scenario_whose_requests_all_failed_meets_nothing() -> None:
    columns = {
        "scenario": np.array(["a", "a", "b"], dtype=object),
        "outcome": np.array(["failed", "failed", "served"], dtype=object),
        "ttft_ms": np.array([np.nan, np.nan, 100.0]),
        "latency_ms": np.array([np.nan, np.nan, 900.0]),
        "accepted": np.array([-1, -1, 1], dtype=np.int8),
    }
    bounds = {"a": {"ttft_p95_ms": 800, "latency_p95_ms": None, "min_accept_rate": 0.9},
              "b": {"ttft_p95_ms": 50, "latency_p95_ms": 1000, "min_accept_rate": 0.9}}  # fmt: skip
    out = scenario_summary(columns, bounds)
    assert out["a"] == {
        "requests": 2, "ttft_slo_attainment": None, "latency_slo_attainment": None,
        "slo_met": False, "accept_rate": None, "quality_gate": None,
    }  # fmt: skip
    assert out["b"] == {
        "requests": 1, "ttft_slo_attainment": 0.0, "latency_slo_attainment": 1.0,
        "slo_met": False, "accept_rate": 1.0, "quality_gate": "pass",
    }  # fmt: skip


def test_the_quality_gate_compares_the_share_not_its_rounding() -> None:
    # 3,799,999 accepted of 4,000,000 is 0.94999975: below a 0.95 gate, though the reported
    # share rounds to 0.95 (6 digits). The gate read the rounded figure and passed.
    n = 4_000_000
    accepted = np.ones(n, dtype=np.int8)
    accepted[: n - 3_799_999] = 0
    columns = {
        "scenario": np.full(n, "a", dtype=object),
        "outcome": np.full(n, "served", dtype=object),
        "ttft_ms": np.full(n, 100.0),
        "latency_ms": np.full(n, 900.0),
        "accepted": accepted,
    }
    bounds = {"a": {"ttft_p95_ms": None, "latency_p95_ms": None, "min_accept_rate": 0.95}}
    out = scenario_summary(columns, bounds)["a"]
    assert out["accept_rate"] == 0.95  # as reported, to 6 digits
    assert out["quality_gate"] == "fail"
    accepted[n - 3_800_000 - 1] = 1  # 3,800,000 accepted: exactly 0.95 passes
    assert scenario_summary(columns, bounds)["a"]["quality_gate"] == "pass"


@needs_sim
def test_the_table_counts_scenarios_meeting_their_slo_and_gate() -> None:
    # The sample: agent-assist and support-summarization have an SLO (both met: few requests, a
    # fast simulated API); only support-summarization has a gate, and its one request is rejected.
    result = run(
        "replay", EXAMPLE, DATA / "turnout_sample.jsonl", "--scenario", "agent-assist",
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "policy" in line)
    assert header.rstrip(" ┃").endswith("┃ SLO met ┃ gate")  # scenarios: met or passed / all
    row = next(line for line in result.stdout.splitlines() if "routing" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[-2:] == ["2/2", "0/1"]


@needs_sim
def test_sweep_runs_jobs_in_processes(tmp_path: Path) -> None:
    trace = make_trace(tmp_path / "t.jsonl", 200)
    jobs = [Job(policy=f"seed{s}", config=str(EXAMPLE), trace=str(trace), seed=s) for s in (1, 2)]
    results = sweep(jobs, processes=2, progress=False)
    assert [r.job.policy for r in results] == ["seed1", "seed2"]
    assert all(r.summary["requests"] == 200 for r in results)
