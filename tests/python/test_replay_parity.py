"""Parity (issue 11): the decisions a live sidecar makes for a trace are the ones the simulator
makes for the same trace, table and seed. The sidecar records its own traffic (--record), the
recording is replayed, and every request's target must agree."""

from __future__ import annotations

import random
from pathlib import Path

import turnout
from daemon import Sidecar
from turnout.replay import replay

SCENARIO = "agent-assist"  # claude 70 / gemini 30, sticky by key, prefix affinity (MaaS caches)


def _conversations(seed: int, turns: int) -> list[tuple[str, list[int], int]]:
    """Multi-turn chats over two shared system prompts: (key, prompt token ids, output tokens)."""
    rng = random.Random(seed)
    systems = [[rng.randrange(50_000) for _ in range(1200 + 64 * s)] for s in range(2)]
    history: dict[str, list[int]] = {}
    out = []
    for _ in range(turns):
        key = f"user-{rng.randrange(12)}"
        prompt = history.get(key) or list(systems[rng.randrange(2)])
        prompt = prompt + [rng.randrange(50_000) for _ in range(rng.randrange(40, 200))]
        history[key] = prompt + [rng.randrange(50_000) for _ in range(64)]  # the reply, next turn's
        out.append((key, prompt, rng.randrange(20, 300)))
    return out


def test_a_recorded_sidecar_trace_replays_to_the_same_decisions(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    trace = workdir / "traffic.jsonl"
    sidecar = Sidecar(workdir, config_path, shm_name)
    sidecars.append(sidecar)
    sidecar.start("--record", str(trace), "--record-keys")
    live: list[str] = []
    with sidecar.client() as c:
        for key, prompt, output in _conversations(seed=7, turns=80):
            d = c.route(SCENARIO, key=key, token_ids=prompt)
            live.append(d.target)
            usage = (
                {"input_tokens": len(prompt), "output_tokens": output}
                if d.target == "claude-sonnet-4"
                else {
                    "usageMetadata": {
                        "promptTokenCount": len(prompt),
                        "candidatesTokenCount": output,
                    }
                }
            )
            c.report(d.id, target=d.target, status="ok", usage=usage)
    assert sidecar.stop() == 0  # the recorder writes what is left at stop
    assert len(set(live)) == 2, "the trace must exercise both routes"

    config = turnout.load_config(str(config_path))
    result = replay(config, trace, seed=0)
    rows = result.requests
    assert len(rows) == len(live)
    assert list(rows["outcome"]) == ["served"] * len(live)
    assert list(rows["target"]) == live
    # Affinity acted in both: later turns found their prefix warm.
    assert (rows["cached_predicted"] > 0).sum() > len(live) // 2
