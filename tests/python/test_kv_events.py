"""Precise mode end to end: a real ZeroMQ publisher emits vLLM-style KV-event batches (both
encodings), the Router's subscriber applies them, and the next decisions follow: stores, removal,
clear, a sequence gap healed by replay, and an engine restart."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

import turnout
from daemon import Sidecar

BLOCK = 16
T0 = 1_767_225_600.0


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the subscriber")


def stored_map(hashes: list[int], parent: int | None, tokens: list[int]) -> dict:
    # vLLM main: msgspec tagged map, omit_defaults (lora_id/lora_name absent)
    return {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": BLOCK,
        "medium": "GPU",
    }


def stored_array(hashes: list[int], parent: int | None, tokens: list[int]) -> list:
    # earlier vLLM: array_like, the tag first
    return ["BlockStored", hashes, parent, tokens, BLOCK, None, "GPU", None]


def batch_map(events: list) -> bytes:
    return msgpack.packb({"ts": time.time(), "events": events, "data_parallel_rank": None})


def batch_array(events: list) -> bytes:
    return msgpack.packb([time.time(), events, None])


class Engine:
    """A fake vLLM replica's event publisher: PUB for live batches, ROUTER for replay."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.pub.bind("tcp://127.0.0.1:*")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay = ctx.socket(zmq.ROUTER)
        self.replay.bind("tcp://127.0.0.1:*")
        self.replay_endpoint = self.replay.getsockopt_string(zmq.LAST_ENDPOINT)
        self.history: dict[int, bytes] = {}
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve_replay, daemon=True)
        self._thread.start()

    def publish(self, payload: bytes, *, send: bool = True) -> int:
        seq = self.seq
        self.history[seq] = payload
        self.seq += 1
        if send:
            self.pub.send_multipart([b"kv", struct.pack(">Q", seq), payload])
        return seq

    def _serve_replay(self) -> None:
        poller = zmq.Poller()
        poller.register(self.replay, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(20):
                continue
            ident, _empty, start = self.replay.recv_multipart()
            (first,) = struct.unpack(">Q", start)
            for seq in sorted(s for s in self.history if s >= first):
                self.replay.send_multipart([ident, b"", struct.pack(">Q", seq), self.history[seq]])
            self.replay.send_multipart([ident, b"", struct.pack(">Q", 2**64 - 1), b""])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.pub.close(linger=0)
        self.replay.close(linger=0)


@pytest.fixture
def engine() -> Iterator[Engine]:
    ctx = zmq.Context()
    e = Engine(ctx)
    yield e
    e.close()
    ctx.term()


def config_for(tmp_path: Path, engine: Engine) -> turnout.Config:
    path = tmp_path / "routing.yaml"
    path.write_text(f"""version: 1
targets:
  pool:
    kind: self_hosted
    model: llama
    data_classes: [public]
    context_window: 32768
    cost: {{gpus_per_replica: 1, usd_per_gpu_hour: 2.00}}
    kv: {{block_size: {BLOCK}, capacity_blocks: 10000}}
    replicas:
      - {{endpoint: "http://127.0.0.1:9000", max_inflight: 8, kv_events: "{engine.endpoint}",
          kv_replay: "{engine.replay_endpoint}"}}
      - {{endpoint: "http://127.0.0.1:9001", max_inflight: 8, kv_events: "tcp://127.0.0.1:1"}}
scenarios:
  chat:
    data_class: public
    max_output_tokens: 10
    routes: [{{target: pool}}]
    affinity: {{prefix: true}}
""")
    return turnout.load_config(path)


def cached(router: turnout.Router, tokens: list[int]) -> tuple[str | None, int]:
    d = router.explain("chat", token_ids=tokens, now=time.time())
    return d.endpoint, d.expected_cached_tokens


def test_directory_follows_a_live_publisher(tmp_path: Path, engine: Engine) -> None:
    router = turnout.Router(config_for(tmp_path, engine))
    prompt = list(range(1000, 1000 + 4 * BLOCK))  # 4 blocks
    h = [2**63 + i for i in range(1, 6)]  # engine hashes >= 2^63, as vLLM's often are
    with router.subscribe_kv_events(replay_timeout_s=1.0) as sub:
        # PUB/SUB joins late: publish empty batches until the first one arrives.
        def joined() -> bool:
            engine.publish(batch_map([]))
            return sub.stats()[0]["applied"] > 0

        wait_for(joined)
        engine.publish(batch_map([stored_map(h[:3], None, prompt[: 3 * BLOCK])]))
        engine.publish(batch_array([stored_array([h[3]], h[2], prompt[3 * BLOCK :])]))
        wait_for(lambda: cached(router, prompt)[1] == 4 * BLOCK)
        assert cached(router, prompt)[0] == "http://127.0.0.1:9000"

        # Removal of the last block, by the engine's hash.
        engine.publish(batch_array([["BlockRemoved", [h[3]], "GPU"]]))
        wait_for(lambda: cached(router, prompt)[1] == 3 * BLOCK)

        # A gap: seq n is never sent live; n+1 reveals it and replay fills it (no reset).
        resets = sub.stats()[0]["resets"]
        engine.publish(batch_map([stored_map([h[3]], h[2], prompt[3 * BLOCK :])]), send=False)
        engine.publish(batch_map([]))
        wait_for(lambda: cached(router, prompt)[1] == 4 * BLOCK)
        stats = sub.stats()[0]
        assert stats["gaps"] >= 1
        assert stats["replayed"] >= 1
        assert stats["resets"] == resets

        # Clear.
        engine.publish(batch_map([{"type": "AllBlocksCleared"}]))
        wait_for(lambda: cached(router, prompt)[1] == 0)

        # The engine restarts: sequence numbers go back to 0 -> everything it said is dropped.
        engine.publish(batch_map([stored_map(h[:2], None, prompt[: 2 * BLOCK])]))
        wait_for(lambda: cached(router, prompt)[1] == 2 * BLOCK)
        engine.seq = 0
        engine.history.clear()
        engine.publish(batch_map([]))
        wait_for(lambda: sub.stats()[0]["resets"] > resets)
        wait_for(lambda: cached(router, prompt)[1] == 0)

        # Garbage is rejected and counted; the stream goes on.
        engine.pub.send_multipart([b"kv", b"\x00\x01", b"not msgpack"])
        engine.publish(batch_map([stored_map(h[:1], None, prompt[:BLOCK])]))
        wait_for(lambda: cached(router, prompt)[1] == BLOCK)
        assert sub.stats()[0]["rejected"] >= 1

    rows = router.directory_stats()
    pool = next(r for r in rows if r["target"] == "pool")
    assert pool["mode"] == "precise"
    assert pool["events"][0]["stored"] >= 4


def test_apply_kv_events_from_bytes(tmp_path: Path, engine: Engine) -> None:
    router = turnout.Router(config_for(tmp_path, engine))
    prompt = list(range(50, 50 + 2 * BLOCK))
    got = router.apply_kv_events(
        "pool", 1, batch_array([stored_array([11, 12], None, prompt)]), now=T0
    )
    assert got["stored"] == 2
    assert router.explain("chat", token_ids=prompt, now=T0).endpoint == "http://127.0.0.1:9001"
    with pytest.raises(turnout.InvalidArgumentError):
        router.apply_kv_events("pool", 1, b"\x91\xc1", now=T0)  # 0xc1 is never valid msgpack
    with pytest.raises(turnout.InvalidArgumentError):
        router.apply_kv_events("pool", 7, batch_map([]), now=T0)
    router.reset_kv("pool", "http://127.0.0.1:9001")
    assert router.explain("chat", token_ids=prompt, now=T0).expected_cached_tokens == 0


# ------------------------------------------ what the engines send: tiers, groups, unusable events


def vllm_offload_batch(h: list[int], prompt: list[int]) -> bytes:
    """vLLM with its CPU offloading connector, as msgspec encodes its array_like KVEventBatch:
    a GPU store, the connector's placeholder store (no token ids, block size 0: unusable), a GPU
    store chained to the first, and the removal of a block's CPU copy (the GPU copy stays)."""
    return msgpack.packb(
        [
            time.time(),
            [
                ["BlockStored", h[:2], None, prompt[: 2 * BLOCK], BLOCK, None, "GPU", None],
                ["BlockStored", h[:2], None, [], 0, None, "CPU", None],
                [
                    "BlockStored",
                    h[2:3],
                    h[1],
                    prompt[2 * BLOCK : 3 * BLOCK],
                    BLOCK,
                    None,
                    "GPU",
                    None,
                ],
                ["BlockRemoved", [h[1]], "CPU"],
            ],
            0,
        ]
    )


def test_apply_kv_events_keeps_the_batch_around_an_unusable_event(
    tmp_path: Path, engine: Engine
) -> None:
    router = turnout.Router(config_for(tmp_path, engine))
    prompt = list(range(300, 300 + 3 * BLOCK))
    h = [2**63 + 101, 2**63 + 102, 2**63 + 103]
    got = router.apply_kv_events("pool", 1, vllm_offload_batch(h, prompt), now=T0)
    assert got["stored"] == 3
    assert got["unusable"] == 1
    assert "events[1] (BlockStored).block_size" in got["unusable_reason"]
    assert got["removed"] == 0  # the CPU copy's removal leaves the GPU entry
    d = router.explain("chat", token_ids=prompt, now=T0)
    assert (d.endpoint, d.expected_cached_tokens) == ("http://127.0.0.1:9001", 3 * BLOCK)
    events = next(r for r in router.directory_stats() if r["target"] == "pool")["events"]
    assert events[1]["unusable"] == 1
    # The GPU copy goes: only the first block is still a hit.
    got = router.apply_kv_events("pool", 1, batch_array([["BlockRemoved", [h[1]], "GPU"]]), now=T0)
    assert got["removed"] == 1
    assert router.explain("chat", token_ids=prompt, now=T0).expected_cached_tokens == BLOCK


def test_apply_kv_events_keeps_group_kinds_between_calls(tmp_path: Path, engine: Engine) -> None:
    # A hybrid model: group 0 is a sliding window, group 1 full attention, under the same hashes.
    router = turnout.Router(config_for(tmp_path, engine))
    prompt = list(range(500, 500 + 2 * BLOCK))
    h = [2**63 + 7, 2**63 + 8]

    def store(group: int, kind: str) -> list:
        return ["BlockStored", h, None, prompt, BLOCK, None, "GPU", None, None, group, kind]

    got = router.apply_kv_events(
        "pool", 0, batch_array([store(0, "sliding_window"), store(1, "full_attention")]), now=T0
    )
    assert (got["stored"], got["skipped_groups"]) == (2, 1)
    # A later call: the sliding window drops the second block; BlockRemoved names only its group.
    got = router.apply_kv_events(
        "pool", 0, batch_array([["BlockRemoved", [h[1]], "GPU", 0]]), now=T0
    )
    assert (got["removed"], got["skipped_groups"]) == (0, 1)
    assert router.explain("chat", token_ids=prompt, now=T0).expected_cached_tokens == 2 * BLOCK
    # The full-attention group's removal is applied.
    got = router.apply_kv_events(
        "pool", 0, batch_array([["BlockRemoved", [h[1]], "GPU", 1]]), now=T0
    )
    assert got["removed"] == 1
    assert router.explain("chat", token_ids=prompt, now=T0).expected_cached_tokens == BLOCK


def test_daemon_applies_a_vllm_batch_around_an_unusable_event(
    sidecars: list[Sidecar], workdir: Path, shm_name: str, engine: Engine
) -> None:
    # The real sidecar subscribes to the engine's PUB socket (replica 0's kv_events) over ZeroMQ.
    config_for(workdir, engine)
    s = Sidecar(workdir, workdir / "routing.yaml", shm_name)
    sidecars.append(s)
    s.start()
    prompt = list(range(700, 700 + 3 * BLOCK))
    h = [2**63 + 201, 2**63 + 202, 2**63 + 203]
    with s.client() as c:

        def row() -> dict:
            rows = c.stats()["kv_events"]
            return next(r for r in rows if r["endpoint"] == "http://127.0.0.1:9000")

        def joined() -> bool:  # PUB/SUB joins late: empty batches until one is applied
            engine.publish(batch_map([]))
            time.sleep(0.02)
            return row()["batches"] > 0

        wait_for(joined)
        before = row()
        engine.publish(vllm_offload_batch(h, prompt))
        wait_for(lambda: row()["stored"] > before["stored"])
        after = row()
        assert after["stored"] - before["stored"] == 3
        assert after["unusable"] - before["unusable"] == 1
        assert after["removed"] == before["removed"]
        d = c.explain("chat", token_ids=prompt)
        assert (d.endpoint, d.expected_cached_tokens) == ("http://127.0.0.1:9000", 3 * BLOCK)

        engine.publish(batch_array([["BlockRemoved", [h[1]], "GPU"]]))
        wait_for(lambda: row()["removed"] > before["removed"])
        assert c.explain("chat", token_ids=prompt).expected_cached_tokens == BLOCK
    assert "unusable event" in s.log()
