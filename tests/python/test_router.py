"""The in-process Router: decisions, filters, spillover, breakers, budgets, reports, expiry.

Every time is passed explicitly (``now=`` in seconds) so each test is a replay. Money is compared as
Decimal against values computed by hand in the comments (prices are USD per million tokens, so
tokens x price gives micro-dollars).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

import turnout
from support import DELETE, T0
from turnout import (
    BudgetExhaustedError,
    InvalidArgumentError,
    NoEligibleTargetError,
    Router,
    TargetNotAllowedError,
    UnknownDecisionError,
    UnknownScenarioError,
    UnknownTargetError,
    UsageError,
    ledger,
)

MakeRouter = Callable[..., Router]

SUPPORT = "support-summarization"
AGENT = "agent-assist"
CONTRACT = "contract-extraction"
A, B = "http://pool-a:8000", "http://pool-b:8000"
A1, A2 = "http://127.0.0.1:8001", "http://127.0.0.1:8002"


def openai_usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def deepseek_usage(hit: int, miss: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": hit + miss,
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": miss,
        "completion_tokens": completion,
    }


def row(router: Router, scenario: str, target: str) -> dict[str, Any]:
    rows = [r for r in router.counters() if r["scenario"] == scenario and r["target"] == target]
    assert len(rows) == 1, (scenario, target)
    return rows[0]


def breaker(router: Router, target: str, now: float, endpoint: str | None = None) -> dict[str, Any]:
    rows = [
        b for b in router.breakers(now=now) if b["target"] == target and b["endpoint"] == endpoint
    ]
    assert len(rows) == 1, (target, endpoint)
    return rows[0]


def key_for(
    router: Router, scenario: str, target: str, *, prefix: str = "key", **kwargs: Any
) -> str:
    """The first sticky key `prefix-i` that explain() sends to `target` (it commits nothing)."""
    for i in range(1000):
        key = f"{prefix}-{i}"
        if router.explain(scenario, key=key, now=T0, **kwargs).target == target:
            return key
    raise AssertionError(f"no key routes {scenario} to {target}")


# ---- the Decision --------------------------------------------------------------------------------


def test_maas_decision_fields(example_router: Router, example_config: turnout.Config) -> None:
    key = key_for(example_router, SUPPORT, "gpt-4.1-mini", input_tokens=1800, max_output_tokens=300)
    d = example_router.route(SUPPORT, key=key, input_tokens=1800, max_output_tokens=300, now=T0)
    assert isinstance(d, turnout.Decision)
    assert d.id == 1  # the first decision of a fresh router
    assert d.scenario == SUPPORT
    assert d.target == "gpt-4.1-mini"
    assert d.endpoint is None  # MaaS: no replica
    # the fallback chain [gpt-4.1-mini, claude-sonnet-4] without the chosen target
    assert d.fallbacks == ["claude-sonnet-4"]
    assert d.reasons == ["weight:gpt-4.1-mini (10%)"]
    # gpt-4.1-mini: 1800 input x $0.40/Mtok + 300 output x $1.60/Mtok = $0.00072 + $0.00048 =
    # $0.0012
    assert isinstance(d.predicted_cost_usd, Decimal)
    assert d.predicted_cost_usd == Decimal("0.0012")
    assert d.config_version == example_config.version
    assert d.at == T0
    assert d.to_dict() == {
        "id": d.id,
        "scenario": SUPPORT,
        "target": "gpt-4.1-mini",
        "endpoint": None,
        "fallbacks": ["claude-sonnet-4"],
        "fallback_endpoints": [None],  # a managed API: no replica
        "reasons": ["weight:gpt-4.1-mini (10%)"],
        "predicted_cost_usd": Decimal("0.0012"),
        # OpenAI writes cost the input price: the worst case is the prediction itself.
        "reserved_cost_usd": Decimal("0.0012"),
        "expected_cached_tokens": 0,
        "cache_key": None,  # no prompt given: no prefix family
        "config_version": example_config.version,
    }
    assert d.cache_key is None
    assert "gpt-4.1-mini" in repr(d)


def test_self_hosted_decision_fields(example_router: Router) -> None:
    key = key_for(example_router, SUPPORT, "llama-70b")
    d = example_router.route(SUPPORT, key=key, input_tokens=1800, max_output_tokens=300, now=T0)
    assert d.target == "llama-70b"
    assert d.endpoint == A1  # both replicas empty: the first one
    assert d.fallbacks == ["gpt-4.1-mini", "claude-sonnet-4"]
    assert d.reasons == ["weight:llama-70b (90%)", f"least_loaded:llama-70b ({A1})"]
    # replica-seconds = 1800 / 12000 prefill tok/s + 300 / 2400 decode tok/s = 0.15 + 0.125 = 0.275
    # s;
    # 2 GPUs x $2.99/h = $5.98/h; 0.275 x 5.98 / 3600 = $0.000456805555... -> $0.000456805556
    # (nearest pico)
    assert d.predicted_cost_usd == Decimal("0.000456805556")


def test_predicted_cost_uses_the_scenario_output_cap_and_price_tiers(
    example_router: Router,
) -> None:
    # agent-assist has no max_output_tokens: the default cap is 1024.
    claude_key = key_for(example_router, AGENT, "claude-sonnet-4", input_tokens=5000)
    d = example_router.explain(AGENT, key=claude_key, input_tokens=5000, now=T0)
    # 5000 x $3.00 + 1024 x $15.00 = 15000 + 15360 micro-dollars = $0.03036
    assert d.predicted_cost_usd == Decimal("0.03036")
    # 250,000 input tokens do not fit claude (250000 + 1024 > 200000): the same key goes to gemini,
    # whose prompt is above the 200k tier: 250000 x $2.50 + 1024 x $15.00 = 625000 + 15360 =
    # $0.64036
    d = example_router.explain(AGENT, key=claude_key, input_tokens=250_000, now=T0)
    assert d.target == "gemini-2.5-pro"
    assert "context_window:claude-sonnet-4 (needs 251024 tokens)" in d.reasons
    assert d.predicted_cost_usd == Decimal("0.64036")
    # deepseek-chat (128k) cannot hold it either: it is filtered out of the fallbacks
    assert d.fallbacks == ["gpt-4.1-mini"]


def test_input_size_from_text_or_token_ids(example_router: Router) -> None:
    key = key_for(example_router, SUPPORT, "gpt-4.1-mini")
    # 4000 characters ~ 1000 tokens; support-summarization caps output at 512:
    # 1000 x $0.40 + 512 x $1.60 = 400 + 819.2 micro-dollars = $0.0012192
    d = example_router.explain(SUPPORT, key=key, text="a" * 4000, now=T0)
    assert d.predicted_cost_usd == Decimal("0.0012192")
    # 500 token ids, output 100: 500 x $0.40 + 100 x $1.60 = 200 + 160 = $0.00036
    d = example_router.explain(
        SUPPORT, key=key, token_ids=list(range(500)), max_output_tokens=100, now=T0
    )
    assert d.predicted_cost_usd == Decimal("0.00036")


def test_decision_ids_increase(example_router: Router) -> None:
    ids = [example_router.route(CONTRACT, now=T0).id for _ in range(3)]
    assert ids == [1, 2, 3]


def test_readme_flow(example_router: Router) -> None:
    key = key_for(example_router, SUPPORT, "gpt-4.1-mini")
    d = example_router.route(SUPPORT, key=key, input_tokens=1800, max_output_tokens=300, now=T0)
    receipt = example_router.report(
        d.id,
        target=d.target,
        status="ok",
        usage=openai_usage(1800, 210, 1024),
        ttft_ms=240,
        latency_ms=1900,
        now=T0 + 2,
    )
    # (1800 - 1024) x $0.40 + 1024 x $0.10 + 210 x $1.60 = 310.4 + 102.4 + 336 = 748.8 micro-dollars
    assert receipt == {
        "duplicate": False,
        "fallback": False,
        "priced": True,
        "cost_usd": Decimal("0.0007488"),
        "usage": {
            "uncached_input_tokens": 776,
            "cache_read_tokens": 1024,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "output_tokens": 210,
            "reasoning_tokens": 0,
        },
    }
    example_router.verdict(d.id, accepted=True, now=T0 + 3)
    r = row(example_router, SUPPORT, "gpt-4.1-mini")
    assert (r["requests"], r["outcomes"], r["ok"], r["accepted"]) == (1, 1, 1, 1)
    assert r["cost_usd"] == Decimal("0.0007488")
    assert r["cost_per_accepted_usd"] == Decimal("0.0007488")
    # 240 ms falls in the (100, 250] bucket (index 4), 1900 ms in (1000, 2500] (index 7)
    assert r["ttft_buckets"][4] == 1
    assert r["latency_buckets"][7] == 1
    assert (r["ttft_sum_ms"], r["latency_sum_ms"]) == (240, 1900)
    assert len(r["latency_buckets"]) == len(turnout.LATENCY_BUCKETS_MS) + 1


def test_self_hosted_outcome_cost(example_router: Router) -> None:
    d = example_router.route(CONTRACT, now=T0)
    receipt = example_router.report(
        d.id, target="llama-70b", status="ok", usage=openai_usage(1800, 210, cached=1024), now=T0
    )
    # Only the 776 uncached prompt tokens need prefill: replica-seconds = 776 / 12000 + 210 / 2400
    #   = (776 x 2400 + 210 x 12000) / (12000 x 2400) = 4382400 / 28800000;
    # x 2 GPUs x $2.99/h / 3600 s = 5.98e12 picos x 4382400 / (28800000 x 3600)
    #   = 252,765,740.74 picos -> 252,765,741 (nearest) = $0.000252765741
    assert receipt["cost_usd"] == Decimal("0.000252765741")
    assert receipt["usage"]["cache_read_tokens"] == 1024


@pytest.mark.parametrize(
    ("ms", "bucket"),
    [(0, 0), (10, 0), (11, 1), (250, 4), (251, 5), (60_000, 11), (60_001, 12)],
)
def test_latency_histogram_buckets_are_upper_bounds(
    make_router: MakeRouter, ms: int, bucket: int
) -> None:
    # LATENCY_BUCKETS_MS are inclusive upper bounds (Prometheus "le"); the last bucket is +Inf.
    assert turnout.LATENCY_BUCKETS_MS[:5] == [10, 25, 50, 100, 250]
    router = make_router()
    d = router.route("chat", now=T0)
    router.report(d.id, target="mini", status="ok", ttft_ms=ms, latency_ms=ms, now=T0)
    r = row(router, "chat", "mini")
    expected = [0] * (len(turnout.LATENCY_BUCKETS_MS) + 1)
    expected[bucket] = 1
    assert r["ttft_buckets"] == expected
    assert r["latency_buckets"] == expected


def test_replay_is_deterministic(example_config: turnout.Config) -> None:
    # The notebook promise: the same seed and the same traffic (clock included) give the same
    # decisions and the same ledger, key or no key.
    def replay() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        router = Router(example_config, seed=42, decision_ttl_s=30)
        decisions = []
        for i in range(300):
            scenario = (SUPPORT, AGENT, CONTRACT)[i % 3]
            key = None if i % 4 == 0 else f"user-{i % 17}"
            try:
                d = router.route(scenario, key=key, input_tokens=100 * i, now=T0 + i)
            except NoEligibleTargetError as e:
                decisions.append({"error": str(e)})
                continue
            decisions.append(d.to_dict())
            if i % 5:
                status = "error" if i % 7 == 0 else "ok"
                router.report(
                    d.id, target=d.target, status=status, usage=None, latency_ms=i, now=T0 + i + 0.5
                )
        return decisions, router.counters()

    assert replay() == replay()


# ---- sticky weighted split -----------------------------------------------------------------------


def test_same_key_same_seed_same_target(example_config: turnout.Config) -> None:
    one = Router(example_config, seed=11)
    two = Router(example_config, seed=11)
    for i in range(50):
        key = f"user-{i}"
        targets = []
        for j in range(3):
            d = one.route(SUPPORT, key=key, now=T0 + j)
            one.report(d.id, target=d.target, status="ok", now=T0 + j)
            targets.append(d.target)
        assert targets == [targets[0]] * 3
        assert (
            two.explain(SUPPORT, key=key, now=T0).target == targets[0]
        )  # another router, same seed


def test_weighted_split_is_near_90_10(example_router: Router) -> None:
    # explain() commits nothing, so the pool never fills and only the weights decide. Rendezvous
    # hashing
    # with score w / -ln(u) picks a target with probability w / sum(w): over n = 2000 keys the count
    # on
    # gpt-4.1-mini is Binomial(2000, 0.1): mean 200, sd = sqrt(2000 x 0.1 x 0.9) = 13.4. Five sd
    # (67)
    # either side, [133, 267], would be exceeded by an unbiased hash with probability < 1e-6.
    n = 2000
    mini = sum(
        example_router.explain(SUPPORT, key=f"k{i}", now=T0).target == "gpt-4.1-mini"
        for i in range(n)
    )
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(mini - 200) <= 5 * sd, mini


def test_seed_changes_the_assignment(example_config: turnout.Config) -> None:
    # A key keeps its target under another seed with probability 0.9^2 + 0.1^2 = 0.82; all 200 keys
    # keeping theirs has probability 0.82^200 < 1e-17.
    zero = Router(example_config, seed=0)
    one = Router(example_config, seed=1)
    keys = [f"k{i}" for i in range(200)]
    assert any(
        zero.explain(SUPPORT, key=k, now=T0).target != one.explain(SUPPORT, key=k, now=T0).target
        for k in keys
    )


def test_zero_weight_route_gets_no_traffic(make_router: MakeRouter) -> None:
    # A canary at 0%: declared (so it may be raised later) but never chosen, for any key.
    router = make_router(
        scenarios={
            "chat": {
                "routes": [{"target": "mini", "weight": 100}, {"target": "backup", "weight": 0}],
                "fallback": DELETE,
            }
        }
    )
    assert {router.explain("chat", key=f"k{i}", now=T0).target for i in range(500)} == {"mini"}


# ---- filters -------------------------------------------------------------------------------------


def test_request_data_class_stricter_than_scenario(example_router: Router) -> None:
    # Only llama-70b accepts 'confidential': every key goes there and no MaaS fallback is offered.
    for i in range(30):
        d = example_router.route(SUPPORT, key=f"k{i}", data_class="confidential", now=T0)
        assert d.target == "llama-70b"
        assert d.fallbacks == []
    # 'internal' likewise
    assert example_router.explain(SUPPORT, key="x", data_class="internal", now=T0).fallbacks == []


def test_boundary_fails_closed(example_router: Router) -> None:
    # agent-assist's targets accept only public (and deidentified): a restricted request has nowhere
    # to go.
    with pytest.raises(NoEligibleTargetError, match="boundary") as info:
        example_router.route(AGENT, key="u", data_class="restricted", now=T0)
    assert not isinstance(info.value, BudgetExhaustedError)
    assert isinstance(info.value, RuntimeError)
    assert example_router.pending_decisions == 0
    assert all(r["requests"] == 0 for r in example_router.counters())


def test_boundary_beats_spillover(example_router: Router) -> None:
    # Fill llama-70b past its spillover ratio (0.9 x 128) with confidential requests, which may only
    # go
    # there: they keep going to the pool (never to the spillover MaaS) until it is saturated.
    for _ in range(128):
        assert (
            example_router.route(SUPPORT, data_class="confidential", now=T0).target == "llama-70b"
        )
    with pytest.raises(NoEligibleTargetError, match="saturated"):
        example_router.route(SUPPORT, data_class="confidential", now=T0)
    assert row(example_router, SUPPORT, "gpt-4.1-mini")["requests"] == 0


def test_context_window(example_router: Router) -> None:
    # contract-extraction caps output at 2048; llama-70b holds 131072 tokens: 129024 + 2048 fits
    # exactly.
    assert example_router.explain(CONTRACT, input_tokens=129_024, now=T0).target == "llama-70b"
    with pytest.raises(NoEligibleTargetError, match="llama-70b: context_window"):
        example_router.route(CONTRACT, input_tokens=129_025, now=T0)
    # a smaller output cap makes it fit again: 130000 + 1000 <= 131072
    assert (
        example_router.explain(
            CONTRACT, input_tokens=130_000, max_output_tokens=1000, now=T0
        ).target
        == "llama-70b"
    )


def test_unknown_scenario(example_router: Router) -> None:
    with pytest.raises(UnknownScenarioError) as info:
        example_router.route("nope", now=T0)
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith(
        "unknown scenario 'nope'; known scenarios: support-summarization"
    )


def test_unknown_data_class(example_router: Router) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown data class 'secret'") as info:
        example_router.route(SUPPORT, data_class="secret", now=T0)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_tokens": -5},
        {"max_output_tokens": -2},
        {"input_tokens": 2**32 + 1},
        {"now": -1.0},
        {"now": float("nan")},
    ],
    ids=["input", "output", "huge-input", "negative-now", "nan-now"],
)
def test_invalid_request_arguments(example_router: Router, kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("now", T0)
    with pytest.raises(InvalidArgumentError):
        example_router.route(SUPPORT, **kwargs)
    assert example_router.pending_decisions == 0


@pytest.mark.parametrize("field", ["input_tokens", "max_output_tokens"])
def test_minus_one_tokens_is_rejected_like_any_negative_count(
    example_router: Router, field: str
) -> None:
    # The Python API spells "unknown" as None; -1 is a negative count like -5 and must not be
    # silently
    # read as "unknown" (the core's internal sentinel).
    with pytest.raises(InvalidArgumentError):
        example_router.route(SUPPORT, now=T0, **{field: -1})


# ---- self-hosted pools: least loaded, saturation, spillover --------------------------------------


def test_least_loaded_replica_alternates(example_router: Router) -> None:
    endpoints = [example_router.route(CONTRACT, now=T0).endpoint for _ in range(4)]
    assert endpoints == [A1, A2, A1, A2]
    assert [
        b["inflight"] for b in example_router.breakers(now=T0) if b["target"] == "llama-70b"
    ] == [2, 2]


def test_least_loaded_is_by_ratio(make_router: MakeRouter) -> None:
    router = make_router(
        targets={
            "pool": {
                "replicas": [{"endpoint": A, "max_inflight": 1}, {"endpoint": B, "max_inflight": 3}]
            }
        },
        scenarios={"chat": {"routes": [{"target": "pool"}], "fallback": DELETE}},
    )
    # loads (a/1, b/3): 0,0 -> a (first of equals); 1/1,0 -> b; full,1/3 -> b; full,2/3 -> b; then
    # full.
    assert [router.route("chat", now=T0).endpoint for _ in range(4)] == [A, B, B, B]
    with pytest.raises(NoEligibleTargetError, match="pool: saturated"):
        router.route("chat", now=T0)


def test_saturation_and_release(example_router: Router) -> None:
    decisions = [example_router.route(CONTRACT, now=T0) for _ in range(128)]  # 2 replicas x 64
    with pytest.raises(NoEligibleTargetError, match="llama-70b: saturated"):
        example_router.route(CONTRACT, now=T0)
    assert [
        b["inflight"] for b in example_router.breakers(now=T0) if b["target"] == "llama-70b"
    ] == [64, 64]
    example_router.report(
        decisions[5].id, target="llama-70b", status="ok", usage=openai_usage(10, 10), now=T0
    )
    d = example_router.route(CONTRACT, now=T0)
    assert d.endpoint == decisions[5].endpoint  # the slot that was freed


SPILL = {
    "scenarios": {
        "chat": {
            "routes": [{"target": "pool"}],
            "fallback": DELETE,
            "spillover": {"target": "mini", "when_inflight_ratio": 0.5},
        }
    },
}


def test_spillover_crosses_at_the_ratio(make_router: MakeRouter) -> None:
    router = make_router(**SPILL)
    # Capacity 2 x 4 = 8; spill when in-flight / capacity >= 0.5, i.e. from 4 in flight on.
    first = [router.route("chat", key=f"k{i}", now=T0) for i in range(4)]
    assert [d.target for d in first] == ["pool"] * 4
    spilled = router.route("chat", key="k4", now=T0)
    assert spilled.target == "mini"
    assert spilled.reasons[0] == "spillover:pool (in-flight 50%)"
    assert not any(r.startswith("weight:") for r in spilled.reasons)
    # mini: 0 input + 1024 (default cap) x $1.60 = $0.0016384
    assert spilled.predicted_cost_usd == Decimal("0.0016384")
    assert row(router, "chat", "mini")["spillovers"] == 1
    assert row(router, "chat", "mini")["requests"] == 1
    assert row(router, "chat", "pool")["spillovers"] == 0
    # one pool request finishes: 3 / 8 < 0.5, the next request goes to the pool again
    router.report(first[0].id, target="pool", status="ok", now=T0 + 1)
    assert router.route("chat", key="k5", now=T0 + 1).target == "pool"
    assert router.route("chat", key="k6", now=T0 + 1).target == "mini"
    assert row(router, "chat", "mini")["spillovers"] == 2


def test_spillover_on_the_example(example_router: Router) -> None:
    # llama-70b has 128 slots and spills at 0.9: 116 in flight is 116000 / 128 = 906 per mille >=
    # 900,
    # 115 is 898 < 900. So exactly 116 requests reach llama before the first spill.
    decisions = [example_router.route(SUPPORT, key=f"k{i}", now=T0) for i in range(400)]
    llama = [d for d in decisions if d.target == "llama-70b"]
    spilled = [d for d in decisions if any(r.startswith("spillover:") for r in d.reasons)]
    assert len(llama) == 116
    assert spilled, "the pool never spilled"
    assert all(d.target == "gpt-4.1-mini" for d in spilled)
    assert all(d.reasons[0] == "spillover:llama-70b (in-flight 90%)" for d in spilled)
    first_spill = decisions.index(spilled[0])
    assert sum(d.target == "llama-70b" for d in decisions[:first_spill]) == 116
    mini = row(example_router, SUPPORT, "gpt-4.1-mini")
    assert mini["spillovers"] == len(spilled)
    assert mini["requests"] == 400 - 116


def test_no_spillover_counted_when_the_spillover_target_is_unavailable(
    make_router: MakeRouter,
) -> None:
    # mini's breaker opens after one failure; the pool is then past its spillover ratio but mini
    # cannot
    # take the overflow, so the requests stay on the pool. They did not spill: the pool's row must
    # not
    # count them as spillovers ("spillovers: requests that came here because the pool was full").
    router = make_router(
        targets={"mini": {"breaker": {"consecutive_failures": 1, "cooldown_s": 60}}},
        scenarios={
            **SPILL["scenarios"],
            "direct": {"data_class": "public", "routes": [{"target": "mini"}]},
        },
    )
    d = router.route("direct", now=T0)
    router.report(d.id, target="mini", status="error", now=T0)
    assert breaker(router, "mini", T0)["phase"] == "open"
    targets = [router.route("chat", key=f"k{i}", now=T0 + 1).target for i in range(6)]
    assert targets == ["pool"] * 6
    assert row(router, "chat", "pool")["spillovers"] == 0
    assert row(router, "chat", "mini")["spillovers"] == 0


def test_spillover_ratio_is_compared_exactly(make_router: MakeRouter) -> None:
    # One replica of 7 slots, spill at 0.71428: with 5 in flight the pool is at 5/7 = 0.7142857...
    # >= 0.71428,
    # so the 6th request spills (with 4 in flight, 4/7 = 0.571 < 0.71428, the 5th does not).
    router = make_router(
        targets={"pool": {"replicas": [{"endpoint": A, "max_inflight": 7}]}},
        scenarios={
            "chat": {
                "routes": [{"target": "pool"}],
                "fallback": DELETE,
                "spillover": {"target": "mini", "when_inflight_ratio": 0.71428},
            }
        },
    )
    assert [router.route("chat", now=T0).target for _ in range(6)] == ["pool"] * 5 + ["mini"]


# ---- circuit breakers ----------------------------------------------------------------------------

BREAKER = {
    "targets": {"mini": {"breaker": {"consecutive_failures": 3, "cooldown_s": 30}}},
    "scenarios": {
        "chat": {"routes": [{"target": "mini"}], "fallback": ["backup"]},
        "other": {"data_class": "public", "routes": [{"target": "backup"}], "fallback": ["mini"]},
    },
}


def fail_mini(router: Router, statuses: list[str], now: float) -> None:
    for status in statuses:
        d = router.route("chat", now=now)
        assert d.target == "mini"
        router.report(d.id, target="mini", status=status, now=now)


def test_breaker_opens_on_consecutive_failures(make_router: MakeRouter) -> None:
    router = make_router(**BREAKER)
    fail_mini(router, ["error", "timeout"], T0)
    b = breaker(router, "mini", T0)
    assert (b["phase"], b["consecutive_failures"]) == ("closed", 2)
    assert router.explain("other", now=T0).fallbacks == ["mini"]
    fail_mini(router, ["rate_limited"], T0)  # the third failure in a row
    b = breaker(router, "mini", T0)
    assert (b["phase"], b["consecutive_failures"], b["times_opened"]) == ("open", 3, 1)
    d = router.route("chat", now=T0 + 1)
    assert d.target == "backup"
    assert d.reasons == ["fallback:backup", "breaker_open:mini"]
    assert d.fallbacks == []
    assert router.route("other", now=T0 + 1).fallbacks == []  # gone from fallbacks too


def test_breaker_half_open_probe(make_router: MakeRouter) -> None:
    router = make_router(**BREAKER)
    fail_mini(router, ["error"] * 3, T0)
    assert router.explain("chat", now=T0 + 29.999).target == "backup"  # still cooling down
    assert breaker(router, "mini", T0 + 29.999)["phase"] == "open"
    assert breaker(router, "mini", T0 + 30)["phase"] == "half_open"
    # explain() shows the probe but does not take it
    assert "half_open_probe:mini" in router.explain("chat", now=T0 + 30).reasons
    probe = router.route("chat", now=T0 + 30)
    assert probe.target == "mini"
    assert "half_open_probe:mini" in probe.reasons
    # a second, concurrent request may not go there
    second = router.route("chat", now=T0 + 30.5)
    assert second.target == "backup"
    assert "breaker_open:mini" in second.reasons
    assert router.explain("other", now=T0 + 30.5).fallbacks == []
    # the probe succeeds: closed again, traffic returns
    router.report(probe.id, target="mini", status="ok", usage=openai_usage(10, 10), now=T0 + 31)
    b = breaker(router, "mini", T0 + 31)
    assert (b["phase"], b["consecutive_failures"]) == ("closed", 0)
    assert router.route("chat", now=T0 + 31).target == "mini"
    assert router.explain("other", now=T0 + 31).fallbacks == ["mini"]


def test_breaker_failed_probe_reopens(make_router: MakeRouter) -> None:
    router = make_router(**BREAKER)
    fail_mini(router, ["error"] * 3, T0)
    probe = router.route("chat", now=T0 + 40)
    assert probe.target == "mini"
    router.report(probe.id, target="mini", status="timeout", now=T0 + 41)
    b = breaker(router, "mini", T0 + 41)
    assert (b["phase"], b["times_opened"]) == ("open", 2)
    # the cooldown restarts at the failed probe (T0 + 41): half-open again at T0 + 71, not before
    assert router.explain("chat", now=T0 + 70.999).target == "backup"
    assert router.explain("chat", now=T0 + 71).target == "mini"


def test_late_outcomes_do_not_decide_the_probe(make_router: MakeRouter) -> None:
    router = make_router(**BREAKER)
    early = [router.route("chat", now=T0) for _ in range(4)]
    for d in early[:3]:
        router.report(d.id, target="mini", status="error", now=T0)
    probe = router.route("chat", now=T0 + 30)
    assert probe.target == "mini"
    # a request dispatched before the breaker opened reports ok now: it is not the probe
    router.report(early[3].id, target="mini", status="ok", now=T0 + 30)
    assert breaker(router, "mini", T0 + 30)["phase"] == "half_open"
    assert router.explain("chat", now=T0 + 30).target == "backup"


def test_abandoned_probe_is_released_at_expiry(make_router: MakeRouter) -> None:
    router = make_router(decision_ttl_s=60, **BREAKER)
    fail_mini(router, ["error"] * 3, T0)
    probe = router.route("chat", now=T0 + 30)
    assert probe.target == "mini"
    # the worker never reports; once the decision expires (T0 + 90) another probe may go
    assert router.route("chat", now=T0 + 91).target == "mini"


def test_probe_is_released_when_only_a_fallback_reports(make_router: MakeRouter) -> None:
    # The probe's worker falls back to 'backup' and reports only that outcome. The probe itself
    # never
    # reports, so when the decision expires its probe must be released (as it is when nothing
    # reports);
    # otherwise mini stays half-open with a probe "in flight" forever and never gets traffic again.
    router = make_router(decision_ttl_s=60, **BREAKER)
    fail_mini(router, ["error"] * 3, T0)
    probe = router.route("chat", now=T0 + 30)
    assert probe.target == "mini"
    assert probe.fallbacks == ["backup"]
    router.report(
        probe.id, target="backup", status="ok", usage=deepseek_usage(0, 10, 5), now=T0 + 31
    )
    assert router.route("chat", now=T0 + 200).target == "mini"


@pytest.mark.parametrize("status", ["content_filter", "context_overflow"])
def test_request_faults_do_not_count_against_the_breaker(
    make_router: MakeRouter, status: str
) -> None:
    router = make_router(**BREAKER)
    fail_mini(router, ["error", "error"] + [status] * 10, T0)
    b = breaker(router, "mini", T0)
    assert (b["phase"], b["times_opened"], b["consecutive_failures"]) == ("closed", 0, 0)
    assert row(router, "chat", "mini")[status] == 10


RATE = {
    "targets": {
        "mini": {
            "breaker": {
                "consecutive_failures": 100,
                "error_rate": 0.5,
                "min_requests": 10,
                "window_s": 60,
                "cooldown_s": 30,
            }
        }
    },
}


def test_breaker_opens_on_error_rate(make_router: MakeRouter) -> None:
    router = make_router(**RATE)
    # ok, error, ok, error, ...: never two failures in a row. After 9 outcomes (< min_requests) it
    # is
    # closed; the 10th (an error) makes 5 failures of 10 = 0.5 >= error_rate.
    fail_mini(router, ["ok", "error"] * 4 + ["ok"], T0)
    assert breaker(router, "mini", T0)["phase"] == "closed"
    fail_mini(router, ["error"], T0 + 1)
    b = breaker(router, "mini", T0 + 1)
    assert (b["phase"], b["consecutive_failures"]) == ("open", 1)


def test_error_rate_window_forgets_old_outcomes(make_router: MakeRouter) -> None:
    # 9 outcomes (5 failures) at T0, then one failure: within the 60 s window that is 6 of 10 ->
    # open;
    # a full window later the old outcomes are gone (1 of 1 < min_requests) -> closed.
    statuses = ["error", "ok"] * 4 + ["error"]
    within = make_router(**RATE)
    fail_mini(within, statuses, T0)
    fail_mini(within, ["error"], T0 + 30)
    assert breaker(within, "mini", T0 + 30)["phase"] == "open"
    later = make_router(**RATE)
    fail_mini(later, statuses, T0)
    fail_mini(later, ["error"], T0 + 60)
    assert breaker(later, "mini", T0 + 60)["phase"] == "closed"


def test_replica_breakers_are_independent(make_router: MakeRouter) -> None:
    router = make_router(
        targets={"pool": {"breaker": {"consecutive_failures": 1, "cooldown_s": 30}}},
        scenarios={"chat": {"routes": [{"target": "pool"}], "fallback": DELETE}},
    )
    d = router.route("chat", now=T0)
    assert d.endpoint == A
    router.report(d.id, target="pool", status="error", now=T0)
    assert breaker(router, "pool", T0, A)["phase"] == "open"
    assert breaker(router, "pool", T0, B)["phase"] == "closed"
    assert [router.route("chat", now=T0).endpoint for _ in range(3)] == [B, B, B]


# ---- budgets -------------------------------------------------------------------------------------


def budget_router(
    make_router: MakeRouter, usd_per_day: str, fallback: list[str] | None = None
) -> Router:
    return make_router(
        scenarios={
            "chat": {
                "routes": [{"target": "mini"}],
                "fallback": fallback if fallback is not None else DELETE,
                "budget": {"usd_per_day": usd_per_day},
            }
        }
    )


# mini, 1800 input + 300 output: 1800 x $0.40 + 300 x $1.60 = 720 + 480 micro-dollars = $0.0012
# worst case
REQ = {"input_tokens": 1800, "max_output_tokens": 300}


def test_budget_reservations_exhaust_exactly(make_router: MakeRouter) -> None:
    router = budget_router(make_router, "0.0048")  # exactly 4 x $0.0012
    for _ in range(4):
        assert router.route("chat", now=T0, **REQ).predicted_cost_usd == Decimal("0.0012")
    with pytest.raises(BudgetExhaustedError, match="no budget left") as info:
        router.route("chat", now=T0, **REQ)
    assert isinstance(info.value, NoEligibleTargetError)
    assert router.budgets(now=T0) == [
        {
            "scenario": "chat",
            "limit_usd": Decimal("0.0048"),
            "spent_usd": Decimal("0"),
            "reserved_usd": Decimal("0.0048"),
        }
    ]
    assert row(router, "chat", "mini")["requests"] == 4


def test_reports_settle_the_reservation(make_router: MakeRouter) -> None:
    router = budget_router(make_router, "0.005")
    decisions = [
        router.route("chat", now=T0, **REQ) for _ in range(4)
    ]  # reserved 4 x 0.0012 = 0.0048
    with pytest.raises(BudgetExhaustedError):
        router.route("chat", now=T0, **REQ)  # 0.0048 + 0.0012 = 0.006 > 0.005
    # actual: 200 x $0.40 + 50 x $1.60 = 80 + 80 micro-dollars = $0.00016
    receipt = router.report(
        decisions[0].id, target="mini", status="ok", usage=openai_usage(200, 50), now=T0 + 1
    )
    assert receipt["cost_usd"] == Decimal("0.00016")
    (b,) = router.budgets(now=T0 + 1)
    assert (b["spent_usd"], b["reserved_usd"]) == (Decimal("0.00016"), Decimal("0.0036"))
    # 0.00016 + 0.0036 + 0.0012 = 0.00496 <= 0.005: one more fits, then 0.00616 does not
    router.route("chat", now=T0 + 2, **REQ)
    with pytest.raises(BudgetExhaustedError):
        router.route("chat", now=T0 + 2, **REQ)
    (b,) = router.budgets(now=T0 + 2)
    assert (b["spent_usd"], b["reserved_usd"]) == (Decimal("0.00016"), Decimal("0.0048"))


def test_failed_request_frees_its_reservation(make_router: MakeRouter) -> None:
    router = budget_router(make_router, "0.0012")
    d = router.route("chat", now=T0, **REQ)
    with pytest.raises(BudgetExhaustedError):
        router.route("chat", now=T0, **REQ)
    router.report(d.id, target="mini", status="error", now=T0)  # no usage: nothing spent
    (b,) = router.budgets(now=T0)
    assert (b["spent_usd"], b["reserved_usd"]) == (0, 0)
    router.route("chat", now=T0, **REQ)


def test_budget_resets_each_utc_day(make_router: MakeRouter) -> None:
    router = budget_router(make_router, "0.0012")
    router.route("chat", now=T0 + 86_399, **REQ)  # T0 is midnight UTC: the last second of day 1
    with pytest.raises(BudgetExhaustedError):
        router.route("chat", now=T0 + 86_399.999, **REQ)
    router.route("chat", now=T0 + 86_400, **REQ)  # a new day
    (b,) = router.budgets(now=T0 + 86_400)
    assert (b["spent_usd"], b["reserved_usd"]) == (0, Decimal("0.0012"))


def test_budget_falls_back_to_a_cheaper_target(make_router: MakeRouter) -> None:
    router = budget_router(make_router, "0.002", fallback=["backup"])
    assert router.route("chat", now=T0, **REQ).target == "mini"  # 0.0012
    # mini again would make 0.0024 > 0.002. backup: 1800 x $0.28 + 300 x $0.42 = 504 + 126 =
    # $0.00063,
    # and 0.0012 + 0.00063 = 0.00183 <= 0.002
    d = router.route("chat", now=T0, **REQ)
    assert d.target == "backup"
    assert d.reasons == ["fallback:backup", "budget:mini (worst case $0.0012)"]
    assert d.predicted_cost_usd == Decimal("0.00063")
    with pytest.raises(BudgetExhaustedError):
        router.route("chat", now=T0, **REQ)


# ---- reports -------------------------------------------------------------------------------------


def test_report_is_idempotent_per_decision_and_target(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    first = router.report(d.id, target="mini", status="ok", usage=openai_usage(1000, 100), now=T0)
    assert first["duplicate"] is False
    before = router.counters()
    again = router.report(d.id, target="mini", status="ok", usage=openai_usage(1000, 100), now=T0)
    assert again["duplicate"] is True
    assert router.counters() == before
    # a "different" second report for the same target is a duplicate too: nothing changes
    assert router.report(d.id, target="mini", status="error", now=T0)["duplicate"] is True
    assert router.counters() == before


def test_report_on_a_fallback(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    assert (d.target, d.fallbacks) == ("mini", ["backup"])
    router.report(d.id, target="mini", status="timeout", now=T0 + 1)
    receipt = router.report(
        d.id, target="backup", status="ok", usage=deepseek_usage(100, 900, 50), now=T0 + 2
    )
    # 900 miss x $0.28 + 100 hit x $0.028 + 50 x $0.42 = 252 + 2.8 + 21 micro-dollars = $0.0002758
    assert (receipt["fallback"], receipt["cost_usd"]) == (True, Decimal("0.0002758"))
    mini, backup = row(router, "chat", "mini"), row(router, "chat", "backup")
    assert (mini["requests"], mini["outcomes"], mini["timeout"], mini["fallbacks"]) == (1, 1, 1, 0)
    assert (backup["requests"], backup["outcomes"], backup["ok"], backup["fallbacks"]) == (
        0,
        1,
        1,
        1,
    )
    # the verdict goes to the target that answered
    router.verdict(d.id, True, now=T0 + 3)
    assert (row(router, "chat", "mini")["accepted"], row(router, "chat", "backup")["accepted"]) == (
        0,
        1,
    )


def test_report_on_a_target_that_is_neither(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    before = router.counters()
    with pytest.raises(TargetNotAllowedError, match="neither") as info:
        router.report(d.id, target="pool", status="ok", now=T0)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownTargetError):
        router.report(d.id, target="no-such-target", status="ok", now=T0)
    assert router.counters() == before


def test_report_on_an_unknown_decision(make_router: MakeRouter) -> None:
    router = make_router()
    with pytest.raises(UnknownDecisionError, match="unknown decision id 42") as info:
        router.report(42, target="mini", status="ok", now=T0)
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownDecisionError):
        router.verdict(42, True, now=T0)


def snapshot(router: Router, now: float) -> tuple[Any, ...]:
    return (
        router.counters(),
        router.breakers(now=now),
        router.budgets(now=now),
        router.pending_decisions,
    )


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 100},  # completion_tokens missing
        {"prompt_tokens": -1, "completion_tokens": 5},
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 200},
        },
        {"prompt_tokens": "100", "completion_tokens": 5},
        [],
        "100 tokens",
    ],
    ids=["missing", "negative", "cached-exceeds-prompt", "string", "empty-stream", "not-a-map"],
)
def test_invalid_usage_changes_nothing(make_router: MakeRouter, usage: Any) -> None:
    router = make_router(scenarios={"chat": {"budget": {"usd_per_day": 1}}})
    d = router.route("chat", now=T0)
    before = snapshot(router, T0)
    with pytest.raises(UsageError) as info:
        router.report(d.id, target="mini", status="ok", usage=usage, now=T0)
    assert isinstance(info.value, ValueError)
    assert snapshot(router, T0) == before
    # nothing was lost: the corrected report is accepted as the first one
    receipt = router.report(d.id, target="mini", status="ok", usage=openai_usage(100, 5), now=T0)
    assert receipt["duplicate"] is False
    assert row(router, "chat", "mini")["outcomes"] == 1


def test_usage_error_names_the_field(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    with pytest.raises(UsageError, match=r"usage\.completion_tokens: missing"):
        router.report(d.id, target="mini", status="ok", usage={"prompt_tokens": 100}, now=T0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "exploded"},
        {"status": "ok", "ttft_ms": -1},
        {"status": "ok", "latency_ms": float("inf")},
        # Past a week: a unit slip or hostile (9.2e18 used to overflow the ledger's sum of times).
        {"status": "ok", "ttft_ms": 9.2e18},
        {"status": "ok", "latency_ms": 1e30},
        {"status": "ok", "latency_ms": 604_800_001},
    ],
    ids=["status", "ttft", "latency", "ttft-huge", "latency-huge", "latency-over-a-week"],
)
def test_invalid_report_arguments_change_nothing(
    make_router: MakeRouter, kwargs: dict[str, Any]
) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    before = snapshot(router, T0)
    with pytest.raises(InvalidArgumentError):
        router.report(d.id, target="mini", now=T0, **kwargs)
    assert snapshot(router, T0) == before
    assert router.report(d.id, target="mini", status="ok", now=T0)["duplicate"] is False


def test_verdict_on_a_failed_outcome_changes_nothing(make_router: MakeRouter) -> None:
    # An error outcome carries no answer to judge. If report() refuses accepted= on it, it must
    # refuse
    # the whole report (nothing counted), so a corrected report is not lost as a "duplicate".
    router = make_router()
    d = router.route("chat", now=T0)
    before = snapshot(router, T0)
    with pytest.raises(InvalidArgumentError, match="no ok outcome"):
        router.report(d.id, target="mini", status="error", accepted=True, now=T0)
    assert snapshot(router, T0) == before
    assert router.report(d.id, target="mini", status="error", now=T0)["duplicate"] is False


def test_unpriced_ok_outcome(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    receipt = router.report(d.id, target="mini", status="ok", now=T0)
    assert (receipt["priced"], receipt["cost_usd"]) == (False, 0)
    r = row(router, "chat", "mini")
    assert (r["ok"], r["unpriced"], r["cost_usd"]) == (1, 1, 0)


# ---- verdicts and the ledger ---------------------------------------------------------------------


def test_cost_per_accepted_outcome(make_router: MakeRouter) -> None:
    router = make_router()
    usages = [
        openai_usage(1000, 200),  # 1000 x 0.40 + 200 x 1.60 = 400 + 320 = 720 micro-dollars
        openai_usage(
            2000, 100, cached=1024
        ),  # 976 x 0.40 + 1024 x 0.10 + 100 x 1.60 = 390.4 + 102.4 + 160 = 652.8
        openai_usage(500, 500),  # 500 x 0.40 + 500 x 1.60 = 200 + 800 = 1000
    ]
    decisions = []
    for u in usages:
        d = router.route("chat", now=T0)
        router.report(d.id, target="mini", status="ok", usage=u, now=T0 + 1)
        decisions.append(d)
    router.verdict(decisions[0].id, True, now=T0 + 10)
    router.verdict(decisions[1].id, False, now=T0 + 10)
    router.verdict(decisions[2].id, True, now=T0 + 10)
    router.verdict(decisions[2].id, False, now=T0 + 11)  # the first verdict stands
    r = row(router, "chat", "mini")
    assert (r["accepted"], r["rejected"]) == (2, 1)
    # cost 720 + 652.8 + 1000 = 2372.8 micro-dollars; accepted ones 720 + 1000 = 1720
    assert r["cost_usd"] == Decimal("0.0023728")
    assert r["accepted_cost_usd"] == Decimal("0.00172")
    assert r["cost_per_accepted_usd"] == Decimal("0.0011864")  # 0.0023728 / 2
    assert r["cost_per_accepted_usd"] == r["cost_usd"] / r["accepted"]
    (summary,) = router.scenario_summary()
    assert summary["cost_per_accepted_usd"] == Decimal("0.0011864")


def test_verdict_with_the_report(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    router.report(
        d.id, target="mini", status="ok", usage=openai_usage(10, 10), accepted=False, now=T0
    )
    assert (row(router, "chat", "mini")["accepted"], row(router, "chat", "mini")["rejected"]) == (
        0,
        1,
    )


def test_verdict_needs_an_ok_outcome(make_router: MakeRouter) -> None:
    router = make_router()
    d = router.route("chat", now=T0)
    with pytest.raises(InvalidArgumentError, match="no ok outcome"):
        router.verdict(d.id, True, now=T0)
    router.report(d.id, target="mini", status="ok", now=T0)
    router.verdict(d.id, True, now=T0)  # now there is one
    assert row(router, "chat", "mini")["accepted"] == 1


def test_ledger_cost_is_the_exact_sum_of_reports(example_router: Router) -> None:
    total = Decimal(0)
    for i in range(60):
        d = example_router.route(
            SUPPORT if i % 3 else AGENT,
            key=f"k{i}",
            input_tokens=1000 + 37 * i,
            max_output_tokens=300,
            now=T0 + i,
        )
        provider = example_router.config.target_info(d.target)["provider"]
        prompt, output, cached = 1000 + 37 * i, 17 * i + 1, (i * 128) % 1000
        if provider == "anthropic":
            usage: dict[str, Any] = {
                "input_tokens": prompt - cached,
                "cache_read_input_tokens": cached,
                "output_tokens": output,
            }
        elif provider == "gemini":
            usage = {
                "usageMetadata": {
                    "promptTokenCount": prompt,
                    "cachedContentTokenCount": cached,
                    "candidatesTokenCount": output,
                }
            }
        else:
            usage = openai_usage(prompt, output, cached)
        receipt = example_router.report(
            d.id, target=d.target, status="ok", usage=usage, now=T0 + i + 1
        )
        assert isinstance(receipt["cost_usd"], Decimal)
        total += receipt["cost_usd"]
    ledger = sum((r["cost_usd"] for r in example_router.counters()), Decimal(0))
    assert ledger == total
    assert total > 0


def test_counters_frame(example_router: Router) -> None:
    d = example_router.route(CONTRACT, now=T0)
    example_router.report(
        d.id, target="llama-70b", status="ok", usage=openai_usage(100, 10), now=T0
    )
    frame = example_router.counters_frame()
    assert isinstance(frame, pd.DataFrame)
    rows = example_router.counters()
    assert len(frame) == len(rows)
    assert {"scenario", "target", "requests", "cost_usd", "cost_per_accepted_usd"} <= set(
        frame.columns
    )
    llama = frame[(frame.scenario == CONTRACT) & (frame.target == "llama-70b")]
    assert llama["requests"].tolist() == [1]
    assert llama["cost_usd"].tolist() == [row(example_router, CONTRACT, "llama-70b")["cost_usd"]]
    assert isinstance(llama["cost_usd"].iloc[0], Decimal)


def test_counters_frame_money_as_float(example_router: Router) -> None:
    d = example_router.route(CONTRACT, now=T0)
    example_router.report(
        d.id, target="llama-70b", status="ok", usage=openai_usage(100, 10), accepted=True, now=T0
    )
    exact = example_router.counters_frame()
    floats = example_router.counters_frame(money="float")
    assert list(floats.columns) == list(exact.columns) == list(ledger.COLUMNS)
    assert {"cost_usd", "accepted_cost_usd", "cost_per_accepted_usd"} <= set(ledger.MONEY_COLUMNS)
    for column in ledger.MONEY_COLUMNS:
        assert floats[column].dtype == "float64", column
        for amount, approx in zip(exact[column], floats[column], strict=True):
            if amount is None:  # cost per accepted outcome before the first one
                assert math.isnan(approx), column
            else:
                assert isinstance(amount, Decimal)
                assert approx == float(amount), column
    assert floats["cost_per_accepted_usd"].notna().sum() == 1
    others = [c for c in ledger.COLUMNS if c not in ledger.MONEY_COLUMNS]
    assert floats[others].equals(exact[others])
    with pytest.raises(ValueError, match="money must be 'decimal' or 'float', got 'cents'"):
        example_router.counters_frame(money="cents")  # type: ignore[arg-type]


def test_slo_attainment_and_quality_gate_per_scenario_and_target(make_router: MakeRouter) -> None:
    router = make_router(
        scenarios={
            "chat": {
                "slo": {"ttft_p95_ms": 500, "latency_p95_ms": 2000},
                "quality_gate": {"min_accept_rate": 0.75},
            },
            "plain": {"data_class": "public", "routes": [{"target": "mini", "weight": 100}]},
        }
    )
    columns = ("ttft_slo_attainment", "latency_slo_attainment", "accept_rate", "quality_gate")
    assert all(r[c] is None for r in router.counters() for c in columns)  # nothing observed yet
    times = [(100, 1000), (500, 2000), (501, 2001), (None, 1500)]  # at the bound is within
    decisions = []
    for ttft, latency in times:
        d = router.route("chat", now=T0)
        router.report(d.id, target="mini", status="ok", ttft_ms=ttft, latency_ms=latency, now=T0)
        # A repeat of the same report is a duplicate: not counted again.
        router.report(d.id, target="mini", status="ok", ttft_ms=9999, latency_ms=9999, now=T0)
        decisions.append(d)
        p = router.route("plain", now=T0)
        router.report(p.id, target="mini", status="ok", ttft_ms=ttft, latency_ms=latency, now=T0)
    r = row(router, "chat", "mini")
    # TTFT: 100, 500 of 100, 500, 501 within; latency: 1000, 2000, 1500 of the four.
    assert (r["ttft_count"], r["ttft_slo_checked"], r["ttft_within_slo"]) == (3, 3, 2)
    assert (r["latency_count"], r["latency_slo_checked"], r["latency_within_slo"]) == (4, 4, 3)
    assert r["ttft_slo_attainment"] == pytest.approx(2 / 3)
    assert r["latency_slo_attainment"] == 0.75
    assert r["accept_rate"] is None  # no verdict yet
    assert r["quality_gate"] is None
    plain = row(router, "plain", "mini")  # no slo, no gate: observed, never judged
    assert plain["ttft_count"] == 3
    assert plain["ttft_slo_checked"] == 0
    assert all(plain[c] is None for c in columns)

    gates = []
    for d, accepted in zip(decisions, (True, True, True, False), strict=True):
        router.verdict(d.id, accepted, now=T0 + 1)
        r = row(router, "chat", "mini")
        gates.append((r["accept_rate"], r["quality_gate"]))
    # 3 of 4 accepted is at the gate: it passes.
    assert gates == [(1.0, "pass"), (1.0, "pass"), (1.0, "pass"), (0.75, "pass")]
    d = router.route("chat", now=T0 + 2)
    router.report(d.id, target="mini", status="ok", accepted=False, now=T0 + 2)
    r = row(router, "chat", "mini")
    assert (r["accept_rate"], r["quality_gate"]) == (0.6, "fail")  # 3 / 5 < 0.75

    frame = router.counters_frame()
    chat = frame[(frame.scenario == "chat") & (frame.target == "mini")].iloc[0]
    assert chat["quality_gate"] == "fail"
    assert chat["latency_slo_attainment"] == 0.75
    for column in ledger.SHARE_COLUMNS:
        assert frame[column].dtype == "float64", column
    assert math.isnan(frame[frame.scenario == "plain"]["ttft_slo_attainment"].iloc[0])


def test_row_columns_come_from_the_field_list(example_router: Router) -> None:
    rows = example_router.counters()
    assert rows
    assert all(list(r) == list(ledger.COLUMNS) for r in rows)
    field_columns = [c for f in ledger.COUNTER_FIELDS for c in f.columns]
    assert len(field_columns) == len(set(field_columns))
    assert set(field_columns) <= set(ledger.COLUMNS)
    assert ledger.SHARE_COLUMNS == ("ttft_slo_attainment", "latency_slo_attainment", "accept_rate")
    assert ledger.GATE_COLUMNS == ("quality_gate",)
    derived = ["cost_per_accepted_usd", *ledger.SHARE_COLUMNS, "quality_gate"]
    assert list(ledger.COLUMNS[-5:]) == derived
    assert {f.kind for f in ledger.COUNTER_FIELDS} == {
        "count",
        "by_status",
        "tokens",
        "money",
        "histogram",
    }
    empty = ledger.counters_frame([])  # an empty ledger still has every column
    assert list(empty.columns) == list(ledger.COLUMNS)
    assert len(empty) == 0
    # turnout.Cost spells the token kinds out for type checkers: it must know every one.
    (tokens,) = (f for f in ledger.COUNTER_FIELDS if f.kind == "tokens")
    assert set(tokens.columns) <= {f.name for f in dataclasses.fields(turnout.Cost)}


# ---- explain and expiry --------------------------------------------------------------------------


def test_explain_commits_nothing(make_router: MakeRouter) -> None:
    router = make_router(
        scenarios={"chat": {"routes": [{"target": "pool"}], "budget": {"usd_per_day": 1}}}
    )
    before = snapshot(router, T0)
    explained = router.explain("chat", key="k", input_tokens=1000, now=T0)
    assert explained.target == "pool"
    assert snapshot(router, T0) == before
    assert router.pending_decisions == 0
    assert all(r["requests"] == 0 for r in router.counters())
    # it answers what route() would: same id, target, replica and cost
    routed = router.route("chat", key="k", input_tokens=1000, now=T0)
    assert explained.to_dict() == routed.to_dict()


def test_explain_agrees_with_route_after_expiry(make_router: MakeRouter) -> None:
    # explain() is "what route() would decide now". Decisions that have expired by `now` no longer
    # hold
    # pool slots for route(), so explain() must not count them either.
    router = make_router(
        decision_ttl_s=10, scenarios={"chat": {"routes": [{"target": "pool"}], "fallback": DELETE}}
    )
    for _ in range(8):
        router.route("chat", now=T0)  # the pool (2 x 4 slots) is full
    with pytest.raises(NoEligibleTargetError, match="saturated"):
        router.explain("chat", now=T0 + 5)  # still full 5 s later
    explained = router.explain("chat", now=T0 + 20)  # all 8 expired at T0 + 10
    routed = router.route("chat", now=T0 + 20)
    assert explained.to_dict() == routed.to_dict()


def test_decision_expiry(make_router: MakeRouter) -> None:
    router = make_router(decision_ttl_s=10, scenarios={"chat": {"routes": [{"target": "pool"}]}})
    d = router.route("chat", now=T0)
    assert breaker(router, "pool", T0, A)["inflight"] == 1
    # 9.999 s later the decision is still known (a verdict without an ok outcome is refused, not
    # unknown)
    with pytest.raises(InvalidArgumentError):
        router.verdict(d.id, True, now=T0 + 9.999)
    with pytest.raises(UnknownDecisionError, match="expired"):
        router.report(d.id, target="pool", status="ok", now=T0 + 10)
    assert router.pending_decisions == 0
    assert breaker(router, "pool", T0 + 10, A)["inflight"] == 0


def test_expiry_frees_the_budget_reservation(make_router: MakeRouter) -> None:
    router = make_router(
        decision_ttl_s=10, scenarios={"chat": {"budget": {"usd_per_day": "0.0012"}}}
    )
    router.route("chat", now=T0, **REQ)
    with pytest.raises(BudgetExhaustedError):
        router.route("chat", now=T0 + 9, **REQ)
    router.route("chat", now=T0 + 10, **REQ)  # the first reservation expired with its decision


def test_max_pending_bounds_the_pending_decisions(make_router: MakeRouter) -> None:
    router = make_router(max_pending=2)
    decisions = [router.route("chat", now=T0) for _ in range(3)]
    assert router.pending_decisions <= 2
    with pytest.raises(UnknownDecisionError):  # the oldest made room
        router.report(decisions[0].id, target="mini", status="ok", now=T0)


def test_router_rejects_a_non_positive_ttl(example_config: turnout.Config) -> None:
    with pytest.raises(InvalidArgumentError):
        Router(example_config, decision_ttl_s=0)
