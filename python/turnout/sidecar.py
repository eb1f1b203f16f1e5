"""The sidecar's Python face: a client for its ZeroMQ socket, the read-only shared-memory view of
its counters, and where its binary lives.

Wire protocol (docs/protocol.md): one msgpack map per message, ``{v: 1, op, id, ...}``; replies
are ``{v, id, ok: true, ...}`` or ``{v, id, ok: false, error: {code, message}}``.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import shutil
import time
import weakref
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turnout import _core, _errors
from turnout.ledger import MoneyType, counters_frame

if TYPE_CHECKING:
    import pandas as pd

    from turnout.router import Router

PROTOCOL_VERSION = 1

_ERRORS: dict[str, type[Exception]] = {
    "config_invalid": _errors.ConfigError,
    "unknown_scenario": _errors.UnknownScenarioError,
    "unknown_target": _errors.UnknownTargetError,
    "no_eligible_target": _errors.NoEligibleTargetError,
    "budget_exhausted": _errors.BudgetExhaustedError,
    "invalid_argument": _errors.InvalidArgumentError,
    "unknown_decision": _errors.UnknownDecisionError,
    "target_not_allowed": _errors.TargetNotAllowedError,
    "usage_invalid": _errors.UsageError,
    "price_missing": _errors.PriceMissingError,
}


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
    """The endpoint the sidecar binds by default (the same rule as the daemon)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "turnout" if runtime else Path(f"/tmp/turnout-{os.getuid()}")
    return f"ipc://{base / 'sidecar.sock'}"


def default_shm_name() -> str:
    return f"turnout-{os.getuid()}"


def _raise(error: dict[str, Any]) -> None:
    code = str(error.get("code", ""))
    message = str(error.get("message", ""))
    cls = _ERRORS.get(code)
    if cls is None:
        raise _errors.SidecarError(message, code)
    raise cls(message)


class RemoteDecision:
    """A decision the sidecar made: the same attributes as :class:`turnout.Decision`."""

    __slots__ = (
        "at",
        "cache_key",
        "config_version",
        "endpoint",
        "expected_cached_tokens",
        "fallbacks",
        "id",
        "predicted_cost_usd",
        "reasons",
        "scenario",
        "target",
    )

    def __init__(self, reply: dict[str, Any]) -> None:
        self.id: int = reply["decision_id"]
        self.scenario: str = reply["scenario"]
        self.target: str = reply["target"]
        self.endpoint: str | None = reply["endpoint"]
        self.fallbacks: list[str] = list(reply["fallbacks"])
        self.reasons: list[str] = list(reply["reasons"])
        self.predicted_cost_usd = Decimal(reply["predicted_cost_usd"])
        self.expected_cached_tokens: int = reply["expected_cached_tokens"]
        self.cache_key: str | None = reply["cache_key"]
        self.config_version: str = reply["config_version"]
        self.at: float = reply["at"]

    def to_dict(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "id",
                "scenario",
                "target",
                "endpoint",
                "fallbacks",
                "reasons",
                "predicted_cost_usd",
                "expected_cached_tokens",
                "cache_key",
                "config_version",
            )
        }

    def __repr__(self) -> str:
        cost = self.predicted_cost_usd
        return f"<turnout.RemoteDecision {self.id} -> {self.target} (${cost})>"


def _drop_fast_path(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client._fast = None
        client.fast_path_error = "forked: this process has no ring of its own"


def _z85(key: str | bytes, name: str) -> bytes:
    raw = key.encode() if isinstance(key, str) else key
    if len(raw) != 40:
        raise _errors.InvalidArgumentError(f"{name} must be a 40-character Z85 key")
    return raw


class Client:
    """Routes through a local ``turnout-sidecar`` with the same ``route``/``report``/``verdict``
    signatures as :class:`turnout.Router`.

    Every call waits at most ``timeout_ms`` for the sidecar. The fallback is fixed up front: if
    ``config`` (a path or a :class:`turnout.Config`) is given, the client builds its own
    in-process :class:`turnout.Router` from it, and a route whose sidecar does not answer in time
    (or is down) is decided locally by that Router — the same decide code, with this process's own
    state; such decisions have ids below 2**40 and their reports stay local. Without ``config`` a
    route that gets no answer raises :class:`turnout.SidecarUnavailableError`. After a failure
    the client goes local for ``retry_after_s`` before trying the sidecar again.

    A report the sidecar does not acknowledge is kept in a queue and re-sent (before the next
    request, or by :meth:`flush`); reports are idempotent per (decision id, target), so a re-sent
    report that did arrive the first time changes nothing. ``report`` returns the sidecar's receipt,
    or None when the report was queued. Reports the restarted sidecar no longer knows (their
    decision died with the old process) are dropped and counted in ``dropped_reports``.

    With ``shm`` (the sidecar's ``--shm`` name) the client also maps the sidecar's table, live
    state and cache directory from shared memory and takes the **fast path**: ``route`` decides
    in this process with the same decide code and posts the decision to this process's ring in
    shared memory (no system call, no round trip); reports and verdicts of those decisions are
    posted the same way, and their receipts are priced here from the same table. The sidecar
    drains the rings within a millisecond and stays the only writer of tables and counters; a
    ring that is full (a sidecar that stopped draining) sends the call through the socket
    instead. Records in a ring survive a sidecar crash: the restarted sidecar applies them. When
    the sidecar does not answer and no ``config`` was given, the fallback Router is built from
    the last mapped table.

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
    ) -> None:
        import zmq

        if timeout_ms <= 0:
            raise _errors.InvalidArgumentError("timeout_ms must be positive")
        self.endpoint = endpoint or default_endpoint()
        self.timeout_ms = timeout_ms
        self.retry_after_s = retry_after_s
        self._zmq = zmq
        if (curve_server_key is None) != (curve_secret_key is None):
            raise _errors.InvalidArgumentError(
                "give both curve_server_key and curve_secret_key, or neither"
            )
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if curve_server_key is not None and curve_secret_key is not None:
            server = _z85(curve_server_key, "curve_server_key")
            secret = _z85(curve_secret_key, "curve_secret_key")
            self._curve = (server, zmq.curve_public(secret), secret)
        self._ctx = zmq.Context()
        self._sock: Any = None
        self._ids = itertools.count(random.getrandbits(31))
        self._unacked: collections.deque[dict[str, Any]] = collections.deque()
        self._down_until = 0.0
        self._local_ids: set[int] = set()
        self.local_decisions = 0
        self.dropped_reports = 0
        self._fallback: Router | None = None
        self._seed = seed
        self.fast_decisions = 0
        self._fast: _core.FastPath | None = None
        self.fast_path_error: str | None = None
        if shm is not None:
            try:
                self._fast = _core.attach_fast_path(shm)
            except _errors.TurnoutError as e:  # no sidecar yet, or every ring taken: the socket
                self.fast_path_error = str(e)
            else:
                # A forked child must not write into its parent's ring: it goes through the socket.
                me = weakref.ref(self)
                os.register_at_fork(after_in_child=lambda: _drop_fast_path(me))
        if config is not None:
            from turnout import load_config
            from turnout.router import Router

            cfg = config if isinstance(config, _core.Config) else load_config(config)
            self._fallback = Router(cfg, seed=seed)
        self._connect()

    # -- socket -------------------------------------------------------------------------------

    def _connect(self) -> None:
        zmq = self._zmq
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue requests for a peer that is not there
        if self._curve is not None:
            server, public, secret = self._curve
            self._sock.curve_serverkey = server
            self._sock.curve_publickey = public
            self._sock.curve_secretkey = secret
        self._sock.connect(self.endpoint)

    def _reset(self) -> None:
        # Lazy pirate: a timed-out socket may still deliver stale requests later; start afresh.
        self._sock.close(linger=0)
        self._connect()
        self._down_until = time.monotonic() + self.retry_after_s

    def _call(self, msg: dict[str, Any], timeout_ms: int | None = None) -> dict[str, Any] | None:
        """Sends one request and waits for its reply; None if the sidecar did not answer in time."""
        import msgpack

        zmq = self._zmq
        msg["v"] = PROTOCOL_VERSION
        msg["id"] = rid = next(self._ids)
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
            if isinstance(reply, dict) and reply.get("id") == rid:
                return reply
            # a late reply to an earlier request that timed out: drop it

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def request(self, op: str, timeout_ms: int | None = None, **fields: Any) -> dict[str, Any]:
        """Sends any op and returns the reply's fields; raises on an error reply or a timeout."""
        reply = self._call({"op": op, **fields}, timeout_ms)
        if reply is None:
            raise _errors.SidecarUnavailableError(f"no answer from the sidecar at {self.endpoint}")
        if not reply.get("ok"):
            _raise(reply.get("error") or {})
        return {k: v for k, v in reply.items() if k not in ("v", "id", "ok")}

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
    ) -> RemoteDecision | _core.Decision:
        """Decides where a request goes (the fast path, the sidecar, or the local fallback)."""
        if self._fast is not None:
            if self._unacked and self._available():
                self.flush()  # what the socket could not take before
            try:
                # Keywords spelled out: the hot path builds no dict (measured: a third of its cost).
                d = self._fast.route(
                    scenario,
                    key=key,
                    data_class=data_class,
                    input_tokens=input_tokens,
                    max_output_tokens=max_output_tokens,
                    token_ids=token_ids,
                    text=text,
                    now=now,
                )
                self.fast_decisions += 1
                return d
            except _errors.SidecarUnavailableError:
                pass  # the ring is full: through the socket
        fields: dict[str, Any] = {
            "key": key,
            "data_class": data_class,
            "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens,
            "token_ids": token_ids,
            "text": text,
            "now": now,
        }
        if self._unacked and self._available():
            self.flush()
        msg: dict[str, Any] = {"op": "route", "scenario": scenario}
        msg.update((name, value) for name, value in fields.items() if value is not None)
        if token_ids is not None:
            msg["token_ids"] = [int(t) for t in token_ids]
        reply = self._call(msg) if self._available() else None
        if reply is None:
            return self._local_route(scenario, **fields)
        if not reply.get("ok"):
            _raise(reply.get("error") or {})
        return RemoteDecision(reply)

    def _local_route(self, scenario: str, **kwargs: Any) -> _core.Decision:
        if self._fallback is None and self._fast is not None and self._fast.config is not None:
            from turnout.router import Router

            self._fallback = Router(self._fast.config, seed=self._seed)  # the last mapped table
        if self._fallback is None:
            raise _errors.SidecarUnavailableError(
                f"no answer from the sidecar at {self.endpoint} within {self.timeout_ms} ms "
                "and no fallback config"
            )
        d = self._fallback.route(scenario, **kwargs)
        self._local_ids.add(d.id)
        self.local_decisions += 1
        return d

    def explain(self, scenario: str, **kwargs: Any) -> RemoteDecision:
        """What the sidecar's route() would decide now, without committing anything."""
        fields = {k: v for k, v in kwargs.items() if v is not None}
        reply = self.request("explain", scenario=scenario, **fields)
        return RemoteDecision(reply)

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
        """Accounts an outcome. Returns the receipt, or None if it was queued for re-sending."""
        if decision_id in self._local_ids and self._fallback is not None:
            return self._fallback.report(
                decision_id,
                target=target,
                status=status,
                usage=usage,
                ttft_ms=ttft_ms,
                latency_ms=latency_ms,
                accepted=accepted,
                now=now,
            )
        msg: dict[str, Any] = {
            "op": "report",
            "decision_id": decision_id,
            "target": target,
            "status": status,
            "now": time.time() if now is None else now,  # fixed now: a re-send is the same report
        }
        for name, value in (
            ("usage", usage),
            ("ttft_ms", ttft_ms),
            ("latency_ms", latency_ms),
            ("accepted", accepted),
        ):
            if value is not None:
                msg[name] = value
        if self._fast is not None and decision_id >> 63:
            receipt = self._fast_receipt(msg)
            if self._post(msg):
                return receipt
        if self._unacked and self._available():
            self.flush()
        reply = self._call(dict(msg)) if self._available() else None
        if reply is None:
            self._unacked.append(msg)
            return None
        if not reply.get("ok"):
            _raise(reply.get("error") or {})
        reply["cost_usd"] = Decimal(reply["cost_usd"])
        return {k: v for k, v in reply.items() if k not in ("v", "id", "ok")}

    def verdict(self, decision_id: int, accepted: bool, *, now: float | None = None) -> None:
        """Records the quality verdict of a decision (queued like a report if unacknowledged)."""
        if decision_id in self._local_ids and self._fallback is not None:
            self._fallback.verdict(decision_id, accepted, now=now)
            return
        msg = {
            "op": "verdict",
            "decision_id": decision_id,
            "accepted": accepted,
            "now": time.time() if now is None else now,
        }
        if self._fast is not None and decision_id >> 63 and self._post(msg):
            return
        reply = self._call(dict(msg)) if self._available() else None
        if reply is None:
            self._unacked.append(msg)
            return
        if not reply.get("ok"):
            _raise(reply.get("error") or {})

    def _fast_receipt(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """The receipt of a fast-path decision's report, priced here; None when this client no
        longer remembers the decision (the sidecar still applies the report)."""
        assert self._fast is not None
        fields = {k: msg[k] for k in ("usage", "ttft_ms", "latency_ms", "accepted") if k in msg}
        try:
            return self._fast.receipt(
                msg["decision_id"],
                target=msg["target"],
                status=msg["status"],
                now=msg["now"],
                **fields,
            )
        except _errors.UnknownDecisionError:
            return None

    def _post(self, msg: dict[str, Any]) -> bool:
        """Posts a report or verdict to this process's ring (False: full, use the socket)."""
        import msgpack

        assert self._fast is not None
        return self._fast.post(msgpack.packb({"v": PROTOCOL_VERSION, **msg}, use_bin_type=True))

    @property
    def fast_path(self) -> bool:
        """Whether routes decide from the mapped table (``shm`` given and mapped)."""
        return self._fast is not None

    @property
    def unacknowledged(self) -> int:
        """Reports and verdicts waiting to be re-sent."""
        return len(self._unacked)

    def flush(self, timeout_ms: int | None = None) -> int:
        """Re-sends queued reports; returns how many are still queued."""
        while self._unacked:
            msg = self._unacked[0]
            reply = self._call(dict(msg), timeout_ms)
            if reply is None:
                break
            self._unacked.popleft()
            if not reply.get("ok"):
                code = (reply.get("error") or {}).get("code")
                if code in ("unknown_decision", "target_not_allowed"):
                    self.dropped_reports += 1  # its decision died with a previous sidecar
        return len(self._unacked)

    # -- the sidecar's own ops ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def health(self) -> dict[str, Any]:
        return self.request("health")

    def reload(self, timeout_ms: int | None = 5000) -> dict[str, Any]:
        """Asks the sidecar to re-read its config; raises ConfigError (file:line:col) if it is
        invalid, in which case the sidecar keeps serving the old table."""
        return self.request("reload", timeout_ms=timeout_ms)

    def close(self) -> None:
        self._fast = None  # frees the ring (what is in it is still applied)
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._ctx.term()

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
