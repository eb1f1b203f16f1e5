"""Turnout's exceptions. Each subclasses a built-in, so ``except ValueError`` keeps working."""

from __future__ import annotations


class TurnoutError(Exception):
    """Base class of every Turnout error."""


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


class SidecarError(RuntimeError, TurnoutError):
    """The sidecar answered with a wire error (bad_message, unknown_op, too_large, too_deep), or its
    shared-memory segment cannot be read."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SidecarUnavailableError(SidecarError):
    """The sidecar did not answer within the client's deadline (and there was no local fallback)."""
