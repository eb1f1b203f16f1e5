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
