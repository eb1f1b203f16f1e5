"""A route through turnout-sidecar vs raw ZeroMQ DEALER/ROUTER echoes of the same message sizes.

Issue target: the sidecar's route round trip median and p99 <= 1.3x the raw echo, both measured in
this run (same pyzmq client loop, same request bytes). Also the fast path as a Python worker sees
it: ``Client(shm=...).route`` against the in-process ``Router.route`` of the same table. The
baseline is bench/zmq_echo, a C++ ROUTER
with the sidecar's socket options that answers with a reply of the sidecar's reply size; a Python
(pyzmq) echo of the same shape is reported beside it. Also: throughput of route calls with 1, 4 and
16 client processes. Prints JSON (microseconds per round trip, routes per second).

The sidecar is turnout's (``$TURNOUT_SIDECAR`` overrides it); zmq_echo is ``--echo``, else
``$TURNOUT_ZMQ_ECHO``, else build/bench/bench/zmq_echo, else the newest build/*/bench/zmq_echo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import zmq

import turnout
from bench_stats import summary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "routing.yaml"

ECHO = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.bind(sys.argv[1])
reply = b"x" * int(sys.argv[2])
print("ready", flush=True)
while True:
    frames = s.recv_multipart()
    s.send_multipart([frames[0], reply])
"""

LOAD = """
import sys, time, zmq, msgpack
endpoint, seconds = sys.argv[1], float(sys.argv[2])
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.connect(endpoint)
n = 0
time.sleep(0.2)
t_end = time.perf_counter() + seconds
while time.perf_counter() < t_end:
    s.send(msgpack.packb({"v": 1, "op": "route", "id": n, "scenario": "agent-assist",
                          "key": f"k{n & 1023}", "input_tokens": 1800, "max_output_tokens": 300}))
    r = msgpack.unpackb(s.recv())
    assert r["ok"], r
    n += 1
print(n)
"""


LOAD_FAST = """
import sys, time, turnout
endpoint, shm, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
n = 0
with turnout.Client(endpoint, shm=shm, timeout_ms=1000) as c:
    assert c.fast_path, c.fast_path_error
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        c.route("agent-assist", key=f"k{n & 1023}", input_tokens=1800, max_output_tokens=300)
        n += 1
print(n)
"""


def per_call_us(fn: object, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)  # type: ignore[operator]
        out.append((time.perf_counter_ns() - t0) / 1000.0)
    return out


def request(i: int) -> bytes:
    return msgpack.packb(
        {
            "v": 1,
            "op": "route",
            "id": i,
            "scenario": "agent-assist",
            "key": f"k{i & 1023}",
            "input_tokens": 1800,
            "max_output_tokens": 300,
        }
    )


def find_echo(given: str | None) -> str:
    """The zmq_echo binary (see the module docstring for the order)."""
    given = given or os.environ.get("TURNOUT_ZMQ_ECHO")
    if given:
        return given
    preferred = ROOT / "build" / "bench" / "bench" / "zmq_echo"
    built = [p for p in ROOT.glob("build/*/bench/zmq_echo") if os.access(p, os.X_OK)]
    if preferred in built:
        return str(preferred)
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    sys.exit(
        "sidecar_bench: no zmq_echo; build the benches (cmake -S . -B build/bench "
        "-DCMAKE_BUILD_TYPE=Release && cmake --build build/bench) or pass --echo PATH"
    )


def start_echo(argv: list[str]) -> subprocess.Popen[bytes]:
    """Starts an echo peer and waits for its "ready" line."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert p.stdout is not None
    if p.stdout.readline().strip() != b"ready":
        p.kill()
        sys.exit(f"sidecar_bench: {argv[0]} did not start")
    return p


def round_trips(endpoint: str, n: int) -> tuple[list[float], int]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    payloads = [request(i) for i in range(n)]
    for p in payloads[:200]:  # warm-up
        s.send(p)
        s.recv()
    out = []
    size = 0
    for p in payloads:
        t0 = time.perf_counter_ns()
        s.send(p)
        reply = s.recv()
        out.append((time.perf_counter_ns() - t0) / 1000.0)
        size = len(reply)
    s.close()
    ctx.term()
    return out, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="round trips per peer per round")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run")
    parser.add_argument("--echo", help="the zmq_echo binary (default: see the module docstring)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of each peer")
    args = parser.parse_args()
    echo_binary = find_echo(args.echo)

    work = Path(tempfile.mkdtemp(prefix="sy-bench-", dir="/tmp"))
    shm = f"sy-bench-{uuid.uuid4().hex[:8]}"
    config = work / "routing.yaml"
    shutil.copy(EXAMPLE, config)
    endpoint = f"ipc://{work / 's.sock'}"
    cpp_endpoint = f"ipc://{work / 'cpp-echo.sock'}"
    py_endpoint = f"ipc://{work / 'py-echo.sock'}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sidecar = subprocess.Popen(
            [turnout._sidecar_path(), str(config), "--endpoint", endpoint, "--shm", shm, "-f"],
            stderr=subprocess.DEVNULL,
        )
        procs.append(sidecar)
        with turnout.Client(endpoint, timeout_ms=200, retry_after_s=0) as c:
            deadline = time.monotonic() + 10
            while True:
                try:
                    c.health()
                    break
                except turnout.SidecarUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        _, reply_size = round_trips(endpoint, 500)  # the reply size the echoes must match
        procs.append(start_echo([echo_binary, cpp_endpoint, str(reply_size)]))
        procs.append(start_echo([sys.executable, "-c", ECHO, py_endpoint, str(reply_size)]))
        # Short interleaved rounds: drift on a noisy machine hits every peer alike.
        samples: dict[str, list[float]] = {"sidecar": [], "cpp": [], "py": []}
        round_ratios: list[float] = []  # sidecar / C++ echo medians of the same round
        for _ in range(args.rounds):
            medians = {}
            for name, peer in (("sidecar", endpoint), ("cpp", cpp_endpoint), ("py", py_endpoint)):
                us = round_trips(peer, args.calls)[0]
                samples[name] += us
                medians[name] = statistics.median(us)
            round_ratios.append(medians["sidecar"] / medians["cpp"])

        with turnout.Client(endpoint, timeout_ms=1000) as c:
            t0 = time.perf_counter_ns()
            for i in range(1000):
                c.route("agent-assist", key=f"k{i}", input_tokens=1800, max_output_tokens=300)
            client_us = (time.perf_counter_ns() - t0) / 1000.0 / 1000

        # The fast path from Python: Client(shm=...).route against the in-process Router.route.
        router = turnout.Router(turnout.load_config(str(config)))
        with turnout.Client(endpoint, shm=shm, timeout_ms=1000) as c:
            assert c.fast_path, c.fast_path_error
            fast_samples: list[float] = []
            local_samples: list[float] = []
            for _ in range(args.rounds):
                fast_samples += per_call_us(
                    lambda i: c.route("agent-assist", key=f"k{i & 1023}", input_tokens=1800),
                    args.calls,
                )
                local_samples += per_call_us(
                    lambda i: router.route("agent-assist", key=f"k{i & 1023}", input_tokens=1800),
                    args.calls,
                )
                time.sleep(0.01)  # the sidecar drains the ring
        fast, local = summary(fast_samples), summary(local_samples)

        throughput = {}
        fast_throughput = {}
        for n in (1, 4, 16):
            load = [
                subprocess.Popen(
                    [sys.executable, "-c", LOAD_FAST, endpoint, shm, str(args.seconds)],
                    stdout=subprocess.PIPE,
                )
                for _ in range(n)
            ]
            total = sum(int(p.communicate(timeout=60)[0]) for p in load)
            fast_throughput[f"{n}_clients"] = round(total / args.seconds)
        for n in (1, 4, 16):
            load = [
                subprocess.Popen(
                    [sys.executable, "-c", LOAD, endpoint, str(args.seconds)],
                    stdout=subprocess.PIPE,
                )
                for _ in range(n)
            ]
            total = sum(int(p.communicate(timeout=60)[0]) for p in load)
            throughput[f"{n}_clients"] = round(total / args.seconds)

        s, cpp, py = (summary(samples[k]) for k in ("sidecar", "cpp", "py"))
        print(
            json.dumps(
                {
                    "unit": "us per round trip; routes per second",
                    "request_bytes": len(request(1)),
                    "reply_bytes": reply_size,
                    "round_trips_each": args.calls * args.rounds,
                    "sidecar_route": s,
                    "baseline_cpp_zmq_echo": cpp,
                    "ratio": {
                        "median": round(s["median"] / cpp["median"], 2),
                        "p99": round(s["p99"] / cpp["p99"], 2),
                        "median_of_round_ratios": round(statistics.median(round_ratios), 2),
                    },
                    "python_zmq_echo": py,
                    "ratio_to_python_echo": {
                        "median": round(s["median"] / py["median"], 2),
                        "p99": round(s["p99"] / py["p99"], 2),
                    },
                    "client_route_mean_us": round(client_us, 1),
                    "throughput_routes_per_s": throughput,
                    "python_fast_path_route": fast,
                    "python_in_process_router_route": local,
                    "fast_path_vs_in_process_ratio": {
                        "median": round(fast["median"] / local["median"], 2),
                        "p99": round(fast["p99"] / local["p99"], 2),
                    },
                    "fast_path_throughput_routes_per_s": fast_throughput,
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
        for p in Path("/dev/shm").glob(f"{shm}*"):  # segment, lock, rings, table slots
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
