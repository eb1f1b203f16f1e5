"""OpenAI Responses (POST {base}/responses): `input` items in, `output` items and typed stream
events (response.output_text.delta ... response.completed) out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.gateway.providers._common import (
    decode_object,
    encode,
    error_json,
    finish_reason,
    malformed,
    text_of,
)
from turnout.gateway.providers.openai_chat import bearer_headers, classify_openai_error
from turnout.gateway.wire import (
    AttemptFailed,
    ChatRequest,
    Failure,
    FinishReason,
    HttpCall,
    Parsed,
    SseEvent,
    TargetSpec,
)

_PROVIDER = "openai"


class Responses:
    """The Responses API (OpenAI only)."""

    def build(self, target: TargetSpec, request: ChatRequest, *, stream: bool) -> HttpCall:
        if request.stop:
            raise AttemptFailed(
                Failure(
                    "invalid_request",
                    "the OpenAI Responses API has no stop sequences: send this request to a "
                    "chat_completions target or without stop",
                )
            )
        body: dict[str, Any] = {
            "model": target.model,
            "input": [{"role": m.role, "content": m.content} for m in request.messages],
            # A routed request is not kept at the provider (the API stores it by default): the
            # gateway holds no state there, and a data boundary should not depend on retention.
            "store": False,
        }
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.prompt_cache_key:
            body["prompt_cache_key"] = request.prompt_cache_key
        if stream:
            body["stream"] = True
        return HttpCall(
            f"{target.base_url}/responses", bearer_headers(target, stream=stream), encode(body)
        )

    def parse(self, body: bytes) -> Parsed:
        response = decode_object(_PROVIDER, body)
        if response.get("error") is not None and response.get("object") != "response":
            raise AttemptFailed(classify_openai_error(_PROVIDER, None, response, {}))
        native, finish = _outcome(response)
        usage = response.get("usage")
        return Parsed(
            text="".join(_output_texts(response)),
            finish_reason=finish,
            usage=usage if isinstance(usage, dict) else None,
            native_finish_reason=native,
        )

    def decoder(self) -> ResponsesStream:
        return ResponsesStream()

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        return classify_openai_error(_PROVIDER, status, error_json(body), headers, body)


def _outcome(response: dict[str, Any]) -> tuple[str | None, FinishReason]:
    """How a finished Response ended: its native reason and its FinishReason. Raises
    AttemptFailed for a failed one."""
    status = response.get("status")
    if status == "failed":
        raise AttemptFailed(classify_openai_error(_PROVIDER, None, response, {}))
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        if isinstance(reason, str):
            return reason, finish_reason(reason)
        return "incomplete", "other"
    native = status if isinstance(status, str) else None
    if native == "completed" and _refused(response):
        return native, "content_filter"
    return native, finish_reason(native)


def _message_parts(response: dict[str, Any]) -> list[dict[str, Any]]:
    output = response.get("output")
    parts: list[dict[str, Any]] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict) or item.get("type") != "message":
            continue
        content = item.get("content")
        if isinstance(content, list):
            parts.extend(p for p in content if isinstance(p, dict))
    return parts


def _output_texts(response: dict[str, Any]) -> list[str]:
    return [
        text_of(p.get("text")) for p in _message_parts(response) if p.get("type") == "output_text"
    ]


def _refused(response: dict[str, Any]) -> bool:
    return any(p.get("type") == "refusal" for p in _message_parts(response))


class ResponsesStream:
    """One Responses stream: typed events; text in response.output_text.delta; the end in
    response.completed or response.incomplete (with the whole response and its usage); failures
    in response.failed or an `error` event."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._usage: list[dict[str, Any]] = []
        self._native: str | None = None
        self._finish: FinishReason | None = None
        self._refused = False

    def feed(self, event: SseEvent) -> list[str]:
        if self._finish is not None:
            return []
        data = decode_object(_PROVIDER, event.data)
        kind = data.get("type") or event.event
        if kind == "response.output_text.delta":
            delta = text_of(data.get("delta"))
            if delta:
                self._text.append(delta)
                return [delta]
        elif kind == "response.refusal.delta":
            self._refused = True
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data.get("response")
            if not isinstance(response, dict):
                raise malformed(_PROVIDER, f"{kind} without a response")
            native, finish = _outcome(response)
            if isinstance(response.get("usage"), dict):
                self._usage.append(data)
            self._native = native
            self._finish = "content_filter" if self._refused and finish == "stop" else finish
        elif kind == "error":
            raise AttemptFailed(classify_openai_error(_PROVIDER, None, data, {}))
        return []

    @property
    def complete(self) -> bool:
        return self._finish is not None

    def result(self) -> Parsed:
        return Parsed(
            text="".join(self._text),
            finish_reason=self._finish,
            usage=self._usage or None,
            native_finish_reason=self._native,
        )
