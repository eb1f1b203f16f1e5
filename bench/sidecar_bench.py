"""A route through switchyard-sidecar vs a raw ZeroMQ DEALER/ROUTER echo of the same message sizes.

Issue target: the sidecar's route round trip median and p99 <= 1.3x the raw echo, both measured in
this run (same pyzmq client loop, same request bytes; the echo peer is a Python ROUTER that answers
with a reply of the sidecar's reply size). Also: throughput of route calls with 1, 4 and 16 client
processes. Prints JSON (microseconds per round trip, routes per second).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import zmq

import switchyard
from bench_stats import summary

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "routing.yaml"

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
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sy-bench-", dir="/tmp"))
    shm = f"sy-bench-{uuid.uuid4().hex[:8]}"
    config = work / "routing.yaml"
    shutil.copy(EXAMPLE, config)
    endpoint = f"ipc://{work / 's.sock'}"
    echo_endpoint = f"ipc://{work / 'echo.sock'}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sidecar = subprocess.Popen(
            [switchyard._sidecar_path(), str(config), "--endpoint", endpoint, "--shm", shm, "-f"],
            stderr=subprocess.DEVNULL,
        )
        procs.append(sidecar)
        with switchyard.Client(endpoint, timeout_ms=200, retry_after_s=0) as c:
            deadline = time.monotonic() + 10
            while True:
                try:
                    c.health()
                    break
                except switchyard.SidecarUnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        sidecar_us, reply_size = round_trips(endpoint, args.calls)
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO, echo_endpoint, str(reply_size)], stdout=subprocess.PIPE
        )
        procs.append(echo)
        assert echo.stdout is not None
        echo.stdout.readline()
        echo_us, _ = round_trips(echo_endpoint, args.calls)
        # Interleave a second sidecar run so drift on a noisy machine hits both sides.
        sidecar_us2, _ = round_trips(endpoint, args.calls)
        sidecar_us += sidecar_us2
        echo_us2, _ = round_trips(echo_endpoint, args.calls)
        echo_us += echo_us2

        with switchyard.Client(endpoint, timeout_ms=1000) as c:
            t0 = time.perf_counter_ns()
            for i in range(1000):
                c.route("agent-assist", key=f"k{i}", input_tokens=1800, max_output_tokens=300)
            client_us = (time.perf_counter_ns() - t0) / 1000.0 / 1000

        throughput = {}
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

        s, e = summary(sidecar_us), summary(echo_us)
        print(
            json.dumps(
                {
                    "unit": "us per round trip; routes per second",
                    "request_bytes": len(request(1)),
                    "reply_bytes": reply_size,
                    "sidecar_route": s,
                    "raw_zmq_echo": e,
                    "ratio": {
                        "median": round(s["median"] / e["median"], 2),
                        "p99": round(s["p99"] / e["p99"], 2),
                    },
                    "client_route_mean_us": round(client_us, 1),
                    "throughput_routes_per_s": throughput,
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
        for p in (Path("/dev/shm") / shm, Path("/dev/shm") / f"{shm}.lock"):
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
