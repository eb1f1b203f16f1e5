"""Median and p99 of a list of samples, as every Python bench program reports them."""

from __future__ import annotations

import statistics


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median": round(statistics.median(values), 1),
        "p99": round(values[min(len(values) - 1, int(0.99 * (len(values) - 1) + 0.5))], 1),
    }
