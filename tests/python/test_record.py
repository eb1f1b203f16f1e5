"""turnout-sidecar --record: the real daemon records its own traffic in the Turnout trace format
(hashes only by default), through the socket, the fast path and settle_local; the file is private,
a full buffer is counted, SIGHUP reopens it (docs/operations.md, "Recording traffic")."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import turnout
from daemon import Sidecar
from turnout import _core
from turnout.cli import main as cli_main

SCENARIO = "contract-extraction"  # one route: llama-70b (vLLM usage, OpenAI shape)
TARGET = "llama-70b"
LINE_KEYS = {"at", "scenario", "key", "data_class", "input_tokens", "output_tokens", "accepted"}
PROMPT_FORMS = ({"blocks", "block_tokens"}, {"text"}, {"token_ids"}, set())


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def _wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _metric(sidecar: Sidecar, name: str) -> int:
    url = f"http://127.0.0.1:{sidecar.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    assert m, f"{name} not on /metrics"
    return int(m.group(1))


def _lines(path: Path) -> list[dict[str, Any]]:
    """The trace's lines, each checked against the Turnout trace format; the header first."""
    raw = path.read_text().splitlines()
    assert json.loads(raw[0]) == {"turnout_trace": 1}
    lines = [json.loads(line) for line in raw[1:]]
    for line in lines:
        assert set(line) >= LINE_KEYS, line
        assert set(line) - LINE_KEYS in PROMPT_FORMS, line
        assert isinstance(line["at"], float)
        assert line["scenario"] is None or isinstance(line["scenario"], str)
        assert line["key"] is None or isinstance(line["key"], str)
        assert isinstance(line["input_tokens"], int)
        assert line["input_tokens"] >= 0
        assert isinstance(line["output_tokens"], int)
        assert line["output_tokens"] >= 0
        assert line["accepted"] in (None, True, False)
        if "blocks" in line:
            assert line["block_tokens"] == 16
            assert all(isinstance(b, int) and 0 <= b < 2**64 for b in line["blocks"])
    return lines


def _recording(workdir: Path, config_path: Path, shm_name: str, sidecars: list[Sidecar]) -> Sidecar:
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    return s


def test_routes_reports_fast_path_and_imports_are_recorded_as_hashes(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    trace = workdir / "trace.jsonl"
    s = _recording(workdir, config_path, shm_name, sidecars).start("--record", str(trace))
    tokens = list(range(1000, 1040))  # 2 full blocks of 16, and a tail
    text = "Clause 7.2: the supplier shall indemnify the customer. " * 4  # 220 chars: 3 links of 64
    before = time.time()
    with s.client() as c:
        a = c.route(SCENARIO, key="customer-42", token_ids=tokens)
        c.report(a.id, target=a.target, status="ok", usage=_usage(101, 11), accepted=True)
        c.verdict(a.id, False)  # after its line was written: not in the trace
        b = c.route(SCENARIO, key="customer-42", text=text)
        c.report(b.id, target=b.target, status="error")  # no ok outcome: written at the stop
        c.route(SCENARIO, input_tokens=50)  # never reported: written at the stop, output 0
        c.request(
            "settle_local",
            spool_id=77,
            scenario=SCENARIO,
            target=TARGET,
            outcomes=[{"target": TARGET, "status": "ok", "usage": _usage(103, 13)}],
            accepted=False,
        )
    with s.client(shm=s.shm) as fast:
        f = fast.route(SCENARIO, key="customer-42", input_tokens=104)
        fast.report(f.id, target=f.target, status="ok", usage=_usage(104, 14))
        _wait_for(lambda: fast.stats()["fast_path"]["records"] >= 2)
    _wait_for(lambda: _metric(s, "turnout_trace_records_total") >= 3)
    assert s.stop() == 0
    after = time.time()

    assert stat.S_IMODE(trace.stat().st_mode) == 0o600
    body = trace.read_text()
    assert "customer-42" not in body
    assert "Clause" not in body
    lines = _lines(trace)
    assert len(lines) == 5
    for line in lines:
        assert before - 1 <= line["at"] <= after + 1
        assert line["scenario"] == SCENARIO
        assert line["data_class"] is None
    by_input = {line["input_tokens"]: line for line in lines}
    routed = by_input[101]  # the usage's figures, not the caller's
    assert routed["output_tokens"] == 11
    assert routed["accepted"] is True
    assert routed["blocks"] == _core.trace_blocks(token_ids=tokens)
    assert len(routed["blocks"]) == 2
    assert re.fullmatch(r"[0-9a-f]{16}", routed["key"])
    failed = next(line for line in lines if "blocks" in line and line is not routed)
    assert failed["blocks"] == _core.trace_blocks(text=text)
    assert len(failed["blocks"]) == 3  # 220 chars at 4 per token: 3 links of 16 tokens
    assert failed["input_tokens"] == 55  # estimated from the text, as the router does
    assert failed["output_tokens"] == 0
    assert failed["accepted"] is None
    assert failed["key"] == routed["key"]  # the same key hashes the same within the file
    assert by_input[50]["output_tokens"] == 0
    assert by_input[50]["key"] is None
    imported = by_input[103]
    assert (imported["output_tokens"], imported["accepted"], imported["key"]) == (13, False, None)
    fast_line = by_input[104]
    assert fast_line["output_tokens"] == 14
    assert fast_line["key"] is None
    assert "blocks" not in fast_line
    assert sum("blocks" not in line for line in lines) == 3


def test_trace_blocks_are_the_simulator_chain_for_tokens_and_text() -> None:
    tokens = list(range(33))
    chain = _core.trace_blocks(token_ids=tokens)
    assert len(chain) == 2  # one link per full 16 tokens
    assert _core.trace_blocks(token_ids=tokens[:16]) == chain[:1]  # a link names its whole prefix
    assert _core.trace_blocks(token_ids=[99, *tokens[1:]])[1] != chain[1]
    # Root 0, not a model's root seed: the router's own prefix hashes differ.
    assert chain != turnout.prefix.prefix_hashes(token_ids=tokens, block_size=16)
    assert len(_core.trace_blocks(text="x" * 127)) == 1  # 64 characters = 16 tokens per link
    assert _core.trace_blocks(text="x" * 128)[0] == _core.trace_blocks(text="x" * 64)[0]
    with pytest.raises(turnout.InvalidArgumentError):
        _core.trace_blocks()


def test_raw_keys_and_text_only_when_asked(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    trace = workdir / "t.jsonl"
    s = _recording(workdir, config_path, shm_name, sidecars)
    s.start("--record", str(trace), "--record-keys", "--record-text")
    with s.client() as c:
        d = c.route(SCENARIO, key='q"uote', text="héllo\nworld")
        c.report(d.id, target=d.target, status="ok", usage=_usage(3, 1))
        e = c.route(SCENARIO, token_ids=[5, 6, 7])
        c.report(e.id, target=e.target, status="ok", usage=_usage(4, 1))
    assert s.stop() == 0
    lines = _lines(trace)
    assert lines[0]["key"] == 'q"uote'
    assert lines[0]["text"] == "héllo\nworld"
    assert lines[1]["token_ids"] == [5, 6, 7]


def _refused(s: Sidecar, *extra: str) -> str:
    s.start(*extra, wait=False)
    assert s.proc is not None
    assert s.proc.wait(timeout=10) == 1
    return s.log()


def test_a_symlink_another_users_file_or_an_open_file_is_refused(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    s = _recording(workdir, config_path, shm_name, sidecars)
    target = workdir / "elsewhere.jsonl"
    link = workdir / "link.jsonl"
    link.symlink_to(target)
    assert "is a symbolic link: refusing it" in _refused(s, "--record", str(link))
    assert not target.exists()

    open_file = workdir / "open.jsonl"
    open_file.write_text("")
    open_file.chmod(0o644)
    assert "is open to other users" in _refused(s, "--record", str(open_file))

    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    theirs = workdir / "theirs.jsonl"
    theirs.write_text("")
    theirs.chmod(0o600)
    os.chown(theirs, 65534, 65534)
    log = _refused(s, "--record", str(theirs))
    assert f"--record file {theirs} (owner uid 65534, mode 0600) belongs to another user" in log
    assert theirs.read_text() == ""


def test_the_record_options_need_record(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    s = _recording(workdir, config_path, shm_name, sidecars)
    assert "the --record-* options need --record PATH" in _refused(s, "--record-keys")
    assert "--record-buffer must be a number of bytes" in _refused(
        s, "--record", str(workdir / "x"), "--record-buffer", "lots"
    )


def test_a_full_buffer_drops_and_counts_and_serving_goes_on(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    trace = workdir / "trace.jsonl"
    s = _recording(workdir, config_path, shm_name, sidecars)
    s.start("--record", str(trace), "--record-buffer", "256")
    with s.client() as c:
        big = c.route(SCENARIO, token_ids=list(range(1000)))  # 4000 bytes: never fits
        c.report(big.id, target=big.target, status="ok", usage=_usage(1000, 1))
        small = c.route(SCENARIO, input_tokens=7)
        c.report(small.id, target=small.target, status="ok", usage=_usage(7, 2))
        _wait_for(lambda: _metric(s, "turnout_trace_records_total") == 1)
        # The big decision was dropped; its outcome had no decision to join (not counted again).
        assert _metric(s, "turnout_trace_records_dropped_total") == 1
    assert s.stop() == 0
    lines = _lines(trace)
    assert [line["input_tokens"] for line in lines] == [7]


def test_sighup_reopens_the_file_after_rotation(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    trace = workdir / "trace.jsonl"
    s = _recording(workdir, config_path, shm_name, sidecars)
    s.start("--record", str(trace))
    with s.client() as c:
        d = c.route(SCENARIO, input_tokens=1)
        c.report(d.id, target=d.target, status="ok", usage=_usage(1, 1))
        _wait_for(lambda: len(trace.read_text().splitlines()) == 2)
        rotated = workdir / "trace.jsonl.1"
        trace.rename(rotated)
        assert s.proc is not None
        s.proc.send_signal(signal.SIGHUP)
        _wait_for(trace.exists)
        d = c.route(SCENARIO, input_tokens=2)
        c.report(d.id, target=d.target, status="ok", usage=_usage(2, 1))
        _wait_for(lambda: len(trace.read_text().splitlines()) == 2)
    assert s.stop() == 0
    assert [line["input_tokens"] for line in _lines(rotated)] == [1]
    assert [line["input_tokens"] for line in _lines(trace)] == [2]
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600
    assert "trace reopened" in s.log()


def test_decisions_without_an_ok_outcome_are_written_after_the_wait(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    trace = workdir / "trace.jsonl"
    s = _recording(workdir, config_path, shm_name, sidecars)
    s.start("--record", str(trace), "--record-wait", "1")
    with s.client() as c:
        d = c.route(SCENARIO, input_tokens=9)
        c.report(d.id, target=d.target, status="timeout")
        time.sleep(0.3)
        assert len(trace.read_text().splitlines()) == 1  # waiting: a fallback may still serve it
        _wait_for(lambda: len(trace.read_text().splitlines()) == 2, timeout_s=5)
    lines = _lines(trace)
    line = lines[0]
    assert (line["input_tokens"], line["output_tokens"], line["accepted"]) == (9, 0, None)
    assert s.stop() == 0


def test_turnout_serve_passes_the_record_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_execv(binary: str, argv: list[str]) -> None:
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", fake_execv)
    result = CliRunner().invoke(
        cli_main,
        ["serve", "t.yaml", "--record", "/x/t.jsonl", "--record-keys", "--record-buffer", "4096"],
    )
    assert result.exit_code == 0, result.output
    argv = seen[0]
    assert argv[argv.index("--record") + 1] == "/x/t.jsonl"
    assert argv[argv.index("--record-buffer") + 1] == "4096"
    assert "--record-keys" in argv
    assert "--record-text" not in argv
