"""One worker call: route a scenario, call the chosen target in its own API, walk the fallbacks by
the one retry policy, report every attempt, return one Response.

The logic lives in :class:`_Call` (no I/O: it plans each attempt and concludes it); the drivers
below only move bytes — blocking (httpx.Client) or asyncio (aiohttp: measured far cheaper per
request under concurrency, see docs/gateway.md), whole replies or streams. Streams have a commit
point: until the first text reaches the caller a failure is invisible and the policy may retry or
fail over; after it a failure ends the stream with
:class:`turnout.StreamInterruptedError`, reported as the failure it is.

The ledger takes one outcome per (decision, target), as the what-if engine's simulated workers
report: a target retried after a 429 or a 5xx is reported once, with its last attempt (the
earlier ones carried no usage: a provider bills no failed request before its first token).
Every attempt is in ``Response.attempts``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import random
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import aiohttp
import httpx

from turnout import _core, _errors
from turnout.gateway.credentials import Credentials, MissingKey
from turnout.gateway.providers import api_for
from turnout.gateway.providers._common import MAX_RETRY_AFTER_MS
from turnout.gateway.sse import SseParser
from turnout.gateway.watchdog import WATCHDOG, Alarm
from turnout.gateway.wire import (
    Api,
    Attempt,
    AttemptFailed,
    ChatRequest,
    Failure,
    HttpCall,
    Message,
    Parsed,
    Response,
    StreamDecoder,
    TargetSpec,
)
from turnout.prefix import canonical_prompt

#: Each failure class's ledger status (the core's one table).
_STATUS: dict[str, str] = _core.failure_classes()
#: The largest whole reply read (a real one is kilobytes; a provider sending more is broken).
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: The largest error reply read (its first bytes say what it is).
MAX_ERROR_BYTES = 1024 * 1024
#: Connection setup never waits longer than this (a dead host must not eat the first-token budget).
_CONNECT_TIMEOUT_S = 10.0


class RouteSource(Protocol):
    """What the SDK needs of a Router or a sidecar Client."""

    def route(self, scenario: str, **kwargs: Any) -> _core.Decision: ...

    def report(self, decision_id: int, **kwargs: Any) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class _Candidate:
    """One place a decision offers, ready to call (or why it cannot be)."""

    spec: TargetSpec  # without its key: read at each attempt (a rotated key is used at once)
    api: Api | None
    endpoint: str
    timeout_s: float
    first_token_timeout_s: float
    cache_ttl: str  # its prompt cache's lifetime, as an Anthropic breakpoint asks it ("5m", "1h")
    call_info: Mapping[str, Any]  # the table's call keys of the target (where its key is)
    unusable: Failure | None = None  # why this worker cannot call it at all
    #: aiohttp's own limits: only the connection's (the reads' deadlines are the driver's).
    aio_timeout: aiohttp.ClientTimeout | None = None
    #: The proxy the environment names for its URL (HTTPS_PROXY, NO_PROXY...), resolved once.
    proxy: str | None = None


def messages_of(messages: Sequence[Mapping[str, Any] | Message]) -> tuple[Message, ...]:
    """OpenAI-style dicts (role, content as text) or Messages, checked."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise _errors.InvalidArgumentError(
                f"messages[{i}].role must be system, user or assistant, got {role!r}"
            )
        if not isinstance(content, str):
            raise _errors.InvalidArgumentError(f"messages[{i}].content must be text")
        try:
            content.encode()
        except UnicodeEncodeError:
            raise _errors.InvalidArgumentError(
                f"messages[{i}].content is not valid Unicode text (a lone surrogate)"
            ) from None
        out.append(Message(role, content))
    if not out or out[-1].role != "user":
        raise _errors.InvalidArgumentError("messages must end with a user message")
    return tuple(out)


def loopback_literal(host: str) -> bool:
    """Whether `host` is a loopback address as written (127/8, ::1) or "localhost". Never
    resolved: a name an attacker controls may resolve to 127.0.0.1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url`, as httpx and the providers' SDKs read it
    (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, NO_PROXY); never for a loopback host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if loopback_literal(host):
        return None
    if urllib.request.proxy_bypass_environment(host):
        return None
    proxies = urllib.request.getproxies_environment()
    return proxies.get(parts.scheme) or proxies.get("all")


class _Table:
    """What the SDK reads of one routing table: each place's call spec, each scenario's
    max_output_tokens. Built once per (table version, target, endpoint)."""

    def __init__(self, config_of: Callable[[], _core.Config], credentials: Credentials) -> None:
        self._config_of = config_of
        self._credentials = credentials
        self._version = ""
        self._places: dict[tuple[str, str | None], _Candidate] = {}
        self._keyed: dict[tuple[str, str, str], TargetSpec] = {}
        self._max_tokens: dict[str, int] = {}

    def _fresh(self) -> _core.Config:
        config = self._config_of()
        if config.version != self._version:
            self._version = config.version
            self._places.clear()
            self._keyed.clear()
            self._max_tokens.clear()
        return config

    def max_tokens(self, scenario: str) -> int:
        n = self._max_tokens.get(scenario)
        if n is None:
            n = self._fresh().scenario_info(scenario)["max_output_tokens"]
            self._max_tokens[scenario] = n
        return n

    def place(self, target: str, endpoint: str | None) -> _Candidate:
        config = self._fresh()
        cached = self._places.get((target, endpoint))
        if cached is not None:
            return cached
        try:
            info = config.target_info(target)
        except _errors.UnknownTargetError:
            # The sidecar decided by a newer table than this worker holds: fail over.
            return _Candidate(
                spec=TargetSpec(target, "", "", "", ""),
                api=None,
                endpoint=endpoint or "",
                timeout_s=0.0,
                first_token_timeout_s=0.0,
                cache_ttl="5m",
                call_info={},
                unusable=Failure(
                    "not_found",
                    f"this worker's table has no target '{target}' (the sidecar's is newer: give "
                    "the client shm= to follow it)",
                ),
            )
        call = info["call"]
        base = call["base_url"]
        if endpoint is not None:  # a replica of a self-hosted pool: its OpenAI-compatible root
            base = endpoint.rstrip("/")
            if not base.endswith("/v1"):
                base += "/v1"
        spec = TargetSpec(
            name=target,
            provider=info["provider"],
            api=call["api"],
            model=info["model"],
            base_url=base,
        )
        place = _Candidate(
            spec=spec,
            api=api_for(spec.provider, spec.api),
            endpoint=base,
            timeout_s=call["timeout_ms"] / 1000.0,
            first_token_timeout_s=call["first_token_timeout_ms"] / 1000.0,
            cache_ttl="1h" if info["cache"]["ttl_s"] >= 3600 else "5m",
            call_info=call,
            proxy=_proxy_for(base),
            aio_timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=min(_CONNECT_TIMEOUT_S, call["first_token_timeout_ms"] / 1000.0),
            ),
        )
        self._places[(target, endpoint)] = place
        return place

    def keyed(self, c: _Candidate) -> TargetSpec:
        """The candidate's spec with its key as the environment or its file holds it now.
        Raises MissingKey."""
        key = self._credentials.key(c.spec.name, c.call_info)
        if key is None:
            return c.spec
        spec = self._keyed.get((c.spec.name, c.endpoint, key))
        if spec is None:
            spec = dataclasses.replace(c.spec, api_key=key)
            self._keyed[(c.spec.name, c.endpoint, key)] = spec
        return spec


@dataclass
class _Outcome:
    """How one attempt ended."""

    failure: Failure | None = None
    parsed: Parsed | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    committed: bool = False


class _Call:
    """One request through the policy: the decision, the attempts, the reports."""

    def __init__(
        self,
        source: RouteSource,
        table: _Table,
        policy: _core.AttemptPolicy,
        scenario: str,
        request: ChatRequest,
        route_args: dict[str, Any],
        auto_cache: bool,
    ) -> None:
        self.source = source
        self.table = table
        self.policy = policy
        self.scenario = scenario
        self.request = request
        self.route_args = route_args
        self.auto_cache = auto_cache
        self.decision: _core.Decision | None = None
        self.receipt: dict[str, Any] = {}
        self.streamed: Response | None = None
        # The last attempt when the policy retries its target (reported only if the call ends
        # before the retry: cancelled while it waits).
        self.unreported: Attempt | None = None
        self.secret: str | None = None  # the key of the attempt in flight: never in a message
        self.attempts: list[Attempt] = []
        self.started = time.perf_counter()
        self.cost = Decimal(0)

    # -- routing ------------------------------------------------------------------------------

    def route(self) -> float | None:
        """Routes; returns None when decided, else how long to wait before routing again.
        Raises the router's refusal when the policy gives up on it."""
        try:
            d = self.source.route(self.scenario, **self.route_args)
        except (_errors.NoEligibleTargetError, _errors.SidecarUnavailableError) as e:
            step, _, at = self.policy.after_refusal(e.code or "no_eligible_target", time.time())
            if step != "retry":
                raise
            return max(0.0, at - time.time())
        self.decision = d
        self.policy.start(1 + len(d.fallbacks))
        if d.cache_key is not None and self.request.prompt_cache_key is None:
            self.request = dataclasses.replace(self.request, prompt_cache_key=d.cache_key)
        return None

    # -- attempts -----------------------------------------------------------------------------

    def candidate(self) -> _Candidate:
        d = self.decision
        assert d is not None
        i = self.policy.candidate
        if i == 0:
            return self.table.place(d.target, d.endpoint)
        return self.table.place(d.fallbacks[i - 1], d.fallback_endpoints[i - 1])

    def plan(self, c: _Candidate, *, stream: bool) -> HttpCall | _Outcome:
        """The HTTP call to make, or the outcome of an attempt that cannot be made."""
        if c.unusable is not None or c.api is None:
            return _Outcome(c.unusable)
        try:
            spec = self.table.keyed(c)
        except MissingKey as e:
            return _Outcome(Failure("auth", str(e)))
        self.secret = spec.api_key
        request = self.request
        if self.auto_cache and c.spec.provider == "anthropic":  # the one API with breakpoints
            request = dataclasses.replace(request, cache_ttl=c.cache_ttl)
        try:
            return c.api.build(spec, request, stream=stream)
        except AttemptFailed as e:
            return _Outcome(e.failure)
        except Exception as e:  # an adapter that cannot express this request: pass it through
            return _Outcome(Failure("invalid_request", f"cannot build the request: {_named(e)}"))

    def conclude(self, c: _Candidate, o: _Outcome) -> tuple[str, float]:
        """Records and (unless its target is retried) reports one attempt; returns the policy's
        next step ("served", "retry", "fail_over", "give_up") and the wait before it."""
        f = o.failure
        failure = f.failure if f is not None else "none"
        retry_after = f.retry_after_ms if f is not None else None
        if retry_after is not None:
            retry_after = min(max(int(retry_after), 0), MAX_RETRY_AFTER_MS)
        if o.committed:
            step, at = ("served" if f is None else "give_up"), time.time()
        else:
            step, _, at = self.policy.after_failure(failure, time.time(), retry_after)
        attempt = Attempt(
            target=c.spec.name,
            endpoint=c.endpoint,
            status=_STATUS[failure],
            failure=failure,
            error=self._scrubbed(f.message) if f is not None else None,
            http_status=f.http_status if f is not None else None,
            retry_after_ms=retry_after,
            ttft_ms=o.ttft_ms,
            latency_ms=o.latency_ms,
            usage=o.parsed.usage if o.parsed is not None else None,
            committed=o.committed,
        )
        self.attempts.append(attempt)
        self.unreported = None
        if step == "retry":
            self.unreported = attempt
        else:
            self._report(attempt)
        return step, max(0.0, at - time.time())

    def _scrubbed(self, message: str) -> str:
        if self.secret and self.secret in message:
            message = message.replace(self.secret, "<key>")
        return message

    def _report(self, a: Attempt) -> None:
        d = self.decision
        assert d is not None
        kwargs = {"target": a.target, "status": a.status, "latency_ms": a.latency_ms}
        if a.ttft_ms is not None:
            kwargs["ttft_ms"] = a.ttft_ms
        try:
            try:
                receipt = self.source.report(d.id, usage=a.usage, **kwargs)
            except (_errors.UsageError, _errors.PriceMissingError) as e:
                # The provider's usage cannot be priced: the outcome still counts (unpriced).
                a.error = f"{a.error + '; ' if a.error else ''}usage not priced: {e}"
                receipt = self.source.report(d.id, **kwargs)
        except _errors.TurnoutError as e:
            # The ledger refused the outcome (its decision expired, a sidecar restarted without
            # it): the answer is still the caller's; the attempt says it was not counted.
            a.error = f"{a.error + '; ' if a.error else ''}not counted: {e}"
            return
        a.reported = True
        if receipt is not None:
            a.cost_usd = receipt.get("cost_usd")
            if a.cost_usd is not None:
                self.cost += a.cost_usd
            self.receipt = receipt

    def cancelled(self, c: _Candidate, started: float | None) -> None:
        """The caller cancelled the call (an asyncio deadline, most often): during an attempt at
        `c` begun at `started` (perf_counter) it is reported once as a timeout (the caller stopped
        waiting for that target); while waiting to retry, the attempt that waits is reported."""
        if started is None:
            if self.unreported is not None:
                self._report(self.unreported)
                self.unreported = None
            return
        latency = (time.perf_counter() - started) * 1000.0
        self.conclude(
            c, _Outcome(Failure("timeout", "cancelled by the caller"), None, None, latency)
        )
        if self.unreported is not None:  # the policy would have retried: the call ends here
            self._report(self.unreported)
            self.unreported = None

    def abandon(self, c: _Candidate, reader: _StreamReader) -> None:
        """The caller closed a stream it had begun to read: reported once, as served (it had its
        text; a provider's usage, which comes last, is not known: counted unpriced)."""
        o = _Outcome(None, reader.decoder.result(), reader.ttft_ms, reader.elapsed_ms(), True)
        self.conclude(c, o)
        self.attempts[-1].error = f"closed by the caller after {reader.deltas} text deltas"

    # -- the answer ---------------------------------------------------------------------------

    def response(self, c: _Candidate, o: _Outcome) -> Response:
        d = self.decision
        assert d is not None
        assert o.parsed is not None
        receipt = self.receipt
        return Response(
            text=o.parsed.text,
            finish_reason=o.parsed.finish_reason or "other",
            target=c.spec.name,
            endpoint=c.endpoint,
            provider=c.spec.provider,
            model=c.spec.model,
            decision_id=d.id,
            usage=dict(receipt.get("usage") or {}),
            cost_usd=self.cost,
            ttft_ms=o.ttft_ms,
            latency_ms=(time.perf_counter() - self.started) * 1000.0,
            attempts=self.attempts,
        )

    def error(self, c: _Candidate, o: _Outcome) -> _errors.ProviderError:
        f = o.failure
        assert f is not None
        cls = _errors.StreamInterruptedError if o.committed else _errors.ProviderError
        tried = len(self.attempts)
        what = "the stream was cut after it began" if o.committed else f"{tried} attempt(s) failed"
        return cls(
            f"scenario '{self.scenario}': {what}; last: {c.spec.name}: {f.failure}: "
            f"{self._scrubbed(f.message)}",
            failure=f.failure,
            http_status=f.http_status,
            attempts=self.attempts,
            response=self.response(c, o) if o.parsed is not None and o.committed else None,
        )

    def finish(self, c: _Candidate, o: _Outcome, step: str) -> Response:
        """The call's answer once the policy says served or give_up."""
        if step == "served":
            return self.response(c, o)
        f = o.failure
        if f is not None and f.failure == "content_filter" and o.parsed is not None:
            return self.response(c, o)  # the provider's own refusal, passed through
        raise self.error(c, o)


def _failure_of(e: BaseException, what: str, alarm: Alarm | None = None) -> Failure:
    """An exception of an attempt as a failure: a timeout (httpx's, asyncio's or the watchdog's),
    else a server-side fault. A request httpx refuses to send says so without its headers."""
    if isinstance(e, (httpx.TimeoutException, TimeoutError)) or (alarm is not None and alarm.fired):
        return Failure("timeout", f"no {what} in time")
    if isinstance(e, httpx.LocalProtocolError):
        return Failure("invalid_request", "the HTTP client refused to send the request")
    return Failure("transient", _named(e))


def _named(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


#: A UTF-16 surrogate: JSON's "\\ud83d" escapes decode to one, alone or in a pair a provider may
#: split across two events. Text that cannot be written as UTF-8 must not reach the caller.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(text: str) -> str:
    """Text with each surrogate pair joined and each lone surrogate replaced by U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _classified(c: _Candidate, status: int, headers: Mapping[str, str], body: bytes) -> Failure:
    assert c.api is not None
    return c.api.classify(status, {k.lower(): v for k, v in headers.items()}, body)


def _whole(c: _Candidate, status: int, body: bytes, headers: Mapping[str, str]) -> _Outcome:
    """A non-stream reply as an outcome."""
    assert c.api is not None
    if status >= 300:
        return _Outcome(_classified(c, status, headers, body))
    try:
        parsed = c.api.parse(body)
    except AttemptFailed as e:
        return _Outcome(e.failure)
    parsed.text = _text(parsed.text)
    if parsed.finish_reason == "content_filter":
        return _Outcome(Failure("content_filter", "the provider refused to answer"), parsed)
    return _Outcome(None, parsed)


class _StreamReader:
    """One attempt's stream: bytes in, text deltas out, the outcome at the end."""

    def __init__(self, c: _Candidate, started: float) -> None:
        self.c = c
        self.started = started
        self.parser = SseParser()
        self.decoder: StreamDecoder = c.api.decoder()
        self.ttft_ms: float | None = None
        self.deltas = 0
        self.failed: Failure | None = None

    def feed(self, chunk: bytes) -> list[str]:
        """The text of a chunk's events. An in-stream error is raised (AttemptFailed) only after
        the text the events before it carried: one read may bring both."""
        if self.failed is not None:
            raise AttemptFailed(self.failed)
        out: list[str] = []
        try:
            for e in self.parser.feed(chunk):
                out.extend(t for t in self.decoder.feed(e) if t)
        except AttemptFailed as err:
            if not out:
                raise
            self.failed = err.failure  # raised by the next feed(), after these deltas
        if out and _SURROGATE.search("".join(out)):
            out = [_text(t) for t in out]
        if out and self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000.0
        self.deltas += len(out)
        return out

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def outcome(self, failure: Failure | None, committed: bool) -> _Outcome:
        parsed = self.decoder.result()
        latency = self.elapsed_ms()
        if failure is None and not self.decoder.complete:
            failure = Failure(
                "transient",
                f"the stream ended without its end marker after {self.deltas} text deltas",
            )
        if failure is None and parsed.finish_reason == "content_filter":
            failure = Failure("content_filter", "the provider refused to answer")
        return _Outcome(failure, parsed, self.ttft_ms, latency, committed)


def _timeout(c: _Candidate, *, stream: bool) -> httpx.Timeout:
    # Until the reply's headers: the first token's budget in a stream, the whole reply's otherwise
    # (a non-stream reply's headers come when it is done). The body's reads are bounded by the
    # drivers (the watchdog, asyncio), never by this: see _body_reads.
    read = c.first_token_timeout_s if stream else c.timeout_s
    return httpx.Timeout(
        read, connect=min(_CONNECT_TIMEOUT_S, c.first_token_timeout_s), pool=c.timeout_s
    )


def _body_reads(r: httpx.Response, c: _Candidate) -> None:
    """httpx reads a body with the read timeout its request had when the body starts: lift it to
    the attempt's whole time (the first-token and whole-attempt deadlines are the driver's), so a
    pause between tokens is not cut by the first token's budget."""
    timeouts = r.request.extensions.get("timeout")
    if isinstance(timeouts, dict):
        timeouts["read"] = c.timeout_s


def _socket_of(r: httpx.Response) -> socket.socket | None:
    stream = r.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


class _Deadline:
    """A blocking attempt's deadline: the watchdog shuts its socket at `at` unless disarmed."""

    def __init__(self, r: httpx.Response) -> None:
        self.sock = _socket_of(r)
        self.alarm: Alarm | None = None

    def arm(self, at: float) -> None:
        self.disarm()
        if self.sock is not None:
            self.alarm = WATCHDOG.arm(at, self.sock)

    def disarm(self) -> None:
        if self.alarm is not None:
            self.alarm.cancel()

    @property
    def fired(self) -> bool:
        return self.alarm is not None and self.alarm.fired


def _capped(chunks: Iterator[bytes], cap: int) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise AttemptFailed(Failure("transient", f"the reply exceeds {cap} bytes"))
    return bytes(body)


async def _acapped(chunks: AsyncIterator[bytes], cap: int) -> bytes:
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise AttemptFailed(Failure("transient", f"the reply exceeds {cap} bytes"))
    return bytes(body)


# ---------------------------------------------------------------------------- blocking drivers
# Any exception of an attempt is its failure; an interruption (KeyboardInterrupt, a stream closed
# by its caller) is reported before it goes on: an outcome is counted on every path.


def route(call: _Call) -> _Call:
    while (wait := call.route()) is not None:
        time.sleep(wait)
    return call


def run(call: _Call, http: httpx.Client) -> Response:
    while True:
        c = call.candidate()
        planned = call.plan(c, stream=False)
        if isinstance(planned, _Outcome):
            o = planned
        else:
            started = time.perf_counter()
            try:
                o = _attempt(http, c, planned)
            except BaseException:
                call.cancelled(c, started)
                raise
        step, wait = call.conclude(c, o)
        if step in ("served", "give_up"):
            return call.finish(c, o, step)
        _sleep(call, wait)


def _sleep(call: _Call, wait: float) -> None:
    if wait <= 0:
        return
    try:
        time.sleep(wait)
    except BaseException:
        call.cancelled(call.candidate(), None)
        raise


def _attempt(http: httpx.Client, c: _Candidate, planned: HttpCall) -> _Outcome:
    started = time.perf_counter()
    deadline: _Deadline | None = None
    try:
        with http.stream(
            "POST",
            planned.url,
            content=planned.body,
            headers=planned.headers,
            timeout=_timeout(c, stream=False),
        ) as r:
            deadline = _Deadline(r)
            deadline.arm(time.monotonic() + c.timeout_s - (time.perf_counter() - started))
            _body_reads(r, c)
            cap = MAX_ERROR_BYTES if r.status_code >= 300 else MAX_REPLY_BYTES
            body = _capped(r.iter_bytes(), cap)
            deadline.disarm()
            o = _whole(c, r.status_code, body, r.headers)
    except AttemptFailed as e:
        o = _Outcome(e.failure)
    except Exception as e:
        o = _Outcome(_failure_of(e, "reply", deadline.alarm if deadline else None))
    finally:
        if deadline is not None:
            deadline.disarm()
    o.latency_ms = (time.perf_counter() - started) * 1000.0
    return o


def run_stream(call: _Call, http: httpx.Client) -> Iterator[str]:
    route(call)
    while True:
        c = call.candidate()
        planned = call.plan(c, stream=True)
        if isinstance(planned, _Outcome):
            o = planned
        else:
            o = yield from _stream_attempt(call, http, c, planned)
        step, wait = call.conclude(c, o)
        if step in ("served", "give_up"):
            call.streamed = call.finish(c, o, step)
            return
        _sleep(call, wait)


def _stream_attempt(
    call: _Call, http: httpx.Client, c: _Candidate, planned: HttpCall
) -> Iterator[str]:
    """One streamed attempt: yields its deltas, returns its outcome. Until the first text the
    watchdog holds the first token's deadline; after it, the attempt's whole time counts only
    while waiting for the provider (a slow caller is not the provider's timeout)."""
    reader = _StreamReader(c, time.perf_counter())
    clock = time.monotonic() - reader.started  # perf_counter -> monotonic, for the watchdog
    committed, failure, deadline = False, None, None
    waited = 0.0  # the provider's time after the first text
    try:
        with http.stream(
            "POST",
            planned.url,
            content=planned.body,
            headers=planned.headers,
            timeout=_timeout(c, stream=True),
        ) as r:
            deadline = _Deadline(r)
            _body_reads(r, c)
            if r.status_code >= 300:
                deadline.arm(clock + reader.started + c.timeout_s)
                body = _capped(r.iter_bytes(), MAX_ERROR_BYTES)
                failure = _classified(c, r.status_code, r.headers, body)
            else:
                deadline.arm(clock + reader.started + c.first_token_timeout_s)
                chunks = r.iter_bytes()
                while True:
                    asked = time.perf_counter()
                    chunk = next(chunks, None)
                    if committed:
                        waited += time.perf_counter() - asked
                    if chunk is None:
                        break
                    deltas = reader.feed(chunk)
                    if not deltas:
                        if reader.decoder.complete:
                            break
                        continue
                    if not committed:
                        committed = True
                        waited = time.perf_counter() - reader.started
                    deadline.disarm()
                    for delta in deltas:
                        try:
                            yield delta
                        except GeneratorExit:
                            call.abandon(c, reader)
                            raise
                    if reader.failed is not None:
                        raise AttemptFailed(reader.failed)
                    if reader.decoder.complete:
                        break  # whole: a server slow to end the body is not waited for
                    deadline.arm(time.monotonic() + c.timeout_s - waited)
    except AttemptFailed as e:
        failure = e.failure
    except GeneratorExit:
        raise
    except Exception as e:
        failure = _failure_of(e, "text", deadline.alarm if deadline else None)
    except BaseException:
        if committed:
            call.abandon(c, reader)
        else:
            call.cancelled(c, reader.started)
        raise
    finally:
        if deadline is not None:
            deadline.disarm()
    return reader.outcome(failure, committed)


# ------------------------------------------------------------------------------ asyncio drivers


async def aroute(call: _Call) -> _Call:
    while (wait := call.route()) is not None:
        await asyncio.sleep(wait)
    return call


async def arun(call: _Call, http: aiohttp.ClientSession) -> Response:
    while True:
        c = call.candidate()
        planned = call.plan(c, stream=False)
        if isinstance(planned, _Outcome):
            o = planned
        else:
            started = time.perf_counter()
            try:
                o = await _aattempt(http, c, planned)
            except BaseException:
                call.cancelled(c, started)
                raise
        step, wait = call.conclude(c, o)
        if step in ("served", "give_up"):
            return call.finish(c, o, step)
        await _asleep(call, wait)


async def _asleep(call: _Call, wait: float) -> None:
    if wait <= 0:
        return
    try:
        await asyncio.sleep(wait)
    except BaseException:
        call.cancelled(call.candidate(), None)
        raise


async def _aattempt(http: aiohttp.ClientSession, c: _Candidate, planned: HttpCall) -> _Outcome:
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout(c.timeout_s),
            http.post(
                planned.url,
                data=planned.body,
                headers=planned.headers,
                allow_redirects=False,  # a key must not follow a redirect to another host
                timeout=c.aio_timeout,
                proxy=c.proxy,
            ) as r,
        ):
            cap = MAX_ERROR_BYTES if r.status >= 300 else MAX_REPLY_BYTES
            body = await _acapped(r.content.iter_any(), cap)
            o = _whole(c, r.status, body, r.headers)
    except AttemptFailed as e:
        o = _Outcome(e.failure)
    except Exception as e:
        o = _Outcome(_failure_of(e, "reply"))
    o.latency_ms = (time.perf_counter() - started) * 1000.0
    return o


class _AsyncDeadline:
    """An asyncio attempt's read deadline: at `at` the connection is aborted (the read in
    progress ends) — never a cancellation, which would land in the caller's code while it holds
    a delta. One timer handle, moved as the attempt goes (cheaper than a timeout per read)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, r: aiohttp.ClientResponse) -> None:
        self.loop = loop
        conn = r.connection
        self.transport = conn.transport if conn is not None else None
        self.handle: asyncio.TimerHandle | None = None
        self.fired = False

    def arm(self, at: float) -> None:
        self.disarm()
        if self.transport is not None:
            self.handle = self.loop.call_at(at, self._fire)

    def disarm(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.fired = True
        if self.transport is not None:
            self.transport.abort()


async def arun_stream(call: _Call, http: aiohttp.ClientSession) -> AsyncIterator[str]:
    await aroute(call)
    while True:
        c = call.candidate()
        planned = call.plan(c, stream=True)
        o = planned if isinstance(planned, _Outcome) else None
        if o is None:
            reader = _StreamReader(c, time.perf_counter())
            committed, failure, deadline = False, None, None
            waited = 0.0  # the provider's time after the first text
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                async with asyncio.timeout_at(start + c.first_token_timeout_s):
                    cm = http.post(
                        planned.url,
                        data=planned.body,
                        headers=planned.headers,
                        allow_redirects=False,
                        timeout=c.aio_timeout,
                        proxy=c.proxy,
                    )
                    r = await cm.__aenter__()
                try:
                    deadline = _AsyncDeadline(loop, r)
                    if r.status >= 300:
                        deadline.arm(start + c.timeout_s)
                        body = await _acapped(r.content.iter_any(), MAX_ERROR_BYTES)
                        failure = _classified(c, r.status, r.headers, body)
                    else:
                        deadline.arm(start + c.first_token_timeout_s)
                        chunks = r.content.iter_any()
                        while True:
                            asked = loop.time()
                            chunk = await anext(chunks, None)
                            if committed:
                                waited += loop.time() - asked
                            if chunk is None:
                                break
                            deltas = reader.feed(chunk)
                            if not deltas:
                                if reader.decoder.complete:
                                    break
                                continue
                            if not committed:
                                committed = True
                                waited = loop.time() - start
                            deadline.disarm()
                            for delta in deltas:
                                try:
                                    yield delta
                                except GeneratorExit:
                                    call.abandon(c, reader)
                                    raise
                            if reader.failed is not None:
                                raise AttemptFailed(reader.failed)
                            if reader.decoder.complete:
                                break  # whole: a server slow to end the body is not waited for
                            deadline.arm(loop.time() + c.timeout_s - waited)
                finally:
                    if deadline is not None:
                        deadline.disarm()
                    await cm.__aexit__(None, None, None)
            except AttemptFailed as e:
                failure = e.failure
            except GeneratorExit:
                raise
            except Exception as e:
                fired = deadline is not None and deadline.fired
                failure = Failure("timeout", "no text in time") if fired else _failure_of(e, "text")
            except BaseException:
                if committed:
                    call.abandon(c, reader)
                else:
                    call.cancelled(c, reader.started)
                raise
            o = reader.outcome(failure, committed)
        step, wait = call.conclude(c, o)
        if step in ("served", "give_up"):
            call.streamed = call.finish(c, o, step)
            return
        await _asleep(call, wait)


# ------------------------------------------------------------------------------------ the SDK


class Stream:
    """The text of a streamed call, delta by delta. After the last, :attr:`response` holds the
    Response (every attempt, usage and cost). A failure after the first delta raises
    :class:`turnout.StreamInterruptedError` (its ``.response`` has the text so far)."""

    def __init__(self, call: _Call, deltas: Iterator[str]) -> None:
        self._call = call
        self._deltas = deltas
        self.response: Response | None = None

    @property
    def decision(self) -> _core.Decision | None:
        return self._call.decision

    def __iter__(self) -> Iterator[str]:
        yield from self._deltas
        self.response = self._call.streamed

    def close(self) -> None:
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream:
    """The async twin of :class:`Stream`: ``async for delta in stream``."""

    def __init__(self, call: _Call, deltas: AsyncIterator[str]) -> None:
        self._call = call
        self._deltas = deltas
        self._closed = False
        self.response: Response | None = None

    @property
    def decision(self) -> _core.Decision | None:
        return self._call.decision

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for delta in self._deltas:
                yield delta
            self.response = self._call.streamed
        finally:
            # A loop left early (break, an exception) ends the attempt now, reported once, not
            # whenever the stream is garbage-collected.
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:  # once: `async with` and a loop left early both close it
            return
        self._closed = True
        await self._deltas.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _close_at_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await session.close()


#: The AttemptPolicy's keyword arguments a Gateway takes as ``retry``.
RETRY_KEYS = (
    "max_retries",
    "base_backoff_ms",
    "backoff_multiplier",
    "max_backoff_ms",
    "jitter",
    "max_retry_after_ms",
    "max_route_retries",
    "max_attempts",
)


class Gateway:
    """The worker SDK over a route source (a :class:`turnout.Router` or a sidecar
    :class:`turnout.Client`): ``call``, ``acall`` and their streams. ``Router.call`` and
    ``Client.call`` use one each; build one yourself to share HTTP connections or set the retry
    policy (``retry``: the AttemptPolicy's keyword arguments, the same the what-if engine takes)."""

    def __init__(
        self,
        source: RouteSource,
        config_of: Callable[[], _core.Config],
        *,
        retry: Mapping[str, Any] | None = None,
        credentials: Credentials | None = None,
        max_connections: int = 1024,
    ) -> None:
        retry = dict(retry or {})
        unknown = sorted(set(retry) - set(RETRY_KEYS))
        if unknown:
            raise _errors.InvalidArgumentError(
                f"retry: unknown keys {unknown}; expected {', '.join(RETRY_KEYS)}"
            )
        _core.AttemptPolicy(**retry)  # checks the values now, not at the first call
        self._retry = retry
        self._seeds = random.Random(int.from_bytes(os.urandom(8), "little"))  # jitter per call
        self._source = source
        self._table = _Table(config_of, credentials or Credentials())
        # No retries inside the HTTP client: the policy is the only one that retries. The limits go
        # to the transport: a client given a transport ignores its own.
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self._max_connections = max_connections
        # An asyncio session's connections belong to the event loop that made them.
        self._ahttp: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _policy(self) -> _core.AttemptPolicy:
        return _core.AttemptPolicy(**self._retry, seed=self._seeds.getrandbits(64))

    def _sync_http(self) -> httpx.Client:
        http = self._http
        if http is None:
            with self._http_lock:  # threads calling at once share one client
                if self._http is None:
                    self._http = httpx.Client(
                        transport=httpx.HTTPTransport(retries=0, limits=self._limits)
                    )
                http = self._http
        return http

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        http = self._ahttp.get(loop)
        if http is None or http.closed:
            # aiohttp, not httpx, in asyncio: bench/gateway_bench.py measures ~7x less CPU per
            # request at concurrency 64 (httpcore's pool walks every connection per request).
            http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None),
                # No environment lookups per request (trust_env costs two thread-pool hand-offs
                # per request: ~1 ms of CPU, measured); each target's proxy is resolved once.
                trust_env=False,
            )
            self._ahttp[loop] = http
            # asyncio.run() finalizes the async generators still open when its loop ends: this
            # one closes the session then, so a loop per call (asyncio.run per request) leaks no
            # connection.
            closer = _close_at_shutdown(http)
            await anext(closer)
            self._closers[loop] = closer
        return http

    def _call(
        self,
        scenario: str,
        messages: Sequence[Mapping[str, Any] | Message],
        *,
        max_tokens: int | None,
        temperature: float | None,
        stop: Sequence[str] | str | None,
        cache: str | bool | None,
        key: str | None,
        data_class: str | None,
        input_tokens: int | None,
    ) -> _Call:
        msgs = messages_of(messages)
        if isinstance(stop, str):
            stop = (stop,)
        if max_tokens is not None and max_tokens <= 0:
            raise _errors.InvalidArgumentError("max_tokens must be positive")
        if cache not in (None, True, False, "5m", "1h"):
            raise _errors.InvalidArgumentError("cache must be None, True, False, '5m' or '1h'")
        scenario_max = self._table.max_tokens(scenario)  # an unknown scenario raises here
        request = ChatRequest(
            messages=msgs,
            max_tokens=max_tokens or scenario_max,
            temperature=temperature,
            stop=tuple(stop or ()),
            cache_ttl="5m" if cache is True else (cache or None),  # type: ignore[arg-type]
        )
        # By default a prompt with a prefix worth keeping (a system prompt or earlier turns) is
        # marked at each target's own cache lifetime.
        auto_cache = cache is None and len(msgs) > 1
        route_args = {
            "key": key,
            "data_class": data_class,
            "input_tokens": input_tokens,
            "max_output_tokens": request.max_tokens,
            "text": canonical_prompt([(m.role, m.content) for m in msgs]),
        }
        return _Call(
            self._source, self._table, self._policy(), scenario, request, route_args, auto_cache
        )

    def call(
        self,
        scenario: str,
        messages: Sequence[Mapping[str, Any] | Message],
        *,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | str | None = None,
        cache: str | bool | None = None,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
    ) -> Response | Stream:
        """Routes ``scenario``, calls its target (then its fallbacks, by the retry policy),
        reports every attempt and returns the Response (``stream=True``: a :class:`Stream`).

        ``messages``: OpenAI-style ``{"role", "content"}`` dicts (system, user, assistant; text),
        ending with a user message. ``max_tokens`` defaults to the scenario's max_output_tokens.
        ``cache``: Anthropic cache_control breakpoints — None marks the system prompt and the turns
        before the last at the target's cache TTL when there are any, "5m"/"1h" (or True: 5m)
        always, False never. The decision's cache key is sent as OpenAI's ``prompt_cache_key``.
        ``key``, ``data_class``, ``input_tokens`` are the route's. Raises
        :class:`turnout.ProviderError` when no attempt served."""
        c = self._call(
            scenario,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            cache=cache,
            key=key,
            data_class=data_class,
            input_tokens=input_tokens,
        )
        if stream:  # routed when read: a stream never read holds no decision
            return Stream(c, run_stream(c, self._sync_http()))
        return run(route(c), self._sync_http())

    async def acall(
        self,
        scenario: str,
        messages: Sequence[Mapping[str, Any] | Message],
        *,
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | str | None = None,
        cache: str | bool | None = None,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
    ) -> Response | AsyncStream:
        """The asyncio twin of :meth:`call` (``stream=True``: an :class:`AsyncStream`)."""
        c = self._call(
            scenario,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            cache=cache,
            key=key,
            data_class=data_class,
            input_tokens=input_tokens,
        )
        if stream:  # routed when read: a stream never read holds no decision
            return AsyncStream(c, arun_stream(c, await self._session()))
        return await arun(await aroute(c), await self._session())

    def close(self) -> None:
        """Closes the blocking client's connections (an asyncio client closes in aclose)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    async def aclose(self) -> None:
        """Closes this event loop's connections and the blocking client's."""
        loop = asyncio.get_running_loop()
        http = self._ahttp.pop(loop, None)
        closer = self._closers.pop(loop, None)
        if http is not None:
            await http.close()
        if closer is not None:
            await closer.aclose()
        self.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
