"""Gemini generateContent (POST {base}/v1beta/models/{model}:generateContent) and its stream
(:streamGenerateContent?alt=sse, each event a GenerateContentResponse chunk)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.gateway.providers._common import (
    CONTEXT_OVERFLOW,
    body_text,
    decode_object,
    duration_ms,
    encode,
    error_json,
    failure,
    finish_reason,
    json_headers,
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
    FinishReason,
    HttpCall,
    Parsed,
    SseEvent,
    TargetSpec,
)

#: Gemini's name for each chat role (system prompts go to systemInstruction instead).
ROLES: Mapping[str, str] = {"user": "user", "assistant": "model"}

#: Each google.rpc status's class (Gemini errors carry one in `error.status`).
_STATUS_CLASSES: Mapping[str, FailureName] = {
    "INVALID_ARGUMENT": "invalid_request",
    "NOT_FOUND": "not_found",
    # "Gemini API free tier is not available in your country. Please enable billing ..."
    "FAILED_PRECONDITION": "billing",
    "PERMISSION_DENIED": "auth",
    "UNAUTHENTICATED": "auth",
    "RESOURCE_EXHAUSTED": "rate_limited",
    "INTERNAL": "transient",
    "UNAVAILABLE": "transient",
    "DEADLINE_EXCEEDED": "timeout",
}

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def classify_error(
    status: int | None, reply: Any, headers: Mapping[str, str], raw: bytes = b""
) -> Failure:
    """The Failure of a Gemini error `{"error": {"code", "message", "status", "details"}}`, from a
    non-2xx reply (`status`) or a stream chunk (`status` None: the error's own `code`)."""
    if isinstance(reply, list) and reply:
        reply = reply[0]  # the JSON-array stream (no alt=sse) wraps its error in a list
    error = reply.get("error") if isinstance(reply, dict) else None
    error = error if isinstance(error, dict) else {}
    if status is None and isinstance(error.get("code"), int):
        status = error["code"]
    rpc_status = text_of(error.get("status"))
    message = text_of(error.get("message")) or body_text(raw)
    details = [d for d in error.get("details") or () if isinstance(d, dict)]
    base = status_class(status) if status is not None else "transient"
    name = base if base == "billing" else _STATUS_CLASSES.get(rpc_status, base)
    if name == "invalid_request":
        if any(
            d.get("@type") == _ERROR_INFO and d.get("reason") == "API_KEY_INVALID" for d in details
        ):
            name = "auth"
        elif CONTEXT_OVERFLOW.search(message):
            name = "context_overflow"
    wait = next(
        (duration_ms(d.get("retryDelay")) for d in details if d.get("@type") == _RETRY_INFO), None
    )
    label = f"{rpc_status}: {message}" if rpc_status else message
    return failure(
        "gemini", name, status, label, wait if wait is not None else retry_after_ms(headers)
    )


class GenerateContent:
    """The generateContent API."""

    def build(self, target: TargetSpec, request: ChatRequest, *, stream: bool) -> HttpCall:
        system, turns = split_system(request.messages)
        body: dict[str, Any] = {
            "contents": [{"role": ROLES[m.role], "parts": [{"text": m.content}]} for m in turns]
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": text} for text in system]}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if config:
            body["generationConfig"] = config
        model = target.model.removeprefix("models/")
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        headers = json_headers(stream=stream)
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        return HttpCall(f"{target.base_url}/v1beta/models/{model}:{method}", headers, encode(body))

    def parse(self, body: bytes) -> Parsed:
        reply = decode_object("gemini", body)
        chunk = _Chunk.read(reply)
        if chunk.native is None and not reply.get("candidates"):
            raise malformed("gemini", "no candidates")
        usage = reply.get("usageMetadata")
        return Parsed(
            text=chunk.text,
            finish_reason=chunk.finish or "other",
            usage=usage if isinstance(usage, dict) else None,
            native_finish_reason=chunk.native,
        )

    def decoder(self) -> GenerateContentStream:
        return GenerateContentStream()

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        return classify_error(status, error_json(body), headers, body)


class _Chunk:
    """What one GenerateContentResponse says: its text, and how it ended if it did."""

    __slots__ = ("finish", "native", "text")

    def __init__(self, text: str, native: str | None, finish: FinishReason | None) -> None:
        self.text = text
        self.native = native
        self.finish = finish

    @staticmethod
    def read(reply: dict[str, Any]) -> _Chunk:
        """Raises AttemptFailed when the chunk is an error."""
        if reply.get("error") is not None:
            raise AttemptFailed(classify_error(None, reply, {}))
        feedback = reply.get("promptFeedback")
        blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if isinstance(blocked, str):
            return _Chunk("", blocked, "content_filter")  # the prompt itself was blocked
        candidates = reply.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            return _Chunk("", None, None)
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        text = "".join(
            text_of(p.get("text"))
            for p in parts or ()
            if isinstance(p, dict) and not p.get("thought")  # thought summaries are not the answer
        )
        native = candidate.get("finishReason")
        if isinstance(native, str):
            return _Chunk(text, native, finish_reason(native))
        return _Chunk(text, None, None)


class GenerateContentStream:
    """One streamGenerateContent?alt=sse stream: chunks of text; the last one has a finishReason;
    usageMetadata (cumulative) on the chunks."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._usage: list[dict[str, Any]] = []
        self._native: str | None = None
        self._finish: FinishReason | None = None

    def feed(self, event: SseEvent) -> list[str]:
        if self._finish is not None:
            return []
        reply = decode_object("gemini", event.data)
        chunk = _Chunk.read(reply)
        if isinstance(reply.get("usageMetadata"), dict):
            self._usage.append(reply)
        if chunk.finish is not None:
            self._native, self._finish = chunk.native, chunk.finish
        if not chunk.text:
            return []
        self._text.append(chunk.text)
        return [chunk.text]

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
