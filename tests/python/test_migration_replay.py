"""Rehearsing a canary in the what-if engine (issue 13): the Router's own migration state machine
runs on the simulated clock over a generated trace. A candidate with an injected regression in
quality, latency, errors or cost is aborted, and the summary says after how many requests and what
the regression cost until then; a candidate without one is promoted; a canary with too little
traffic pauses and then aborts, never promoted. Counts and money are checked exactly against the
request rows (the ledger's costs); the statistics' verdicts by their direction."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import turnout
from turnout.replay import MIGRATION_KEYS, SUMMARY_KEYS, ReplayResult, replay
from turnout.traces import TraceWriter
from turnout.workload import WorkloadShape, generate

# Two MaaS targets at one price; the scenario routes only through its migration: 20 %, 50 %, then
# all of its traffic to the candidate, each step needing 150 candidate outcomes within 60 s,
# analyzed every 2 s. Every stop criterion is on and no hard guardrail: the statistics decide.
TABLE = """\
version: 1
targets:
  base:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  cand:
    kind: maas
    provider: openai
    model: gpt-4.1-mini-canary
    data_classes: [public]
    context_window: 1000000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
scenarios:
  assist:
    data_class: public
    slo: {ttft_p95_ms: 800, latency_p95_ms: 20000}
    quality_gate: {min_accept_rate: 0.9}
    migration:
      baseline: base
      candidate: cand
      stage: STAGE
      steps: [20, 50, 100]
      min_samples: 150
      max_step_s: 60
      interval_s: 2
      incident_owner: assist-oncall
      stop:
        errors: {min_effect: 0.05}
        ttft: {min_effect: 0.1}
        latency: {min_effect: 0.1}
        acceptance: {min_effect: 0.1}
        cost_per_accepted: {max_ratio: 1.2, min_effect: 0.2}
"""

# Both targets answer alike unless a test injects a regression into the candidate's model.
HEALTHY = {
    "ttft_ms": {"p50": 200, "p95": 400},
    "output_tokens_per_s": {"p50": 200, "p95": 120},
    "accept_rate": 1.0,
}

REGRESSIONS = {
    # 70 % of calls fail; with the default two retries a third of the candidate's outcomes do.
    "errors": ({"error_rate": 0.7}, "errors"),
    "latency": ({"ttft_ms": {"p50": 1500, "p95": 3000}}, "ttft"),
    "quality": ({"accept_rate": 0.6}, "acceptance"),
    # Four times the trace's answer: each answer costs about twice the baseline's.
    "cost": ({"output_scale": 4.0}, "cost_per_accepted"),
}


def table(tmp_path: Path, stage: str = "canary", max_step_s: int = 60) -> turnout.Config:
    path = tmp_path / "canary.yaml"
    text = TABLE.replace("STAGE", stage).replace("max_step_s: 60", f"max_step_s: {max_step_s}")
    path.write_text(text)
    return turnout.load_config(str(path))


def models(candidate: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    return {"base": dict(HEALTHY), "cand": {**HEALTHY, **(candidate or {})}}


# Steady Poisson sessions: no daily curve, no bursts, so `rate` is the rate all along.
STEADY = WorkloadShape(diurnal_amplitude=0.0, burst_factor=1.0)


def trace(requests: int, rate: float, seed: int = 5) -> list[Any]:
    return list(
        generate(requests, seed=seed, rate=rate, scenarios=[("assist", "public")], shape=STEADY)
    )


def rehearse(
    tmp_path: Path, candidate: dict[str, Any] | None = None, *, requests: int = 6_000,
    rate: float = 60.0, seed: int = 1,
) -> ReplayResult:  # fmt: skip
    return replay(
        table(tmp_path), trace(requests, rate), models=models(candidate), seed=seed
    )


def rows(result: ReplayResult) -> dict[str, np.ndarray]:
    """The request rows, with each request's arrival and end in integer microseconds."""
    r = {k: np.asarray(v) for k, v in result.request_columns.items()}
    start_us = np.rint(r["arrival_s"] * 1e6).astype(np.int64)
    r["arrival_us"] = start_us
    r["end_us"] = start_us + np.rint(r["latency_ms"] * 1e3).astype(np.int64)
    return r


def first_us(result: ReplayResult) -> int:
    """Where a move's ``at_s`` counts from: the first arrival's millisecond, in microseconds."""
    return int(rows(result)["arrival_us"].min()) // 1000 * 1000


def check_counts(result: ReplayResult, move: dict[str, Any]) -> None:
    """A move's request counts and the candidate's tallies, exactly, from the request rows. The
    table has no fallback, so a request's target is where its decision placed it."""
    r = rows(result)
    at_us = first_us(result) + round(move["at_s"] * 1e6)
    before = r["arrival_us"] < at_us
    on_cand = r["target"] == "cand"
    assert move["requests"] == int(np.count_nonzero(before))
    assert move["candidate"]["requests"] == int(np.count_nonzero(before & on_cand))
    # Outcomes reported by then: those that ended before the move (one ending exactly at its
    # millisecond may go either way: the bounds say so).
    for arm, mine in (("candidate", on_cand), ("baseline", r["target"] == "base")):
        done, upto = mine & (r["end_us"] < at_us), mine & (r["end_us"] <= at_us)
        tally = move[arm]
        assert np.count_nonzero(done) <= tally["outcomes"] <= np.count_nonzero(upto)
        cost = [int(c) for c in r["cost_picos"][done]], [int(c) for c in r["cost_picos"][upto]]
        assert sum(cost[0]) <= tally["cost_picos"] <= sum(cost[1])
        failed = r["outcome"] == "failed"
        assert np.count_nonzero(done & failed) <= tally["errors"] <= np.count_nonzero(upto & failed)
        rejected = r["accepted"] == 0
        assert (
            np.count_nonzero(done & rejected) <= tally["rejected"]
            <= np.count_nonzero(upto & rejected)
        )  # fmt: skip
        assert tally["answered"] + tally["errors"] == tally["outcomes"]
    # The Router analyzed exactly the outcomes the simulator reported on each arm.
    assert move["analyzed"] == {
        "baseline": move["baseline"]["outcomes"],
        "candidate": move["candidate"]["outcomes"],
    }


def raw_moves(result: ReplayResult) -> list[dict[str, Any]]:
    return result.migrations["assist"]["transitions"]


# --- A regression is caught ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REGRESSIONS))
def test_a_regression_aborts_the_canary_and_says_what_it_cost(tmp_path: Path, kind: str) -> None:
    injected, metric = REGRESSIONS[kind]
    result = rehearse(tmp_path, injected)
    m = result.summary["migrations"]["assist"]
    assert tuple(m) == MIGRATION_KEYS
    assert (m["baseline"], m["candidate"], m["stage"], m["steps"]) == (
        "base", "cand", "canary", [20, 50, 100],
    )  # fmt: skip
    assert m["outcome"] == "aborted", m["transitions"]
    moves = m["transitions"]
    assert (moves[0]["cause"], moves[0]["at_s"]) == ("started", 0.0)
    assert (moves[-1]["to"], moves[-1]["percent"]) == ("aborted", 0)
    assert moves[-1]["cause"] == "failed"
    assert moves[-1]["detail"].startswith(metric), moves[-1]["detail"]
    assert all(t["to"] != "promoted" for t in moves)

    abort, raw = m["abort"], raw_moves(result)[-1]
    check_counts(result, raw)
    assert abort["at_s"] == round(raw["at_s"], 3) == moves[-1]["at_s"]
    assert abort["requests"] == moves[-1]["requests"] == raw["requests"]
    assert abort["candidate_requests"] == raw["candidate"]["requests"]
    assert 0 < abort["candidate_requests"] < abort["requests"]
    # The analysis runs every 2 s: the abort falls on the interval grid.
    assert abort["at_s"] % 2 == 0

    cost = abort["cost_of_regression"]
    spent = int(raw["candidate"]["cost_picos"])
    base = raw["baseline"]
    # The baseline's mean cost per answer so far times the candidate's answers (nearest picodollar).
    equivalent = (
        2 * raw["candidate"]["answered"] * base["cost_picos"] + base["answered"]
    ) // (2 * base["answered"])
    assert cost["candidate_usd"] == Decimal(spent).scaleb(-12)
    assert cost["baseline_equivalent_usd"] == Decimal(equivalent).scaleb(-12)
    assert cost["extra_usd"] == cost["candidate_usd"] - cost["baseline_equivalent_usd"]
    assert cost["failed"] == raw["candidate"]["errors"]
    assert cost["rejected"] == raw["candidate"]["rejected"]
    # What the regression cost shows where it is.
    if kind == "errors":
        assert cost["failed"] > 0.2 * raw["candidate"]["outcomes"]
    else:
        assert cost["failed"] == 0
    if kind == "quality":
        assert cost["rejected"] > 0.2 * raw["candidate"]["outcomes"]
    else:
        assert cost["rejected"] == 0
    if kind == "cost":
        assert cost["extra_usd"] > cost["baseline_equivalent_usd"] / 2


def test_after_an_abort_the_baseline_takes_all_traffic(tmp_path: Path) -> None:
    result = rehearse(tmp_path, REGRESSIONS["errors"][0])
    abort = result.summary["migrations"]["assist"]["abort"]
    r = rows(result)
    later = r["arrival_us"] >= first_us(result) + round(abort["at_s"] * 1e6)
    assert np.count_nonzero(later) > 100
    assert set(r["target"][later].tolist()) == {"base"}


# --- No regression: promoted ---------------------------------------------------------------------


def test_a_candidate_without_regression_is_promoted_step_by_step(tmp_path: Path) -> None:
    result = rehearse(tmp_path)
    m = result.summary["migrations"]["assist"]
    assert m["outcome"] == "promoted", m["transitions"]
    assert m["abort"] is None
    moves = m["transitions"]
    assert [(t["from"], t["to"], t["step"], t["percent"], t["cause"]) for t in moves] == [
        ("pending", "ramp", 0, 20, "started"),
        ("ramp", "ramp", 1, 50, "step_passed"),
        ("ramp", "ramp", 2, 100, "step_passed"),
        ("ramp", "promoted", 2, 100, "proven"),
    ]
    raw = raw_moves(result)
    for move in raw:
        check_counts(result, move)
    # Each step had its samples before it passed.
    assert raw[1]["candidate"]["outcomes"] >= 150
    assert raw[2]["candidate"]["outcomes"] - raw[1]["candidate"]["outcomes"] >= 150
    # Routing followed the steps: the candidate's share of each step's requests is its percent.
    r = rows(result)
    edges = [first_us(result) + round(t["at_s"] * 1e6) for t in moves]
    for (lo, hi), percent in zip(itertools.pairwise(edges), (20, 50, 100), strict=True):
        mine = (r["arrival_us"] >= lo) & (r["arrival_us"] < hi)
        n = int(np.count_nonzero(mine))
        share = np.count_nonzero(mine & (r["target"] == "cand")) / n
        p = percent / 100
        assert abs(share - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (percent, share, n)
    promoted = r["arrival_us"] >= edges[-1]
    assert set(r["target"][promoted].tolist()) == {"cand"}


def test_a_replay_of_a_migration_is_deterministic(tmp_path: Path) -> None:
    a = rehearse(tmp_path, REGRESSIONS["quality"][0], requests=3_000)
    b = rehearse(tmp_path, REGRESSIONS["quality"][0], requests=3_000)
    assert a.summary["migrations"] == b.summary["migrations"]


# --- Too little traffic: paused, then aborted ----------------------------------------------------


def test_too_little_traffic_pauses_then_aborts_and_never_promotes(tmp_path: Path) -> None:
    # Well under a request a second: the 20 % step sees a handful of candidate outcomes in its 60 s.
    result = rehearse(tmp_path, requests=400, rate=0.5)
    m = result.summary["migrations"]["assist"]
    moves = m["transitions"]
    assert [(t["from"], t["to"], t["cause"]) for t in moves] == [
        ("pending", "ramp", "started"),
        ("ramp", "paused", "no_data"),
        ("paused", "aborted", "pause_expired"),
    ]
    assert m["outcome"] == "aborted"
    # The step's deadline, then the pause's: each max_step_s (60 s) long.
    assert (moves[1]["at_s"], moves[2]["at_s"]) == (60.0, 120.0)
    assert moves[1]["percent"] == 20  # a pause keeps the step's weight
    raw = raw_moves(result)
    assert raw[1]["candidate"]["outcomes"] < 150
    for move in raw:
        check_counts(result, move)
    assert m["abort"]["cause"] == "pause_expired"


# --- Outcomes at the trace's end -----------------------------------------------------------------


def test_a_canary_still_under_way_when_the_trace_ends_says_so(tmp_path: Path) -> None:
    # 300 requests, about 60 of them on the candidate: a step of an hour has not its 150 samples
    # when the traffic ends, and no analysis runs past it.
    result = replay(table(tmp_path, max_step_s=3600), trace(300, 60.0), models=models())
    m = result.summary["migrations"]["assist"]
    assert m["outcome"] == "ramping", m["transitions"]
    assert [t["cause"] for t in m["transitions"]] == ["started"]
    assert m["abort"] is None


def test_a_migration_before_its_canary_stage_stays_pending(tmp_path: Path) -> None:
    result = replay(table(tmp_path, "evals"), trace(500, 20.0), models=models())
    m = result.summary["migrations"]["assist"]
    assert (m["outcome"], m["transitions"], m["abort"]) == ("pending", [], None)
    assert set(np.asarray(result.request_columns["target"]).tolist()) == {"base"}


def test_a_table_without_migrations_has_none_in_its_summary(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "routing.yaml"
    config = turnout.load_config(str(example))
    result = replay(config, list(generate(200, seed=1)))
    assert result.summary["migrations"] == {}


# --- The cost regression's model -----------------------------------------------------------------


def split_table(tmp_path: Path) -> turnout.Config:
    """The two targets at fixed weights, without a migration."""
    head, _, _ = TABLE.partition("    migration:")
    path = tmp_path / "split.yaml"
    path.write_text(head + "    routes: [{target: base, weight: 50}, {target: cand, weight: 50}]\n")
    return turnout.load_config(str(path))


def test_output_scale_multiplies_the_candidates_answers_and_their_price(tmp_path: Path) -> None:
    config, day = split_table(tmp_path), trace(400, 20.0)
    plain = replay(config, day, models=models(), seed=2)
    verbose = replay(config, day, models=models({"output_scale": 3.0}), seed=2)
    cost = {
        name: [int(r.sim_summary["targets"][name]["cost_picos"]) for r in (plain, verbose)]
        for name in ("base", "cand")
    }
    assert cost["base"][0] == cost["base"][1]  # the same routing, the baseline's answers unchanged
    assert cost["cand"][1] > 1.5 * cost["cand"][0]
    # Three times the tokens at 200 tokens/s: the candidate's answers take longer too.
    for r in (plain, verbose):
        assert r.sim_summary["targets"]["cand"]["served"] > 100
    latency = [
        float(np.mean(np.asarray(r.request_columns["latency_ms"])[
            np.asarray(r.request_columns["target"]) == "cand"
        ]))
        for r in (plain, verbose)
    ]  # fmt: skip
    assert latency[1] > 1.5 * latency[0]
    # The rows keep the trace's tokens.
    assert np.array_equal(
        plain.request_columns["output_tokens"], verbose.request_columns["output_tokens"]
    )


@pytest.mark.parametrize("scale", [0, -1, 100.5, float("nan")])
def test_an_output_scale_out_of_range_is_refused(tmp_path: Path, scale: float) -> None:
    config, day = split_table(tmp_path), trace(10, 20.0)
    with pytest.raises(turnout.InvalidArgumentError, match=r"model of target 'cand': output_scale"):
        replay(config, day, models=models({"output_scale": scale}))


def test_an_output_scale_that_is_no_number_is_refused(tmp_path: Path) -> None:
    config, day = split_table(tmp_path), trace(10, 20.0)
    expected = r"\['cand'\]\.output_scale: expected a number"
    with pytest.raises(turnout.InvalidArgumentError, match=expected):
        replay(config, day, models=models({"output_scale": "lots"}))


# --- The command ---------------------------------------------------------------------------------


def test_the_replay_command_prints_the_rehearsal(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from turnout.cli import main

    path = tmp_path / "canary.yaml"
    path.write_text(TABLE.replace("STAGE", "canary"))
    day = tmp_path / "day.jsonl"
    with TraceWriter(day, "turnout") as w:
        for chunk in trace(6_000, 20.0):
            w.write_columns(chunk)
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps(models({"accept_rate": 0.6})))
    args = ["replay", str(path), str(day), "--models", str(models_file), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--jobs", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Migration of assist in canary: base -> cand, aborted" in text
    assert "acceptance" in text
    assert "the regression cost until then" in text
    assert "rejected candidate requests" in text
    result = CliRunner().invoke(main, [*args, "--jobs", "1", "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output.splitlines()[-1])
    assert tuple(s) == SUMMARY_KEYS
    abort = s["migrations"]["assist"]["abort"]
    assert abort["cost_of_regression"]["rejected"] > 0
    assert Decimal(abort["cost_of_regression"]["extra_usd"]) == Decimal(
        abort["cost_of_regression"]["candidate_usd"]
    ) - Decimal(abort["cost_of_regression"]["baseline_equivalent_usd"])


def test_the_replay_command_refuses_an_output_scale_out_of_range(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from turnout.cli import main

    path = tmp_path / "canary.yaml"
    path.write_text(TABLE.replace("STAGE", "canary"))
    day = tmp_path / "day.jsonl"
    with TraceWriter(day, "turnout") as w:
        for chunk in trace(20, 20.0):
            w.write_columns(chunk)
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"cand": {"output_scale": 0}}))
    args = ["replay", str(path), str(day), "--models", str(models_file), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--jobs", "1"])
    assert result.exit_code == 2, result.output
    assert "model of target 'cand': output_scale must be > 0 and <= 100" in result.output
