"""The hybrid option of a capacity plan: a pool sized for the mean load that spills the spikes over
to MaaS from the most requests in flight per replica that still meets the SLO at peak."""

from __future__ import annotations

from pathlib import Path

import pytest

import turnout
from turnout import capacity
from turnout.capacity import Demand, Slo
from turnout.plan import plan

ROOT = Path(__file__).resolve().parents[2]
# A MaaS target fast enough to meet support-summarization's SLO (800 ms TTFT, 4 s latency p95).
FAST_MAAS = {"gpt-4.1-mini": {"ttft_ms": {"p50": 250, "p95": 500},
                              "output_tokens_per_s": {"p50": 150, "p95": 90}}}  # fmt: skip
DEMAND = Demand(mean_rps=12, peak_to_mean=1.8, input_tokens=1800, output_tokens=150,
                shared_prefix_tokens=1200)  # fmt: skip
RUN = {"models": FAST_MAAS, "seed": 0, "duration_s": 120.0}


@pytest.fixture(scope="module")
def config() -> turnout.Config:
    return turnout.load_config(ROOT / "examples" / "routing.yaml")


def _at_peak(config: turnout.Config, replicas: int, spill_at: int | None) -> capacity.Measure:
    table = capacity.hybrid_table(
        config, "support-summarization", "llama-70b", replicas, "gpt-4.1-mini", spill_at=spill_at
    )
    return capacity.measure(
        table,
        "support-summarization",
        DEMAND,
        rate_rps=DEMAND.peak_rps,
        slo=Slo.of(config, "support-summarization"),
        **RUN,
    )


def test_the_hybrid_spills_from_the_largest_load_that_meets_the_slo(config: turnout.Config) -> None:
    p = plan(config, "support-summarization", self_hosted="llama-70b", maas="gpt-4.1-mini",
             demand=DEMAND, **RUN)  # fmt: skip
    k = p.hybrid_spill_at
    assert k is not None, "the table's own max_inflight (64) misses the SLO at peak"
    assert p.hybrid_replicas <= p.sizing.replicas
    # Checked again, independently of the plan's own search: k meets the SLO, k + 1 does not.
    met = _at_peak(config, p.hybrid_replicas, k)
    assert met.slo_met
    assert met.by_target.get("gpt-4.1-mini", 0) > 0  # the spikes really went to MaaS
    assert not _at_peak(config, p.hybrid_replicas, k + 1).slo_met
    assert not _at_peak(config, p.hybrid_replicas, None).slo_met
    hybrid = p.options.set_index("option").loc["hybrid"]
    assert bool(hybrid["slo_met"])
    assert p.to_json()["hybrid_spill_at"] == k


def test_spill_threshold_sets_every_replicas_max_inflight(config: turnout.Config) -> None:
    table = capacity.hybrid_table(
        config, "support-summarization", "llama-70b", 3, "gpt-4.1-mini", spill_at=5
    )
    assert table.target_info("llama-70b")["max_inflight"] == [5, 5, 5]
    assert table.scenario_info("support-summarization")["spillover"] == {
        "target": "gpt-4.1-mini",
        "when_inflight_ratio": 1.0,
    }
    with pytest.raises(turnout.PlanError, match="at least 1 request"):
        capacity.hybrid_table(
            config, "support-summarization", "llama-70b", 3, "gpt-4.1-mini", spill_at=0
        )
