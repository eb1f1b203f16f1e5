"""Router.route from Python vs a no-op pybind11 function with the same signature.

Issue target: route median <= 3x the no-op, both measured in this run. Prints JSON (ns per call).
Each sample times a batch of calls (the clock costs more than a no-op call), so median/p99 are over
batch means.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import turnout
from bench_stats import summary
from turnout import _core

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "routing.yaml"
NOW = 1_767_225_600.0


def sample(fn, batch: int, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            fn()
        out.append((time.perf_counter_ns() - t0) / batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()

    router = turnout.Router(turnout.load_config(EXAMPLE), decision_ttl_s=1.0)
    route = router.route
    noop = _core._noop_route
    keys = [f"ticket-{i}" for i in range(1024)]
    counter = iter(range(10**12))

    def call_route() -> None:
        i = next(counter)
        route(
            "agent-assist",
            key=keys[i & 1023],
            input_tokens=1800,
            max_output_tokens=300,
            now=NOW + i,
        )

    def call_noop() -> None:
        i = next(counter)
        noop(
            "agent-assist",
            key=keys[i & 1023],
            input_tokens=1800,
            max_output_tokens=300,
            now=NOW + i,
        )

    sample(call_route, args.batch, 20)  # warm up
    sample(call_noop, args.batch, 20)
    # Interleave the two so drifts in machine load hit both alike.
    route_s, noop_s = [], []
    for _ in range(args.samples // 10):
        route_s += sample(call_route, args.batch, 10)
        noop_s += sample(call_noop, args.batch, 10)
    r, n = summary(route_s), summary(noop_s)
    print(
        json.dumps(
            {
                "unit": "ns",
                "benchmarks": {"router_route": r, "noop_same_signature": n},
                "ratios": {
                    "route_vs_noop": {
                        "median": round(r["median"] / n["median"], 3),
                        "p99": round(r["p99"] / n["p99"], 3),
                        "target": 3.0,
                    }
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
