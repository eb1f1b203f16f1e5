"""bench/gateway_bench.py --quick runs end to end and prints every figure issue 14 asks for.

A smoke test, not a performance gate: it checks the JSON's shape and that each number is one a
real measurement could give (a latency no shorter than the fake's shortest time to first token,
p99 >= the median, a jittered load's latencies spread, the added figures equal to the differences
they name, profile shares within [0, 1], a part's time within its caller's).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gateway_bench.py"

ASYNC_MODES = ("direct_aiohttp", "sdk", "direct_aiohttp_stream", "sdk_stream", "direct_httpx")
BLOCKING_MODES = ("direct_httpx_blocking", "sdk_blocking")
LOADS = ("synchronized", "jittered")
MODE_KEYS = {
    "median",
    "p99",
    "requests",
    "throughput_per_s",
    "client_cpu_us_per_request",
    "client_cpu_share_of_one_core",
}
OVERHEAD_KEYS = {
    "added_median_us",
    "added_p99_us",
    "added_median_ms",
    "added_p99_ms",
    "ratio_median",
    "ratio_p99",
    "added_median_us_median_of_rounds",
}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)


def positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_overhead(o: dict[str, Any], sdk: dict[str, Any], direct: dict[str, Any]) -> None:
    assert set(o) == OVERHEAD_KEYS
    assert o["added_median_us"] == pytest.approx(sdk["median"] - direct["median"], abs=0.11)
    assert o["added_p99_us"] == pytest.approx(sdk["p99"] - direct["p99"], abs=0.11)
    assert o["added_p99_ms"] == pytest.approx(o["added_p99_us"] / 1000, abs=0.001)
    assert o["ratio_median"] == pytest.approx(sdk["median"] / direct["median"], rel=1e-3)
    assert o["ratio_p99"] == pytest.approx(sdk["p99"] / direct["p99"], rel=1e-3)
    assert math.isfinite(o["added_median_us_median_of_rounds"])


def test_every_concurrency_and_load_has_each_mode_with_sane_latencies(
    report: dict[str, Any],
) -> None:
    assert report["quick"] is True
    assert set(report["by_concurrency"]) == {"1", "16", "64"}
    ttfts = set()
    for c, loads in report["by_concurrency"].items():
        assert tuple(loads) == LOADS
        for load, run in loads.items():
            assert run["concurrency"] == int(c)
            ttft, jitter = run["fake_ttft_ms"], run["fake_ttft_jitter_ms"]
            ttfts.add(ttft)
            if load == "synchronized":
                assert jitter == 0
                assert run["worker_start_stagger_ms"] == 0
            else:
                assert 0 < jitter < ttft
                assert run["worker_start_stagger_ms"] == ttft
            floor_us = (ttft - jitter) * 1000  # every request waited for its first token
            with_blocking = c == "1" and load == "synchronized"
            expected = set(ASYNC_MODES) | (set(BLOCKING_MODES) if with_blocking else set())
            assert set(run["modes"]) == expected
            for name, m in run["modes"].items():
                assert set(m) == MODE_KEYS, name
                assert floor_us <= m["median"] <= m["p99"] < floor_us + 10e6, (c, load, name, m)
                assert m["requests"] >= int(c), (c, load, name)
                assert positive(m["throughput_per_s"]), (c, load, name)
                assert positive(m["client_cpu_us_per_request"]), (c, load, name)
                assert 0 < m["client_cpu_share_of_one_core"] <= 2.5, (c, load, name)
            modes = run["modes"]
            if load == "jittered":
                # The fake's TTFT spreads over +-jitter: the direct call's latencies do too.
                spread = modes["direct_aiohttp"]["p99"] - modes["direct_aiohttp"]["median"]
                assert spread > 0.2 * jitter * 1000, (c, modes["direct_aiohttp"])
            check_overhead(run["sdk_vs_direct"], modes["sdk"], modes["direct_aiohttp"])
            check_overhead(
                run["sdk_stream_vs_direct_stream"],
                modes["sdk_stream"],
                modes["direct_aiohttp_stream"],
            )
            if with_blocking:
                check_overhead(
                    run["sdk_blocking_vs_direct_blocking"],
                    modes["sdk_blocking"],
                    modes["direct_httpx_blocking"],
                )
            else:
                assert "sdk_blocking_vs_direct_blocking" not in run
            h = run["httpx_vs_aiohttp"]
            assert h["ratio_median"] == pytest.approx(
                modes["direct_httpx"]["median"] / modes["direct_aiohttp"]["median"], rel=1e-3
            )
            assert all(positive(v) for v in h.values())
            assert 0 < run["fake_cpu_share_of_one_core"] <= 2.5
            side = report["side_by_side"][c][load]
            assert side["added_p99_ms"] == run["sdk_vs_direct"]["added_p99_ms"]
            assert (
                side["stream_added_median_ms"]
                == (run["sdk_stream_vs_direct_stream"]["added_median_ms"])
            )
            assert (
                side["sdk_client_cpu_share_of_one_core"]
                == (modes["sdk"]["client_cpu_share_of_one_core"])
            )
    assert len(ttfts) == 1  # the same time to first token at every concurrency


def test_cpu_per_call_and_the_client_ceiling(report: dict[str, Any]) -> None:
    cpu = report["sdk_cpu_in_isolation"]
    assert cpu["calls_each"] > 0
    for name in (
        "direct_aiohttp",
        "sdk",
        "direct_aiohttp_stream",
        "sdk_stream",
        "direct_aiohttp_trust_env",
        "sdk_if_trust_env_false",
        "direct_httpx",
    ):
        assert positive(cpu[name]["cpu_us_per_call"]), name
        assert cpu[name]["wall_us_per_call"] > 0, name
    for added, a, b in (
        ("sdk_added_cpu_us_per_call", "sdk", "direct_aiohttp"),
        ("sdk_stream_added_cpu_us_per_call", "sdk_stream", "direct_aiohttp_stream"),
        ("trust_env_added_cpu_us_per_call", "direct_aiohttp_trust_env", "direct_aiohttp"),
        ("sdk_if_trust_env_false_added_cpu_us", "sdk_if_trust_env_false", "direct_aiohttp"),
    ):
        diff = cpu[a]["cpu_us_per_call"] - cpu[b]["cpu_us_per_call"]
        assert cpu[added] == pytest.approx(diff, abs=0.2), added
    top = report["client_ceiling_fake_answers_at_once"]
    assert top["concurrency"] == 64
    for name in (
        "direct_httpx",
        "direct_aiohttp",
        "direct_aiohttp_trust_env",
        "sdk",
        "sdk_if_trust_env_false",
    ):
        assert positive(top[name]["throughput_per_s"]), name
        assert positive(top[name]["client_cpu_us_per_request"]), name
        # httpx spends some of its time in httpcore's pool pass; the aiohttp clients have none.
        assert ("httpcore_pool_pass_share" in top[name]) == (name == "direct_httpx"), name
    assert 0 < top["direct_httpx"]["httpcore_pool_pass_share"] < 1


def test_the_profile_names_the_sdks_parts(report: dict[str, Any]) -> None:
    profile = report["sdk_profile"]
    assert profile["calls_each"] > 0
    for mode, own_part, driver in (
        ("sdk", "ChatCompletions.parse", "_aattempt (HTTP under asyncio.timeout)"),
        (
            "sdk_stream",
            "_StreamReader.feed (SSE parser + decoder)",
            "arun_stream (the stream driver)",
        ),
    ):
        p = profile[mode]
        assert positive(p["busy_us_per_call"])
        assert 0 < p["turnout_own_share"] < 1
        for key in ("top_own_time", "top_own_time_turnout"):
            assert p[key], (mode, key)
            for row in p[key]:
                assert set(row) == {"where", "calls", "us_per_call", "share"}
                assert 0 <= row["share"] <= 1, row
                assert 0 <= row["us_per_call"] <= p["busy_us_per_call"], row
                assert row["calls"] > 0, row
            assert all("epoll" not in row["where"] for row in p[key])  # waits are not CPU
        assert all("turnout" in row["where"] for row in p["top_own_time_turnout"])
        parts = p["cumulative_us_per_call"]
        for part in (
            "_Call.route (with Router.route, C++)",
            "ChatCompletions.build",
            "_Call._report (with Router.report, C++)",
            "aiohttp ClientSession._request",
            own_part,
            driver,
        ):
            assert positive(parts[part]), (mode, part)
        # A plain function's cumulative time is within its caller's (not so for coroutines:
        # cProfile counts each resumption of a coroutine apart).
        assert parts["ChatCompletions.build"] <= parts["_Call.plan (key, adapter build)"]
