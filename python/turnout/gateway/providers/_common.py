"""What every provider adapter shares: JSON in and out, the finish-reason table, the failure class
of a bare HTTP status, and how long a reply says to wait."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from turnout.gateway.wire import AttemptFailed, Failure, FailureName, FinishReason, Message

#: Each provider's own finish/stop reason (and Responses' incomplete reason) in one vocabulary.
#: Anything not listed is "other".
FINISH_REASONS: Mapping[str, FinishReason] = {
    # OpenAI chat completions and its dialects
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    # Anthropic messages
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
    # Gemini
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "BLOCKLIST": "content_filter",
    "SPII": "content_filter",
    "RECITATION": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    # OpenAI Responses: a status, or an incomplete_details.reason
    "completed": "stop",
    "max_output_tokens": "length",
}


#: What a context-window error says, in every provider's words: OpenAI, vLLM, SGLang, DeepSeek and
#: OpenRouter ("maximum context length", "context length"), Anthropic ("prompt is too long"),
#: Gemini ("exceeds the maximum number of tokens").
CONTEXT_OVERFLOW = re.compile(
    r"context length|context window|context_length_exceeded|prompt is too long"
    r"|exceeds the maximum number of tokens",
    re.IGNORECASE,
)


def finish_reason(native: str | None) -> FinishReason:
    """The FinishReason of a provider's own reason text ("other" when it gave none)."""
    return FINISH_REASONS.get(native, "other") if native is not None else "other"


def split_system(messages: Sequence[Message]) -> tuple[list[str], list[Message]]:
    """The system prompts (for APIs that take them apart from the turns) and the other turns."""
    system = [m.content for m in messages if m.role == "system"]
    return system, [m for m in messages if m.role != "system"]


def last_breakpoint(turns: Sequence[Message]) -> int | None:
    """The index of the turn a cache breakpoint goes on: the last one before the final user turn."""
    finals = [i for i, m in enumerate(turns) if m.role == "user"]
    if not finals or finals[-1] == 0:
        return None
    return finals[-1] - 1


def encode(body: Mapping[str, Any]) -> bytes:
    """A request body as compact JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(provider: str, data: bytes | str) -> Any:
    """A reply's JSON. Raises AttemptFailed (transient) when the provider sent something else."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise malformed(provider, f"{e}: {_excerpt(data)}") from None


def decode_object(provider: str, data: bytes | str) -> dict[str, Any]:
    """A reply that must be one JSON object."""
    value = decode(provider, data)
    if not isinstance(value, dict):
        raise malformed(provider, f"not a JSON object: {_excerpt(data)}")
    return value


def malformed(provider: str, why: str) -> AttemptFailed:
    """The failure of a reply that is not what the provider's API sends (retried: transient)."""
    return AttemptFailed(Failure("transient", f"{provider} sent a malformed reply: {why}"))


def error_json(body: bytes) -> Any:
    """An error reply's JSON, or None when it is not JSON (a proxy's HTML page)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def _excerpt(data: bytes | str, limit: int = 200) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def body_text(body: bytes) -> str:
    """A short, printable excerpt of a reply body (for an error message when it is not JSON)."""
    return _excerpt(body) if body.strip() else "(empty body)"


def status_class(status: int) -> FailureName:
    """The failure class of an HTTP status alone (each adapter refines it from the error body)."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 402:
        return "billing"
    if status in (408, 504):
        return "timeout"
    if status == 413:
        return "context_overflow"  # the request is too large for this target
    if status == 404 or 300 <= status < 400:
        return "not_found"  # no such model or route here, or a redirect (never followed)
    if status >= 500:
        return "transient"
    return "invalid_request"


def json_headers(*, stream: bool) -> dict[str, str]:
    """The headers of every adapter's POST, before its auth header."""
    headers = {"Content-Type": "application/json"}
    if stream:
        headers["Accept"] = "text/event-stream"
    return headers


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, whatever the case of its name in `headers`."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def retry_after_ms(headers: Mapping[str, str], now: float | None = None) -> int | None:
    """How long the reply says to wait: `retry-after-ms` (OpenAI), else `Retry-After` in seconds
    or as an HTTP date (`now`: the current Unix time). None when neither says it."""
    ms = _number(header(headers, "retry-after-ms"))
    if ms is not None:
        return _capped(ms)
    after = header(headers, "retry-after")
    if after is None:
        return None
    seconds = _number(after)
    if seconds is not None:
        return _capped(seconds * 1000)
    try:
        when = parsedate_to_datetime(after.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return _capped(max(0.0, (when.timestamp() - (time.time() if now is None else now)) * 1000))


def _number(text: str | None) -> float | None:
    """A header's non-negative finite number, else None."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def duration_ms(text: Any) -> int | None:
    """A protobuf JSON Duration ("30s", "1.5s") in milliseconds, None when it is not one."""
    if not isinstance(text, str):
        return None
    match = _DURATION.match(text)
    return _capped(float(match.group(1)) * 1000) if match else None


#: The longest wait a reply can ask for that is kept as said (a week); longer ones are this. The
#: policy fails over long before (max_retry_after_ms), but a number must stay a number.
MAX_RETRY_AFTER_MS = 604_800_000


def _capped(ms: float) -> int:
    return MAX_RETRY_AFTER_MS if not ms < MAX_RETRY_AFTER_MS else round(ms)


def failure(
    provider: str,
    name: FailureName,
    status: int | None,
    message: str,
    retry_ms: int | None = None,
) -> Failure:
    """A Failure whose message names the provider and the status ("openai 429: ...")."""
    where = f"{provider} {status}" if status is not None else provider
    return Failure(name, f"{where}: {message}", http_status=status, retry_after_ms=retry_ms)


def text_of(value: Any) -> str:
    """A field that should be a string, as a string ("" when it is missing or not one)."""
    return value if isinstance(value, str) else ""
