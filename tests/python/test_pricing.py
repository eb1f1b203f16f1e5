"""turnout.pricing.usage_for: each provider's usage shape, read back by the core's pricing."""

from __future__ import annotations

from decimal import Decimal

import pytest

import turnout
from turnout.pricing import price_usage, usage_for


@pytest.mark.parametrize(
    ("target", "split"),
    [
        # (uncached input, cache read, 5-minute cache write) for 3000 prompt tokens, 2048 cached
        ("gpt-4.1-mini", (952, 2048, 0)),
        ("gemini-2.5-pro", (952, 2048, 0)),
        ("deepseek-chat", (952, 2048, 0)),
        # Anthropic writes what it did not read (the prompt is over its 1,024-token minimum)
        ("claude-sonnet-4", (0, 2048, 952)),
    ],
)
def test_usage_for_is_read_back_as_given(
    example_config: turnout.Config, target: str, split: tuple[int, int, int]
) -> None:
    provider = example_config.target_info(target)["provider"]
    cost = price_usage(example_config, target, usage_for(provider, 3000, 2048, 500))
    assert (cost.uncached_input_tokens, cost.cache_read_tokens, cost.cache_write_5m_tokens) == split
    assert cost.output_tokens == 500


def test_usage_for_prices_exactly(example_config: turnout.Config) -> None:
    # gpt-4.1-mini, USD per Mtok: input 0.40, cache read 0.10, output 1.60
    #   952 x 0.40 + 2048 x 0.10 + 500 x 1.60 = 380.8 + 204.8 + 800 = 1385.6 micro-dollars
    usage = usage_for("openai", 3000, 2048, 500)
    assert price_usage(example_config, "gpt-4.1-mini", usage).cost_usd == Decimal("0.0013856")


def test_usage_for_clamps_the_cached_tokens_to_the_prompt() -> None:
    assert usage_for("openai", 100, 500, 1)["prompt_tokens_details"]["cached_tokens"] == 100
    assert usage_for("deepseek", 100, -5, 1)["prompt_cache_hit_tokens"] == 0
    # Below Anthropic's minimum nothing is written
    short = usage_for("anthropic", 900, 0, 1)
    assert (short["input_tokens"], short["cache_creation_input_tokens"]) == (900, 0)
