"""The provider adapters (turnout.gateway.providers) and the SSE decoder (turnout.gateway.sse),
against payloads shaped as each provider's docs show them (and validated by its official SDK's
own types), fed through the SSE decoder in awkward chunkings; usage checked with turnout's own
usage normalizer and pricing."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from email.utils import formatdate
from typing import Any

import anthropic.types
import openai.types.chat
import openai.types.responses
import pydantic
import pytest
from google.genai import types as genai

from turnout import _core
from turnout.gateway.providers import api_for, default_api
from turnout.gateway.providers._common import retry_after_ms
from turnout.gateway.sse import SseParser
from turnout.gateway.wire import (
    Api,
    AttemptFailed,
    ChatRequest,
    Message,
    Parsed,
    SseEvent,
    StreamDecoder,
    TargetSpec,
)

# ---- shared fixtures ------------------------------------------------------------------------

CONFIG_YAML = """
version: 1
targets:
  oa: {kind: maas, provider: openai, model: gpt-4.1-mini, data_classes: [public],
       context_window: 1000000,
       price: {input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}}
  an: {kind: maas, provider: anthropic, model: claude-sonnet-4-20250514, data_classes: [public],
       context_window: 200000,
       price: {input_per_mtok: 3.00, output_per_mtok: 15.00, cache_read_per_mtok: 0.30,
               cache_write_5m_per_mtok: 3.75, cache_write_1h_per_mtok: 6.00}}
  ge: {kind: maas, provider: gemini, model: gemini-2.5-pro, data_classes: [public],
       context_window: 1048576,
       price: {input_per_mtok: 1.25, output_per_mtok: 10.00, cache_read_per_mtok: 0.125}}
  ds: {kind: maas, provider: deepseek, model: deepseek-chat, data_classes: [public],
       context_window: 128000,
       price: {input_per_mtok: 0.28, cache_read_per_mtok: 0.028, output_per_mtok: 0.42}}
  orr: {kind: maas, provider: openrouter, model: openai/gpt-4o-mini, data_classes: [public],
        context_window: 128000, price: {input_per_mtok: 0.15, output_per_mtok: 0.60}}
  vl:
    kind: self_hosted
    engine: vllm
    model: meta-llama/Llama-3.3-70B-Instruct
    data_classes: [public]
    context_window: 131072
    cost: {gpus_per_replica: 2, usd_per_gpu_hour: 2.99, prefill_tokens_per_s: 12000,
           decode_tokens_per_s: 2400}
    replicas: [{endpoint: "http://127.0.0.1:8001", max_inflight: 64}]
  sg:
    kind: self_hosted
    engine: sglang
    model: Qwen/Qwen2.5-7B-Instruct
    data_classes: [public]
    context_window: 32768
    cost: {gpus_per_replica: 1, usd_per_gpu_hour: 2.00, prefill_tokens_per_s: 12000,
           decode_tokens_per_s: 2400}
    replicas: [{endpoint: "http://127.0.0.1:8002", max_inflight: 64}]
scenarios:
  s: {data_class: public, routes: [{target: oa, weight: 100}]}
"""

#: The config target of each provider.
TARGET_OF = {
    "openai": "oa",
    "anthropic": "an",
    "gemini": "ge",
    "deepseek": "ds",
    "openrouter": "orr",
    "vllm": "vl",
    "sglang": "sg",
}


@pytest.fixture(scope="module")
def config() -> Any:
    return _core.load_config_text(CONFIG_YAML)


def priced(config: Any, provider: str, usage: Any) -> dict[str, Any]:
    """What turnout's own normalizer and pricing make of a Parsed.usage."""
    return _core._price_usage(config, TARGET_OF[provider], usage, None, False)


def tokens(cost: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    return (
        cost["uncached_input_tokens"],
        cost["cache_read_tokens"],
        cost["cache_write_5m_tokens"],
        cost["cache_write_1h_tokens"],
        cost["output_tokens"],
    )


CONVERSATION = (
    Message("system", "You are terse."),
    Message("user", "Hi"),
    Message("assistant", "Hello."),
    Message("user", "Capital of France?"),
)

REQUEST = ChatRequest(
    messages=CONVERSATION,
    max_tokens=256,
    temperature=0.2,
    stop=("END",),
    prompt_cache_key="kb-7",
    cache_ttl="1h",
)

BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "deepseek": "https://api.deepseek.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "vllm": "http://10.0.0.5:8000/v1",
    "sglang": "http://10.0.0.6:30000/v1",
}

MODELS = {
    "openai": "gpt-4.1-mini",
    "anthropic": "claude-sonnet-4-20250514",
    "gemini": "gemini-2.5-pro",
    "deepseek": "deepseek-chat",
    "openrouter": "openai/gpt-4o-mini",
    "vllm": "meta-llama/Llama-3.3-70B-Instruct",
    "sglang": "Qwen/Qwen2.5-7B-Instruct",
}


def target(provider: str, api: str | None = None, key: str | None = "sk-test") -> TargetSpec:
    return TargetSpec(
        name=TARGET_OF[provider],
        provider=provider,
        api=api or default_api(provider),
        model=MODELS[provider],
        base_url=BASE_URLS[provider],
        api_key=key,
    )


def sse(events: Sequence[tuple[str | None, Any]], newline: str = "\n") -> bytes:
    """A stream as a server writes it: `event:` (when named), `data:`, a blank line each."""
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        lines = ([f"event: {name}"] if name else []) + [f"data: {text}"]
        out.append(newline.join(lines) + newline + newline)
    return "".join(out).encode()


def chunked(raw: bytes, size: int) -> list[bytes]:
    return [raw[i : i + size] for i in range(0, len(raw), size)]


CHUNKINGS = [1, 2, 7, 64, 1 << 20]


def run_stream(api: Api, raw: bytes, size: int) -> tuple[list[str], StreamDecoder]:
    """Feeds a stream through SseParser in chunks of `size` bytes, then each event to the
    adapter's decoder: the text deltas it gave, and the decoder."""
    parser = SseParser()
    decoder = api.decoder()
    deltas: list[str] = []
    for piece in chunked(raw, size):
        for event in parser.feed(piece):
            deltas.extend(decoder.feed(event))
    for event in parser.close():
        deltas.extend(decoder.feed(event))
    return deltas, decoder


def failure_of(call: Callable[[], Any]) -> Any:
    with pytest.raises(AttemptFailed) as caught:
        call()
    return caught.value.failure


def keys_of(typed_dict: Any) -> set[str]:
    """Every key a TypedDict of an official SDK allows."""
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)


# ---- SSE ------------------------------------------------------------------------------------


def parse_all(raw: bytes, size: int) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    events = [e for piece in chunked(raw, size) for e in parser.feed(piece)]
    events += parser.close()
    return events, parser


@pytest.mark.parametrize("size", CHUNKINGS)
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_sse_events_whatever_the_line_ends_and_chunking(newline: str, size: int) -> None:
    raw = newline.join(
        [
            ": keep-alive comment",
            "event: message_start",
            "data: first",
            "",
            "data:second line one",
            "data:  two spaces keep one",
            "data",
            "id: 7",
            "retry: 100",
            "",
            ":OPENROUTER PROCESSING",
            "",
            "event: done",
            "data: [DONE]",
            "",
            "",
        ]
    ).encode()
    events, parser = parse_all(raw, size)
    assert events == [
        SseEvent("message_start", "first"),
        SseEvent("", "second line one\n two spaces keep one\n"),
        SseEvent("done", "[DONE]"),
    ]
    assert parser.cut is False


@pytest.mark.parametrize("size", [1, 3])
def test_sse_crlf_split_across_chunks_is_one_line_end(size: int) -> None:
    # A CR ending one chunk and the LF starting the next are one line end: counted as two, they
    # would make a blank line and dispatch "a" alone.
    raw = b"data: a\r\ndata: b\r\n\r\n"
    events, _ = parse_all(raw, size)
    assert events == [SseEvent("", "a\nb")]
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SseEvent("", "a\nb")]
    assert parser.feed(b"\n") == []


def test_sse_utf8_split_inside_a_character_and_a_bom() -> None:
    raw = "\ufeffdata: héllo → 世界\n\n".encode()
    events, _ = parse_all(raw, 1)
    assert events == [SseEvent("", "héllo → 世界")]


def test_sse_event_name_does_not_leak_into_the_next_event() -> None:
    events, _ = parse_all(b"event: ping\ndata: {}\n\ndata: x\n\n", 5)
    assert events == [SseEvent("ping", "{}"), SseEvent("", "x")]


def test_sse_an_event_without_data_is_not_dispatched() -> None:
    events, _ = parse_all(b"event: lonely\n\ndata: x\n\n", 4)
    assert events == [SseEvent("", "x")]


@pytest.mark.parametrize(
    "tail", [b"data: partial", b"data: partial\n", b"event: message_stop\ndata: {}\n"]
)
def test_sse_a_final_event_without_its_blank_line_is_a_cut_not_an_event(tail: bytes) -> None:
    events, parser = parse_all(b"data: whole\n\n" + tail, 3)
    assert events == [SseEvent("", "whole")]
    assert parser.cut is True


def test_sse_a_line_beyond_the_bound_is_refused() -> None:
    parser = SseParser(max_event_chars=64)
    parser.feed(b"data: " + b"x" * 50)
    failure = failure_of(lambda: parser.feed(b"y" * 20))
    assert failure.failure == "transient"
    assert "a line of more than 64 characters" in failure.message


def test_sse_an_event_beyond_the_bound_is_refused() -> None:
    parser = SseParser(max_event_chars=64)
    failure = failure_of(
        lambda: parser.feed(b"data: " + b"x" * 40 + b"\ndata: " + b"x" * 40 + b"\n")
    )
    assert failure.failure == "transient"
    assert "an event of more than 64 characters of data" in failure.message


# ---- api_for --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "api"),
    [
        ("openai", "chat_completions"),
        ("anthropic", "messages"),
        ("gemini", "generate_content"),
        ("deepseek", "chat_completions"),
        ("openrouter", "chat_completions"),
        ("vllm", "chat_completions"),
        ("sglang", "chat_completions"),
    ],
)
def test_default_api_of_each_provider(provider: str, api: str) -> None:
    assert default_api(provider) == api
    assert api_for(provider, api) is not None


def test_api_for_refuses_a_pair_that_does_not_exist() -> None:
    with pytest.raises(
        ValueError, match=r"provider 'anthropic' has no API 'responses' \(it speaks: messages\)"
    ):
        api_for("anthropic", "responses")
    with pytest.raises(ValueError, match=r"provider 'deepseek' has no API 'responses'"):
        api_for("deepseek", "responses")
    with pytest.raises(ValueError, match=r"unknown provider 'bedrock' \(known: openai, anthropic"):
        api_for("bedrock", "chat_completions")
    with pytest.raises(ValueError, match="unknown provider 'mistral'"):
        default_api("mistral")


# ---- request bodies -------------------------------------------------------------------------

OPENAI_MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Capital of France?"},
]


def body_of(call: Any) -> dict[str, Any]:
    return json.loads(call.body)


def test_openai_chat_request() -> None:
    call = api_for("openai", "chat_completions").build(target("openai"), REQUEST, stream=False)
    assert call.url == "https://api.openai.com/v1/chat/completions"
    assert call.headers == {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    body = body_of(call)
    assert body == {
        "model": "gpt-4.1-mini",
        "messages": OPENAI_MESSAGES,
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "stop": ["END"],
        "prompt_cache_key": "kb-7",
    }
    assert set(body) <= keys_of(
        openai.types.chat.completion_create_params.CompletionCreateParamsNonStreaming
    )

    streamed = api_for("openai", "chat_completions").build(target("openai"), REQUEST, stream=True)
    assert body_of(streamed) == {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert streamed.headers["Accept"] == "text/event-stream"
    assert set(body_of(streamed)) <= keys_of(
        openai.types.chat.completion_create_params.CompletionCreateParamsStreaming
    )


@pytest.mark.parametrize("provider", ["deepseek", "openrouter", "vllm", "sglang"])
def test_openai_dialect_requests(provider: str) -> None:
    key = None if provider in ("vllm", "sglang") else "sk-test"
    call = api_for(provider, "chat_completions").build(
        target(provider, key=key), REQUEST, stream=True
    )
    assert call.url == BASE_URLS[provider] + "/chat/completions"
    expected: dict[str, Any] = {
        "model": MODELS[provider],
        "messages": OPENAI_MESSAGES,
        "max_tokens": 256,  # the compatible servers read the old name; no prompt_cache_key
        "temperature": 0.2,
        "stop": ["END"],
    }
    if provider == "openrouter":
        expected["usage"] = {"include": True}
    expected.update(stream=True, stream_options={"include_usage": True})
    assert body_of(call) == expected
    if key is None:
        assert "Authorization" not in call.headers  # self-hosted: no key, no header
    else:
        assert call.headers["Authorization"] == "Bearer sk-test"


def test_openai_request_without_options_sends_none_of_them() -> None:
    call = api_for("openai", "chat_completions").build(
        target("openai"), ChatRequest(messages=[Message("user", "Hi")]), stream=False
    )
    assert body_of(call) == {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "Hi"}],
    }


def anthropic_block(text: str, ttl: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if ttl == "5m":
        block["cache_control"] = {"type": "ephemeral"}
    elif ttl == "1h":
        block["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    return block


@pytest.mark.parametrize("ttl", ["5m", "1h", None])
def test_anthropic_request_with_cache_breakpoints(ttl: Any) -> None:
    request = ChatRequest(
        messages=CONVERSATION, max_tokens=256, temperature=0.2, stop=("END",), cache_ttl=ttl
    )
    call = api_for("anthropic", "messages").build(target("anthropic"), request, stream=False)
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert call.headers == {
        "Content-Type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-test",
    }
    body = body_of(call)
    assert body == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 256,
        # the breakpoints: the end of the system prompt, and the turn before the final user turn
        "system": [anthropic_block("You are terse.", ttl)],
        "messages": [
            {"role": "user", "content": [anthropic_block("Hi", None)]},
            {"role": "assistant", "content": [anthropic_block("Hello.", ttl)]},
            {"role": "user", "content": [anthropic_block("Capital of France?", None)]},
        ],
        "temperature": 0.2,
        "stop_sequences": ["END"],
    }
    # The SDK (2.x, API version 2026-10-21) no longer has the sampling parameters; the version
    # this adapter names (2023-06-01) still takes `temperature` (newer models refuse it there too).
    sdk_keys = keys_of(anthropic.types.message_create_params.MessageCreateParamsNonStreaming)
    assert set(body) - {"temperature"} <= sdk_keys
    for block in [*body["system"], *(m["content"][0] for m in body["messages"])]:
        assert set(block) <= keys_of(anthropic.types.TextBlockParam)
        if "cache_control" in block:
            assert set(block["cache_control"]) <= keys_of(
                anthropic.types.CacheControlEphemeralParam
            )
    streamed = body_of(
        api_for("anthropic", "messages").build(target("anthropic"), request, stream=True)
    )
    assert streamed == {**body, "stream": True}


def test_anthropic_request_defaults_max_tokens_and_marks_only_the_system_for_one_turn() -> None:
    request = ChatRequest(messages=[Message("system", "S"), Message("user", "U")], cache_ttl="5m")
    body = body_of(
        api_for("anthropic", "messages").build(target("anthropic"), request, stream=False)
    )
    assert body["max_tokens"] == 4096  # required by the API
    assert body["system"] == [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "U"}]}]


@pytest.mark.parametrize(
    ("roles", "marked"),
    [
        (["user", "assistant", "user"], 1),
        (["user", "assistant", "user", "assistant"], 1),  # a prefilled final assistant turn
        (["user"], None),
        (["assistant", "user"], 0),
    ],
)
def test_anthropic_breakpoint_without_a_system_prompt(roles: list[Any], marked: int | None) -> None:
    request = ChatRequest(
        messages=[Message(r, f"m{i}") for i, r in enumerate(roles)], cache_ttl="1h"
    )
    body = body_of(
        api_for("anthropic", "messages").build(target("anthropic"), request, stream=False)
    )
    assert "system" not in body
    found = [i for i, m in enumerate(body["messages"]) if "cache_control" in m["content"][-1]]
    assert found == ([] if marked is None else [marked])


def test_gemini_request() -> None:
    api = api_for("gemini", "generate_content")
    call = api.build(target("gemini"), REQUEST, stream=False)
    base = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro"
    assert call.url == base + ":generateContent"
    assert call.headers == {"Content-Type": "application/json", "x-goog-api-key": "sk-test"}
    body = body_of(call)
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello."}]},
            {"role": "user", "parts": [{"text": "Capital of France?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2, "stopSequences": ["END"]},
    }
    # The SDK's own models (extra fields forbidden) accept each part under its REST name.
    for content in body["contents"]:
        genai.Content.model_validate(content)
    genai.Content.model_validate(body["systemInstruction"])
    genai.GenerationConfig.model_validate(body["generationConfig"])
    streamed = api.build(target("gemini"), REQUEST, stream=True)
    assert streamed.url == base + ":streamGenerateContent?alt=sse"
    assert body_of(streamed) == body


def test_responses_request() -> None:
    api = api_for("openai", "responses")
    request = ChatRequest(
        messages=CONVERSATION, max_tokens=256, temperature=0.2, prompt_cache_key="kb-7"
    )
    call = api.build(target("openai", "responses"), request, stream=True)
    assert call.url == "https://api.openai.com/v1/responses"
    assert call.headers["Authorization"] == "Bearer sk-test"
    body = body_of(call)
    assert body == {
        "model": "gpt-4.1-mini",
        "input": OPENAI_MESSAGES,
        "store": False,  # a routed request is not kept at the provider
        "max_output_tokens": 256,
        "temperature": 0.2,
        "prompt_cache_key": "kb-7",
        "stream": True,
    }
    assert set(body) <= keys_of(
        openai.types.responses.response_create_params.ResponseCreateParamsStreaming
    )
    for item in body["input"]:
        assert set(item) <= keys_of(openai.types.responses.EasyInputMessageParam)


def test_responses_refuses_stop_sequences() -> None:
    failure = failure_of(
        lambda: api_for("openai", "responses").build(
            target("openai", "responses"), REQUEST, stream=False
        )
    )
    assert failure.failure == "invalid_request"
    assert "has no stop sequences" in failure.message


# ---- OpenAI chat completions: replies ---------------------------------------------------------

OPENAI_USAGE = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def chat_completion(content: str | None, finish: str, usage: Any, **message: Any) -> dict[str, Any]:
    payload = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4.1-mini-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, **message},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    openai.types.chat.ChatCompletion.model_validate(payload)
    return payload


def test_openai_chat_reply_and_its_cached_usage(config: Any) -> None:
    payload = chat_completion("The capital of France is Paris.", "stop", OPENAI_USAGE)
    parsed = api_for("openai", "chat_completions").parse(json.dumps(payload).encode())
    assert parsed == Parsed(
        text="The capital of France is Paris.",
        finish_reason="stop",
        usage=OPENAI_USAGE,
        native_finish_reason="stop",
    )
    cost = priced(config, "openai", parsed.usage)
    # 2006 prompt tokens, 1920 read from the cache: 86 uncached
    assert tokens(cost) == (86, 1920, 0, 0, 300)
    # 86 x 0.40 + 1920 x 0.10 + 300 x 1.60 = 34.4 + 192 + 480 micro-dollars
    assert cost["cost_usd"] == Decimal("0.0007064")


@pytest.mark.parametrize(
    ("finish", "message", "expected"),
    [
        ("length", {}, "length"),
        ("content_filter", {}, "content_filter"),
        ("tool_calls", {}, "tool_calls"),
        ("stop", {"refusal": "I can't help with that."}, "content_filter"),
    ],
)
def test_openai_chat_finish_reasons(finish: str, message: dict[str, Any], expected: str) -> None:
    payload = chat_completion(None if message else "x", finish, OPENAI_USAGE, **message)
    parsed = api_for("openai", "chat_completions").parse(json.dumps(payload).encode())
    assert parsed.finish_reason == expected
    assert parsed.native_finish_reason == finish


def chat_chunk(choices: list[dict[str, Any]], usage: Any = None, **extra: Any) -> dict[str, Any]:
    chunk = {
        "id": "chatcmpl-C1",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4.1-mini-2025-04-14",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": choices,
        "usage": usage,
        **extra,
    }
    openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    return chunk


def delta(content: str | None = None, finish: str | None = None, **more: Any) -> dict[str, Any]:
    d: dict[str, Any] = {**more}
    if content is not None:
        d["content"] = content
    return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}


OPENAI_STREAM = [
    chat_chunk([delta("", role="assistant", refusal=None)]),
    chat_chunk([delta("Paris")]),
    chat_chunk([delta(" is")]),
    chat_chunk([delta(" the capital.")]),
    chat_chunk([delta(finish="stop")]),
    chat_chunk([], usage=OPENAI_USAGE),
]


@pytest.mark.parametrize("size", CHUNKINGS)
def test_openai_chat_stream(config: Any, size: int) -> None:
    raw = sse([(None, c) for c in OPENAI_STREAM] + [(None, "[DONE]")])
    deltas, decoder = run_stream(api_for("openai", "chat_completions"), raw, size)
    assert deltas == ["Paris", " is", " the capital."]
    assert decoder.complete
    result = decoder.result()
    assert (result.text, result.finish_reason, result.native_finish_reason) == (
        "Paris is the capital.",
        "stop",
        "stop",
    )
    assert result.usage == [OPENAI_STREAM[-1]]
    assert tokens(priced(config, "openai", result.usage)) == (86, 1920, 0, 0, 300)


@pytest.mark.parametrize("size", [1, 64])
def test_openai_chat_stream_cut_before_done(size: int) -> None:
    # Everything but `data: [DONE]`: the finish chunk and usage came, the end marker did not.
    raw = sse([(None, c) for c in OPENAI_STREAM])
    deltas, decoder = run_stream(api_for("openai", "chat_completions"), raw, size)
    assert deltas == ["Paris", " is", " the capital."]
    assert not decoder.complete
    assert decoder.result().finish_reason is None
    # Cut in the middle of an event: the half event is never fed to the decoder.
    raw = sse([(None, c) for c in OPENAI_STREAM[:3]]) + b'data: {"id": "chatcmpl-C1", "obj'
    deltas, decoder = run_stream(api_for("openai", "chat_completions"), raw, size)
    assert deltas == ["Paris", " is"]
    assert not decoder.complete
    assert decoder.result() == Parsed(text="Paris is", finish_reason=None, usage=None)


def test_openai_chat_stream_refusal_is_a_content_filter_finish() -> None:
    raw = sse(
        [
            (None, chat_chunk([delta(None, role="assistant", refusal="I can't")])),
            (None, chat_chunk([delta(None, refusal=" help with that.")])),
            (None, chat_chunk([delta(finish="stop")])),
            (None, "[DONE]"),
        ]
    )
    deltas, decoder = run_stream(api_for("openai", "chat_completions"), raw, 5)
    assert deltas == []
    assert decoder.result().finish_reason == "content_filter"


def test_openai_chat_in_stream_error_fails_the_attempt() -> None:
    error = {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    raw = sse([(None, OPENAI_STREAM[1]), (None, error)])
    failure = failure_of(lambda: run_stream(api_for("openai", "chat_completions"), raw, 3))
    assert failure.failure == "transient"
    assert failure.message.startswith("openai: The server had an error")
    assert failure.http_status is None


def test_openai_chat_error_in_a_200_body() -> None:
    body = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    failure = failure_of(
        lambda: api_for("openai", "chat_completions").parse(json.dumps(body).encode())
    )
    assert failure.failure == "rate_limited"


@pytest.mark.parametrize(
    "body", [b"<html><body>502 Bad Gateway</body></html>", b"", b"[1, 2]", b'{"choices": []}']
)
def test_openai_chat_malformed_reply(body: bytes) -> None:
    failure = failure_of(lambda: api_for("openai", "chat_completions").parse(body))
    assert failure.failure == "transient"
    assert failure.message.startswith("openai sent a malformed reply: ")


@pytest.mark.parametrize(
    ("provider", "api", "body", "why"),
    [
        ("anthropic", "messages", b"{not json", "Expecting property name"),
        ("anthropic", "messages", b'{"type": "message", "role": "assistant"}', "no content"),
        ("gemini", "generate_content", b"", "Expecting value"),
        ("gemini", "generate_content", b'{"usageMetadata": {}}', "no candidates"),
        ("openai", "responses", b"<html>oops</html>", "Expecting value"),
        ("vllm", "chat_completions", b'"just a string"', "not a JSON object"),
    ],
)
def test_malformed_reply_of_each_adapter(provider: str, api: str, body: bytes, why: str) -> None:
    failure = failure_of(lambda: api_for(provider, api).parse(body))
    assert failure.failure == "transient"
    assert failure.message.startswith(f"{provider} sent a malformed reply: ")
    assert why in failure.message


def test_malformed_stream_event_names_the_provider() -> None:
    for provider, api in [
        ("deepseek", "chat_completions"),
        ("anthropic", "messages"),
        ("gemini", "generate_content"),
        ("openai", "responses"),
    ]:
        decoder = api_for(provider, api).decoder()
        failure = failure_of(lambda d=decoder: d.feed(SseEvent("", "{not json")))
        assert failure.failure == "transient"
        assert failure.message.startswith(f"{provider} sent a malformed reply: ")
        assert "'{not json'" in failure.message


# ---- the dialects ---------------------------------------------------------------------------

DEEPSEEK_REPLY = {
    "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
    "object": "chat.completion",
    "created": 1705651092,
    "model": "deepseek-chat",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1124,
        "completion_tokens": 50,
        "total_tokens": 1174,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "prompt_cache_hit_tokens": 1024,
        "prompt_cache_miss_tokens": 100,
    },
    "system_fingerprint": "fp_3a5770e1b4_prod0225",
}


def test_deepseek_reply_and_its_cache_hit_usage(config: Any) -> None:
    openai.types.chat.ChatCompletion.model_validate(DEEPSEEK_REPLY)
    parsed = api_for("deepseek", "chat_completions").parse(json.dumps(DEEPSEEK_REPLY).encode())
    assert (parsed.text, parsed.finish_reason) == ("Paris.", "stop")
    cost = priced(config, "deepseek", parsed.usage)
    assert tokens(cost) == (100, 1024, 0, 0, 50)
    # 100 x 0.28 + 1024 x 0.028 + 50 x 0.42 = 28 + 28.672 + 21 micro-dollars
    assert cost["cost_usd"] == Decimal("0.000077672")


def test_openrouter_stream_with_comments_usage_and_its_cost(config: Any) -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "cost": 0.0000033,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    extra = {"provider": "OpenAI"}
    raw = (
        b": OPENROUTER PROCESSING\n\n"
        + sse(
            [
                (None, chat_chunk([delta("Hi", role="assistant")], **extra)),
                (None, chat_chunk([delta(" there")], **extra)),
                (None, chat_chunk([delta("", finish="stop")], **extra)),
                (None, chat_chunk([delta("")], usage=usage, **extra)),
            ]
        )
        + b": OPENROUTER PROCESSING\n\n"
        + sse([(None, "[DONE]")])
    )
    deltas, decoder = run_stream(api_for("openrouter", "chat_completions"), raw, 1)
    assert deltas == ["Hi", " there"]
    result = decoder.result()
    assert (result.text, result.finish_reason) == ("Hi there", "stop")
    cost = priced(config, "openrouter", result.usage)
    assert tokens(cost) == (10, 0, 0, 0, 3)
    assert cost["reported_cost_usd"] == Decimal("0.0000033")


def test_openrouter_mid_stream_error() -> None:
    # OpenRouter's shape: an error object next to a choice whose finish_reason is "error".
    error_chunk = {
        "id": "cmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1234567890,
        "model": "openai/gpt-4o-mini",
        "provider": "OpenAI",
        "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    raw = sse([(None, chat_chunk([delta("Hi", role="assistant")])), (None, error_chunk)])
    failure = failure_of(lambda: run_stream(api_for("openrouter", "chat_completions"), raw, 4))
    assert failure.failure == "transient"
    assert "Provider disconnected unexpectedly" in failure.message
    # ... and with its numeric code, the status it stands for
    error_chunk["error"] = {"code": 502, "message": "Upstream error"}
    raw = sse([(None, error_chunk)])
    failure = failure_of(lambda: run_stream(api_for("openrouter", "chat_completions"), raw, 4))
    assert (failure.failure, failure.http_status) == ("transient", 502)


def test_vllm_in_stream_error_takes_its_status_from_its_code() -> None:
    error = {
        "object": "error",
        "message": "This model's maximum context length is 8192 tokens. However, you requested "
        "9000 tokens.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    raw = sse([(None, error)])
    failure = failure_of(lambda: run_stream(api_for("vllm", "chat_completions"), raw, 1))
    assert (failure.failure, failure.http_status) == ("context_overflow", 400)


@pytest.mark.parametrize("provider", ["vllm", "sglang"])
def test_self_hosted_stream_usage_with_null_details(config: Any, provider: str) -> None:
    usage = {
        "prompt_tokens": 40,
        "total_tokens": 45,
        "completion_tokens": 5,
        "prompt_tokens_details": None,
    }
    raw = sse(
        [
            (None, chat_chunk([delta("ok", role="assistant")])),
            (None, chat_chunk([delta("", finish="length")])),
            (None, chat_chunk([], usage=usage)),
            (None, "[DONE]"),
        ]
    )
    deltas, decoder = run_stream(api_for(provider, "chat_completions"), raw, 3)
    assert deltas == ["ok"]
    assert decoder.result().finish_reason == "length"
    assert tokens(priced(config, provider, decoder.result().usage)) == (40, 0, 0, 0, 5)


# ---- Anthropic ------------------------------------------------------------------------------

ANTHROPIC_USAGE = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 2000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    "output_tokens": 120,
    "service_tier": "standard",
}


def anthropic_message(content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
    payload = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }
    anthropic.types.Message.model_validate(payload)
    return payload


def test_anthropic_reply_and_its_cache_writes_and_reads(config: Any) -> None:
    payload = anthropic_message(
        [{"type": "text", "text": "Paris", "citations": None}, {"type": "text", "text": "."}],
        "end_turn",
    )
    parsed = api_for("anthropic", "messages").parse(json.dumps(payload).encode())
    assert parsed == Parsed(
        text="Paris.", finish_reason="stop", usage=ANTHROPIC_USAGE, native_finish_reason="end_turn"
    )
    cost = priced(config, "anthropic", parsed.usage)
    assert tokens(cost) == (50, 2000, 1000, 2000, 120)
    # 50 x 3 + 2000 x 0.30 + 1000 x 3.75 + 2000 x 6 + 120 x 15 = 150 + 600 + 3750 + 12000 + 1800
    assert cost["cost_usd"] == Decimal("0.0183")


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "other"),
    ],
)
def test_anthropic_stop_reasons(stop: str, expected: str) -> None:
    payload = anthropic_message([], stop)
    assert (
        api_for("anthropic", "messages").parse(json.dumps(payload).encode()).finish_reason
        == expected
    )


def anthropic_stream(cut_after: int | None = None) -> bytes:
    start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
    events = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-sonnet-4-20250514",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Paris"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 120},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    adapter = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
    for name, data in events:
        if name != "ping":  # not a RawMessageStreamEvent: the SDK drops it before parsing
            adapter.validate_python(data)
    return sse(events[:cut_after])


@pytest.mark.parametrize("size", CHUNKINGS)
def test_anthropic_stream(config: Any, size: int) -> None:
    deltas, decoder = run_stream(api_for("anthropic", "messages"), anthropic_stream(), size)
    assert deltas == ["Paris", "."]
    assert decoder.complete
    result = decoder.result()
    assert (result.text, result.finish_reason, result.native_finish_reason) == (
        "Paris.",
        "stop",
        "end_turn",
    )
    assert [e["type"] for e in result.usage] == ["message_start", "message_delta"]
    # message_start carries input and cache counts, message_delta the final output count
    cost = priced(config, "anthropic", result.usage)
    assert tokens(cost) == (50, 2000, 1000, 2000, 120)
    assert cost["cost_usd"] == Decimal("0.0183")


@pytest.mark.parametrize("cut_after", [1, 4, 7])
def test_anthropic_stream_cut_before_message_stop(cut_after: int) -> None:
    _, decoder = run_stream(api_for("anthropic", "messages"), anthropic_stream(cut_after), 3)
    assert not decoder.complete
    assert decoder.result().finish_reason is None


def test_anthropic_in_stream_error() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    raw = anthropic_stream(4) + sse([("error", error)])
    failure = failure_of(lambda: run_stream(api_for("anthropic", "messages"), raw, 2))
    assert failure.failure == "transient"
    assert failure.message == "anthropic: overloaded_error: Overloaded"


def test_anthropic_error_in_a_200_body() -> None:
    body = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    failure = failure_of(lambda: api_for("anthropic", "messages").parse(json.dumps(body).encode()))
    assert failure.failure == "transient"


# ---- Gemini ---------------------------------------------------------------------------------

GEMINI_USAGE = {
    "promptTokenCount": 5000,
    "candidatesTokenCount": 200,
    "totalTokenCount": 5250,
    "cachedContentTokenCount": 4096,
    "thoughtsTokenCount": 50,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 5000}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 4096}],
}


def gemini_chunk(
    parts: list[dict[str, Any]] | None, finish: str | None, usage: Any
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts is not None:
        candidate["content"] = {"parts": parts, "role": "model"}
    if finish:
        candidate["finishReason"] = finish
    payload: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-pro",
        "responseId": "mJ0gaLbqKdKWz7IP1sSd8Qk",
    }
    if usage:
        payload["usageMetadata"] = usage
    genai.GenerateContentResponse.model_validate(payload)
    return payload


def test_gemini_reply_and_its_cached_usage(config: Any) -> None:
    payload = gemini_chunk(
        [{"text": "Thinking about capitals", "thought": True}, {"text": "Paris."}],
        "STOP",
        GEMINI_USAGE,
    )
    parsed = api_for("gemini", "generate_content").parse(json.dumps(payload).encode())
    assert parsed == Parsed(
        text="Paris.", finish_reason="stop", usage=GEMINI_USAGE, native_finish_reason="STOP"
    )
    cost = priced(config, "gemini", parsed.usage)
    # 5000 prompt tokens, 4096 cached: 904 uncached; output = candidates 200 + thoughts 50
    assert tokens(cost) == (904, 4096, 0, 0, 250)
    # 904 x 1.25 + 4096 x 0.125 + 250 x 10 = 1130 + 512 + 2500 micro-dollars
    assert cost["cost_usd"] == Decimal("0.004142")


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "other"),
    ],
)
def test_gemini_finish_reasons(finish: str, expected: str) -> None:
    payload = gemini_chunk(None, finish, GEMINI_USAGE)
    parsed = api_for("gemini", "generate_content").parse(json.dumps(payload).encode())
    assert (parsed.text, parsed.finish_reason, parsed.native_finish_reason) == (
        "",
        expected,
        finish,
    )


def test_gemini_blocked_prompt_is_a_content_filter_finish() -> None:
    payload = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
        "modelVersion": "gemini-2.5-pro",
    }
    genai.GenerateContentResponse.model_validate(payload)
    api = api_for("gemini", "generate_content")
    parsed = api.parse(json.dumps(payload).encode())
    assert (parsed.finish_reason, parsed.native_finish_reason) == ("content_filter", "SAFETY")
    deltas, decoder = run_stream(api, sse([(None, payload)], "\r\n"), 1)
    assert deltas == []
    assert decoder.complete
    assert decoder.result().finish_reason == "content_filter"


GEMINI_STREAM = [
    gemini_chunk(
        [{"text": "Paris"}],
        None,
        {"promptTokenCount": 5000, "totalTokenCount": 5000, "cachedContentTokenCount": 4096},
    ),
    gemini_chunk([{"text": " is the capital."}], None, None),
    gemini_chunk([{"text": ""}], "STOP", GEMINI_USAGE),
]


@pytest.mark.parametrize("size", CHUNKINGS)
def test_gemini_stream(config: Any, size: int) -> None:
    # Gemini's alt=sse stream ends its lines with CR LF.
    raw = sse([(None, c) for c in GEMINI_STREAM], "\r\n")
    deltas, decoder = run_stream(api_for("gemini", "generate_content"), raw, size)
    assert deltas == ["Paris", " is the capital."]
    assert decoder.complete
    result = decoder.result()
    assert (result.text, result.finish_reason) == ("Paris is the capital.", "stop")
    assert result.usage == [GEMINI_STREAM[0], GEMINI_STREAM[2]]
    assert tokens(priced(config, "gemini", result.usage)) == (904, 4096, 0, 0, 250)


def test_gemini_stream_cut_before_its_finish_reason() -> None:
    raw = sse([(None, c) for c in GEMINI_STREAM[:2]], "\r\n")
    deltas, decoder = run_stream(api_for("gemini", "generate_content"), raw, 3)
    assert deltas == ["Paris", " is the capital."]
    assert not decoder.complete
    assert decoder.result().finish_reason is None


def test_gemini_in_stream_error() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    raw = sse([(None, GEMINI_STREAM[0]), (None, error)], "\r\n")
    failure = failure_of(lambda: run_stream(api_for("gemini", "generate_content"), raw, 7))
    assert failure.failure == "transient"
    assert failure.message == "gemini 503: UNAVAILABLE: The model is overloaded."


# ---- OpenAI Responses -----------------------------------------------------------------------

RESPONSES_USAGE = {
    "input_tokens": 3000,
    "input_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 0},
    "output_tokens": 500,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 3500,
}


def response_object(
    status: str,
    content: list[dict[str, Any]],
    usage: Any = RESPONSES_USAGE,
    incomplete: str | None = None,
    error: Any = None,
) -> dict[str, Any]:
    payload = {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "gpt-4.1-mini-2025-04-14",
        "output": [
            {
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                "status": "completed",
                "role": "assistant",
                "content": content,
            }
        ]
        if content
        else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }
    openai.types.responses.Response.model_validate(payload)
    return payload


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def test_responses_reply_and_its_cached_usage(config: Any) -> None:
    payload = response_object("completed", [output_text("Paris"), output_text(".")])
    parsed = api_for("openai", "responses").parse(json.dumps(payload).encode())
    assert parsed == Parsed(
        text="Paris.", finish_reason="stop", usage=RESPONSES_USAGE, native_finish_reason="completed"
    )
    cost = priced(config, "openai", parsed.usage)
    assert tokens(cost) == (952, 2048, 0, 0, 500)
    # 952 x 0.40 + 2048 x 0.10 + 500 x 1.60 = 380.8 + 204.8 + 800 micro-dollars
    assert cost["cost_usd"] == Decimal("0.0013856")


@pytest.mark.parametrize(
    ("status", "incomplete", "content", "expected", "native"),
    [
        ("incomplete", "max_output_tokens", [output_text("Par")], "length", "max_output_tokens"),
        ("incomplete", "content_filter", [], "content_filter", "content_filter"),
        (
            "completed",
            None,
            [{"type": "refusal", "refusal": "I can't help."}],
            "content_filter",
            "completed",
        ),
    ],
)
def test_responses_finish_reasons(
    status: str, incomplete: str | None, content: Any, expected: str, native: str
) -> None:
    payload = response_object(status, content, incomplete=incomplete)
    parsed = api_for("openai", "responses").parse(json.dumps(payload).encode())
    assert (parsed.finish_reason, parsed.native_finish_reason) == (expected, native)


def test_responses_failed_reply_fails_the_attempt() -> None:
    payload = response_object(
        "failed",
        [],
        usage=None,
        error={"code": "server_error", "message": "The server had an error."},
    )
    failure = failure_of(lambda: api_for("openai", "responses").parse(json.dumps(payload).encode()))
    assert failure.failure == "transient"
    assert failure.message == "openai: The server had an error."


def responses_stream(end: str = "response.completed") -> list[tuple[str, dict[str, Any]]]:
    started = response_object("in_progress", [], usage=None)
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "response.created",
            {"type": "response.created", "sequence_number": 0, "response": started},
        ),
        (
            "response.in_progress",
            {"type": "response.in_progress", "sequence_number": 1, "response": started},
        ),
    ]
    for i, piece in enumerate(["Paris", " is", " the capital."]):
        events.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "sequence_number": 2 + i,
                    "item_id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                },
            )
        )
    text = [output_text("Paris is the capital.")]
    if end == "response.completed":
        done = response_object("completed", text)
    else:
        done = response_object("incomplete", text, incomplete="max_output_tokens")
    events.append((end, {"type": end, "sequence_number": 5, "response": done}))
    adapter = pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for _, data in events:
        adapter.validate_python(data)
    return events


@pytest.mark.parametrize("size", CHUNKINGS)
def test_responses_stream(config: Any, size: int) -> None:
    events = responses_stream()
    deltas, decoder = run_stream(api_for("openai", "responses"), sse(events), size)
    assert deltas == ["Paris", " is", " the capital."]
    assert decoder.complete
    result = decoder.result()
    assert (result.text, result.finish_reason, result.native_finish_reason) == (
        "Paris is the capital.",
        "stop",
        "completed",
    )
    assert result.usage == [events[-1][1]]
    assert tokens(priced(config, "openai", result.usage)) == (952, 2048, 0, 0, 500)


def test_responses_stream_incomplete_is_complete_with_length() -> None:
    _, decoder = run_stream(
        api_for("openai", "responses"), sse(responses_stream("response.incomplete")), 9
    )
    assert decoder.complete
    assert decoder.result().finish_reason == "length"


def test_responses_stream_cut_before_completed() -> None:
    _, decoder = run_stream(api_for("openai", "responses"), sse(responses_stream()[:-1]), 4)
    assert not decoder.complete
    assert decoder.result() == Parsed(text="Paris is the capital.", finish_reason=None)


def test_responses_stream_failures() -> None:
    failed = response_object(
        "failed", [], usage=None, error={"code": "rate_limit_exceeded", "message": "Slow down."}
    )
    raw = sse(
        [
            *responses_stream()[:3],
            (
                "response.failed",
                {"type": "response.failed", "response": failed, "sequence_number": 3},
            ),
        ]
    )
    failure = failure_of(lambda: run_stream(api_for("openai", "responses"), raw, 5))
    assert (failure.failure, failure.message) == ("rate_limited", "openai: Slow down.")

    error = {
        "type": "error",
        "sequence_number": 3,
        "code": "server_error",
        "message": "Something went wrong.",
        "param": None,
    }
    pydantic.TypeAdapter(openai.types.responses.ResponseStreamEvent).validate_python(error)
    raw = sse([*responses_stream()[:3], ("error", error)])
    failure = failure_of(lambda: run_stream(api_for("openai", "responses"), raw, 5))
    assert (failure.failure, failure.message) == ("transient", "openai: Something went wrong.")


# ---- classify(): every provider's error replies -----------------------------------------------


def openai_error(message: str, kind: str | None, code: Any) -> bytes:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def openrouter_error(status: int, message: str, **metadata: Any) -> bytes:
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        error["metadata"] = metadata
    return json.dumps({"error": error}).encode()


def vllm_error(message: str, code: int = 400) -> bytes:
    error = {"message": message, "type": "BadRequestError", "param": None, "code": code}
    return json.dumps({"object": "error", **error}).encode()


def anthropic_error(kind: str, message: str) -> bytes:
    error = {"type": kind, "message": message}
    return json.dumps({"type": "error", "error": error, "request_id": "req_011CSHoEeq"}).encode()


def gemini_error(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return json.dumps({"error": error}).encode()


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
    "(8000 in the messages, 1000 in the completion). Please reduce the length of the messages "
    "or completion."
)
QUOTA = "You exceeded your current quota, please check your plan and billing details."
NO_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to "
    "upgrade or purchase credits."
)
GEMINI_TOO_LONG = (
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
)
GEMINI_NO_FREE_TIER = (
    "Gemini API free tier is not available in your country. Please enable billing on your "
    "project in Google AI Studio."
)
GEMINI_QUOTA_FAILURE = {
    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
    "violations": [
        {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        }
    ],
}
GEMINI_BAD_KEY = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "API_KEY_INVALID",
    "domain": "googleapis.com",
    "metadata": {"service": "generativelanguage.googleapis.com"},
}

#: (adapter, status, headers, body) -> (class, retry_after_ms); "responses" is OpenAI's Responses.
CLASSIFY_CASES = [
    # OpenAI: retry-after-ms wins over Retry-After
    ("openai", 429, {"retry-after-ms": "1500", "retry-after": "2"},
     openai_error("Rate limit reached for gpt-4.1-mini", "requests", "rate_limit_exceeded"),
     "rate_limited", 1500),
    ("openai", 429, {"Retry-After": "20"},
     openai_error(QUOTA, "insufficient_quota", "insufficient_quota"), "billing", 20000),
    ("openai", 400, {},
     openai_error(CONTEXT_MESSAGE, "invalid_request_error", "context_length_exceeded"),
     "context_overflow", None),
    ("openai", 400, {},
     openai_error("Rejected by the safety system.", "invalid_request_error",
                  "content_policy_violation"),
     "content_filter", None),
    ("openai", 400, {}, openai_error("Filtered.", "invalid_request_error", "content_filter"),
     "content_filter", None),
    ("openai", 401, {}, openai_error("Incorrect API key provided.", "invalid_request_error",
                                     "invalid_api_key"), "auth", None),
    ("openai", 403, {}, openai_error("Country, region, or territory not supported",
                                     "request_forbidden", "unsupported_country_region_territory"),
     "auth", None),
    ("openai", 404, {}, openai_error("The model `gpt-9` does not exist", "invalid_request_error",
                                     "model_not_found"), "not_found", None),
    ("openai", 500, {}, openai_error("The server had an error.", "server_error", None),
     "transient", None),
    ("openai", 503, {"Retry-After": "1"},
     openai_error("The engine is currently overloaded.", "server_error", None), "transient", 1000),
    ("openai", 502, {}, b"<html><h1>502 Bad Gateway</h1></html>", "transient", None),
    ("openai", 504, {}, b"", "timeout", None),
    ("openai", 408, {}, openai_error("Request timed out.", None, None), "timeout", None),
    ("responses", 400, {},
     openai_error(CONTEXT_MESSAGE, "invalid_request_error", "context_length_exceeded"),
     "context_overflow", None),
    ("responses", 429, {"retry-after-ms": "250"},
     openai_error("Rate limit reached", "requests", "rate_limit_exceeded"), "rate_limited", 250),
    # DeepSeek
    ("deepseek", 402, {}, openai_error("Insufficient Balance", "unknown_error", None),
     "billing", None),
    ("deepseek", 400, {}, openai_error(CONTEXT_MESSAGE, "invalid_request_error", None),
     "context_overflow", None),
    ("deepseek", 422, {}, openai_error("Invalid max_tokens value", "invalid_request_error", None),
     "invalid_request", None),
    ("deepseek", 503, {}, openai_error("Server overloaded", "service_unavailable_error", None),
     "transient", None),
    ("deepseek", 429, {}, openai_error("Rate Limit Reached", "rate_limit_error", None),
     "rate_limited", None),
    ("deepseek", 401, {}, openai_error("Authentication Fails", "authentication_error", None),
     "auth", None),
    # OpenRouter: {"error": {"code": <status>, "message", "metadata"}}
    ("openrouter", 402, {},
     openrouter_error(402, "Insufficient credits", limit_source="openrouter_credits"),
     "billing", None),
    ("openrouter", 403, {},
     openrouter_error(403, "openai/gpt-4o-mini requires moderation on OpenAI. Your input was "
                      "flagged", reasons=["violence"], flagged_input="...",
                      provider_name="OpenAI", model_slug="openai/gpt-4o-mini"),
     "content_filter", None),
    ("openrouter", 400, {},
     openrouter_error(400, "This endpoint's maximum context length is 128000 tokens. However, "
                      "you requested about 130000 tokens."),
     "context_overflow", None),
    ("openrouter", 408, {}, openrouter_error(408, "Timed out"), "timeout", None),
    ("openrouter", 502, {}, openrouter_error(502, "Provider returned error"), "transient", None),
    ("openrouter", 401, {}, openrouter_error(401, "No auth credentials found"), "auth", None),
    ("openrouter", 429, {"Retry-After": "3"}, openrouter_error(429, "Rate limit exceeded"),
     "rate_limited", 3000),
    # vLLM (old and new error shapes) and SGLang
    ("vllm", 400, {}, vllm_error(CONTEXT_MESSAGE), "context_overflow", None),
    ("vllm", 400, {}, openai_error(CONTEXT_MESSAGE, "BadRequestError", 400),
     "context_overflow", None),
    ("vllm", 404, {}, vllm_error("The model `x` does not exist.", 404), "not_found", None),
    ("sglang", 400, {},
     vllm_error("The input (9000 tokens) is longer than the model's context length (8192 tokens)."),
     "context_overflow", None),
    ("sglang", 503, {}, b"", "transient", None),
    # Anthropic: the error type decides (529 overloaded_error)
    ("anthropic", 529, {}, anthropic_error("overloaded_error", "Overloaded"), "transient", None),
    ("anthropic", 429, {"retry-after": "17"},
     anthropic_error("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
     "rate_limited", 17000),
    ("anthropic", 400, {},
     anthropic_error("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
     "context_overflow", None),
    ("anthropic", 413, {},
     anthropic_error("request_too_large", "Request exceeds the maximum allowed number of bytes."),
     "context_overflow", None),
    ("anthropic", 400, {}, anthropic_error("invalid_request_error", NO_CREDIT), "billing", None),
    ("anthropic", 402, {}, anthropic_error("billing_error", "Payment required"), "billing", None),
    ("anthropic", 401, {}, anthropic_error("authentication_error", "invalid x-api-key"),
     "auth", None),
    ("anthropic", 403, {}, anthropic_error("permission_error", "No permission"), "auth", None),
    ("anthropic", 404, {}, anthropic_error("not_found_error", "model: claude-9"),
     "not_found", None),
    ("anthropic", 500, {}, anthropic_error("api_error", "Internal server error"),
     "transient", None),
    ("anthropic", 504, {}, anthropic_error("timeout_error", "Request timed out"), "timeout", None),
    ("anthropic", 400, {}, anthropic_error("invalid_request_error", "max_tokens: Field required"),
     "invalid_request", None),
    # Gemini: RetryInfo's retryDelay wins over Retry-After
    ("gemini", 429, {},
     gemini_error(429, "RESOURCE_EXHAUSTED", QUOTA, GEMINI_QUOTA_FAILURE, retry_info("30s")),
     "rate_limited", 30000),
    ("gemini", 429, {"Retry-After": "9"},
     gemini_error(429, "RESOURCE_EXHAUSTED", "Resource exhausted.", retry_info("1.5s")),
     "rate_limited", 1500),
    ("gemini", 429, {"Retry-After": "9"},
     gemini_error(429, "RESOURCE_EXHAUSTED", "Resource exhausted."), "rate_limited", 9000),
    ("gemini", 400, {},
     gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                  GEMINI_BAD_KEY),
     "auth", None),
    ("gemini", 403, {}, gemini_error(403, "PERMISSION_DENIED", "The caller does not have "
                                     "permission"), "auth", None),
    ("gemini", 400, {}, gemini_error(400, "FAILED_PRECONDITION", GEMINI_NO_FREE_TIER),
     "billing", None),
    ("gemini", 400, {}, gemini_error(400, "INVALID_ARGUMENT", GEMINI_TOO_LONG),
     "context_overflow", None),
    ("gemini", 400, {}, gemini_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
     "invalid_request", None),
    ("gemini", 404, {}, gemini_error(404, "NOT_FOUND", "models/gemini-9 is not found"),
     "not_found", None),
    ("gemini", 500, {}, gemini_error(500, "INTERNAL", "An internal error has occurred."),
     "transient", None),
    ("gemini", 503, {}, gemini_error(503, "UNAVAILABLE", "The model is overloaded."),
     "transient", None),
    ("gemini", 504, {}, gemini_error(504, "DEADLINE_EXCEEDED", "Deadline exceeded."),
     "timeout", None),
    ("gemini", 402, {}, gemini_error(402, "RESOURCE_EXHAUSTED", "Prepayment credits depleted."),
     "billing", None),
]  # fmt: skip


def adapter(name: str) -> Api:
    """The adapter a table row names: a provider's default API, or "responses"."""
    if name == "responses":
        return api_for("openai", "responses")
    return api_for(name, default_api(name))


@pytest.mark.parametrize(
    ("name", "status", "headers", "body", "expected", "retry_ms"),
    CLASSIFY_CASES,
    ids=[f"{c[0]}-{c[1]}-{c[4]}-{i}" for i, c in enumerate(CLASSIFY_CASES)],
)
def test_classify(
    name: str,
    status: int,
    headers: dict[str, str],
    body: bytes,
    expected: str,
    retry_ms: int | None,
) -> None:
    failure = adapter(name).classify(status, headers, body)
    assert failure.failure == expected
    assert failure.http_status == status
    assert failure.retry_after_ms == retry_ms
    provider = "openai" if name == "responses" else name
    assert failure.message.startswith(f"{provider} {status}: ")


def test_classify_keeps_the_providers_message() -> None:
    failure = adapter("anthropic").classify(
        529, {}, anthropic_error("overloaded_error", "Overloaded")
    )
    assert failure.message == "anthropic 529: overloaded_error: Overloaded"
    failure = adapter("gemini").classify(503, {}, gemini_error(503, "UNAVAILABLE", "Busy."))
    assert failure.message == "gemini 503: UNAVAILABLE: Busy."
    failure = adapter("vllm").classify(400, {}, vllm_error(CONTEXT_MESSAGE))
    assert failure.message == f"vllm 400: {CONTEXT_MESSAGE}"


def test_classify_a_body_that_is_not_json_quotes_it() -> None:
    failure = adapter("openai").classify(502, {}, b"<html>Bad Gateway</html>")
    assert failure.message == "openai 502: '<html>Bad Gateway</html>'"
    failure = adapter("anthropic").classify(503, {}, b"")
    assert failure.message == "anthropic 503: (empty body)"


# ---- Retry-After ----------------------------------------------------------------------------


def test_retry_after_forms() -> None:
    now = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    assert retry_after_ms({"retry-after-ms": "1500"}) == 1500
    assert retry_after_ms({"Retry-After-Ms": "12.6", "Retry-After": "30"}) == 13
    assert retry_after_ms({"Retry-After": "30"}) == 30000
    assert retry_after_ms({"retry-after": "0.5"}) == 500
    assert retry_after_ms({"Retry-After": formatdate(now + 42, usegmt=True)}, now=now) == 42000
    assert retry_after_ms({"Retry-After": formatdate(now - 42, usegmt=True)}, now=now) == 0
    # Garbage says nothing; an unusable retry-after-ms falls back to Retry-After.
    assert retry_after_ms({"Retry-After": "soon"}) is None
    assert retry_after_ms({"Retry-After": "-3"}) is None
    assert retry_after_ms({"retry-after-ms": "nan", "retry-after": "2"}) == 2000
    assert retry_after_ms({"retry-after-ms": "inf", "retry-after": "1e999"}) is None
    assert retry_after_ms({}) is None
