"""Test helpers shipped with turnout: fake LLM providers on loopback (needs aiohttp).

`FakeProviders` serves the OpenAI (chat completions and Responses), DeepSeek, OpenRouter, vLLM,
SGLang, Anthropic and Gemini wire formats on one port, with scripted faults per model, prompt-cache
behaviour and a record of every request. See `turnout.testing.fake_providers`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.testing.fake_providers import (
        DIALECTS,
        PROVIDERS,
        FakeProviders,
        Fault,
        RecordedRequest,
        count_tokens,
    )

__all__ = [
    "DIALECTS",
    "PROVIDERS",
    "FakeProviders",
    "Fault",
    "RecordedRequest",
    "count_tokens",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `python -m turnout.testing.fake_providers` runs the module once
    # (and `import turnout.testing` does not need aiohttp until a fake is used).
    if name in __all__:
        return getattr(importlib.import_module("turnout.testing.fake_providers"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
