"""The daily shape of demand, said once: the generator's curve (turnout.workload) as the 24 hourly
multipliers a capacity plan takes (``turnout plan --diurnal``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.capacity import Demand
from turnout.workload import generate, hourly_shape

ROOT = Path(__file__).resolve().parents[2]


def test_hourly_shape_is_the_generators_curve_averaged_per_hour() -> None:
    shape = hourly_shape(0.6)
    assert len(shape) == 24
    assert sum(shape) / 24 == pytest.approx(1.0, abs=1e-12)
    # 1 + 0.6 sin(2 pi (t - 9 h) / 24 h): peak at 15:00, trough at 03:00 (hours 14/15 and 2/3 tie).
    assert shape[14] == pytest.approx(shape[15])
    assert shape[14] == max(shape)
    assert shape[2] == pytest.approx(shape[3])
    assert shape[2] == min(shape)
    # Hour 14 by hand: the mean of 1 + a sin(phase) for phase from 5/24 to 6/24 of a turn.
    a, b = 2 * math.pi * 5 / 24, 2 * math.pi * 6 / 24
    assert shape[14] == pytest.approx(1 + 0.6 * (math.cos(a) - math.cos(b)) / (b - a), rel=1e-12)
    assert hourly_shape(0.0) == (1.0,) * 24
    with pytest.raises(ValueError, match="amplitude"):
        hourly_shape(1.5)


def test_a_generated_day_follows_the_shape() -> None:
    chunks = list(generate(40_000, seed=3, duration_s=86_400.0))
    measured = Demand.from_trace(chunks)
    assert measured.diurnal is not None
    expected = hourly_shape()
    busiest = max(range(24), key=lambda h: measured.diurnal[h])
    quietest = min(range(24), key=lambda h: measured.diurnal[h])
    # Bursts make single hours noisy: the measured peak and trough lie within 3 h of the curve's.
    assert min(abs(busiest - 14.5), 24 - abs(busiest - 14.5)) <= 3
    assert min(abs(quietest - 2.5), 24 - abs(quietest - 2.5)) <= 3
    assert max(expected) / min(expected) == pytest.approx(1.593 / 0.407, rel=1e-2)


def _plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout.cli", "plan", str(ROOT / "examples" / "routing.yaml"),
         "-s", "support-summarization", "--self-hosted", "llama-70b", "--maas", "gpt-4.1-mini",
         "--rate", "4", "--output-tokens", "120", "--duration", "60", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_plan_takes_the_generators_shape_or_24_multipliers() -> None:
    result = _plan("--diurnal", "generator", "--json")
    assert result.returncode == 0, result.stderr
    demand = json.loads(result.stdout)["demand"]
    assert demand["diurnal"] == pytest.approx(list(hourly_shape()))
    hours = ",".join(["1"] * 12 + ["3"] * 12)  # scaled to mean 1: 0.5 and 1.5
    result = _plan("--diurnal", hours, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["demand"]["diurnal"] == [0.5] * 12 + [1.5] * 12


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,2,3", "got 3 values"),
        (",".join(["1"] * 23 + ["-1"]), ">= 0"),
        (",".join(["0"] * 24), "not all 0"),
        (",".join(["1"] * 23 + ["nan"]), "finite"),
        ("weekly", "flat, generator or 24"),
    ],
)
def test_a_bad_shape_is_refused(value: str, message: str) -> None:
    result = _plan("--diurnal", value)
    assert result.returncode == 2
    assert "--diurnal" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
