"""Bounded input under a flood (issue 10, class 7), against the real daemon: one client sending
max-size messages as fast as it can, never reading a reply, holds at most (rcvhwm + 1) x the
message limit of the daemon's memory (docs/operations.md: 5 x 8 MiB), and a well-behaved client is
still served meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgpack
import zmq

from daemon import Sidecar
from turnout._core import protocol

MIB = 1 << 20
# The documented bound (docs/operations.md, "Memory under a flood"): 4 queued messages + the one
# being received, 8 MiB each, plus the request in hand (its decoded form: 16 bytes per token id,
# 16 MiB for a million) and allocator slack. Without the bound the daemon grew by ~450 MiB here.
BOUND_BYTES = 5 * protocol.MAX_MESSAGE_BYTES + 32 * MIB + 24 * MIB
FLOOD_S = 4.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def flood_message() -> bytes:
    """A well-formed explain of nearly the maximum size that the daemon must decode and route: a
    prompt of a million token ids, a text, and padding up to the message limit."""
    base = {"v": protocol.VERSION, "id": 1, "op": "explain", "scenario": "agent-assist"}
    tokens = [7] * (1 << 20)  # the decoder's array limit; one byte each on the wire
    room = protocol.MAX_MESSAGE_BYTES - len(msgpack.packb({**base, "token_ids": tokens})) - 64
    text = "x" * min(4 * MIB - 1, room // 2)
    return msgpack.packb(
        {**base, "token_ids": tokens, "text": text, "pad": "y" * (room - len(text))}
    )


def test_a_flooding_client_holds_a_bounded_share_of_the_daemons_memory(sidecar: Sidecar) -> None:
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    with sidecar.client() as c:  # warm up: the table, the segments, the first replies
        for _ in range(20):
            c.route("agent-assist", key="warm", input_tokens=100)
    baseline = rss_bytes(pid)
    message = flood_message()
    assert len(message) <= protocol.MAX_MESSAGE_BYTES

    ctx = zmq.Context()
    flooder = ctx.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.connect(sidecar.endpoint)
    sent = answered = pushed_back = 0
    stop = threading.Event()

    def flood() -> None:
        nonlocal sent, answered, pushed_back
        frame = zmq.Frame(message)  # one buffer, sent again and again (zero copy in the client)
        while not stop.is_set():
            try:
                flooder.send(frame, zmq.NOBLOCK, copy=False)
                sent += 1
            except zmq.Again:  # every queue up to the daemon is full: it takes no more from us
                pushed_back += 1
                time.sleep(0.001)
            while flooder.poll(0):
                flooder.recv()
                answered += 1

    peak = baseline
    served = 0
    slowest = 0.0
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + FLOOD_S
        with sidecar.client(timeout_ms=3000, retry_after_s=0) as c:
            while time.monotonic() < deadline:
                peak = max(peak, rss_bytes(pid))
                t0 = time.monotonic()
                d = c.route("support-summarization", key=f"k{served}", input_tokens=100)
                slowest = max(slowest, time.monotonic() - t0)
                assert d.target  # from the sidecar, during the flood (no local fallback is set)
                served += 1
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=10)
        flooder.close(linger=0)
        ctx.term()
    assert sidecar.proc.poll() is None, sidecar.log()
    grown = peak - baseline
    # The flood was real: the daemon decoded and answered max-size requests, and the flooder was
    # pushed back (sending faster than the daemon takes), so the daemon's queue stayed full.
    assert answered >= 5, f"the daemon answered {answered} of {sent} flood messages"
    assert pushed_back > 0, f"the flooder was never pushed back ({sent} sent, {answered} answered)"
    assert grown < BOUND_BYTES, (
        f"daemon grew {grown / MIB:.0f} MiB (from {baseline / MIB:.0f}) under a flood of {sent} x "
        f"{len(message) / MIB:.0f} MiB; the bound is {BOUND_BYTES / MIB:.0f} MiB"
    )
    # Served in turn with the flooder (one flood message ahead of it at most), never starved.
    assert served >= 5, f"the well-behaved client got only {served} answers in {FLOOD_S} s"
    assert slowest < 2.0, f"a well-behaved request waited {slowest:.2f} s"
