"""The capacity-planning figure of the core (``_core.self_hosted_cost_per_mtok``): exact to the
picodollar, and refusing what has no meaning."""

from __future__ import annotations

from decimal import Decimal

import pytest

from turnout import InvalidArgumentError, _core


def test_published_rows_are_the_sanity_rows() -> None:
    rows = {r["name"]: r for r in _core.published_rows()}
    small = rows["llama-3.1-8b-fp8-h100x1"]
    large = rows["llama-3.3-70b-fp8-h100x2"]
    assert (small["gpus"], small["output_tokens_per_s"]) == (1, 15220.0)
    assert (large["gpus"], large["output_tokens_per_s"]) == (2, 4205.0)
    # 2 x 2.99e12 picos x 10^12 / (3600 x 4205 x 10^6) = 395,032,368,873.03 -> 395,032,368,873
    cost = _core.self_hosted_cost_per_mtok(
        large["gpus"], "2.99", int(large["output_tokens_per_s"]), Decimal(1)
    )
    assert cost == Decimal("0.395032368873")


@pytest.mark.parametrize(
    ("utilization", "expected"),
    [
        (1, Decimal("0.054570010220")),
        ("0.24", Decimal("0.227375042585")),
        (0.24, Decimal("0.227375042585")),  # a float goes through its repr: exactly 240000 ppm
        (Decimal("0.5"), Decimal("0.109140020441")),  # 2.99e30 / 2.7396e16 = 109,140,020,440.94
    ],
)
def test_utilization_is_exact(utilization: object, expected: Decimal) -> None:
    assert _core.self_hosted_cost_per_mtok(1, Decimal("2.99"), 15220, utilization) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, "2.99", 0, 1), "must be positive"),
        ((1, "2.99", -1, 1), "must be positive"),
        ((1, "2.99", 15220, 0), "within 1..1000000 ppm"),
        ((1, "2.99", 15220, "1.5"), "within 1..1000000 ppm"),
        ((1, "2.99", 15220, "nan"), "finite"),
        ((0, "2.99", 15220, 1), "gpus_per_replica"),
        ((1, "-2.99", 15220, 1), "usd_per_gpu_hour"),
        ((1, "two dollars", 15220, 1), "usd_per_gpu_hour"),
    ],
)
def test_meaningless_inputs_are_refused(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        _core.self_hosted_cost_per_mtok(*args)


@pytest.mark.parametrize(
    ("picos", "text"), [(0, "0"), (1, "1E-12"), (1_500_000_000_000, "1.500000000000")]
)
def test_replay_usd_is_exact_and_zero_reads_zero(picos: int, text: str) -> None:
    from turnout.replay import usd

    assert str(usd(picos)) == text
    assert usd(picos) == Decimal(picos) / Decimal(10**12)
