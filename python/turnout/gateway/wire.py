"""The words every provider adapter, the call loop and the front door share.

An adapter is sans-IO: it turns a worker's ChatRequest into one HTTP call in its provider's own
API (HttpCall), and that provider's replies back into text, a finish reason, the native usage
object and, for a failure, its class. The call loop (turnout.gateway.call) does the I/O and asks
the one retry policy (turnout._core.AttemptPolicy) what to do after each attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

#: The failure classes of turnout._core.AttemptPolicy (its FailureClass names), "none" = served.
FailureName = Literal[
    "none",
    "rate_limited",
    "transient",
    "timeout",
    "context_overflow",
    "content_filter",
    "auth",
    "billing",
    "invalid_request",
    "not_found",
]

#: How a response ended, in one vocabulary across providers.
FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "other"]


@dataclass(frozen=True)
class Message:
    """One chat message: role is system, user or assistant; content is text."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """The one request shape a worker sends, whatever the target's API."""

    messages: Sequence[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    stop: Sequence[str] = ()
    #: The decision's prompt-cache key (OpenAI `prompt_cache_key`; ignored where an API has none).
    prompt_cache_key: str | None = None
    #: Anthropic cache_control breakpoints: "5m" or "1h" marks the end of the system prompt and
    #: of the last message before the final user turn as cacheable; None: no breakpoint.
    cache_ttl: Literal["5m", "1h"] | None = None


@dataclass(frozen=True)
class TargetSpec:
    """Where and how to call one target (from the routing table's target and the decision)."""

    name: str
    provider: str  # openai | anthropic | gemini | deepseek | openrouter | vllm | sglang
    api: str  # chat_completions | responses | messages | generate_content
    model: str
    base_url: str  # no trailing slash: a MaaS base URL, or the chosen replica's endpoint
    api_key: str | None = None


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request to make (always a POST of a JSON body)."""

    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Parsed:
    """A served reply, complete or (for a stream) as far as it got."""

    text: str = ""
    #: None: the reply never said it ended (a stream cut before its end).
    finish_reason: FinishReason | None = None
    #: What turnout's usage normalizer takes for this provider: the response, its usage object,
    #: or the list of stream events/chunks that carry usage. None: the provider sent no usage.
    usage: Any = None
    #: The provider's own finish/stop reason text, for the record.
    native_finish_reason: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, classified for the retry policy."""

    failure: FailureName
    message: str
    http_status: int | None = None
    #: From a Retry-After (or retry-after-ms) header, or a provider body that says how long to wait.
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its `event:` name ("" when absent) and its joined `data:` lines."""

    event: str
    data: str


class AttemptFailed(Exception):
    """A failure an adapter found outside a status code: an in-stream error (OpenAI `error` chunk,
    Anthropic `event: error`), an error body with a 200, or a request its API cannot express."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class StreamDecoder(Protocol):
    """Decodes one attempt's stream, event by event."""

    def feed(self, event: SseEvent) -> list[str]:
        """The text deltas this event carries; raises AttemptFailed on an in-stream error."""
        ...

    @property
    def complete(self) -> bool:
        """Whether the provider's end-of-stream marker was seen (else the stream was cut)."""
        ...

    def result(self) -> Parsed:
        """What the stream said so far: text, finish reason (None when cut), usage events."""
        ...


class Api(Protocol):
    """One provider API, sans-IO."""

    def build(self, target: TargetSpec, request: ChatRequest, *, stream: bool) -> HttpCall: ...

    def parse(self, body: bytes) -> Parsed:
        """A 2xx non-streaming body. Raises AttemptFailed when the body is an error in disguise."""
        ...

    def decoder(self) -> StreamDecoder: ...

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
        """A non-2xx reply: its class, message and Retry-After."""
        ...


@dataclass
class Attempt:
    """One call to one target, as the response and the ledger record it."""

    target: str
    endpoint: str
    status: str  # the outcome status reported (ok, error, timeout, rate_limited, ...)
    failure: FailureName = "none"
    error: str | None = None
    http_status: int | None = None
    retry_after_ms: int | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    usage: Any = None  # the provider's native usage, as reported
    cost_usd: Any = None  # Decimal from the report's receipt; None when unpriced / not reported
    reported: bool = False  # the ledger took this attempt (the last one at each target)
    committed: bool = False  # a stream delivered text to the caller before it ended


@dataclass
class Response:
    """What call() returns: one answer, with every attempt that led to it."""

    text: str
    finish_reason: FinishReason
    target: str
    endpoint: str
    provider: str
    model: str
    decision_id: int
    usage: dict[str, int] = field(default_factory=dict)  # the answering attempt's normalized tokens
    cost_usd: Any = None  # Decimal: every attempt's cost, summed
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
