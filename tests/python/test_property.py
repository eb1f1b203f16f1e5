"""Property tests: the data boundary holds for random routing tables and random traffic.

1. For any valid table and any sequence of requests (with extra data classes, random sizes and keys,
   breakers opened by reported failures, time moving on), the chosen target and every fallback
   accept both the scenario's and the request's data class, lie in the scenario's regions and fit
   the request.
2. A table that names a target refusing the scenario's data class as a route, fallback or spillover
   never loads: ConfigError pointing at that reference.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import turnout
from support import T0, Raw, dump, locate
from turnout import ConfigError, NoEligibleTargetError

CLASSES = ("public", "internal", "deidentified", "confidential", "restricted")
DEFAULT_MAX_OUTPUT = 1024  # a scenario's output cap when it does not set max_output_tokens

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PRICES = {
    "openai": {"input_per_mtok": Raw("0.40"), "output_per_mtok": Raw("1.60")},
    "deepseek": {"input_per_mtok": Raw("0.28"), "output_per_mtok": Raw("0.42")},
    "gemini": {"input_per_mtok": Raw("1.25"), "output_per_mtok": Raw("10")},
    "anthropic": {
        "input_per_mtok": Raw("3"),
        "output_per_mtok": Raw("15"),
        "cache_write_5m_per_mtok": Raw("3.75"),
        "cache_write_1h_per_mtok": Raw("6"),
    },
}


@st.composite
def target_specs(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["maas", "self_hosted"]))
    spec: dict[str, Any] = {"kind": kind}
    if kind == "maas":
        provider = draw(st.sampled_from(sorted(PRICES)))
        spec.update(provider=provider, model=f"model-{index}")
    else:
        spec.update(engine=draw(st.sampled_from(["vllm", "sglang"])), model=f"model-{index}")
    region = draw(st.sampled_from([None, "eu", "us"]))
    if region is not None:
        spec["region"] = region
    spec["data_classes"] = draw(
        st.lists(st.sampled_from(CLASSES), min_size=1, max_size=len(CLASSES), unique=True)
    )
    spec["context_window"] = draw(st.integers(1_000, 300_000))
    spec["breaker"] = {
        "consecutive_failures": draw(st.integers(1, 3)),
        "cooldown_s": draw(st.integers(1, 60)),
    }
    if kind == "maas":
        spec["price"] = dict(PRICES[spec["provider"]])
    else:
        spec["cost"] = {
            "gpus_per_replica": 1,
            "usd_per_gpu_hour": Raw("2.5"),
            "prefill_tokens_per_s": 10_000,
            "decode_tokens_per_s": 1_000,
        }
        replicas = draw(st.integers(1, 2))
        spec["replicas"] = [
            {"endpoint": f"http://t{index}-{r}:8000", "max_inflight": draw(st.integers(1, 4))}
            for r in range(replicas)
        ]
    return spec


@st.composite
def routing_tables(draw: st.DrawFn) -> dict[str, Any]:
    """A valid table: every route, fallback and spillover target accepts the scenario's data class
    and lies in its regions."""
    count = draw(st.integers(1, 5))
    targets = {f"t{i}": draw(target_specs(i)) for i in range(count)}
    offered = sorted({c for t in targets.values() for c in t["data_classes"]}, key=CLASSES.index)
    scenarios: dict[str, Any] = {}
    for j in range(draw(st.integers(1, 3))):
        data_class = draw(st.sampled_from(offered))
        allowed = [n for n, t in targets.items() if data_class in t["data_classes"]]
        scenario: dict[str, Any] = {"data_class": data_class}
        regions = sorted({targets[n]["region"] for n in allowed if "region" in targets[n]})
        if regions and draw(st.booleans()):
            region = draw(st.sampled_from(regions))
            scenario["regions"] = [region]
            allowed = [n for n in allowed if targets[n].get("region") == region]
        routes = draw(
            st.lists(st.sampled_from(allowed), min_size=1, max_size=len(allowed), unique=True)
        )
        cuts = sorted(
            draw(st.lists(st.integers(0, 100), min_size=len(routes) - 1, max_size=len(routes) - 1))
        )
        weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
        scenario["routes"] = [
            {"target": n, "weight": w} for n, w in zip(routes, weights, strict=True)
        ]
        fallback = draw(st.lists(st.sampled_from(allowed), max_size=3, unique=True))
        if fallback:
            scenario["fallback"] = fallback
        if draw(st.booleans()):
            scenario["spillover"] = {
                "target": draw(st.sampled_from(allowed)),
                "when_inflight_ratio": draw(st.sampled_from([0.25, 0.5, 0.9, 1.0])),
            }
        if draw(st.booleans()):
            scenario["max_output_tokens"] = draw(st.integers(1, 8_000))
        scenarios[f"s{j}"] = scenario
    return {"version": 1, "targets": targets, "scenarios": scenarios}


requests = st.lists(
    st.fixed_dictionaries(
        {
            "scenario": st.integers(0, 2),
            "data_class": st.none() | st.sampled_from(CLASSES),
            "input_tokens": st.integers(0, 320_000),
            "max_output_tokens": st.none() | st.integers(0, 8_000),
            "key": st.none() | st.text(min_size=1, max_size=12),
            "outcome": st.sampled_from(
                [None, "ok", "error", "error", "timeout", "rate_limited", "content_filter"]
            ),
            "on_fallback": st.booleans(),
            "dt": st.integers(0, 40),
        }
    ),
    min_size=1,
    max_size=25,
)


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tables")


def write_table(directory: Path, table: dict[str, Any]) -> Path:
    path = directory / "routing.yaml"
    path.write_text(dump(table), encoding="utf-8")
    return path


@PROPERTY_SETTINGS
@given(table=routing_tables(), traffic=requests, seed=st.integers(0, 2**64 - 1))
def test_decisions_respect_the_boundary(
    table_dir: Path, table: dict[str, Any], traffic: list[dict[str, Any]], seed: int
) -> None:
    config = turnout.load_config(write_table(table_dir, table))
    router = turnout.Router(config, seed=seed, decision_ttl_s=60)
    targets, scenarios = table["targets"], table["scenarios"]
    names = list(scenarios)
    now = T0
    for req in traffic:
        now += req["dt"]
        name = names[req["scenario"] % len(names)]
        scenario = scenarios[name]
        try:
            d = router.route(
                name,
                key=req["key"],
                data_class=req["data_class"],
                input_tokens=req["input_tokens"],
                max_output_tokens=req["max_output_tokens"],
                now=now,
            )
        except NoEligibleTargetError:
            event("no eligible target")
            continue  # failing closed is always allowed
        event("routed with an extra data class" if req["data_class"] else "routed")
        required = {scenario["data_class"]} | ({req["data_class"]} if req["data_class"] else set())
        max_output = req["max_output_tokens"]
        if max_output is None:
            max_output = scenario.get("max_output_tokens", DEFAULT_MAX_OUTPUT)
        candidates = {r["target"] for r in scenario["routes"]} | set(scenario.get("fallback", []))
        if "spillover" in scenario:
            candidates.add(scenario["spillover"]["target"])
        assert d.target in candidates
        assert set(d.fallbacks) <= set(scenario.get("fallback", []))
        assert d.target not in d.fallbacks
        for target in [d.target, *d.fallbacks]:
            spec = targets[target]
            assert required <= set(spec["data_classes"]), (target, required, spec["data_classes"])
            if "regions" in scenario:
                assert spec.get("region") in scenario["regions"]
            assert req["input_tokens"] + max_output <= spec["context_window"]
        assert (d.endpoint is None) == (targets[d.target]["kind"] == "maas")
        if any(r.startswith(("breaker_open:", "half_open_probe:")) for r in d.reasons):
            event("a breaker shaped the decision")
        if req["outcome"] is not None:
            reported = d.fallbacks[0] if req["on_fallback"] and d.fallbacks else d.target
            router.report(d.id, target=reported, status=req["outcome"], now=now)


@st.composite
def tables_with_a_forbidden_reference(draw: st.DrawFn) -> tuple[dict[str, Any], str, str, str]:
    """A valid table, then one scenario made to name a target that refuses its data class.
    Returns (table, scenario, target, where) with where in route / fallback / spillover."""
    table = copy.deepcopy(draw(routing_tables()))
    targets, scenarios = table["targets"], table["scenarios"]
    name = draw(st.sampled_from(sorted(scenarios)))
    scenario = scenarios[name]
    data_class = scenario["data_class"]
    refusing = [n for n, t in targets.items() if data_class not in t["data_classes"]]
    if not refusing or draw(st.booleans()):
        target = "forbidden"
        targets[target] = {
            "kind": "maas",
            "provider": "openai",
            "model": "m",
            "data_classes": [c for c in CLASSES if c != data_class],
            "context_window": 100_000,
            "price": dict(PRICES["openai"]),
        }
    else:
        target = draw(st.sampled_from(refusing))
    where = draw(st.sampled_from(["route", "fallback", "spillover"]))
    if where == "route":
        routes = scenario["routes"]
        moved = draw(st.integers(0, routes[0]["weight"]))  # keep the weights summing to 100
        routes[0]["weight"] -= moved
        routes.insert(draw(st.integers(0, len(routes))), {"target": target, "weight": moved})
    elif where == "fallback":
        fallback = scenario.setdefault("fallback", [])
        fallback.insert(draw(st.integers(0, len(fallback))), target)
    else:
        scenario["spillover"] = {"target": target}
    return table, name, target, where


@PROPERTY_SETTINGS
@given(case=tables_with_a_forbidden_reference())
def test_forbidden_references_never_load(
    table_dir: Path, case: tuple[dict[str, Any], str, str, str]
) -> None:
    table, scenario, target, where = case
    path = write_table(table_dir, table)
    with pytest.raises(ConfigError) as info:
        turnout.load_config(path)
    message = str(info.value)
    data_class = table["scenarios"][scenario]["data_class"]
    assert f"target '{target}' does not accept data class '{data_class}'" in message
    assert f"scenario '{scenario}' may never send data there" in message
    if target == "forbidden":  # a name used once: the error must point at that very reference
        needle = "- ^forbidden" if where == "fallback" else "target: ^forbidden"
        line, col = locate(path.read_text(encoding="utf-8"), needle)
        assert message.startswith(f"{path}:{line}:{col}: "), message
