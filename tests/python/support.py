"""Helpers shared by the test modules: a small YAML emitter (PyYAML is not a dependency), a minimal
valid routing table as a dict, and a locator for the line:col of a piece of YAML text.

Kept out of conftest.py so hypothesis strategies (which cannot use function-scoped fixtures) can use
them too.
"""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from typing import Any

DELETE = object()  # an override value that removes the key

_PLAIN = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_.:/+-]*$|^[0-9][A-Za-z0-9_./:-]*[A-Za-z_/:-][A-Za-z0-9_./:-]*$"
)
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}

# The clock every test passes explicitly (seconds): 2026-01-01T00:00:00Z, a day boundary.
T0 = 1_767_225_600.0


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Raw):
        return value.text
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


class Raw:
    """Text emitted verbatim as a scalar (e.g. a number with exactly the digits a test wants)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dump(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars (deterministic: dict order is kept)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        out = []
        for k, v in value.items():
            key = _scalar(k)
            if (isinstance(v, dict) and v) or (isinstance(v, list) and v):
                out.append(f"{pad}{key}:\n{dump(v, indent + 2)}")
            elif isinstance(v, (dict, list)):
                out.append(f"{pad}{key}: {'{}' if isinstance(v, dict) else '[]'}\n")
            else:
                out.append(f"{pad}{key}: {_scalar(v)}\n")
        return "".join(out)
    if isinstance(value, list):
        if not value:
            return pad + "[]\n"
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                inner = dump(item, indent + 2)
                out.append(f"{pad}- {inner[indent + 2 :]}")
            else:
                out.append(
                    f"{pad}- {_scalar(item) if not isinstance(item, (dict, list)) else '[]'}\n"
                )
        return "".join(out)
    return pad + _scalar(value) + "\n"


def base_config() -> dict[str, Any]:
    """A minimal valid routing table: two MaaS targets and a two-replica self-hosted pool."""
    return {
        "version": 1,
        "targets": {
            "mini": {
                "kind": "maas",
                "provider": "openai",
                "model": "gpt-4.1-mini",
                "data_classes": ["public", "deidentified"],
                "context_window": 100000,
                "price": {
                    "input_per_mtok": Raw("0.40"),
                    "cache_read_per_mtok": Raw("0.10"),
                    "output_per_mtok": Raw("1.60"),
                },
            },
            "backup": {
                "kind": "maas",
                "provider": "deepseek",
                "model": "deepseek-chat",
                "data_classes": ["public", "deidentified"],
                "context_window": 100000,
                "price": {
                    "input_per_mtok": Raw("0.28"),
                    "cache_read_per_mtok": Raw("0.028"),
                    "output_per_mtok": Raw("0.42"),
                },
            },
            "pool": {
                "kind": "self_hosted",
                "engine": "vllm",
                "model": "llama",
                "data_classes": [
                    "public",
                    "internal",
                    "deidentified",
                    "confidential",
                    "restricted",
                ],
                "context_window": 100000,
                "cost": {"gpus_per_replica": 1, "usd_per_gpu_hour": Raw("3.60")},
                "replicas": [
                    {"endpoint": "http://pool-a:8000", "max_inflight": 4},
                    {"endpoint": "http://pool-b:8000", "max_inflight": 4},
                ],
            },
        },
        "scenarios": {
            "chat": {
                "data_class": "public",
                "routes": [{"target": "mini", "weight": 100}],
                "fallback": ["backup"],
            },
        },
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `overrides` into a copy of `base`.

    Dict values merge, other values replace, DELETE removes the key.
    """
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if v is DELETE:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def config_text(**overrides: Any) -> str:
    return dump(merge(base_config(), overrides))


def locate(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the `occurrence`-th `needle` in `text`. A ``^`` in the needle marks
    the position wanted inside it (``"budget: ^5"`` is the 5); without one, the needle's start."""
    offset = max(needle.find("^"), 0)
    needle = needle.replace("^", "", 1)
    pos = -1
    for _ in range(occurrence):
        pos = text.index(needle, pos + 1)
    pos += offset
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col
