"""The fake providers speak the real wire formats: proven with the providers' official SDKs.

Each SDK parses the fake's replies with its own types, reads usage back exactly (cache numbers
computed by hand from the fake's rules), and raises its own exception class for each fault. The
SDKs' own retries are off (max_retries=0 / one attempt) so a fault is seen as served.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from turnout.pricing import price_usage
from turnout.testing import FakeProviders, Fault, count_tokens

KEY = "sk-test"


@pytest.fixture(scope="module")
def server():
    with FakeProviders(api_keys=[KEY], cache_ttl_s={"openai": 30.0}) as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    return server


def oai(fake: FakeProviders, provider: str = "openai", key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url(provider), api_key=key, max_retries=0, timeout=10)


def claude(fake: FakeProviders, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=fake.base_url("anthropic"), api_key=key, max_retries=0, timeout=10
    )


def gem(fake: FakeProviders, key: str = KEY) -> genai.Client:
    opts = genai_types.HttpOptions(
        base_url=fake.base_url("gemini"),
        api_version="v1beta",
        retry_options=genai_types.HttpRetryOptions(attempts=1),
        timeout=10_000,
    )
    return genai.Client(api_key=key, http_options=opts)


def drain(items, into: list) -> None:
    """Collect a stream's items until it ends or raises."""
    for item in items:
        into.append(item)


def words(n: int, tag: str = "p") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- answers and usage --------------------------------------------------------------------------


def test_token_count_is_whitespace_words():
    assert count_tokens("  a b\tc\nd  ") == 4
    assert count_tokens("") == 0


def test_openai_chat_answer_usage_and_finish(fake):
    c = oai(fake)
    r = c.chat.completions.create(
        model="gpt-a", messages=[{"role": "system", "content": "be brief"}, *user("one two three")]
    )
    assert r.choices[0].message.content == "w1 w2 w3 w4 w5 w6 w7 w8 "
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 8, 13)
    assert r.usage.prompt_tokens_details.cached_tokens == 0

    r = c.chat.completions.create(model="gpt-a", messages=user("x"), max_completion_tokens=3)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("w1 w2 w3 ", "length")
    assert r.usage.completion_tokens == 3
    body = fake.requests[-1].body
    assert body["max_completion_tokens"] == 3


def test_openai_chat_stream_one_word_per_delta_and_final_usage_chunk(fake):
    c = oai(fake)
    chunks = list(
        c.chat.completions.create(
            model="gpt-a",
            messages=user("a b c"),
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=4,
        )
    )
    deltas = [
        ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content
    ]
    assert deltas == ["w1 ", "w2 ", "w3 ", "w4 "]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        3,
        4,
        7,
    )
    assert all(ch.usage is None for ch in chunks[:-1])

    # Without include_usage no chunk carries usage; the stream still ends with [DONE].
    raw = httpx.post(
        fake.base_url("openai") + "/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "gpt-a", "messages": user("a"), "stream": True},
    )
    events = [line[6:] for line in raw.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])
    assert raw.headers["content-type"].startswith("text/event-stream")


def test_openai_prompt_cache_1024_minimum_128_increments_and_cache_key(fake):
    c = oai(fake)
    long = words(1500)

    def cached(text: str, **kw) -> int:
        r = c.chat.completions.create(model="gpt-cache", messages=user(text), **kw)
        assert r.usage.prompt_tokens == count_tokens(text)
        return r.usage.prompt_tokens_details.cached_tokens

    assert cached(long) == 0
    assert cached(long) == 1408  # 1024 + 3 * 128 <= 1500 < 1024 + 4 * 128
    assert cached(long + " " + words(200, "q")) == 1408  # the shared prefix
    assert cached(words(1000)) == 0  # under 1024: never cached
    assert cached(words(1000)) == 0
    assert cached(long, prompt_cache_key="tenant-a") == 0  # another key, another cache
    assert cached(long, prompt_cache_key="tenant-a") == 1408


def test_prompt_cache_expires_after_its_ttl():
    with FakeProviders(cache_ttl_s={"openai": 0.3}) as fake:
        c = oai(fake)
        long = words(1100)
        c.chat.completions.create(model="m", messages=user(long))
        r = c.chat.completions.create(model="m", messages=user(long))
        assert r.usage.prompt_tokens_details.cached_tokens == 1024
        time.sleep(0.5)
        r = c.chat.completions.create(model="m", messages=user(long))
        assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_deepseek_hit_and_miss_tokens_in_64_token_units(fake):
    c = oai(fake, "deepseek")
    text = words(200)
    first = c.chat.completions.create(model="deepseek-chat", messages=user(text)).usage.model_extra
    assert (first["prompt_cache_hit_tokens"], first["prompt_cache_miss_tokens"]) == (0, 200)
    second = c.chat.completions.create(model="deepseek-chat", messages=user(text)).usage
    assert (
        second.model_extra["prompt_cache_hit_tokens"],
        second.model_extra["prompt_cache_miss_tokens"],
    ) == (192, 8)
    assert second.prompt_tokens == 200


def test_vllm_and_sglang_report_a_repeated_prefix_never_the_whole_prompt(fake):
    text = words(100)
    for provider, expected in (("vllm", 96), ("sglang", 99)):
        c = oai(fake, provider)
        assert (
            c.chat.completions.create(
                model="llama", messages=user(text)
            ).usage.prompt_tokens_details.cached_tokens
            == 0
        )
        r = c.chat.completions.create(model="llama", messages=user(text))
        assert r.usage.prompt_tokens_details.cached_tokens == expected, provider


def test_openrouter_always_ends_a_stream_with_usage(fake):
    chunks = list(
        oai(fake, "openrouter").chat.completions.create(
            model="x/y", messages=user("a b"), stream=True
        )
    )
    assert chunks[-1].usage.prompt_tokens == 2
    assert chunks[-1].usage.completion_tokens == 8


def test_responses_api_non_stream_and_stream(fake):
    c = oai(fake)
    r = c.responses.create(
        model="gpt-r", instructions="sys word", input="hello there", max_output_tokens=3
    )
    assert r.output_text == "w1 w2 w3 "
    assert (r.status, r.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (4, 3, 7)

    with c.responses.stream(model="gpt-r", input=[{"role": "user", "content": "a b c"}]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 8
    assert final.output_text == "w1 w2 w3 w4 w5 w6 w7 w8 "
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 8)


def test_anthropic_message_and_stream_usage(fake):
    c = claude(fake)
    m = c.messages.create(
        model="claude-a", max_tokens=5, system="be brief", messages=user("hi there")
    )
    assert isinstance(m, anthropic.types.Message)
    assert m.content[0].text == "w1 w2 w3 w4 w5 "
    assert m.stop_reason == "max_tokens"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (4, 5)

    with c.messages.stream(model="claude-a", max_tokens=100, messages=user("hi")) as s:
        assert list(s.text_stream) == [f"w{i} " for i in range(1, 9)]
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (1, 8)
    rec = fake.requests[-1]
    assert (rec.provider, rec.api, rec.stream) == ("anthropic", "messages", True)


def test_anthropic_caches_only_at_breakpoints_with_the_ttl_split(fake):
    c = claude(fake)
    system = [
        {
            "type": "text",
            "text": words(1200, "s"),
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]

    def ask(history: str, question: str, stream: bool = False) -> anthropic.types.Usage:
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": history, "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": question},
        ]
        if stream:
            with c.messages.stream(
                model="claude-c", max_tokens=50, system=system, messages=messages
            ) as s:
                return s.get_final_message().usage
        return c.messages.create(
            model="claude-c", max_tokens=50, system=system, messages=messages
        ).usage

    hist = words(300, "h")
    u = ask(hist, "first question")  # 1200 + 300 + 1 + 2 tokens
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens, u.input_tokens) == (
        0,
        1500,
        3,
    )
    assert (
        u.cache_creation.ephemeral_1h_input_tokens,
        u.cache_creation.ephemeral_5m_input_tokens,
    ) == (1200, 300)

    u = ask(hist, "second question here", stream=True)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens, u.input_tokens) == (
        1500,
        0,
        4,
    )

    u = ask(words(50, "x"), "third")  # the system block still hits; the new history is written
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens, u.input_tokens) == (
        1200,
        50,
        2,
    )
    assert u.cache_creation.ephemeral_5m_input_tokens == 50

    # No breakpoint: no caching however long the prompt.
    m = c.messages.create(model="claude-c", max_tokens=5, messages=user(words(2000)))
    assert (
        m.usage.cache_read_input_tokens,
        m.usage.cache_creation_input_tokens,
        m.usage.input_tokens,
    ) == (0, 0, 2000)


def test_gemini_generate_and_stream_usage_and_implicit_cache(fake):
    c = gem(fake)
    cfg = genai_types.GenerateContentConfig(system_instruction="sys", max_output_tokens=100)
    r = c.models.generate_content(model="gemini-a", contents="hello world", config=cfg)
    assert r.text == "w1 w2 w3 w4 w5 w6 w7 w8 "
    assert r.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert (r.usage_metadata.prompt_token_count, r.usage_metadata.candidates_token_count) == (3, 8)
    assert r.usage_metadata.cached_content_token_count is None

    chunks = list(
        c.models.generate_content_stream(
            model="gemini-a",
            contents="hello",
            config=genai_types.GenerateContentConfig(max_output_tokens=2),
        )
    )
    assert [ch.text for ch in chunks[:-1]] == ["w1 ", "w2 "]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert chunks[-1].usage_metadata.candidates_token_count == 2
    assert fake.requests[-1].path.endswith(":streamGenerateContent?alt=sse")

    long = words(1100)
    assert (
        c.models.generate_content(
            model="gemini-a", contents=long
        ).usage_metadata.cached_content_token_count
        is None
    )
    u = c.models.generate_content(model="gemini-a", contents=long).usage_metadata
    assert (u.prompt_token_count, u.cached_content_token_count) == (1100, 1100)


def sse_payloads(text: str) -> list[dict]:
    """The JSON `data:` payloads of an SSE body (CRLF or LF separated), [DONE] left out."""
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def test_native_usage_is_what_turnouts_normalizer_reads(fake, example_config):
    """The fake's usage (whole responses and stream events) prices through turnout's core with the
    token split computed by hand: fake and normalizer agree on each provider's shape."""
    long = words(1500)
    oh = {"Authorization": f"Bearer {KEY}"}

    def post(provider: str, path: str, body: dict, headers: dict) -> httpx.Response:
        r = httpx.post(fake.base_url(provider) + path, json=body, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return r

    chat = {"model": "gpt-4.1-mini", "messages": user(long), "stream": True}
    chat["stream_options"] = {"include_usage": True}
    post("openai", "/chat/completions", chat, oh)
    events = sse_payloads(post("openai", "/chat/completions", chat, oh).text)
    cost = price_usage(example_config, "gpt-4.1-mini", events)
    assert (cost.uncached_input_tokens, cost.cache_read_tokens, cost.output_tokens) == (92, 1408, 8)

    ds = {"model": "deepseek-chat", "messages": user(words(200))}
    post("deepseek", "/chat/completions", ds, oh)
    cost = price_usage(
        example_config, "deepseek-chat", post("deepseek", "/chat/completions", ds, oh).json()
    )
    assert (cost.uncached_input_tokens, cost.cache_read_tokens, cost.output_tokens) == (8, 192, 8)

    ah = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    system = [{"type": "text", "text": long, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    msg = {"model": "claude-sonnet-4", "max_tokens": 4, "system": system, "messages": user("q")}
    first = sse_payloads(post("anthropic", "/v1/messages", {**msg, "stream": True}, ah).text)
    cost = price_usage(example_config, "claude-sonnet-4", first)
    assert (cost.uncached_input_tokens, cost.cache_write_1h_tokens, cost.output_tokens) == (
        1,
        1500,
        4,
    )
    cost = price_usage(
        example_config, "claude-sonnet-4", post("anthropic", "/v1/messages", msg, ah).json()
    )
    assert (cost.uncached_input_tokens, cost.cache_read_tokens, cost.cache_write_1h_tokens) == (
        1,
        1500,
        0,
    )

    gh = {"x-goog-api-key": KEY}
    gbody = {"contents": [{"role": "user", "parts": [{"text": long}]}]}
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    post("gemini", path, gbody, gh)
    chunks = sse_payloads(post("gemini", path, gbody, gh).text)
    cost = price_usage(example_config, "gemini-2.5-pro", chunks)
    assert (cost.uncached_input_tokens, cost.cache_read_tokens, cost.output_tokens) == (0, 1500, 8)

    resp = {"model": "gpt-4.1-mini", "input": "a b c", "stream": True}
    events = sse_payloads(post("openai", "/responses", resp, oh).text)
    done = [e["response"] for e in events if e["type"] == "response.completed"]
    cost = price_usage(example_config, "gpt-4.1-mini", done[0])
    assert (cost.uncached_input_tokens, cost.output_tokens) == (3, 8)


# ---- faults, as each SDK sees them --------------------------------------------------------------


def test_openai_faults_map_to_the_sdk_exceptions(fake):
    c = oai(fake)
    fake.script(
        "gpt-f",
        [
            Fault.rate_limited(2),
            Fault.overloaded(),
            Fault.server_error(),
            Fault.context_window(),
            Fault.billing(),
            Fault.auth(),
            Fault.content_filter(1),
        ],
    )
    ask = lambda: c.chat.completions.create(model="gpt-f", messages=user("a b"), max_tokens=10)  # noqa: E731
    with pytest.raises(openai.RateLimitError) as e:
        ask()
    assert e.value.response.headers["retry-after"] == "2"
    assert e.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as e:
        ask()
    assert e.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as e:
        ask()
    assert e.value.status_code == 500
    with pytest.raises(openai.BadRequestError) as e:
        ask()
    assert e.value.code == "context_length_exceeded"
    assert "maximum context length" in e.value.message
    with pytest.raises(openai.RateLimitError) as e:
        ask()
    assert e.value.code == "insufficient_quota"
    with pytest.raises(openai.AuthenticationError):
        ask()
    r = ask()
    assert (r.choices[0].finish_reason, r.choices[0].message.content) == ("content_filter", "w1 ")
    assert ask().choices[0].finish_reason == "stop"  # the script is used up: plain success
    assert [q.fault for q in fake.requests] == [
        "rate_limited", "overloaded", "server_error", "context_window",
        "billing", "auth", "content_filter", "ok",
    ]  # fmt: skip


def test_openai_cut_and_error_mid_stream(fake):
    c = oai(fake)
    fake.script("gpt-s", [Fault.cut_after(2), Fault.error_mid_stream(3), Fault.cut_after(0)])
    got: list[str] = []
    chunks = c.chat.completions.create(model="gpt-s", messages=user("a"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        drain((ch.choices[0].delta.content for ch in chunks), got)
    assert got == ["", "w1 ", "w2 "]
    got = []
    chunks = c.chat.completions.create(model="gpt-s", messages=user("a"), stream=True)
    with pytest.raises(openai.APIError, match="server had an error"):
        drain((ch.choices[0].delta.content for ch in chunks), got)
    assert got == ["", "w1 ", "w2 ", "w3 "]
    # A non-stream request cut: headers, then half a body.
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="gpt-s", messages=user("a"))


def test_dialect_context_window_errors_in_their_own_words(fake):
    expected = {
        "openai": "This model's maximum context length is 100 tokens. However, you requested "
        "140 tokens (90 in the messages, 50 in the completion)",
        "vllm": "This model's maximum context length is 100 tokens. However, you requested 140",
        "deepseek": "This model's maximum context length is 100 tokens.",
        "sglang": "Requested token count exceeds the model's maximum context length of 100 tokens.",
        "openrouter": "This endpoint's maximum context length is 100 tokens. However, you "
        "requested about 140 tokens",
    }
    fake.model("small", context_window=100)
    for provider, message in expected.items():
        c = oai(fake, provider)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="small", messages=user(words(90)), max_tokens=50)
        assert e.value.status_code == 400
        assert message in e.value.message, provider
        # Within the window it answers.
        assert (
            c.chat.completions.create(
                model="small", messages=user(words(90)), max_tokens=10
            ).usage.prompt_tokens
            == 90
        )
    assert fake.requests[0].fault == "context_window"


def test_dialect_billing_is_402_for_deepseek_and_openrouter(fake):
    for provider in ("deepseek", "openrouter"):
        fake.script("bill", [Fault.billing()])
        with pytest.raises(openai.APIStatusError) as e:
            oai(fake, provider).chat.completions.create(model="bill", messages=user("a"))
        assert e.value.status_code == 402, provider


def test_anthropic_faults_map_to_the_sdk_exceptions(fake):
    c = claude(fake)
    fake.script(
        "claude-f",
        [
            Fault.rate_limited(3),
            Fault.overloaded(),
            Fault.server_error(),
            Fault.context_window(),
            Fault.billing(),
            Fault.auth(),
            Fault.content_filter(2),
        ],
    )
    ask = lambda: c.messages.create(model="claude-f", max_tokens=10, messages=user(words(10)))  # noqa: E731
    with pytest.raises(anthropic.RateLimitError) as e:
        ask()
    assert e.value.response.headers["retry-after"] == "3"
    with pytest.raises(anthropic.OverloadedError) as e:
        ask()
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.InternalServerError) as e:
        ask()
    assert (e.value.status_code, e.value.body["error"]["type"]) == (500, "api_error")
    with pytest.raises(
        anthropic.BadRequestError, match=r"prompt is too long: 10 tokens > 9 maximum"
    ):
        ask()
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        ask()
    with pytest.raises(anthropic.AuthenticationError):
        ask()
    m = ask()
    assert (m.stop_reason, m.content[0].text, m.usage.output_tokens) == ("refusal", "w1 w2 ", 2)


def test_anthropic_error_event_and_cut_stream(fake):
    c = claude(fake)
    fake.script("claude-s", [Fault.error_mid_stream(2), Fault.cut_after(1)])
    got = []
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        c.messages.stream(model="claude-s", max_tokens=50, messages=user("a")) as s,
    ):
        got.extend(s.text_stream)
    assert got == ["w1 ", "w2 "]
    got = []
    with (
        pytest.raises(Exception, match="incomplete chunked read"),
        c.messages.stream(model="claude-s", max_tokens=50, messages=user("a")) as s,
    ):
        got.extend(s.text_stream)
    assert got == ["w1 "]


def test_anthropic_context_window_by_itself(fake):
    fake.model("claude-small", context_window=100)
    c = claude(fake)
    with pytest.raises(
        anthropic.BadRequestError, match=r"prompt is too long: 120 tokens > 100 maximum"
    ):
        c.messages.create(model="claude-small", max_tokens=10, messages=user(words(120)))
    with pytest.raises(anthropic.BadRequestError, match=r"exceed context limit: 95 \+ 10 > 100"):
        c.messages.create(model="claude-small", max_tokens=10, messages=user(words(95)))


def test_gemini_faults_map_to_the_sdk_exceptions(fake):
    c = gem(fake)
    fake.script(
        "gemini-f",
        [
            Fault.rate_limited(7),
            Fault.overloaded(),
            Fault.server_error(),
            Fault.context_window(),
            Fault.billing(),
            Fault.auth(),
            Fault.content_filter(1),
            Fault.content_filter(prompt_blocked=True),
        ],
    )
    ask = lambda: c.models.generate_content(model="gemini-f", contents=words(10))  # noqa: E731
    with pytest.raises(genai_errors.ClientError) as e:
        ask()
    assert (e.value.code, e.value.status) == (429, "RESOURCE_EXHAUSTED")
    retry = [d for d in e.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
    assert retry[0]["retryDelay"] == "7s"
    with pytest.raises(genai_errors.ServerError) as e:
        ask()
    assert (e.value.code, e.value.status) == (503, "UNAVAILABLE")
    with pytest.raises(genai_errors.ServerError) as e:
        ask()
    assert (e.value.code, e.value.status) == (500, "INTERNAL")
    with pytest.raises(genai_errors.ClientError) as e:
        ask()
    assert (
        e.value.message
        == "The input token count (10) exceeds the maximum number of tokens allowed (9)."
    )
    with pytest.raises(genai_errors.ClientError) as e:
        ask()
    assert (e.value.code, e.value.status) == (400, "FAILED_PRECONDITION")
    with pytest.raises(genai_errors.ClientError) as e:
        ask()
    assert (e.value.code, e.value.status) == (403, "PERMISSION_DENIED")
    r = ask()
    assert r.candidates[0].finish_reason == genai_types.FinishReason.SAFETY
    r = ask()
    assert r.prompt_feedback.block_reason == genai_types.BlockedReason.SAFETY
    assert not r.candidates


def test_gemini_error_mid_stream_and_cut_stream(fake):
    c = gem(fake)
    fake.script("gemini-s", [Fault.error_mid_stream(2), Fault.cut_after(2)])
    got: list[str] = []
    chunks = c.models.generate_content_stream(model="gemini-s", contents="a")
    with pytest.raises(genai_errors.ServerError) as e:
        drain((ch.text for ch in chunks), got)
    assert (got, e.value.status) == (["w1 ", "w2 "], "UNAVAILABLE")
    got = []
    chunks = c.models.generate_content_stream(model="gemini-s", contents="a")
    with pytest.raises(Exception, match="incomplete chunked read"):
        drain((ch.text for ch in chunks), got)
    assert got == ["w1 ", "w2 "]


def test_hang_sends_no_byte(fake):
    fake.script("gpt-h", [Fault.hang(30), Fault.hang(0.2)])
    url = fake.base_url("openai") + "/chat/completions"
    body = {"model": "gpt-h", "messages": user("a"), "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=body, headers=headers, timeout=httpx.Timeout(5, read=0.3))
    assert time.monotonic() - t0 < 5
    # A short hang ends with the connection closed, still without a status line.
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=body, headers=headers, timeout=5)
    assert [r.fault for r in fake.requests] == ["hang", "hang"]


def test_cut_non_stream_body_is_truncated(fake):
    fake.script("gpt-t", [Fault.cut_after(0)])
    with httpx.stream(
        "POST",
        fake.base_url("openai") + "/chat/completions",
        json={"model": "gpt-t", "messages": user("a")},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            r.read()


def test_time_to_first_token_and_gap(fake):
    fake.model("gpt-slow", ttft_s=0.3, gap_s=0.05)
    c = oai(fake)
    t0 = time.monotonic()
    stamps = []
    for ch in c.chat.completions.create(
        model="gpt-slow", messages=user("a"), stream=True, max_tokens=3
    ):
        if ch.choices and ch.choices[0].delta.content:
            stamps.append(time.monotonic() - t0)
    assert len(stamps) == 3
    assert stamps[0] >= 0.3
    assert stamps[2] - stamps[0] >= 0.09
    # A scripted ok overrides the model's timing.
    fake.script("gpt-slow", [Fault.ok(ttft_s=0.0, gap_s=0.0, answer_tokens=2)])
    t0 = time.monotonic()
    r = c.chat.completions.create(model="gpt-slow", messages=user("a"))
    assert time.monotonic() - t0 < 0.25
    assert r.choices[0].message.content == "w1 w2 "


def test_time_to_first_token_jitter_spreads_answers_around_the_ttft(fake):
    fake.model("gpt-jitter", ttft_s=0.1, ttft_jitter_s=0.09)  # uniform in [10, 190] ms
    c = oai(fake)
    took = []
    for _ in range(12):
        t0 = time.monotonic()
        c.chat.completions.create(model="gpt-jitter", messages=user("a"))
        took.append(time.monotonic() - t0)
    assert min(took) >= 0.01
    assert max(took) < 0.19 + 0.1  # slack for a loaded machine
    # A fixed TTFT would put all twelve within a few ms (tens on a loaded machine); twelve uniform
    # draws over 180 ms span less than 60 ms with a probability of ~1e-4.
    assert max(took) - min(took) > 0.06, took
    # A scripted ok's own TTFT is exact.
    fake.script("gpt-jitter", [Fault.ok(ttft_s=0.0)])
    t0 = time.monotonic()
    c.chat.completions.create(model="gpt-jitter", messages=user("a"))
    assert time.monotonic() - t0 < 0.01 + 0.05


# ---- auth, the record, bad input ----------------------------------------------------------------


def test_each_provider_checks_its_own_auth_header(fake):
    with pytest.raises(openai.AuthenticationError):
        oai(fake, key="wrong").chat.completions.create(model="m", messages=user("a"))
    with pytest.raises(openai.AuthenticationError):
        oai(fake, "vllm", key="wrong").chat.completions.create(model="m", messages=user("a"))
    with pytest.raises(anthropic.AuthenticationError):
        claude(fake, key="wrong").messages.create(model="m", max_tokens=5, messages=user("a"))
    g = gem(fake, key="wrong")  # held: a dropped genai.Client closes its HTTP client
    with pytest.raises(genai_errors.ClientError) as e:
        g.models.generate_content(model="m", contents="a")
    assert e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    r = httpx.post(
        fake.base_url("gemini") + "/v1beta/models/m:generateContent",
        json={"contents": [{"parts": [{"text": "a"}]}]},
    )
    assert (r.status_code, r.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    r = httpx.post(
        fake.base_url("anthropic") + "/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "m", "max_tokens": 5, "messages": user("a")},
    )
    assert r.status_code == 200
    assert r.json()["usage"]["input_tokens"] == 1
    assert [q.fault for q in fake.requests] == ["unauthorized"] * 5 + ["ok"]


def test_the_record_of_requests(fake):
    oai(fake, "deepseek").chat.completions.create(model="ds", messages=user("a b"), max_tokens=4)
    g = gem(fake)
    g.models.generate_content(model="gemini-r", contents="x")
    ds, gr = fake.requests
    assert (ds.provider, ds.api, ds.path, ds.model, ds.stream, ds.fault) == (
        "deepseek", "chat_completions", "/deepseek/v1/chat/completions", "ds", False, "ok",
    )  # fmt: skip
    assert ds.headers["authorization"] == f"Bearer {KEY}"
    assert ds.body["max_tokens"] == 4
    assert (gr.provider, gr.model, gr.api) == ("gemini", "gemini-r", "generate_content")
    assert gr.headers["x-goog-api-key"] == KEY
    assert gr.body["contents"][0]["parts"][0]["text"] == "x"


def test_bad_requests_get_the_providers_400(fake):
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(fake.base_url("openai") + "/chat/completions", headers=h, content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(fake.base_url("openai") + "/chat/completions", headers=h, json={"model": "m"})
    assert (r.status_code, r.json()["error"]["message"]) == (
        400,
        "'messages' must be a non-empty array",
    )
    ah = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    r = httpx.post(
        fake.base_url("anthropic") + "/v1/messages",
        headers=ah,
        json={"model": "m", "messages": user("a")},
    )
    assert (r.status_code, r.json()["error"]["message"]) == (400, "max_tokens: Field required")
    r = httpx.post(
        fake.base_url("anthropic") + "/v1/messages",
        headers={"x-api-key": KEY},
        json={"model": "m", "max_tokens": 3, "messages": user("a")},
    )
    assert (r.status_code, r.json()["error"]["message"]) == (
        400,
        "anthropic-version: header is required",
    )
    gh = {"x-goog-api-key": KEY}
    r = httpx.post(
        fake.base_url("gemini") + "/v1beta/models/m:generateContent", headers=gh, json={}
    )
    assert (r.status_code, r.json()["error"]["status"]) == (400, "INVALID_ARGUMENT")
    r = httpx.post(fake.base_url("gemini") + "/v1beta/models/m:countTokens", headers=gh, json={})
    assert r.status_code == 404


def test_bad_scripts_and_settings_are_refused(fake):
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        Fault.cut_after(-1)
    with pytest.raises(TypeError, match="Fault values"):
        fake.script("m", ["rate_limited"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_json({"kind": "ok", "colour": "red"})
    with pytest.raises(ValueError, match="unknown provider"):
        fake.base_url("mistral")
    with pytest.raises(ValueError, match="unknown cache_ttl_s"):
        FakeProviders(cache_ttl_s={"opnai": 1.0})
    with pytest.raises(RuntimeError, match="not running"):
        _ = FakeProviders().port
    for bad_jitter in (-0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="ttft_jitter_s"):
            FakeProviders(ttft_jitter_s=bad_jitter)
        with pytest.raises(ValueError, match="ttft_jitter_s"):
            fake.model("m", ttft_jitter_s=bad_jitter)
    for bad in (
        b"[1]",
        b"{",
        json.dumps({"faults": []}).encode(),
        json.dumps({"model": "m", "faults": [{"kind": "x"}]}).encode(),
    ):
        r = httpx.post(fake.url + "/_fake/script", content=bad)
        assert r.status_code == 400, bad
    r = httpx.post(fake.url + "/_fake/model", json={"name": "m", "ttft_jitter_s": -1})
    assert r.status_code == 400
    assert "ttft_jitter_s" in r.text
    assert fake.pending("m") == 0
    assert Fault.from_json(Fault.rate_limited(2).to_json()) == Fault.rate_limited(2)


# ---- the two ways to run ------------------------------------------------------------------------


def test_async_in_process():
    async def main() -> None:
        async with FakeProviders() as fake:
            fake.script("gpt-x", [Fault.rate_limited(1)])
            c = openai.AsyncOpenAI(base_url=fake.base_url("openai"), api_key="k", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                await c.chat.completions.create(model="gpt-x", messages=user("a"))
            results = await asyncio.gather(
                *(c.chat.completions.create(model="gpt-x", messages=user("a b")) for _ in range(16))
            )
            assert {r.usage.total_tokens for r in results} == {10}
            await c.close()
            assert len(fake.requests) == 17

    asyncio.run(main())


def test_as_a_process_scripted_over_http(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "turnout.testing.fake_providers",
            "--port",
            "0",
            "--answer-tokens",
            "3",
            "--ttft-jitter-ms",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        base = f"http://127.0.0.1:{info['port']}"
        r = httpx.post(
            base + "/_fake/script", json={"model": "m", "faults": [{"kind": "overloaded"}]}
        )
        assert r.json() == {"ok": True, "pending": 1}
        assert (
            httpx.post(
                base + "/_fake/model", json={"name": "m", "context_window": 1000}
            ).status_code
            == 200
        )
        c = claude_at(base)
        with pytest.raises(anthropic.OverloadedError):
            c.messages.create(model="m", max_tokens=10, messages=user("a"))
        assert (
            c.messages.create(model="m", max_tokens=10, messages=user("a")).content[0].text
            == "w1 w2 w3 "
        )
        recs = httpx.get(base + "/_fake/requests").json()
        assert [(q["provider"], q["fault"]) for q in recs] == [
            ("anthropic", "overloaded"),
            ("anthropic", "ok"),
        ]
        assert httpx.post(base + "/_fake/reset").json() == {"ok": True}
        assert httpx.get(base + "/_fake/requests").json() == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()


def claude_at(base: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base + "/anthropic", api_key="k", max_retries=0, timeout=10)
