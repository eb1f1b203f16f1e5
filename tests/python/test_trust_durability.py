"""The sidecar's live state survives what ends a process (issue 10, classes 3 and 4): SIGTERM,
kill -9, a reload, and a reboot (its /dev/shm gone): the ledger, budgets, breakers, in-flight counts
and pending decisions come back from the state directory (--state-dir: a snapshot and a journal)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from daemon import Sidecar
from support import DELETE, Raw, config_text

# mini, 1800 input + 300 output: 1800 x $0.40 + 300 x $1.60 per Mtok = $0.0012 reserved per route
REQ = {"input_tokens": 1800, "max_output_tokens": 300}
# 200 x $0.40 + 50 x $1.60 per Mtok = $0.00016 spent per report
USAGE = {
    "prompt_tokens": 200,
    "completion_tokens": 50,
    "total_tokens": 250,
    "prompt_tokens_details": {"cached_tokens": 0},
}
COST = Decimal("0.00016")

TABLE: dict[str, Any] = {
    "targets": {"backup": {"breaker": {"consecutive_failures": 2, "cooldown_s": 3600}}},
    "scenarios": {
        # exactly 4 reservations of $0.0012
        "chat": {
            "routes": [{"target": "mini"}],
            "fallback": DELETE,
            "budget": {"usd_per_day": Raw("0.0048")},
        },
        "flaky": {"data_class": "public", "routes": [{"target": "backup"}]},
        "pooled": {"data_class": "internal", "routes": [{"target": "pool"}]},
    },
}


def write_table(path: Path, **overrides: Any) -> Path:
    path.write_text(config_text(**{**TABLE, **overrides}), encoding="utf-8")
    return path


@pytest.fixture
def table(workdir: Path) -> Path:
    return write_table(workdir / "routing.yaml")


@pytest.fixture
def daemon(sidecars: list[Sidecar], workdir: Path, table: Path, shm_name: str) -> Sidecar:
    s = Sidecar(workdir, table, shm_name)
    sidecars.append(s)
    return s.start()


def row(c: turnout.Client, scenario: str, target: str) -> dict[str, Any]:
    rows = [r for r in c.stats()["counters"] if (r["scenario"], r["target"]) == (scenario, target)]
    assert len(rows) == 1, (scenario, target, rows)
    return rows[0]


def breaker(c: turnout.Client, target: str) -> dict[str, Any]:
    (b,) = [b for b in c.stats()["breakers"] if b["target"] == target]
    return b


def pool_inflight(c: turnout.Client) -> int:
    return sum(b["inflight"] for b in c.stats()["breakers"] if b["target"] == "pool")


def build_live_state(c: turnout.Client) -> list[turnout.Decision]:
    """An exhausted budget (4 reservations, one reported), an open breaker, 3 requests in flight on
    the pool. Returns chat's decisions (the first reported, three pending)."""
    chat = [c.route("chat", **REQ) for _ in range(4)]
    with pytest.raises(turnout.BudgetExhaustedError):
        c.route("chat", **REQ)
    receipt = c.report(chat[0].id, target="mini", status="ok", usage=USAGE)
    assert receipt is not None
    assert receipt["cost_usd"] == COST
    for _ in range(2):
        d = c.route("flaky")
        c.report(d.id, target="backup", status="error")
    assert breaker(c, "backup")["phase"] == "open"
    for _ in range(3):
        assert c.route("pooled").target == "pool"
    assert pool_inflight(c) == 3
    return chat


def check_live_state(c: turnout.Client, chat: list[turnout.Decision]) -> None:
    """What build_live_state() left, as it was, and its pending decisions still take reports."""
    # $0.00016 spent + 3 x $0.0012 reserved: one more $0.0012 does not fit $0.0048
    with pytest.raises(turnout.BudgetExhaustedError):
        c.route("chat", **REQ)
    b = breaker(c, "backup")
    assert (b["phase"], b["times_opened"]) == ("open", 1)
    with pytest.raises(turnout.NoEligibleTargetError):
        c.route("flaky")
    assert pool_inflight(c) == 3
    r = row(c, "chat", "mini")
    assert (r["requests"], r["outcomes"], Decimal(r["cost_usd"])) == (4, 1, COST)
    # A decision made before: its report is accepted (not refused as unknown), and counted once.
    receipt = c.report(chat[1].id, target="mini", status="ok", usage=USAGE)
    assert receipt is not None
    assert (receipt["duplicate"], receipt["cost_usd"]) == (False, COST)
    again = c.report(chat[1].id, target="mini", status="ok", usage=USAGE)
    assert again is not None
    assert again["duplicate"]
    # Its reservation is settled: $0.00032 + 2 x $0.0012 + $0.0012 fits now.
    assert c.route("chat", **REQ).target == "mini"
    r = row(c, "chat", "mini")
    assert (r["requests"], r["outcomes"], Decimal(r["cost_usd"])) == (5, 2, 2 * COST)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_restart_keeps_budgets_breakers_inflight_and_pending(daemon: Sidecar, how: str) -> None:
    with daemon.client() as c:
        chat = build_live_state(c)
    if how == "SIGTERM":
        assert daemon.stop(signal.SIGTERM) == 0
    else:
        daemon.kill9()
    daemon.start()
    assert "journal records replayed" in daemon.log()
    with daemon.client() as c:
        check_live_state(c, chat)


def test_a_reboot_losing_dev_shm_keeps_the_ledger(daemon: Sidecar, shm_name: str) -> None:
    with daemon.client() as c:
        chat = build_live_state(c)
    daemon.kill9()
    segments = list(Path("/dev/shm").glob(f"{shm_name}*"))
    assert segments, "the sidecar left no segment to lose"
    for p in segments:  # what a reboot does to a tmpfs
        p.unlink()
    daemon.start()
    with daemon.client() as c:
        check_live_state(c, chat)


def test_after_a_reboot_fast_path_ids_do_not_repeat_recovered_ones(
    daemon: Sidecar, shm_name: str
) -> None:
    """The rings segment is made anew after a reboot, but the recovered decisions keep their fast
    ids: a new client's decisions must get other ids, each counting its own request and outcome."""
    with daemon.client(shm=shm_name) as c:
        assert c.fast_path, c.fast_path_error
        before = [c.route("pooled") for _ in range(3)]
        assert c.settle(5000) == []
    daemon.kill9()
    for p in Path("/dev/shm").glob(f"{shm_name}*"):  # what a reboot does to a tmpfs
        p.unlink()
    daemon.start()
    with daemon.client(shm=shm_name) as c:
        assert c.fast_path, c.fast_path_error
        after = [c.route("pooled") for _ in range(3)]
        assert not {d.id for d in before} & {d.id for d in after}
        for d in after:
            receipt = c.report(d.id, target="pool", status="ok", usage=USAGE)
            assert receipt is not None
        assert c.settle(5000) == []
        r = row(c, "pooled", "pool")
        assert (r["requests"], r["outcomes"]) == (6, 3)


def test_a_second_sidecar_does_not_touch_a_live_ones_state(
    daemon: Sidecar, sidecars: list[Sidecar], workdir: Path, table: Path, shm_name: str
) -> None:
    """Its state directory is locked before anything reads the journal the live sidecar writes."""
    with daemon.client() as c:
        chat = build_live_state(c)
        other = Sidecar(workdir / "other", table, shm_name)
        other.workdir.mkdir()
        sidecars.append(other)
        other.start("--state-dir", str(workdir / "state"), wait=False)
        assert other.proc is not None
        assert other.proc.wait(timeout=10) != 0
        assert "in use by another live sidecar" in other.log()
    daemon.kill9()
    daemon.start()
    with daemon.client() as c:
        check_live_state(c, chat)


def test_reload_keeps_budgets_breakers_inflight_and_pending(daemon: Sidecar, table: Path) -> None:
    with daemon.client() as c:
        chat = build_live_state(c)
        table.write_text(table.read_text() + "# a new version of the same table\n")
        c.reload()
        check_live_state(c, chat)


def test_reload_keeps_an_ended_canarys_history_and_its_outcomes_in_flight(
    daemon: Sidecar, table: Path
) -> None:
    with daemon.client() as c:
        placed = [c.route("pooled") for _ in range(3)]
        c.report(placed[0].id, target="pool", status="ok", usage=USAGE, latency_ms=10)
        assert row(c, "pooled", "pool")["outcomes"] == 1
        # The canary ends: the scenario stops routing to the pool, two requests still running.
        original = table.read_text()
        ended = {"data_class": "public", "routes": [{"target": "mini"}]}
        write_table(table, scenarios={**TABLE["scenarios"], "pooled": ended})
        c.reload()
        assert pool_inflight(c) == 2  # still running there
        # Their outcomes arrive after the reload: counted in the row's history, not refused.
        for d in placed[1:]:
            receipt = c.report(d.id, target="pool", status="ok", usage=USAGE, latency_ms=10)
            assert receipt is not None
            assert not receipt["duplicate"]
        assert pool_inflight(c) == 0
        history = row(c, "pooled", "pool")
        # A kill -9 loses none of it, and a reload that brings the canary back shows it all.
        daemon.kill9()
        daemon.start()
        table.write_text(original)
        c.reload()
        assert row(c, "pooled", "pool") == history
        assert (history["requests"], history["outcomes"]) == (3, 3)


def test_reload_that_removes_a_target_keeps_its_rows(daemon: Sidecar, table: Path) -> None:
    with daemon.client() as c:
        placed = [c.route("pooled") for _ in range(2)]
        c.report(placed[0].id, target="pool", status="ok", usage=USAGE, latency_ms=10)
        history = row(c, "pooled", "pool")
        original = table.read_text()
        # The pool leaves the table altogether, one request still running there.
        ended = {"data_class": "public", "routes": [{"target": "mini"}]}
        write_table(
            table,
            scenarios={**TABLE["scenarios"], "pooled": ended},
            targets={"pool": DELETE, **TABLE["targets"]},
        )
        c.reload()
        assert pool_inflight(c) == 0  # its lease went with its replica
        daemon.kill9()
        daemon.start()
        table.write_text(original)
        c.reload()
        assert row(c, "pooled", "pool") == history
        assert (history["requests"], history["outcomes"]) == (2, 1)


DYING_FAST_CLIENT = """
import os, sys, turnout
c = turnout.Client(sys.argv[1], shm=sys.argv[2], timeout_ms=2000)
assert c.fast_path, c.fast_path_error
ids = [c.route("pooled").id for _ in range(3)]
assert c.fast_decisions == 3
print(" ".join(map(str, ids)), flush=True)
os._exit(0)  # a worker that crashed after routing: its ring is reaped
"""


def test_a_dead_fast_clients_leases_end_and_stay_ended(daemon: Sidecar, shm_name: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", DYING_FAST_CLIENT, daemon.endpoint, shm_name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = [int(x) for x in child.stdout.split()]
    with daemon.client() as c:
        deadline = time.monotonic() + 10
        while pool_inflight(c) != 0:  # applied (3 in flight), then reaped within about a second
            assert time.monotonic() < deadline, c.stats()["breakers"]
            time.sleep(0.1)
        assert row(c, "pooled", "pool")["requests"] == 3
        daemon.kill9()  # the reap is journaled: a restart does not take the slots again
        daemon.start()
        assert pool_inflight(c) == 0
        # The decisions stay pending: a report that arrives late (a spool) still counts.
        receipt = c.report(ids[0], target="pool", status="ok", usage=USAGE, latency_ms=10)
        assert receipt is not None
        assert not receipt["duplicate"]
        assert row(c, "pooled", "pool")["outcomes"] == 1


def test_state_dir_of_another_mode_is_refused(
    sidecars: list[Sidecar], workdir: Path, table: Path, shm_name: str
) -> None:
    s = Sidecar(workdir, table, shm_name)
    sidecars.append(s)
    s.state_dir.mkdir(mode=0o700)
    os.chmod(s.state_dir, 0o777)
    s.start(wait=False)
    assert s.proc is not None
    assert s.proc.wait(timeout=10) == 1
    assert "others could write it" in s.log()


def test_journal_of_another_mode_is_refused(daemon: Sidecar, shm_name: str) -> None:
    daemon.stop()
    journal = daemon.state_dir / shm_name / "journal"
    assert journal.is_file()
    assert journal.stat().st_mode & 0o777 == 0o600
    os.chmod(journal, 0o644)
    daemon.start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=10) == 1
    assert "others could read it" in daemon.log()


# -- the kill -9 soak ------------------------------------------------------------------------------

SOAK_TABLE: dict[str, Any] = {
    "scenarios": {"chat": {"routes": [{"target": "mini"}], "fallback": DELETE}},
}


def soak_worker(endpoint: str, shm: str | None, stop: Any, out: Any) -> None:
    """Routes and reports until `stop` is set, then gives the sidecar everything it did not
    acknowledge (queued reports, decisions made locally while it was down) and waits until it
    applied every record of the ring; sends back what it reported and what was refused."""
    c = turnout.Client(endpoint, timeout_ms=300, retry_after_s=0.05, shm=shm)
    reported = 0
    refused: list[str] = []
    rnd = random.Random(os.getpid())
    while not stop.is_set():
        try:
            d = c.route("chat", input_tokens=200, max_output_tokens=50)
        except turnout.SidecarUnavailableError:
            time.sleep(0.02)
            continue
        try:
            c.report(d.id, target=d.target, status="ok", usage=USAGE, latency_ms=rnd.randint(1, 50))
        except turnout.TurnoutError as e:  # the sidecar lost the decision: must not happen
            refused.append(str(e))
            continue
        reported += 1
    deadline = time.monotonic() + 30
    while c.flush(timeout_ms=500) and time.monotonic() < deadline:
        time.sleep(0.1)
    refused += [str(r) for r in c.settle(timeout_ms=30000)]  # ring records the sidecar refused
    out.put((reported, c.unacknowledged, c.dropped_reports, refused, c.counters()))
    c.close()


def test_kill9_soak_counts_every_receipt_once(
    sidecars: list[Sidecar], workdir: Path, shm_name: str
) -> None:
    table = workdir / "soak.yaml"
    table.write_text(config_text(**SOAK_TABLE), encoding="utf-8")
    s = Sidecar(workdir, table, shm_name)
    sidecars.append(s)
    s.start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    workers = [
        ctx.Process(target=soak_worker, args=(s.endpoint, shm, stop, out))
        for shm in (None, None, shm_name, shm_name)
    ]
    for w in workers:
        w.start()
    time.sleep(2)  # the workers are up and routing
    for _ in range(20):
        time.sleep(random.uniform(0.3, 1.0))
        s.kill9()
        s.start()
    time.sleep(1)
    stop.set()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert all(unacked == 0 for _, unacked, *_ in results), results
    assert all(dropped == 0 for _, _, dropped, *_ in results), results
    refused = [r for *_, worker_refused, _ in results for r in worker_refused]
    assert refused == [], "\n".join(refused[:5])
    assert all(counters.get("spool_dropped", 0) == 0 for *_, counters in results), results
    assert any(counters["fast_path"] > 0 for *_, counters in results), results
    reports = sum(n for n, *_ in results)
    with s.client() as c:
        r = row(c, "chat", "mini")
        # Every report counted once: socket receipts, fast-path receipts, and the outcomes of the
        # decisions made locally while the sidecar was down (spooled, then settled).
        assert r["outcomes"] == reports, (r, results)
        assert Decimal(r["cost_usd"]) == reports * COST
        assert r["requests"] >= reports  # a route whose reply a kill cut off counts, unreported
