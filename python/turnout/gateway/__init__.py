"""The worker SDK: call a scenario, fall back, report (turnout.gateway.call), and the front door.

``Router.call`` / ``Client.call`` are the usual entry points; the names below are the SDK's words,
importable from here (loaded when first used: ``import turnout`` stays light).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Gateway": "turnout.gateway.call",
    "Stream": "turnout.gateway.call",
    "AsyncStream": "turnout.gateway.call",
    "Response": "turnout.gateway.wire",
    "Attempt": "turnout.gateway.wire",
    "Message": "turnout.gateway.wire",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'turnout.gateway' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
