"""The ``turnout`` command, run for real as a subprocess: exit codes, JSON, stderr messages."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import turnout
from support import config_text
from turnout._demo import POLICIES, bundled
from turnout.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


def run(
    *args: str | Path, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")
    }  # a pipe, as in scripts
    return subprocess.run(
        [sys.executable, "-m", "turnout.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
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


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["route", "-s", "agent-assist"],
        ["cost", "-t", "claude-sonnet-4", "--usage", REPO / "examples" / "usage.json"],
    ],
)
def test_a_missing_config_is_one_line_naming_the_file(tmp_path: Path, command: list[Any]) -> None:
    absent = tmp_path / "absent.yaml"
    args = [*command, absent] if command[-1] == "--config" else [command[0], absent, *command[1:]]
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(absent) in lines[0]


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory", "/nowhere/routing.yaml"),
        PermissionError(13, "Permission denied", "/root/routing.yaml"),
        turnout.ConfigError("/nowhere/routing.yaml:1:1: not found (No such file or directory)"),
        turnout.TurnoutError("/nowhere/routing.yaml: not found (No such file or directory)"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_whatever_load_config_raises_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def fail(path: object) -> turnout.Config:
        raise error

    monkeypatch.setattr(turnout, "load_config", fail)
    for args in (["validate", "r.yaml"], ["validate", "r.yaml", "--json"]):
        result = CliRunner().invoke(cli_main, args)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        if "--json" in args:
            assert json.loads(result.stdout)["error"] == {
                "type": type(error).__name__,
                "message": str(error),
            }
        else:
            assert result.stderr.splitlines() == [f"error: {error}"]


def test_validate_json(example_path: Path, example_config: turnout.Config, tmp_path: Path) -> None:
    result = run("validate", example_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "ok": True,
        "config": str(example_path),
        "version": example_config.version,
        "targets": example_config.targets,
        "scenarios": example_config.scenarios,
    }
    bad = tmp_path / "routing.yaml"
    bad.write_text(config_text(targets={"mini": {"context_window": "lots"}}), encoding="utf-8")
    result = run("validate", bad, "--json")
    assert result.returncode == 2
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["config"] == str(bad)
    assert report["error"]["type"] == "ConfigError"
    assert report["error"]["message"].startswith(f"{bad}:10:21: target 'mini'.context_window")


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
    # each is done before the next, so both replicas are idle every time: their recent load
    # (placements, not in-flight requests) spreads the sequence over both
    assert len({d["endpoint"] for d in decisions}) == 2
    assert all("least_loaded" in " ".join(d["reasons"]) for d in decisions)


def test_route_count_gives_the_split_of_the_table(example_path: Path) -> None:
    # support-summarization routes 90% to llama-70b and 10% to gpt-4.1-mini, with a spillover to
    # gpt-4.1-mini once llama-70b's two replicas hold 90% of their 2 x 64 slots. Held in flight,
    # 2000 requests would fill the pool after ~115 and spill the rest: the split turned around.
    n = 2000
    result = run(
        "route", example_path, "-s", "support-summarization", "--key", "ticket",
        "--count", str(n), "--seed", "7", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    decisions = json.loads(result.stdout)
    assert len(decisions) == n
    assert not any("spillover" in r for d in decisions for r in d["reasons"])
    on_pool = sum(d["target"] == "llama-70b" for d in decisions)
    assert on_pool + sum(d["target"] == "gpt-4.1-mini" for d in decisions) == n
    # Each key lands on llama-70b with p = 0.9: Binomial(2000, 0.9) has mean 1800 and standard
    # deviation sqrt(2000 x 0.9 x 0.1) = 13.4; five of them (67) bound a fair split.
    assert abs(on_pool - 0.9 * n) <= 67, on_pool
    help_text = one_line(run("route", "--help").stdout)
    assert "each is reported as an ok outcome before the next" in help_text
    table = run("route", example_path, "-s", "support-summarization", "--count", "50")
    assert table.returncode == 0, table.stderr
    assert "Split over 50 requests" in table.stdout


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


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("demo", "--out", out, "--requests", "3000", "--no-progress", *args, timeout=300)


def test_demo_json(tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "demo"
    result = _demo(out, "--json")
    assert result.returncode == 0, result.stderr
    demo = json.loads(result.stdout)  # one document, the folder's summary.json
    assert demo == json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert demo["out"] == str(out)
    assert demo["workload"]["requests"] == 3000
    assert Path(demo["workload"]["trace"]).parent == out
    rows = {r["policy"]: r for r in demo["policies"]}
    assert list(rows) == list(POLICIES)
    for name, r in rows.items():
        # Every figure comes from the replay's own per-request results, summed exactly.
        frame = pd.read_parquet(out / "replays" / name / "requests.parquet")
        assert len(frame) == r["requests"] == 3000
        picos = sum(int(c) for c in frame["cost_picos"])
        marginal = Decimal(r["maas_usd"]) + Decimal(r["self_hosted_marginal_usd"])
        assert marginal == Decimal(picos).scaleb(-12)
        replayed = json.loads((out / "replays" / name / "summary.json").read_text("utf-8"))
        assert Decimal(replayed["cost_usd"]) == marginal
        completed = int((frame["outcome"] != "failed").sum())
        assert r["served"] + r["fallbacks"] == completed
        assert r["availability"] == round(completed / r["requests"], 6)
        accepted = (frame["accepted"] == 1) & (frame["outcome"] != "failed")
        assert r["accepted"] == int(accepted.sum())
        assert Decimal(r["per_accepted_marginal_usd"]) == (marginal / r["accepted"]).quantize(
            Decimal("1e-12")
        )
        assert Decimal(r["per_accepted_fully_loaded_usd"]) >= Decimal(
            r["per_accepted_marginal_usd"]
        )
        assert 0 < r["cache_hit_realized"] < 1
        # The SLO and quality gate are the replay summary's own (None while it has none).
        gate = (replayed.get("scenarios") or {}).get("support-summarization") or {}
        for key in ("ttft_slo_attainment", "latency_slo_attainment", "slo_met", "quality_gate"):
            assert r[key] == gate.get(key)
    per_accepted = {n: Decimal(r["per_accepted_fully_loaded_usd"]) for n, r in rows.items()}
    assert demo["cheapest_fully_loaded"] == min(per_accepted, key=per_accepted.__getitem__)
    # MaaS-only never touches the pool (nor pays for it); self-hosted-only never pays a token.
    assert Decimal(rows["maas_only"]["self_hosted_marginal_usd"]) == 0
    assert Decimal(rows["maas_only"]["self_hosted_fully_loaded_usd"]) == 0
    assert Decimal(rows["self_hosted_only"]["maas_usd"]) == 0
    # gpt-4.1-mini's simulated outage sends calls to the fallback (and fails some): availability
    # is measured, not assumed.
    assert rows["maas_only"]["fallbacks"] > 0
    assert rows["self_hosted_only"]["availability"] == 1.0
    # Fully loaded = every GPU-hour of the replay at $2.99 plus the table's monthly extras
    # (staging 2200 + canary 1100 + engineering 16000 + observability 900 + evals 1500 = $21,700)
    # for the same hours out of a 730-hour month (each item rounded to the picodollar; the period
    # reaches the core in whole milliseconds: 4 GPUs x $2.99/h x 1 ms is $3.3e-6).
    sh = rows["self_hosted_only"]
    loaded = Decimal(sh["self_hosted_fully_loaded_usd"])
    hours = Decimal(sh["gpu_hours"]) / 4  # 2 replicas x 2 GPUs
    expected = Decimal(sh["gpu_hours"]) * Decimal("2.99") + 21_700 * hours / 730
    assert abs(loaded - expected) < Decimal("1e-5")
    assert loaded > 10 * Decimal(sh["self_hosted_marginal_usd"])
    for plot in ("cost_per_accepted.png", "latency_cdf.png", "cache_hit_rate.png"):
        assert str(out / plot) in demo["plots"]
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    scenario_files = sorted(bundled("scenarios").glob("*.yaml"))
    try:
        import turnout.decide  # noqa: F401
    except ImportError:  # until the decision records land: said, not skipped silently
        assert demo["decisions"] == [
            {"error": "turnout.decide is not available: no decision records"}
        ]
    else:
        assert scenario_files
        assert [d["scenario"] for d in demo["decisions"]] == [p.stem for p in scenario_files]
        for d in demo["decisions"]:
            assert "error" not in d, d
            folder = out / "decisions" / d["scenario"]
            assert json.loads((folder / "record.json").read_text("utf-8")) == d["record"]
            markdown = (folder / "record.md").read_text("utf-8")
            assert markdown.startswith(f"# Decision record: {d['record']['scenario']}")


def test_demo_prints_the_comparison_and_names_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = _demo(out)
    assert result.returncode == 0, result.stderr
    text = one_line(result.stdout)
    assert "MaaS vs self-hosted vs hybrid: support-summarization" in text
    for name in POLICIES:
        [row] = [line for line in result.stdout.splitlines() if line.startswith(f"│ {name} ")]
        assert "%" in row  # availability, cache hit rates
    assert "Cheapest per accepted outcome, fully loaded, on this traffic:" in text
    assert "Decision record" in text  # each bundled scenario's, or why there are none
    assert f"Wrote {out}/:" in text
    assert (out / "summary.json").is_file()


def test_demo_output_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    result = _demo(blocker / "out")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert f"{blocker / 'out'}: cannot create the output folder" in line


def test_demo_without_matplotlib_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = CliRunner().invoke(cli_main, ["demo", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "the demo needs matplotlib" in one_line(result.stderr)
    assert "pip install 'turnout[notebooks]'" in one_line(result.stderr)
    assert not (tmp_path / "out").exists()


def _readme_command_lines() -> list[str]:
    """The lines of README.md's command-line block that run ``turnout``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("the command line", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("turnout ")]


def test_readme_cost_example_runs_verbatim() -> None:
    # The README's line, run from the repository root with the installed `turnout`: the usage
    # file it names ships in examples/ (an Anthropic usage, as claude-sonnet-4 reports it).
    [line] = [cmd for cmd in _readme_command_lines() if cmd.startswith("turnout cost ")]
    assert line.endswith(" [--json]")
    argv = [
        str(Path(sys.executable).parent / "turnout"),
        *shlex.split(line.removesuffix(" [--json]"))[1:],
    ]
    table = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert table.returncode == 0, table.stderr
    as_json = subprocess.run(
        [*argv, "--json"], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert as_json.returncode == 0, as_json.stderr
    # claude-sonnet-4, USD per Mtok: input 3.00, cache read 0.30, 5 min write 3.75, output 15.00
    #   412 x 3.00 + 3072 x 0.30 + 1536 x 3.75 + 286 x 15.00
    #   = 1236 + 921.6 + 5760 + 4290 = 12207.6 micro-dollars = $0.0122076
    cost = json.loads(as_json.stdout)
    assert cost["cost_usd"] == "0.0122076"
    assert cost["cache_write_5m_tokens"] == 1536
    assert "0.0122076" in table.stdout


def test_readme_command_lines_run(tmp_path: Path) -> None:
    lines = _readme_command_lines()
    assert len(lines) >= 3
    for line in lines:
        if line.startswith(("turnout serve", "turnout stats")):
            continue  # a daemon and its client: test_sidecar.py runs those
        argv = [str(Path(sys.executable).parent / "turnout")]
        argv += shlex.split(line.replace(" [--json]", ""))[1:]
        result = subprocess.run(
            argv, capture_output=True, text=True, cwd=REPO, timeout=60, check=False
        )
        assert result.returncode == 0, (line, result.stderr)


def test_stats_and_explain_refuse_a_malformed_endpoint_in_one_line() -> None:
    for command in (["stats"], ["explain", "-s", "agent-assist"]):
        for endpoint in ("foo", "tcp://localhost", "ipc://"):
            result = run(*command, "--endpoint", endpoint)
            assert result.returncode == 2, (command, endpoint, result.stderr)
            lines = result.stderr.splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].startswith(f"error: malformed endpoint '{endpoint}'")
            assert "ipc://PATH or tcp://HOST:PORT" in lines[0]


def test_stats_says_when_nothing_listens(tmp_path: Path) -> None:
    absent = tmp_path / "none.sock"
    result = run("stats", "--endpoint", f"ipc://{absent}", "--timeout-ms", "100")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: nothing listens at ipc://{absent} (no such socket file): is the sidecar running?"
    ]
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = run("stats", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout-ms", "100")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: no answer from the sidecar at tcp://127.0.0.1:{port} within 100 ms"
    ]
