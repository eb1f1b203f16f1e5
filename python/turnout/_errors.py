"""Turnout's exceptions, and the one mapping from the core's error codes to them.

The codes are the C++ core's table (``kErrorCodes`` in ``cpp/turnout/result.hpp``, listed at run
time by ``turnout._core.error_codes()``); they are also the wire's ``error.code``. :data:`ERRORS`
maps each to one class and :func:`error_for` builds the exception: the binding
(``bindings/errors.cpp``) and the sidecar client both go through it. Each class subclasses a
built-in, so ``except ValueError``, ``except KeyError`` or ``except FileNotFoundError`` keeps
working; each exception carries ``.code``.
"""

from __future__ import annotations

from typing import Any


class TurnoutError(Exception):
    """Base class of every Turnout error."""

    code: str | None = None
    """The wire code (``"not_found"``...): set by :func:`error_for`; a class that stands for one
    code carries it as its default."""


class ConfigError(ValueError, TurnoutError):
    """The routing table is malformed; the message starts with ``path:line:col:``."""


class UnknownScenarioError(KeyError, TurnoutError):
    """A route named a scenario the routing table does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownTargetError(KeyError, TurnoutError):
    """A target name the routing table does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoEligibleTargetError(RuntimeError, TurnoutError):
    """Every target was filtered out (data class, region, context window, breaker, capacity)."""


class BudgetExhaustedError(NoEligibleTargetError):
    """The scenario's daily budget cannot cover the request's worst-case cost."""


class InvalidArgumentError(ValueError, TurnoutError):
    """A request or outcome field is out of range."""


class UnknownDecisionError(KeyError, TurnoutError):
    """A report or verdict names a decision the router never issued, or that expired."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TargetNotAllowedError(ValueError, TurnoutError):
    """A report names a target that was neither the decision's target nor one of its fallbacks."""


class UsageError(ValueError, TurnoutError):
    """A provider usage object is missing fields, has wrong types or is inconsistent."""


class PriceMissingError(ValueError, TurnoutError):
    """A usage needs a price that the target's catalog does not have."""


class NotFoundError(FileNotFoundError, TurnoutError):
    """A file (a routing table) or a shared-memory segment (no sidecar serves that name) does not
    exist; the message ends with the OS reason."""


class PermissionDeniedError(PermissionError, TurnoutError):
    """A file or segment cannot be opened, or a segment is not private to this user (owned by
    another uid, or a mode that lets others write it)."""


class TurnoutIOError(OSError, TurnoutError):
    """An OS call failed (open, read, ftruncate, mmap, a socket, a thread); the message ends with
    the OS reason. (Not named ``IOError``: that is the built-in ``OSError``'s other name.)"""


class BusyError(RuntimeError, TurnoutError):
    """It is held or running already: a live sidecar holds the segment's lock, a subscriber was
    started twice. A ``RuntimeError``, not a ``BlockingIOError``: waiting and retrying does not
    clear it (the other sidecar has to stop), and ``except OSError`` retry loops must not spin on
    it."""


class ProtocolError(ValueError, TurnoutError):
    """The sidecar refused a wire message: ``bad_message``, ``unknown_op``, ``too_large`` or
    ``too_deep`` (``.code`` says which)."""


class NoMigrationError(KeyError, TurnoutError):
    """A migration command (``turnout migration promote``...) for a scenario whose table entry
    has no ``migration`` block."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MigrationConflictError(RuntimeError, TurnoutError):
    """The migration's phase does not allow the command: resuming a canary that is not paused, or
    anything but status once it was promoted or aborted (change its ``attempt`` to run it again)."""


class InternalError(RuntimeError, TurnoutError):
    """A bug in Turnout: the message says where. Please report it."""


class SidecarError(RuntimeError, TurnoutError):
    """The sidecar, or its shared memory, cannot serve this; also a wire error whose code this
    version does not know (a newer sidecar), with that ``.code``."""


class SidecarUnavailableError(SidecarError, ConnectionError):
    """The sidecar did not answer within the client's deadline (and there was no local fallback), or
    its fast path cannot take this now (not running, no table yet, every ring taken, ring full)."""


class IncompatibleLayoutError(SidecarError):
    """A shared-memory segment was written by another build or layout version of Turnout (or is
    not a Turnout segment at all): restart the sidecar with this build, or use another ``--shm``
    name."""


class TraceError(ValueError, TurnoutError):
    """A traffic trace cannot be replayed: the message starts with ``path:line:`` (``path: row N:``
    in Parquet) and says what is wrong. Raised by the Python readers (turnout.traces): no core
    code."""


class ModelsError(ValueError, TurnoutError):
    """A what-if models file cannot be read or has the wrong shape (its path and what is wrong);
    the simulator itself refuses unknown keys. Raised in Python only: no core code."""


class ScenarioError(ValueError, TurnoutError):
    """A scenario decision file (``turnout decide``) cannot be read or disagrees with its routing
    table: each line of the message starts with ``path:line:col:`` and says what is wrong (every
    missing field is named). Raised in Python only (turnout.decide): code ``scenario_invalid``."""

    code = "scenario_invalid"

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing
        """The dotted names of the required fields the file lacks (empty for other errors)."""


class PlanError(ValueError, TurnoutError):
    """A capacity plan cannot be made (turnout.capacity): no pool size meets the scenario's SLO, a
    single request alone exceeds it, the performance model serves nothing, the scenario has no SLO
    to size to, the target is not a self-hosted pool, a table cannot be derived from the routing
    table's file. The message is ``cannot plan: <reason>``.
    Raised in Python only: its code, ``cannot_plan``, is not one of the core's (:data:`ERRORS`)."""

    code = "cannot_plan"


class ProviderError(RuntimeError, TurnoutError):
    """A worker SDK call (``Router.call``, ``Client.call``, the gateway) got no answer: every
    candidate failed, or the retry policy passed a failure through (a content filter refusing the
    prompt, an invalid request). ``.failure`` is the last attempt's failure class
    (``turnout._core.failure_classes()``), ``.http_status`` its HTTP status (None without one) and
    ``.attempts`` every attempt, each reported to the ledger. Raised in Python only."""

    code = "provider_failed"

    def __init__(
        self,
        message: str,
        *,
        failure: str = "transient",
        http_status: int | None = None,
        attempts: list[Any] | None = None,
        response: Any = None,
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.http_status = http_status
        self.attempts: list[Any] = attempts or []
        self.response = response
        """What was answered before the failure (a stream cut after its first text), else None."""


class StreamInterruptedError(ProviderError):
    """A stream failed after it delivered text (its commit point): the text so far is in
    ``.response``, the failure was reported as such, and no other target was tried (the caller
    has already shown part of an answer). Never a silently truncated success."""

    code = "stream_interrupted"


PYTHON_ERRORS: dict[str, type[TurnoutError]] = {
    "scenario_invalid": ScenarioError,
    "cannot_plan": PlanError,
    "provider_failed": ProviderError,
    "stream_interrupted": StreamInterruptedError,
}
"""Codes of errors raised by the Python package alone (not in the core's table, never on the wire)
-> their class; each class carries its code."""


ERRORS: dict[str, type[TurnoutError]] = {
    "config_invalid": ConfigError,
    "unknown_scenario": UnknownScenarioError,
    "unknown_target": UnknownTargetError,
    "no_eligible_target": NoEligibleTargetError,
    "budget_exhausted": BudgetExhaustedError,
    "invalid_argument": InvalidArgumentError,
    "unknown_decision": UnknownDecisionError,
    "target_not_allowed": TargetNotAllowedError,
    "usage_invalid": UsageError,
    "price_missing": PriceMissingError,
    "unavailable": SidecarUnavailableError,
    "not_found": NotFoundError,
    "io_error": TurnoutIOError,
    "permission_denied": PermissionDeniedError,
    "busy": BusyError,
    "incompatible_layout": IncompatibleLayoutError,
    "bad_message": ProtocolError,
    "unknown_op": ProtocolError,
    "too_large": ProtocolError,
    "too_deep": ProtocolError,
    "no_migration": NoMigrationError,
    "migration_conflict": MigrationConflictError,
    "internal": InternalError,
}
"""Every code of the core's table -> the one class raised for it (tests/python/test_package.py
checks that this lists ``turnout._core.error_codes()`` exactly)."""


def _set_default_codes() -> None:
    # A class raised for exactly one code carries it, so one raised directly in Python has it too.
    classes = list(ERRORS.values())
    for code, cls in ERRORS.items():
        if classes.count(cls) == 1:
            cls.code = code


_set_default_codes()


def error_for(code: str, message: str) -> TurnoutError:
    """The exception for a core or wire error: the class of ``code`` (:class:`SidecarError` for a
    code this version does not know), with ``message`` and ``.code``."""
    error = ERRORS.get(code, SidecarError)(message)
    error.code = code
    return error
