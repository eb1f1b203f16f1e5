"""The capacity plan (turnout.plan, ``turnout plan``): the sanity rows of cost per million tokens to
the digit, the fully loaded month line by line, the break-even volume checked by hand from the
plan's own figures, the pool the simulator sized, the command's JSON and files, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import turnout
from turnout import capacity
from turnout.capacity import Demand, Measure, Slo
from turnout.plan import (
    SECONDS_PER_MONTH,
    DayMeasure,
    Overheads,
    Plan,
    breakeven,
    cost_per_mtok,
    day_levels,
    fully_loaded_lines,
    maas_usd_per_request_at,
    money_text,
    plan,
    reserve_replicas,
    self_hosted_usd,
)
from turnout.traces import TraceRow, TraceWriter

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "routing.yaml"
SCENARIO = "support-summarization"
# A replica's performance model (docs/replay.md: a self-hosted model's `throughput` row): 4,205
# output tokens/s on two GPUs, calibrated at 64 concurrent requests (the published 70B FP8 row,
# `_core.published_rows()`, runs 256: slower per stream), and a MaaS endpoint fast enough for the
# scenario's SLO.
MODELS: dict[str, Any] = {
    "llama-70b": {
        "throughput": {
            "output_tokens_per_s": 4205,
            "input_tokens": 1000,
            "output_tokens": 1000,
            "concurrency": 64,
        }
    },
    "gpt-4.1-mini": {"ttft_ms": {"p50": 300, "p95": 650}, "output_tokens_per_s": {"p50": 150}},
}
DEMAND = Demand(
    mean_rps=2.0, peak_to_mean=2.0, input_tokens=1500, output_tokens=150, shared_prefix_tokens=1024
)
DURATION_S = 60.0


# --- Cost per million tokens: the sanity rows ---------------------------------------------------


def test_cost_per_mtok_sanity_rows_to_the_digit() -> None:
    # Llama-3.1-8B FP8, one H100, 15,220 output tok/s, $2.99/GPU-hour.
    # 2.99 / 3600 / 15220 * 1e6 = 0.0545700102203...: $0.0546 per million at 100 %.
    assert cost_per_mtok(1, "2.99", 15220, 1) == Decimal("0.054570010220")
    # At 24 % utilization: 0.054570010220... / 0.24 = 0.22737504258...: "about $0.23".
    assert cost_per_mtok(1, "2.99", 15220, "0.24") == Decimal("0.227375042585")
    assert cost_per_mtok(1, Decimal("2.99"), 15220, 0.24) == Decimal("0.227375042585")
    # Llama-3.3-70B FP8 on two H100s at 4,205 tok/s: 2 x 2.99 = 5.98 $/h per replica;
    # 5.98 * 1e6 / (3600 * 4205) = 5,980,000 / 15,138,000 = 0.395032368873034...: "about $0.395".
    exact = Fraction(598, 100) * 10**6 / (3600 * 4205)
    assert round(exact * 10**12) == 395_032_368_873
    assert cost_per_mtok(2, "2.99", 4205, 1) == Decimal("0.395032368873")


@pytest.mark.parametrize(
    ("tokens", "utilization"), [(0, 1), (-5, 1), (15220, 0), (15220, "1.5"), (15220, -0.1)]
)
def test_cost_per_mtok_refuses_zero_throughput_and_bad_utilization(
    tokens: int, utilization: Any
) -> None:
    with pytest.raises(turnout.InvalidArgumentError):
        cost_per_mtok(1, "2.99", tokens, utilization)


# --- The fully loaded month ----------------------------------------------------------------------

SMALL_TABLE = """
version: 1
targets:
  pool:
    kind: self_hosted
    engine: vllm
    model: small
    data_classes: [public]
    context_window: 32768
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2.50,
           monthly: {staging: 500, engineering: 10000, observability: 300, incidents: 750,
                     pager: 120}}
    replicas:
      - {endpoint: "http://127.0.0.1:8001", max_inflight: 8}
  api:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 1047576
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
scenarios:
  faq:
    data_class: public
    slo: {ttft_p95_ms: 1000}
    routes: [{target: pool}]
"""


@pytest.fixture
def small_table(tmp_path: Path) -> turnout.Config:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL_TABLE, encoding="utf-8")
    return turnout.load_config(path)


def test_fully_loaded_month_line_by_line(small_table: turnout.Config) -> None:
    overheads = Overheads.from_target(small_table, "pool")
    # The table prices staging itself (so not in replicas) and names an item of its own (pager).
    assert overheads.staging_replicas == 0
    assert overheads.test_replicas == overheads.canary_replicas == 1
    assert overheads.engineering_usd == Decimal(10000)
    assert overheads.evals_usd == 0
    lines = fully_loaded_lines(small_table, "pool", 4, overheads)
    got = {r["item"]: (r["replicas"], r["usd_per_month"]) for r in lines.to_dict("records")}
    # One replica-month: 1 GPU x $2.50 x 730 h = $1825. Reserve: 0.2 x 4 = 0.8 -> 1 replica.
    replica = Decimal("1825.00")
    assert got["production"] == (4, 4 * replica)  # 7300
    assert got["reserve"] == (1, replica)
    assert got["test"] == (1, replica)
    assert got["canary"] == (1, replica)
    assert got["staging"][1] == Decimal(500)
    assert got["pager"][1] == Decimal(120)
    assert got["engineering"][1] == Decimal(10000)
    assert got["observability"][1] == Decimal(300)
    assert got["evals"][1] == Decimal(0)
    assert got["incidents"][1] == Decimal(750)
    assert set(got) == {
        "production",
        "reserve",
        "test",
        "canary",
        "staging",
        "pager",
        "engineering",
        "observability",
        "evals",
        "incidents",
    }
    # 7300 + 3 x 1825 + 500 + 120 + 10000 + 300 + 750 = 24445, exactly.
    total = sum(lines["usd_per_month"], Decimal(0))
    assert total == Decimal("24445.00")
    assert all(isinstance(v, Decimal) for v in lines["usd_per_month"])
    # GPUs of the pools priced in replicas: (4 + 1 + 1 + 1) x 1.
    assert int(lines["gpus"].sum()) == 7


def test_reserve_rounds_up_in_decimal() -> None:
    assert reserve_replicas(0.2, 4) == 1  # 0.8
    assert reserve_replicas(0.2, 5) == 1  # exactly 1
    assert reserve_replicas(0.3, 10) == 3  # 0.3 x 10 in binary is 3.0000000000000004
    assert reserve_replicas(0.0, 12) == 0
    assert reserve_replicas(0.25, 9) == 3  # 2.25


def test_a_free_maas_is_the_cheapest_option(tmp_path: Path) -> None:
    # A MaaS priced at $0 (a free tier, an internal endpoint) has $0 per accepted outcome: the
    # cheapest. The choice read `usd_per_accepted or Infinity`, so $0 counted as no figure and the
    # $18,970 pool won; the $0 printed as "0E-12".
    path = tmp_path / "free.yaml"
    path.write_text(
        SMALL_TABLE.replace(
            "price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}",
            "price: {input_per_mtok: 0, cache_read_per_mtok: 0, output_per_mtok: 0}",
        ),
        encoding="utf-8",
    )
    p = plan(
        turnout.load_config(path),
        "faq",
        self_hosted="pool",
        maas="api",
        demand=Demand(mean_rps=0.5, input_tokens=500, output_tokens=50),
        duration_s=30.0,
    )
    options = p.options.set_index("option")
    assert options.loc["maas_only", "slo_met"]
    assert options.loc["maas_only", "usd_per_accepted"] == 0
    assert p.recommendation == "maas_only"
    assert str(options.loc["maas_only", "usd_per_month"]) == "0"
    assert p.to_json()["options"][0]["usd_per_accepted"] == "0"


def test_overheads_refuse_contradictions(small_table: turnout.Config) -> None:
    with pytest.raises(turnout.PlanError, match="reserve must be a share >= 0"):
        Overheads(reserve=-0.1)
    with pytest.raises(turnout.PlanError, match="staging pool is given both"):
        Overheads.from_target(small_table, "pool", staging_replicas=2)
    # A table's monthly `reserve` (or `production`) was a second line beside the computed one:
    # the reserve counted twice.
    for item in ("reserve", "production"):
        with pytest.raises(turnout.PlanError, match=f"'{item}' would count the {item} pool twice"):
            Overheads(given_usd=((item, Decimal(1825)),))
    with pytest.raises(turnout.PlanError, match="engineering must be USD >= 0"):
        Overheads(engineering_usd=Decimal(-1))
    with pytest.raises(turnout.PlanError, match="'api' is maas, not a self-hosted pool"):
        Overheads.from_target(small_table, "api")
    with pytest.raises(turnout.PlanError, match="has no target 'nope'"):
        Overheads.from_target(small_table, "nope")


def test_day_levels_weigh_the_diurnal_shape() -> None:
    assert day_levels(Demand(mean_rps=3.0)) == [(3.0, 24.0)]
    shape = tuple([0.5] * 12 + [1.5] * 12)
    levels = day_levels(Demand(mean_rps=2.0, diurnal=shape))
    assert sum(h for _, h in levels) == 24.0
    # The levels keep the mean: sum(rate x hours) / 24 is the mean rate.
    assert math.isclose(sum(r * h for r, h in levels) / 24, 2.0)
    assert [r for r, _ in levels] == [1.0, 1.0, 3.0, 3.0]


def _window(rate: float, requests: int, cost: str, accepted: int) -> Measure:
    """A simulated window's figures, as capacity.measure reports them."""
    return Measure(
        table="t",
        rate_rps=rate,
        duration_s=requests / rate,
        requests=requests,
        served=requests,
        fallbacks=0,
        failed=0,
        accepted=accepted,
        cost_usd=Decimal(cost),
        ttft_p95_ms=100.0,
        latency_p95_ms=900.0,
        slo_attainment=1.0,
        slo_met=True,
        availability=1.0,
        cache_hit_rate=0.5,
        utilization=None,
        gpu_hours=0.0,
        by_target={"api": requests},
    )


def test_a_day_of_levels_is_priced_per_request_and_weighted_by_load() -> None:
    # Night: 12 h at 1 request/s, $0.05 for 100 requests; day: 12 h at 3/s, $0.30 for 300.
    night, day = _window(1.0, 100, "0.05", 90), _window(3.0, 300, "0.30", 285)
    measured = DayMeasure(((night, 12.0), (day, 12.0)), peak=day)
    # A month is 730 / 24 days: night 1 x 12 x 3600 x 730 / 24 = 1,314,000 requests at $0.0005,
    # day 3,942,000 at $0.001: $657 + $3942 = $4599.
    assert measured.usd_per_month() == Decimal("4599")
    # Accepted share weighted by requests: (0.90 x 12 + 0.95 x 36) / 48 = 0.9375.
    assert measured.accepted_share == pytest.approx(0.9375)
    assert measured.share_on("api") == 1.0
    # Counting only part of each window's cost (the hybrid's MaaS part): half of it here.
    assert measured.usd_per_month(lambda m: m.cost_usd / 2) == Decimal("2299.5")


def test_maas_price_at_a_cache_hit_rate_is_exact(example_config: turnout.Config) -> None:
    demand = Demand(mean_rps=1.0, input_tokens=1500, output_tokens=150)
    # gpt-4.1-mini: input $0.40, cache read $0.10, output $1.60 per million.
    # No cache: 1500 x 0.40e-6 + 150 x 1.60e-6 = 0.0006 + 0.00024.
    assert maas_usd_per_request_at(example_config, "gpt-4.1-mini", demand, 0.0) == Decimal(
        "0.00084"
    )
    # Half cached: 750 x 0.40e-6 + 750 x 0.10e-6 + 0.00024 = 0.0003 + 0.000075 + 0.00024.
    assert maas_usd_per_request_at(example_config, "gpt-4.1-mini", demand, 0.5) == Decimal(
        "0.000615"
    )


# --- Break-even: the step function against the line -------------------------------------------


def test_breakeven_by_hand() -> None:
    # A replica-month $1000, 20 % reserve, $3000 of fixed lines; a replica carries 1 request/s at
    # peak, peak = mean (a replica carries 2,628,000 requests a month); MaaS $0.001 per request.
    # k = 1: 1 + 1 reserve -> $5000 -> MaaS reaches it at 5,000,000 > 2,628,000: not in this step.
    # k = 2: 2 + 1 -> $6000 -> 6,000,000 > 5,256,000: no.  k = 3: 3 + 1 -> $7000 -> 7,000,000
    # <= 7,884,000: break-even at 7,000,000 requests/month.
    figures = {
        "peak_to_mean": 1.0,
        "replica_rps": 1.0,
        "replica_usd": Decimal(1000),
        "reserve": 0.2,
        "fixed_usd": Decimal(3000),
    }
    assert breakeven(maas_usd_per_request=Decimal("0.001"), **figures) == 7_000_000
    assert self_hosted_usd(7_000_000, **figures) == Decimal(7000)
    assert self_hosted_usd(7_884_000, **figures) == Decimal(7000)
    assert self_hosted_usd(7_884_001, **figures) == Decimal(8000)  # 4 + 1 reserve + 3000
    # A replica with its reserve costs $1200 a month and carries $1051.20 of MaaS traffic: never.
    assert breakeven(maas_usd_per_request=Decimal("0.0004"), **figures) is None


# --- A real plan through the simulator --------------------------------------------------------


@pytest.fixture(scope="module")
def support_plan() -> Plan:
    config = turnout.load_config(EXAMPLE)
    return plan(
        config,
        SCENARIO,
        self_hosted="llama-70b",
        maas="gpt-4.1-mini",
        demand=DEMAND,
        models=MODELS,
        seed=1,
        duration_s=DURATION_S,
    )


def test_the_sized_pool_meets_the_slo_and_one_fewer_does_not(support_plan: Plan) -> None:
    sizing = support_plan.sizing
    assert sizing.at_peak.slo_met
    assert sizing.at_peak.rate_rps == DEMAND.peak_rps
    # This light demand fits one replica (so there is no smaller pool to run): the "one fewer
    # fails" check is test_the_planners_pool_against_the_simulator's, on a busier demand.
    assert sizing.replicas == 1
    assert sizing.below is None
    lines = {r["item"]: r for r in support_plan.lines.to_dict("records")}
    assert lines["production"]["replicas"] == sizing.replicas
    assert lines["reserve"]["replicas"] == math.ceil(Decimal("0.2") * sizing.replicas)
    # The table's own monthly items, as given.
    assert lines["staging"]["usd_per_month"] == Decimal(2200)
    assert lines["engineering"]["usd_per_month"] == Decimal(16000)
    # 2 GPUs x $2.99 x 730 h per replica.
    assert support_plan.replica_usd_per_month == Decimal("4365.40")
    assert lines["production"]["usd_per_month"] == sizing.replicas * Decimal("4365.40")
    # The capacity the curve scales with: one replica met the SLO at it (or it is the pool's own).
    assert support_plan.replica_rps >= sizing.replica_rps
    assert support_plan.replica_rps == sizing.replica_rps or any(
        m.slo_met and m.rate_rps >= support_plan.replica_rps for m in support_plan.capacity_trials
    )


def test_options_are_measured_and_priced(support_plan: Plan) -> None:
    options = support_plan.options.set_index("option")
    assert list(options.index) == ["maas_only", "self_hosted_only", "hybrid"]
    month = Decimal(repr(DEMAND.requests_per_month()))
    # Self-hosted only costs its fully loaded month, whatever it serves.
    assert (
        options.loc["self_hosted_only", "usd_per_month"] == support_plan.self_hosted_usd_per_month
    )
    maas = options.loc["maas_only"]
    assert maas["usd_per_request"] == support_plan.maas_usd_per_request
    assert abs(maas["usd_per_month"] / month - maas["usd_per_request"]) < Decimal("1e-12")
    for name, row in options.iterrows():
        assert 0 < row["accepted_share"] <= 1, name
        assert row["usd_per_accepted"] >= row["usd_per_request"], name
        assert 0 < row["availability"] <= 1, name
    assert options.loc["self_hosted_only", "slo_met"]
    # The hybrid's pool is sized for the mean load: never larger than the peak's.
    assert 1 <= support_plan.hybrid_replicas <= support_plan.sizing.replicas
    assert support_plan.recommendation in ("maas_only", "self_hosted_only", "hybrid")


def test_breakeven_checked_from_the_plans_own_figures(support_plan: Plan) -> None:
    p = support_plan
    be = p.breakeven_requests_per_month
    assert be is not None
    per_request = p.maas_usd_per_request
    fixed = p.fixed_usd_per_month
    replica = p.replica_usd_per_month
    # The fixed lines: everything but production and reserve.
    loaded = {r["item"]: r["usd_per_month"] for r in p.lines.to_dict("records")}
    assert fixed == sum(v for k, v in loaded.items() if k not in ("production", "reserve"))
    # At the break-even volume the pool has k production replicas (+ ceil(0.2 k) reserve), and
    # MaaS at $per_request x volume equals that step's month: volume = month / per_request.
    peak_factor = DEMAND.peak_rps / DEMAND.mean_rps
    k = math.ceil(be / SECONDS_PER_MONTH * peak_factor / p.replica_rps - 1e-9)
    month = (k + math.ceil(Decimal("0.2") * k)) * replica + fixed
    assert be == pytest.approx(float(month / per_request), rel=1e-12)
    figures = {
        "peak_to_mean": peak_factor,
        "replica_rps": p.replica_rps,
        "replica_usd": replica,
        "reserve": 0.2,
        "fixed_usd": fixed,
    }
    assert self_hosted_usd(be, **figures) == month
    # Below it MaaS is cheaper; at it, self-hosted is no dearer.
    below = be * (1 - 1e-9)
    assert per_request * Decimal(repr(below)) < self_hosted_usd(below, **figures)
    assert per_request * Decimal(repr(be)) >= month * (1 - Decimal("1e-12"))
    # The curve gives the plan's own month at the plan's own volume, and crosses at be.
    curve = p.curve.set_index("requests_per_month")
    assert curve.loc[DEMAND.requests_per_month(), "self_hosted_usd"] == (
        p.self_hosted_usd_per_month
    )
    assert be in curve.index


def test_sensitivity_rows(support_plan: Plan) -> None:
    s = support_plan.sensitivity
    util = s[s["parameter"] == "utilization"]
    assert list(util["value"]) == pytest.approx([i / 10 for i in range(1, 11)])
    # 2 GPUs, $2.99, 4205 tok/s (the models' throughput row): the sanity row at 100 %.
    assert util["usd_per_mtok"].iloc[-1] == Decimal("0.395032368873")
    assert util["usd_per_mtok"].iloc[0] == cost_per_mtok(2, "2.99", 4205, "0.1")
    cache = s[s["parameter"] == "cache_hit_rate"].set_index("value")
    # Re-priced exactly: from no cache to half the 1500-token prompt cached saves 750 tokens x
    # ($0.40 - $0.10) per million = $0.000225 per request.
    assert cache.loc[0.0, "maas_usd_per_request"] - cache.loc[0.5, "maas_usd_per_request"] == (
        Decimal("0.000225")
    )
    measured = support_plan.options.set_index("option").loc["maas_only", "cache_hit_rate"]
    assert cache.loc[measured, "maas_usd_per_request"] == support_plan.maas_usd_per_request
    assert cache.loc[measured, "breakeven_requests_per_month"] == pytest.approx(
        support_plan.breakeven_requests_per_month
    )
    # A higher hit rate makes MaaS cheaper, so self-hosting pays only later (or never).
    be = [b if b == b else math.inf for b in cache["breakeven_requests_per_month"]]
    assert be == sorted(be)


def test_reasons_forecast_with_the_destinations_cache_rate(support_plan: Plan) -> None:
    text = "\n".join(support_plan.reasons)
    assert "forecasts with the new rate" in text
    assert "every pool, not only production" in text
    assert "token-price spreadsheet" in text
    # The example table gives no incidents figure: said, not silently left out.
    assert "incidents counted as $0 (no figure given)" in text


def test_json_and_markdown(support_plan: Plan) -> None:
    data = json.loads(json.dumps(support_plan.to_json()))
    assert data["recommendation"] == support_plan.recommendation
    assert Decimal(data["self_hosted_usd_per_month"]) == support_plan.self_hosted_usd_per_month
    assert [r["item"] for r in data["lines"]][:2] == ["production", "reserve"]
    assert isinstance(data["lines"][0]["usd_per_month"], str)  # exact decimals as strings
    assert data["sizing"]["replicas"] == support_plan.sizing.replicas
    md = support_plan.to_markdown()
    for heading in (
        "# Capacity plan: support-summarization",
        "## The fully loaded month",
        "## Options",
        "## Break-even",
        "## Sensitivity",
    ):
        assert heading in md


def test_cannot_recommend_when_no_option_passes_the_quality_gate() -> None:
    # The scenario's gate is 0.95 accepted; every target here accepts 60 %.
    models = {k: {**v, "accept_rate": 0.6} for k, v in MODELS.items()}
    p = plan(
        turnout.load_config(EXAMPLE),
        SCENARIO,
        self_hosted="llama-70b",
        maas="gpt-4.1-mini",
        demand=DEMAND,
        models=models,
        seed=1,
        duration_s=30.0,
    )
    assert p.recommendation == "cannot_recommend"
    assert "no option meets the SLO and the quality gate" in p.reasons[0]
    assert sum("fails the quality gate" in r for r in p.reasons) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"self_hosted": "gpt-4.1-mini", "maas": "gpt-4.1-mini"}, "is maas, not a self-hosted"),
        ({"self_hosted": "llama-70b", "maas": "llama-70b"}, "is self_hosted, not a MaaS target"),
        ({"self_hosted": "llama-404", "maas": "gpt-4.1-mini"}, "has no target 'llama-404'"),
    ],
)
def test_plan_refuses_wrong_targets(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(turnout.PlanError, match=message):
        plan(turnout.load_config(EXAMPLE), SCENARIO, demand=DEMAND, **kwargs)


# --- The command -------------------------------------------------------------------------------


def run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


BASE = (
    "plan",
    EXAMPLE,
    "--scenario",
    SCENARIO,
    "--self-hosted",
    "llama-70b",
    "--maas",
    "gpt-4.1-mini",
)


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "models.json"
    path.write_text(json.dumps(MODELS), encoding="utf-8")
    return path


def test_cli_json_and_out(models_file: Path, tmp_path: Path) -> None:
    result = run(
        *BASE,
        "--rate",
        "2",
        "--peak-to-mean",
        "2",
        "--input-tokens",
        "1500",
        "--output-tokens",
        "150",
        "--shared-prefix-tokens",
        "1024",
        "--models",
        models_file,
        "--duration",
        "30",
        "--seed",
        "1",
        "--json",
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["scenario"] == SCENARIO
    assert data["recommendation"] in ("maas_only", "self_hosted_only", "hybrid", "cannot_recommend")
    assert {o["option"] for o in data["options"]} == {"maas_only", "self_hosted_only", "hybrid"}
    total = sum(Decimal(r["usd_per_month"]) for r in data["lines"])
    assert Decimal(data["self_hosted_usd_per_month"]) == total
    assert data["demand"]["mean_rps"] == 2.0
    for name in (
        "plan.json",
        "plan.md",
        "lines.csv",
        "options.csv",
        "curve.csv",
        "sensitivity.csv",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "plan.json").read_text()) == data


def test_cli_demand_from_a_trace(models_file: Path, tmp_path: Path) -> None:
    # Ten minutes at 2 requests/s of this scenario (and some of another, left out).
    trace = tmp_path / "trace.jsonl"
    rows = [
        TraceRow(
            at=1_767_225_600.0 + i / 2,
            input_tokens=1500,
            output_tokens=150,
            scenario=SCENARIO if i % 10 else "agent-assist",
        )
        for i in range(1200)
    ]
    with TraceWriter(trace, "turnout") as w:
        w.write_rows(rows)
    result = run(*BASE, "--trace", trace, "--models", models_file, "--duration", "20", "--json")
    assert result.returncode == 0, result.stderr
    demand = json.loads(result.stdout)["demand"]
    assert demand["mean_rps"] == pytest.approx(1.8, rel=0.01)  # 1080 of them in ~600 s
    assert (demand["input_tokens"], demand["output_tokens"]) == (1500, 150)


def test_cli_tables_for_humans(models_file: Path) -> None:
    result = run(
        *BASE, "--rate", "1", "--output-tokens", "150", "--models", models_file, "--duration", "20"
    )
    assert result.returncode == 0, result.stderr
    for text in (
        "The fully loaded month of llama-70b",
        "Options",
        "break-even",
        "Sensitivity",
        "recommendation:",
    ):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # No SLO: contract-extraction is a batch scenario with none.
        (
            (
                "plan",
                EXAMPLE,
                "--scenario",
                "contract-extraction",
                "--self-hosted",
                "llama-70b",
                "--maas",
                "gpt-4.1-mini",
                "--rate",
                "1",
            ),
            "has no SLO",
        ),
        ((*BASE, "--rate", "0"), "mean_rps must be > 0"),
        ((*BASE, "--rate", "1", "--peak-to-mean", "0.5"), "peak_to_mean must be >= 1"),
        # One request alone is beyond the 4 s latency bound: no pool size helps.
        ((*BASE, "--rate", "1", "--output-tokens", "20000"), "no pool size can meet it"),
        (
            (
                "plan",
                EXAMPLE,
                "--scenario",
                SCENARIO,
                "--self-hosted",
                "llama-404",
                "--maas",
                "gpt-4.1-mini",
                "--rate",
                "1",
            ),
            "has no target 'llama-404'",
        ),
        ((*BASE[:-1], "claude-opus-9", "--rate", "1"), "has no target 'claude-opus-9'"),
        (
            (
                "plan",
                EXAMPLE,
                "--scenario",
                "nope",
                "--self-hosted",
                "llama-70b",
                "--maas",
                "gpt-4.1-mini",
                "--rate",
                "1",
            ),
            "has no scenario 'nope'",
        ),
        ((*BASE, "--rate", "1", "--reserve", "-1"), "reserve must be a share >= 0"),
    ],
)
def test_cli_bad_input_exits_2_with_the_reason(args: tuple[Any, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


def test_cli_zero_throughput_model(tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text(
        json.dumps(
            {
                "llama-70b": {
                    "throughput": {
                        "output_tokens_per_s": 0,
                        "input_tokens": 1000,
                        "output_tokens": 1000,
                        "concurrency": 64,
                    }
                }
            }
        )
    )
    result = run(*BASE, "--rate", "1", "--models", models)
    assert result.returncode == 2, result.stderr
    assert "has no throughput" in result.stderr


def test_cli_needs_a_trace_or_a_rate(tmp_path: Path) -> None:
    result = run(*BASE)
    assert result.returncode == 2
    assert "give --trace FILE or --rate RPS" in result.stderr
    result = run(*BASE, "--models", tmp_path / "missing.json", "--rate", "1")
    assert result.returncode == 2
    assert "missing.json: cannot open" in result.stderr


def test_sizing_uses_the_capacity_module(support_plan: Plan) -> None:
    # The pool came from capacity.size_pool: every trial is a pool of the target at peak.
    assert support_plan.sizing.trials
    for m in support_plan.sizing.trials:
        assert m.table.startswith("llama-70bx")
        assert m.rate_rps == DEMAND.peak_rps
    assert isinstance(support_plan.sizing, capacity.Sizing)


def test_the_planners_pool_against_the_simulator() -> None:
    """The pool plan() picks meets the SLO at peak and one replica fewer does not: both re-run
    through capacity.measure on their own tables, with another seed than the plan's."""
    config = turnout.load_config(EXAMPLE)
    busy = Demand(mean_rps=12, peak_to_mean=1.8, input_tokens=1800, output_tokens=150,
                  shared_prefix_tokens=1200)  # fmt: skip
    p = plan(config, SCENARIO, self_hosted="llama-70b", maas="gpt-4.1-mini", demand=busy,
             models=MODELS, seed=1, duration_s=120.0)  # fmt: skip
    n = p.sizing.replicas
    assert n >= 2

    def at_peak(replicas: int) -> Measure:
        return capacity.measure(
            capacity.pool_table(config, SCENARIO, "llama-70b", replicas),
            SCENARIO,
            busy,
            rate_rps=busy.peak_rps,
            duration_s=120.0,
            models=MODELS,
            seed=2,
            slo=Slo.of(config, SCENARIO),
        )

    assert at_peak(n).slo_met
    assert not at_peak(n - 1).slo_met


def test_cli_trace_refuses_the_shape_of_a_rate_demand(tmp_path: Path) -> None:
    trace = REPO / "tests" / "python" / "data" / "turnout_sample.jsonl"
    result = run(*BASE, "--trace", trace, "--peak-to-mean", "3", "--output-tokens", "5")
    assert result.returncode == 2
    message = "--peak-to-mean, --output-tokens describe a --rate demand, not a --trace"
    assert message in result.stderr


def test_cli_unwritable_out_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run(*BASE, "--rate", "1", "--duration", "30", "--out", blocker / "out")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("2200.0"), "2200.00"),
        (Decimal("18970.000000000000"), "18970.00"),
        (Decimal("0.000693565000"), "0.000693565"),
        (Decimal("4365.4"), "4365.40"),
        (Decimal("0E-12"), "0.00"),
        (Decimal("1E+3"), "1000.00"),
    ],
)
def test_money_text_keeps_every_digit_and_at_least_cents(amount: Decimal, text: str) -> None:
    assert money_text(amount) == text
