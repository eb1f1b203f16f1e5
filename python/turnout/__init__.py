"""Turnout: route each LLM scenario between managed APIs and self-hosted pools, with exact cost.

The C++ core makes every decision; this package is its Python face, used the same way in notebooks
(what-if replays: turnout.replay, turnout.traces, turnout.workload) and in production workers.
"""

from __future__ import annotations

from turnout._core import LATENCY_BUCKETS_MS, Config, Decision, __version__, load_config_text
from turnout._core import load_config as _load_config
from turnout._errors import (
    BudgetExhaustedError,
    BusyError,
    ConfigError,
    IncompatibleLayoutError,
    InternalError,
    InvalidArgumentError,
    MigrationConflictError,
    ModelsError,
    NoEligibleTargetError,
    NoMigrationError,
    NotFoundError,
    PermissionDeniedError,
    PlanError,
    PriceMissingError,
    ProtocolError,
    ProviderError,
    ScenarioError,
    SidecarError,
    SidecarUnavailableError,
    StreamInterruptedError,
    TargetNotAllowedError,
    TraceError,
    TurnoutError,
    TurnoutIOError,
    UnknownDecisionError,
    UnknownScenarioError,
    UnknownTargetError,
    UsageError,
)
from turnout.prefix import canonical_prompt, prefix_hashes
from turnout.pricing import Cost, price_usage
from turnout.router import Router
from turnout.sidecar import Client, SharedCounters, _sidecar_path, attach
from turnout.traces import TraceReader, TraceRow, TraceWriter, read_trace

__all__ = [
    "LATENCY_BUCKETS_MS",
    "BudgetExhaustedError",
    "BusyError",
    "Client",
    "Config",
    "ConfigError",
    "Cost",
    "Decision",
    "IncompatibleLayoutError",
    "InternalError",
    "InvalidArgumentError",
    "MigrationConflictError",
    "ModelsError",
    "NoEligibleTargetError",
    "NoMigrationError",
    "NotFoundError",
    "PermissionDeniedError",
    "PlanError",
    "PriceMissingError",
    "ProtocolError",
    "ProviderError",
    "Router",
    "ScenarioError",
    "SharedCounters",
    "SidecarError",
    "SidecarUnavailableError",
    "StreamInterruptedError",
    "TargetNotAllowedError",
    "TraceError",
    "TraceReader",
    "TraceRow",
    "TraceWriter",
    "TurnoutError",
    "TurnoutIOError",
    "UnknownDecisionError",
    "UnknownScenarioError",
    "UnknownTargetError",
    "UsageError",
    "__version__",
    "_sidecar_path",
    "attach",
    "canonical_prompt",
    "load_config",
    "load_config_text",
    "prefix_hashes",
    "price_usage",
    "read_trace",
]


def load_config(path: str | bytes | "os.PathLike[str]") -> Config:  # noqa: F821, UP037
    """Loads and validates a YAML routing table.

    Raises :class:`ConfigError` (a ``ValueError``) whose message starts with ``path:line:col:``;
    a file that cannot be read raises :class:`NotFoundError` (a ``FileNotFoundError``),
    :class:`PermissionDeniedError` or :class:`TurnoutIOError` (``OSError``s), "path: cannot open:
    <the OS reason>".
    """
    import os

    return _load_config(os.fsdecode(path))
