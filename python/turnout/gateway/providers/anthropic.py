"""Anthropic Messages (POST {base}/v1/messages), with prompt-cache breakpoints."""

from __future__ import annotations

from collections.abc import Mapping
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
    last_breakpoint,
    malformed,
    retry_after_ms,
    split_system,
    status_class,
    text_of,
)
from turnout.gateway.wire import (
    AttemptFailed,
    ChatRequest,
    Failure,
    FailureName,
    HttpCall,
    Parsed,
    SseEvent,
    TargetSpec,
)

#: The API version every request names (the one the SDKs send).
API_VERSION = "2023-06-01"

#: Anthropic requires max_tokens; a request that sets none gets this many.
DEFAULT_MAX_TOKENS = 4096

#: The cache_control of each ChatRequest.cache_ttl ("5m" is the API's default TTL).
CACHE_CONTROL: Mapping[str, dict[str, str]] = {
    "5m": {"type": "ephemeral"},
    "1h": {"type": "ephemeral", "ttl": "1h"},
}

#: Each error type's class (the type is more precise than the status: 529 is overloaded_error).
_ERROR_CLASSES: Mapping[str, FailureName] = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "auth",
    "permission_error": "auth",
    "billing_error": "billing",
    "not_found_error": "not_found",
    "request_too_large": "context_overflow",
    "rate_limit_error": "rate_limited",
    "api_error": "transient",
    "overloaded_error": "transient",
    "timeout_error": "timeout",
}

#: What a 400 says when the account cannot pay ("Your credit balance is too low to access ...").
_NO_CREDIT = "credit balance is too low"


def classify_error(
    status: int | None, reply: Any, headers: Mapping[str, str], raw: bytes = b""
) -> Failure:
    """The Failure of an Anthropic error: `{"type": "error", "error": {"type", "message"}}`, from a
    non-2xx reply (`status`) or an `error` event of a stream (`status` None)."""
    error = reply.get("error") if isinstance(reply, dict) else None
    error = error if isinstance(error, dict) else {}
    kind = text_of(error.get("type"))
    message = text_of(error.get("message")) or body_text(raw)
    name = _ERROR_CLASSES.get(kind) or (status_class(status) if status is not None else "transient")
    if name == "invalid_request":
        if _NO_CREDIT in message.lower():
            name = "billing"
        elif CONTEXT_OVERFLOW.search(message):
            name = "context_overflow"
    label = f"{kind}: {message}" if kind else message
    return failure("anthropic", name, status, label, retry_after_ms(headers))


class Messages:
    """The Messages API."""

    def build(self, target: TargetSpec, request: ChatRequest, *, stream: bool) -> HttpCall:
        system, turns = split_system(request.messages)
        cache = CACHE_CONTROL[request.cache_ttl] if request.cache_ttl else None
        messages = [
            {"role": m.role, "content": [{"type": "text", "text": m.content}]} for m in turns
        ]
        body: dict[str, Any] = {
            "model": target.model,
            "max_tokens": DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens,
        }
        if system:
            body["system"] = [{"type": "text", "text": text} for text in system]
        body["messages"] = messages
        if cache:
            if system:
                body["system"][-1]["cache_control"] = dict(cache)
            at = last_breakpoint(turns)
            if at is not None:
                messages[at]["content"][-1]["cache_control"] = dict(cache)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if stream:
            body["stream"] = True
        headers = json_headers(stream=stream)
        headers["anthropic-version"] = API_VERSION
        if target.api_key:
            headers["x-api-key"] = target.api_key
        return HttpCall(f"{target.base_url}/v1/messages", headers, encode(body))

    def parse(self, body: bytes) -> Parsed:
        reply = decode_object("anthropic", body)
        if reply.get("type") == "error":
            raise AttemptFailed(classify_error(None, reply, {}))
        content = reply.get("content")
        if not isinstance(content, list):
            raise malformed("anthropic", "no content")
        native = reply.get("stop_reason")
        native = native if isinstance(native, str) else None
        usage = reply.get("usage")
        return Parsed(
            text="".join(_text(block) for block in content),
            finish_reason=finish_reason(native),
            usage=usage if isinstance(usage, dict) else None,
            native_finish_reason=native,
        )

    def decoder(self) -> MessagesStream:
        return MessagesStream()

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        return classify_error(status, error_json(body), headers, body)


def _text(block: Any) -> str:
    """A content block's text ("" for thinking and tool blocks)."""
    return (
        text_of(block.get("text"))
        if isinstance(block, dict) and block.get("type") == "text"
        else ""
    )


class MessagesStream:
    """One Messages stream: message_start (with usage), content_block_delta text deltas,
    message_delta (stop_reason, output usage), message_stop; `error` events; `ping`s."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._usage: list[dict[str, Any]] = []
        self._native: str | None = None
        self._done = False

    def feed(self, event: SseEvent) -> list[str]:
        if self._done:
            return []
        data = decode_object("anthropic", event.data)
        kind = data.get("type") or event.event
        if kind == "error":
            raise AttemptFailed(classify_error(None, data, {}))
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = text_of(delta.get("text"))
                if text:
                    self._text.append(text)
                    return [text]
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict) and isinstance(message.get("usage"), dict):
                self._usage.append(data)
        elif kind == "message_delta":
            delta = data.get("delta")
            native = delta.get("stop_reason") if isinstance(delta, dict) else None
            if isinstance(native, str):
                self._native = native
            if isinstance(data.get("usage"), dict):
                self._usage.append(data)
        elif kind == "message_stop":
            self._done = True
        return []

    @property
    def complete(self) -> bool:
        return self._done

    def result(self) -> Parsed:
        finished = self._done
        return Parsed(
            text="".join(self._text),
            finish_reason=finish_reason(self._native) if finished else None,
            usage=self._usage or None,
            native_finish_reason=self._native,
        )
