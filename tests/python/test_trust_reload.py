"""Reloads that grow the counter segment, with the real daemon (issue 10, class 2): /metrics scraped
while the segment is replaced never reads a segment being unmapped, and a reload that cannot get a
bigger segment (a full /dev/shm, in a private mount namespace) changes nothing and says why in the
reply, the log, ``stats`` and /metrics."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import turnout
from daemon import Sidecar

SCENARIO = "contract-extraction"  # of examples/routing.yaml: one route, llama-70b
TARGET = "llama-70b"


def _grown(small: str, extra: int) -> str:
    """`small` (examples/routing.yaml) with `extra` more scenarios, one ledger row each."""
    lines = [small.rstrip("\n"), ""]
    for i in range(extra):
        lines += [
            f"  extra-{i}:",
            "    data_class: public",
            "    routes: [{target: deepseek-chat}]",
        ]
    return "\n".join(lines) + "\n"


def _fetch(sidecar: Sidecar) -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=10
    ) as r:
        return r.read().decode()


def _scrape(sidecar: Sidecar) -> dict[str, Any]:
    """/metrics, parsed by Prometheus' own parser: {sample name: [(labels, value)]}."""
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(_fetch(sidecar)):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


# The text exposition, line by line: a HELP or TYPE comment, or `name{labels} value`. Checks a whole
# page in C (Prometheus' parser takes seconds on the pages of the big tables below).
_EXPOSITION = re.compile(
    r"(?:# (?:HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* [^\n]*\n"
    r"|[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\.)*\",?)*\})?"
    r" (?:[-+]?[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?|[-+]?Inf|NaN)\n)*"
)


def _value(samples: dict[str, Any], name: str) -> float:
    [(labels, value)] = samples[name]
    assert labels == {}
    return float(value)


def _usage(i: int) -> dict[str, int]:
    return {"prompt_tokens": 100 + i, "completion_tokens": 10 + i}


def _row(rows: list[dict[str, Any]], scenario: str = SCENARIO, target: str = TARGET) -> dict:
    return next(r for r in rows if r["scenario"] == scenario and r["target"] == target)


def _counts(row: dict[str, Any]) -> tuple[int, int, Decimal]:
    """What a ledger row must keep, comparable between stats (cost as text) and the segment."""
    return row["requests"], row["outcomes"], Decimal(str(row["cost_usd"]))


def _ledger(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[int, int, Decimal]]:
    return {(r["scenario"], r["target"]): _counts(r) for r in rows}


# ------------------------------------------------------------------- /metrics during reloads


def test_metrics_scraped_during_reloads_that_grow_the_segment_never_crash(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    sidecar = Sidecar(workdir, config_path, shm_name)
    sidecars.append(sidecar)
    sidecar.start("--no-watch")  # only the reload op reloads: no half-written table is seen
    small = config_path.read_text()
    stop = threading.Event()
    failures: list[BaseException] = []
    generations: list[list[int]] = [[] for _ in range(6)]
    last_pages: list[str] = ["" for _ in generations]

    def scraper(n: int) -> None:
        while not stop.is_set():
            try:
                page = _fetch(sidecar)
                assert _EXPOSITION.fullmatch(page), "not Prometheus text"
                assert "\nturnout_up 1\n" in page
                generation = re.search(r"\nturnout_generation ([0-9]+)\n", page)
                assert generation is not None
                generations[n].append(int(generation.group(1)))
                last_pages[n] = page
            except BaseException as e:  # reported by the main thread
                failures.append(e)
                return

    threads = [threading.Thread(target=scraper, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    with sidecar.client(timeout_ms=20_000) as c:
        d = c.route(SCENARIO, input_tokens=100)
        c.report(d.id, target=d.target, status="ok", usage=_usage(0))
        base = len(c.stats()["counters"])
        # The segment starts with max(64, 2 x rows) slots. Big grows: the bigger the new segment,
        # the longer the old code left its mapping unmapped while a scrape could read it.
        needed = 500
        assert base < 32
        try:
            for _ in range(3):  # each big table outgrows the segment the one before it left
                config_path.write_text(_grown(small, needed - base))
                c.reload(timeout_ms=60_000)
                total = len(c.stats()["counters"])
                assert total >= needed
                needed = 2 * total + 1
                config_path.write_text(small)
                c.reload(timeout_ms=60_000)
                assert _row(c.stats()["counters"])["outcomes"] == 1
                assert not failures, failures
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
            assert sidecar.proc is not None
            died = sidecar.proc.poll()  # checked first: a crash also fails the request above
            assert died is None, f"the sidecar died ({died}): {sidecar.log()}"
        assert not failures, f"{failures!r}\n{sidecar.log()}"
        scrapes = sum(len(g) for g in generations)
        assert scrapes > 30, f"only {scrapes} scrapes ran during the reloads"
        for mine in generations:
            assert mine == sorted(mine), "the generation never goes back"
        for page in last_pages:  # and Prometheus' own parser reads them
            assert {f.name for f in text_string_to_metric_families(page)} >= {
                "turnout_up",
                "turnout_generation",
            }
        # The ledger came through: the row of the one outcome is whole, in stats and the segment.
        row = _row(c.stats()["counters"])
        assert (row["requests"], row["outcomes"]) == (1, 1)
        assert _row(turnout.attach(sidecar.shm).counters())["outcomes"] == 1
        last = c.stats()["last_reload"]
        assert last["ok"] is True, last
        assert last["failures"] == 0
        assert last["error"] is None
        assert last["at"] > 0
        samples = _scrape(sidecar)
        assert _value(samples, "turnout_last_reload_ok") == 1
        assert _value(samples, "turnout_reload_failures_total") == 0
        assert _value(samples, "turnout_generation") == c.health()["generation"]


# --------------------------------------------------------------------------- a full /dev/shm

SHM_KIB = 1024  # the private /dev/shm: the counter segment fits, the rings (16 MiB) do not


class NamespacedSidecar(Sidecar):
    """The daemon in a private mount namespace whose /dev/shm is a small tmpfs of its own. The
    socket and /metrics are shared with the test; the segments are reached with nsenter."""

    def command(self, *extra: str) -> list[str]:
        inner = " ".join(shlex.quote(a) for a in super().command(*extra))
        mount = f"mount -t tmpfs -o size={SHM_KIB}k,mode=1777 tmpfs /dev/shm"
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"{mount} && exec {inner}",
        ]

    def inside(self, code: str, *args: str) -> str:
        """Runs Python `code` in the daemon's mount namespace; returns its stdout."""
        assert self.proc is not None
        argv = [
            "nsenter",
            "--mount",
            f"--target={self.proc.pid}",
            sys.executable,
            "-c",
            code,
            *args,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def segment_rows(self) -> list[dict[str, Any]]:
        code = (
            "import json, sys, turnout\n"
            "print(json.dumps(turnout.attach(sys.argv[1]).counters(), default=str))\n"
        )
        return json.loads(self.inside(code, self.shm))

    def fill_shm(self) -> None:
        """Fills the namespace's /dev/shm to the last byte (a file the test removes later)."""
        code = (
            "import os\n"
            "fd = os.open('/dev/shm/filler', os.O_CREAT | os.O_WRONLY, 0o600)\n"
            "size = 0\n"
            "for chunk in (1 << 20, 1 << 16, 1 << 12):\n"
            "    while True:\n"
            "        try:\n"
            "            os.posix_fallocate(fd, size, chunk)\n"
            "        except OSError:\n"
            "            break\n"
            "        size += chunk\n"
            "print(os.statvfs('/dev/shm').f_bavail)\n"
        )
        assert int(self.inside(code)) == 0

    def free_shm(self) -> None:
        self.inside("import os; os.unlink('/dev/shm/filler')")


def _private_shm_possible() -> str | None:
    """Why a private tmpfs on /dev/shm cannot be had here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount in a private mount namespace)"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /dev/shm",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"unshare/mount refused: {probe.stderr.strip()}"


def test_a_reload_that_needs_a_bigger_segment_on_a_full_dev_shm_changes_nothing(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    why = _private_shm_possible()
    if why is not None:
        pytest.fail(f"the full-/dev/shm test cannot run here: {why}")  # never skipped as a pass
    small = config_path.read_text()
    sidecar = NamespacedSidecar(workdir, config_path, shm_name)
    sidecars.append(sidecar)
    sidecar.start("--no-watch")  # the reload op and SIGHUP only: each failure is counted once
    with sidecar.client(timeout_ms=10_000) as c:
        before = c.stats()
        assert before["fast_path"]["enabled"] is False  # the rings do not fit: socket only
        version, generation = before["config_version"], before["generation"]
        assert before["last_reload"] == {"ok": True, "at": None, "failures": 0, "error": None}
        for i in range(3):
            d = c.route(SCENARIO, input_tokens=100)
            c.report(d.id, target=d.target, status="ok", usage=_usage(i))
        pending = c.route(SCENARIO, input_tokens=100)  # reported after the failed reload
        rows = c.stats()["counters"]
        assert _ledger(sidecar.segment_rows()) == _ledger(rows)

        sidecar.fill_shm()
        config_path.write_text(_grown(small, 200))  # valid, but needs a bigger counter segment
        with pytest.raises(
            turnout.TurnoutIOError, match="cannot grow the counter segment"
        ) as failed:
            c.reload()
        assert "No space left on device" in str(failed.value)
        time.sleep(0.5)  # heartbeats: the old code crashed here, on the segment it had unmapped
        assert sidecar.proc is not None
        assert sidecar.proc.poll() is None, sidecar.log()

        # Nothing changed: the table, the generation, the rows (in stats and the segment).
        after = c.stats()
        assert (after["config_version"], after["generation"]) == (version, generation)
        assert after["counters"] == rows
        assert _ledger(sidecar.segment_rows()) == _ledger(rows)
        last = after["last_reload"]
        assert last["ok"] is False
        assert last["failures"] == 1
        assert last["at"] > 0
        assert last["error"]["code"] == "io_error"
        assert last["error"]["message"] == str(failed.value)
        samples = _scrape(sidecar)
        assert _value(samples, "turnout_last_reload_ok") == 0
        assert _value(samples, "turnout_reload_failures_total") == 1
        assert _value(samples, "turnout_generation") == generation
        assert "reload op: reload failed, still serving config" in sidecar.log()
        assert "No space left on device" in sidecar.log()

        # The old table serves on, and its ledger keeps counting, in the same segment.
        d = c.route(SCENARIO, input_tokens=100)
        assert d.config_version == version
        c.report(d.id, target=d.target, status="ok", usage=_usage(7))
        c.report(pending.id, target=pending.target, status="ok", usage=_usage(8))
        row = _row(c.stats()["counters"])
        assert (row["requests"], row["outcomes"]) == (5, 5)
        assert _counts(_row(sidecar.segment_rows())) == _counts(row)

        # A SIGHUP while still full fails the same way, and is counted.
        sidecar.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while c.stats()["last_reload"]["failures"] < 2:
            assert time.monotonic() < deadline, sidecar.log()
            time.sleep(0.05)
        assert "SIGHUP: reload failed, still serving config" in sidecar.log()

        # With room again the same table loads, the segment grows and keeps every row's counts.
        sidecar.free_shm()
        reply = c.reload()
        assert reply["config_version"] != version
        assert reply["generation"] == generation + 1
        grown = c.stats()
        assert grown["last_reload"]["ok"] is True
        assert grown["last_reload"]["failures"] == 2
        assert len(grown["counters"]) >= len(rows) + 200
        assert _counts(_row(grown["counters"])) == _counts(row)
        in_segment = sidecar.segment_rows()
        assert len(in_segment) == len(grown["counters"])
        assert _counts(_row(in_segment)) == _counts(row)
        assert _value(_scrape(sidecar), "turnout_last_reload_ok") == 1
    assert sidecar.proc.poll() is None, sidecar.log()
