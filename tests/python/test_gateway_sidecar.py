"""Client.call through the real sidecar: the fast path's decisions and the socket's, every
attempt reported to the sidecar's ledger, and a sidecar killed mid-traffic losing nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from daemon import Sidecar
from test_gateway_call import KEY, KEY_ENV, MESSAGES, PRICE, table
from turnout.testing import FakeProviders, Fault


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    os.environ[KEY_ENV] = KEY
    with FakeProviders(api_keys={"openai": KEY, "anthropic": KEY}) as f:
        yield f
    os.environ.pop(KEY_ENV, None)


@pytest.fixture
def config_path(workdir: Path, fake: FakeProviders) -> Path:
    path = workdir / "routing.yaml"
    path.write_text(table(fake))
    return path


def sidecar_rows(client: turnout.Client) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in client.stats()["counters"] if r["outcomes"]}


def test_client_call_on_the_fast_path_reports_every_attempt_to_the_sidecar(
    fake: FakeProviders, sidecar: Sidecar
) -> None:
    fake.script("oa-m", [Fault.server_error()] * 3)
    with sidecar.client(shm=sidecar.shm) as c:
        assert c.fast_path
        gw = c.gateway(retry={"base_backoff_ms": 5, "max_backoff_ms": 10})
        with gw:
            resp = gw.call("s-oa", MESSAGES, max_tokens=4)
            assert [(a.target, a.failure) for a in resp.attempts][-1] == ("vl", "none")
            streamed = gw.call("s-an", MESSAGES, stream=True, max_tokens=4)
            assert "".join(streamed) == "w1 w2 w3 w4 "
        assert c.fast_decisions == 2
        assert not c.settle(timeout_ms=5000)  # the sidecar applied every record
        rows = sidecar_rows(c)
    assert rows["oa"]["error"] == 1  # three 5xx: the target's last attempt is the outcome
    assert rows["vl"]["ok"] == 1
    assert rows["an"]["ok"] == 1
    inp, out = PRICE[0], PRICE[1]
    assert Decimal(rows["an"]["cost_usd"]) == (8 * inp + 4 * out) / 1_000_000
    assert streamed.response is not None
    assert streamed.response.cost_usd == Decimal(rows["an"]["cost_usd"])


def test_client_call_through_the_socket_and_through_a_sidecar_killed_mid_traffic(
    fake: FakeProviders, sidecar: Sidecar, config_path: Path
) -> None:
    with sidecar.client(config=config_path, retry_after_s=0) as c:
        first = c.call("s-ds", MESSAGES, max_tokens=3)
        assert first.target == "ds"
        sidecar.kill9()
        # Down: decided locally by the same table, its attempts spooled for the sidecar.
        fake.script("ge-m", [Fault.context_window()])
        second = c.call("s-ge", MESSAGES, max_tokens=3)
        assert [(a.target, a.failure) for a in second.attempts] == [
            ("ge", "context_overflow"),
            ("vl", "none"),
        ]
        assert c.local_decisions == 1
        sidecar.start()
        assert c.flush(timeout_ms=5000) == 0
        rows = sidecar_rows(c)
    assert rows["ds"]["ok"] == 1
    assert rows["ge"]["context_overflow"] == 1
    assert rows["vl"]["ok"] == 1
    assert sum(r["outcomes"] for r in rows.values()) == 3  # each attempt once, none lost


def test_client_call_without_a_table_says_what_it_needs(sidecar: Sidecar) -> None:
    with sidecar.client() as c, pytest.raises(turnout.SidecarError, match="give the client shm="):
        c.call("s-oa", MESSAGES)
