"""Migrations in the real sidecar (issue 13): two canaries under load, one promoted and one
aborted, both surviving a SIGKILL mid-way; the `migration` op, its commands and their refusals,
the CLI, /metrics and the log; and the in-process Router's migration calls."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import turnout
from daemon import Sidecar, free_port
from turnout.cli import main as cli_main

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
# Each canary has its own candidate target: the failing one's errors open its breaker, which must
# not starve the healthy one.
BASE, CAND, BAD = "base-model", "cand-model", "bad-model"
HEALTHY, FAILING, PLAIN = "healthy-canary", "failing-canary", "no-canary"

_TARGET = """\
  {name}:
    kind: maas
    provider: openai
    model: {name}
    data_classes: [public]
    context_window: 100000
    price: {{input_per_mtok: 0.40, output_per_mtok: 1.60}}
"""

_MIGRATION = """\
    migration:
      baseline: {base}
      candidate: {cand}
      stage: {stage}
      steps: {steps}
      min_samples: {min_samples}
      max_step_s: 600
      interval_s: 1
      incident_owner: {owner}
      stop:
        errors: {{min_effect: 0.3}}
"""


def table(*, healthy_stage: str = "canary", failing_extra: str = "") -> str:
    """Two scenarios with a canary from BASE (to CAND, to BAD; analysed every second), one without.
    HEALTHY needs 40 candidate outcomes a step over 25 then 100 %; FAILING needs 200 over 25,
    50, 100 % (so it can only fail, never pass, in this test)."""
    targets = "".join(_TARGET.format(name=n) for n in (BASE, CAND, BAD))
    healthy = _MIGRATION.format(
        base=BASE,
        cand=CAND,
        stage=healthy_stage,
        steps="[25, 100]",
        min_samples=40,
        owner="team-healthy",
    )
    failing = _MIGRATION.format(
        base=BASE,
        cand=BAD,
        stage="canary",
        steps="[25, 50, 100]",
        min_samples=200,
        owner="team-failing",
    )
    return (
        "version: 1\ntargets:\n"
        + targets
        + "scenarios:\n"
        + f"  {HEALTHY}:\n    data_class: public\n    fallback: [{BASE}]\n"
        + healthy
        + f"  {FAILING}:\n    data_class: public\n    fallback: [{BASE}]\n"
        + failing
        + failing_extra
        + f"  {PLAIN}:\n    data_class: public\n    routes: [{{target: {BASE}, weight: 100}}]\n"
    )


@pytest.fixture
def canary_config(workdir: Path) -> Path:
    path = workdir / "canary.yaml"
    path.write_text(table(), encoding="utf-8")
    return path


@pytest.fixture
def canary(sidecars: list[Sidecar], workdir: Path, canary_config: Path, shm_name: str) -> Sidecar:
    s = Sidecar(workdir, canary_config, shm_name)
    sidecars.append(s)
    return s.start()


def _usage(i: int) -> dict[str, int]:
    return {"prompt_tokens": 100 + i % 13, "completion_tokens": 10 + i % 7}


def _status(c: turnout.Client, scenario: str) -> dict[str, Any]:
    (m,) = c.migration(scenario)["migrations"]
    assert m["scenario"] == scenario
    return m


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Load:
    """A worker thread routing and reporting through one client until stopped: the candidate of
    HEALTHY (CAND) answers ok; the candidate of FAILING (BAD) answers ok until `regress` is set,
    then errors."""

    def __init__(self, client: turnout.Client, requests: int | None = None) -> None:
        self.client = client
        self.requests = requests  # per scenario; None: until stopped
        self.regress = threading.Event()
        self.stop = threading.Event()
        self.routed: Counter[tuple[str, str]] = Counter()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set() and (self.requests is None or i < self.requests):
                for scenario in (HEALTHY, FAILING):
                    d = self.client.route(scenario, key=f"k{i}", input_tokens=100)
                    self.routed[(scenario, d.target)] += 1
                    bad = d.target == BAD and self.regress.is_set()
                    if bad:
                        self.client.report(d.id, target=d.target, status="error", latency_ms=50)
                    else:
                        self.client.report(
                            d.id, target=d.target, status="ok", usage=_usage(i), latency_ms=50
                        )
                i += 1
                time.sleep(0.002)
        except BaseException as e:  # surfaced by join()
            self.errors.append(e)

    def run(self) -> None:
        """Routes and reports its `requests` per scenario, then returns."""
        self.thread.start()
        self.thread.join(timeout=60)
        self.join()

    def start(self) -> Load:
        self.thread.start()
        return self

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


def _metric(sidecar: Sidecar, name: str, **labels: str) -> float:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=5
    ) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}}")


# -- the live canaries -----------------------------------------------------------------------------


def test_a_canary_promoted_and_another_aborted_under_load_survive_a_kill_mid_way(
    canary: Sidecar, workdir: Path, canary_config: Path, shm_name: str, sidecars: list[Sidecar]
) -> None:
    with canary.client() as c:
        _wait(lambda: _status(c, HEALTHY)["phase"] == "ramp", "the canaries to start")
        _wait(lambda: _status(c, FAILING)["phase"] == "ramp", "the canaries to start")
        for scenario in (HEALTHY, FAILING):
            m = _status(c, scenario)
            assert (m["step"], m["candidate_percent"]) == (0, 25)
            assert [t["cause"] for t in m["transitions"]] == ["started"]

        # Mid-way: fewer candidate outcomes than either step needs (25 % of 100 routes), no
        # regression yet, so no analysis can move either run before the kill or right after it.
        Load(c, requests=80).run()
        before = c.migration()["migrations"]
    assert [m["scenario"] for m in before] == [HEALTHY, FAILING]
    for m in before:
        assert (m["phase"], m["step"]) == ("ramp", 0), m
        assert 0 < m["arms"]["candidate"]["outcomes"] < 40, m
        assert m["arms"]["baseline"]["outcomes"] > 0, m

    canary.kill9()
    restarted = Sidecar(workdir, canary_config, shm_name)
    sidecars.append(restarted)
    restarted.start()
    with restarted.client() as c:
        after = c.migration()["migrations"]
        # Exactly the run it was: phase, step, counts, criteria, deadlines, transitions.
        assert after == before

        # The candidate of FAILING starts failing; HEALTHY's stays good. Socket and fast path.
        # (A client is not shared between threads: each worker has its own.)
        with (
            restarted.client() as worker,
            turnout.Client(restarted.endpoint, shm=restarted.shm, timeout_ms=2000) as fast,
        ):
            loads = [Load(worker), Load(fast)]
            for load in loads:
                load.regress.set()
                load.start()
            try:
                _wait(
                    lambda: _status(c, HEALTHY)["phase"] == "promoted"
                    and _status(c, FAILING)["phase"] == "aborted",
                    "one canary promoted and the other aborted",
                    timeout_s=60,
                )
            finally:
                for load in loads:
                    load.join()
            assert loads[1].client.fast_path, "the second worker decided through shared memory"

            healthy, failing = _status(c, HEALTHY), _status(c, FAILING)
            assert [t["cause"] for t in healthy["transitions"]] == [
                "started",
                "step_passed",
                "proven",
            ]
            assert healthy["candidate_percent"] == 100
            assert all(cr["verdict"] == "pass" for cr in healthy["criteria"])
            assert [t["cause"] for t in failing["transitions"]] == ["started", "failed"]
            assert failing["candidate_percent"] == 0
            detail = failing["transitions"][-1]["detail"]
            assert "errors" in detail, detail
            assert any(cr["verdict"] == "fail" for cr in failing["criteria"])

            # The weights: every route of the aborted scenario goes to the baseline, of the
            # promoted one to the candidate, through the socket and through the fast path alike.
            for client in (c, fast):
                for i in range(40):
                    assert client.route(FAILING, key=f"after{i}", input_tokens=10).target == BASE
                    assert client.route(HEALTHY, key=f"after{i}", input_tokens=10).target == CAND
            assert fast.counters()["fast_path"] >= 80

        # Visible: stats, /metrics, the log.
        stats = {m["scenario"]: m for m in c.stats()["migrations"]}
        assert stats[FAILING]["phase"] == "aborted"
        assert stats[HEALTHY]["phase"] == "promoted"
    assert _metric(restarted, "turnout_migration_candidate_percent", scenario=FAILING) == 0
    assert _metric(restarted, "turnout_migration_candidate_percent", scenario=HEALTHY) == 100
    assert _metric(restarted, "turnout_migration_phase", scenario=FAILING, phase="aborted") == 1
    assert _metric(restarted, "turnout_migration_phase", scenario=FAILING, phase="ramp") == 0
    assert (
        _metric(restarted, "turnout_migration_transitions_total", scenario=FAILING, cause="failed")
        == 1
    )
    assert (
        _metric(restarted, "turnout_migration_transitions_total", scenario=HEALTHY, cause="proven")
        == 1
    )
    log = restarted.log()
    assert re.search(
        rf"migration {FAILING}: ramp -> aborted, step 1/3, candidate 0 %, cause failed: .*errors.*"
        r"incident owner team-failing",
        log,
    ), log
    assert f"migration {HEALTHY}: ramp -> promoted, step 2/2, candidate 100 %, cause proven" in log

    # The ended runs survive a restart too, and stay ended.
    with restarted.client() as c:
        ended = c.migration()["migrations"]
    restarted.kill9()
    again = Sidecar(workdir, canary_config, shm_name)
    sidecars.append(again)
    again.start()
    with again.client() as c:
        assert c.migration()["migrations"] == ended


# -- commands --------------------------------------------------------------------------------------


def test_commands_move_the_run_and_are_replayed_after_a_kill(
    canary: Sidecar, workdir: Path, canary_config: Path, shm_name: str, sidecars: list[Sidecar]
) -> None:
    runner = CliRunner()
    with canary.client() as c:
        _wait(lambda: _status(c, HEALTHY)["phase"] == "ramp", "the canary to start")
        r = runner.invoke(cli_main, ["migration", "pause", HEALTHY, "--endpoint", canary.endpoint])
        assert r.exit_code == 0, r.output
        assert f"{HEALTHY}: ramp -> paused (command)" in r.output
        paused = _status(c, HEALTHY)
        assert paused["phase"] == "paused"
        assert paused["candidate_percent"] == 25  # a pause holds the step's weight
        assert paused["deadline_at"] is not None

        # resume of a ramping canary, a command on a scenario without a migration: exit 2, why.
        r = runner.invoke(cli_main, ["migration", "resume", FAILING, "--endpoint", canary.endpoint])
        assert r.exit_code == 2, r.output
        assert "not paused" in r.output
        with pytest.raises(turnout.MigrationConflictError, match="not paused"):
            c.migration(FAILING, "resume")
        r = runner.invoke(cli_main, ["migration", "abort", PLAIN, "--endpoint", canary.endpoint])
        assert r.exit_code == 2, r.output
        assert PLAIN in r.output
        assert "no migration" in r.output
        with pytest.raises(turnout.NoMigrationError, match=PLAIN):
            c.migration(PLAIN, "abort")
        with pytest.raises(turnout.NoMigrationError):
            c.migration(PLAIN)  # no status either
        with pytest.raises(turnout.UnknownScenarioError):
            c.migration("nope", "promote")
        # An action the protocol does not have: bad_message, and the run did not move.
        with pytest.raises(turnout.ProtocolError, match="unknown migration action 'dance'") as e:
            c.request("migration", scenario=HEALTHY, action="dance")
        assert e.value.code == "bad_message"
        with pytest.raises(turnout.ProtocolError, match="'action' must be a string"):
            c.request("migration", scenario=HEALTHY, action=3)
        with pytest.raises(turnout.ProtocolError, match="'scenario' is required"):
            c.request("migration", action="abort")

        r = runner.invoke(cli_main, ["migration", "abort", FAILING, "--endpoint", canary.endpoint])
        assert r.exit_code == 0, r.output
        with pytest.raises(turnout.MigrationConflictError):
            c.migration(FAILING, "resume")  # ended: nothing but status
        before = c.migration()["migrations"]
    assert [m["phase"] for m in before] == ["paused", "aborted"]

    # Journaled before applied: a kill right after the replies loses none of them.
    canary.kill9()
    restarted = Sidecar(workdir, canary_config, shm_name)
    sidecars.append(restarted)
    restarted.start()
    with restarted.client() as c:
        assert c.migration()["migrations"] == before
        reply = c.migration(HEALTHY, "resume")
        assert reply["transition"]["from_phase"] == "paused"
        assert reply["transition"]["to_phase"] == "ramp"
        assert reply["migration"]["phase"] == "ramp"
        assert reply["migration"]["step"] == 0
        promoted = c.migration(HEALTHY, "promote")
        assert promoted["migration"]["candidate_percent"] == 100
        assert all(
            c.route(HEALTHY, key=f"k{i}", input_tokens=10).target == CAND for i in range(20)
        )
    log = restarted.log()
    assert f"migration {HEALTHY}: paused -> ramp, step 1/2, candidate 25 %, cause command" in log


def test_cli_status_shows_the_run(canary: Sidecar) -> None:
    runner = CliRunner()
    with canary.client() as c:
        _wait(lambda: _status(c, HEALTHY)["phase"] == "ramp", "the canary to start")
    r = runner.invoke(cli_main, ["migration", "status", "--endpoint", canary.endpoint])
    assert r.exit_code == 0, r.output
    assert f"{HEALTHY}: ramp, step 1/2 [25, 100], candidate 25 % to {CAND}" in r.output
    assert f"{FAILING}: ramp, step 1/3" in r.output
    assert "incident owner team-healthy" in r.output
    assert "stop criteria" in r.output
    assert "errors" in r.output
    assert "pending -> ramp" in r.output
    r = runner.invoke(
        cli_main, ["migration", "status", FAILING, "--json", "--endpoint", canary.endpoint]
    )
    assert r.exit_code == 0, r.output
    (m,) = json.loads(r.output)["migrations"]  # strict JSON: infinite bounds are null
    assert m["scenario"] == FAILING
    assert m["incident_owner"] == "team-failing"
    r = runner.invoke(cli_main, ["migration", "status", PLAIN, "--endpoint", canary.endpoint])
    assert r.exit_code == 2, r.output
    assert "no migration" in r.output


# -- the trust boundary ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["read-only", "read-write"])
def test_commands_are_refused_over_tcp_without_curve(
    sidecars: list[Sidecar], workdir: Path, canary_config: Path, shm_name: str, mode: str
) -> None:
    s = Sidecar(workdir, canary_config, shm_name)
    s.endpoint = f"tcp://127.0.0.1:{free_port()}"
    sidecars.append(s)
    s.start("--insecure-tcp", mode)
    with s.client() as c:
        _wait(lambda: _status(c, HEALTHY)["phase"] == "ramp", "the canary to start")
        for action in ("promote", "pause", "resume", "abort"):
            with pytest.raises(turnout.PermissionDeniedError, match="CURVE"):
                c.migration(HEALTHY, action)
        assert _status(c, HEALTHY)["phase"] == "ramp"  # nothing moved
        assert [m["scenario"] for m in c.migration()["migrations"]] == [HEALTHY, FAILING]
    r = CliRunner().invoke(cli_main, ["migration", "abort", HEALTHY, "--endpoint", s.endpoint])
    assert r.exit_code == 2, r.output
    assert "CURVE" in r.output


# -- reload ----------------------------------------------------------------------------------------


def test_a_malformed_migration_block_on_reload_keeps_the_old_table(
    canary: Sidecar, canary_config: Path
) -> None:
    with canary.client() as c:
        _wait(lambda: _status(c, HEALTHY)["phase"] == "ramp", "the canary to start")
        before = c.migration()["migrations"]
        version = c.health()["config_version"]
        good = canary_config.read_text()
        broken = good.replace("steps: [25, 50, 100]", "steps: [50, 25, 100]")
        assert broken != good
        canary_config.write_text(broken)
        line = next(i for i, t in enumerate(broken.splitlines(), 1) if "[50, 25, 100]" in t)
        with pytest.raises(turnout.ConfigError, match=rf"canary\.yaml:{line}:\d+: .*increas"):
            c.reload()
        assert c.health()["config_version"] == version
        after = c.migration()["migrations"]
        assert [(m["phase"], m["step"], m["steps"]) for m in after] == [
            (m["phase"], m["step"], m["steps"]) for m in before
        ]
        assert c.stats()["last_reload"]["ok"] is False
        canary_config.write_text(good)


# -- the in-process Router -------------------------------------------------------------------------


def test_the_in_process_router_runs_the_same_state_machine(canary_config: Path) -> None:
    config = turnout.load_config(canary_config)
    router = turnout.Router(config, seed=0)
    pending = router.migrations()
    assert [m["scenario"] for m in pending] == [HEALTHY, FAILING]
    assert all(m["phase"] == "pending" and m["candidate_percent"] == 0 for m in pending)
    moves = router.migration_tick(T0)
    assert sorted((m["scenario"], m["transition"]["cause"]) for m in moves) == [
        (FAILING, "started"),
        (HEALTHY, "started"),
    ]
    assert router.migration_tick(T0 + 0.5) == []  # the next analysis is a second later
    reply = router.migration_command(HEALTHY, "pause", now=T0 + 1)
    assert reply["transition"]["to_phase"] == "paused"
    assert reply["migration"]["phase"] == "paused"
    with pytest.raises(turnout.MigrationConflictError):
        router.migration_command(FAILING, "resume", now=T0 + 1)
    with pytest.raises(turnout.NoMigrationError):
        router.migration_command(PLAIN, "abort", now=T0 + 1)
    with pytest.raises(ValueError, match="dance"):
        router.migration_command(HEALTHY, "dance", now=T0 + 1)
    # The same maps the sidecar's `migration` reply gives (one encoder).
    (status,) = [m for m in router.migrations() if m["scenario"] == HEALTHY]
    assert set(status) >= {"arms", "criteria", "transitions", "deadline_at", "incident_owner"}
    assert status["deadline_at"] == pytest.approx(T0 + 1 + 600)
