"""Fake LLM providers on loopback, speaking each provider's own wire format.

One aiohttp server (one port) serves every shape, at the paths the providers' SDKs call:

- OpenAI-style chat completions, `POST /<dialect>/v1/chat/completions` for the dialects openai,
  deepseek, openrouter, vllm and sglang (base URL `http://127.0.0.1:PORT/<dialect>/v1`), and the
  OpenAI Responses API, `POST /openai/v1/responses`;
- Anthropic Messages, `POST /anthropic/v1/messages` (base URL `http://127.0.0.1:PORT/anthropic`);
- Gemini, `POST /gemini/v1beta/models/{model}:generateContent` and
  `:streamGenerateContent?alt=sse` (base URL `http://127.0.0.1:PORT/gemini`).

The answers are synthetic but counted like the real ones:

- **Tokens.** A prompt's tokens are the whitespace-separated words of its text parts (system
  prompt, then every message in order; a word never spans two parts; roles and markup are free).
  :func:`count_tokens` is that rule.
- **Answer.** N words `"w1 w2 ... wN "`, streamed one word per delta (`"w1 "`, `"w2 "`, ...):
  N = the request's max tokens capped by the model's answer length (default 8). The finish is
  "stop" when the cap ends it and "length" when the request's max tokens does. The first delta
  comes `ttft_s` after the stream's headers, the next ones `gap_s` apart. With `ttft_jitter_s`
  each answer's time to first token is drawn uniformly from `ttft_s ± ttft_jitter_s` (never below
  0; a scripted `Fault.ok(ttft_s=...)` stays exact): closed-loop clients then stop arriving in
  lock-step waves, as real traffic does not. Each model draws from its own generator, seeded alike
  (and again on reset): two models with the same settings give their n-th answers the same TTFT,
  so two clients can be compared on the same draws.
- **Usage** as each provider reports it, in streams too (OpenAI: a final chunk with `usage` and no
  choices when `stream_options.include_usage`; Anthropic: message_start and a cumulative
  message_delta; Gemini: `usageMetadata` on every chunk; Responses: `response.completed`).
- **Prompt caches**, by prefix, per model, expiring after a TTL (refreshed on a hit):
  OpenAI/OpenRouter report `prompt_tokens_details.cached_tokens` for prompts of >= 1024 tokens in
  128-token increments, scoped by `prompt_cache_key` when given; DeepSeek reports
  `prompt_cache_hit_tokens` / `prompt_cache_miss_tokens` in 64-token units; vLLM (16-token blocks)
  and SGLang (token-level radix cache) report `cached_tokens` for a repeated prefix, never the whole
  prompt; Anthropic caches only at `cache_control` breakpoints of >= 1024 tokens
  (`cache_creation_input_tokens` split by TTL in `cache_creation`, then `cache_read_input_tokens`);
  Gemini reports an implicit `cachedContentTokenCount` for a repeated prefix of >= 1024 tokens.

Faults are scripted per model name: `fake.script(model, [Fault.rate_limited(2), Fault.ok()])`
makes the next requests for that model take those faults in order, then plain success.

Run it in-process (`with FakeProviders() as fake:` runs the server on a thread with its own event
loop; `async with FakeProviders() as fake:` runs it on the caller's loop) or as a process for
benchmarks: `python -m turnout.testing.fake_providers --port 0` prints one JSON line with the port
and is scripted over HTTP (`POST /_fake/script`, `POST /_fake/model`, `GET /_fake/requests`,
`POST /_fake/reset`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import web

#: The OpenAI chat-completions dialects, each served at /<dialect>/v1.
DIALECTS = ("openai", "deepseek", "openrouter", "vllm", "sglang")
#: Every provider the fake speaks.
PROVIDERS = (*DIALECTS, "anthropic", "gemini")

FaultKind = Literal[
    "ok",
    "rate_limited",
    "overloaded",
    "server_error",
    "hang",
    "cut_after",
    "error_mid_stream",
    "context_window",
    "content_filter",
    "auth",
    "billing",
]
_FAULT_KINDS = frozenset(FaultKind.__args__)  # type: ignore[attr-defined]

_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def count_tokens(text: str) -> int:
    """The fake's token count of one text: its whitespace-separated words."""
    return len(text.split())


@dataclass(frozen=True)
class Fault:
    """What the fake does with one request (see the class methods for each kind)."""

    kind: FaultKind = "ok"
    #: rate_limited: the Retry-After (seconds); Gemini says it in RetryInfo.retryDelay instead.
    retry_after_s: float | None = None
    #: hang: how long to send nothing before closing the connection.
    seconds: float = 0.0
    #: cut_after / error_mid_stream / content_filter: text deltas sent before the fault.
    k: int = 0
    #: ok: overrides of the model's time to first token, gap between tokens, answer length.
    ttft_s: float | None = None
    gap_s: float | None = None
    answer_tokens: int | None = None
    #: content_filter on Gemini: block the prompt (promptFeedback.blockReason, no candidate).
    prompt_blocked: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {sorted(_FAULT_KINDS)})")
        if self.k < 0 or self.seconds < 0:
            raise ValueError("fault k and seconds must be >= 0")

    @classmethod
    def ok(
        cls,
        *,
        ttft_s: float | None = None,
        gap_s: float | None = None,
        answer_tokens: int | None = None,
    ) -> Fault:
        """A normal answer, optionally slower/longer than the model's defaults."""
        return cls("ok", ttft_s=ttft_s, gap_s=gap_s, answer_tokens=answer_tokens)

    @classmethod
    def rate_limited(cls, retry_after_s: float = 1.0) -> Fault:
        """429 with Retry-After in the provider's rate-limit body."""
        return cls("rate_limited", retry_after_s=retry_after_s)

    @classmethod
    def overloaded(cls) -> Fault:
        """Anthropic 529 overloaded_error; OpenAI-style 503; Gemini 503 UNAVAILABLE."""
        return cls("overloaded")

    @classmethod
    def server_error(cls) -> Fault:
        """500 in the provider's error shape."""
        return cls("server_error")

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Accept the request, send nothing (no status line), close after `seconds`."""
        return cls("hang", seconds=seconds)

    @classmethod
    def cut_after(cls, k: int) -> Fault:
        """A stream of k text deltas closed without its end; non-stream: a truncated body."""
        return cls("cut_after", k=k)

    @classmethod
    def error_mid_stream(cls, k: int) -> Fault:
        """k text deltas then the provider's in-stream error (non-stream: a 500)."""
        return cls("error_mid_stream", k=k)

    @classmethod
    def context_window(cls) -> Fault:
        """The provider's own 400 for a prompt over the context window."""
        return cls("context_window")

    @classmethod
    def content_filter(cls, k: int = 0, *, prompt_blocked: bool = False) -> Fault:
        """A 200 refusal after k deltas (content_filter / refusal / SAFETY)."""
        return cls("content_filter", k=k, prompt_blocked=prompt_blocked)

    @classmethod
    def auth(cls) -> Fault:
        """The provider's 401 (Gemini: 403 PERMISSION_DENIED)."""
        return cls("auth")

    @classmethod
    def billing(cls) -> Fault:
        """OpenAI 429 insufficient_quota; DeepSeek/OpenRouter 402; Anthropic credit balance too
        low; Gemini FAILED_PRECONDITION."""
        return cls("billing")

    def to_json(self) -> dict[str, Any]:
        """The fault as the control API takes it (non-default fields only)."""
        default = Fault()
        return {k: v for k, v in asdict(self).items() if k == "kind" or v != getattr(default, k)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from its JSON form (`{"kind": "rate_limited", "retry_after_s": 2}`)."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        return cls(**data)


_OK = Fault()


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, for assertions."""

    provider: str
    api: str  # chat_completions | responses | messages | generate_content
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # the parsed JSON body (None when it was not JSON)
    model: str | None
    stream: bool
    fault: str  # the fault served: a FaultKind, or "unauthorized" / "invalid_request"


@dataclass
class _ModelSettings:
    context_window: int | None = None
    answer_tokens: int | None = None
    ttft_s: float | None = None
    gap_s: float | None = None
    cache_min_tokens: int | None = None
    ttft_jitter_s: float | None = None


# ---- prompts ------------------------------------------------------------------------------------


@dataclass
class _Prompt:
    words: list[str]
    max_tokens: int | None
    #: Anthropic cache_control breakpoints: (token position after the block, "5m" | "1h").
    breakpoints: list[tuple[int, str]] = field(default_factory=list)


class _BadRequest(Exception):
    """A request the provider would refuse with its 400 (the message says why)."""


def _text_parts(content: Any, where: str) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
        return out
    if content is None:
        return []
    raise _BadRequest(f"{where}: content must be a string or a list of parts")


def _openai_chat_prompt(body: dict[str, Any]) -> _Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array")
    words: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _BadRequest(f"messages[{i}] must be an object")
        for t in _text_parts(m.get("content"), f"messages[{i}]"):
            words.extend(t.split())
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    return _Prompt(words, mt if isinstance(mt, int) else None)


def _responses_prompt(body: dict[str, Any]) -> _Prompt:
    words: list[str] = []
    if isinstance(body.get("instructions"), str):
        words.extend(body["instructions"].split())
    inp = body.get("input")
    if isinstance(inp, str):
        words.extend(inp.split())
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            if not isinstance(item, dict):
                raise _BadRequest(f"input[{i}] must be an object")
            for t in _text_parts(item.get("content"), f"input[{i}]"):
                words.extend(t.split())
    else:
        raise _BadRequest("'input' must be a string or an array")
    mt = body.get("max_output_tokens")
    return _Prompt(words, mt if isinstance(mt, int) else None)


def _anthropic_prompt(body: dict[str, Any]) -> _Prompt:
    mt = body.get("max_tokens")
    if not isinstance(mt, int):
        raise _BadRequest("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: Field required")
    words: list[str] = []
    breakpoints: list[tuple[int, str]] = []

    def blocks(content: Any, where: str) -> None:
        if isinstance(content, str):
            words.extend(content.split())
            return
        if not isinstance(content, list):
            raise _BadRequest(f"{where}: Input should be a valid list")
        for block in content:
            if not isinstance(block, dict):
                raise _BadRequest(f"{where}: Input should be a valid dictionary")
            if isinstance(block.get("text"), str):
                words.extend(block["text"].split())
            cc = block.get("cache_control")
            if isinstance(cc, dict) and cc.get("type") == "ephemeral":
                breakpoints.append((len(words), "1h" if cc.get("ttl") == "1h" else "5m"))

    if body.get("system") is not None:
        blocks(body["system"], "system")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _BadRequest(f"messages.{i}: Input should be a valid dictionary")
        blocks(m.get("content"), f"messages.{i}.content")
    return _Prompt(words, mt, breakpoints)


def _gemini_prompt(body: dict[str, Any]) -> _Prompt:
    words: list[str] = []
    si = body.get("systemInstruction", body.get("system_instruction"))
    if isinstance(si, dict):
        for t in _text_parts(si.get("parts"), "systemInstruction"):
            words.extend(t.split())
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest("* GenerateContentRequest.contents: contents is not specified")
    for i, c in enumerate(contents):
        if not isinstance(c, dict):
            raise _BadRequest(f"* GenerateContentRequest.contents[{i}]: must be an object")
        for t in _text_parts(c.get("parts"), f"contents[{i}]"):
            words.extend(t.split())
    gc = body.get("generationConfig", body.get("generation_config")) or {}
    mt = gc.get("maxOutputTokens", gc.get("max_output_tokens")) if isinstance(gc, dict) else None
    return _Prompt(words, mt if isinstance(mt, int) else None)


# ---- prompt caches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CacheRule:
    min_tokens: int
    unit: int  # cached lengths are multiples of this
    whole_prompt: bool  # False: the last prompt token is always computed (vLLM/SGLang)


_CACHE_RULES = {
    "openai": _CacheRule(1024, 128, True),
    "openrouter": _CacheRule(1024, 128, True),
    "deepseek": _CacheRule(64, 64, True),
    "vllm": _CacheRule(16, 16, False),
    "sglang": _CacheRule(1, 1, False),
    "gemini": _CacheRule(1024, 1, True),
}

#: Default cache TTLs in seconds (None: never expires, evicted only by reset). Anthropic's are per
#: breakpoint TTL. Gemini's implicit cache and DeepSeek's disk cache publish no TTL: a guess.
DEFAULT_CACHE_TTL_S: dict[str, float | None] = {
    "openai": 300.0,
    "openrouter": 300.0,
    "deepseek": 3600.0,
    "vllm": None,
    "sglang": None,
    "gemini": 300.0,
    "anthropic_5m": 300.0,
    "anthropic_1h": 3600.0,
}


class _PrefixCache:
    """Prompt prefixes seen recently, by (scope, chained hash of the prefix) -> expiry."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, int, int], float] = {}

    def clear(self) -> None:
        self._entries.clear()

    def _hit(self, key: tuple[Any, int, int], now: float) -> bool:
        exp = self._entries.get(key)
        if exp is None:
            return False
        if exp <= now:
            del self._entries[key]
            return False
        return True

    def prefix(
        self, scope: Any, words: Sequence[str], rule: _CacheRule, min_tokens: int, ttl: float | None
    ) -> int:
        """The longest cached prefix of `words` (0 under the minimum); stores this prompt's."""
        limit = len(words) if rule.whole_prompt else len(words) - 1
        if limit < min_tokens:
            return 0
        now = time.monotonic()
        exp = math.inf if ttl is None else now + ttl
        unit = rule.unit
        h = 0
        hit = 0
        stored = []
        for end in range(unit, limit + 1, unit):
            h = hash((h, *words[end - unit : end]))
            if end < min_tokens:
                continue
            key = (scope, end, h)
            if self._hit(key, now):
                hit = end
            stored.append(key)
        for key in stored:
            self._entries[key] = exp
        return hit

    def breakpoints(
        self,
        scope: Any,
        words: Sequence[str],
        points: Sequence[tuple[int, str]],
        min_tokens: int,
        ttls: Mapping[str, float | None],
    ) -> tuple[int, int, int]:
        """Anthropic: (cache read, 5m writes, 1h writes) for a prompt with these breakpoints."""
        usable = sorted({p for p in points if p[0] >= min_tokens})
        if not usable:
            return 0, 0, 0
        now = time.monotonic()
        keys = []
        h = 0
        start = 0
        for pos, ttl in usable:
            h = hash((h, *words[start:pos]))
            start = pos
            keys.append(((scope, pos, h), ttl))
        read = 0
        for (key, _), (pos, _) in zip(reversed(keys), reversed(usable), strict=True):
            if self._hit(key, now):
                read = pos
                break
        writes = {"5m": 0, "1h": 0}
        prev = read
        for (key, ttl), (pos, _) in zip(keys, usable, strict=True):
            if pos > prev:
                writes[ttl] += pos - prev
                prev = pos
            t = ttls.get(ttl)
            self._entries[key] = math.inf if t is None else now + t
        return read, writes["5m"], writes["1h"]


# ---- one exchange -------------------------------------------------------------------------------

_ids = itertools.count(1)


@dataclass
class _Exchange:
    """What one served request answers: everything the wire writers need."""

    provider: str
    model: str
    prompt_tokens: int
    answer: int  # words in the full answer
    finish: Literal["stop", "length", "content_filter"]
    include_usage: bool
    cached: int = 0  # tokens read from the prompt cache
    write_5m: int = 0  # Anthropic cache writes
    write_1h: int = 0
    id: int = field(default_factory=lambda: next(_ids))
    created: int = field(default_factory=lambda: int(time.time()))
    prompt_blocked: bool = False


def _word(i: int) -> str:
    return f"w{i + 1} "


def _answer_text(n: int) -> str:
    return "".join(_word(i) for i in range(n))


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else _DUMPS(data)
    if event is None:
        return f"data: {payload}\n\n".encode()
    return f"event: {event}\ndata: {payload}\n\n".encode()


# ---- OpenAI chat completions and its dialects ---------------------------------------------------


class _Chat:
    api = "chat_completions"

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def usage(self, ex: _Exchange, out: int) -> dict[str, Any]:
        u: dict[str, Any] = {
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": out,
            "total_tokens": ex.prompt_tokens + out,
            "prompt_tokens_details": {"cached_tokens": ex.cached},
        }
        if self.provider == "openai":
            u["prompt_tokens_details"]["audio_tokens"] = 0
            u["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        elif self.provider == "deepseek":
            u["prompt_cache_hit_tokens"] = ex.cached
            u["prompt_cache_miss_tokens"] = ex.prompt_tokens - ex.cached
        elif self.provider == "openrouter":
            u["completion_tokens_details"] = {"reasoning_tokens": 0}
        return u

    def _finish(self, ex: _Exchange) -> str:
        return ex.finish

    def _head(self, ex: _Exchange) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-fake{ex.id}",
            "object": "chat.completion",
            "created": ex.created,
            "model": ex.model,
            "system_fingerprint": "fp_fake",
        }

    def body(self, ex: _Exchange, out: int) -> dict[str, Any]:
        b = self._head(ex)
        b["choices"] = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _answer_text(out), "refusal": None},
                "logprobs": None,
                "finish_reason": self._finish(ex),
            }
        ]
        b["usage"] = self.usage(ex, out)
        return b

    def _chunk(self, ex: _Exchange, choices: list[Any]) -> dict[str, Any]:
        c = self._head(ex)
        c["object"] = "chat.completion.chunk"
        c["choices"] = choices
        if ex.include_usage:
            c["usage"] = None
        return c

    def stream_head(self, ex: _Exchange) -> bytes:
        delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return _sse(self._chunk(ex, [choice]))

    def stream_delta(self, ex: _Exchange, i: int) -> bytes:
        choice = {
            "index": 0,
            "delta": {"content": _word(i)},
            "logprobs": None,
            "finish_reason": None,
        }
        return _sse(self._chunk(ex, [choice]))

    def stream_tail(self, ex: _Exchange, out: int) -> bytes:
        choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": self._finish(ex)}
        parts = [_sse(self._chunk(ex, [choice]))]
        if ex.include_usage:
            last = self._chunk(ex, [])
            last["usage"] = self.usage(ex, out)
            parts.append(_sse(last))
        parts.append(b"data: [DONE]\n\n")
        return b"".join(parts)

    def stream_error(self, ex: _Exchange, out: int) -> bytes:
        if self.provider == "openrouter":
            # OpenRouter: a chunk with a top-level error and finish_reason "error".
            c = self._chunk(ex, [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}])
            c["error"] = {"code": "server_error", "message": "Provider disconnected"}
            return _sse(c)
        err = {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
        return _sse({"error": err})

    def error(self, kind: str, ex: _Exchange | None, info: Mapping[str, Any]) -> tuple[int, Any]:
        p = self.provider
        if kind == "context_window":
            return 400, self._context_error(info)
        status, code, etype, message = {
            "rate_limited": (
                429,
                "rate_limit_exceeded",
                "requests",
                f"Rate limit reached for {info.get('model')} on requests per min (RPM): "
                f"Limit 60, Used 60, Requested 1. Please try again in {info.get('retry')}s.",
            ),
            "overloaded": (503, None, "server_error", "The server is overloaded or not ready yet."),
            "server_error": (
                500,
                None,
                "server_error",
                "The server had an error while processing your request. Sorry about that!",
            ),
            "auth": (
                401,
                "invalid_api_key",
                "invalid_request_error",
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
            ),
            "unauthorized": (
                401,
                None,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ),
            "billing": (
                429,
                "insufficient_quota",
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
            ),
            "invalid_request": (400, None, "invalid_request_error", info.get("message", "")),
        }[kind]
        if p == "deepseek":
            status, message, etype = {
                "rate_limited": (429, "Rate Limit Reached", "rate_limit_error"),
                "overloaded": (503, "Server Overloaded", "server_overloaded"),
                "server_error": (500, "Server Error", "server_error"),
                "auth": (
                    401,
                    "Authentication Fails, Your api key is invalid",
                    "authentication_error",
                ),
                "unauthorized": (
                    401,
                    "Authentication Fails (no such user)",
                    "authentication_error",
                ),
                "billing": (402, "Insufficient Balance", "unknown_error"),
                "invalid_request": (400, info.get("message", ""), "invalid_request_error"),
            }[kind]
            return status, {
                "error": {
                    "message": message,
                    "type": etype,
                    "param": None,
                    "code": "invalid_request_error",
                }
            }
        if p == "openrouter":
            status, message = {
                "rate_limited": (429, "Rate limit exceeded: too many requests"),
                "overloaded": (
                    503,
                    "No available model provider that meets your routing requirements",
                ),
                "server_error": (500, "Internal Server Error"),
                "auth": (401, "User not found."),
                "unauthorized": (401, "No auth credentials found"),
                "billing": (
                    402,
                    "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
                ),
                "invalid_request": (400, info.get("message", "")),
            }[kind]
            return status, {"error": {"code": status, "message": message, "metadata": {}}}
        if p == "vllm":
            vtype = {400: "BadRequestError", 401: "Unauthorized", 429: "TooManyRequests"}.get(
                status, "InternalServerError" if status == 500 else "ServiceUnavailable"
            )
            return status, {
                "error": {"message": message, "type": vtype, "param": None, "code": status}
            }
        if p == "sglang":
            stype = {400: "BadRequest", 401: "Unauthorized", 429: "TooManyRequests"}.get(
                status, "InternalServerError" if status == 500 else "ServiceUnavailable"
            )
            return status, {
                "object": "error",
                "message": message,
                "type": stype,
                "param": None,
                "code": status,
            }
        return status, {"error": {"message": message, "type": etype, "param": None, "code": code}}

    def _context_error(self, info: Mapping[str, Any]) -> Any:
        n, mt, window = info["prompt_tokens"], info["max_tokens"] or 0, info["window"]
        total = n + mt
        p = self.provider
        if p == "openrouter":
            message = (
                f"This endpoint's maximum context length is {window} tokens. However, you "
                f"requested about {total} tokens ({n} of text input, {mt} in the output). Please "
                'reduce the length of either one, or use the "middle-out" transform to compress '
                "your prompt automatically."
            )
            return {"error": {"code": 400, "message": message, "metadata": {}}}
        if p == "sglang":
            message = (
                f"Requested token count exceeds the model's maximum context length of {window} "
                f"tokens. You requested a total of {total} tokens: {n} tokens from the input "
                f"messages and {mt} tokens for the completion. Please reduce the number of tokens "
                "in the input messages or the completion to fit within the limit."
            )
            return {
                "object": "error",
                "message": message,
                "type": "BadRequest",
                "param": None,
                "code": 400,
            }
        if mt:
            message = (
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{total} tokens ({n} in the messages, {mt} in the completion). Please reduce the "
                "length of the messages or completion."
            )
        else:
            message = (
                f"This model's maximum context length is {window} tokens. However, your messages "
                f"resulted in {n} tokens. Please reduce the length of the messages."
            )
        if p == "vllm":
            return {
                "error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}
            }
        if p == "deepseek":
            err = {"message": message, "type": "invalid_request_error", "param": None}
            return {"error": {**err, "code": "invalid_request_error"}}
        err = {"message": message, "type": "invalid_request_error", "param": "messages"}
        return {"error": {**err, "code": "context_length_exceeded"}}


# ---- OpenAI Responses ---------------------------------------------------------------------------


class _Responses(_Chat):
    api = "responses"

    def __init__(self) -> None:
        super().__init__("openai")

    def usage(self, ex: _Exchange, out: int) -> dict[str, Any]:
        return {
            "input_tokens": ex.prompt_tokens,
            "input_tokens_details": {"cached_tokens": ex.cached},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": ex.prompt_tokens + out,
        }

    def _message(self, ex: _Exchange, text: str, status: str) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "id": f"msg_fake{ex.id}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part] if status != "in_progress" else [],
        }

    def _response(self, ex: _Exchange, out: int | None) -> dict[str, Any]:
        done = out is not None
        if not done:
            status, incomplete = "in_progress", None
        elif ex.finish == "stop":
            status, incomplete = "completed", None
        else:
            reason = "max_output_tokens" if ex.finish == "length" else "content_filter"
            status, incomplete = "incomplete", {"reason": reason}
        return {
            "id": f"resp_fake{ex.id}",
            "object": "response",
            "created_at": ex.created,
            "status": status,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": None,
            "model": ex.model,
            "output": [self._message(ex, _answer_text(out), "completed")] if done else [],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "usage": self.usage(ex, out) if done else None,
            "metadata": {},
        }

    def body(self, ex: _Exchange, out: int) -> dict[str, Any]:
        return self._response(ex, out)

    def _event(self, ex: _Exchange, name: str, data: dict[str, Any], seq: int) -> bytes:
        return _sse({"type": name, **data, "sequence_number": seq}, name)

    def stream_head(self, ex: _Exchange) -> bytes:
        r = self._response(ex, None)
        item = self._message(ex, "", "in_progress")
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        ids = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        return b"".join(
            (
                self._event(ex, "response.created", {"response": r}, 0),
                self._event(ex, "response.in_progress", {"response": r}, 1),
                self._event(ex, "response.output_item.added", {"output_index": 0, "item": item}, 2),
                self._event(ex, "response.content_part.added", {**ids, "part": part}, 3),
            )
        )

    def stream_delta(self, ex: _Exchange, i: int) -> bytes:
        data = {
            "item_id": f"msg_fake{ex.id}",
            "output_index": 0,
            "content_index": 0,
            "delta": _word(i),
            "logprobs": [],
        }
        return self._event(ex, "response.output_text.delta", data, 4 + i)

    def stream_tail(self, ex: _Exchange, out: int) -> bytes:
        text = _answer_text(out)
        item = self._message(ex, text, "completed")
        part = item["content"][0]
        ids = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        seq = 4 + out
        final = self._response(ex, out)
        last = "response.completed" if final["status"] == "completed" else "response.incomplete"
        return b"".join(
            (
                self._event(
                    ex, "response.output_text.done", {**ids, "text": text, "logprobs": []}, seq
                ),
                self._event(ex, "response.content_part.done", {**ids, "part": part}, seq + 1),
                self._event(
                    ex, "response.output_item.done", {"output_index": 0, "item": item}, seq + 2
                ),
                self._event(ex, last, {"response": final}, seq + 3),
            )
        )

    def stream_error(self, ex: _Exchange, out: int) -> bytes:
        data = {
            "code": "server_error",
            "message": "The server had an error while processing your request. Sorry about that!",
            "param": None,
        }
        return self._event(ex, "error", data, 4 + out)

    def _context_error(self, info: Mapping[str, Any]) -> Any:
        message = (
            "Your input exceeds the context window of this model. "
            "Please adjust your input and try again."
        )
        err = {"message": message, "type": "invalid_request_error", "param": "input"}
        return {"error": {**err, "code": "context_length_exceeded"}}


# ---- Anthropic Messages -------------------------------------------------------------------------


class _Anthropic:
    api = "messages"
    provider = "anthropic"

    def usage(self, ex: _Exchange, out: int) -> dict[str, Any]:
        writes = ex.write_5m + ex.write_1h
        return {
            "input_tokens": ex.prompt_tokens - ex.cached - writes,
            "cache_creation_input_tokens": writes,
            "cache_read_input_tokens": ex.cached,
            "cache_creation": {
                "ephemeral_5m_input_tokens": ex.write_5m,
                "ephemeral_1h_input_tokens": ex.write_1h,
            },
            "output_tokens": out,
            "service_tier": "standard",
        }

    def _stop(self, ex: _Exchange) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}[ex.finish]

    def _message(
        self, ex: _Exchange, content: list[Any], stop: str | None, out: int
    ) -> dict[str, Any]:
        return {
            "id": f"msg_fake{ex.id:020d}",
            "type": "message",
            "role": "assistant",
            "model": ex.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self.usage(ex, out),
        }

    def body(self, ex: _Exchange, out: int) -> dict[str, Any]:
        content = [{"type": "text", "text": _answer_text(out)}] if out else []
        return self._message(ex, content, self._stop(ex), out)

    def stream_head(self, ex: _Exchange) -> bytes:
        start = {"type": "message_start", "message": self._message(ex, [], None, 1)}
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return b"".join(
            (
                _sse(start, "message_start"),
                _sse(block, "content_block_start"),
                _sse({"type": "ping"}, "ping"),
            )
        )

    def stream_delta(self, ex: _Exchange, i: int) -> bytes:
        d = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": _word(i)},
        }
        return _sse(d, "content_block_delta")

    def stream_tail(self, ex: _Exchange, out: int) -> bytes:
        u = self.usage(ex, out)
        del u["cache_creation"], u["service_tier"]
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop(ex), "stop_sequence": None},
            "usage": u,
        }
        return b"".join(
            (
                _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                _sse(delta, "message_delta"),
                _sse({"type": "message_stop"}, "message_stop"),
            )
        )

    def stream_error(self, ex: _Exchange, out: int) -> bytes:
        err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return _sse(err, "error")

    def error(self, kind: str, ex: _Exchange | None, info: Mapping[str, Any]) -> tuple[int, Any]:
        if kind == "context_window":
            n, mt, window = info["prompt_tokens"], info["max_tokens"] or 0, info["window"]
            if info.get("auto") and n <= window:
                message = (
                    f"input length and `max_tokens` exceed context limit: {n} + {mt} > {window}, "
                    "decrease input length or `max_tokens` and try again"
                )
            else:
                message = f"prompt is too long: {n} tokens > {window} maximum"
            status, etype = 400, "invalid_request_error"
        else:
            status, etype, message = {
                "rate_limited": (
                    429,
                    "rate_limit_error",
                    "This request would exceed the rate limit for your organization of 50 "
                    "requests per minute. Please reduce the prompt length or the maximum tokens "
                    "requested, or try again later.",
                ),
                "overloaded": (529, "overloaded_error", "Overloaded"),
                "server_error": (500, "api_error", "Internal server error"),
                "auth": (401, "authentication_error", "invalid x-api-key"),
                "unauthorized": (401, "authentication_error", "x-api-key header is required"),
                "billing": (
                    400,
                    "invalid_request_error",
                    "Your credit balance is too low to access the Anthropic API. Please go to "
                    "Plans & Billing to upgrade or purchase credits.",
                ),
                "invalid_request": (400, "invalid_request_error", info.get("message", "")),
            }[kind]
        return status, {
            "type": "error",
            "error": {"type": etype, "message": message},
            "request_id": f"req_fake{next(_ids)}",
        }


# ---- Gemini -------------------------------------------------------------------------------------


class _Gemini:
    api = "generate_content"
    provider = "gemini"

    def usage(self, ex: _Exchange, out: int) -> dict[str, Any]:
        # proto3 JSON: zero counts are omitted, as the API does.
        u: dict[str, Any] = {"promptTokenCount": ex.prompt_tokens}
        if out:
            u["candidatesTokenCount"] = out
        u["totalTokenCount"] = ex.prompt_tokens + out
        if ex.cached:
            u["cachedContentTokenCount"] = ex.cached
        u["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": ex.prompt_tokens}]
        if ex.cached:
            u["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": ex.cached}]
        return u

    def _finish(self, ex: _Exchange) -> str:
        return {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}[ex.finish]

    def _chunk(
        self, ex: _Exchange, text: str | None, finish: str | None, out: int
    ) -> dict[str, Any]:
        if ex.prompt_blocked:
            return {
                "promptFeedback": {
                    "blockReason": "SAFETY",
                    "safetyRatings": [
                        {
                            "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                            "probability": "HIGH",
                            "blocked": True,
                        }
                    ],
                },
                "usageMetadata": self.usage(ex, 0),
                "modelVersion": ex.model,
                "responseId": f"fake{ex.id}",
            }
        cand: dict[str, Any] = {"index": 0}
        if text:
            cand["content"] = {"parts": [{"text": text}], "role": "model"}
        if finish:
            cand["finishReason"] = finish
            if finish == "SAFETY":
                cand["safetyRatings"] = [
                    {
                        "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                        "probability": "HIGH",
                        "blocked": True,
                    }
                ]
        return {
            "candidates": [cand],
            "usageMetadata": self.usage(ex, out),
            "modelVersion": ex.model,
            "responseId": f"fake{ex.id}",
        }

    def body(self, ex: _Exchange, out: int) -> dict[str, Any]:
        return self._chunk(ex, _answer_text(out), self._finish(ex), out)

    def stream_head(self, ex: _Exchange) -> bytes:
        return b""

    def stream_delta(self, ex: _Exchange, i: int) -> bytes:
        return _sse_crlf(self._chunk(ex, _word(i), None, i + 1))

    def stream_tail(self, ex: _Exchange, out: int) -> bytes:
        return _sse_crlf(self._chunk(ex, None, self._finish(ex), out))

    def stream_error(self, ex: _Exchange, out: int) -> bytes:
        return _sse_crlf(self.error("overloaded", ex, {})[1])

    def error(self, kind: str, ex: _Exchange | None, info: Mapping[str, Any]) -> tuple[int, Any]:
        details: list[Any] = []
        if kind == "context_window":
            n, window = info["prompt_tokens"], info["window"]
            status, gstatus = 400, "INVALID_ARGUMENT"
            message = (
                f"The input token count ({n}) exceeds the maximum number of tokens allowed "
                f"({window})."
            )
        elif kind == "rate_limited":
            status, gstatus = 429, "RESOURCE_EXHAUSTED"
            retry = info.get("retry") or 1
            message = (
                "You exceeded your current quota, please check your plan and billing details. "
                f"Please retry in {retry}s."
            )
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry}s"},
            ]
        elif kind == "unauthorized":
            if info.get("key_given"):
                status, gstatus = 400, "INVALID_ARGUMENT"
                message = "API key not valid. Please pass a valid API key."
                details = [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ]
            else:
                status, gstatus = 403, "PERMISSION_DENIED"
                message = (
                    "Method doesn't allow unregistered callers (callers without established "
                    "identity). Please use API Key or other form of API consumer identity to call "
                    "this API."
                )
        else:
            status, gstatus, message = {
                "overloaded": (
                    503,
                    "UNAVAILABLE",
                    "The model is overloaded. Please try again later.",
                ),
                "server_error": (
                    500,
                    "INTERNAL",
                    "An internal error has occurred. Please retry or report in "
                    "https://developers.generativeai.google/guide/troubleshooting",
                ),
                "auth": (
                    403,
                    "PERMISSION_DENIED",
                    "Permission denied: the API key has been suspended.",
                ),
                "billing": (
                    400,
                    "FAILED_PRECONDITION",
                    "Gemini API free tier is not available in your country. Please enable billing "
                    "on your project in Google AI Studio.",
                ),
                "invalid_request": (400, "INVALID_ARGUMENT", info.get("message", "")),
            }[kind]
        err: dict[str, Any] = {"code": status, "message": message, "status": gstatus}
        if details:
            err["details"] = details
        return status, {"error": err}


def _sse_crlf(data: Any) -> bytes:
    return b"data: " + _DUMPS(data).encode() + b"\r\n\r\n"


# ---- the server ---------------------------------------------------------------------------------


class FakeProviders:
    """Fake LLM providers on one loopback port (see the module's doc for the behaviour).

    `api_keys`: None accepts any request; an iterable of keys accepted by every provider; or a
    mapping provider -> key (a provider it does not name takes any request, as a pool without
    keys does). When given, each provider's own auth header is checked (Bearer,
    x-api-key, x-goog-api-key) and a request without a valid key gets that provider's 401 shape.
    `cache_ttl_s` overrides entries of DEFAULT_CACHE_TTL_S (e.g. {"openai": 0.2} in a test).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | Mapping[str, str] | None = None,
        ttft_s: float = 0.0,
        gap_s: float = 0.0,
        answer_tokens: int = 8,
        cache_ttl_s: Mapping[str, float | None] | None = None,
        record: bool = True,
        ttft_jitter_s: float = 0.0,
    ) -> None:
        self.host = host
        self._port = port
        if api_keys is None:
            self._keys: dict[str, frozenset[str]] | None = None
        elif isinstance(api_keys, Mapping):
            self._keys = {p: frozenset([k]) for p, k in api_keys.items()}
        else:
            keys = frozenset(api_keys)
            self._keys = dict.fromkeys(PROVIDERS, keys)
        self.defaults = _ModelSettings(
            context_window=None,
            answer_tokens=answer_tokens,
            ttft_s=ttft_s,
            gap_s=gap_s,
            ttft_jitter_s=_jitter(ttft_jitter_s),
        )
        self._jitter_rngs: dict[str, random.Random] = {}  # per model, see the module's doc
        unknown = set(cache_ttl_s or ()) - set(DEFAULT_CACHE_TTL_S)
        if unknown:
            raise ValueError(f"unknown cache_ttl_s keys {sorted(unknown)}")
        self.cache_ttl_s: dict[str, float | None] = {**DEFAULT_CACHE_TTL_S, **(cache_ttl_s or {})}
        self.record = record
        self._models: dict[str, _ModelSettings] = {}
        self._scripts: dict[str, deque[Fault]] = {}
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._cache = _PrefixCache()
        self._apis: dict[str, Any] = {p: _Chat(p) for p in DIALECTS}
        self._responses = _Responses()
        self._anthropic = _Anthropic()
        self._gemini = _Gemini()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- scripting ---------------------------------------------------------------------------

    def script(self, model: str, faults: Iterable[Fault]) -> None:
        """The next requests for `model` take these faults in order (appended to any left)."""
        faults = list(faults)
        for f in faults:
            if not isinstance(f, Fault):
                raise TypeError(f"script expects Fault values, got {type(f).__name__}")
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(faults)

    def model(
        self,
        name: str,
        *,
        context_window: int | None = None,
        answer_tokens: int | None = None,
        ttft_s: float | None = None,
        gap_s: float | None = None,
        cache_min_tokens: int | None = None,
        ttft_jitter_s: float | None = None,
    ) -> None:
        """Settings of one model: its context window (a request over it gets the provider's
        context error by itself), answer length, timing (`ttft_jitter_s`: see the module's doc)
        and prompt-cache minimum."""
        jitter = None if ttft_jitter_s is None else _jitter(ttft_jitter_s)
        with self._lock:
            self._models[name] = _ModelSettings(
                context_window, answer_tokens, ttft_s, gap_s, cache_min_tokens, jitter
            )

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def pending(self, model: str) -> int:
        """How many scripted faults `model` has not taken yet."""
        with self._lock:
            return len(self._scripts.get(model, ()))

    def reset(self) -> None:
        """Forget scripts, model settings, recorded requests and prompt caches."""
        with self._lock:
            self._scripts.clear()
            self._models.clear()
            self._requests.clear()
            self._cache.clear()
            self._jitter_rngs.clear()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if self._runner is None:
            raise RuntimeError("FakeProviders is not running")
        return self._port

    @property
    def url(self) -> str:
        """http://host:port, the root of the server."""
        return f"http://{self.host}:{self.port}"

    def base_url(self, provider: str) -> str:
        """The base URL the provider's SDK takes (OpenAI-style: .../<dialect>/v1)."""
        if provider in DIALECTS:
            return f"{self.url}/{provider}/v1"
        if provider in ("anthropic", "gemini"):
            return f"{self.url}/{provider}"
        raise ValueError(f"unknown provider {provider!r} (one of {', '.join(PROVIDERS)})")

    # -- lifecycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application (for embedding in another server)."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        for d in DIALECTS:
            r.add_post(f"/{d}/v1/chat/completions", self._handler(self._apis[d]))
        r.add_post("/openai/v1/responses", self._handler(self._responses))
        r.add_post("/anthropic/v1/messages", self._handler(self._anthropic))
        # v1beta is what the adapters call; google-genai 3.x defaults to v1 (same shapes here).
        r.add_post("/gemini/{version:v1beta|v1}/models/{target}", self._handler(self._gemini))
        r.add_post("/_fake/script", self._control_script)
        r.add_post("/_fake/model", self._control_model)
        r.add_get("/_fake/requests", self._control_requests)
        r.add_post("/_fake/reset", self._control_reset)
        return app

    async def astart(self) -> None:
        """Start serving on the running event loop."""
        if self._runner is not None:
            raise RuntimeError("FakeProviders is already running")
        runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, backlog=1024)
        await site.start()
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def astop(self) -> None:
        """Stop serving (open connections are closed)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeProviders:
        await self.astart()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    def start(self) -> FakeProviders:
        """Start serving on a background thread with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("FakeProviders is already running")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.astop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name="turnout-fake-providers", daemon=True)
        thread.start()
        started.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Stop the background server started by start()."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = self._loop = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------

    def _settings(self, model: str | None) -> tuple[_ModelSettings, _ModelSettings | None]:
        return self.defaults, self._models.get(model) if model else None

    def _take(self, model: str | None) -> Fault:
        if not model:
            return _OK
        with self._lock:
            q = self._scripts.get(model)
            if not q:
                return _OK
            return q.popleft()

    def _authorized(self, provider: str, request: web.Request) -> tuple[bool, bool]:
        """(authorized, a key was given)."""
        if self._keys is None or provider not in self._keys:
            return True, True  # a provider the mapping does not name takes no key (a pool)
        h = request.headers
        auth = h.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else None
        if provider == "anthropic":
            # x-api-key; the Anthropic SDK 2.x sends Authorization: Bearer, also accepted.
            key = h.get("x-api-key") or key
        elif provider == "gemini":
            key = h.get("x-goog-api-key") or request.query.get("key")
        return key is not None and key in self._keys.get(provider, ()), bool(key)

    def _handler(self, wire: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, wire)

        return handle

    def _note(
        self,
        request: web.Request,
        wire: Any,
        body: Any,
        model: str | None,
        stream: bool,
        fault: str,
    ) -> None:
        if not self.record:
            return
        rec = RecordedRequest(
            provider=wire.provider,
            api=wire.api,
            path=request.path_qs,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            model=model,
            stream=stream,
            fault=fault,
        )
        with self._lock:
            self._requests.append(rec)

    @staticmethod
    def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status,
            body=_DUMPS(body).encode(),
            content_type="application/json",
            headers=headers,
        )

    async def _serve(self, request: web.Request, wire: Any) -> web.StreamResponse:
        raw = await request.read()
        model: str | None
        if wire is self._gemini:
            target = request.match_info["target"]
            model, _, action = target.rpartition(":")
            if action not in ("generateContent", "streamGenerateContent"):
                return self._json(
                    404,
                    {
                        "error": {
                            "code": 404,
                            "message": f"unknown method {action}",
                            "status": "NOT_FOUND",
                        }
                    },
                )
            stream = action == "streamGenerateContent"
        else:
            model, stream = None, False
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._note(request, wire, body, model, stream, "invalid_request")
            status, err = wire.error(
                "invalid_request", None, {"message": "the body is not a JSON object"}
            )
            return self._json(status, err)
        if wire is not self._gemini:
            m = body.get("model")
            model = m if isinstance(m, str) else None
            stream = body.get("stream") is True

        ok, key_given = self._authorized(wire.provider, request)
        if not ok:
            self._note(request, wire, body, model, stream, "unauthorized")
            # A wrong key gets the provider's invalid-key answer (Gemini's has its own shape).
            kind = "auth" if key_given and wire is not self._gemini else "unauthorized"
            return self._json(*wire.error(kind, None, {"key_given": key_given}))
        if wire is self._anthropic and "anthropic-version" not in request.headers:
            self._note(request, wire, body, model, stream, "invalid_request")
            return self._json(
                *wire.error(
                    "invalid_request", None, {"message": "anthropic-version: header is required"}
                )
            )

        try:
            prompt = self._prompt(wire, body)
        except _BadRequest as e:
            self._note(request, wire, body, model, stream, "invalid_request")
            return self._json(*wire.error("invalid_request", None, {"message": str(e)}))

        defaults, ms = self._settings(model)
        fault = self._take(model)
        n = len(prompt.words)
        window = ms.context_window if ms else None
        over = window is not None and (
            n > window if wire is self._gemini else n + (prompt.max_tokens or 0) > window
        )
        if over and fault.kind == "ok":
            fault = Fault("context_window")
        self._note(request, wire, body, model, stream, fault.kind)
        kind = fault.kind

        if kind == "hang":
            await asyncio.sleep(fault.seconds)
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if kind == "context_window":
            info = {
                "prompt_tokens": n,
                "max_tokens": prompt.max_tokens,
                "window": window if window is not None else max(n - 1, 0),
                "auto": over,
            }
            return self._json(*wire.error(kind, None, info))
        if kind in ("rate_limited", "overloaded", "server_error", "auth", "billing"):
            retry = fault.retry_after_s
            retry_text = f"{retry:g}" if retry is not None else "1"
            status, err = wire.error(kind, None, {"model": model, "retry": retry_text})
            headers = None
            if kind == "rate_limited" and wire is not self._gemini and retry is not None:
                headers = {"retry-after": retry_text}
            return self._json(status, err, headers)
        if kind == "error_mid_stream" and not stream:
            return self._json(*wire.error("server_error", None, {}))

        # A served answer (ok, content_filter, cut_after, error_mid_stream).
        cap = fault.answer_tokens or (ms.answer_tokens if ms and ms.answer_tokens else None)
        cap = cap if cap is not None else defaults.answer_tokens or 0
        mt = prompt.max_tokens
        if kind == "content_filter":
            answer, finish = fault.k, "content_filter"
        elif mt is not None and mt < cap:
            answer, finish = max(mt, 0), "length"
        else:
            answer, finish = cap, "stop"
        ex = _Exchange(
            provider=wire.provider,
            model=model or "",
            prompt_tokens=n,
            answer=answer,
            finish=finish,
            include_usage=self._include_usage(wire, body),
            prompt_blocked=kind == "content_filter"
            and fault.prompt_blocked
            and wire is self._gemini,
        )
        if ex.prompt_blocked:
            ex.answer = 0
        self._cache_usage(wire, body, prompt, ms, ex)
        ttft = _first(fault.ttft_s, ms.ttft_s if ms else None, defaults.ttft_s)
        jitter = _first(ms.ttft_jitter_s if ms else None, defaults.ttft_jitter_s)
        if jitter and fault.ttft_s is None:
            rng = self._jitter_rngs.get(model or "")
            if rng is None:
                rng = self._jitter_rngs[model or ""] = random.Random(0)
            ttft = max(0.0, ttft + rng.uniform(-jitter, jitter))
        gap = _first(fault.gap_s, ms.gap_s if ms else None, defaults.gap_s)
        if not stream:
            if ttft or gap:
                await asyncio.sleep(ttft + gap * max(ex.answer - 1, 0))
            payload = _DUMPS(wire.body(ex, ex.answer)).encode()
            if kind == "cut_after":
                return await self._truncated(request, payload)
            return web.Response(body=payload, content_type="application/json")
        return await self._stream(request, wire, ex, fault, ttft, gap)

    @staticmethod
    def _prompt(wire: Any, body: dict[str, Any]) -> _Prompt:
        if isinstance(wire, _Responses):
            return _responses_prompt(body)
        if isinstance(wire, _Chat):
            return _openai_chat_prompt(body)
        if isinstance(wire, _Anthropic):
            return _anthropic_prompt(body)
        return _gemini_prompt(body)

    @staticmethod
    def _include_usage(wire: Any, body: dict[str, Any]) -> bool:
        if not isinstance(wire, _Chat) or isinstance(wire, _Responses):
            return True
        so = body.get("stream_options")
        if isinstance(so, dict) and so.get("include_usage") is True:
            return True
        # OpenRouter always sends usage at the end of a stream.
        return wire.provider == "openrouter"

    def _cache_usage(
        self,
        wire: Any,
        body: dict[str, Any],
        prompt: _Prompt,
        ms: _ModelSettings | None,
        ex: _Exchange,
    ) -> None:
        words = prompt.words
        min_override = ms.cache_min_tokens if ms else None
        if wire is self._anthropic:
            if not prompt.breakpoints:
                return
            ttls = {"5m": self.cache_ttl_s["anthropic_5m"], "1h": self.cache_ttl_s["anthropic_1h"]}
            minimum = min_override if min_override is not None else 1024
            ex.cached, ex.write_5m, ex.write_1h = self._cache.breakpoints(
                ("anthropic", ex.model), words, prompt.breakpoints, minimum, ttls
            )
            return
        rule = _CACHE_RULES[wire.provider]
        minimum = max(min_override if min_override is not None else rule.min_tokens, rule.unit)
        if len(words) < minimum:
            return
        key = body.get("prompt_cache_key") if wire.provider == "openai" else None
        scope = (wire.provider, ex.model, key if isinstance(key, str) else None)
        ex.cached = self._cache.prefix(scope, words, rule, minimum, self.cache_ttl_s[wire.provider])

    @staticmethod
    async def _truncated(request: web.Request, payload: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError

    async def _stream(
        self, request: web.Request, wire: Any, ex: _Exchange, fault: Fault, ttft: float, gap: float
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await resp.prepare(request)
        kind = fault.kind
        sent = (
            ex.answer if kind not in ("cut_after", "error_mid_stream") else min(fault.k, ex.answer)
        )
        if ex.prompt_blocked:
            sent = 0
        if not (ttft or gap) and kind == "ok":
            # Nothing to wait for: the same bytes in one write (the benchmarks' hot path).
            parts = [wire.stream_head(ex)]
            parts.extend(wire.stream_delta(ex, i) for i in range(sent))
            parts.append(wire.stream_tail(ex, sent))
            await resp.write(b"".join(parts))
            await resp.write_eof()
            return resp
        head = wire.stream_head(ex)
        if head:
            await resp.write(head)
        for i in range(sent):
            delay = ttft if i == 0 else gap
            if delay:
                await asyncio.sleep(delay)
            await resp.write(wire.stream_delta(ex, i))
        if kind == "cut_after":
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if kind == "error_mid_stream":
            await resp.write(wire.stream_error(ex, sent))
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if not sent and ttft:
            await asyncio.sleep(ttft)
        await resp.write(wire.stream_tail(ex, sent))
        await resp.write_eof()
        return resp

    # -- control API (for a fake run as a process) ---------------------------------------------

    async def _control_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"not JSON: {e}") from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return body

    async def _control_script(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        try:
            model = body["model"]
            faults = [Fault.from_json(f) for f in body.get("faults", [])]
            if not isinstance(model, str):
                raise TypeError("model must be a string")
        except (KeyError, TypeError, ValueError) as e:
            raise web.HTTPBadRequest(text=f"bad script: {e!r}") from e
        self.script(model, faults)
        return self._json(200, {"ok": True, "pending": self.pending(model)})

    async def _control_model(self, request: web.Request) -> web.Response:
        body = await self._control_body(request)
        try:
            self.model(**body)
        except (TypeError, ValueError) as e:
            raise web.HTTPBadRequest(text=f"bad model: {e}") from e
        return self._json(200, {"ok": True})

    async def _control_requests(self, request: web.Request) -> web.Response:
        return self._json(200, [asdict(r) for r in self.requests])

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return self._json(200, {"ok": True})


def _jitter(seconds: float) -> float:
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"ttft_jitter_s must be a finite number >= 0, got {seconds!r}")
    return float(seconds)


def _first(*values: float | None) -> float:
    for v in values:
        if v is not None:
            return v
    return 0.0


# ---- process entry point ------------------------------------------------------------------------


async def _serve_forever(fake: FakeProviders) -> None:
    await fake.astart()
    print(json.dumps({"port": fake.port, "url": fake.url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.astop()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m turnout.testing.fake_providers --port 0`: serve until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(
        prog="python -m turnout.testing.fake_providers", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="gap between tokens")
    ap.add_argument(
        "--ttft-jitter-ms", type=float, default=0.0, help="time to first token uniform in ± this"
    )
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument("--api-key", action="append", help="accepted key (repeatable); none: no auth")
    ap.add_argument("--no-record", action="store_true", help="keep no request record")
    a = ap.parse_args(argv)
    fake = FakeProviders(
        host=a.host,
        port=a.port,
        api_keys=a.api_key,
        ttft_s=a.ttft_ms / 1000,
        gap_s=a.gap_ms / 1000,
        answer_tokens=a.answer_tokens,
        record=not a.no_record,
        ttft_jitter_s=a.ttft_jitter_ms / 1000,
    )
    asyncio.run(_serve_forever(fake))


if __name__ == "__main__":
    main()
