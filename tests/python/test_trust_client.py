"""Issue 10, class 3 on the worker's side, against the real daemon: every receipt says whether it
was counted, a fast-path receipt the sidecar refuses is seen as refused, and decisions a client made
locally while the sidecar was down reach its ledger exactly once when it is back (also when the
reply of the import is lost and the sidecar is killed)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from daemon import Sidecar

SCENARIO = "contract-extraction"  # one route: llama-70b (two replicas), no fallback
TARGET = "llama-70b"
NOT_A_FALLBACK = "gpt-4.1-mini"  # a target of the table (OpenAI usage), not of this scenario


def _usage(i: int) -> dict[str, int]:
    return {"prompt_tokens": 100 + i, "completion_tokens": 10 + i % 7}


def _row(stats: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in stats["counters"] if r["scenario"] == SCENARIO and r["target"] == TARGET)


def _inflight(stats: dict[str, Any]) -> int:
    return sum(b["inflight"] for b in stats["breakers"] if b["target"] == TARGET)


def _decide_locally(c: turnout.Client, n: int) -> tuple[list[turnout.Decision], dict[str, Any]]:
    """n local decisions: all but the last reported ok (priced), verdicts on three of them; the
    last one stays in flight. Returns the decisions and what the sidecar must count."""
    decisions = [c.route(SCENARIO, key=f"k{i}", input_tokens=100 + i) for i in range(n)]
    cost = Decimal(0)
    for i, d in enumerate(decisions[:-1]):
        assert d.id >> 62 == 1, "a local decision's id is apart from the sidecar's"
        receipt = c.report(d.id, target=d.target, status="ok", usage=_usage(i), latency_ms=10 + i)
        assert receipt is not None
        assert receipt["counted"] is False, "the sidecar has not seen it yet"
        cost += receipt["cost_usd"]
    c.verdict(decisions[0].id, True)
    c.verdict(decisions[1].id, True)
    c.verdict(decisions[2].id, False)
    expected = {"requests": n, "outcomes": n - 1, "accepted": 2, "rejected": 1, "cost": cost}
    return decisions, expected


def _assert_ledger(c: turnout.Client, expected: dict[str, Any], inflight: int) -> None:
    stats = c.stats()
    row = _row(stats)
    for name in ("requests", "outcomes", "accepted", "rejected"):
        assert row[name] == expected[name], (name, row)
    assert Decimal(row["cost_usd"]) == expected["cost"]
    assert _inflight(stats) == inflight


def test_local_decisions_reach_the_ledger_once_when_the_sidecar_is_back(
    sidecar: Sidecar, config_path: Any
) -> None:
    with sidecar.client(config=config_path, timeout_ms=500, retry_after_s=0) as c:
        sidecar.stop()
        decisions, expected = _decide_locally(c, 6)
        assert c.counters()["local"] == 6
        assert c.counters()["spooled"] == 6
        sidecar.start()
        assert c.settle(timeout_ms=5000) == []
        assert c.counters()["imported"] == 6
        assert c.counters()["spooled"] == 0
        # Exactly those requests, outcomes, costs and verdicts; the one in flight holds its slot.
        _assert_ledger(c, expected, inflight=1)
        # Sent again (nothing left to send): nothing changes.
        assert c.flush() == 0
        _assert_ledger(c, expected, inflight=1)
        # The one still in flight was adopted: its report goes to the sidecar and is counted there.
        last = decisions[-1]
        receipt = c.report(last.id, target=last.target, status="ok", usage=_usage(99))
        assert receipt is not None
        assert receipt["counted"] is True
        expected = {
            **expected,
            "outcomes": expected["outcomes"] + 1,
            "cost": expected["cost"] + receipt["cost_usd"],
        }
        c.verdict(last.id, True)
        expected["accepted"] += 1
        _assert_ledger(c, expected, inflight=0)


def test_a_local_decision_whose_import_reply_is_lost_is_counted_once(
    sidecar: Sidecar, config_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sidecar.client(config=config_path, timeout_ms=500, retry_after_s=0) as c:
        sidecar.stop()
        _, expected = _decide_locally(c, 5)
        sidecar.start()
        # The first import is applied by the sidecar, but its reply never reaches the client; the
        # sidecar is then killed (-9) and restarted before the client sends the entry again.
        send = c._socket.call
        replies: list[dict[str, Any]] = []
        lost: list[dict[str, Any]] = []

        def lossy(msg: dict[str, Any], timeout_ms: int | None = None) -> dict[str, Any] | None:
            reply = send(msg, timeout_ms)
            if msg["op"] == "settle_local" and reply is not None:
                if not lost:
                    lost.append(reply)
                    return None
                replies.append(reply)
            return reply

        monkeypatch.setattr(c._socket, "call", lossy)
        assert c.flush() == 5, "the lost reply leaves every entry spooled"
        assert len(lost) == 1
        assert lost[0]["ok"], lost
        sidecar.kill9()
        sidecar.start()
        assert c.settle(timeout_ms=5000) == []
        assert len(replies) == 5
        assert replies[0]["duplicate"] is True, "the restarted sidecar knew the entry"
        assert replies[0]["decision_id"] == lost[0]["decision_id"]
        assert all(r["duplicate"] is False for r in replies[1:])
        assert c.counters()["imported"] == 5
        _assert_ledger(c, expected, inflight=1)


def test_a_local_decision_the_sidecar_cannot_place_is_refused_and_counted(
    sidecar: Sidecar, config_path: Any
) -> None:
    with sidecar.client(config=config_path, timeout_ms=500, retry_after_s=0) as c:
        sidecar.stop()
        d = c.route(SCENARIO, key="gone", input_tokens=100)
        # The table changes while the sidecar is down: the scenario is gone when it comes back.
        text = config_path.read_text()
        config_path.write_text(text.replace("contract-extraction:", "contract-review:"))
        sidecar.start()
        assert c.settle(timeout_ms=5000) == []
        assert c.counters()["spool_refused"] == 1
        assert c.counters()["imported"] == 0
        with pytest.raises(turnout.UnknownScenarioError):
            c.request("settle_local", spool_id=d.id, scenario=SCENARIO, target=TARGET)
        with pytest.raises(turnout.InvalidArgumentError, match="reserved_cost_usd"):
            c.request(
                "settle_local",
                spool_id=1,
                scenario="contract-review",
                target=TARGET,
                reserved_cost_usd="1001",
            )
        with pytest.raises(turnout.ProtocolError, match="spool_id"):
            c.request("settle_local", scenario="contract-review", target=TARGET)


def test_the_local_spool_is_bounded_and_counts_what_it_drops(
    sidecar: Sidecar, config_path: Any
) -> None:
    with sidecar.client(config=config_path, timeout_ms=500, retry_after_s=0, spool_limit=3) as c:
        sidecar.stop()
        for i in range(5):
            c.route(SCENARIO, key=f"k{i}", input_tokens=100)
        assert c.counters()["spool_dropped"] == 2
        sidecar.start()
        c.settle(timeout_ms=5000)
        assert c.counters()["imported"] == 3
        assert _row(c.stats())["requests"] == 3


def test_refused_fast_path_receipts_are_seen_and_confirmed_ones_match_the_ledger(
    sidecar: Sidecar,
) -> None:
    with sidecar.client(shm=sidecar.shm) as c:
        assert c.fast_path, c.fast_path_error
        decisions = [c.route(SCENARIO, key=f"f{i}", input_tokens=100 + i) for i in range(5)]
        assert c.counters()["fast_path"] == 5
        confirmed_cost = Decimal(0)
        for i, d in enumerate(decisions[:4]):
            receipt = c.report(d.id, target=d.target, status="ok", usage=_usage(i))
            assert receipt is not None
            assert receipt["counted"] is False, "a fast-path receipt is provisional"
            confirmed_cost += receipt["cost_usd"]
        # Priced here, but the sidecar refuses it: the target is no fallback of the decision.
        bad = decisions[4]
        receipt = c.report(bad.id, target=NOT_A_FALLBACK, status="ok", usage=_usage(9))
        assert receipt is not None
        assert receipt["counted"] is False
        # A report for a decision the sidecar never knew (this client does not either: no receipt).
        unknown = bad.id + 1000
        assert c.report(unknown, target=TARGET, status="ok", usage=_usage(9)) is None

        refused = c.settle(timeout_ms=5000)
        by_decision = {r["decision_id"]: r for r in refused}
        assert set(by_decision) == {bad.id, unknown}, refused
        assert by_decision[bad.id]["code"] == "target_not_allowed"
        assert by_decision[bad.id]["op"] == "report"
        assert by_decision[bad.id]["target"] == NOT_A_FALLBACK
        assert isinstance(by_decision[bad.id]["error"], turnout.TargetNotAllowedError)
        assert by_decision[unknown]["code"] == "unknown_decision"
        assert c.settle(timeout_ms=1000) == [], "each refusal is returned once"

        counters = c.counters()
        assert counters["provisional"] == 5
        assert counters["confirmed"] == 4
        assert counters["rejected"] == 1
        stats = c.stats()
        row = _row(stats)
        assert row["requests"] == 5
        assert row["outcomes"] == counters["confirmed"]
        assert Decimal(row["cost_usd"]) == confirmed_cost
        assert stats["fast_path"]["rejected"] == 2


def test_socket_receipts_say_they_were_counted(sidecar: Sidecar) -> None:
    with sidecar.client() as c:
        d = c.route(SCENARIO, input_tokens=100)
        receipt = c.report(d.id, target=d.target, status="ok", usage=_usage(0))
        assert receipt is not None
        assert receipt["counted"] is True


@pytest.mark.parametrize("lose_dev_shm", [False, True])
def test_a_settled_entry_re_sent_after_a_crash_or_reboot_counts_once(
    sidecar: Sidecar, shm_name: str, lose_dev_shm: bool
) -> None:
    """The import and its spool id are one journal record: after kill -9 (and after a reboot that
    wipes /dev/shm, where the spool ids were kept) a re-sent entry is still a duplicate."""
    entry: dict[str, Any] = {
        "spool_id": 0x1234_5678_9ABC,
        "scenario": SCENARIO,
        "target": TARGET,
        "outcomes": [{"target": TARGET, "status": "ok", "usage": _usage(1), "latency_ms": 20}],
        "accepted": True,
    }
    with sidecar.client() as c:
        first = c.request("settle_local", **entry)
        assert not first["duplicate"]
        before = _row(c.stats())
    sidecar.kill9()
    if lose_dev_shm:
        for p in Path("/dev/shm").glob(f"{shm_name}*"):  # what a reboot does to a tmpfs
            p.unlink()
    sidecar.start()
    with sidecar.client() as c:
        again = c.request("settle_local", **entry)  # its reply was lost: the client sends it again
        assert again["duplicate"]
        assert again["decision_id"] == first["decision_id"]
        after = _row(c.stats())
    for name in ("requests", "outcomes", "accepted", "cost_usd"):
        assert after[name] == before[name], name
    assert (after["requests"], after["outcomes"], after["accepted"]) == (1, 1, 1)
