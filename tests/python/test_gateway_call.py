"""The worker SDK's call (Router.call / acall / streams) against fake providers on real loopback
HTTP: each provider's wire format, each fault class, the commit point, exact money, the ledger,
the data boundary and the keys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from turnout.gateway.call import Gateway
from turnout.gateway.wire import Response
from turnout.testing import FakeProviders, Fault

KEY_ENV = "TURNOUT_TEST_PROVIDER_KEY"
KEY = "sk-test-1"

#: name -> (provider, api, the fake's base URL name, model)
MAAS = {
    "oa": ("openai", "chat_completions", "openai", "oa-m"),
    "oar": ("openai", "responses", "openai", "oar-m"),
    "an": ("anthropic", "messages", "anthropic", "an-m"),
    "ge": ("gemini", "generate_content", "gemini", "ge-m"),
    "ds": ("deepseek", "chat_completions", "deepseek", "ds-m"),
    "orr": ("openrouter", "chat_completions", "openrouter", "or-m"),
}
POOLS = {"vl": ("vllm", "vl-m"), "sg": ("sglang", "sg-m")}
ALL = [*MAAS, *POOLS]
#: Prices (USD per Mtok) of every MaaS target: input, output, cache read, 5m write, 1h write.
PRICE = (Decimal("1.00"), Decimal("4.00"), Decimal("0.10"), Decimal("1.25"), Decimal("2.00"))

MESSAGES = [
    {"role": "system", "content": "you summarize tickets"},
    {"role": "user", "content": "my printer is on fire"},
]


def table(fake: FakeProviders, *, first_token_ms: int = 600, timeout_ms: int = 1500) -> str:
    """Every provider shape as a target; scenario s-<t> routes to t and falls back to a pool
    (the vLLM pool falls back to the SGLang one); `secret` is restricted to the pools."""
    p = PRICE
    price = (
        f"{{input_per_mtok: {p[0]}, output_per_mtok: {p[1]}, cache_read_per_mtok: {p[2]}, "
        f"cache_write_5m_per_mtok: {p[3]}, cache_write_1h_per_mtok: {p[4]}}}"
    )
    lines = ["version: 1", "data_classes: [public, restricted]", "targets:"]
    for name, (provider, api, base, model) in MAAS.items():
        lines += [
            f"  {name}:",
            "    kind: maas",
            f"    provider: {provider}",
            f"    api: {api}",
            f"    model: {model}",
            f'    base_url: "{fake.base_url(base)}"',
            f"    api_key_env: {KEY_ENV}",
            "    data_classes: [public]",
            "    context_window: 100000",
            f"    price: {price}",
            f"    first_token_timeout_ms: {first_token_ms}",
            f"    timeout_ms: {timeout_ms}",
            # Failures are what these tests are about: a breaker must not hide a target.
            "    breaker: {consecutive_failures: 1000, min_requests: 1000}",
        ]
    for name, (engine, model) in POOLS.items():
        endpoint = fake.base_url(engine).removesuffix("/v1")
        lines += [
            f"  {name}:",
            "    kind: self_hosted",
            f"    engine: {engine}",
            f"    model: {model}",
            "    data_classes: [public, restricted]",
            "    context_window: 100000",
            "    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2}",
            f"    replicas: [{{endpoint: '{endpoint}', max_inflight: 64}}]",
            f"    first_token_timeout_ms: {first_token_ms}",
            f"    timeout_ms: {timeout_ms}",
            "    breaker: {consecutive_failures: 1000, min_requests: 1000}",
        ]
    lines.append("scenarios:")
    for name in ALL:
        fallback = "sg" if name == "vl" else "vl"
        lines += [
            f"  s-{name}:",
            "    data_class: public",
            f"    routes: [{{target: {name}}}]",
            f"    fallback: [{fallback}]",
        ]
    lines += [
        "  secret:",
        "    data_class: restricted",
        "    routes: [{target: vl}]",
        "    fallback: [sg]",
    ]
    return "\n".join(lines) + "\n"


def model_of(target: str) -> str:
    return MAAS[target][3] if target in MAAS else POOLS[target][1]


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    os.environ[KEY_ENV] = KEY
    # The pools take no key; the MaaS fakes check theirs.
    keys = {p: KEY for p in ("openai", "anthropic", "gemini", "deepseek", "openrouter")}
    with FakeProviders(api_keys=keys) as f:
        yield f
    os.environ.pop(KEY_ENV, None)


@pytest.fixture
def router(fake: FakeProviders) -> Iterator[turnout.Router]:
    r = turnout.Router(turnout.load_config_text(table(fake)))
    yield r
    r.close()
    for gw in GATEWAYS:
        gw.close()
    GATEWAYS.clear()


GATEWAYS: list[Gateway] = []


def ledger(router: turnout.Router) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in router.counters() if r["outcomes"]}


def gateway(router: turnout.Router, **options: Any) -> Gateway:
    """A Gateway the router fixture closes."""
    gw = router.gateway(**options)
    GATEWAYS.append(gw)
    return gw


def fast_retry(router: turnout.Router) -> Gateway:
    return gateway(router, retry={"base_backoff_ms": 10, "max_backoff_ms": 20})


# ---- one call per provider shape ------------------------------------------------------------


@pytest.mark.parametrize("target", ALL)
@pytest.mark.parametrize("stream", [False, True])
def test_each_provider_shape_answers_and_is_priced_exactly(
    fake: FakeProviders, router: turnout.Router, target: str, stream: bool
) -> None:
    gw = gateway(router)
    got = gw.call(f"s-{target}", MESSAGES, stream=stream, max_tokens=5)
    if stream:
        text = "".join(got)
        resp = got.response
        assert resp is not None
        assert text == resp.text
    else:
        resp = got
    assert resp.text == "w1 w2 w3 w4 w5 "
    assert resp.finish_reason == "length"  # max_tokens ended it
    assert resp.target == target
    assert [a.status for a in resp.attempts] == ["ok"]
    assert resp.attempts[0].reported
    # 3 + 5 prompt words (the fake's tokens), 5 answer words: priced by hand.
    assert resp.usage["output_tokens"] == 5
    assert resp.usage["uncached_input_tokens"] + resp.usage["cache_read_tokens"] == 8
    if target in MAAS:
        want = (8 * PRICE[0] + 5 * PRICE[1]) / 1_000_000
        assert resp.cost_usd == want
    else:
        assert resp.cost_usd == 0  # a pool's tokens are not priced per call (GPU time is)
    row = ledger(router)[target]
    assert row["outcomes"] == 1
    assert row["ok"] == 1
    assert row["cost_usd"] == resp.cost_usd
    assert row["output_tokens"] == 5
    # Each provider got its own wire format, with its own key.
    [req] = fake.requests
    assert req.model == model_of(target)
    assert req.stream is stream


def test_anthropic_cache_breakpoints_write_then_read_at_their_own_prices(
    fake: FakeProviders, router: turnout.Router
) -> None:
    system = " ".join(f"rule{i}" for i in range(1500))  # a cacheable prefix (>= 1024 tokens)
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "hello there"}]
    first = router.call("s-an", msgs, max_tokens=4)
    second = router.call("s-an", msgs, max_tokens=4)
    assert first.usage["cache_write_5m_tokens"] == 1500
    assert second.usage["cache_read_tokens"] == 1500
    assert second.usage["uncached_input_tokens"] == 2
    inp, out, read, write5, _ = PRICE
    assert first.cost_usd == (1500 * write5 + 2 * inp + 4 * out) / 1_000_000
    assert second.cost_usd == (1500 * read + 2 * inp + 4 * out) / 1_000_000
    body = fake.requests[0].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert ledger(router)["an"]["cost_usd"] == first.cost_usd + second.cost_usd


def test_the_decisions_cache_key_goes_to_openai_as_prompt_cache_key(
    fake: FakeProviders, router: turnout.Router
) -> None:
    system = " ".join(f"rule{i}" for i in range(1100))
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]
    first = router.call("s-oa", msgs, max_tokens=2)
    second = router.call("s-oa", msgs, max_tokens=2)
    key = fake.requests[0].body["prompt_cache_key"]
    assert key == fake.requests[1].body["prompt_cache_key"]
    assert len(key) == 16
    assert first.usage["cache_read_tokens"] == 0
    assert second.usage["cache_read_tokens"] == 1024  # 128-token steps of a 1101-token prompt


# ---- the failure matrix: each fault x each provider shape -------------------------------------

#: fault -> (how to script it, what the SDK must do: "retried" = served by the same target after a
#: retry, "failed_over" = served by the fallback, "passed" = the refusal returned, "cut" = a stream
#: ends with StreamInterruptedError).
FAULTS: dict[str, Any] = {
    "rate_limited": Fault.rate_limited(0.02),
    "overloaded": Fault.overloaded(),
    "server_error": Fault.server_error(),
    "hang": Fault.hang(5),
    "context_window": Fault.context_window(),
    "content_filter": Fault.content_filter(),
    "auth": Fault.auth(),
    "billing": Fault.billing(),
    "cut_after_2": Fault.cut_after(2),
    "cut_before_text": Fault.cut_after(0),
    "error_mid_stream": Fault.error_mid_stream(2),
}
EXPECT = {
    "rate_limited": ("retried", "retried"),
    "overloaded": ("retried", "retried"),
    "server_error": ("retried", "retried"),
    "hang": ("failed_over", "failed_over"),
    "context_window": ("failed_over", "failed_over"),
    "content_filter": ("passed", "passed"),
    "auth": ("failed_over", "failed_over"),
    "billing": ("failed_over", "failed_over"),
    # A whole reply cut mid-body is a server fault: retried; a stream with text is committed.
    "cut_after_2": ("retried", "cut"),
    "cut_before_text": ("retried", "retried"),
    "error_mid_stream": ("retried", "cut"),
}
#: What each provider shape's own wire says for a refusal and what the ledger counts.
FAILURE_OF = {
    "rate_limited": "rate_limited",
    "overloaded": "transient",
    "server_error": "transient",
    "hang": "timeout",
    "context_window": "context_overflow",
    "content_filter": "content_filter",
    "auth": "auth",
    "billing": "billing",
    "cut_after_2": "transient",
    "cut_before_text": "transient",
    "error_mid_stream": "transient",
}


def outcome(gw: Gateway, scenario: str, stream: bool) -> tuple[str, list[Any], Response | None]:
    """What the SDK did: its verdict word, its attempts, its response."""
    try:
        got = gw.call(scenario, MESSAGES, stream=stream, max_tokens=6)
        if stream:
            deltas = list(got)
            resp = got.response
            assert resp is not None
            assert "".join(deltas) == resp.text
        else:
            resp = got
    except turnout.StreamInterruptedError as e:
        return "cut", e.attempts, e.response
    except turnout.ProviderError as e:
        return f"error:{e.failure}", e.attempts, None
    first = resp.attempts[0].target
    if resp.finish_reason == "content_filter":
        return "passed", resp.attempts, resp
    if resp.target != first:
        return "failed_over", resp.attempts, resp
    return ("retried" if len(resp.attempts) > 1 else "served"), resp.attempts, resp


#: A self-hosted pool has no account to run dry: billing is a managed API's fault only.
CELLS = [(f, t) for f in FAULTS for t in ALL if not (f == "billing" and t in POOLS)]


@pytest.mark.parametrize(("fault", "target"), CELLS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_failure_matrix(
    fake: FakeProviders, router: turnout.Router, fault: str, target: str, stream: bool
) -> None:
    fake.script(model_of(target), [FAULTS[fault]])
    gw = fast_retry(router)
    did, attempts, resp = outcome(gw, f"s-{target}", stream)
    print(f"MATRIX {fault} {target} {'stream' if stream else 'whole'} -> {did}")
    assert did == EXPECT[fault][stream], [(a.target, a.failure, a.error) for a in attempts]
    assert attempts[0].target == target
    assert attempts[0].failure == FAILURE_OF[fault], attempts[0].error
    # Every attempt is metered; each target's last attempt is in the ledger, once.
    rows = ledger(router)
    reported = [a for a in attempts if a.reported]
    assert {a.target for a in reported} == set(rows)
    for t, row in rows.items():
        mine = [a for a in reported if a.target == t]
        assert row["outcomes"] == len(mine) == 1
        assert row["cost_usd"] == sum((a.cost_usd or 0) for a in mine)
        assert row[mine[0].status] == 1
    assert sum(r["cost_usd"] for r in rows.values()) == sum((a.cost_usd or 0) for a in attempts)
    if did == "cut":
        assert resp is not None
        assert resp.text == "w1 w2 "  # exactly what reached the caller
        assert attempts[-1].status == "error"
        assert attempts[-1].committed
        assert len(attempts) == 1  # never another target once text was shown
    if did == "failed_over":
        assert attempts[-1].target == ("sg" if target == "vl" else "vl")
        assert attempts[-1].status == "ok"


def test_a_retry_after_is_honoured(fake: FakeProviders, router: turnout.Router) -> None:
    fake.script("oa-m", [Fault.rate_limited(0.3)])
    resp = router.call("s-oa", MESSAGES)
    assert [a.failure for a in resp.attempts] == ["rate_limited", "none"]
    assert resp.attempts[0].retry_after_ms == 300
    assert resp.latency_ms >= 300


def test_a_retry_after_beyond_the_cap_fails_over_at_once(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("oa-m", [Fault.rate_limited(120)])  # longer than max_retry_after_ms (60 s)
    resp = router.call("s-oa", MESSAGES)
    assert [(a.target, a.failure) for a in resp.attempts] == [
        ("oa", "rate_limited"),
        ("vl", "none"),
    ]
    assert resp.latency_ms < 5000


def test_transient_failures_retry_up_to_the_limit_then_fail_over(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("oa-m", [Fault.server_error()] * 3)
    resp = fast_retry(router).call("s-oa", MESSAGES)
    assert [(a.target, a.failure, a.reported) for a in resp.attempts] == [
        ("oa", "transient", False),
        ("oa", "transient", False),
        ("oa", "transient", True),  # the target's last attempt: the ledger's outcome
        ("vl", "none", True),
    ]
    rows = ledger(router)
    assert rows["oa"]["error"] == 1
    assert rows["vl"]["ok"] == 1
    assert rows["vl"]["fallbacks"] == 1


def test_every_candidate_failing_raises_with_every_attempt(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("oa-m", [Fault.auth()])
    fake.script("vl-m", [Fault.context_window()])
    with pytest.raises(turnout.ProviderError) as e:
        router.call("s-oa", MESSAGES)
    assert e.value.failure == "context_overflow"
    assert [(a.target, a.failure) for a in e.value.attempts] == [
        ("oa", "auth"),
        ("vl", "context_overflow"),
    ]
    assert "2 attempt(s) failed" in str(e.value)
    rows = ledger(router)
    assert rows["oa"]["error"] == 1
    assert rows["vl"]["context_overflow"] == 1


def test_a_prompt_refused_by_a_content_filter_is_passed_through_not_failed_over(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("ge-m", [Fault.content_filter(prompt_blocked=True)])
    resp = router.call("s-ge", MESSAGES)
    assert resp.finish_reason == "content_filter"
    assert resp.target == "ge"
    assert len(resp.attempts) == 1
    assert ledger(router)["ge"]["content_filter"] == 1
    assert len(fake.requests) == 1


# ---- the commit point, asyncio ----------------------------------------------------------------


def test_async_call_and_stream_walk_the_same_policy(
    fake: FakeProviders, router: turnout.Router
) -> None:
    async def main() -> tuple[Response, list[str], Response | None, str]:
        fake.script("an-m", [Fault.overloaded(), Fault.context_window()])
        gw = fast_retry(router)
        async with gw:
            return await steps(gw)

    async def steps(gw: Gateway) -> tuple[Response, list[str], Response | None, str]:
        whole = await gw.acall("s-an", MESSAGES, max_tokens=3)
        stream = await gw.acall("s-ds", MESSAGES, stream=True, max_tokens=3)
        deltas = [d async for d in stream]
        fake.script("oa-m", [Fault.cut_after(1)])
        cut = await gw.acall("s-oa", MESSAGES, stream=True, max_tokens=3)
        seen: list[str] = []

        async def read() -> None:
            async for d in cut:
                seen.append(d)

        with pytest.raises(turnout.StreamInterruptedError) as e:
            await read()
        assert e.value.response is not None
        return whole, deltas, stream.response, "".join(seen)

    whole, deltas, streamed, seen = asyncio.run(main())
    assert [(a.target, a.failure) for a in whole.attempts] == [
        ("an", "transient"),
        ("an", "context_overflow"),
        ("vl", "none"),
    ]
    assert "".join(deltas) == "w1 w2 w3 "
    assert streamed is not None
    assert streamed.target == "ds"
    assert seen == "w1 "
    rows = ledger(router)
    assert rows["oa"]["error"] == 1  # the cut stream, reported as the failure it is
    assert rows["ds"]["ok"] == 1


def test_a_hang_before_the_first_byte_is_a_timeout_in_asyncio_too(
    fake: FakeProviders, router: turnout.Router
) -> None:
    async def main() -> Response:
        fake.script("ge-m", [Fault.hang(10)])
        try:
            return await router.acall("s-ge", MESSAGES, max_tokens=2)
        finally:
            await router.aclose()

    resp = asyncio.run(main())
    assert [(a.target, a.failure) for a in resp.attempts] == [("ge", "timeout"), ("vl", "none")]
    assert 1400 <= resp.attempts[0].latency_ms < 4000  # the target's 1.5 s timeout
    assert ledger(router)["ge"]["timeout"] == 1


def test_a_stream_with_no_first_token_in_time_fails_over(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("oa-m", [Fault.ok(ttft_s=3)])
    stream = router.call("s-oa", MESSAGES, stream=True, max_tokens=2)
    assert "".join(stream) == "w1 w2 "
    resp = stream.response
    assert resp is not None
    assert [(a.target, a.failure) for a in resp.attempts] == [("oa", "timeout"), ("vl", "none")]
    assert resp.attempts[0].latency_ms < 1500  # the first-token budget (600 ms), not the whole


def test_a_stream_the_caller_closes_is_reported_once(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("oa-m", [Fault.ok(gap_s=0.3)])  # the rest, usage last, still to come
    stream = router.call("s-oa", MESSAGES, stream=True, max_tokens=6)
    it = iter(stream)
    assert next(it) == "w1 "
    stream.close()
    row = ledger(router)["oa"]
    assert row["outcomes"] == 1
    assert row["ok"] == 1
    assert row["unpriced"] == 1  # the usage comes last: never seen


# ---- boundaries, keys, requests ---------------------------------------------------------------


def test_a_restricted_scenario_never_reaches_a_maas_provider(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("vl-m", [Fault.auth()])
    fake.script("sg-m", [Fault.server_error()] * 3)
    with pytest.raises(turnout.ProviderError):
        fast_retry(router).call("secret", MESSAGES)
    resp = router.call("secret", MESSAGES)
    assert resp.target == "vl"
    providers = {r.provider for r in fake.requests}
    assert providers <= {"vllm", "sglang"}, providers
    assert len(fake.requests) == 5


def test_a_missing_key_fails_over_without_sending_the_request(
    fake: FakeProviders, router: turnout.Router
) -> None:
    os.environ.pop(KEY_ENV)
    resp = router.call("s-oa", MESSAGES)
    assert resp.target == "vl"
    assert resp.attempts[0].failure == "auth"
    assert f"{KEY_ENV} is not set" in (resp.attempts[0].error or "")
    assert {r.provider for r in fake.requests} == {"vllm"}
    assert ledger(router)["oa"]["error"] == 1


def test_a_key_file_must_be_private(fake: FakeProviders, tmp_path: Path) -> None:
    key = tmp_path / "openai.key"
    key.write_text(KEY + "\n")
    key.chmod(0o644)
    text = table(fake).replace(
        f"    api_key_env: {KEY_ENV}\n", "    api_key_file: openai.key\n", 1
    )  # the first target: oa
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    router = turnout.Router(turnout.load_config(path))
    with router.gateway() as gw:
        resp = gw.call("s-oa", MESSAGES)
        assert resp.target == "vl"
        assert "open to other users" in (resp.attempts[0].error or "")
        key.chmod(0o600)
        resp = gw.call("s-oa", MESSAGES)  # a key that failed is looked up again
        assert resp.target == "oa"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "must end with a user message"),
        ([{"role": "assistant", "content": "hi"}], "must end with a user message"),
        ([{"role": "tool", "content": "x"}], "role must be system, user or assistant"),
        ([{"role": "user", "content": 3}], "content must be text"),
    ],
)
def test_a_malformed_request_is_refused_before_routing(
    router: turnout.Router, messages: list[Any], message: str
) -> None:
    with pytest.raises(turnout.InvalidArgumentError, match=message):
        router.call("s-oa", messages)
    assert router.pending_decisions == 0


def test_an_unknown_scenario_and_a_bad_retry_policy_are_clear(router: turnout.Router) -> None:
    with pytest.raises(turnout.UnknownScenarioError):
        router.call("nope", MESSAGES)
    with pytest.raises(turnout.InvalidArgumentError, match="unknown keys"):
        gateway(router, retry={"max_retry": 1})
    with pytest.raises(turnout.InvalidArgumentError, match="jitter"):
        gateway(router, retry={"jitter": 2.0})


def test_a_stop_sequence_the_responses_api_cannot_express_is_passed_through(
    fake: FakeProviders, router: turnout.Router
) -> None:
    with pytest.raises(turnout.ProviderError) as e:
        router.call("s-oar", MESSAGES, stop=["\n"])
    assert e.value.failure == "invalid_request"
    assert "no stop sequences" in str(e.value)
    assert not fake.requests


def test_a_call_cancelled_by_its_caller_is_reported_once_as_a_timeout(
    fake: FakeProviders, router: turnout.Router
) -> None:
    async def main() -> None:
        fake.script("oa-m", [Fault.hang(10)])
        fake.script("an-m", [Fault.rate_limited(5)])  # the policy would wait 5 s to retry
        async with fast_retry(router) as gw:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(gw.acall("s-oa", MESSAGES), 0.3)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(gw.acall("s-an", MESSAGES), 0.3)
            fake.script("ge-m", [Fault.ok(ttft_s=5)])
            stream = await gw.acall("s-ge", MESSAGES, stream=True)

            async def read() -> None:
                async for _ in stream:
                    pass

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(read(), 0.3)

    asyncio.run(main())
    rows = ledger(router)
    assert rows["oa"]["timeout"] == 1  # cancelled while it waited for the reply
    assert rows["an"]["rate_limited"] == 1  # cancelled while it waited to retry: that 429
    assert rows["ge"]["timeout"] == 1  # cancelled before the stream's first text
    assert sum(r["outcomes"] for r in rows.values()) == 3


# ---- from the adversarial review ----------------------------------------------------------------


def test_a_target_that_has_no_such_model_or_path_fails_over(fake: FakeProviders) -> None:
    text = table(fake).replace(fake.base_url("deepseek"), fake.url + "/nowhere/v1", 1)
    with turnout.Router(turnout.load_config_text(text)).gateway() as gw:
        resp = gw.call("s-ds", MESSAGES)
    assert [(a.target, a.failure, a.http_status) for a in resp.attempts] == [
        ("ds", "not_found", 404),
        ("vl", "none", None),
    ]


def test_the_connection_pool_is_as_large_as_asked(router: turnout.Router) -> None:
    async def limit() -> int:
        async with gateway(router, max_connections=300) as gw:
            return (await gw._session()).connector.limit  # type: ignore[union-attr]

    assert asyncio.run(limit()) == 300
    pool = gateway(router, max_connections=7)._sync_http()._transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == 7
    assert pool._max_keepalive_connections == 7


def test_an_answer_the_ledger_will_not_count_is_still_returned(fake: FakeProviders) -> None:
    router = turnout.Router(turnout.load_config_text(table(fake)), decision_ttl_s=0.5)
    fake.script("oa-m", [Fault.ok(ttft_s=0.7)])  # the decision expires before its report
    with router.gateway() as gw:
        resp = gw.call("s-oa", MESSAGES)
    assert resp.text
    assert not resp.attempts[0].reported
    assert "not counted" in (resp.attempts[0].error or "")


def test_a_key_a_header_cannot_carry_is_refused_and_never_shown(
    fake: FakeProviders, router: turnout.Router
) -> None:
    os.environ[KEY_ENV] = "sk-secret-line1\nsk-secret-line2"
    resp = router.call("s-an", MESSAGES)
    assert resp.target == "vl"
    assert resp.attempts[0].failure == "auth"
    assert "sk-secret" not in (resp.attempts[0].error or "")
    assert {r.provider for r in fake.requests} == {"vllm"}


def test_a_stream_never_read_holds_no_decision(router: turnout.Router) -> None:
    stream = router.call("s-oa", MESSAGES, stream=True)
    assert stream.decision is None
    del stream
    assert router.pending_decisions == 0
    assert not ledger(router)
    with pytest.raises(turnout.UnknownScenarioError):
        router.call("nope", MESSAGES, stream=True)  # a scenario is still checked at once


@pytest.mark.parametrize("asynchronous", [False, True], ids=["blocking", "asyncio"])
def test_a_pause_between_tokens_and_a_slow_caller_are_not_the_providers_timeout(
    fake: FakeProviders, router: turnout.Router, asynchronous: bool
) -> None:
    # 0.8 s between tokens: longer than the first token's budget (0.6 s), within the whole (1.5 s)
    # counted while waiting for the provider; the caller takes 0.5 s per delta on top.
    fake.script("oa-m", [Fault.ok(gap_s=0.8, answer_tokens=2)])

    async def aread() -> str:
        async with gateway(router) as gw:
            text = ""
            async for d in await gw.acall("s-oa", MESSAGES, stream=True):
                text += d
                await asyncio.sleep(0.5)
            return text

    if asynchronous:
        text = asyncio.run(aread())
    else:
        text = ""
        for d in router.call("s-oa", MESSAGES, stream=True):
            text += d
            time.sleep(0.5)
    assert text == "w1 w2 "
    row = ledger(router)["oa"]
    assert (row["ok"], row["timeout"], row["error"]) == (1, 0, 0)


def test_a_retry_after_too_large_for_a_number_fails_over(
    fake: FakeProviders, router: turnout.Router
) -> None:
    fake.script("oa-m", [Fault.rate_limited(1e300)])
    resp = router.call("s-oa", MESSAGES)
    assert [(a.target, a.failure) for a in resp.attempts] == [
        ("oa", "rate_limited"),
        ("vl", "none"),
    ]
    assert resp.attempts[0].retry_after_ms == 604_800_000


def test_a_loop_per_call_leaves_no_connection_open(
    fake: FakeProviders, router: turnout.Router
) -> None:
    def sockets() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile (the listing's own fd)
                n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        return n

    asyncio.run(router.acall("s-oa", MESSAGES))  # warm: the fake's own sockets, the pools
    before = sockets()
    for _ in range(10):
        asyncio.run(router.acall("s-oa", MESSAGES))
    assert sockets() <= before + 1  # each loop's session closed as its loop ended


def test_text_a_provider_cannot_write_as_utf8_is_repaired() -> None:
    from turnout.gateway.call import _text

    assert _text("smile \ud83d\ude00 lone \ud800") == "smile \U0001f600 lone \ufffd"
    assert _text("plain") == "plain"


def test_the_sdks_words_are_importable_from_the_package() -> None:
    import turnout.gateway as gw

    assert gw.Gateway is Gateway
    assert gw.Response is Response
    assert {"Attempt", "AsyncStream", "Message", "Stream"} <= set(gw.__all__)
    with pytest.raises(AttributeError):
        _ = gw.Nope
