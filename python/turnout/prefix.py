"""Prompt prefixes: the canonical text of chat prompts and their chained block hashes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from turnout import _core


def canonical_prompt(
    messages: Iterable[Mapping[str, Any] | tuple[str, str]],
    tools: Iterable[Mapping[str, Any] | str] | None = None,
) -> str:
    """The canonical text of a chat prompt: system/developer messages first, tool definitions
    sorted, then the turns, each framed. Route with ``text=canonical_prompt(...)`` so the same
    conversation prefix hashes to the same blocks from every worker (C++ or Python).

    ``messages`` are OpenAI-style dicts (``role``, ``content``; list contents are joined text parts)
    or ``(role, content)`` pairs; ``tools`` are schemas (dicts, serialized with sorted keys) or
    strings.
    """
    pairs = []
    for m in messages:
        if isinstance(m, tuple):
            role, content = m
        else:
            role, content = m["role"], m.get("content") or ""
        if not isinstance(content, str):  # [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
        pairs.append((str(role), content))
    tool_texts = [
        t if isinstance(t, str) else json.dumps(t, sort_keys=True, separators=(",", ":"))
        for t in (tools or [])
    ]
    return _core.canonical_prompt(pairs, tool_texts)


def prefix_hashes(
    *,
    token_ids: Sequence[int] | None = None,
    text: str | None = None,
    block_size: int = 16,
    model: str = "",
    lora: str = "",
    salt: str = "",
) -> list[int]:
    """Chained XXH3-64 hashes of every full block of a prompt, as the router computes them."""
    return _core.prefix_hashes(
        token_ids=token_ids, text=text, block_size=block_size, model=model, lora=lora, salt=salt
    )
