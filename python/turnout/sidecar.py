"""The sidecar's Python face: a client for its ZeroMQ socket, the read-only shared-memory view of
its counters, and where its binary lives.

Wire protocol (docs/protocol.md): one msgpack map per message, ``{v: 1, op, id, ...}``; replies
are ``{v, id, ok: true, ...}`` or ``{v, id, ok: false, error: {code, message}}``. Every name the
client puts on the wire comes from ``turnout._core.protocol``.

``Client`` is a facade over three ways to decide, each a small class: ``_SocketTransport`` (the
ZeroMQ socket: deadline, reset, CURVE), ``_FastTransport`` (the mapped table and this process's
ring) and ``_LocalFallback`` (an in-process Router for when the sidecar does not answer).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import shutil
import time
import weakref
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout import _core, _errors
from turnout._core import protocol
from turnout.ledger import MoneyType, counters_frame

if TYPE_CHECKING:
    import pandas as pd

    from turnout.gateway.call import AsyncStream, Gateway, Stream
    from turnout.gateway.wire import Response
    from turnout.router import Router

_log = logging.getLogger("turnout")

FIELD = protocol.FIELD  # the wire's field names, from the sidecar's own definition


def _ops(*names: str) -> tuple[str, ...]:
    """The ops this client sends, checked against the protocol's list when the module loads."""
    unknown = [name for name in names if name not in protocol.OPS]
    if unknown:
        raise ImportError(f"turnout._core.protocol has no ops {unknown}")
    return names


_ROUTE, _EXPLAIN, _REPORT, _VERDICT, _STATS, _HEALTH, _RELOAD, _SETTLE_LOCAL = _ops(
    "route", "explain", "report", "verdict", "stats", "health", "reload", "settle_local"
)
(_MIGRATION,) = _ops("migration")
# The route/explain reply's fields in the order Decision._detached takes them.
_DECISION_FIELDS = (
    FIELD.decision_id,
    FIELD.scenario,
    FIELD.target,
    FIELD.endpoint,
    FIELD.fallbacks,
    FIELD.fallback_endpoints,
    FIELD.reasons,
    FIELD.predicted_cost_usd,
    FIELD.reserved_cost_usd,
    FIELD.expected_cached_tokens,
    FIELD.cache_key,
    FIELD.config_version,
    FIELD.at,
)
# The names of the per-call messages, read from FIELD once: a lookup per call would cost more than
# building the fast path's message.
_V, _OP, _ID, _OK = FIELD.v, FIELD.op, FIELD.id, FIELD.ok
_DECISION_ID, _TARGET, _STATUS, _NOW = FIELD.decision_id, FIELD.target, FIELD.status, FIELD.now
_USAGE, _TTFT_MS, _LATENCY_MS, _ACCEPTED = (
    FIELD.usage,
    FIELD.ttft_ms,
    FIELD.latency_ms,
    FIELD.accepted,
)
_COUNTED, _SPOOL_ID, _OUTCOMES = FIELD.counted, FIELD.spool_id, FIELD.outcomes
_VERSION = protocol.VERSION
_ENVELOPE = frozenset((_V, _ID, _OK))
# What a re-sent report gets when its decision died with a previous sidecar (expected, not logged).
_DIED_WITH_THE_SIDECAR = (_errors.UnknownDecisionError, _errors.TargetNotAllowedError)


def _sidecar_path() -> str:
    """Path of the ``turnout-sidecar`` binary: $TURNOUT_SIDECAR, the one installed with this
    package (turnout/bin/), else the first on $PATH."""
    env = os.environ.get("TURNOUT_SIDECAR")
    if env:
        return env
    bundled = Path(__file__).resolve().parent / "bin" / "turnout-sidecar"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("turnout-sidecar")
    if found:
        return found
    raise FileNotFoundError("turnout-sidecar is not installed next to the package nor on $PATH")


def default_endpoint() -> str:
    """The endpoint the sidecar binds by default: the daemon's own rule, from the core
    ($XDG_RUNTIME_DIR/turnout, else /run/user/$UID/turnout, else $HOME/.turnout; never /tmp)."""
    return str(_core.default_endpoint())


def default_shm_name() -> str:
    return f"turnout-{os.getuid()}"


def _error_for(code: str, message: str) -> _errors.TurnoutError:
    """The exception of a wire error reply: the one mapping of ``turnout._errors``."""
    return _errors.error_for(code, message)


def _reply_error(reply: dict[str, Any]) -> _errors.TurnoutError:
    error = reply.get(FIELD.error) or {}
    return _error_for(str(error.get(FIELD.code, "")), str(error.get(FIELD.message, "")))


def _fields(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply's fields without its envelope (v, id, ok)."""
    return {k: v for k, v in reply.items() if k not in _ENVELOPE}


def _decision(reply: dict[str, Any]) -> _core.Decision:
    """The Decision of a route/explain reply: the same type (and attributes) as Router.route's."""
    try:
        return _core.Decision._detached(*[reply[name] for name in _DECISION_FIELDS])
    except KeyError as e:
        raise _errors.SidecarError(f"the sidecar's decision reply has no field {e}") from None
    except TypeError:
        names = ", ".join(f"{name}={reply[name]!r:.40}" for name in _DECISION_FIELDS)
        raise _errors.SidecarError(
            f"the sidecar's decision reply has a mistyped field: {names}"
        ) from None
    except _errors.InvalidArgumentError as e:
        raise _errors.SidecarError(f"the sidecar's decision reply is malformed: {e}") from None


def _decide_message(
    op: str,
    scenario: str,
    key: str | None,
    data_class: str | None,
    input_tokens: int | None,
    max_output_tokens: int | None,
    token_ids: Any,
    text: str | None,
    now: float | None,
) -> dict[str, Any]:
    """A route or explain request's wire message; optional fields only when given."""
    msg: dict[str, Any] = {_OP: op, FIELD.scenario: scenario}
    for name, value in (
        (FIELD.key, key),
        (FIELD.data_class, data_class),
        (FIELD.input_tokens, input_tokens),
        (FIELD.max_output_tokens, max_output_tokens),
        (FIELD.text, text),
        (_NOW, now),
    ):
        if value is not None:
            msg[name] = value
    if token_ids is not None:
        msg[FIELD.token_ids] = [int(t) for t in token_ids]  # numpy arrays too
    return msg


def _report_message(
    decision_id: int,
    target: str,
    status: str,
    now: float,
    usage: dict[str, Any] | None,
    ttft_ms: float | None,
    latency_ms: float | None,
    accepted: bool | None,
) -> dict[str, Any]:
    """A report's wire message; optional fields only when given."""
    msg = {_OP: _REPORT, _DECISION_ID: decision_id, _TARGET: target, _STATUS: status, _NOW: now}
    if usage is not None:
        msg[_USAGE] = usage
    if ttft_ms is not None:
        msg[_TTFT_MS] = ttft_ms
    if latency_ms is not None:
        msg[_LATENCY_MS] = latency_ms
    if accepted is not None:
        msg[_ACCEPTED] = accepted
    return msg


def _z85(key: str | bytes, name: str) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    if len(raw) != 40:
        raise _errors.InvalidArgumentError(f"{name} must be a 40-character Z85 key")
    return raw


class _SocketTransport:
    """The sidecar's ZeroMQ socket: one DEALER, a deadline per call, a fresh socket after a call
    that timed out (lazy pirate), CURVE when keys are given. After a failure it reports itself
    unavailable for ``retry_after_s`` so callers do not wait on a sidecar that is down."""

    def __init__(
        self,
        endpoint: str,
        timeout_ms: int,
        retry_after_s: float,
        curve: tuple[bytes, bytes, bytes] | None,
    ) -> None:
        import zmq

        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retry_after_s = retry_after_s
        self._curve = curve
        self._ids = itertools.count(random.getrandbits(31))
        self._down_until = 0.0
        self._ctx = zmq.Context()
        self._sock: Any = None
        try:
            self._connect()
        except _errors.TurnoutError:
            self.close()
            raise
        except zmq.ZMQError as e:
            self.close()
            raise _errors.InvalidArgumentError(
                f"malformed endpoint '{endpoint}' ({zmq.strerror(e.errno)}): "
                "expected ipc://PATH or tcp://HOST:PORT"
            ) from None

    def _connect(self) -> None:
        zmq = self._zmq
        if self.endpoint.startswith("ipc://"):  # another user's socket would receive our prompts
            _core.check_private_socket(self.endpoint.removeprefix("ipc://"))
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue requests for a peer that is not there
        if self._curve is not None:
            server, public, secret = self._curve
            sock.curve_serverkey = server
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._sock = sock

    def _reset(self) -> None:
        # A timed-out socket may still deliver stale requests later: start afresh.
        self._sock.close(linger=0)
        self._connect()
        self._down_until = time.monotonic() + self.retry_after_s

    @property
    def available(self) -> bool:
        """False for ``retry_after_s`` after a call got no answer."""
        return time.monotonic() >= self._down_until

    def call(self, msg: dict[str, Any], timeout_ms: int | None = None) -> dict[str, Any] | None:
        """Sends one request and waits for its reply; None if the sidecar did not answer in time."""
        import msgpack

        zmq = self._zmq
        msg[_V] = _VERSION
        msg[_ID] = rid = next(self._ids)
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000.0
        payload = msgpack.packb(msg, use_bin_type=True)
        while True:
            try:
                self._sock.send(payload, zmq.NOBLOCK)
                break
            except zmq.Again:  # not connected (yet): wait for the connection within the deadline
                left = deadline - time.monotonic()
                if left <= 0 or not self._sock.poll(max(1, int(left * 1000)), zmq.POLLOUT):
                    self._down_until = time.monotonic() + self.retry_after_s
                    return None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._reset()
                return None
            # A receive timeout instead of a poll: no Poller object per call on the hot path.
            self._sock.setsockopt(zmq.RCVTIMEO, max(1, int(left * 1000)))
            try:
                data = self._sock.recv()
            except zmq.Again:
                self._reset()
                return None
            try:
                reply = msgpack.unpackb(data, raw=False)
            except ValueError:
                continue
            if isinstance(reply, dict) and reply.get(_ID) == rid:
                return reply
            # a late reply to an earlier request that timed out: drop it

    def why_not(self, timeout_ms: int | None = None) -> str:
        """Why nothing answered, in words a user can act on."""
        path = self.endpoint.removeprefix("ipc://")
        if path != self.endpoint and not os.path.exists(path):
            return (
                f"nothing listens at {self.endpoint} (no such socket file): is the sidecar running?"
            )
        waited = timeout_ms or self.timeout_ms
        return f"no answer from the sidecar at {self.endpoint} within {waited} ms"

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._ctx.term()


class _FastTransport:
    """The fast path: the sidecar's table, live state and cache directory mapped from shared
    memory, and this process's ring. ``route`` is the binding's own method (no Python layer on
    the hot path); it raises SidecarUnavailableError when the ring is full or no table is mapped."""

    _RECONCILE_AT = 4096  # provisional receipts kept before their fate is looked up

    def __init__(self, mapped: _core.FastPath) -> None:
        self.mapped = mapped
        self.route = mapped.route
        # Provisional receipts not yet settled: (record number, decision id, target), in order.
        self._provisional: collections.deque[tuple[int, int, str]] = collections.deque()
        self._refused: dict[int, dict[str, Any]] = {}  # rejections by record, until settled
        self.rejections: collections.deque[dict[str, Any]] = collections.deque(maxlen=4096)
        self.provisional = 0
        self.confirmed = 0
        self.rejected = 0
        self.missed = 0

    @staticmethod
    def owns(decision_id: int) -> bool:
        """Whether a decision came from a fast path (its id has the top bit set)."""
        return decision_id >> 63 == 1

    def receipt(
        self,
        decision_id: int,
        target: str,
        status: str,
        now: float,
        usage: dict[str, Any] | None,
        ttft_ms: float | None,
        latency_ms: float | None,
        accepted: bool | None,
    ) -> dict[str, Any] | None:
        """The receipt of a fast-path decision's report, priced here and provisional
        (``counted: False``) until the sidecar applied it; None when this client no longer
        remembers the decision (the sidecar still applies the report)."""
        try:
            receipt = self.mapped.receipt(
                decision_id,
                target=target,
                status=status,
                usage=usage,
                ttft_ms=ttft_ms,
                latency_ms=latency_ms,
                accepted=accepted,
                now=now,
            )
        except _errors.UnknownDecisionError:
            return None
        receipt[_COUNTED] = False
        return receipt

    def post(self, msg: dict[str, Any]) -> int:
        """Posts a report or verdict to this process's ring: its record number (0: full, use the
        socket)."""
        import msgpack

        msg[_V] = _VERSION
        return self.mapped.post(msgpack.packb(msg, use_bin_type=True))

    def track(self, record: int, decision_id: int, target: str) -> None:
        """Remembers a provisional receipt until the sidecar says what became of its record."""
        self.provisional += 1
        self._provisional.append((record, decision_id, target))
        if len(self._provisional) >= self._RECONCILE_AT:
            self.reconcile()

    def reconcile(self) -> bool:
        """Reads the ring's feedback: counts settled receipts as confirmed or rejected and keeps
        each refused record for :meth:`Client.settle`. True when every record posted is settled."""
        feedback = self.mapped.feedback()
        self.missed += feedback["missed"]
        for refused in feedback["rejected"]:
            op = refused["op"] or "record"
            refused["error"] = _error_for(
                refused["code"],
                f"the sidecar refused ring record {refused['record']} "
                f"({op} of decision {refused['decision_id']})",
            )
            self._refused[refused["record"]] = refused
            self.rejections.append(refused)
        settled = feedback["settled"]
        while self._provisional and self._provisional[0][0] <= settled:
            record, _, target = self._provisional.popleft()
            refused = self._refused.get(record)
            if refused is None:
                self.confirmed += 1
            else:
                refused["target"] = target
                self.rejected += 1
        for record in [r for r in self._refused if r <= settled]:
            del self._refused[record]
        return settled >= feedback["posted"]

    @property
    def config(self) -> _core.Config | None:
        """The table mapped last (None before the first)."""
        return self.mapped.config


class _LocalFallback:
    """The in-process Router that decides when the sidecar does not answer: built from the
    client's ``config``, else (lazily) from the last table the fast path mapped. Reports and
    verdicts of its decisions are counted here too, and spooled for the sidecar by the Client."""

    def __init__(self, config: _core.Config | None, seed: int) -> None:
        self._seed = seed
        self.router: Router | None = None
        # Ids apart from the sidecar's, the fast path's and (a random tag) other clients'.
        tag = random.SystemRandom().getrandbits(30) & protocol.LOCAL_TAG_MASK
        self._first = protocol.LOCAL_ID_BIT | tag << protocol.LOCAL_TAG_SHIFT | 1
        self._last_id = 0
        if config is not None:
            self._build(config)

    def _build(self, config: _core.Config) -> None:
        from turnout.router import Router

        self.router = Router(config, seed=self._seed, first_decision_id=self._first)

    def ready(self, mapped: _core.Config | None) -> bool:
        """Whether it can decide (building the Router from the mapped table if need be)."""
        if self.router is None and mapped is not None:
            self._build(mapped)
        return self.router is not None

    def route(self, scenario: str, **kwargs: Any) -> _core.Decision:
        assert self.router is not None
        d = self.router.route(scenario, **kwargs)
        self._last_id = d.id
        return d

    def owns(self, decision_id: int) -> bool:
        """Whether this Router made the decision (its ids count up from its first)."""
        return self.router is not None and self._first <= decision_id <= self._last_id

    @staticmethod
    def spool_entry(d: _core.Decision) -> dict[str, Any]:
        """A local decision as settle_local gives it to the sidecar (by names); its outcomes and
        verdict are added as they come. Its spool id is 63 random bits from the OS (unique across
        clients and forks, so the sidecar can tell a re-sent entry from another client's)."""
        entry: dict[str, Any] = {
            _SPOOL_ID: int.from_bytes(os.urandom(8), "little") >> 1 or 1,
            FIELD.scenario: d.scenario,
            _TARGET: d.target,
            FIELD.reserved_cost_usd: format(d.reserved_cost_usd, "f"),  # never "1E-7"
            _OUTCOMES: [],
        }
        if d.endpoint is not None:
            entry[FIELD.endpoint] = d.endpoint
        if d.fallbacks:
            entry[FIELD.fallbacks] = list(d.fallbacks)
        return entry


def _drop_fast_path(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client._fast = None
        client.fast_path_error = "forked: this process has no ring of its own"


class Client:
    """Routes through a local ``turnout-sidecar`` with the same ``route``/``report``/``verdict``
    signatures as :class:`turnout.Router`, and the same :class:`turnout.Decision` whichever way
    the decision was made: by the sidecar through its socket, by the fast path, or locally.

    Every call waits at most ``timeout_ms`` for the sidecar. The fallback is fixed up front: if
    ``config`` (a path or a :class:`turnout.Config`) is given, the client builds its own
    in-process :class:`turnout.Router` from it, and a route whose sidecar does not answer in time
    (or is down) is decided locally by that Router — the same decide code, with this process's own
    state; such decisions have ids ``1 << 62 | tag << 32 | n`` (a random tag per client). Each is
    spooled (in memory, at most ``spool_limit``; beyond, the oldest is dropped and counted) with
    its outcomes and verdict, and given to the sidecar when it answers again (before the next
    request, and by :meth:`flush` and :meth:`settle`), which counts it exactly once in its own
    ledger and takes it over (its later reports and verdict go there). Without ``config`` a
    route that gets no answer raises :class:`turnout.SidecarUnavailableError`. After a failure
    the client goes local for ``retry_after_s`` before trying the sidecar again. The first local
    decision of an outage logs a warning on the ``turnout`` logger (one per outage, not one per
    request); :meth:`counters` and :attr:`local_decisions` count them.

    A report the sidecar does not acknowledge is kept in a queue and re-sent (before the next
    request, or by :meth:`flush`); reports are idempotent per (decision id, target), so a re-sent
    report that did arrive the first time changes nothing. ``report`` returns the sidecar's receipt,
    or None when the report was queued. A re-sent report the sidecar refuses (most often: its
    decision died with a previous sidecar process) is dropped, logged and counted in
    ``dropped_reports``.

    With ``shm`` (the sidecar's ``--shm`` name) the client also maps the sidecar's table, live
    state and cache directory from shared memory and takes the **fast path**: ``route`` decides
    in this process with the same decide code and posts the decision to this process's ring in
    shared memory (no system call, no round trip); reports and verdicts of those decisions are
    posted the same way, and their receipts are priced here from the same table: provisional
    (``counted: False``) until the sidecar applied them; :meth:`settle` waits for that and returns
    the records it refused, :meth:`counters` counts them. The sidecar
    drains the rings within a millisecond and stays the only writer of tables and counters; a
    ring that is full (a sidecar that stopped draining) sends the call through the socket
    instead. Records in a ring survive a sidecar crash: the restarted sidecar applies them. When
    the sidecar does not answer and no ``config`` was given, the fallback Router is built from
    the last mapped table.

    The ``now=`` keyword of ``route``/``explain``/``report``/``verdict`` dates only what the local
    fallback Router decides or accounts; the sidecar runs on its own clock and ignores a client's
    time (it checks it: a non-finite or out-of-range ``now`` is refused with ``ValueError``).

    A sidecar serving CURVE (``--curve-secret-key``) is reached with ``curve_server_key`` (the
    public key it logs at start) and this client's ``curve_secret_key`` (its public key, which
    the sidecar's authorized-keys file lists, is derived from it); all Z85. A client the sidecar
    does not authorize gets no answer, as if the sidecar were down.

    A Client owns a ZeroMQ socket and a ring: use one per thread (and create it after a fork).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout_ms: int = 250,
        config: str | os.PathLike[str] | _core.Config | None = None,
        seed: int = 0,
        retry_after_s: float = 1.0,
        shm: str | None = None,
        curve_server_key: str | bytes | None = None,
        curve_secret_key: str | bytes | None = None,
        spool_limit: int = 65536,
    ) -> None:
        if timeout_ms <= 0:
            raise _errors.InvalidArgumentError("timeout_ms must be positive")
        if spool_limit <= 0:
            raise _errors.InvalidArgumentError("spool_limit must be positive")
        if (curve_server_key is None) != (curve_secret_key is None):
            raise _errors.InvalidArgumentError(
                "give both curve_server_key and curve_secret_key, or neither"
            )
        curve: tuple[bytes, bytes, bytes] | None = None
        if curve_server_key is not None and curve_secret_key is not None:
            import zmq

            server = _z85(curve_server_key, "curve_server_key")
            secret = _z85(curve_secret_key, "curve_secret_key")
            curve = (server, zmq.curve_public(secret), secret)
        if config is not None and not isinstance(config, _core.Config):
            from turnout import load_config

            config = load_config(config)
        self._local = _LocalFallback(config, seed)
        self._socket = _SocketTransport(
            endpoint or default_endpoint(), timeout_ms, retry_after_s, curve
        )
        self._unacked: collections.deque[dict[str, Any]] = collections.deque()
        # Local decisions not yet given to the sidecar, by local decision id, oldest first; and
        # those it imported: local decision id -> the sidecar's (later reports go there).
        self._spool: dict[int, dict[str, Any]] = {}
        self._imported: dict[int, int] = {}
        self._spool_limit = spool_limit
        self._spool_dropped = 0
        self._spool_imported = 0
        self._spool_refused = 0
        self.dropped_reports = 0
        self._socket_decisions = 0
        self._fast_decisions = 0
        self._local_decisions = 0
        self._outages = 0
        self._in_outage = False
        self._fast: _FastTransport | None = None
        self._gateway: Gateway | None = None
        self.fast_path_error: str | None = None
        if shm is not None:
            try:
                self._fast = _FastTransport(_core.attach_fast_path(shm))
            except _errors.TurnoutError as e:  # no sidecar yet, or every ring taken: the socket
                self.fast_path_error = str(e)
            else:
                # A forked child must not write into its parent's ring: it goes through the socket.
                me = weakref.ref(self)
                os.register_at_fork(after_in_child=lambda: _drop_fast_path(me))

    @property
    def endpoint(self) -> str:
        return self._socket.endpoint

    @property
    def timeout_ms(self) -> int:
        return self._socket.timeout_ms

    @property
    def retry_after_s(self) -> float:
        return self._socket.retry_after_s

    # -- one request through the socket --------------------------------------------------------

    def _call(
        self, msg: dict[str, Any], timeout_ms: int | None = None, *, even_if_down: bool = False
    ) -> dict[str, Any] | None:
        """The socket's reply; None when it did not answer, or (unless ``even_if_down``) did not
        answer lately."""
        if not even_if_down and not self._socket.available:
            return None
        reply = self._socket.call(msg, timeout_ms)
        if reply is not None and self._in_outage:
            self._in_outage = False
            _log.info("turnout: the sidecar at %s answers again", self.endpoint)
        return reply

    def _ask(self, msg: dict[str, Any], timeout_ms: int | None = None) -> dict[str, Any]:
        """The reply to one request (even while the sidecar looks down); raises on an error
        reply or when nothing answered."""
        reply = self._call(msg, timeout_ms, even_if_down=True)
        if reply is None:
            raise _errors.SidecarUnavailableError(self._socket.why_not(timeout_ms))
        if not reply.get(_OK):
            raise _reply_error(reply)
        return reply

    def request(self, op: str, timeout_ms: int | None = None, **fields: Any) -> dict[str, Any]:
        """Sends any op and returns the reply's fields; raises on an error reply or a timeout."""
        return _fields(self._ask({_OP: op, **fields}, timeout_ms))

    # -- Router's signatures ------------------------------------------------------------------

    def route(
        self,
        scenario: str,
        *,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        token_ids: Any = None,
        text: str | None = None,
        now: float | None = None,
    ) -> _core.Decision:
        """Decides where a request goes (the fast path, the sidecar, or the local fallback)."""
        if (self._unacked or self._spool) and self._socket.available:
            self.flush()  # what the socket could not take before
        fast = self._fast
        fast_refused = None
        if fast is not None:
            try:
                # Keywords spelled out: the hot path builds no dict (measured: a third of its cost).
                d = fast.route(
                    scenario,
                    key=key,
                    data_class=data_class,
                    input_tokens=input_tokens,
                    max_output_tokens=max_output_tokens,
                    token_ids=token_ids,
                    text=text,
                    now=now,
                )
            except _errors.SidecarUnavailableError as e:
                fast_refused = e  # the ring is full or no table is mapped: through the socket
            else:
                self._fast_decisions += 1
                return d
        request = (key, data_class, input_tokens, max_output_tokens, token_ids, text, now)
        reply = self._call(_decide_message(_ROUTE, scenario, *request))
        if reply is None:
            return self._route_locally(
                fast_refused,
                scenario,
                key=key,
                data_class=data_class,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                token_ids=token_ids,
                text=text,
                now=now,
            )
        if not reply.get(_OK):
            raise _reply_error(reply)
        self._socket_decisions += 1
        return _decision(reply)

    def _route_locally(
        self, fast_refused: Exception | None, scenario: str, **kwargs: Any
    ) -> _core.Decision:
        why = self._socket.why_not()
        if fast_refused is not None:
            why = f"the fast path refused ({fast_refused}) and {why}"
        mapped = self._fast.config if self._fast is not None else None
        if not self._local.ready(mapped):
            raise _errors.SidecarUnavailableError(f"{why}, and no fallback config")
        d = self._local.route(scenario, **kwargs)
        self._spool_decision(d)
        if not self._in_outage:
            self._in_outage = True
            self._outages += 1
            _log.warning(
                "turnout: %s; deciding locally (this process's own state) until it answers", why
            )
        self._local_decisions += 1
        return d

    def _spool_decision(self, d: _core.Decision) -> None:
        """Keeps a local decision for the sidecar (the oldest is dropped, and counted, at the
        bound)."""
        if len(self._spool) >= self._spool_limit:
            del self._spool[next(iter(self._spool))]
            self._spool_dropped += 1
        self._spool[d.id] = _LocalFallback.spool_entry(d)

    def explain(
        self,
        scenario: str,
        *,
        key: str | None = None,
        data_class: str | None = None,
        input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        token_ids: Any = None,
        text: str | None = None,
        now: float | None = None,
    ) -> _core.Decision:
        """What the sidecar's route() would decide now, without committing anything."""
        request = (key, data_class, input_tokens, max_output_tokens, token_ids, text, now)
        return _decision(self._ask(_decide_message(_EXPLAIN, scenario, *request)))

    def report(
        self,
        decision_id: int,
        *,
        target: str,
        status: str,
        usage: dict[str, Any] | None = None,
        ttft_ms: float | None = None,
        latency_ms: float | None = None,
        accepted: bool | None = None,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """Accounts an outcome. Returns the receipt (``counted`` says whether the sidecar has
        applied it), or None if it was queued for re-sending."""
        if self._local.owns(decision_id):
            imported = self._imported.get(decision_id)
            if imported is None:
                return self._report_locally(
                    decision_id, target, status, usage, ttft_ms, latency_ms, accepted, now
                )
            decision_id = imported  # the sidecar has it now: report there
        if now is None:
            now = time.time()  # fixed here: a re-sent report is the same report
        outcome = (decision_id, target, status, now, usage, ttft_ms, latency_ms, accepted)
        msg = _report_message(*outcome)
        fast = self._fast
        if fast is not None and fast.owns(decision_id):
            receipt = fast.receipt(*outcome)
            record = fast.post(msg)
            if record:
                if receipt is not None:
                    fast.track(record, decision_id, target)
                return receipt
        reply = self._send_or_queue(msg)
        if reply is None:
            return None
        reply[FIELD.cost_usd] = Decimal(reply[FIELD.cost_usd])
        return _fields(reply)

    def _report_locally(
        self,
        decision_id: int,
        target: str,
        status: str,
        usage: dict[str, Any] | None,
        ttft_ms: float | None,
        latency_ms: float | None,
        accepted: bool | None,
        now: float | None,
    ) -> dict[str, Any]:
        """An outcome of a local decision: counted by the local Router and spooled with its
        decision for the sidecar (the receipt says ``counted: False``)."""
        assert self._local.router is not None
        receipt = self._local.router.report(
            decision_id,
            target=target,
            status=status,
            usage=usage,
            ttft_ms=ttft_ms,
            latency_ms=latency_ms,
            accepted=accepted,
            now=now,
        )
        entry = self._spool.get(decision_id)
        if entry is not None and not receipt["duplicate"]:
            outcome: dict[str, Any] = {_TARGET: target, _STATUS: status}
            for name, value in ((_USAGE, usage), (_TTFT_MS, ttft_ms), (_LATENCY_MS, latency_ms)):
                if value is not None:
                    outcome[name] = value
            entry[_OUTCOMES].append(outcome)
        if entry is not None and accepted is not None:
            entry.setdefault(_ACCEPTED, accepted)
        receipt[_COUNTED] = False
        return receipt

    def verdict(self, decision_id: int, accepted: bool, *, now: float | None = None) -> None:
        """Records the quality verdict of a decision (queued like a report if unacknowledged)."""
        if self._local.owns(decision_id):
            imported = self._imported.get(decision_id)
            if imported is None:
                assert self._local.router is not None
                self._local.router.verdict(decision_id, accepted, now=now)
                entry = self._spool.get(decision_id)
                if entry is not None:
                    entry.setdefault(_ACCEPTED, accepted)
                return
            decision_id = imported
        msg = {
            _OP: _VERDICT,
            _DECISION_ID: decision_id,
            _ACCEPTED: accepted,
            _NOW: time.time() if now is None else now,
        }
        if self._fast is not None and self._fast.owns(decision_id) and self._fast.post(msg):
            return
        self._send_or_queue(msg)

    def _send_or_queue(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Sends a report or verdict; queues it for re-sending when the sidecar does not answer
        (None), raises on an error reply."""
        if (self._unacked or self._spool) and self._socket.available:
            self.flush()
        reply = self._call(dict(msg))
        if reply is None:
            self._unacked.append(msg)
            return None
        if not reply.get(_OK):
            raise _reply_error(reply)
        return reply

    @property
    def fast_path(self) -> bool:
        """Whether routes decide from the mapped table (``shm`` given and mapped)."""
        return self._fast is not None

    @property
    def unacknowledged(self) -> int:
        """Reports and verdicts waiting to be re-sent."""
        return len(self._unacked)

    @property
    def spooled(self) -> int:
        """Local decisions waiting to be given to the sidecar."""
        return len(self._spool)

    @property
    def local_decisions(self) -> int:
        """Routes decided by the local fallback Router (the sidecar did not answer)."""
        return self._local_decisions

    @property
    def fast_decisions(self) -> int:
        """Routes decided by the fast path."""
        return self._fast_decisions

    def counters(self) -> dict[str, int]:
        """How this client's routes were decided: ``socket`` (by the sidecar), ``fast_path``,
        ``local`` (the fallback Router), and ``outages`` (runs of local decisions, one warning
        each). What became of its provisional receipts (fast-path reports): ``provisional``
        (given), ``confirmed`` (applied by the sidecar), ``rejected`` (refused by it; see
        :meth:`settle`), ``rejections_missed`` (refusals the ring overwrote before they were
        read, more than 64 at once: their receipts count as confirmed). What became of its local
        decisions: ``spooled`` (waiting for the sidecar), ``imported`` (applied by it),
        ``spool_refused`` (refused by it, e.g. a scenario its table no longer has) and
        ``spool_dropped`` (beyond ``spool_limit``, never sent)."""
        fast = self._fast
        if fast is not None:
            fast.reconcile()
        return {
            "socket": self._socket_decisions,
            "fast_path": self._fast_decisions,
            "local": self._local_decisions,
            "outages": self._outages,
            "provisional": fast.provisional if fast is not None else 0,
            "confirmed": fast.confirmed if fast is not None else 0,
            "rejected": fast.rejected if fast is not None else 0,
            "rejections_missed": fast.missed if fast is not None else 0,
            "spooled": len(self._spool),
            "imported": self._spool_imported,
            "spool_refused": self._spool_refused,
            "spool_dropped": self._spool_dropped,
        }

    def _send_spool(self, timeout_ms: int | None) -> bool:
        """Gives the spooled local decisions to the sidecar (settle_local), oldest first; False
        when it stopped answering. A reply lost on the way is harmless: the sidecar knows a spool
        id it imported and answers with the same decision id."""
        while self._spool:
            local_id, entry = next(iter(self._spool.items()))
            reply = self._call({_OP: _SETTLE_LOCAL, **entry}, timeout_ms, even_if_down=True)
            if reply is None:
                return False
            del self._spool[local_id]
            if not reply.get(_OK):
                self._spool_refused += 1
                _log.warning(
                    "turnout: the sidecar refused local decision %d: %s",
                    local_id,
                    _reply_error(reply),
                )
                continue
            self._spool_imported += 1
            if len(self._imported) >= self._spool_limit:
                del self._imported[next(iter(self._imported))]
            self._imported[local_id] = reply[_DECISION_ID]
            if reply.get(FIELD.rejected):
                _log.warning(
                    "turnout: the sidecar refused %d outcome(s) or verdict of local decision %d",
                    reply[FIELD.rejected],
                    local_id,
                )
        return True

    def flush(self, timeout_ms: int | None = None) -> int:
        """Gives the sidecar the local decisions spooled while it did not answer, then re-sends
        queued reports; returns how many of both are still waiting."""
        if not self._send_spool(timeout_ms):
            return len(self._spool) + len(self._unacked)
        while self._unacked:
            msg = self._unacked[0]
            reply = self._call(dict(msg), timeout_ms, even_if_down=True)
            if reply is None:
                break
            self._unacked.popleft()
            if not reply.get(_OK):
                self.dropped_reports += 1
                error = _reply_error(reply)
                if not isinstance(error, _DIED_WITH_THE_SIDECAR):
                    _log.warning("turnout: the sidecar refused a re-sent %s: %s", msg[_OP], error)
        return len(self._spool) + len(self._unacked)

    def settle(self, timeout_ms: int | None = None) -> list[dict[str, Any]]:
        """Waits until the sidecar has applied everything this client gave it: the spooled local
        decisions and queued reports (sent now), and every record of its fast-path ring. Returns
        the ring records it refused since the last call, each a dict with ``record``,
        ``decision_id``, ``op``, ``code``, ``error`` (the exception it stands for) and, for a
        report, ``target``: those provisional receipts were never counted. Raises
        SidecarUnavailableError when not everything was applied within ``timeout_ms`` (default:
        the client's)."""
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000.0
        fast = self._fast
        while True:
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            waiting = self.flush(left_ms) if (self._spool or self._unacked) else 0
            ring_settled = fast is None or fast.reconcile()
            if waiting == 0 and ring_settled:
                break
            if time.monotonic() >= deadline:
                raise _errors.SidecarUnavailableError(
                    f"not settled within {timeout_ms or self.timeout_ms} ms: "
                    f"{len(self._spool)} local decision(s) and {len(self._unacked)} report(s) "
                    f"not given to the sidecar, its ring "
                    f"{'settled' if ring_settled else 'not yet applied'}"
                )
            time.sleep(0.001)
        if fast is None:
            return []
        refused = list(fast.rejections)
        fast.rejections.clear()
        return refused

    # -- the sidecar's own ops ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The sidecar's ledger, breakers and fast-path figures (the stats op)."""
        return self.request(_STATS)

    def health(self) -> dict[str, Any]:
        """Whether the sidecar serves, its pid and config version (the health op)."""
        return self.request(_HEALTH)

    def reload(self, timeout_ms: int | None = 5000) -> dict[str, Any]:
        """Asks the sidecar to re-read its config; raises ConfigError (file:line:col) if it is
        invalid, in which case the sidecar keeps serving the old table."""
        return self.request(_RELOAD, timeout_ms=timeout_ms)

    # -- the worker SDK ------------------------------------------------------------------------

    def table(self) -> _core.Config:
        """The routing table this client calls targets by: the sidecar's, as the fast path maps
        it, else the ``config`` it was given. Raises :class:`turnout.SidecarError` without
        either (give ``shm=`` or ``config=``)."""
        if self._fast is not None and self._fast.config is not None:
            return self._fast.config
        if self._local.router is not None:
            return self._local.router.config
        raise _errors.SidecarError(
            "Client.call needs the routing table to call targets: give the client shm= (the "
            "sidecar's table) or config="
        )

    def gateway(self, **options: Any) -> Gateway:
        """The worker SDK over this client (``call``/``acall`` use a default one); ``options``
        are :class:`turnout.gateway.call.Gateway`'s."""
        from turnout.gateway.call import Gateway

        return Gateway(self, self.table, **options)

    def call(self, scenario: str, messages: Any, **kwargs: Any) -> Response | Stream:
        """Routes through the sidecar, calls the target in its own API, falls back by the retry
        policy, reports every attempt to the sidecar and returns one Response (``stream=True``:
        a Stream). See :meth:`turnout.gateway.call.Gateway.call`."""
        return self._default_gateway().call(scenario, messages, **kwargs)

    async def acall(self, scenario: str, messages: Any, **kwargs: Any) -> Response | AsyncStream:
        """The asyncio twin of :meth:`call` (routing and reports stay blocking: microseconds on
        the fast path, one local round trip otherwise)."""
        return await self._default_gateway().acall(scenario, messages, **kwargs)

    def _default_gateway(self) -> Gateway:
        if self._gateway is None:
            self._gateway = self.gateway()
        return self._gateway

    def migration(self, scenario: str | None = None, action: str = "status") -> dict[str, Any]:
        """A scenario's migration (the migration op): ``action="status"`` gives
        ``{"migrations": [status, ...]}`` (every scenario with a migration when ``scenario`` is
        None); ``"promote"``, ``"pause"``, ``"resume"`` or ``"abort"`` gives ``{"transition": ...,
        "migration": status}``. A command raises NoMigrationError, MigrationConflictError, or
        PermissionDeniedError on an endpoint that is neither local nor CURVE-authenticated."""
        msg: dict[str, Any] = {_OP: _MIGRATION, FIELD.action: action}
        if scenario is not None:
            msg[FIELD.scenario] = scenario
        return _fields(self._ask(msg))

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
        self._fast = None  # frees the ring (what is in it is still applied)
        self._socket.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedCounters:
    """A read-only view of a sidecar through its shared memory: counters, the routing table and
    what it would decide (from its live state and cache directory), with no round trip and no
    system call per read once mapped. Each counter row is read under its seqlock (torn reads
    retry)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._view = _core.attach_segment(name)
        self._table: _core.FastPath | None = None

    def _mapped(self) -> _core.FastPath:
        if self._table is None:
            self._table = _core.attach_fast_path(self.name, ring=False)
        return self._table

    @property
    def config(self) -> _core.Config:
        """The routing table the sidecar serves now (its published copy)."""
        config = self._mapped().config
        assert config is not None  # a mapped view always has a table
        return config

    def explain(self, scenario: str, **kwargs: Any) -> _core.Decision:
        """What the sidecar's route() would decide now, computed here from the mapped table, live
        state and cache directory (the same decide code); commits nothing."""
        return self._mapped().explain(scenario, **kwargs)

    def counters(self, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        """The same row dicts as :meth:`turnout.Router.counters`."""
        return self._view.counters(timeout_s)

    def counters_frame(self, money: MoneyType = "decimal") -> pd.DataFrame:
        """The rows as a DataFrame (needs pandas); ``money`` as in
        :meth:`turnout.Router.counters_frame`."""
        return counters_frame(self.counters(), money)

    def info(self) -> dict[str, Any]:
        """The segment header: owner pid, generation, heartbeat (s), config version, ready."""
        return self._view.info()


def attach(name: str | None = None) -> SharedCounters:
    """Maps the shared-memory segment of the sidecar started with ``--shm NAME`` (default
    ``turnout-$UID``) read-only. Raises FileNotFoundError if there is none."""
    return SharedCounters(name or default_shm_name())
