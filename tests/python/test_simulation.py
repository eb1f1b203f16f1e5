"""turnout._core.Simulation end to end (a small trace through the real Router against simulated
providers and replicas) and turnout._core.AttemptPolicy, the one retry/fallback policy."""

from __future__ import annotations

import numpy as np
import pytest

import turnout
from turnout import _core

TABLE = """version: 1
targets:
  api:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
  vault:
    kind: maas
    provider: openai
    model: gpt-4.1
    data_classes: [confidential]
    context_window: 100000
    price: {input_per_mtok: 2.00, cache_read_per_mtok: 0.50, output_per_mtok: 8.00}
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public, restricted]
    context_window: 32000
    cost: {gpus_per_replica: 2, usd_per_gpu_hour: 2.00}
    replicas:
      - {endpoint: "http://127.0.0.1:9001", max_inflight: 8}
      - {endpoint: "http://127.0.0.1:9002", max_inflight: 8}
scenarios:
  chat:
    data_class: public
    routes: [{target: pool, weight: 50}, {target: api, weight: 50}]
    fallback: [pool, api]
"""

MODELS = {
    "api": {
        "ttft_ms": {"p50": 300, "p95": 900},
        "output_tokens_per_s": {"p50": 90, "p95": 40},
        "rpm": 120,
        "outages": [{"from_s": 1_700_000_020.0, "to_s": 1_700_000_040.0, "status": "error"}],
        "accept_rate": 0.8,
    },
    "pool": {
        "step": {"overhead_ms": 5.0, "ms_per_prefill_token": 0.01, "ms_per_decode_seq": 0.1},
        "max_seqs": 4,
    },
}

COLUMNS = {
    "arrival_s",
    "scenario",
    "target",
    "replica",
    "outcome",
    "attempts",
    "queue_ms",
    "ttft_ms",
    "latency_ms",
    "cached_predicted",
    "cached_realized",
    "input_tokens",
    "output_tokens",
    "cost_picos",
    "accepted",
    "error",
}


def config() -> turnout.Config:
    return turnout.load_config_text(TABLE, "sim.yaml")


def trace(n: int, seed: int = 0) -> dict[str, object]:
    """n requests over ~60 s: 8 sessions whose prompts grow turn by turn (shared prefixes)."""
    rng = np.random.default_rng(seed)
    arrivals = 1_700_000_000.0 + np.cumsum(rng.exponential(60.0 / n, n))
    sessions = rng.integers(0, 8, n)
    history: dict[int, list[int]] = {}
    prompts = []
    for s in sessions:
        h = history.setdefault(int(s), list(rng.integers(1, 30_000, 256)))
        h.extend(rng.integers(1, 30_000, 64))
        prompts.append(np.array(h, dtype=np.uint32))
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in prompts])
    return {
        "arrival_s": arrivals,
        "scenario": ["chat"] * n,
        "key": [f"s{s}" for s in sessions],
        "input_tokens": np.array([len(p) for p in prompts], dtype=np.int64),
        "output_tokens": rng.integers(20, 200, n).astype(np.int64),
        "token_offsets": offsets,
        "token_ids": np.concatenate(prompts),
    }


def test_a_small_trace_runs_end_to_end() -> None:
    sim = _core.Simulation(config(), MODELS, seed=3, series_interval_s=10.0)
    sim.add(**trace(300))
    res = sim.run()
    req, summary, series = res["requests"], res["summary"], res["series"]
    assert set(req) == COLUMNS
    assert all(len(col) == 300 for col in req.values())
    outcomes = list(req["outcome"])
    assert set(outcomes) <= {"served", "fallback", "failed"}
    assert summary["requests"] == 300
    assert summary["served"] == outcomes.count("served")
    assert summary["fallback"] == outcomes.count("fallback")
    assert summary["failed"] == outcomes.count("failed")
    assert summary["served"] + summary["fallback"] + summary["failed"] == 300
    assert summary["fallback"] > 0  # the outage and the RPM limit sent requests to the fallback
    assert int(series["arrivals"].sum()) == 300
    assert set(series) == {
        "t_s",
        "arrivals",
        "in_flight",
        "queue_depth",
        "utilization",
        "cost_picos",
    }
    assert (series["utilization"] >= 0).all()
    assert (series["utilization"] <= 1.0 + 1e-9).all()
    served = np.array([o != "failed" for o in outcomes])
    assert (req["ttft_ms"][served] <= req["latency_ms"][served]).all()
    assert np.isnan(req["ttft_ms"][~served]).all()
    assert (req["cached_realized"] <= req["input_tokens"]).all()
    pool = np.array([t == "pool" for t in req["target"]])
    assert req["cached_realized"][pool & served].sum() > 0  # sessions reuse their prefixes
    assert (req["replica"][pool] >= 0).all()
    assert (req["replica"][~pool] == -1).all()
    assert req["cost_picos"].dtype == np.int64
    assert summary["gpu_hours"] == pytest.approx(2 * 2 * summary["simulated_s"] / 3600)
    assert set(summary["targets"]) == {"api", "vault", "pool"}


def test_prompts_as_block_hashes() -> None:
    sim = _core.Simulation(config(), MODELS)
    n = 20
    sim.add(
        arrival_s=1_700_000_000.0 + np.arange(n) * 5.0,
        scenario=["chat"] * n,
        input_tokens=np.full(n, 1024, dtype=np.int64),
        output_tokens=np.full(n, 16, dtype=np.int64),
        block_offsets=np.arange(n + 1, dtype=np.int64) * 2,
        blocks=np.tile(np.array([111, 222], dtype=np.uint64), n),
        block_tokens=512,
    )
    res = sim.run()
    assert res["summary"]["requests"] == n
    assert res["summary"]["failed"] == 0


def test_progress_is_called_and_keyboard_interrupt_stops_cleanly() -> None:
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))

    sim = _core.Simulation(config(), MODELS)
    sim.add(**trace(200))
    sim.run(progress)
    assert calls
    assert calls[-1] == (200, 200)
    assert all(total == 200 for _, total in calls)

    def interrupt(done: int, total: int) -> None:
        if done >= 20:
            raise KeyboardInterrupt

    sim = _core.Simulation(config(), MODELS)
    sim.add(**trace(200))
    with pytest.raises(KeyboardInterrupt):
        sim.run(interrupt)
    with pytest.raises(ValueError, match="runs once"):
        sim.run()


def test_bad_input_gets_clear_errors() -> None:
    with pytest.raises(turnout.UnknownTargetError, match="nope"):
        _core.Simulation(config(), {"nope": {}})
    with pytest.raises(ValueError, match="unknown key 'rpn'"):
        _core.Simulation(config(), {"api": {"rpn": 10}})
    with pytest.raises(ValueError, match="unknown key 'step_ms'"):
        _core.Simulation(config(), {"pool": {"step_ms": 1}})
    with pytest.raises(ValueError, match="not a failure status"):
        _core.Simulation(config(), {"api": {"outages": [{"from_s": 0, "to_s": 1, "status": "ok"}]}})
    with pytest.raises(ValueError, match="jitter"):
        _core.Simulation(config(), {}, retry={"jitter": 3})
    row = {
        "output_tokens_per_s": 2000.0,
        "input_tokens": 1000,
        "output_tokens": 200,
        "concurrency": 0,
    }
    with pytest.raises(ValueError, match="throughput"):
        _core.Simulation(config(), {"pool": {"throughput": row}})
    with pytest.raises(ValueError, match="not both"):
        _core.Simulation(config(), {"pool": {"throughput": row, "step": {}}})
    row["concurrency"] = 32
    calibrated = _core.Simulation(config(), {"pool": {"throughput": row, "max_seqs": 32}})
    calibrated.add(**trace(20))
    assert calibrated.run()["summary"]["requests"] == 20
    sim = _core.Simulation(config(), {})
    one = {
        "arrival_s": np.array([1.7e9]),
        "input_tokens": np.array([10]),
        "output_tokens": np.array([5]),
    }
    with pytest.raises(turnout.UnknownScenarioError, match="nope"):
        sim.add(scenario=["nope"], **one)
    with pytest.raises(turnout.NoEligibleTargetError, match="data class 'confidential'"):
        sim.add(scenario=["chat"], data_class=["confidential"], **one)  # only vault takes it
    with pytest.raises(turnout.NoEligibleTargetError, match="impossible demand"):
        sim.add(
            scenario=["chat"],
            arrival_s=np.array([1.7e9]),
            input_tokens=np.array([200_000]),
            output_tokens=np.array([5]),
        )
    with pytest.raises(ValueError, match="expected 1 values, got 2"):
        sim.add(
            scenario=["chat"], arrival_s=np.array([1.7e9]), input_tokens=[1, 2], output_tokens=[1]
        )
    with pytest.raises(ValueError, match="token_offsets"):
        sim.add(scenario=["chat"], token_ids=np.array([1, 2], dtype=np.uint32), **one)


def test_attempt_policy_from_python() -> None:
    p = _core.AttemptPolicy(max_retries=1, base_backoff_ms=100, jitter=0.0, seed=1)
    p.start(2)
    assert p.after_attempt("rate_limited", 10.0, retry_after_ms=2500) == ("retry", 0, 12.5)
    assert p.after_attempt("error", 12.5) == ("fail_over", 1, 12.5)
    assert p.on_fallback
    assert p.after_attempt("ok", 13.0) == ("served", 1, 13.0)
    assert p.attempts == 3
    p.start(1)
    assert p.after_attempt("content_filter", 1.0) == ("give_up", 0, 1.0)
    assert p.after_refusal("budget_exhausted", 1.0)[0] == "give_up"
    with pytest.raises(ValueError, match="unknown status"):
        p.after_attempt("teapot", 1.0)
    with pytest.raises(ValueError, match="jitter"):
        _core.AttemptPolicy(jitter=2.0)
