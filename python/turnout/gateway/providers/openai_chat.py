"""OpenAI chat completions (POST {base}/chat/completions), and the providers that speak it:
DeepSeek, OpenRouter, vLLM and SGLang, each a Dialect of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.gateway.providers._common import (
    CONTEXT_OVERFLOW,
    body_text,
    decode_object,
    encode,
    error_json,
    failure,
    finish_reason,
    json_headers,
    malformed,
    retry_after_ms,
    status_class,
    text_of,
)
from turnout.gateway.wire import (
    AttemptFailed,
    ChatRequest,
    Failure,
    FailureName,
    FinishReason,
    HttpCall,
    Parsed,
    SseEvent,
    TargetSpec,
)

#: OpenAI error codes/types that name their class whatever the status says.
_CODE_CLASSES: Mapping[str, FailureName] = {
    "insufficient_quota": "billing",
    "context_length_exceeded": "context_overflow",
    "content_filter": "content_filter",
    "content_policy_violation": "content_filter",
    # Responses API error codes
    "image_content_policy_violation": "content_filter",
    "bio_policy": "content_filter",
    "misalignment_policy_violation": "content_filter",
}

#: OpenAI error codes/types that name the class of an error without a status (a stream's error).
_STREAM_CODE_CLASSES: Mapping[str, FailureName] = {
    "rate_limit_exceeded": "rate_limited",
    "server_error": "transient",
    "timeout": "timeout",
    "invalid_request_error": "invalid_request",
    "invalid_prompt": "invalid_request",
    "vector_store_timeout": "timeout",
}


@dataclass(frozen=True)
class Dialect:
    """How one OpenAI-compatible provider differs from OpenAI's own chat completions."""

    provider: str
    #: OpenAI deprecated `max_tokens` for `max_completion_tokens`; the compatible servers read
    #: the old name.
    max_tokens_field: str = "max_tokens"
    #: Only OpenAI reads `prompt_cache_key`.
    prompt_cache_key: bool = False
    #: OpenRouter reports usage (with its cost) only when asked with `usage: {include: true}`.
    usage_include: bool = False


DIALECTS: Mapping[str, Dialect] = {
    "openai": Dialect("openai", max_tokens_field="max_completion_tokens", prompt_cache_key=True),
    "deepseek": Dialect("deepseek"),
    "openrouter": Dialect("openrouter", usage_include=True),
    "vllm": Dialect("vllm"),
    "sglang": Dialect("sglang"),
}


def bearer_headers(target: TargetSpec, *, stream: bool) -> dict[str, str]:
    """The headers of an OpenAI-style POST (no Authorization without a key: self-hosted)."""
    headers = json_headers(stream=stream)
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    return headers


def classify_openai_error(
    provider: str, status: int | None, reply: Any, headers: Mapping[str, str], raw: bytes = b""
) -> Failure:
    """The Failure of an OpenAI-shaped error: a non-2xx reply (`status`), or an error object in a
    200 body or a stream (`status` None: its class comes from its code, else transient).
    `reply` is the parsed body: `{"error": {...}}`, or vLLM/SGLang's `{"object": "error", ...}`."""
    error = reply.get("error") if isinstance(reply, dict) and "error" in reply else reply
    if not isinstance(error, dict):
        error = {"message": error} if isinstance(error, str) else {}
    message = text_of(error.get("message")) or body_text(raw)
    code = error.get("code")
    if status is None and isinstance(code, int) and 400 <= code <= 599:
        status = code  # OpenRouter and vLLM put the HTTP status in `code`
    marks = {str(code).lower(), str(error.get("type")).lower()}
    if status is not None:
        name = status_class(status)
    else:
        found = (_STREAM_CODE_CLASSES[m] for m in sorted(marks) if m in _STREAM_CODE_CLASSES)
        name = next(found, "transient")
    name = _refine(provider, name, status, marks, message)
    return failure(
        provider, name, status, message, retry_after_ms(headers) if status is not None else None
    )


def _refine(
    provider: str, name: FailureName, status: int | None, marks: set[str], message: str
) -> FailureName:
    """The class the error body names, over the one its status gave. A billing code always wins
    (OpenAI's 429 insufficient_quota); other codes and the context-window wording refine a
    generic 4xx, or an error that came without a status."""
    generic = status is None or name == "invalid_request"
    for mark in sorted(marks):
        by_code = _CODE_CLASSES.get(mark)
        if by_code == "billing" or (by_code and generic):
            return by_code
    if generic and CONTEXT_OVERFLOW.search(message):
        return "context_overflow"
    if provider == "openrouter" and status == 403:
        # OpenRouter's 403: "your chosen model requires moderation and your input was flagged"
        return "content_filter"
    return name


class ChatCompletions:
    """The chat completions API of one provider."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def build(self, target: TargetSpec, request: ChatRequest, *, stream: bool) -> HttpCall:
        body: dict[str, Any] = {
            "model": target.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.max_tokens is not None:
            body[self.dialect.max_tokens_field] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop"] = list(request.stop)
        if self.dialect.prompt_cache_key and request.prompt_cache_key:
            body["prompt_cache_key"] = request.prompt_cache_key
        if self.dialect.usage_include:
            body["usage"] = {"include": True}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return HttpCall(
            f"{target.base_url}/chat/completions",
            bearer_headers(target, stream=stream),
            encode(body),
        )

    def parse(self, body: bytes) -> Parsed:
        reply = decode_object(self.dialect.provider, body)
        self.raise_if_error(reply)
        choices = reply.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise malformed(self.dialect.provider, "no choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        native = choice.get("finish_reason")
        native = native if isinstance(native, str) else None
        usage = reply.get("usage")
        return Parsed(
            text=text_of(message.get("content")),
            finish_reason=_finish(native, refused=bool(message.get("refusal"))),
            usage=usage if isinstance(usage, dict) else None,
            native_finish_reason=native,
        )

    def decoder(self) -> ChatStream:
        return ChatStream(self)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        return classify_openai_error(self.dialect.provider, status, error_json(body), headers, body)

    def raise_if_error(self, reply: dict[str, Any]) -> None:
        """Raises AttemptFailed when a 200 body or a stream chunk is an error object."""
        if reply.get("error") is not None or reply.get("object") == "error":
            raise AttemptFailed(classify_openai_error(self.dialect.provider, None, reply, {}))


def _finish(native: str | None, *, refused: bool) -> FinishReason:
    if refused:
        return "content_filter"  # the model declined (message.refusal), whatever finish_reason says
    return finish_reason(native)


class ChatStream:
    """One chat completions stream: `data:` chunks, usage in the last one, then `data: [DONE]`."""

    def __init__(self, api: ChatCompletions) -> None:
        self._api = api
        self._text: list[str] = []
        self._usage: list[dict[str, Any]] = []
        self._native: str | None = None
        self._refused = False
        self._done = False

    def feed(self, event: SseEvent) -> list[str]:
        if self._done:
            return []
        if event.data == "[DONE]":
            self._done = True
            return []
        chunk = decode_object(self._api.dialect.provider, event.data)
        self._api.raise_if_error(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage.append(chunk)
        deltas: list[str] = []
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                deltas.append(text)
            if delta.get("refusal"):
                self._refused = True
            native = choice.get("finish_reason")
            if isinstance(native, str):
                self._native = native
        self._text.extend(deltas)
        return deltas

    @property
    def complete(self) -> bool:
        # `[DONE]` alone is not an answer: a stream cut and closed cleanly by a proxy never said
        # how it finished.
        return self._done and self._native is not None

    def result(self) -> Parsed:
        return Parsed(
            text="".join(self._text),
            finish_reason=_finish(self._native, refused=self._refused) if self.complete else None,
            usage=self._usage or None,
            native_finish_reason=self._native,
        )
