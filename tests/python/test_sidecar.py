"""The turnout-sidecar daemon, started for real: wire protocol, bad input, reload, crash safety,
shared-memory counters, client fallback, /metrics. Every daemon is stopped by its fixture."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from click.testing import CliRunner

import turnout
from daemon import REPO, Sidecar
from turnout import ledger
from turnout.cli import main as cli_main

SCENARIO = "contract-extraction"  # one route: llama-70b (vLLM usage, OpenAI shape)
TARGET = "llama-70b"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _decided(c: turnout.Client) -> dict[str, int]:
    """How a client's routes were decided (its counters' first four)."""
    ways = ("socket", "fast_path", "local", "outages")
    return {k: v for k, v in c.counters().items() if k in ways}


def _usage(i: int) -> dict[str, int]:
    return {"prompt_tokens": 100 + i, "completion_tokens": 10 + i % 7}


def _row(rows: list[dict[str, Any]], scenario: str = SCENARIO, target: str = TARGET) -> dict:
    return next(r for r in rows if r["scenario"] == scenario and r["target"] == target)


# ------------------------------------------------------------------------------------ the basics


def test_route_report_match_the_in_process_router(sidecar: Sidecar, config_path: Path) -> None:
    router = turnout.Router(turnout.load_config(config_path))
    with sidecar.client() as c:
        d = c.route(SCENARIO, key="k1", input_tokens=1000, now=T0)
        local = router.route(SCENARIO, key="k1", input_tokens=1000, now=T0)
        for attr in (
            "scenario",
            "target",
            "endpoint",
            "fallbacks",
            "reasons",
            "predicted_cost_usd",
        ):
            assert getattr(d, attr) == getattr(local, attr), attr
        assert d.config_version == local.config_version
        assert d.id >= 1 << 40  # generation << 40: unique across restarts
        kw: dict[str, Any] = {"status": "ok", "usage": _usage(0), "latency_ms": 42, "now": T0 + 1}
        receipt = c.report(d.id, target=d.target, **kw)
        local_receipt = router.report(local.id, target=d.target, **kw)
        assert receipt is not None
        assert receipt["cost_usd"] == local_receipt["cost_usd"]
        again = c.report(d.id, target=d.target, status="ok", usage=_usage(0), now=T0 + 2)
        assert again is not None
        assert again["duplicate"]
        c.verdict(d.id, True, now=T0 + 3)
        router.verdict(local.id, True, now=T0 + 3)
    view = turnout.attach(sidecar.shm)
    assert _row(view.counters()) == _row(router.counters())
    assert sidecar.stop() == 0


def test_core_errors_come_back_as_the_same_exceptions(sidecar: Sidecar) -> None:
    with sidecar.client() as c:
        with pytest.raises(turnout.UnknownScenarioError):
            c.route("no-such-scenario")
        with pytest.raises(turnout.UnknownDecisionError):
            c.report(12345, target=TARGET, status="ok")
        with pytest.raises(turnout.InvalidArgumentError):
            c.route(SCENARIO, input_tokens=-1)
        with pytest.raises(turnout.ProtocolError) as e:
            c.request("frobnicate")
        assert e.value.code == "unknown_op"


# ------------------------------------------------------------------------ many clients, shm sum

WORKER = textwrap.dedent(
    """
    import json, sys
    import turnout
    endpoint, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = {"outcomes": 0, "input": 0, "output": 0, "cost": "0"}
    from decimal import Decimal
    cost = Decimal(0)
    with turnout.Client(endpoint, timeout_ms=5000) as c:
        for i in range(n):
            d = c.route("contract-extraction", key=f"{seed}-{i}", input_tokens=100 + i)
            usage = {"prompt_tokens": 100 + i, "completion_tokens": 10 + i % 7}
            r = c.report(d.id, target=d.target, status="ok", usage=usage, latency_ms=5 + i)
            assert r is not None and not r["duplicate"]
            out["outcomes"] += 1
            out["input"] += usage["prompt_tokens"]
            out["output"] += usage["completion_tokens"]
            cost += r["cost_usd"]
    out["cost"] = str(cost)
    print(json.dumps(out))
    """
)


def test_concurrent_clients_sum_up_in_shared_memory(sidecar: Sidecar) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, sidecar.endpoint, "60", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    row = _row(turnout.attach(sidecar.shm).counters())
    assert row["requests"] == row["outcomes"] == row["ok"] == sum(r["outcomes"] for r in results)
    assert row["uncached_input_tokens"] == sum(r["input"] for r in results)
    assert row["output_tokens"] == sum(r["output"] for r in results)
    assert row["cost_usd"] == sum(Decimal(r["cost"]) for r in results)
    assert row["latency_count"] == 240
    frame = turnout.attach(sidecar.shm).counters_frame()
    assert int(frame.loc[frame["scenario"] == SCENARIO, "outcomes"].sum()) == 240


# ---------------------------------------------------------------------------------- bad input


def test_bad_messages_get_error_replies_and_the_sidecar_keeps_serving(sidecar: Sidecar) -> None:
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 5000)  # a send never hangs the test
        sock.connect(sidecar.endpoint)

        def ask(payload: bytes) -> dict[str, Any]:
            sock.send(payload)
            assert sock.poll(5000), "no reply"
            return msgpack.unpackb(sock.recv())

        def code(payload: bytes) -> str:
            reply = ask(payload)
            assert reply["ok"] is False
            return reply["error"]["code"]

        def pack(**m: Any) -> bytes:
            return msgpack.packb({"v": 1, "id": 7, **m})

        assert code(b"\xc1\x00garbage") == "bad_message"
        assert code(b"") == "bad_message"
        assert code(msgpack.packb([1, 2, 3])) == "bad_message"
        assert code(msgpack.packb({"v": 1, "op": "route"}) + b"x") == "bad_message"
        assert code(pack(op="route", scenario=17)) == "bad_message"
        assert code(pack(op="route", scenario=SCENARIO, input_tokens="many")) == "bad_message"
        assert code(pack(op="route", scenario=SCENARIO, token_ids=[1, -2])) == "invalid_argument"
        assert code(pack(op="report", decision_id="x", target=TARGET, status="ok")) == "bad_message"
        assert code(pack(op="report", decision_id=1, target=TARGET, status="meh")) == (
            "invalid_argument"
        )
        assert code(pack(op="launch")) == "unknown_op"
        assert code(msgpack.packb({"v": 2, "op": "health", "id": 1})) == "bad_message"
        assert code(pack(op="route", scenario="x" * (5 << 20))) == "too_large"
        nested: Any = 1
        for _ in range(100):
            nested = [nested]
        assert code(pack(op="route", scenario=SCENARIO, key=nested)) == "too_deep"
        reply = ask(pack(op="health"))
        assert reply["ok"]
        assert reply["id"] == 7

        # Beyond the socket's maximum message size ZeroMQ drops the peer: no reply, but the
        # sidecar goes on serving everyone else.
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(sidecar.endpoint)
        big.send(b"\x00" * (9 << 20))
        assert not big.poll(300)
        big.close()
        # A flood from one client that reads nothing does not stop another from being served. Its
        # replies queue up to about the socket's limit (4096, more while the kernel's buffer takes
        # them); each one beyond is dropped and counted, never silently.
        def unsent() -> int:
            url = f"http://127.0.0.1:{sidecar.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            return int(re.search(r"^turnout_unsent_replies_total (\d+)$", text, re.M).group(1))

        unsent_before = unsent()
        flood = 12_000
        for i in range(flood):
            sock.send(pack(op="health", id=i))
        with sidecar.client() as c:
            assert c.health()["status"] == "serving"
            c.route(SCENARIO, input_tokens=10)
        got = 0
        while got < flood and sock.poll(2000):
            sock.recv()
            got += 1
        dropped = unsent() - unsent_before
        assert got >= 2000  # the limit is approximate (ZeroMQ counts in batches)
        assert got + dropped == flood
    finally:
        ctx.destroy(linger=0)
    assert sidecar.proc is not None
    assert sidecar.proc.poll() is None


# ----------------------------------------------------------------------------------- reload


def test_reload_keeps_the_old_table_on_error_then_swaps(
    sidecar: Sidecar, config_path: Path
) -> None:
    good = config_path.read_text()
    with sidecar.client() as c:
        before = c.route(SCENARIO, input_tokens=100)
        old_version = before.config_version
        c.report(before.id, target=before.target, status="ok", usage=_usage(1))
        pending = c.route(SCENARIO, input_tokens=100)  # reported after the reload

        broken = good.replace("max_output_tokens: 2048", "max_output_tokens: lots")
        assert broken != good
        config_path.write_text(broken)
        line = next(i for i, t in enumerate(broken.splitlines(), 1) if "lots" in t)
        with pytest.raises(turnout.ConfigError, match=rf"routing\.yaml:{line}:\d+"):
            c.reload()
        assert c.route(SCENARIO, input_tokens=100).config_version == old_version

        config_path.write_text(good.replace("max_output_tokens: 2048", "max_output_tokens: 1024"))
        reply = c.reload()
        assert reply["config_version"] != old_version
        after = c.route(SCENARIO, input_tokens=100)
        assert after.config_version == reply["config_version"]
        assert after.id > pending.id
        # A decision of the old table still reports, into the new ledger.
        assert c.report(pending.id, target=pending.target, status="ok", usage=_usage(2))
        row = _row(c.stats()["counters"])
        assert row["requests"] == 4
        assert row["outcomes"] == 2
        shm_row = _row(turnout.attach(sidecar.shm).counters())
        assert shm_row["requests"] == 4
        assert shm_row["outcomes"] == 2

        # SIGHUP reloads too.
        config_path.write_text(good)
        assert sidecar.proc is not None
        sidecar.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while c.health()["config_version"] != old_version:
            assert time.monotonic() < deadline, sidecar.log()
            time.sleep(0.02)


# ------------------------------------------------------------------------------ crash safety


def test_counters_survive_kill_9_under_load(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    first = Sidecar(workdir, config_path, shm_name)
    sidecars.append(first)
    first.start()
    acked = 0
    sent = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal acked, sent
        with first.client(timeout_ms=500, retry_after_s=0) as c:
            i = 0
            while not stop.is_set():
                try:
                    d = c.route(SCENARIO, key=str(i), input_tokens=100)
                except turnout.SidecarUnavailableError:
                    return
                sent += 1
                try:
                    r = c.report(d.id, target=d.target, status="ok", usage=_usage(i))
                except turnout.TurnoutError:
                    return
                if r is None:
                    return
                acked += 1
                i += 1

    t = threading.Thread(target=load)
    t.start()
    deadline = time.monotonic() + 10
    while acked < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill9()
    t.join(timeout=10)
    stop.set()
    assert not t.is_alive()
    assert acked >= 200

    # The segment outlives its owner; a new sidecar on the same name takes it over.
    second = Sidecar(workdir, config_path, shm_name)
    second.endpoint = first.endpoint
    sidecars.append(second)
    second.start()
    assert "re-attached" in second.log()
    row = _row(turnout.attach(shm_name).counters())
    assert acked <= row["outcomes"] <= sent
    with second.client() as c:
        d = c.route(SCENARIO, input_tokens=10)
        assert d.id >> 40 == 2  # the next generation
        stats_row = _row(c.stats()["counters"])
        assert stats_row["outcomes"] == row["outcomes"]
    assert second.stop() == 0


def test_a_second_sidecar_on_the_same_segment_is_refused(
    sidecar: Sidecar, sidecars: list[Sidecar], workdir: Path, config_path: Path
) -> None:
    other_dir = Path(tempfile.mkdtemp(prefix="sy-", dir="/tmp"))
    try:
        other = Sidecar(other_dir, config_path, sidecar.shm)
        sidecars.append(other)
        other.start(wait=False)
        assert other.proc is not None
        assert other.proc.wait(timeout=10) != 0
        lines = other.log().strip().splitlines()
        assert len(lines) == 1
        assert "owned by a live sidecar" in lines[0]
        assert str(sidecar.proc.pid if sidecar.proc else "") in lines[0]
    finally:
        shutil.rmtree(other_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "tcp://0.0.0.0:5555"], "non-loopback"),
        (["--endpoint", "tcp://10.1.2.3:5555"], "CURVE"),
        (["--metrics", "0.0.0.0:9000"], "non-loopback"),
        (["--bogus"], "unknown option"),
    ],
)
def test_startup_refusals_are_one_line(
    workdir: Path, config_path: Path, shm_name: str, args: list[str], message: str
) -> None:
    r = subprocess.run(
        [turnout._sidecar_path(), str(config_path), "--shm", shm_name, "--foreground", *args],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]


def test_invalid_config_and_busy_port_fail_with_one_line(
    workdir: Path, config_path: Path, shm_name: str
) -> None:
    bad = workdir / "bad.yaml"
    bad.write_text(config_path.read_text().replace("weight: 90", "weight: ninety"))
    sock = f"ipc://{workdir / 'x.sock'}"
    r = subprocess.run(
        [
            turnout._sidecar_path(),
            str(bad),
            "--shm",
            shm_name,
            "--endpoint",
            sock,
            "--foreground",
        ],
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "bad.yaml:" in lines[0]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [
                turnout._sidecar_path(),
                str(config_path),
                "--shm",
                shm_name,
                "--endpoint",
                f"tcp://127.0.0.1:{port}",
                "--insecure-tcp",
                "read-write",
                "--foreground",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "cannot bind" in lines[0]


# ------------------------------------------------------------------------------------ client


def test_client_decides_locally_when_the_sidecar_is_down(workdir: Path, config_path: Path) -> None:
    endpoint = f"ipc://{workdir / 'nobody.sock'}"
    with turnout.Client(endpoint, timeout_ms=100, config=config_path) as c:
        t0 = time.monotonic()
        d = c.route(SCENARIO, input_tokens=100)
        assert time.monotonic() - t0 < 2.0  # the deadline (100 ms) plus slack, never a hang
        assert type(d) is turnout.Decision
        assert d.target == TARGET
        assert d.id >> 62 == 1  # a local decision (1 << 62 | tag << 32 | sequence)
        assert c.local_decisions == 1
        assert _decided(c) == {"socket": 0, "fast_path": 0, "local": 1, "outages": 1}
        receipt = c.report(d.id, target=d.target, status="ok", usage=_usage(0))
        assert receipt is not None
        assert not receipt["duplicate"]
    with (
        turnout.Client(endpoint, timeout_ms=100) as c,
        pytest.raises(turnout.SidecarUnavailableError, match="no such socket file"),
    ):
        c.route(SCENARIO, input_tokens=100)


BUDGETED = "support-summarization"  # 90/10 over llama-70b and gpt-4.1-mini, under a daily budget


def test_one_decision_type_whichever_path_answered(sidecar: Sidecar, config_path: Path) -> None:
    config = turnout.load_config(config_path)

    def request(path: str) -> dict[str, Any]:
        # A prompt per path: each is compared with a fresh Router that has seen nothing either.
        text = f"ticket via {path}: " + "Summarize the customer's issue. " * 200
        return {"key": "ticket-1001", "text": text, "max_output_tokens": 256, "now": T0}

    decisions: dict[str, turnout.Decision] = {}
    with (
        sidecar.client(shm=sidecar.shm) as fast,
        sidecar.client(config=config_path, timeout_ms=300, retry_after_s=0) as slow,
    ):
        assert fast.fast_path, fast.fast_path_error
        decisions["explain"] = slow.explain(BUDGETED, **request("explain"))
        decisions["socket"] = slow.route(BUDGETED, **request("socket"))
        decisions["fast_path"] = fast.route(BUDGETED, **request("fast_path"))
        sidecar.kill9()
        decisions["local"] = slow.route(BUDGETED, **request("local"))
        assert _decided(slow) == {"socket": 1, "fast_path": 0, "local": 1, "outages": 1}
        assert _decided(fast) == {"socket": 0, "fast_path": 1, "local": 0, "outages": 0}
    assert decisions["socket"].id >> 40 == 1  # the sidecar's first generation
    assert decisions["fast_path"].id >> 63 == 1
    assert decisions["local"].id >> 62 == 1
    for path, d in decisions.items():
        fresh = turnout.Router(config)
        decide = fresh.explain if path == "explain" else fresh.route
        expected = decide(BUDGETED, **request(path))
        assert type(d) is turnout.Decision, path
        # The same values, exact: only the id and the replica (in flight elsewhere) may differ.
        placement = {"id": d.id, "endpoint": d.endpoint, "reasons": d.reasons}
        assert d.to_dict() == {**expected.to_dict(), **placement}, path
        assert isinstance(d.predicted_cost_usd, Decimal)
        assert d.reserved_cost_usd > 0  # the budget's worst case, carried by every path
        assert d.cache_key is not None
        if path in ("explain", "socket"):
            assert abs(d.at - time.time()) < 60  # the sidecar decides at its own clock
        else:
            assert d.at == T0  # this process's decide, at the time it was given
        assert repr(d) == f"<turnout.Decision {d.id} -> {d.target} (${d.predicted_cost_usd})>"
        if d.endpoint is None:
            assert d.reasons == expected.reasons, path


def test_local_decisions_warn_once_per_outage_and_are_counted(
    sidecars: list[Sidecar],
    workdir: Path,
    config_path: Path,
    shm_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Sidecar(workdir, config_path, shm_name)
    sidecars.append(first)
    first.start()
    caplog.set_level(logging.INFO, logger="turnout")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    # retry_after_s=0: every route tries the socket again, and still one warning per outage
    with turnout.Client(first.endpoint, config=config_path, timeout_ms=200, retry_after_s=0) as c:
        for i in range(3):
            c.route(SCENARIO, key=str(i), input_tokens=100)
        assert _decided(c) == {"socket": 3, "fast_path": 0, "local": 0, "outages": 0}
        assert caplog.records == []
        first.kill9()
        for i in range(4):
            assert c.route(SCENARIO, key=str(i), input_tokens=100).id >> 62 == 1
        assert c.local_decisions == 4
        assert warnings() == [
            f"turnout: no answer from the sidecar at {first.endpoint} within 200 ms; "
            "deciding locally (this process's own state) until it answers"
        ]
        second = Sidecar(workdir, config_path, shm_name)
        second.endpoint = first.endpoint
        sidecars.append(second)
        second.start()
        assert c.route(SCENARIO, input_tokens=100).id >> 40 == 2  # the sidecar's again
        assert any("answers again" in r.getMessage() for r in caplog.records)
        second.kill9()
        for i in range(2):
            c.route(SCENARIO, key=str(i), input_tokens=100)
        assert len(warnings()) == 2
        assert _decided(c) == {"socket": 4, "fast_path": 0, "local": 6, "outages": 2}
    assert all(r.name == "turnout" for r in caplog.records)


def test_a_full_ring_of_a_stopped_sidecar_sends_routes_to_the_local_fallback(
    sidecar: Sidecar, config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert sidecar.proc is not None
    caplog.set_level(logging.WARNING, logger="turnout")
    with sidecar.client(shm=sidecar.shm, config=config_path, timeout_ms=100, retry_after_s=30) as c:
        sidecar.proc.send_signal(signal.SIGSTOP)  # it stops draining the rings and answering
        try:
            fast = 0
            while c.route("agent-assist", key=str(fast), input_tokens=100).id >> 63:
                fast += 1
                assert fast < 100_000, "the ring never filled"
            for i in range(5):
                assert c.route("agent-assist", key=str(i), input_tokens=100).id >> 62 == 1
        finally:
            sidecar.proc.send_signal(signal.SIGCONT)
        assert _decided(c) == {"socket": 0, "fast_path": fast, "local": 6, "outages": 1}
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith("turnout: the fast path refused (the fast-path ring is full")
    assert f"no answer from the sidecar at {sidecar.endpoint} within 100 ms" in warning


def test_client_refuses_a_malformed_endpoint() -> None:
    for endpoint in ("foo", "tcp://localhost", "ipc://", "udp://127.0.0.1:5555"):
        with pytest.raises(turnout.InvalidArgumentError, match="malformed endpoint"):
            turnout.Client(endpoint)


@contextlib.contextmanager
def _fake_sidecar(endpoint: str, reply: dict[str, Any]) -> Iterator[None]:
    """A ROUTER that answers one request with `reply` (in the request's envelope), open until
    the block ends (closed right after its send, the reply could be lost)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)

    def answer() -> None:
        if sock.poll(5000):
            peer, data = sock.recv_multipart()
            request = msgpack.unpackb(data)
            envelope = {"v": 1, "id": request["id"], "ok": True}
            sock.send_multipart([peer, msgpack.packb({**envelope, **reply})])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=10)
        ctx.destroy(linger=0)


MISSING = object()  # a field left out of the reply
GOOD_REPLY: dict[str, Any] = {
    "decision_id": 1 << 40,
    "scenario": SCENARIO,
    "target": TARGET,
    "endpoint": "http://127.0.0.1:8001",
    "fallbacks": [],
    "fallback_endpoints": [],
    "reasons": ["weight:llama-70b (100%)"],
    "predicted_cost_usd": "0.000123456789",
    "reserved_cost_usd": "0",
    "expected_cached_tokens": 0,
    "cache_key": None,
    "config_version": "00000000000000ff",
    "at": T0,
}


def test_a_decision_reply_keeps_its_exact_amounts(workdir: Path) -> None:
    endpoint = f"ipc://{workdir / 'fake.sock'}"
    with _fake_sidecar(endpoint, GOOD_REPLY), turnout.Client(endpoint, timeout_ms=5000) as c:
        d = c.route(SCENARIO)
    assert type(d) is turnout.Decision
    assert d.predicted_cost_usd == Decimal("0.000123456789")  # picodollars, not a float
    assert d.config_version == "00000000000000ff"
    assert d.at == T0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reserved_cost_usd": MISSING}, "has no field 'reserved_cost_usd'"),
        ({"predicted_cost_usd": "0.12.3"}, "malformed: predicted_cost_usd"),
        ({"predicted_cost_usd": "0.0000000000001"}, "malformed: predicted_cost_usd"),
        ({"config_version": "ff"}, "malformed: config_version must be 16 hex digits"),
        ({"cache_key": "zzzzzzzzzzzzzzzz"}, "malformed: cache_key must be 16 hex digits"),
        ({"fallbacks": "gpt-4.1-mini"}, "mistyped field"),
        ({"fallback_endpoints": MISSING}, "has no field 'fallback_endpoints'"),
        ({"fallbacks": ["gpt-4.1-mini"]}, "malformed: fallback_endpoints must have one entry"),
        ({"decision_id": "1"}, "mistyped field"),
        ({"at": -1.0}, "malformed: at must be"),
    ],
)
def test_a_malformed_decision_reply_is_a_sidecar_error(
    workdir: Path, change: dict[str, Any], message: str
) -> None:
    reply = {k: v for k, v in {**GOOD_REPLY, **change}.items() if v is not MISSING}
    endpoint = f"ipc://{workdir / 'fake.sock'}"
    with (
        _fake_sidecar(endpoint, reply),
        turnout.Client(endpoint, timeout_ms=5000) as c,
        pytest.raises(turnout.SidecarError, match=re.escape(message)),
    ):
        c.route(SCENARIO)


def test_unacknowledged_reports_are_resent(sidecar: Sidecar) -> None:
    assert sidecar.proc is not None
    with sidecar.client(timeout_ms=200, retry_after_s=0) as c:
        d = c.route(SCENARIO, input_tokens=100)
        sidecar.proc.send_signal(signal.SIGSTOP)
        try:
            assert c.report(d.id, target=d.target, status="ok", usage=_usage(3)) is None
            assert c.unacknowledged == 1
        finally:
            sidecar.proc.send_signal(signal.SIGCONT)
        assert c.flush(timeout_ms=5000) == 0
        row = _row(c.stats()["counters"])
    assert row["outcomes"] == 1  # sent twice, counted once


# ------------------------------------------------------------------------- metrics, files, CLI


def test_metrics_parse_as_prometheus_text(sidecar: Sidecar) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with sidecar.client() as c:
        d = c.route(SCENARIO, input_tokens=100)
        receipt = c.report(d.id, target=d.target, status="ok", usage=_usage(0), latency_ms=30)
        assert receipt is not None
    base = f"http://127.0.0.1:{sidecar.metrics_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    labels = {"scenario": SCENARIO, "target": TARGET}

    def value(family: str, sample: str, **extra: str) -> float:
        for s in families[family].samples:
            if s.name == sample and s.labels == {**labels, **extra}:
                return s.value
        raise AssertionError(f"no {sample} {extra}")

    assert value("turnout_requests", "turnout_requests_total") == 1
    assert value("turnout_outcomes", "turnout_outcomes_total", status="ok") == 1
    assert value("turnout_tokens", "turnout_tokens_total", kind="uncached_input") == 100
    picos = value("turnout_cost_picodollars", "turnout_cost_picodollars_total")
    assert Decimal(int(picos)) / 10**12 == receipt["cost_usd"]
    assert value("turnout_cost_usd", "turnout_cost_usd") == pytest.approx(
        float(receipt["cost_usd"])
    )
    assert families["turnout_latency_ms"].type == "histogram"
    assert value("turnout_latency_ms", "turnout_latency_ms_bucket", le="50") == 1
    assert value("turnout_latency_ms", "turnout_latency_ms_bucket", le="25") == 0
    assert families["turnout_breaker_state"].type == "gauge"


LEDGER_TABLE = """\
version: 1
targets:
  pool:
    kind: self_hosted
    data_classes: [public]
    context_window: 32000
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 3.60, prefill_tokens_per_s: 10000,
           decode_tokens_per_s: 1000}
    replicas: [{endpoint: "http://127.0.0.1:9001", max_inflight: 1}]
  claude:
    kind: maas
    provider: anthropic
    model: claude-sonnet-4
    data_classes: [public]
    context_window: 200000
    price: {input_per_mtok: 3, output_per_mtok: 15, cache_read_per_mtok: 0.30,
            cache_write_5m_per_mtok: 3.75, cache_write_1h_per_mtok: 6}
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}
scenarios:
  chat:
    data_class: public
    routes: [{target: pool}]
    spillover: {target: claude, when_inflight_ratio: 0.5}
    fallback: [mini]
    slo: {ttft_p95_ms: 500, latency_p95_ms: 1000}
    quality_gate: {min_accept_rate: 0.9}
"""


def _every_counter_moves(c: turnout.Client) -> None:
    """Traffic that makes every field of the ledger non-zero on some row of LEDGER_TABLE."""
    held = c.route("chat", input_tokens=100, now=T0)  # the pool's only slot
    assert held.target == "pool"
    spilled = c.route("chat", input_tokens=100, now=T0)
    assert spilled.target == "claude"
    anthropic = {
        "input_tokens": 50,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 30,
        "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
        "output_tokens": 40,
    }
    c.report(
        spilled.id,
        target="claude",
        status="ok",
        usage=anthropic,
        ttft_ms=120,
        latency_ms=900,
        accepted=True,
        now=T0 + 1,
    )
    reasoning = {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    c.report(held.id, target="mini", status="ok", usage=reasoning, now=T0 + 2)  # a fallback
    c.verdict(held.id, False, now=T0 + 3)
    for status in ("context_overflow", "content_filter", "error", "timeout", "rate_limited"):
        d = c.route("chat", input_tokens=100, now=T0 + 4)
        c.report(d.id, target=d.target, status=status, latency_ms=30_000, now=T0 + 5)
    d = c.route("chat", input_tokens=100, now=T0 + 6)
    c.report(d.id, target=d.target, status="ok", now=T0 + 7)  # no usage: unpriced


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_counter_field_reaches_stats_metrics_and_frames(
    sidecars: list[Sidecar], workdir: Path, shm_name: str
) -> None:
    """Iterates the ledger's field list (turnout.ledger): a field added to the core is covered."""
    config = workdir / "ledger.yaml"
    config.write_text(LEDGER_TABLE)
    sidecar = Sidecar(workdir, config, shm_name)
    sidecars.append(sidecar)
    sidecar.start()
    with sidecar.client() as c:
        _every_counter_moves(c)
        stats = c.stats()["counters"]
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=5) as r:
        samples = _samples(r.read().decode())
    frame = turnout.attach(sidecar.shm).counters_frame()
    floats = turnout.attach(sidecar.shm).counters_frame(money="float")
    assert list(frame.columns) == list(ledger.COLUMNS)
    assert len(frame) == len(stats) == 3

    for field in ledger.COUNTER_FIELDS:
        assert field.columns, field.name
        for column in field.columns:
            values = [frame.at[i, column] for i in frame.index]
            total = sum(sum(v) if isinstance(v, list) else v for v in values)
            assert total != 0, f"{column} ({field.name}) never moved: the test traffic misses it"
    for i in frame.index:
        row = frame.loc[i]
        wire = _row(stats, row["scenario"], row["target"])
        labels = {("scenario", row["scenario"]), ("target", row["target"])}

        def metric(name: str, *extra: tuple[str, str], labels: set = labels) -> float:
            return samples[(name, frozenset(labels | set(extra)))]

        for column in (*ledger.SHARE_COLUMNS, *ledger.GATE_COLUMNS):  # judged alike on every edge
            if wire[column] is None:
                assert row[column] is None or math.isnan(row[column]), column
            else:
                assert wire[column] == row[column], column

        for field in ledger.COUNTER_FIELDS:
            for column in field.columns:
                value = row[column]
                if field.kind == "money":
                    assert Decimal(wire[column]) == value, column  # exact text on the wire
                    assert floats.at[i, column] == pytest.approx(float(value)), column
                else:
                    assert wire[column] == value, column
            if not field.metrics:
                continue
            if field.kind == "count":
                assert metric(field.metrics[0]) == row[field.name], field.name
            elif field.kind in ("by_status", "tokens"):
                label = "status" if field.kind == "by_status" else "kind"
                for column in field.columns:
                    kind = column.removesuffix("_tokens")
                    assert metric(field.metrics[0], (label, kind)) == row[column], column
            elif field.kind == "money":
                usd, picos = field.metrics
                (column,) = field.columns
                assert metric(usd) == pytest.approx(float(row[column])), usd
                assert Decimal(int(metric(picos))) / 10**12 == row[column], picos
            else:
                assert field.kind == "histogram", field
                family = field.metrics[0]
                assert metric(f"{family}_count") == row[f"{field.name}_count"]
                assert metric(f"{family}_sum") == row[f"{field.name}_sum_ms"]
                buckets = row[f"{field.name}_buckets"]
                bounds = [*map(str, turnout.LATENCY_BUCKETS_MS), "+Inf"]
                for k, le in enumerate(bounds):
                    assert metric(f"{family}_bucket", ("le", le)) == sum(buckets[: k + 1]), le
    # claude: TTFT 120 and latency 900 within 500 / 1000 ms, accepted; mini: the rejected fallback.
    claude, mini = _row(stats, "chat", "claude"), _row(stats, "chat", "mini")
    assert (claude["ttft_slo_attainment"], claude["latency_slo_attainment"]) == (1.0, 1.0)
    assert (claude["accept_rate"], claude["quality_gate"]) == (1.0, "pass")
    assert (mini["accept_rate"], mini["quality_gate"]) == (0.0, "fail")
    assert mini["ttft_slo_attainment"] is None  # no outcome reported a TTFT there


def test_socket_and_segment_files_are_private(sidecar: Sidecar) -> None:
    sock = Path(sidecar.endpoint.removeprefix("ipc://"))
    for path in (sock, Path("/dev/shm") / sidecar.shm, Path("/dev/shm") / f"{sidecar.shm}.lock"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    info = turnout.attach(sidecar.shm).info()
    assert info["ready"]
    assert sidecar.proc is not None
    assert info["pid"] == sidecar.proc.pid
    beat = info["heartbeat"]
    time.sleep(0.3)
    assert turnout.attach(sidecar.shm).info()["heartbeat"] > beat


def test_sigterm_drains_and_exits_zero(sidecar: Sidecar) -> None:
    with sidecar.client() as c:
        d = c.route(SCENARIO, input_tokens=100)
        c.report(d.id, target=d.target, status="ok", usage=_usage(0))
    assert sidecar.stop(signal.SIGTERM) == 0
    assert "stopped" in sidecar.log()
    # The counters stay readable after a clean stop.
    assert _row(turnout.attach(sidecar.shm).counters())["outcomes"] == 1


def test_cli_stats(sidecar: Sidecar) -> None:
    with sidecar.client() as c:
        c.route(SCENARIO, input_tokens=100)
    runner = CliRunner()
    r = runner.invoke(cli_main, ["stats", "--endpoint", sidecar.endpoint, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert _row(data["counters"])["requests"] == 1
    r = runner.invoke(cli_main, ["stats", "--endpoint", sidecar.endpoint])
    assert r.exit_code == 0, r.output
    assert "Ledger" in r.output
    assert "Breakers" in r.output
    assert f"fast path: table {sidecar.shm}.t1, 0 clients" in r.output
    r = runner.invoke(
        cli_main, ["explain", "--endpoint", sidecar.endpoint, "-s", SCENARIO, "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["target"] == TARGET
    r = runner.invoke(cli_main, ["explain", "--endpoint", sidecar.endpoint, "-s", "nope"])
    assert r.exit_code == 1


def test_slo_attainment_and_quality_gate_in_stats_shared_memory_and_cli(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    table = config_path.read_text()
    timed = table.replace(
        "    mode: batch\n",
        "    mode: batch\n"
        "    slo: {ttft_p95_ms: 500, latency_p95_ms: 3000}\n"
        "    quality_gate: {min_accept_rate: 0.5}\n",
    )
    assert timed != table
    config_path.write_text(timed)
    sidecar = Sidecar(workdir, config_path, shm_name)
    sidecars.append(sidecar)
    sidecar.start()
    judged = ("ttft_slo_attainment", "latency_slo_attainment", "accept_rate", "quality_gate")
    with sidecar.client() as c:
        c.route(SCENARIO, input_tokens=100)  # a row with nothing reported: nothing judged
        assert all(_row(c.stats()["counters"])[k] is None for k in judged)
        for ttft, latency, accepted in ((400, 2000, True), (600, 2500, False), (450, 4000, False)):
            d = c.route(SCENARIO, input_tokens=100)
            c.report(
                d.id,
                target=d.target,
                status="ok",
                usage=_usage(0),
                ttft_ms=ttft,
                latency_ms=latency,
                accepted=accepted,
            )
        # TTFT 400 and 450 of three within 500 ms, latency 2000 and 2500 within 3000 ms;
        # 1 of 3 accepted.
        expected = {
            "ttft_slo_checked": 3,
            "ttft_within_slo": 2,
            "latency_slo_checked": 3,
            "latency_within_slo": 2,
            "ttft_slo_attainment": pytest.approx(2 / 3),
            "latency_slo_attainment": pytest.approx(2 / 3),
            "accept_rate": pytest.approx(1 / 3),
            "quality_gate": "fail",
        }
        stats_row = _row(c.stats()["counters"])
        assert {k: stats_row[k] for k in expected} == expected
        shm_row = _row(turnout.attach(sidecar.shm).counters())
        assert {k: shm_row[k] for k in expected} == expected
        frame = turnout.attach(sidecar.shm).counters_frame()
        assert frame.loc[frame["scenario"] == SCENARIO, "quality_gate"].tolist() == ["fail"]

        runner = CliRunner()
        r = runner.invoke(cli_main, ["stats", "--endpoint", sidecar.endpoint, "--json"])
        assert r.exit_code == 0, r.output
        assert _row(json.loads(r.output)["counters"])["quality_gate"] == "fail"
        r = runner.invoke(cli_main, ["stats", "--endpoint", sidecar.endpoint])
        assert r.exit_code == 0, r.output
        judged = r.output.split("Objectives (slo, quality_gate)")[1].split("Breakers")[0]
        line = next(t for t in judged.splitlines() if SCENARIO[:4] in t)
        cells = [cell.strip() for cell in line.split("│")[3:7]]
        # Shares as percentages rounded down: 2/3 reads 66.66 %, never more than it is.
        assert cells == ["66.66 %", "66.66 %", "33.33 %", "fail"], line

        # A reload judges the same counts by the new table's gate, on every edge.
        config_path.write_text(timed.replace("min_accept_rate: 0.5", "min_accept_rate: 0.3"))
        c.reload()
        assert _row(c.stats()["counters"])["quality_gate"] == "pass"
        assert _row(turnout.attach(sidecar.shm).counters())["quality_gate"] == "pass"


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_serve_daemonizes_after_a_successful_start(
    workdir: Path, config_path: Path, shm_name: str
) -> None:
    endpoint = f"ipc://{workdir / 'd.sock'}"
    argv = [sys.executable, "-m", "turnout.cli", "serve", str(config_path)]
    r = subprocess.run(
        [*argv, "--endpoint", endpoint, "--shm", shm_name],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    pid = int(r.stderr.decode().split("pid ")[1].split(")")[0])
    try:
        with turnout.Client(endpoint, timeout_ms=2000) as c:
            assert c.health()["pid"] == pid
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    # A startup error in background mode still reaches the caller as one line and a failure.
    r = subprocess.run(
        [*argv[:-1], str(workdir / "missing.yaml"), "--endpoint", endpoint, "--shm", shm_name],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert r.returncode != 0
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "missing.yaml" in lines[0]


def test_daemon_follows_kv_events_of_its_replicas(
    sidecars: list[Sidecar], workdir: Path, shm_name: str
) -> None:
    # A vLLM-style publisher for replica 1 of the example's llama-70b pool (block size 16).
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    text = (REPO / "examples" / "routing.yaml").read_text()
    text = text.replace(
        '{endpoint: "http://127.0.0.1:8002", max_inflight: 64}',
        f'{{endpoint: "http://127.0.0.1:8002", max_inflight: 64, kv_events: "{endpoint}"}}',
    )
    # Cache-aware ranking inside the pool for the scenario under test.
    text = text.replace(
        "    routes: [{target: llama-70b}]\n",
        "    routes: [{target: llama-70b}]\n    affinity: {prefix: true}\n",
    )
    config = workdir / "kv.yaml"
    config.write_text(text)
    s = Sidecar(workdir, config, shm_name)
    sidecars.append(s)
    s.start()
    prompt = list(range(7000, 7000 + 4 * 16))
    seq = 0

    def publish(events: list) -> None:
        nonlocal seq
        pub.send_multipart(
            [b"kv", seq.to_bytes(8, "big"), msgpack.packb([time.time(), events, None])]
        )
        seq += 1

    stored = [
        "BlockStored",
        [2**63 + 1, 2**63 + 2, 2**63 + 3, 2**63 + 4],
        None,
        prompt,
        16,
        None,
        "GPU",
        None,
    ]
    try:
        with s.client() as c:
            deadline = time.monotonic() + 10
            d = c.explain("contract-extraction", token_ids=prompt)
            while d.expected_cached_tokens != 64 and time.monotonic() < deadline:
                publish([stored])  # PUB/SUB joins late: repeat until the daemon has applied it
                time.sleep(0.05)
                d = c.explain("contract-extraction", token_ids=prompt)
            assert d.expected_cached_tokens == 64
            assert d.endpoint == "http://127.0.0.1:8002"
            publish([["AllBlocksCleared"]])
            deadline = time.monotonic() + 10
            while d.expected_cached_tokens != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                d = c.explain("contract-extraction", token_ids=prompt)
            assert d.expected_cached_tokens == 0
        assert "subscribed to KV events of 1 replicas" in s.log()
    finally:
        pub.close(linger=0)
        ctx.term()


# ------------------------------------------------------------------- the shared-memory fast path

FAST_WORKER = textwrap.dedent(
    """
    import json, sys
    from decimal import Decimal
    import turnout
    endpoint, shm, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out = {"outcomes": 0, "input": 0, "output": 0, "cost": "0", "fast": 0}
    cost = Decimal(0)
    with turnout.Client(endpoint, timeout_ms=5000, shm=shm) as c:
        assert c.fast_path, c.fast_path_error
        for i in range(n):
            d = c.route("contract-extraction", key=f"{seed}-{i}", input_tokens=100 + i)
            assert d.id >> 63 == 1
            usage = {"prompt_tokens": 100 + i, "completion_tokens": 10 + i % 7}
            r = c.report(d.id, target=d.target, status="ok", usage=usage, latency_ms=5 + i)
            assert r is not None and r["priced"]
            out["outcomes"] += 1
            out["input"] += usage["prompt_tokens"]
            out["output"] += usage["completion_tokens"]
            cost += r["cost_usd"]
        out["fast"] = c.fast_decisions
    out["cost"] = str(cost)
    print(json.dumps(out))
    """
)


def _wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_fast_path_clients_and_socket_clients_sum_up_in_shared_memory(sidecar: Sidecar) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FAST_WORKER, sidecar.endpoint, sidecar.shm, "80", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(3)
    ] + [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, sidecar.endpoint, "40", str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in range(3, 5)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert sum(r.get("fast", 0) for r in results) == 240  # every fast worker's route was local
    total = sum(r["outcomes"] for r in results)
    assert total == 320

    def applied() -> bool:
        return _row(turnout.attach(sidecar.shm).counters())["outcomes"] == total

    _wait_for(applied)  # the sidecar drains the rings within milliseconds
    row = _row(turnout.attach(sidecar.shm).counters())
    assert row["requests"] == row["outcomes"] == row["ok"] == total
    assert row["uncached_input_tokens"] == sum(r["input"] for r in results)
    assert row["output_tokens"] == sum(r["output"] for r in results)
    # The receipts priced in the workers add up, exactly, to what the sidecar booked.
    assert row["cost_usd"] == sum(Decimal(r["cost"]) for r in results)
    with sidecar.client() as c:
        fast = c.stats()["fast_path"]
    assert fast["enabled"]
    assert fast["rejected"] == 0
    assert fast["records"] == 2 * 240


def test_fast_path_decides_what_the_sidecar_would(sidecar: Sidecar) -> None:
    with sidecar.client(shm=sidecar.shm) as fast, sidecar.client() as slow:
        assert fast.fast_path
        warm_seen = 0
        for i in range(50):
            # agent-assist: prefix affinity over two MaaS targets; the sidecar learns each prompt.
            text = f"system prompt {i % 5} " * 400 + f"question {i}"
            expected = slow.explain("agent-assist", text=text, now=T0 + i)
            d = fast.route("agent-assist", text=text, now=T0 + i)
            assert (d.target, d.expected_cached_tokens) == (
                expected.target,
                expected.expected_cached_tokens,
            )
            assert d.config_version == expected.config_version
            warm_seen += d.expected_cached_tokens > 0
            _wait_for(lambda n=i: slow.stats()["fast_path"]["records"] == n + 1)
        assert warm_seen >= 40  # the fast path saw what the sidecar learned from its decisions
        warm = fast.route("agent-assist", text="system prompt 1 " * 400, now=T0 + 60)
        assert warm.expected_cached_tokens >= 1024
        with pytest.raises(turnout.UnknownScenarioError):
            fast.route("no-such-scenario", input_tokens=10)
        with pytest.raises(turnout.InvalidArgumentError):
            fast.route(SCENARIO, data_class="top-secret", input_tokens=10)


def test_fast_path_follows_a_reload_and_decisions_made_before_it_still_report(
    sidecar: Sidecar, config_path: Path
) -> None:
    with sidecar.client(shm=sidecar.shm) as c:
        before = c.route(SCENARIO, input_tokens=100)
        text = config_path.read_text().replace("max_output_tokens: 2048", "max_output_tokens: 1024")
        config_path.write_text(text)
        version = c.reload()["config_version"]
        _wait_for(lambda: c.route(SCENARIO, input_tokens=1).config_version == version)
        r = c.report(before.id, target=before.target, status="ok", usage=_usage(0))
        assert r is not None
        assert r["priced"]
        _wait_for(lambda: _row(c.stats()["counters"])["outcomes"] == 1)
        assert c.stats()["fast_path"]["rejected"] == 0


def test_fast_path_keeps_deciding_while_the_sidecar_is_down_and_nothing_is_lost(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    first = Sidecar(workdir, config_path, shm_name)
    sidecars.append(first)
    first.start()
    with first.client(shm=shm_name, timeout_ms=300, retry_after_s=0) as c:
        for i in range(20):
            d = c.route(SCENARIO, key=str(i), input_tokens=100)
            c.report(d.id, target=d.target, status="ok", usage=_usage(i))
        _wait_for(lambda: _row(turnout.attach(shm_name).counters())["outcomes"] == 20)
        first.kill9()
        # Down: decisions still come from the mapped table, without waiting for any timeout, and
        # their records wait in the ring.
        started = time.monotonic()
        for i in range(20, 50):
            d = c.route(SCENARIO, key=str(i), input_tokens=100)
            assert d.id >> 63 == 1
            assert c.report(d.id, target=d.target, status="ok", usage=_usage(i)) is not None
        assert time.monotonic() - started < 1.0
        second = Sidecar(workdir, config_path, shm_name)
        second.endpoint = first.endpoint
        sidecars.append(second)
        second.start()
        # The restarted sidecar applies what the ring kept: no outcome is lost.
        _wait_for(lambda: _row(turnout.attach(shm_name).counters())["outcomes"] == 50)
        row = _row(turnout.attach(shm_name).counters())
        assert row["requests"] == 50
        d = c.route(SCENARIO, input_tokens=100)  # the new generation's table, mapped on the way
        assert c.report(d.id, target=d.target, status="ok", usage=_usage(0)) is not None
        _wait_for(lambda: _row(turnout.attach(shm_name).counters())["outcomes"] == 51)


def test_a_forked_child_does_not_share_its_parents_ring(sidecar: Sidecar) -> None:
    with sidecar.client(shm=sidecar.shm) as c:
        assert c.fast_path
        pid = os.fork()
        if pid == 0:  # the child: its copy of the client has no ring (and frees none on exit)
            code = 1
            try:
                code = 0 if not c.fast_path and "forked" in (c.fast_path_error or "") else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        d = c.route(SCENARIO, input_tokens=10)  # the parent's ring is still its own
        assert d.id >> 63 == 1
        _wait_for(lambda: c.stats()["fast_path"]["clients"] == 1)


def test_attach_reads_the_table_and_explains_without_a_round_trip(sidecar: Sidecar) -> None:
    view = turnout.attach(sidecar.shm)
    assert view.config.version == view.info()["config_version"]
    assert "agent-assist" in view.config.scenarios
    text = "system prompt 7 " * 400
    with sidecar.client() as c:
        c.route("agent-assist", text=text, now=T0)  # the sidecar learns the prefix
        remote = c.explain("agent-assist", text=text, now=T0 + 1)
    local = view.explain("agent-assist", text=text, now=T0 + 1)
    assert (local.target, local.expected_cached_tokens) == (
        remote.target,
        remote.expected_cached_tokens,
    )
    assert local.expected_cached_tokens >= 1024
    with pytest.raises(turnout.UnknownScenarioError):
        view.explain("nope")


def test_fast_path_segments_are_private_and_a_missing_sidecar_is_reported(
    sidecar: Sidecar, workdir: Path
) -> None:
    for path in Path("/dev/shm").glob(f"{sidecar.shm}*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (Path("/dev/shm") / f"{sidecar.shm}.rings").exists()
    with turnout.Client(f"ipc://{workdir / 'none.sock'}", shm="sy-no-such-segment") as c:
        assert not c.fast_path
        assert "sy-no-such-segment" in (c.fast_path_error or "")
