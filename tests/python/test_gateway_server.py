"""The OpenAI-compatible front door (turnout gateway), over real HTTP on loopback: the fake
providers behind a routing table, the gateway served on a free port, the official openai SDK as
the client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web
from click.testing import CliRunner

import turnout
from daemon import Sidecar
from turnout.cli import main as cli_main
from turnout.gateway import server
from turnout.testing import FakeProviders, Fault

REPO = Path(__file__).resolve().parents[2]
KEY_VAR = "TURNOUT_TEST_GATEWAY_PROVIDER_KEY"
PROMPT = [{"role": "user", "content": "hello there"}]


def table(fake: FakeProviders) -> str:
    """The routing table of these tests, its targets on the fake providers."""
    price = "{input_per_mtok: 1, output_per_mtok: 2, cache_read_per_mtok: 0.5}"
    anthropic_price = (
        "{input_per_mtok: 3, output_per_mtok: 15, cache_read_per_mtok: 0.3, "
        "cache_write_5m_per_mtok: 3.75, cache_write_1h_per_mtok: 6}"
    )
    cost = "{gpus_per_replica: 1, usd_per_gpu_hour: 2, prefill_tokens_per_s: 10000, decode_tokens_per_s: 1000}"  # noqa: E501

    def maas(name: str, provider: str, extra: str = "", p: str = price) -> str:
        return f"""
  {name}:
    kind: maas
    provider: {provider}
    model: m-{name}
    base_url: {fake.base_url(provider)}
    api_key_env: {KEY_VAR}
    data_classes: [public]
    context_window: 100000
    price: {p}{extra}"""

    def pool(name: str, engine: str, classes: str) -> str:
        return f"""
  {name}:
    kind: self_hosted
    engine: {engine}
    model: m-{name}
    data_classes: {classes}
    context_window: 100000
    cost: {cost}
    replicas:
      - {{endpoint: "{fake.url}/{engine}", max_inflight: 64}}"""

    targets = (
        maas("oa", "openai")
        + maas("an", "anthropic", p=anthropic_price)
        + maas("solo", "openai", "\n    timeout_ms: 400\n    first_token_timeout_ms: 400")
        + maas("resp", "openai", "\n    api: responses")
        + maas("slow", "openai")
        + pool("sh", "vllm", "[public, restricted]")
        + pool("sh2", "sglang", "[restricted]")
    )
    return f"""version: 1
targets:{targets}
scenarios:
  chat:
    owner: support-ml
    data_class: public
    max_output_tokens: 64
    routes: [{{target: oa}}]
    fallback: [an]
  solo:
    data_class: public
    max_output_tokens: 64
    routes: [{{target: solo}}]
  resp:
    data_class: public
    max_output_tokens: 64
    routes: [{{target: resp}}]
  slow:
    data_class: public
    max_output_tokens: 64
    routes: [{{target: slow}}]
  secret:
    data_class: restricted
    max_output_tokens: 64
    routes: [{{target: sh}}]
    fallback: [sh2]
  broke:
    data_class: public
    max_output_tokens: 64
    budget: {{usd_per_day: 0.000000001}}
    routes: [{{target: oa}}]
"""


class Served:
    """An aiohttp app served on a free loopback port by a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Door:
    """One front door under test: its Router (the ledger), its URL, an openai client."""

    router: turnout.Router
    url: str
    client: openai.OpenAI

    def counters(self, scenario: str) -> dict[str, dict[str, Any]]:
        rows = httpx.get(f"{self.url}/v1/turnout/counters").json()["counters"]
        return {r["target"]: r for r in rows if r["scenario"] == scenario}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as f:
        yield f


@pytest.fixture
def door(fake: FakeProviders, monkeypatch: pytest.MonkeyPatch) -> Iterator[Door]:
    """A fresh Router (ledger, breakers) and front door per test; no retry of the same target."""
    fake.reset()
    monkeypatch.setenv(KEY_VAR, "provider-key")
    router = turnout.Router(turnout.load_config_text(table(fake)))
    gateway = router.gateway(retry={"max_retries": 0})
    app = server.build_app(gateway, lambda: router.config, counters=router.counters)
    with Served(app) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="caller", max_retries=0)
        yield Door(router, s.url, client)
        client.close()


def content_deltas(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


# ------------------------------------------------------------------------------------ answers


def test_a_call_is_a_chat_completion_with_usage_cost_and_its_attempts(door: Door) -> None:
    raw = door.client.chat.completions.with_raw_response.create(model="chat", messages=PROMPT)
    c = raw.parse()
    assert c.object == "chat.completion"
    assert c.model == "chat"
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "w1 w2 w3 w4 w5 w6 w7 w8 "
    assert c.choices[0].finish_reason == "stop"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (2, 8, 10)
    assert c.usage.prompt_tokens_details.cached_tokens == 0
    extra = c.model_extra["turnout"]
    assert c.id == f"chatcmpl-{extra['decision_id']}"
    assert raw.headers["x-turnout-decision-id"] == str(extra["decision_id"])
    assert raw.headers["x-turnout-target"] == extra["target"] == "oa"
    assert (extra["provider"], extra["model"]) == ("openai", "m-oa")
    # 2 input tokens at $1/Mtok, 8 output at $2/Mtok: a decimal string, exact.
    assert extra["cost_usd"] == "0.000018"
    assert [(a["target"], a["status"], a["cost_usd"]) for a in extra["attempts"]] == [
        ("oa", "ok", "0.000018")
    ]
    assert door.counters("chat")["oa"]["cost_usd"] == "0.000018"


def test_cached_tokens_and_the_price_of_a_cache_hit(door: Door) -> None:
    # OpenAI caches a prompt of >= 1024 tokens in 128-token steps: the second call reads 1024.
    messages = [
        {"role": "system", "content": " ".join(f"s{i}" for i in range(1100))},
        {"role": "user", "content": "question"},
    ]
    door.client.chat.completions.create(model="chat", messages=messages)
    c = door.client.chat.completions.create(model="chat", messages=messages)
    assert c.usage.prompt_tokens == 1101
    assert c.usage.prompt_tokens_details.cached_tokens == 1024
    expected = (Decimal(1101 - 1024) * 1 + Decimal(1024) * Decimal("0.5") + 8 * 2) / 10**6
    assert Decimal(c.model_extra["turnout"]["cost_usd"]) == expected
    assert c.model_extra["turnout"]["usage"]["cache_read_tokens"] == 1024


def test_a_content_list_of_text_parts_is_joined(door: Door, fake: FakeProviders) -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}],
        },
    ]
    c = door.client.chat.completions.create(model="chat", messages=messages, user="u-1", stop="x")
    assert c.usage.prompt_tokens == 4
    sent = fake.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two"},
    ]
    assert sent["stop"] == ["x"]


def test_a_stream_parses_in_the_sdk_and_ends_with_usage(door: Door) -> None:
    chunks = list(
        door.client.chat.completions.create(
            model="chat", messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.model == "chat" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_deltas(chunks) == [f"w{i} " for i in range(1, 9)]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["stop"]
    assert finish[0].model_extra["turnout"]["target"] == "oa"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 8)
    assert all(c.usage is None for c in chunks[:-1])
    assert door.counters("chat")["oa"]["outcomes"] == 1


def test_the_stream_events_on_the_wire(door: Door) -> None:
    body = {"model": "chat", "messages": PROMPT, "stream": True}
    with httpx.stream("POST", f"{door.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-turnout-decision-id"].isdigit()
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == [
        f"w{i} " for i in range(1, 9)
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)  # not asked for


def test_concurrent_calls_and_streams(door: Door) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        if i % 2:
            c = await client.chat.completions.create(model="chat", messages=PROMPT, user=f"u{i}")
            return c.choices[0].message.content or ""
        stream = await client.chat.completions.create(model="chat", messages=PROMPT, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{door.url}/v1", api_key="k", max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    assert asyncio.run(run()) == ["w1 w2 w3 w4 w5 w6 w7 w8 "] * 32
    row = door.counters("chat")["oa"]
    assert (row["requests"], row["ok"]) == (32, 32)


def test_a_fallback_happens_behind_the_door(door: Door, fake: FakeProviders) -> None:
    fake.script("m-oa", [Fault.server_error()])
    c = door.client.chat.completions.create(model="chat", messages=PROMPT)
    extra = c.model_extra["turnout"]
    assert (extra["target"], extra["provider"]) == ("an", "anthropic")
    assert [(a["target"], a["status"], a["failure"]) for a in extra["attempts"]] == [
        ("oa", "error", "transient"),
        ("an", "ok", "none"),
    ]
    assert c.choices[0].message.content == "w1 w2 w3 w4 w5 w6 w7 w8 "
    rows = door.counters("chat")
    assert (rows["oa"]["error"], rows["an"]["ok"], rows["an"]["fallbacks"]) == (1, 1, 1)
    assert Decimal(extra["cost_usd"]) == sum(Decimal(r["cost_usd"]) for r in rows.values())


def test_a_stream_falls_back_before_its_first_text(door: Door, fake: FakeProviders) -> None:
    fake.script("m-oa", [Fault.overloaded()])
    chunks = list(door.client.chat.completions.create(model="chat", messages=PROMPT, stream=True))
    assert content_deltas(chunks) == [f"w{i} " for i in range(1, 9)]
    assert chunks[-1].model_extra["turnout"]["target"] == "an"


def test_a_provider_refusal_is_passed_through_as_content_filter(
    door: Door, fake: FakeProviders
) -> None:
    fake.script("m-solo", [Fault.content_filter(k=2)])
    c = door.client.chat.completions.create(model="solo", messages=PROMPT)
    assert c.choices[0].finish_reason == "content_filter"


# ------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("fault", "exception", "status", "code"),
    [
        (Fault.rate_limited(0.01), openai.RateLimitError, 429, "rate_limit_exceeded"),
        (Fault.server_error(), openai.InternalServerError, 502, "upstream_error"),
        (Fault.overloaded(), openai.InternalServerError, 502, "upstream_error"),
        (Fault.hang(3.0), openai.InternalServerError, 504, "upstream_timeout"),
        (Fault.context_window(), openai.BadRequestError, 400, "context_length_exceeded"),
        (Fault.auth(), openai.InternalServerError, 502, "upstream_auth"),
        (Fault.billing(), openai.InternalServerError, 502, "upstream_billing"),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else None,
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_each_provider_failure_is_the_sdks_own_exception(
    door: Door,
    fake: FakeProviders,
    fault: Fault,
    exception: type[openai.APIStatusError],
    status: int,
    code: str,
    stream: bool,
) -> None:
    fake.script("m-solo", [fault])
    with pytest.raises(exception) as info:
        door.client.chat.completions.create(model="solo", messages=PROMPT, stream=stream)
    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.body["message"].startswith("scenario 'solo'")
    assert fake.pending("m-solo") == 0
    if status == 429:
        assert info.value.response.headers["retry-after"] == "1"


def test_a_request_the_providers_api_cannot_express_is_a_400(door: Door) -> None:
    # The Responses API has no `stop`: the adapter refuses it (invalid_request, passed through).
    with pytest.raises(openai.BadRequestError) as info:
        door.client.chat.completions.create(model="resp", messages=PROMPT, stop=["x"])
    assert info.value.code == "upstream_invalid_request"


def test_a_spent_budget_is_a_429(door: Door) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        door.client.chat.completions.create(model="broke", messages=PROMPT)
    assert info.value.code == "budget_exhausted"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (turnout.ProviderError("x", failure="content_filter"), 400, "content_filter"),
        (turnout.ProviderError("x", failure="invalid_request"), 400, "upstream_invalid_request"),
        (turnout.ProviderError("x", failure="timeout"), 504, "upstream_timeout"),
        (turnout.BudgetExhaustedError("x"), 429, "budget_exhausted"),
        (turnout.NoEligibleTargetError("x"), 503, "no_eligible_target"),
        (turnout.SidecarUnavailableError("x"), 503, "sidecar_unavailable"),
        (turnout.UnknownScenarioError("x"), 404, "model_not_found"),
        (RuntimeError("a bug"), 500, "internal_error"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_the_error_table_for_what_the_fakes_cannot_cause(
    error: Exception, status: int, code: str
) -> None:
    """A route source that raises the error: how the door answers each (the fakes cannot make a
    content filter refuse with a 4xx, nor a sidecar go away)."""

    class Refusing:
        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            raise error

        async def aclose(self) -> None:
            pass

    config = turnout.load_config(REPO / "examples" / "routing.yaml")
    gateway: Any = Refusing()
    with (
        Served(server.build_app(gateway, lambda: config)) as s,
        openai.OpenAI(base_url=f"{s.url}/v1", api_key="k", max_retries=0) as client,
        pytest.raises(openai.APIStatusError) as info,
    ):
        client.chat.completions.create(model="agent-assist", messages=PROMPT)
    assert (info.value.status_code, info.value.code) == (status, code)
    if status == 500:
        assert "a bug" not in info.value.body["message"]  # the log has it, not the caller


def test_a_stream_cut_after_k_deltas_raises_after_exactly_k(
    door: Door, fake: FakeProviders
) -> None:
    for fault in (Fault.cut_after(3), Fault.error_mid_stream(3)):
        fake.script("m-solo", [fault])
        got: list[str] = []
        stream = door.client.chat.completions.create(model="solo", messages=PROMPT, stream=True)

        def read(stream: Any = stream, got: list[str] = got) -> None:
            for chunk in stream:
                got += content_deltas([chunk])

        with pytest.raises(openai.APIError) as info:
            read()
        assert got == ["w1 ", "w2 ", "w3 "]
        assert info.value.code == "upstream_error"
        assert "cut after it began" in info.value.message
    row = door.counters("solo")["solo"]
    assert (row["outcomes"], row["error"]) == (2, 2)


def test_a_cut_stream_never_ends_with_done(door: Door, fake: FakeProviders) -> None:
    fake.script("m-solo", [Fault.cut_after(2)])
    body = {"model": "solo", "messages": PROMPT, "stream": True}
    with httpx.stream("POST", f"{door.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line]
    assert "data: [DONE]" not in events
    last = json.loads(events[-1][6:])
    assert last["error"]["code"] == "upstream_error"
    assert last["turnout"]["failure"] == "transient"


def test_a_failure_before_the_first_delta_is_an_http_error(door: Door, fake: FakeProviders) -> None:
    fake.script("m-solo", [Fault.server_error()])
    body = {"model": "solo", "messages": PROMPT, "stream": True}
    r = httpx.post(f"{door.url}/v1/chat/completions", json=body)
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "upstream_error"
    assert [a["failure"] for a in r.json()["turnout"]["attempts"]] == ["transient"]


def test_a_caller_leaving_mid_stream_is_reported_once(door: Door, fake: FakeProviders) -> None:
    # 1000 deltas 10 ms apart: the answer would take 10 s; the caller leaves after 3.
    fake.model("m-slow", answer_tokens=1000, gap_s=0.01)
    body = {"model": "slow", "messages": PROMPT, "stream": True}
    left = time.monotonic()
    with httpx.stream("POST", f"{door.url}/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        seen = 0
        while seen < 3:
            seen += '"content":"w' in next(lines)
    row: dict[str, Any] = {}
    while time.monotonic() < left + 3 and not row.get("outcomes"):
        time.sleep(0.02)
        row = door.counters("slow").get("slow") or {}
    time.sleep(0.2)  # nothing more comes
    row = door.counters("slow")["slow"]
    assert (row["outcomes"], row["ok"], row["requests"]) == (1, 1, 1)
    assert row["latency_sum_ms"] < 3000  # closed when the caller left, not run to its end


def test_a_restricted_scenario_never_reaches_a_maas_provider(
    door: Door, fake: FakeProviders
) -> None:
    c = door.client.chat.completions.create(model="secret", messages=PROMPT)
    assert c.model_extra["turnout"]["target"] == "sh"
    fake.script("m-sh", [Fault.server_error()])
    fake.script("m-sh2", [Fault.server_error()])
    with pytest.raises(openai.InternalServerError):
        door.client.chat.completions.create(model="secret", messages=PROMPT, stream=True)
    paths = [r.path for r in fake.requests]
    assert len(paths) == 3
    assert all(p.startswith(("/vllm/", "/sglang/")) for p in paths), paths


# ------------------------------------------------------------------------------------ requests


def test_models_lists_the_scenarios(door: Door) -> None:
    models = {m.id: m for m in door.client.models.list()}
    assert set(models) == {"chat", "solo", "resp", "slow", "secret", "broke"}
    assert models["chat"].owned_by == "support-ml"
    assert door.client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        door.client.models.retrieve("gpt-4o")
    assert httpx.get(f"{door.url}/healthz").json() == {"ok": True}


def test_an_unknown_model_is_a_404(door: Door) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        door.client.chat.completions.create(model="gpt-4o", messages=PROMPT)
    assert info.value.code == "model_not_found"


def test_malformed_json_is_a_400(door: Door) -> None:
    r = httpx.post(
        f"{door.url}/v1/chat/completions",
        content=b'{"model": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{door.url}/v1/chat/completions", json=[1, 2])
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    r = httpx.get(f"{door.url}/v1/chat/completions")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    r = httpx.post(f"{door.url}/v1/completions", json={})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"top_p": 0.5}, "top_p"),
        ({"seed": 7}, "seed"),
        ({"made_up": 1}, "made_up"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options.include_obfuscation"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
            "messages[0].role",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
    ],
)
def test_what_the_gateway_cannot_honour_is_a_400_naming_it(
    door: Door, fake: FakeProviders, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "chat", "messages": PROMPT, **fields}
    r = httpx.post(f"{door.url}/v1/chat/completions", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert "not supported" in error["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"stop": [1]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"user": 5}, "user"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(door: Door, fields: dict[str, Any], param: str) -> None:
    r = httpx.post(
        f"{door.url}/v1/chat/completions", json={"model": "chat", "messages": PROMPT, **fields}
    )
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("invalid_value", param)


def test_what_asks_nothing_is_accepted(door: Door) -> None:
    c = door.client.chat.completions.create(
        model="chat",
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "refusal": None, "tool_calls": []},
            {"role": "user", "content": "c"},
        ],
        n=1,
        presence_penalty=0,
        frequency_penalty=0,
        top_p=1,
        logprobs=False,
        seed=None,
        max_completion_tokens=3,
        temperature=0.2,
    )
    assert c.choices[0].message.content == "w1 w2 w3 "
    assert c.choices[0].finish_reason == "length"


def test_a_conversation_must_end_with_the_user(door: Door) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        door.client.chat.completions.create(
            model="chat", messages=[{"role": "assistant", "content": "hi"}]
        )
    assert "end with a user message" in info.value.message


def test_an_oversized_body_is_a_413(door: Door, fake: FakeProviders) -> None:
    big = "w " * (3 * 1024 * 1024)
    body = {"model": "chat", "messages": [{"role": "user", "content": big}]}
    r = httpx.post(f"{door.url}/v1/chat/completions", json=body)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: caught while reading
        yield json.dumps(body).encode()

    r = httpx.post(
        f"{door.url}/v1/chat/completions",
        content=chunked(),
        headers={"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    assert fake.requests == []


# ------------------------------------------------------------------------------------ safety


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Origin": "https://attacker.example"}, "Origin"),
        ({"Host": "rebound.attacker.example:8080"}, "not a loopback address"),
        ({"Content-Type": "text/plain"}, "application/json"),
    ],
)
def test_without_keys_a_browser_page_or_another_host_name_is_refused(
    door: Door, fake: FakeProviders, headers: dict[str, str], why: str
) -> None:
    # What a page in the user's browser can send cross-site without a preflight (a text/plain
    # POST carries Origin), and what DNS rebinding sends (the attacker's Host).
    body = json.dumps({"model": "chat", "messages": PROMPT}).encode()
    sent = {"Content-Type": "application/json", **headers}
    r = httpx.post(f"{door.url}/v1/chat/completions", content=body, headers=sent)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden_origin"
    assert why in r.json()["error"]["message"]
    if "Content-Type" not in headers:  # a GET has no body to check
        r = httpx.get(f"{door.url}/v1/turnout/counters", headers=headers)
        assert r.status_code == 403
    assert fake.requests == []


def test_every_error_tells_client_sdks_not_to_retry_on_top(door: Door, fake: FakeProviders) -> None:
    fake.script("m-solo", [Fault.server_error()] * 10)
    r = httpx.post(f"{door.url}/v1/chat/completions", json={"model": "solo", "messages": PROMPT})
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    once = len(fake.requests)  # the gateway's own attempts for one call
    with pytest.raises(openai.InternalServerError):  # the official SDK, at its default retries
        openai.OpenAI(base_url=f"{door.url}/v1", api_key="k").chat.completions.create(
            model="solo", messages=PROMPT
        )
    assert len(fake.requests) == 2 * once  # never the SDK's 3 tries x the gateway's


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
        ('{"model": "chat", "max_tokens": 9223372036854775808, "messages": []}', "invalid_value"),
        (
            '{"model": "chat", "messages": [{"role": ["user"], "content": "x"}]}',
            "unsupported_parameter",
        ),
        ('{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}', "invalid_value"),
        (
            '{"model": "chat", "\\udc00": 1, "messages": [{"role": "user", "content": "x"}]}',
            "unsupported_parameter",
        ),
    ],
)
def test_hostile_json_is_a_400_never_a_500(door: Door, body: str, code: str) -> None:
    r = httpx.post(
        f"{door.url}/v1/chat/completions",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, code), r.text


@pytest.fixture
def keyed(fake: FakeProviders, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    fake.reset()
    monkeypatch.setenv(KEY_VAR, "provider-key")
    router = turnout.Router(turnout.load_config_text(table(fake)))
    app = server.build_app(router.gateway(), lambda: router.config, api_keys={"sk-right", "sk-2"})
    with Served(app) as s:
        yield s.url


def test_callers_need_a_right_bearer_key(keyed: str) -> None:
    for key in ("sk-wrong", "sk-righ", "sk-right2"):
        with (
            openai.OpenAI(base_url=f"{keyed}/v1", api_key=key, max_retries=0) as client,
            pytest.raises(openai.AuthenticationError) as info,
        ):
            client.chat.completions.create(model="chat", messages=PROMPT)
        assert info.value.code == "invalid_api_key"
    r = httpx.get(f"{keyed}/v1/models")
    assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
    assert httpx.get(f"{keyed}/v1/models", headers={"Authorization": "sk-right"}).status_code == 401
    assert httpx.get(f"{keyed}/healthz").status_code == 200
    for key in ("sk-right", "sk-2"):
        with openai.OpenAI(base_url=f"{keyed}/v1", api_key=key, max_retries=0) as client:
            c = client.chat.completions.create(model="chat", messages=PROMPT)
        assert c.choices[0].message.content


def test_serve_takes_an_ipv6_loopback_as_urls_write_it(fake: FakeProviders) -> None:
    router = turnout.Router(turnout.load_config_text(table(fake)))
    app = server.build_app(router.gateway(), lambda: router.config, counters=router.counters)
    lines: list[str] = []

    async def main() -> int:
        stop = asyncio.Event()
        serving = asyncio.create_task(
            server.serve(app, "[::1]", 0, announce=lines.append, stop=stop)
        )
        while not lines and not serving.done():
            await asyncio.sleep(0.01)
        url = lines[0].split("serving ")[1].removesuffix("/v1")
        async with httpx.AsyncClient() as client:
            status = (await client.get(f"{url}/healthz")).status_code
        stop.set()
        await serving
        return status

    assert asyncio.run(main()) == 200
    assert lines[0].startswith("turnout gateway: serving http://[::1]:")


def test_a_non_loopback_bind_needs_keys() -> None:
    with pytest.raises(ValueError, match="not loopback"):
        server.check_bind("0.0.0.0", ())
    server.check_bind("0.0.0.0", {"k"})
    server.check_bind("127.0.0.1", ())
    server.check_bind("::1", ())
    server.check_bind("localhost", ())
    result = CliRunner().invoke(
        cli_main, ["gateway", str(REPO / "examples" / "routing.yaml"), "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2
    assert "refusing to serve 0.0.0.0" in result.output


def test_the_keys_file_is_private_and_read_line_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys"
    path.write_text("# callers\nsk-a\n\n  sk-b  \n")
    path.chmod(0o644)
    with pytest.raises(ValueError, match="open to other users"):
        server.load_api_keys(None, str(path))
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert server.load_api_keys(None, str(path)) == {"sk-a", "sk-b"}
    monkeypatch.setenv("TURNOUT_TEST_CALLER_KEY", "sk-c")
    assert server.load_api_keys("TURNOUT_TEST_CALLER_KEY", str(path)) == {"sk-a", "sk-b", "sk-c"}
    with pytest.raises(ValueError, match="TURNOUT_TEST_UNSET"):
        server.load_api_keys("TURNOUT_TEST_UNSET", None)
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    empty.chmod(0o600)
    with pytest.raises(ValueError, match=r"is empty|holds no key"):
        server.load_api_keys(None, str(empty))


# ------------------------------------------------------------------------------------ /v1/messages


@pytest.fixture
def claude(door: Door) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=door.url, api_key="caller", max_retries=0) as client:
        yield client


def test_messages_answer_in_anthropics_shape(
    door: Door, claude: anthropic.Anthropic, fake: FakeProviders
) -> None:
    m = claude.messages.create(
        model="chat",
        max_tokens=5,
        system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        stop_sequences=["x"],
        metadata={"user_id": "u-1"},
    )
    extra = m.model_extra["turnout"]
    assert (m.type, m.role, m.model, m.id) == (
        "message",
        "assistant",
        "chat",
        f"msg_{extra['decision_id']}",
    )
    assert [b.text for b in m.content] == ["w1 w2 w3 w4 w5 "]
    assert m.stop_reason == "max_tokens"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (4, 5)
    assert m.usage.cache_read_input_tokens == 0
    assert extra["target"] == "oa"
    assert fake.requests[-1].body["messages"][0] == {"role": "system", "content": "be brief"}


def test_messages_stream_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="chat", max_tokens=64, messages=PROMPT) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == [f"w{i} " for i in range(1, 9)]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 8)


def test_messages_cut_stream_raises_after_exactly_k(
    claude: anthropic.Anthropic, fake: FakeProviders
) -> None:
    fake.script("m-solo", [Fault.cut_after(3)])
    got: list[str] = []

    def read() -> None:
        with claude.messages.stream(model="solo", max_tokens=64, messages=PROMPT) as stream:
            got.extend(stream.text_stream)

    with pytest.raises(anthropic.APIStatusError) as info:
        read()
    assert got == ["w1 ", "w2 ", "w3 "]
    assert info.value.body["error"]["type"] == "api_error"
    assert info.value.body["turnout"]["code"] == "upstream_error"


@pytest.mark.parametrize(
    ("call", "exception", "status"),
    [
        ({"model": "nope"}, anthropic.NotFoundError, 404),
        ({"tools": [{"name": "f", "input_schema": {}}]}, anthropic.BadRequestError, 400),
        ({"extra_body": {"temperature": 1.5}}, anthropic.BadRequestError, 400),
        ({"model": "solo", "fault": Fault.rate_limited(0.01)}, anthropic.RateLimitError, 429),
        ({"model": "solo", "fault": Fault.server_error()}, anthropic.InternalServerError, 502),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
                        ],
                    }
                ]
            },
            anthropic.BadRequestError,
            400,
        ),
    ],
)
def test_messages_errors_are_anthropics_own_exceptions(
    claude: anthropic.Anthropic,
    fake: FakeProviders,
    call: dict[str, Any],
    exception: type[anthropic.APIStatusError],
    status: int,
) -> None:
    call = {"model": "chat", "max_tokens": 64, "messages": PROMPT, **call}
    fault = call.pop("fault", None)
    if fault is not None:
        fake.script("m-solo", [fault])
    with pytest.raises(exception) as info:
        claude.messages.create(**call)
    assert info.value.status_code == status
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["message"]


def test_messages_take_the_callers_key_as_x_api_key(keyed: str) -> None:
    with anthropic.Anthropic(base_url=keyed, api_key="sk-right", max_retries=0) as client:
        m = client.messages.create(model="chat", max_tokens=8, messages=PROMPT)
        assert m.content[0].text
    with (
        anthropic.Anthropic(base_url=keyed, api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError) as info,
    ):
        client.messages.create(model="chat", max_tokens=8, messages=PROMPT)
    assert info.value.body["error"]["type"] == "authentication_error"


# ------------------------------------------------------------------------------------ the command


def test_the_turnout_gateway_command(fake: FakeProviders, tmp_path: Path) -> None:
    fake.reset()
    config = tmp_path / "routing.yaml"
    config.write_text(table(fake))
    keys = tmp_path / "keys"
    keys.write_text("sk-cli\n")
    keys.chmod(0o600)
    env = {**os.environ, KEY_VAR: "provider-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout.cli", "gateway", str(config), "--port", "0",
         "--api-keys-file", str(keys)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        m = re.fullmatch(r"turnout gateway: serving (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert m, line
        with openai.OpenAI(base_url=m.group(1), api_key="sk-cli", max_retries=0) as client:
            c = client.chat.completions.create(model="chat", messages=PROMPT)
            chunks = list(
                client.chat.completions.create(model="chat", messages=PROMPT, stream=True)
            )
        assert c.choices[0].message.content == "w1 w2 w3 w4 w5 w6 w7 w8 "
        assert len(content_deltas(chunks)) == 8
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_with_a_sidecar_the_reports_go_there(
    fake: FakeProviders,
    monkeypatch: pytest.MonkeyPatch,
    workdir: Path,
    shm_name: str,
    sidecars: list[Sidecar],
) -> None:
    fake.reset()
    monkeypatch.setenv(KEY_VAR, "provider-key")
    config = workdir / "routing.yaml"
    config.write_text(table(fake))
    sidecar = Sidecar(workdir, config, shm_name)
    sidecars.append(sidecar)
    sidecar.start()
    gateway, config_of, counters = server.open_source(
        str(config), sidecar=sidecar.endpoint, shm=shm_name
    )
    assert counters is None
    fake.script("m-oa", [Fault.auth()])  # fails over at once
    with (
        Served(server.build_app(gateway, config_of)) as door,
        openai.OpenAI(base_url=f"{door.url}/v1", api_key="k", max_retries=0) as client,
    ):
        c = client.chat.completions.create(model="chat", messages=PROMPT)
        chunks = list(client.chat.completions.create(model="chat", messages=PROMPT, stream=True))
        assert httpx.get(f"{door.url}/v1/turnout/counters").status_code == 404
    assert c.model_extra["turnout"]["target"] == "an"
    assert len(content_deltas(chunks)) == 8
    with sidecar.client() as sc:
        deadline = time.monotonic() + 5
        while True:
            rows = {r["target"]: r for r in sc.stats()["counters"] if r["scenario"] == "chat"}
            if rows["oa"]["outcomes"] + rows["an"]["outcomes"] == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert (rows["oa"]["error"], rows["oa"]["ok"], rows["an"]["ok"]) == (1, 1, 1)
    assert Decimal(rows["an"]["cost_usd"]) == Decimal(c.model_extra["turnout"]["cost_usd"])


# ------------------------------------------------------------------------------------ the docs


def test_the_docs_list_every_error_as_the_table_says() -> None:
    text = (REPO / "docs" / "gateway.md").read_text()
    assert "## The HTTP front door" in text
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| `(\w+)` \| `(\w+)` \|", text, re.M)
    documented = {reason: (int(status), type_, code) for reason, status, type_, code in rows}
    assert documented == {reason: (e.status, e.type, e.code) for reason, e in server.ERRORS.items()}
