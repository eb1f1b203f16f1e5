"""Loading and validating routing tables: the example loads; every malformed table raises
ConfigError whose message starts with ``path:line:col:`` pointing at the offending node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from daemon import Sidecar
from support import DELETE, T0, Raw, base_config, dump, locate, merge
from turnout import ConfigError, TurnoutError

# ---- helpers -------------------------------------------------------------------------------------


def load_error(path: Path | str) -> str:
    """The message of the ConfigError that loading `path` raises (checking its classes)."""
    with pytest.raises(ConfigError) as info:
        turnout.load_config(path)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TurnoutError)
    return str(info.value)


def assert_located(message: str, path: Path | str, line: int, col: int, *fragments: str) -> None:
    prefix = f"{path}:{line}:{col}: "
    assert message.startswith(prefix), f"expected prefix {prefix!r}, got {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- the example ---------------------------------------------------------------------------------


def test_example_loads(example_path: Path) -> None:
    config = turnout.load_config(example_path)
    assert config.targets == [
        "gpt-4.1-mini",
        "claude-sonnet-4",
        "gemini-2.5-pro",
        "deepseek-chat",
        "llama-70b",
    ]
    assert config.scenarios == ["support-summarization", "contract-extraction", "agent-assist"]
    assert re.fullmatch(r"[0-9a-f]{16}", config.version), config.version
    assert config.source == str(example_path)
    assert "5 targets, 3 scenarios" in repr(config)


def test_example_target_info(example_config: turnout.Config) -> None:
    llama = example_config.target_info("llama-70b")
    assert llama == {
        "name": "llama-70b",
        "kind": "self_hosted",
        "provider": "vllm",
        "model": "meta-llama/Llama-3.3-70B-Instruct",
        "region": "eu",
        "data_classes": ["public", "internal", "deidentified", "confidential", "restricted"],
        "context_window": 131072,
        "endpoints": ["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
        "max_inflight": [64, 64],
        "price": None,
        "cache": {"ttl_s": 300, "min_prefix_tokens": 1024},
        "cost": {
            "gpus_per_replica": 2,
            "usd_per_gpu_hour": Decimal("2.99"),
            "prefill_tokens_per_s": 12000,
            "decode_tokens_per_s": 2400,
            "monthly": {
                "staging": Decimal(2200),
                "canary": Decimal(1100),
                "engineering": Decimal(16000),
                "observability": Decimal(900),
                "evals": Decimal(1500),
            },
        },
        "kv": {"block_size": 16, "capacity_blocks": 200000},
        # How the worker SDK calls it: its replicas' endpoints, no key unless the table names one.
        "call": {
            "api": "chat_completions",
            "base_url": None,
            "api_key_env": None,
            "api_key_file": None,
            "timeout_ms": 600000,
            "first_token_timeout_ms": 60000,
        },
    }
    claude = example_config.target_info("claude-sonnet-4")
    assert claude["kind"] == "maas"
    assert claude["provider"] == "anthropic"
    assert claude["data_classes"] == ["public", "deidentified"]
    assert claude["endpoints"] == []
    assert claude["cost"] is None
    assert claude["call"] == {
        "api": "messages",
        "base_url": "https://api.anthropic.com",
        "api_key_env": "ANTHROPIC_API_KEY",
        "api_key_file": None,
        "timeout_ms": 600000,
        "first_token_timeout_ms": 60000,
    }
    assert claude["price"] == {
        "input_per_mtok": Decimal("3"),
        "output_per_mtok": Decimal("15"),
        "cache_read_per_mtok": Decimal("0.3"),
        "cache_write_5m_per_mtok": Decimal("3.75"),
        "cache_write_1h_per_mtok": Decimal("6"),
    }
    assert example_config.target_info("deepseek-chat")["region"] is None  # no region declared


def test_example_scenario_info(example_config: turnout.Config) -> None:
    info = example_config.scenario_info("support-summarization")
    assert info == {
        "name": "support-summarization",
        "description": "Summarize de-identified support tickets for agents.",
        "owner": "support-ml",
        "data_class": "deidentified",
        "regions": [],
        "ttft_p95_ms": 800,
        "latency_p95_ms": 4000,
        "min_accept_rate": 0.95,
        "mode": "online",
        "max_output_tokens": 512,
        "routes": [{"target": "llama-70b", "weight": 90}, {"target": "gpt-4.1-mini", "weight": 10}],
        "fallback": ["gpt-4.1-mini", "claude-sonnet-4"],
        "spillover": {"target": "gpt-4.1-mini", "when_inflight_ratio": 0.9},
        "budget_usd_per_day": Decimal(500),
        "prefix_affinity": False,
    }
    contract = example_config.scenario_info("contract-extraction")
    assert contract["regions"] == ["eu"]
    assert contract["mode"] == "batch"
    # Bounds a table does not set are None, never a guessed default.
    assert contract["ttft_p95_ms"] is None
    assert contract["latency_p95_ms"] is None
    assert contract["min_accept_rate"] is None
    assert contract["spillover"] is None
    assert contract["budget_usd_per_day"] is None
    assert example_config.scenario_info("agent-assist")["prefix_affinity"] is True
    with pytest.raises(turnout.UnknownScenarioError, match="nope"):
        example_config.scenario_info("nope")


def test_target_info_unknown_target(example_config: turnout.Config) -> None:
    with pytest.raises(turnout.UnknownTargetError, match="nope") as info:
        example_config.target_info("nope")
    assert isinstance(info.value, KeyError)


def test_load_config_accepts_str_and_pathlike(example_path: Path) -> None:
    by_path = turnout.load_config(example_path)
    by_str = turnout.load_config(str(example_path))
    assert by_path.version == by_str.version


def test_version_is_the_content_hash(tmp_path: Path, example_path: Path) -> None:
    text = example_path.read_text(encoding="utf-8")
    copy = tmp_path / "copy.yaml"
    copy.write_text(text, encoding="utf-8")
    edited = tmp_path / "edited.yaml"
    edited.write_text(text + "# a comment changes the bytes, so the version\n", encoding="utf-8")
    original = turnout.load_config(example_path).version
    assert turnout.load_config(copy).version == original  # same bytes, other path: same version
    assert turnout.load_config(edited).version != original
    assert turnout.load_config_text(text).version == original


def test_minimal_config_loads(make_config: Callable[..., Path]) -> None:
    config = turnout.load_config(make_config())
    assert config.targets == ["mini", "backup", "pool"]
    assert config.scenarios == ["chat"]


def test_load_config_text_names_its_source() -> None:
    with pytest.raises(ConfigError) as info:
        turnout.load_config_text("version: 1\n", source="inline.yaml")
    assert str(info.value).startswith("inline.yaml:1:1: ")
    assert "missing required key 'targets'" in str(info.value)


def test_six_decimal_prices_are_exact(make_config: Callable[..., Path]) -> None:
    # 0.000001 $/Mtok = 1e-12 $/token = exactly one picodollar per token: 3 tokens cost
    # $0.000000000003.
    path = make_config(
        targets={
            "mini": {
                "price": {
                    "input_per_mtok": Raw("0.000001"),
                    "cache_read_per_mtok": Raw("0.000001"),
                    "output_per_mtok": Raw("0"),
                }
            }
        }
    )
    cost = turnout.price_usage(
        turnout.load_config(path), "mini", {"prompt_tokens": 3, "completion_tokens": 7}
    )
    assert cost.cost_usd == Decimal("0.000000000003")


# ---- bad input: located errors from generated tables ---------------------------------------------
# Each case: overrides of the minimal table, the text whose position the error must point at (found
# in the written file, 1-based line:col), and fragments the message must contain.

BAD_CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    (
        "unknown top-level key",
        {"colour": "red"},
        "colour:",
        ("unknown key 'colour'", "the routing table"),
    ),
    (
        "unknown target key",
        {"targets": {"mini": {"colour": "red"}}},
        "colour:",
        ("unknown key 'colour' in target 'mini'",),
    ),
    (
        "unknown scenario key",
        {"scenarios": {"chat": {"colour": "red"}}},
        "colour:",
        ("unknown key 'colour' in scenario 'chat'",),
    ),
    (
        "unknown price key",
        {"targets": {"mini": {"price": {"fee_per_mtok": 1}}}},
        "fee_per_mtok:",
        ("unknown key 'fee_per_mtok' in target 'mini'.price",),
    ),
    (
        "unknown replica key",
        {
            "targets": {
                "pool": {"replicas": [{"endpoint": "http://a", "max_inflight": 1, "gpu": "h100"}]}
            }
        },
        "gpu:",
        ("unknown key 'gpu'",),
    ),
    (
        "string for int",
        {"targets": {"mini": {"context_window": "lots"}}},
        "lots",
        ("context_window must be an integer, got 'lots'",),
    ),
    (
        "float for int",
        {"targets": {"pool": {"replicas": [{"endpoint": "http://a", "max_inflight": 1.5}]}}},
        "1.5",
        ("max_inflight must be an integer",),
    ),
    (
        "list for map",
        {"targets": {"mini": {"price": [1, 2]}}},
        "- 1",
        ("target 'mini'.price must be a mapping",),
    ),
    (
        "map for list",
        {"targets": {"mini": {"data_classes": {"public": True}}}},
        "public: true",
        ("data_classes must be a list",),
    ),
    (
        "scalar for map",
        {"scenarios": {"chat": {"budget": 5}}},
        "budget: ^5",
        ("budget must be a mapping",),
    ),
    (
        "unknown route target",
        {"scenarios": {"chat": {"routes": [{"target": "nope", "weight": 100}]}}},
        "nope",
        ("routes[0].target names unknown target 'nope'", "known targets: mini, backup, pool"),
    ),
    (
        "unknown fallback target",
        {"scenarios": {"chat": {"fallback": ["backup", "nope"]}}},
        "nope",
        ("fallback[1] names unknown target 'nope'",),
    ),
    (
        "unknown spillover target",
        {"scenarios": {"chat": {"spillover": {"target": "nope"}}}},
        "nope",
        ("spillover.target names unknown target 'nope'",),
    ),
    (
        "weights sum to 90",
        {
            "scenarios": {
                "chat": {
                    "routes": [{"target": "pool", "weight": 80}, {"target": "mini", "weight": 10}]
                }
            }
        },
        "- target: pool",
        ("must sum to 100, got 90",),
    ),
    (
        "weights sum to 110",
        {
            "scenarios": {
                "chat": {
                    "routes": [{"target": "pool", "weight": 100}, {"target": "mini", "weight": 10}]
                }
            }
        },
        "- target: pool",
        ("must sum to 100, got 110",),
    ),
    (
        "weight above 100",
        {"scenarios": {"chat": {"routes": [{"target": "mini", "weight": 101}]}}},
        "101",
        ("weight must be between 0 and 100, got 101",),
    ),
    (
        "negative price",
        {"targets": {"mini": {"price": {"input_per_mtok": Raw("-0.40")}}}},
        "-0.40",
        ("input_per_mtok", "is negative"),
    ),
    (
        "sub-picodollar price",
        {"targets": {"mini": {"price": {"output_per_mtok": Raw("0.0000001")}}}},
        "0.0000001",
        ("output_per_mtok", "more precision than this unit can hold exactly"),
    ),
    (
        "sub-picodollar price in exponent form",
        {"targets": {"mini": {"price": {"input_per_mtok": Raw("1.5e-6")}}}},
        "1.5e-6",
        ("more precision",),
    ),
    (
        "price that is not a number",
        {"targets": {"mini": {"price": {"input_per_mtok": "cheap"}}}},
        "cheap",
        ("'cheap' is not a number",),
    ),
    (
        "negative budget",
        {"scenarios": {"chat": {"budget": {"usd_per_day": Raw("-5")}}}},
        "-5",
        ("usd_per_day", "is negative"),
    ),
    (
        "sub-picodollar budget",
        {"scenarios": {"chat": {"budget": {"usd_per_day": Raw("0.0000000000001")}}}},
        "0.0000000000001",
        ("usd_per_day", "more precision"),
    ),
    (
        "route to a forbidden target",
        {
            "scenarios": {
                "chat": {
                    "data_class": "confidential",
                    "routes": [{"target": "mini"}],
                    "fallback": DELETE,
                }
            }
        },
        "target: ^mini",
        (
            "target 'mini' does not accept data class 'confidential'",
            "(it accepts public, deidentified)",
            "scenario 'chat' may never send data there",
        ),
    ),
    (
        "fallback to a forbidden target",
        {
            "scenarios": {
                "chat": {
                    "data_class": "confidential",
                    "routes": [{"target": "pool"}],
                    "fallback": ["backup"],
                }
            }
        },
        "- ^backup",
        ("fallback[0]: target 'backup' does not accept data class 'confidential'",),
    ),
    (
        "spillover to a forbidden target",
        {
            "scenarios": {
                "chat": {
                    "data_class": "internal",
                    "routes": [{"target": "pool"}],
                    "fallback": DELETE,
                    "spillover": {"target": "mini"},
                }
            }
        },
        "target: ^mini",
        ("spillover.target: target 'mini' does not accept data class 'internal'",),
    ),
    (
        "unknown data class in a scenario",
        {"scenarios": {"chat": {"data_class": "secret"}}},
        "secret",
        (
            "unknown data class 'secret'",
            "known: public, internal, deidentified, confidential, restricted",
        ),
    ),
    (
        "unknown data class in a target",
        {"targets": {"mini": {"data_classes": ["public", "secret"]}}},
        "secret",
        ("unknown data class 'secret' in target 'mini'.data_classes[1]",),
    ),
    (
        "data class outside the declared list",
        {"data_classes": ["open", "closed"], "targets": {"mini": {"data_classes": ["open"]}}},
        "- ^public",
        ("unknown data class 'public'", "known: open, closed"),
    ),
    (
        "missing target key",
        {"targets": {"mini": {"context_window": DELETE}}},
        "kind: maas",
        ("target 'mini' is missing required key 'context_window'",),
    ),
    (
        "missing kind",
        {"targets": {"pool": {"kind": DELETE}}},
        "engine: vllm",
        ("target 'pool' is missing required key 'kind'",),
    ),
    (
        "missing scenario key",
        {"scenarios": {"chat": {"routes": DELETE}}},
        "data_class: public",
        ("scenario 'chat' is missing required key 'routes'",),
    ),
    (
        "missing replica key",
        {"targets": {"pool": {"replicas": [{"endpoint": "http://a"}]}}},
        "endpoint: http://a",
        ("missing required key 'max_inflight'",),
    ),
    (
        "anthropic price without cache write prices",
        {"targets": {"mini": {"provider": "anthropic"}}},
        "input_per_mtok:",
        ("target 'mini'.price is missing 'cache_write_5m_per_mtok'", "anthropic"),
    ),
    (
        "anthropic price without the 1 h write price",
        {
            "targets": {
                "mini": {"provider": "anthropic", "price": {"cache_write_5m_per_mtok": Raw("0.50")}}
            }
        },
        "input_per_mtok:",
        ("missing 'cache_write_1h_per_mtok'",),
    ),
    (
        "spillover ratio above 1",
        {"scenarios": {"chat": {"spillover": {"target": "mini", "when_inflight_ratio": 1.5}}}},
        "1.5",
        ("when_inflight_ratio must be between 0.01 and 1, got 1.5",),
    ),
    (
        "spillover ratio 0",
        {"scenarios": {"chat": {"spillover": {"target": "mini", "when_inflight_ratio": 0}}}},
        "when_inflight_ratio: ^0",
        ("when_inflight_ratio must be between",),
    ),
    (
        "spillover ratio not a number",
        {"scenarios": {"chat": {"spillover": {"target": "mini", "when_inflight_ratio": "most"}}}},
        "most",
        ("when_inflight_ratio must be a number, got 'most'",),
    ),
    (
        "route outside the scenario's regions",
        {
            "targets": {"mini": {"region": "us"}, "pool": {"region": "eu"}},
            "scenarios": {"chat": {"regions": ["eu"]}},
        },
        "target: ^mini",
        ("target 'mini' is outside the regions scenario 'chat' allows",),
    ),
    (
        "scenario region no target is in",
        {"targets": {"mini": {"region": "us"}}, "scenarios": {"chat": {"regions": ["mars"]}}},
        "mars",
        ("names region 'mars' that no target is in",),
    ),
    (
        "target region not declared",
        {"regions": ["eu"], "targets": {"mini": {"region": "us"}}},
        "region: ^us",
        ("unknown region 'us'", "declared regions: eu"),
    ),
    (
        "unsupported version",
        {"version": 2},
        "version: ^2",
        ("version must be between 1 and 1, got 2",),
    ),
    (
        "kind that is neither",
        {"targets": {"mini": {"kind": "cloud"}}},
        "cloud",
        ("kind must be maas or self_hosted, got 'cloud'",),
    ),
    (
        "engine as a MaaS provider",
        {"targets": {"mini": {"provider": "vllm"}}},
        "provider: ^vllm",
        ("provider 'vllm' is not a MaaS provider",),
    ),
    (
        "route repeated",
        {
            "scenarios": {
                "chat": {
                    "routes": [{"target": "mini", "weight": 50}, {"target": "mini", "weight": 50}]
                }
            }
        },
        "- target: mini\n        weight: 50\n      - target: ^mini",
        ("routes[1] repeats target 'mini'",),
    ),
    (
        "empty routes",
        {"scenarios": {"chat": {"routes": []}}},
        "routes: ^[]",
        ("routes must list at least one target",),
    ),
    (
        "bad mode",
        {"scenarios": {"chat": {"mode": "realtime"}}},
        "realtime",
        ("mode must be online or batch, got 'realtime'",),
    ),
    (
        "bad bool",
        {"scenarios": {"chat": {"affinity": {"prefix": "maybe"}}}},
        "maybe",
        ("prefix must be true or false, got 'maybe'",),
    ),
    (
        "null target",
        {"targets": {"mini": None}},
        "mini: ^null",
        ("target 'mini' must be a mapping",),
    ),
]


@pytest.mark.parametrize(
    ("overrides", "needle", "fragments"),
    [pytest.param(o, n, f, id=name) for name, o, n, f in BAD_CASES],
)
def test_bad_config_is_located(
    make_config: Callable[..., Path],
    overrides: dict[str, Any],
    needle: str,
    fragments: tuple[str, ...],
) -> None:
    path = make_config(**overrides)
    text = path.read_text(encoding="utf-8")
    # The needle is unique in the text; a "^" in it marks where the offending node starts.
    line, col = locate(text, needle)
    assert_located(load_error(path), path, line, col, *fragments)


# ---- bad input: hand-written tables with the expected line:col spelled out -----------------------

VALID = """\
version: 1
targets:
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public, deidentified]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
  pool:
    kind: self_hosted
    data_classes: [public, confidential]
    context_window: 100000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60}
    replicas:
      - {endpoint: "http://pool-a:8000", max_inflight: 4}
scenarios:
  chat:
    data_class: public
    routes: [{target: pool, weight: 90}, {target: mini, weight: 10}]
    fallback: [mini]
"""


def test_hand_written_valid_table_loads(write_yaml: Callable[[str], Path]) -> None:
    config = turnout.load_config(write_yaml(VALID))
    assert config.targets == ["mini", "pool"]


@pytest.mark.parametrize(
    ("old", "new", "line", "col", "fragment"),
    [
        # line 9: price is a flow map; 'fee' starts at column 58 of
        # "    price: {input_per_mtok: 0.40, output_per_mtok: 1.60, fee: 1}"
        ("output_per_mtok: 1.60}", "output_per_mtok: 1.60, fee: 1}", 9, 58, "unknown key 'fee'"),
        # line 20: the second route's weight makes the sum 95; the routes list starts at column 13
        (
            "{target: mini, weight: 10}",
            "{target: mini, weight: 5}",
            20,
            13,
            "must sum to 100, got 95",
        ),
        # line 21: the second fallback item (column 22) names a target that does not exist
        ("fallback: [mini]", "fallback: [mini, tool]", 21, 22, "unknown target 'tool'"),
        # line 19: the scenario becomes confidential; route 'mini' (line 20, column 51) refuses it
        (
            "data_class: public",
            "data_class: confidential",
            20,
            51,
            "target 'mini' does not accept data class 'confidential'",
        ),
        # line 8: context_window as text
        (
            "context_window: 100000\n    price",
            "context_window: big\n    price",
            8,
            21,
            "must be an integer",
        ),
        # line 16: the replica lacks max_inflight; the replica map starts at column 9
        (", max_inflight: 4}", "}", 16, 9, "missing required key 'max_inflight'"),
        # line 7: an unknown data class as the second item
        ("[public, deidentified]", "[public, secretish]", 7, 28, "unknown data class 'secretish'"),
    ],
    ids=["flow-map-key", "weights", "fallback", "boundary", "int", "replica-missing", "data-class"],
)
def test_hand_written_errors(
    write_yaml: Callable[[str], Path], old: str, new: str, line: int, col: int, fragment: str
) -> None:
    assert old in VALID
    path = write_yaml(VALID.replace(old, new, 1))
    assert_located(load_error(path), path, line, col, fragment)


def test_duplicate_target(write_yaml: Callable[[str], Path]) -> None:
    # The second 'mini' key is line 10 ("  mini:" replacing "  pool:"), column 3.
    text = VALID.replace("  pool:\n    kind: self_hosted", "  mini:\n    kind: self_hosted", 1)
    path = write_yaml(text)
    assert_located(load_error(path), path, 10, 3, "target 'mini' is declared twice")


def test_duplicate_scenario(write_yaml: Callable[[str], Path]) -> None:
    # Appended as lines 22-24; the repeated key is line 22, column 3.
    path = write_yaml(VALID + "  chat:\n    data_class: public\n    routes: [{target: pool}]\n")
    assert_located(load_error(path), path, 22, 3, "scenario 'chat' is declared twice")


def test_duplicate_key_inside_a_target(write_yaml: Callable[[str], Path]) -> None:
    # "    model: other" becomes line 7, column 5.
    path = write_yaml(
        VALID.replace("    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    model: other\n", 1)
    )
    assert_located(load_error(path), path, 7, 5, "duplicate key 'model' in target 'mini'")


def test_anthropic_price_needs_cache_write_prices(write_yaml: Callable[[str], Path]) -> None:
    # line 9: the price map (a flow map starting at column 12) lacks the cache write prices
    path = write_yaml(VALID.replace("provider: openai", "provider: anthropic", 1))
    assert_located(load_error(path), path, 9, 12, "missing 'cache_write_5m_per_mtok'")


def test_region_mismatch(write_yaml: Callable[[str], Path]) -> None:
    text = (
        VALID.replace("    model: gpt-4.1-mini\n", "    model: gpt-4.1-mini\n    region: us\n", 1)
        .replace("    kind: self_hosted\n", "    kind: self_hosted\n    region: eu\n", 1)
        .replace("    data_class: public\n", "    data_class: public\n    regions: [eu]\n", 1)
    )
    # after two inserted lines above it, the routes line is 23; 'mini' starts at column 51
    assert text.splitlines()[22].startswith("    routes:")
    path = write_yaml(text)
    assert_located(
        load_error(path),
        path,
        23,
        51,
        "target 'mini' is outside the regions scenario 'chat' allows",
    )


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        # "illegal map value": the second ':' on line 2, column 11
        ("version: 1\ntargets: a: b\n", 2, 11),
        # a key indented by one space breaks the map: line 4, column 2
        ("version: 1\ntargets:\n  a: 1\n b: 2\n", 4, 2),
    ],
    ids=["double-colon", "indentation"],
)
def test_invalid_yaml_syntax(
    write_yaml: Callable[[str], Path], text: str, line: int, col: int
) -> None:
    path = write_yaml(text)
    assert_located(load_error(path), path, line, col, "invalid YAML")


@pytest.mark.parametrize(
    "text", ["", "\n", "# only a comment\n"], ids=["empty", "newline", "comment"]
)
def test_empty_file(write_yaml: Callable[[str], Path], text: str) -> None:
    path = write_yaml(text)
    assert_located(load_error(path), path, 1, 1, "the routing table is empty")


def test_missing_file(tmp_path: Path) -> None:
    # The OS reason, and no line and column: a file that cannot be opened has none to point at.
    path = tmp_path / "absent.yaml"
    with pytest.raises(FileNotFoundError) as info:
        turnout.load_config(path)
    assert isinstance(info.value, turnout.NotFoundError)
    assert info.value.code == "not_found"
    assert str(info.value) == f"{path}: cannot open: No such file or directory"


def test_unreadable_file() -> None:
    # Tests run as root, who reads any file: the loader runs as nobody (uid 65534) in a child, on a
    # file in a folder anyone may enter: first 0600 (refused by its mode), then 0644 (read).
    if os.geteuid() != 0:
        pytest.skip("needs root to load a file as another user")
    script = (
        "import os, sys, turnout\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    turnout.load_config(sys.argv[1])\n"
        "except (PermissionError, turnout.ConfigError) as e:\n"
        "    print(type(e).__name__, e.code, e, sep='|')\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        path = Path(folder) / "routing.yaml"
        path.write_text("version: 1\n", encoding="utf-8")
        path.chmod(0o600)
        run = [sys.executable, "-c", script, str(path)]
        out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
        denied = f"{path}: cannot open: Permission denied"
        assert out == f"PermissionDeniedError|permission_denied|{denied}\n"
        path.chmod(0o644)
        out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
        assert out.startswith(f"ConfigError|config_invalid|{path}:1:1: ")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    # A directory cannot be read as a file: saying "the routing table is empty" would send the user
    # looking for a problem in a file that does not exist.
    with pytest.raises(OSError, match="Is a directory") as info:
        turnout.load_config(tmp_path)
    assert isinstance(info.value, turnout.TurnoutIOError)
    assert info.value.code == "io_error"
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_top_level_not_a_mapping(write_yaml: Callable[[str], Path]) -> None:
    path = write_yaml("- version: 1\n")
    assert_located(load_error(path), path, 1, 1, "the routing table must be a mapping")


def test_missing_top_level_key(make_config: Callable[..., Path]) -> None:
    path = make_config(scenarios=DELETE)
    assert_located(load_error(path), path, 1, 1, "missing required key 'scenarios'")


def test_empty_targets(tmp_path: Path) -> None:
    table = merge(base_config(), {"targets": DELETE})
    table["targets"] = {}
    path = tmp_path / "routing.yaml"
    text = dump(table)
    path.write_text(text, encoding="utf-8")
    line, col = locate(text, "{}")
    assert_located(load_error(path), path, line, col, "targets must declare at least one target")


# ---- warnings: what the loader changed to accept a table ----------------------------------------

NOISY_PRICES = """{"noisy": {"input_cost_per_token": 3.6000000000000003e-06,
  "output_cost_per_token": 1.8e-05, "litellm_provider": "openai", "mode": "chat"}}"""


def _noisy_table(tmp_path: Path) -> Path:
    (tmp_path / "prices.json").write_text(NOISY_PRICES, encoding="utf-8")
    table = base_config()
    table["targets"]["mini"]["model"] = "noisy"
    table["targets"]["mini"]["price"] = {"from_litellm": "prices.json"}
    path = tmp_path / "routing.yaml"
    path.write_text(dump(table), encoding="utf-8")
    return path


def test_a_price_with_float_noise_is_rounded_with_a_warning(tmp_path: Path) -> None:
    path = _noisy_table(tmp_path)
    config = turnout.load_config(path)
    assert len(config.warnings) == 1, config.warnings
    line, col = locate(path.read_text(), "from_litellm")
    warning = config.warnings[0]
    assert warning.startswith(f"{path}:{line}:{col}: "), warning
    assert (
        "input_cost_per_token 3.6000000000000003e-06 is not a whole number of picodollars per "
        "token: rounded to 0.0000036" in warning
    )
    # 10,000 input tokens x 3,600,000 picodollars = $0.036 (and no output).
    d = turnout.Router(config).route("chat", input_tokens=10_000, max_output_tokens=0, now=T0)
    assert d.predicted_cost_usd == Decimal("0.036")
    plain = tmp_path / "plain.yaml"
    plain.write_text(dump(base_config()), encoding="utf-8")
    assert turnout.load_config(plain).warnings == []


def test_the_sidecar_logs_the_warnings_of_the_table_it_serves(
    sidecars: list[Sidecar], workdir: Path, shm_name: str
) -> None:
    path = _noisy_table(workdir)
    sidecar = Sidecar(workdir, path, shm_name)
    sidecars.append(sidecar)
    sidecar.start()
    warning = turnout.load_config(path).warnings[0]
    assert f"config: {warning}" in sidecar.log()
