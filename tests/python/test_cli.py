"""The ``turnout`` command, run for real as a subprocess: exit codes, JSON, stderr messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from support import config_text
from turnout._demo import REQUESTS, provider_usage


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")
    }  # a pipe, as in scripts
    return subprocess.run(
        [sys.executable, "-m", "turnout.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        check=False,
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert turnout.__version__ in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "turnout"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in ("validate", "route", "cost", "demo"):
        assert command in result.stdout


def test_validate_ok(example_path: Path, example_config: turnout.Config) -> None:
    result = run("validate", example_path)
    assert result.returncode == 0, result.stderr
    out = one_line(result.stdout)
    assert f"ok {example_path}: 5 targets, 3 scenarios, version {example_config.version}" in out
    assert result.stderr == ""


def test_validate_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    # line 10 is "    context_window: lots" (column 21 is the value)
    path.write_text(config_text(targets={"mini": {"context_window": "lots"}}), encoding="utf-8")
    assert path.read_text(encoding="utf-8").splitlines()[9] == "    context_window: lots"
    result = run("validate", path)
    assert result.returncode == 2
    assert result.stdout == ""
    # (whitespace-normalized: test_errors_are_printed_on_one_line covers the line breaks)
    assert one_line(result.stderr) == (
        f"error: {path}:10:21: target 'mini'.context_window must be an integer, got 'lots'"
    )


def test_validate_missing_file(tmp_path: Path) -> None:
    # One line with the OS reason; no line and column (there is no file to point into).
    path = tmp_path / "absent.yaml"
    result = run("validate", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {path}: cannot open: No such file or directory"]


def test_errors_are_printed_on_one_line(tmp_path: Path) -> None:
    # Editors and CI problem matchers read "file:line:col: message" one line at a time: a long
    # message
    # must not be wrapped at the console width when stderr is not a terminal.
    path = tmp_path / "routing.yaml"
    path.write_text(config_text(targets={"mini": {"context_window": "lots"}}), encoding="utf-8")
    with pytest.raises(turnout.ConfigError) as info:
        turnout.load_config(path)
    result = run("validate", path)
    assert result.stderr.splitlines() == [f"error: {info.value}"]


def test_route_json(example_path: Path, example_config: turnout.Config) -> None:
    result = run(
        "route",
        example_path,
        "--scenario",
        "agent-assist",
        "--key",
        "user-42",
        "--input-tokens",
        "5000",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["target"] in ("claude-sonnet-4", "gemini-2.5-pro")
    assert decision["scenario"] == "agent-assist"
    assert decision["key"] == "user-42"
    assert decision["config_version"] == example_config.version
    # the same decision as the library makes with the same seed
    expected = turnout.Router(example_config, seed=0).explain(
        "agent-assist", key="user-42", input_tokens=5000
    )
    assert decision["target"] == expected.target
    assert decision["fallbacks"] == expected.fallbacks
    assert Decimal(decision["predicted_cost_usd"]) == expected.predicted_cost_usd
    assert isinstance(decision["predicted_cost_usd"], str)  # exact decimal text, never a float


def test_route_count(example_path: Path) -> None:
    result = run(
        "route", example_path, "-s", "contract-extraction", "--key", "c", "--count", "3", "--json"
    )
    assert result.returncode == 0, result.stderr
    decisions = json.loads(result.stdout)
    assert [d["key"] for d in decisions] == ["c-0", "c-1", "c-2"]
    assert [d["id"] for d in decisions] == [1, 2, 3]
    # in-flight decisions alternate between the two replicas
    assert [d["endpoint"] for d in decisions] == [
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8002",
        "http://127.0.0.1:8001",
    ]


def test_route_unknown_scenario(example_path: Path) -> None:
    result = run("route", example_path, "--scenario", "nope", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert one_line(result.stderr) == (
        "error: unknown scenario 'nope'; known scenarios: "
        "support-summarization, contract-extraction, agent-assist"
    )


def test_route_boundary(example_path: Path) -> None:
    result = run(
        "route", example_path, "-s", "agent-assist", "--data-class", "restricted", "--json"
    )
    assert result.returncode == 1
    assert "has no eligible target" in one_line(result.stderr)
    assert "boundary" in result.stderr


ANTHROPIC_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Here is the summary."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "cache_creation_input_tokens": 2051,
        "cache_read_input_tokens": 4000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 1051},
        "output_tokens": 503,
        "service_tier": "standard",
    },
}


def test_cost_anthropic_message(tmp_path: Path, example_path: Path) -> None:
    usage_file = tmp_path / "message.json"
    usage_file.write_text(json.dumps(ANTHROPIC_MESSAGE), encoding="utf-8")
    result = run(
        "cost", example_path, "--target", "claude-sonnet-4", "--usage", usage_file, "--json"
    )
    assert result.returncode == 0, result.stderr
    cost = json.loads(result.stdout)
    # claude-sonnet-4, USD per Mtok: input 3.00, cache read 0.30, 5 min write 3.75, 1 h write 6.00,
    # output 15.00
    #   2095 x 3.00 + 4000 x 0.30 + 1000 x 3.75 + 1051 x 6.00 + 503 x 15.00
    #   = 6285 + 1200 + 3750 + 6306 + 7545 = 25086 micro-dollars = $0.025086
    assert cost == {
        "uncached_input_tokens": 2095,
        "cache_read_tokens": 4000,
        "cache_write_5m_tokens": 1000,
        "cache_write_1h_tokens": 1051,
        "output_tokens": 503,
        "reasoning_tokens": 0,
        "cost_usd": "0.025086",
        "reported_cost_usd": None,
    }


def test_cost_openai_batch(tmp_path: Path, example_path: Path) -> None:
    usage_file = tmp_path / "usage.json"
    usage_file.write_text(
        json.dumps(
            {
                "prompt_tokens": 3000,
                "completion_tokens": 1000,
                "prompt_tokens_details": {"cached_tokens": 2048},
            }
        ),
        encoding="utf-8",
    )
    result = run(
        "cost", example_path, "-t", "gpt-4.1-mini", "--usage", usage_file, "--batch", "--json"
    )
    assert result.returncode == 0, result.stderr
    # (3000 - 2048) x 0.40 + 2048 x 0.10 + 1000 x 1.60 = 380.8 + 204.8 + 1600 = 2185.6 micro-
    # dollars,
    # half of it in batch: 1092.8 micro-dollars = $0.0010928
    assert json.loads(result.stdout)["cost_usd"] == "0.0010928"


def test_cost_bad_usage(tmp_path: Path, example_path: Path) -> None:
    usage_file = tmp_path / "usage.json"
    usage_file.write_text(json.dumps({"input_tokens": 10}), encoding="utf-8")
    result = run("cost", example_path, "-t", "claude-sonnet-4", "--usage", usage_file, "--json")
    assert result.returncode == 1
    assert "output_tokens" in result.stderr
    assert result.stdout == ""


def test_demo_json() -> None:
    result = run("demo", "--json")
    assert result.returncode == 0, result.stderr
    demo = json.loads(result.stdout)
    config = turnout.load_config(demo["config"])
    assert demo["version"] == config.version

    decisions = demo["decisions"]
    assert len(decisions) == len(REQUESTS)
    errors = {d["key"]: d for d in decisions if "error" in d}
    # the confidential agent-assist request has no target that may take it: it fails closed
    assert errors["user-44"]["error"] == "NoEligibleTargetError"
    assert "boundary" in errors["user-44"]["message"]
    # the 130k-token contract does not fit the only target allowed to read contracts
    assert errors["contract-78"]["error"] == "NoEligibleTargetError"
    assert "context_window" in errors["contract-78"]["message"]
    assert set(errors) == {"user-44", "contract-78"}

    # Every ledger figure is an exact decimal string, and the ledger holds exactly the cost of the
    # outcomes the demo reported: re-price each reported usage here and compare the sums.
    ledger = demo["ledger"]
    assert ledger
    for r in ledger:
        for field in ("cost_usd", "accepted_cost_usd"):
            assert isinstance(r[field], str)
            assert str(Decimal(r[field])) == r[field]
    ledger_cost = sum((Decimal(r["cost_usd"]) for r in ledger), Decimal(0))
    assert ledger_cost == sum((Decimal(s["cost_usd"]) for s in demo["scenarios"]), Decimal(0))

    repriced = Decimal(0)
    served = 0
    for i, (scenario, key, _data_class, prompt, max_out) in enumerate(REQUESTS):
        d: dict[str, Any] = decisions[i]
        assert d["key"] == key
        if "error" in d:
            continue
        served += 1
        provider = config.target_info(d["target"])["provider"]
        usage = provider_usage(provider, prompt, max_out * 3 // 4)
        repriced += turnout.price_usage(
            config, d["target"], usage, batch=scenario == "contract-extraction"
        ).cost_usd
    assert ledger_cost == repriced
    assert sum(r["requests"] for r in ledger) == served == len(REQUESTS) - 2
