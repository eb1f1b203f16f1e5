"""turnout.capacity: demand measured from traces, tables derived from the routing table's file, and
the pool size_pool picks checked against the simulator itself (the pool meets the SLO at peak, one
replica fewer does not), with every way a plan cannot be made."""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

import turnout
from turnout import _core
from turnout.capacity import (
    Demand,
    Slo,
    hybrid_table,
    maas_table,
    measure,
    pool_table,
    size_pool,
    synthetic_load,
)
from turnout.replay import replay
from turnout.traces import TraceWriter
from turnout.workload import generate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "routing.yaml"
DATA = Path(__file__).resolve().parent / "data"
SCENARIO = "support-summarization"  # slo {ttft_p95_ms: 800, latency_p95_ms: 4000}
POOL = "llama-70b"
DURATION_S = 30.0

needs_sim = pytest.mark.skipif(
    not hasattr(_core, "Simulation"), reason="turnout._core.Simulation is not built in"
)


def _published(name: str) -> dict[str, float | int]:
    """A published row (``_core.published_rows()``) as a replay model's ``throughput``."""
    (row,) = [r for r in _core.published_rows() if r["name"] == name]
    keys = ("output_tokens_per_s", "input_tokens", "output_tokens", "concurrency")
    return {k: row[k] for k in keys}


MODELS = {POOL: {"throughput": _published("llama-3.3-70b-fp8-h100x2")}}
# 60 requests/s at peak of short answers behind a 512-token system prompt: a few replicas.
BUSY = Demand(mean_rps=30.0, peak_to_mean=2.0, output_tokens=60, shared_prefix_tokens=512)


@pytest.fixture(scope="module")
def config() -> turnout.Config:
    return turnout.load_config(EXAMPLE)


# --- Demand ------------------------------------------------------------------------------------


def test_demand_of_the_sample_trace() -> None:
    # Arrivals at +0, 0.25, 1.5, 2 and 3 s: 4 gaps in 3 s. Sizes: medians of the five requests.
    d = Demand.from_trace(DATA / "turnout_sample.jsonl")
    assert d.mean_rps == pytest.approx(4 / 3)
    assert d.peak_to_mean == 1.0  # not one full minute
    assert d.diurnal is None
    assert (d.input_tokens, d.output_tokens) == (1200, 200)
    # One scenario: its two requests and the one naming none (at +0, 0.25 and 2 s).
    a = Demand.from_trace(DATA / "turnout_sample.jsonl", scenario="agent-assist")
    assert a.mean_rps == pytest.approx(2 / 2)
    assert (a.input_tokens, a.output_tokens) == (1400, 120)


def test_demand_of_a_generated_trace_has_its_known_rate(tmp_path: Path) -> None:
    known = Demand(mean_rps=5.0, input_tokens=800, output_tokens=150)
    load = synthetic_load(known, scenario=SCENARIO, rate_rps=5.0, duration_s=1800, seed=4)
    path = tmp_path / "steady.jsonl"
    with TraceWriter(path, "turnout") as w:
        w.write_columns(load)
    for trace in ([load], path):
        d = Demand.from_trace(trace, scenario=SCENARIO)
        assert d.mean_rps == pytest.approx(5.0, rel=0.05)
        assert 1.0 <= d.peak_to_mean < 1.3  # Poisson minutes of ~300: p99 ~ +2.3 sigma
        assert d.diurnal is None
        assert d.input_tokens == pytest.approx(800, rel=0.05)
        assert d.output_tokens == pytest.approx(150, rel=0.05)
        assert d.requests_per_month() == pytest.approx(d.mean_rps * 730 * 3600)


def test_a_day_long_trace_gives_the_diurnal_shape() -> None:
    # workload.generate's daily curve: x1.6 at 15:00 UTC, x0.4 at 03:00.
    trace = list(generate(30_000, seed=2, rate=0.3, scenarios=[(SCENARIO, None)]))
    d = Demand.from_trace(trace)
    assert d.diurnal is not None
    assert len(d.diurnal) == 24
    assert sum(d.diurnal) / 24 == pytest.approx(1.0)
    assert 12 <= int(np.argmax(d.diurnal)) <= 18
    assert int(np.argmin(d.diurnal)) <= 6 or int(np.argmin(d.diurnal)) >= 23
    assert max(d.diurnal) > 1.3
    assert min(d.diurnal) < 0.7
    assert d.peak_to_mean > 1.3
    assert d.peak_rps >= d.mean_rps * max(d.diurnal)


def test_peak_is_at_least_the_busiest_hour() -> None:
    shape = tuple([0.5] * 12 + [1.5] * 12)
    assert Demand(mean_rps=2.0, peak_to_mean=1.2, diurnal=shape).peak_rps == pytest.approx(3.0)
    assert Demand(mean_rps=2.0, peak_to_mean=2.0, diurnal=shape).peak_rps == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean_rps": 0.0}, "mean_rps must be > 0"),
        ({"mean_rps": 1.0, "peak_to_mean": 0.5}, "peak_to_mean must be >= 1"),
        ({"mean_rps": 1.0, "diurnal": (1.0,) * 23}, "24 hourly multipliers"),
        ({"mean_rps": 1.0, "diurnal": (2.0,) * 24}, "must average 1"),
        ({"mean_rps": 1.0, "output_tokens": 0}, "must be >= 1"),
        ({"mean_rps": 1.0, "shared_prefix_tokens": 1000}, "below its input_tokens"),
        # Token counts past 64 bits were an OverflowError deep in the simulation's arrays.
        ({"mean_rps": 1.0, "input_tokens": 10**23}, "input_tokens must be <= 2147483647"),
        ({"mean_rps": 1.0, "output_tokens": 1.5}, "output_tokens must be an integer"),
    ],
)
def test_a_bad_demand_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(turnout.PlanError, match=message):
        Demand(**kwargs)  # type: ignore[arg-type]


def test_a_trace_of_one_instant_has_no_rate(tmp_path: Path) -> None:
    one = synthetic_load(Demand(mean_rps=1.0), scenario=SCENARIO, rate_rps=0.01, duration_s=1)
    with pytest.raises(turnout.PlanError, match="a rate needs two arrival times"):
        Demand.from_trace([one])


@pytest.mark.parametrize("rate", [1e7, 1e300])
def test_a_load_too_large_to_simulate_is_refused(config: turnout.Config, rate: float) -> None:
    # 1e7 requests/s for 600 s is 6e9 requests: the run allocated gigabytes and never ended;
    # 1e300 was numpy's "Maximum allowed dimension exceeded". A demand no pool can serve must be
    # a clear error, not a hang.
    with pytest.raises(turnout.PlanError, match=r"more than one simulated run holds \(1,000,000\)"):
        synthetic_load(BUSY, scenario=SCENARIO, rate_rps=rate, duration_s=600.0)
    with pytest.raises(turnout.PlanError, match="shorten the duration"):
        size_pool(config, SCENARIO, POOL, replace(BUSY, mean_rps=rate), models=MODELS)


def test_synthetic_load_shares_its_prefix() -> None:
    d = Demand(mean_rps=1.0, input_tokens=2000, shared_prefix_tokens=1000)
    load = synthetic_load(d, scenario=SCENARIO, rate_rps=20, duration_s=10, seed=1)
    assert len(load) == 200  # rate x duration
    blocks = load.values.reshape(len(load), -1)  # every prompt: the same 62 leading blocks
    assert blocks.shape[1] == 1000 // 16
    assert (blocks == blocks[0]).all()
    assert (load.input_tokens > 992).all()
    assert np.all(np.diff(load.arrival_s) >= 0)
    assert load.arrival_s[-1] - load.arrival_s[0] < 10


# --- The SLO and the tables --------------------------------------------------------------------


def test_slo_of_a_scenario(config: turnout.Config) -> None:
    assert Slo.of(config, SCENARIO) == Slo(ttft_p95_ms=800, latency_p95_ms=4000)
    assert Slo.of(config, "agent-assist") == Slo(ttft_p95_ms=1500)
    assert not Slo.of(config, "contract-extraction").bounded


def test_pool_table_routes_the_scenario_to_the_pool_only(config: turnout.Config) -> None:
    t = pool_table(config, SCENARIO, POOL, 5)
    info = t.target_info(POOL)
    assert info["endpoints"] == [f"http://127.0.0.1:{9000 + i}" for i in range(5)]
    assert info["max_inflight"] == [64] * 5  # as the original replicas
    s = t.scenario_info(SCENARIO)
    assert [r["target"] for r in s["routes"]] == [POOL]
    assert s["fallback"] == []
    assert s["spillover"] is None
    assert t.scenario_info("agent-assist") == config.scenario_info("agent-assist")
    assert t.source.endswith("#pool:support-summarization:llama-70bx5")
    # A table derived from a derived one starts from that one.
    again = pool_table(t, SCENARIO, POOL, 2)
    assert again.target_info(POOL)["endpoints"] == [
        "http://127.0.0.1:9000",
        "http://127.0.0.1:9001",
    ]


def test_hybrid_and_maas_tables(config: turnout.Config) -> None:
    h = hybrid_table(config, SCENARIO, POOL, 3, "gpt-4.1-mini").scenario_info(SCENARIO)
    assert [r["target"] for r in h["routes"]] == [POOL]
    assert h["spillover"]["target"] == "gpt-4.1-mini"
    assert float(h["spillover"]["when_inflight_ratio"]) == pytest.approx(0.9)
    assert h["fallback"] == ["gpt-4.1-mini", "claude-sonnet-4"]
    m = maas_table(config, SCENARIO, "claude-sonnet-4").scenario_info(SCENARIO)
    assert [r["target"] for r in m["routes"]] == ["claude-sonnet-4"]
    assert m["fallback"] == ["gpt-4.1-mini"]
    assert m["spillover"] is None
    with pytest.raises(turnout.PlanError, match="'llama-70b' is self_hosted, not a MaaS target"):
        maas_table(config, SCENARIO, POOL)
    with pytest.raises(turnout.PlanError, match="1 to 64 replicas"):
        pool_table(config, SCENARIO, POOL, 65)


def test_a_table_not_from_a_file_cannot_be_derived() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    with pytest.raises(turnout.PlanError, match="cannot read the routing table's file '<string>'"):
        pool_table(turnout.load_config_text(text), SCENARIO, POOL, 2)


@needs_sim
def test_hybrid_spills_the_peak_to_maas(config: turnout.Config) -> None:
    m = measure(
        hybrid_table(config, SCENARIO, POOL, 1, "gpt-4.1-mini"),
        SCENARIO,
        BUSY,
        rate_rps=BUSY.peak_rps,
        duration_s=DURATION_S,
        models=MODELS,
    )
    assert m.failed == 0
    assert m.availability == 1.0
    assert m.by_target[POOL] > 0
    assert m.by_target["gpt-4.1-mini"] > 0
    assert sum(m.by_target.values()) == m.requests
    assert isinstance(m.cost_usd, Decimal)
    assert m.cost_usd > 0


# --- Sizing -------------------------------------------------------------------------------------


@needs_sim
def test_the_pool_size_pool_picks_meets_the_slo_and_one_fewer_does_not(
    config: turnout.Config,
) -> None:
    sizing = size_pool(config, SCENARIO, POOL, BUSY, models=MODELS, duration_s=DURATION_S)
    n = sizing.replicas
    assert n >= 2, "the demand should need more than one replica"
    assert sizing.below is not None
    assert sizing.replica_rps == pytest.approx(BUSY.peak_rps / n)
    assert sizing.trials[-1] is sizing.at_peak or sizing.at_peak in sizing.trials
    slo = Slo.of(config, SCENARIO)

    # The simulator, run again on those tables (same load, then another draw of it), agrees.
    for seed in (0, 1):
        ok = measure(
            pool_table(config, SCENARIO, POOL, n),
            SCENARIO,
            BUSY,
            rate_rps=BUSY.peak_rps,
            duration_s=DURATION_S,
            models=MODELS,
            seed=seed,
        )
        assert ok.slo_met
        assert ok.failed == 0
        assert ok.ttft_p95_ms is not None
        assert ok.ttft_p95_ms <= 800
        assert ok.latency_p95_ms is not None
        assert ok.latency_p95_ms <= 4000
        assert ok.by_target == {POOL: ok.requests}
        fewer = measure(
            pool_table(config, SCENARIO, POOL, n - 1),
            SCENARIO,
            BUSY,
            rate_rps=BUSY.peak_rps,
            duration_s=DURATION_S,
            models=MODELS,
            seed=seed,
        )
        assert not fewer.slo_met
        assert fewer.failed > 0 or not slo.holds(fewer.ttft_p95_ms, fewer.latency_p95_ms)
        if seed == 0:
            # Deterministic: the very runs size_pool made (under its own table labels).
            assert replace(ok, table=sizing.at_peak.table) == sizing.at_peak
            assert replace(fewer, table=sizing.below.table) == sizing.below

    # The replay's own per-scenario verdict (turnout.replay's summary) says the same.
    load = synthetic_load(BUSY, scenario=SCENARIO, rate_rps=BUSY.peak_rps, duration_s=DURATION_S)
    for replicas, met in ((n, True), (n - 1, False)):
        summary = replay(
            pool_table(config, SCENARIO, POOL, replicas), [load], models=MODELS
        ).summary
        assert (summary["scenarios"][SCENARIO]["slo_met"] and summary["failed"] == 0) is met


@needs_sim
def test_a_light_demand_needs_one_replica(config: turnout.Config) -> None:
    light = Demand(mean_rps=0.5, output_tokens=60)
    sizing = size_pool(config, SCENARIO, POOL, light, models=MODELS, duration_s=DURATION_S)
    assert sizing.replicas == 1
    assert sizing.below is None
    assert sizing.at_peak.slo_met


# --- What cannot be planned ---------------------------------------------------------------------


@needs_sim
def test_a_demand_no_pool_can_serve_within_the_slo(config: turnout.Config) -> None:
    # Answers of ~200 tokens with a long tail: their decode alone puts the p95 latency past 4 s
    # whatever the pool size (the best seen is named with the bound).
    tail = Demand(mean_rps=10.0, output_tokens=200)
    with pytest.raises(turnout.PlanError) as e:
        size_pool(
            config, SCENARIO, POOL, tail, models=MODELS, duration_s=DURATION_S, max_replicas=8
        )
    message = str(e.value)
    assert message.startswith("cannot plan: no pool of up to 8 replicas of 'llama-70b' serves")
    assert "the best p95s seen over 4 pool sizes were TTFT" in message  # 1, 2, 4, 8
    assert re.search(r"and latency \d+ ms \(bound 4000 ms\)", message)
    assert e.value.code == "cannot_plan"
    assert isinstance(e.value, ValueError)


@needs_sim
def test_a_busy_demand_on_a_capped_pool(config: turnout.Config) -> None:
    with pytest.raises(
        turnout.PlanError,
        match=r"no pool of up to 2 replicas .* the largest pool had [1-9]\d* of \d+ requests "
        r"failed",
    ):
        size_pool(
            config, SCENARIO, POOL, BUSY, models=MODELS, duration_s=DURATION_S, max_replicas=2
        )


@needs_sim
def test_a_single_request_beyond_the_latency_slo(config: turnout.Config) -> None:
    long_answers = Demand(mean_rps=1.0, output_tokens=1000)
    with pytest.raises(
        turnout.PlanError,
        match=r"a single request of 1000 input and 1000 output tokens alone on one replica of "
        r"'llama-70b' takes latency \d+ ms, beyond scenario 'support-summarization''s SLO of "
        r"4000 ms: no pool size can meet it",
    ):
        size_pool(config, SCENARIO, POOL, long_answers, models=MODELS, duration_s=DURATION_S)


def test_a_pool_that_may_not_hold_the_scenarios_data(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    text = text.replace(
        "data_classes: [public, internal, deidentified, confidential, restricted]",
        "data_classes: [public, restricted]",
    ).replace(
        "routes: [{target: llama-70b, weight: 90}, {target: gpt-4.1-mini, weight: 10}]",
        "routes: [{target: gpt-4.1-mini}]",
    )
    table = tmp_path / "public-pool.yaml"
    table.write_text(text, encoding="utf-8")
    with pytest.raises(
        turnout.PlanError,
        match=r"the table 'pool:support-summarization:llama-70bx\d+' derived from '.*public-pool"
        r"\.yaml' is invalid: .*target 'llama-70b' does not accept data class 'deidentified'",
    ):
        size_pool(turnout.load_config(table), SCENARIO, POOL, BUSY, models=MODELS)


@needs_sim
def test_a_request_beyond_the_context_window(config: turnout.Config) -> None:
    huge = Demand(mean_rps=1.0, input_tokens=140_000, output_tokens=60)  # window: 131072
    with pytest.raises(
        turnout.PlanError,
        match=r"a single request of 140000 input and 60 output tokens cannot go to 'llama-70b' "
        r"\(scenario 'support-summarization'\): needs 140060 tokens .*\(the widest context window "
        r"is 131072",
    ):
        size_pool(config, SCENARIO, POOL, huge, models=MODELS, duration_s=DURATION_S)


@needs_sim
def test_a_model_with_zero_throughput(config: turnout.Config) -> None:
    zero = {POOL: {"throughput": {**MODELS[POOL]["throughput"], "output_tokens_per_s": 0}}}
    with pytest.raises(
        turnout.PlanError,
        match=r"the performance model of 'llama-70b' has no throughput \(models\['llama-70b'\]"
        r"\.throughput\.output_tokens_per_s = 0\)",
    ):
        size_pool(config, SCENARIO, POOL, BUSY, models=zero, duration_s=DURATION_S)
    # measure() lets the simulator's own refusal through; it names the target.
    with pytest.raises(turnout.InvalidArgumentError, match=r"models\['llama-70b'\]\.throughput"):
        measure(config, SCENARIO, BUSY, rate_rps=1.0, duration_s=5.0, models=zero)


def test_a_scenario_without_slo(config: turnout.Config) -> None:
    with pytest.raises(
        turnout.PlanError,
        match=r"scenario 'contract-extraction' has no SLO to size a pool to: set "
        r"slo\.ttft_p95_ms or slo\.latency_p95_ms",
    ):
        size_pool(config, "contract-extraction", POOL, BUSY, models=MODELS)


def test_a_target_that_is_not_self_hosted(config: turnout.Config) -> None:
    with pytest.raises(
        turnout.PlanError, match=r"target 'gpt-4\.1-mini' is maas, not a self-hosted pool"
    ):
        size_pool(config, SCENARIO, "gpt-4.1-mini", BUSY, models=MODELS)
    with pytest.raises(turnout.PlanError, match="the routing table has no target 'h100-pool'"):
        size_pool(config, SCENARIO, "h100-pool", BUSY)
    with pytest.raises(turnout.PlanError, match="max_replicas must be 1 to 64"):
        size_pool(config, SCENARIO, POOL, BUSY, max_replicas=65)


def test_plan_error_is_a_value_error_with_its_code() -> None:
    error = turnout.PlanError("cannot plan: x")
    assert isinstance(error, ValueError)
    assert isinstance(error, turnout.TurnoutError)
    assert error.code == "cannot_plan"
    assert "cannot_plan" not in _core.error_codes()  # Python only: no core code
