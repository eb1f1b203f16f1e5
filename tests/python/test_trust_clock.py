"""The real daemon runs on its own clock, and its budgets hold against absurd usage (issue 10,
classes 1 and 9).

Every request here is raw msgpack over ZeroMQ, the bytes an attacker on the socket would send: a
client's `now` (far future, far past, 1e300, NaN...) must change nothing the sidecar keeps — pending
decisions, their expiry, budget days — and a usage no real call has must be refused without
reopening a budget. (That decisions then expire on the sidecar's own clock is shown in-process, with
an injected server clock: tests/cpp/sidecar_test.cpp, DecisionsExpireOnTheServersClock...; the
daemon's decision window is an hour.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import turnout
from daemon import Sidecar
from support import T0

TABLE = """\
version: 1
targets:
  mini:
    kind: maas
    provider: openai
    model: gpt-4.1-mini
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 0.40, output_per_mtok: 1.60}
  dear:
    kind: maas
    provider: openai
    model: dear
    data_classes: [public]
    context_window: 100000
    price: {input_per_mtok: 1, output_per_mtok: 1000000}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 100
    routes: [{target: mini}]
  budgeted:
    data_class: public
    max_output_tokens: 100
    routes: [{target: mini}]
    budget: {usd_per_day: 1}
  dear:
    data_class: public
    max_output_tokens: 1
    routes: [{target: dear}]
    budget: {usd_per_day: 500}
"""

DAY_S = 86_400.0
# Times a client may claim: far future, far past, and values that overflow or are not times.
FUTURE = [time.time() + 10 * DAY_S, time.time() + 50 * 365 * DAY_S]
PAST = [0.0, 1.0, time.time() - 10 * DAY_S]
NOT_A_TIME = [1e300, -1.0, float("inf"), float("nan"), 253_402_300_801.0, 2.0**64]

Ask = Callable[..., dict[str, Any]]


@pytest.fixture
def daemon(sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str) -> Sidecar:
    config_path.write_text(TABLE, encoding="utf-8")
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    return s.start()


@pytest.fixture
def ask(daemon: Sidecar) -> Iterator[Ask]:
    """``ask(op=..., **fields) -> reply``: one raw request on a DEALER socket."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.connect(daemon.endpoint)
    ids = iter(range(1, 1 << 30))

    def send(**fields: Any) -> dict[str, Any]:
        request_id = next(ids)
        sock.send(msgpack.packb({"v": 1, "id": request_id, **fields}))
        assert sock.poll(5000), f"no reply to {fields}"
        reply: dict[str, Any] = msgpack.unpackb(sock.recv())
        assert reply["id"] == request_id
        return reply

    try:
        yield send
    finally:
        sock.close()
        ctx.term()


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"] is True, reply
    return reply


def code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


def pending(ask: Ask) -> int:
    return int(ok(ask(op="stats"))["pending_decisions"])


def route(ask: Ask, scenario: str = "chat", **fields: Any) -> dict[str, Any]:
    fields.setdefault("input_tokens", 1000)
    return ask(op="route", scenario=scenario, **fields)


def report(ask: Ask, decision: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return ask(
        op="report",
        decision_id=decision["decision_id"],
        target=decision["target"],
        status="ok",
        **fields,
    )


USAGE = {"prompt_tokens": 1000, "completion_tokens": 10}


def test_an_explain_dated_in_the_future_expires_nothing(ask: Ask) -> None:
    decisions = [ok(route(ask, key=f"k{i}")) for i in range(3)]
    assert pending(ask) == 3
    for now in FUTURE:
        ok(ask(op="explain", scenario="chat", now=now))
        assert pending(ask) == 3, f"an explain dated {now} expired pending decisions"
    for d in decisions:
        receipt = ok(report(ask, d, usage=USAGE))
        assert receipt["duplicate"] is False
    assert pending(ask) == 3  # reported, still waiting for their verdicts


def test_routes_reports_and_verdicts_dated_anywhere_change_nothing(ask: Ask) -> None:
    # A route dated in 1970 was not born expired; one dated in the future does not stand at the head
    # of the expiry queue forever: both are decided, and dated, at the sidecar's clock.
    dated = [ok(route(ask, key=f"d{i}", now=now)) for i, now in enumerate(PAST + FUTURE)]
    for d in dated:
        assert abs(d["at"] - time.time()) < 60, f"decision dated {d['at']}, not the sidecar's clock"
    later = [ok(route(ask, key=f"l{i}")) for i in range(2)]
    assert pending(ask) == len(dated) + len(later)
    # Reports and verdicts that claim other times are accounted at the sidecar's clock too, and do
    # not expire anything on the way.
    for d, now in zip(dated + later, (PAST + FUTURE) * 2, strict=False):
        ok(report(ask, d, usage=USAGE, now=now))
        ok(ask(op="verdict", decision_id=d["decision_id"], accepted=True, now=now))
        assert pending(ask) == len(dated) + len(later)
    rows = {(r["scenario"], r["target"]): r for r in ok(ask(op="stats"))["counters"]}
    row = rows[("chat", "mini")]
    assert (row["requests"], row["outcomes"], row["accepted"]) == (7, 7, 7)


@pytest.mark.parametrize("now", NOT_A_TIME, ids=repr)
def test_a_now_that_is_no_time_is_refused_by_every_op(ask: Ask, now: float) -> None:
    d = ok(route(ask))
    assert code(route(ask, now=now)) == "invalid_argument"
    assert code(ask(op="explain", scenario="chat", now=now)) == "invalid_argument"
    assert code(report(ask, d, usage=USAGE, now=now)) == "invalid_argument"
    assert (
        code(ask(op="verdict", decision_id=d["decision_id"], accepted=True, now=now))
        == "invalid_argument"
    )
    assert pending(ask) == 1
    receipt = ok(report(ask, d, usage=USAGE))
    assert receipt["duplicate"] is False, "the refused report counted nothing"
    assert ok(ask(op="health"))["status"] == "serving"


def test_a_route_dated_tomorrow_does_not_reopen_an_exhausted_budget(ask: Ask) -> None:
    d = ok(route(ask, "budgeted"))
    # 1,000,000 x $0.40/Mtok + 400,000 x $1.60/Mtok = $0.40 + $0.64 = $1.04: past the $1 budget.
    receipt = ok(report(ask, d, usage={"prompt_tokens": 1_000_000, "completion_tokens": 400_000}))
    assert receipt["cost_usd"] == "1.04"
    assert code(route(ask, "budgeted")) == "budget_exhausted"
    for now in [time.time() + DAY_S, *FUTURE, *PAST]:
        assert code(route(ask, "budgeted", now=now)) == "budget_exhausted", now
        assert code(ask(op="explain", scenario="budgeted", now=now)) == "budget_exhausted", now
    assert code(route(ask, "budgeted")) == "budget_exhausted"


def test_absurd_usage_is_refused_and_huge_costs_do_not_reopen_a_budget(ask: Ask) -> None:
    # Worst case of each: 1 input token at $1/Mtok + 1 output token at $1,000,000/Mtok, ~$1: fits.
    decisions = [ok(route(ask, "dear", key=f"k{i}", input_tokens=1)) for i in range(6)]
    refused = report(ask, decisions[0], usage={"prompt_tokens": 10**18, "completion_tokens": 1})
    assert code(refused) == "usage_invalid"
    message = refused["error"]["message"]
    assert "prompt_tokens" in message, message
    assert "2^31" in message, message
    # 2,000,000 output tokens x $1,000,000/Mtok = $2,000,000 a report; six of them are past the
    # 64-bit picodollar range (~$9.2 million) a budget's figures are kept in.
    for d in decisions:
        receipt = ok(report(ask, d, usage={"prompt_tokens": 0, "completion_tokens": 2_000_000}))
        assert receipt["cost_usd"] == "2000000.0"
    assert code(route(ask, "dear", input_tokens=1)) == "budget_exhausted"
    rows = {(r["scenario"], r["target"]): r for r in ok(ask(op="stats"))["counters"]}
    assert rows[("dear", "dear")]["cost_usd"] == "12000000.0", "the ledger's sum stays exact"


# -- the in-process Router keeps injected time, within the same bounds --------------------------


@pytest.mark.parametrize("now", NOT_A_TIME, ids=repr)
def test_the_in_process_router_refuses_a_now_that_is_no_time(
    make_router: Callable[..., turnout.Router], now: float
) -> None:
    router = make_router()
    d = router.route("chat", input_tokens=100, now=T0)
    with pytest.raises(turnout.InvalidArgumentError, match="now must be a finite time"):
        router.route("chat", input_tokens=100, now=now)
    with pytest.raises(turnout.InvalidArgumentError):
        router.explain("chat", input_tokens=100, now=now)
    with pytest.raises(turnout.InvalidArgumentError):
        router.report(d.id, target=d.target, status="ok", now=now)
    with pytest.raises(turnout.InvalidArgumentError):
        router.verdict(d.id, True, now=now)
    # Injected time still rules the in-process Router (replays): an hour later, d has expired.
    assert router.report(d.id, target=d.target, status="ok", now=T0 + 10)["duplicate"] is False
    later = router.route("chat", input_tokens=100, now=T0 + 3600 + 1)
    with pytest.raises(turnout.UnknownDecisionError):
        router.verdict(d.id, True, now=T0 + 3600 + 1)
    assert later.id != d.id
