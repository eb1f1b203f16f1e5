"""Exact pricing of a provider's native usage object."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from turnout import _core


@dataclass(frozen=True)
class Cost:
    """A usage split the way providers bill it, and its exact cost in USD."""

    uncached_input_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal
    reported_cost_usd: Decimal | None = None


def price_usage(
    config: _core.Config,
    target: str,
    usage: dict[str, Any] | list[Any],
    *,
    provider: str | None = None,
    batch: bool = False,
) -> Cost:
    """Normalizes ``usage`` (as the provider returned it) and prices it on ``target``'s catalog.

    ``provider`` overrides the target's provider (to read another provider's usage shape).
    Raises :class:`turnout.UsageError` naming the offending field.
    """
    return Cost(**_core._price_usage(config, target, usage, provider, batch))


def usage_for(provider: str, prompt: int, cached: int, output: int) -> dict[str, Any]:
    """The usage object `provider` returns for a call of `prompt` input tokens, `cached` of them
    read from its prompt cache (Anthropic writes the rest to its cache from 1,024 tokens), and
    `output` output tokens: what :func:`price_usage` reads, for what-if pricing."""
    cached = max(0, min(cached, prompt))
    if provider == "anthropic":
        write = prompt - cached if prompt >= 1024 else 0
        return {
            "input_tokens": prompt - cached - write,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": write,
            "output_tokens": output,
        }
    if provider == "gemini":
        return {
            "usageMetadata": {
                "promptTokenCount": prompt,
                "cachedContentTokenCount": cached,
                "candidatesTokenCount": output,
            }
        }
    if provider == "deepseek":
        return {
            "prompt_tokens": prompt,
            "prompt_cache_hit_tokens": cached,
            "prompt_cache_miss_tokens": prompt - cached,
            "completion_tokens": output,
        }
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
