"""The worker SDK's added latency over calling the provider directly, and httpx vs aiohttp.

Issue 14's figures, in one run, against the fake providers run as a separate process
(``python -m turnout.testing.fake_providers --no-record``, OpenAI chat completions) so the fake's
CPU is not on the client's event loop. The fake answers after the same time to first token (TTFT,
250 ms) at every concurrency: with aiohttp the client's event loop stays below one core at 64
(its CPU share is reported with every figure).

1. **Overhead, under two loads.** ``turnout.Router(config).acall(scenario, messages)`` (and
   ``stream=True`` read to the end) against the same fake called directly with the client the SDK
   uses in asyncio (an aiohttp.ClientSession posting the body the SDK's adapter builds and parsing
   the JSON; for streams, reading the bytes to the end), so "added" is the SDK's own cost, at
   concurrency 1, 16 and 64: closed loop (C asyncio workers, each sending requests back to back),
   a warm-up, then rounds that interleave the modes (rotated each round) so drift hits all alike.
   - *synchronized*: a fixed TTFT and every worker starting at once. The workers fall into waves:
     64 replies land together and each waits for the CPU of the ones before it — a worst case.
   - *jittered*: each TTFT drawn uniformly from TTFT ± 50% (the fake's ``ttft_jitter_s``) and each
     worker starting after a random delay within one TTFT: replies arrive spread out, as real
     traffic does. Each mode calls a model of its own, and the fake's models draw the same
     sequence of TTFTs: every mode gets the same draws (its same number of requests), so the
     difference of two modes' medians is not the draws' sampling noise (~12 ms at 100 requests).
   Reported per concurrency and load: medians and p99 (us), the added median/p99 (us and ms) and
   the SDK/direct ratios, throughput, the client's CPU (share of one core, us per request) and the
   fake's; ``side_by_side`` lists the added figures of both loads together.
2. **The SDK's CPU per call in isolation** (``time.process_time`` over sequential calls to a model
   the fake answers at once, the direct aiohttp call beside it, and an aiohttp session with
   ``trust_env=True``, the SDK's until this bench showed its cost) and a cProfile of those
   calls: the functions with the most own time, and the cumulative share of the SDK's parts
   (route, report, adapter, the call loop, aiohttp).
3. **The HTTP client.** httpx.AsyncClient vs aiohttp.ClientSession (both: pool >= concurrency,
   keep-alive, no retries) in the same rounds: median, p99, throughput, client CPU per request;
   httpx.Client (blocking, what ``Router.call`` uses) at concurrency 1, with ``Router.call``
   beside it; and each client's ceiling at concurrency 64 when the fake answers at once, with the
   share of an httpx client's time spent in httpcore's connection-pool pass.

Prints one JSON document (latencies in microseconds). ``--quick``: small counts for the test
suite's smoke test (< 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

import turnout
from bench_stats import summary
from turnout.gateway.providers import api_for
from turnout.gateway.wire import ChatRequest, Message, TargetSpec

KEY_ENV = "TURNOUT_BENCH_KEY"
FAST = "fast"  # the model the fake answers at once (CPU per call, profile, the client's ceiling)
MAX_TOKENS = 16
POOL = 256  # every client's connection pool: >= the highest concurrency
CONCURRENCY = (1, 16, 64)
#: The fake's time to first token (ms), the same at every concurrency (the SDK's client CPU at 64
#: stays under one core at this rate; each figure reports it).
TTFT_MS = 250.0
QUICK_TTFT_MS = 20.0
#: The loads: the fake's model (its name is the scenario's), and the jitter of its TTFT as a
#: fraction of the TTFT (uniform in TTFT ± that); a jittered load also staggers worker starts.
LOADS = {"synchronized": 0.0, "jittered": 0.5}

#: A realistic prompt: a system prompt of ~200 words and a question.
SYSTEM = " ".join(f"rule{i} keep answers short and cite the ticket id" for i in range(25))
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Summarize ticket 4711: the customer cannot log in since Monday."},
]

SCENARIO = """\
  {name}:
    data_class: public
    max_output_tokens: {max_tokens}
    routes: [{{target: {name}}}]
"""

TARGET = """\
  {name}:
    kind: maas
    provider: openai
    model: {name}
    data_classes: [public]
    context_window: 128000
    price: {{input_per_mtok: 0.40, cache_read_per_mtok: 0.10, output_per_mtok: 1.60}}
    base_url: {base}
    api_key_env: {key_env}
    timeout_ms: 60000
    first_token_timeout_ms: 60000
"""

Call = Callable[[], Awaitable[None]]


# ----------------------------------------------------------------------------- the fake process


class FakeProcess:
    """The fake providers in a process of their own (same interpreter, same turnout)."""

    def __init__(self, ttft_ms: dict[str, tuple[float, float]]) -> None:
        env = dict(os.environ)
        package_root = str(Path(turnout.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turnout.testing.fake_providers",
                "--port",
                "0",
                "--no-record",
            ],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            sys.exit("gateway_bench: the fake providers did not start")
        self.url = json.loads(line)["url"]
        for model, (ms, jitter_ms) in ttft_ms.items():  # each model's own time to first token
            r = httpx.post(
                f"{self.url}/_fake/model",
                json={"name": model, "ttft_s": ms / 1000, "ttft_jitter_s": jitter_ms / 1000},
            )
            r.raise_for_status()

    def base_url(self) -> str:
        return f"{self.url}/openai/v1"

    def cpu_s(self) -> float:
        """The fake's user + system CPU so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


#: The asyncio modes; under a jittered load each has a model of its own (see FakeProviders).
ASYNC_MODES = ("direct_aiohttp", "sdk", "direct_aiohttp_stream", "sdk_stream", "direct_httpx")


def models(loads: dict[str, float]) -> list[str]:
    """The fake's models: the fast one, then each load's (one per mode when jittered)."""
    out = [FAST]
    for load, jitter in loads.items():
        out += [f"{load}-{m}" for m in ASYNC_MODES] if jitter else [load]
    return out


def routing_table(base: str, models: list[str]) -> turnout.Config:
    """One target (the fake's model of that name) and one scenario routing to it per model."""
    targets = "".join(TARGET.format(name=m, base=base, key_env=KEY_ENV) for m in models)
    scenarios = "".join(SCENARIO.format(name=m, max_tokens=MAX_TOKENS) for m in models)
    return turnout.load_config_text(f"version: 1\ntargets:\n{targets}scenarios:\n{scenarios}")


class Direct:
    """The request the SDK sends, built once by the same adapter, to post without the SDK."""

    def __init__(self, base: str, model: str, *, stream: bool) -> None:
        spec = TargetSpec(
            name="direct",
            provider="openai",
            api="chat_completions",
            model=model,
            base_url=base,
            api_key=os.environ[KEY_ENV],
        )
        request = ChatRequest(
            messages=tuple(Message(m["role"], m["content"]) for m in MESSAGES),
            max_tokens=MAX_TOKENS,
        )
        planned = api_for("openai", "chat_completions").build(spec, request, stream=stream)
        self.url, self.body, self.headers = planned.url, planned.body, dict(planned.headers)


# ------------------------------------------------------------------------------------ the modes


def modes(
    router: turnout.Router,
    hx: httpx.AsyncClient,
    session: aiohttp.ClientSession,
    base: str,
    model: str,
) -> dict[str, Call]:
    """Each way of making one request to ``model`` (the SDK's scenario has its name)."""
    scenario = model
    whole, streamed = Direct(base, model, stream=False), Direct(base, model, stream=True)
    return {
        "direct_aiohttp": aiohttp_call(session, whole),
        "sdk": sdk_call(router, scenario),
        "direct_aiohttp_stream": aiohttp_stream_call(session, streamed),
        "sdk_stream": sdk_stream_call(router, scenario),
        "direct_httpx": httpx_call(hx, whole),
    }


def aiohttp_call(session: aiohttp.ClientSession, whole: Direct) -> Call:
    async def direct() -> None:
        async with session.post(
            whole.url, data=whole.body, headers=whole.headers, allow_redirects=False
        ) as r:
            body = await r.read()
            if r.status != 200 or not json.loads(body)["choices"]:
                raise RuntimeError(f"direct aiohttp: {r.status}")

    return direct


def aiohttp_stream_call(session: aiohttp.ClientSession, streamed: Direct) -> Call:
    async def direct_stream() -> None:
        async with session.post(
            streamed.url, data=streamed.body, headers=streamed.headers, allow_redirects=False
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"direct aiohttp stream: {r.status}")
            async for _ in r.content.iter_any():
                pass

    return direct_stream


def httpx_call(hx: httpx.AsyncClient, whole: Direct) -> Call:
    async def direct() -> None:
        r = await hx.post(whole.url, content=whole.body, headers=whole.headers)
        if r.status_code != 200 or not json.loads(r.content)["choices"]:
            raise RuntimeError(f"direct httpx: {r.status_code}")

    return direct


def sdk_call(router: turnout.Router, scenario: str) -> Call:
    async def sdk() -> None:
        r = await router.acall(scenario, MESSAGES)
        if r.finish_reason != "stop":  # type: ignore[union-attr]
            raise RuntimeError(f"sdk: {r}")

    return sdk


def sdk_stream_call(router: turnout.Router, scenario: str) -> Call:
    async def sdk_stream() -> None:
        s = await router.acall(scenario, MESSAGES, stream=True)
        async for _ in s:  # type: ignore[union-attr]
            pass
        if s.response is None or s.response.finish_reason != "stop":  # type: ignore[union-attr]
            raise RuntimeError("sdk stream: no response")

    return sdk_stream


def blocking_modes(
    router: turnout.Router, client: httpx.Client, base: str, model: str
) -> dict[str, Any]:
    whole = Direct(base, model, stream=False)

    def httpx_direct() -> None:
        r = client.post(whole.url, content=whole.body, headers=whole.headers)
        if r.status_code != 200 or not json.loads(r.content)["choices"]:
            raise RuntimeError(f"direct httpx.Client: {r.status_code}")

    def sdk() -> None:
        r = router.call(model, MESSAGES)
        if r.finish_reason != "stop":  # type: ignore[union-attr]
            raise RuntimeError(f"sdk blocking: {r}")

    return {"direct_httpx_blocking": httpx_direct, "sdk_blocking": sdk}


# ------------------------------------------------------------------------------ the closed loop


class Samples:
    """One mode's latencies (us), requests, wall time and client CPU over its rounds."""

    def __init__(self) -> None:
        self.us: list[float] = []
        self.round_medians: list[float] = []
        self.wall_s = 0.0
        self.cpu_s = 0.0

    def add(self, us: list[float], wall_s: float, cpu_s: float) -> None:
        self.us += us
        self.round_medians.append(statistics.median(us))
        self.wall_s += wall_s
        self.cpu_s += cpu_s

    def report(self) -> dict[str, Any]:
        n = len(self.us)
        return {
            **summary(self.us),
            "requests": n,
            "throughput_per_s": round(n / self.wall_s, 1),
            "client_cpu_us_per_request": round(self.cpu_s / n * 1e6, 1),
            "client_cpu_share_of_one_core": round(self.cpu_s / self.wall_s, 3),
        }


async def closed_loop(
    call: Call, concurrency: int, n: int, stagger_s: float = 0.0
) -> tuple[list[float], float, float]:
    """``concurrency`` workers each send n/concurrency requests back to back, each starting
    after a random delay in [0, stagger_s) (not counted in any latency)."""
    per_worker = max(1, n // concurrency)
    us: list[float] = []

    async def worker() -> None:
        if stagger_s:
            await asyncio.sleep(random.uniform(0.0, stagger_s))
        for _ in range(per_worker):
            t0 = time.perf_counter_ns()
            await call()
            us.append((time.perf_counter_ns() - t0) / 1000.0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return us, time.perf_counter() - wall0, time.process_time() - cpu0


def blocking_loop(call: Callable[[], None], n: int) -> tuple[list[float], float, float]:
    us: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        us.append((time.perf_counter_ns() - t0) / 1000.0)
    return us, time.perf_counter() - wall0, time.process_time() - cpu0


def ratio(a: float, b: float) -> float:
    return round(a / b, 4)


def overhead(
    sdk: dict[str, Any], direct: dict[str, Any], sdk_rounds: Samples, direct_rounds: Samples
) -> dict[str, Any]:
    """What the SDK adds to the direct call (us and ms) and the ratios; also the median over
    rounds of each round's added median (drift between rounds cancels out)."""
    added_median = sdk["median"] - direct["median"]
    added_p99 = sdk["p99"] - direct["p99"]
    rounds = zip(sdk_rounds.round_medians, direct_rounds.round_medians, strict=True)
    per_round = [a - b for a, b in rounds]
    return {
        "added_median_us": round(added_median, 1),
        "added_p99_us": round(added_p99, 1),
        "added_median_ms": round(added_median / 1000, 3),
        "added_p99_ms": round(added_p99 / 1000, 3),
        "ratio_median": ratio(sdk["median"], direct["median"]),
        "ratio_p99": ratio(sdk["p99"], direct["p99"]),
        "added_median_us_median_of_rounds": round(statistics.median(per_round), 1),
    }


async def at_concurrency(
    calls: dict[str, Call],
    blocking: dict[str, Any],
    fake: FakeProcess,
    concurrency: int,
    per_round: int,
    rounds: int,
    stagger_s: float,
) -> dict[str, Any]:
    names = list(calls)
    for call in calls.values():  # warm-up: connections opened, caches filled
        await closed_loop(call, concurrency, 2 * concurrency, stagger_s)
    got = {name: Samples() for name in names}
    blocked = {name: Samples() for name in blocking}
    fake_cpu0, wall0 = fake.cpu_s(), time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotated each round
        for name in order:
            got[name].add(*await closed_loop(calls[name], concurrency, per_round, stagger_s))
        for name, call in blocking.items():
            # Nothing else runs on the loop meanwhile: the blocking client at concurrency 1.
            blocked[name].add(*blocking_loop(call, per_round))
    fake_share = (fake.cpu_s() - fake_cpu0) / (time.perf_counter() - wall0)
    rep = {name: s.report() for name, s in {**got, **blocked}.items()}
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "modes": rep,
        "sdk_vs_direct": overhead(
            rep["sdk"], rep["direct_aiohttp"], got["sdk"], got["direct_aiohttp"]
        ),
        "sdk_stream_vs_direct_stream": overhead(
            rep["sdk_stream"],
            rep["direct_aiohttp_stream"],
            got["sdk_stream"],
            got["direct_aiohttp_stream"],
        ),
        "httpx_vs_aiohttp": {
            "ratio_median": ratio(rep["direct_httpx"]["median"], rep["direct_aiohttp"]["median"]),
            "ratio_p99": ratio(rep["direct_httpx"]["p99"], rep["direct_aiohttp"]["p99"]),
            "ratio_cpu_per_request": ratio(
                rep["direct_httpx"]["client_cpu_us_per_request"],
                rep["direct_aiohttp"]["client_cpu_us_per_request"],
            ),
        },
        "fake_cpu_share_of_one_core": round(fake_share, 3),
    }
    if blocked:
        out["sdk_blocking_vs_direct_blocking"] = overhead(
            rep["sdk_blocking"],
            rep["direct_httpx_blocking"],
            blocked["sdk_blocking"],
            blocked["direct_httpx_blocking"],
        )
    return out


def side_by_side(by_c: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The added figures (ms) and the SDK's client CPU share of each load, per concurrency."""
    out: dict[str, Any] = {}
    for c, loads in by_c.items():
        row: dict[str, Any] = {}
        for load, run in loads.items():
            whole, streamed = run["sdk_vs_direct"], run["sdk_stream_vs_direct_stream"]
            row[load] = {
                "added_median_ms": whole["added_median_ms"],
                "added_p99_ms": whole["added_p99_ms"],
                "stream_added_median_ms": streamed["added_median_ms"],
                "stream_added_p99_ms": streamed["added_p99_ms"],
                "sdk_client_cpu_share_of_one_core": run["modes"]["sdk"][
                    "client_cpu_share_of_one_core"
                ],
            }
        out[c] = row
    return out


# ---------------------------------------------------------------------------- CPU and profile


async def cpu_per_call(calls: dict[str, Call], n: int, blocks: int) -> dict[str, Any]:
    """Sequential calls to the fast model: client CPU (us) per call, the modes interleaved."""
    cpu = dict.fromkeys(calls, 0.0)
    wall = dict.fromkeys(calls, 0.0)
    for call in calls.values():
        for _ in range(20):
            await call()
    per_block = max(1, n // blocks)
    for _ in range(blocks):
        for name, call in calls.items():
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(per_block):
                await call()
            cpu[name] += time.process_time() - cpu0
            wall[name] += time.perf_counter() - wall0
    per = blocks * per_block
    out: dict[str, Any] = {"calls_each": per}
    for name in calls:
        out[name] = {
            "cpu_us_per_call": round(cpu[name] / per * 1e6, 1),
            "wall_us_per_call": round(wall[name] / per * 1e6, 1),
        }
    for added, a, b in (
        ("sdk_added_cpu_us_per_call", "sdk", "direct_aiohttp"),
        ("sdk_stream_added_cpu_us_per_call", "sdk_stream", "direct_aiohttp_stream"),
        # Of the SDK's added CPU, what its session's trust_env=True costs by itself.
        ("trust_env_added_cpu_us_per_call", "direct_aiohttp_trust_env", "direct_aiohttp"),
        ("sdk_if_trust_env_false_added_cpu_us", "sdk_if_trust_env_false", "direct_aiohttp"),
    ):
        out[added] = round((cpu[a] - cpu[b]) / per * 1e6, 1)
    return out


#: The SDK's parts whose cumulative time the profile reports: (label, file suffix, function).
PARTS = (
    ("Gateway.acall (request, route; a stream's first step)", "gateway/call.py", "acall"),
    ("Gateway._call (checks, ChatRequest, route args)", "gateway/call.py", "_call"),
    ("messages_of", "gateway/call.py", "messages_of"),
    ("canonical_prompt", "turnout/prefix.py", "canonical_prompt"),
    ("Gateway._policy (an AttemptPolicy per call)", "gateway/call.py", "_policy"),
    ("Gateway._async_http (the loop's session)", "gateway/call.py", "_async_http"),
    ("_Call.route (with Router.route, C++)", "gateway/call.py", "route"),
    ("_Call.plan (key, adapter build)", "gateway/call.py", "plan"),
    ("_Table.keyed (the key, read per attempt)", "gateway/call.py", "keyed"),
    ("ChatCompletions.build", "openai_chat.py", "build"),
    ("arun (the call loop)", "gateway/call.py", "arun"),
    ("_aattempt (HTTP under asyncio.timeout)", "gateway/call.py", "_aattempt"),
    ("arun_stream (the stream driver)", "gateway/call.py", "arun_stream"),
    ("aiohttp ClientSession._request", "aiohttp/client.py", "_request"),
    (
        "run_in_executor: trust_env netrc + proxy lookups (submit only)",
        "asyncio/base_events.py",
        "run_in_executor",
    ),
    ("_acapped (body read, size cap)", "gateway/call.py", "_acapped"),
    ("_whole (status, parse)", "gateway/call.py", "_whole"),
    ("ChatCompletions.parse", "openai_chat.py", "parse"),
    ("_StreamReader.feed (SSE parser + decoder)", "gateway/call.py", "feed"),
    ("_StreamReader.outcome", "gateway/call.py", "outcome"),
    ("_Call.conclude (policy step, Attempt, report)", "gateway/call.py", "conclude"),
    ("_Call._report (with Router.report, C++)", "gateway/call.py", "_report"),
    ("AttemptPolicy.after_failure (C++)", "~", "turnout._core.after_failure"),
    ("_Call.response (Response)", "gateway/call.py", "response"),
)


def _where(key: tuple[str, int, str]) -> str:
    path, line, func = key
    if path == "~":
        return func
    parts = Path(path).parts
    for anchor in ("site-packages", "python3.11", "python", "bench"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            path = "/".join(parts[i + (anchor != "bench") :])
            break
    return f"{path}:{line}({func})"


def _ours(key: tuple[str, int, str]) -> bool:
    path, _, func = key
    return "/turnout/" in path or (path == "~" and "turnout._core" in func)


#: The event loop's wait for the network (not CPU): left out of the busy time.
IDLE = "<method 'poll' of 'select.epoll' objects>"


def hot_spots(profile: cProfile.Profile, n: int, top: int) -> dict[str, Any]:
    """Own-time leaders (all code, and turnout's alone) in us per call and as shares of the busy
    time (the profile's whole time but the event loop's waits), and the cumulative us per call of
    each of the SDK's parts. Under cProfile: each figure is inflated, the proportions hold."""
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    busy = stats.total_tt - sum(v[2] for k, v in raw.items() if k[2] == IDLE)  # type: ignore[attr-defined]

    def us(seconds: float) -> float:
        return round(seconds / n * 1e6, 1)

    def own(keys: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
        keys = sorted((k for k in keys if k[2] != IDLE), key=lambda k: raw[k][2], reverse=True)
        return [
            {
                "where": _where(k),
                "calls": raw[k][1],
                "us_per_call": us(raw[k][2]),
                "share": round(raw[k][2] / busy, 3),
            }
            for k in keys[:top]
        ]

    parts = {}
    for label, suffix, func in PARTS:
        ct = sum(
            v[3]
            for (path, _, f), v in raw.items()
            if path.endswith(suffix) and (f == func or (path == "~" and func in f))
        )
        if ct:
            parts[label] = us(ct)
    ours = [k for k in raw if _ours(k)]
    return {
        "busy_us_per_call": us(busy),
        "turnout_own_share": round(sum(raw[k][2] for k in ours) / busy, 3),
        "top_own_time": own(list(raw)),
        "top_own_time_turnout": own(ours),
        "cumulative_us_per_call": parts,
    }


async def profile_sdk(calls: dict[str, Call], n: int, top: int) -> dict[str, Any]:
    out: dict[str, Any] = {"calls_each": n}
    for mode in ("sdk", "sdk_stream"):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            await calls[mode]()
        profile.disable()
        out[mode] = hot_spots(profile, n, top)
    return out


#: httpcore's connection pool pass, run on every request's enqueue and release (it walks every
#: connection of the pool, and polls each idle one).
POOL_PASS = ("httpcore/_async/connection_pool.py", "_assign_requests_to_connections")


async def ceiling(
    calls: dict[str, Call], fake: FakeProcess, concurrency: int, n: int
) -> dict[str, Any]:
    """Each client's most requests per second when the provider answers at once; for the httpx
    ones, the share of the client's time (under cProfile) in httpcore's pool pass."""
    out: dict[str, Any] = {"concurrency": concurrency}
    for name, call in calls.items():
        await closed_loop(call, concurrency, 2 * concurrency)
        fake0 = fake.cpu_s()
        us, wall, cpu = await closed_loop(call, concurrency, n)
        out[name] = {
            "throughput_per_s": round(len(us) / wall, 1),
            "client_cpu_share_of_one_core": round(cpu / wall, 3),
            "client_cpu_us_per_request": round(cpu / len(us) * 1e6, 1),
            "fake_cpu_share_of_one_core": round((fake.cpu_s() - fake0) / wall, 3),
        }
        if name.startswith("direct_httpx"):
            profile = cProfile.Profile()
            profile.enable()
            await closed_loop(call, concurrency, max(concurrency, n // 4))
            profile.disable()
            stats = pstats.Stats(profile)
            raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
            total = stats.total_tt  # type: ignore[attr-defined]
            in_pass = sum(
                v[3]
                for (path, _, f), v in raw.items()
                if path.endswith(POOL_PASS[0]) and f == POOL_PASS[1]
            )
            out[name]["httpcore_pool_pass_share"] = round(in_pass / total, 3)
    return out


# ------------------------------------------------------------------------------------------ main


async def run(args: argparse.Namespace, fake: FakeProcess) -> dict[str, Any]:
    base = fake.base_url()
    router = turnout.Router(routing_table(base, models(LOADS)))
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    hx = httpx.AsyncClient(limits=limits, transport=httpx.AsyncHTTPTransport(retries=0), timeout=60)
    # The session the SDK makes (Gateway._session), and one with trust_env=True beside it.
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=trust_env,
        )
        for trust_env in (False, True)
    ]
    session, session_trust_env = sessions
    blocking_client = httpx.Client(
        limits=limits, transport=httpx.HTTPTransport(retries=0), timeout=60.0
    )
    gateway = router._default_gateway()  # the one Router.call / acall use
    # The SDK with a session made beforehand with trust_env=False (Gateway._session keeps a
    # session it finds): the what-if that led the SDK to trust_env=False; now the same as "sdk".
    what_if = turnout.Router(routing_table(base, [FAST]))
    what_if_gateway = what_if._default_gateway()
    what_if_gateway._ahttp[asyncio.get_running_loop()] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None),
    )
    try:
        fast = modes(router, hx, session, base, FAST)
        fast["direct_aiohttp_trust_env"] = aiohttp_call(
            session_trust_env, Direct(base, FAST, stream=False)
        )
        fast["sdk_if_trust_env_false"] = sdk_call(what_if, FAST)
        sequential = {
            k: fast[k]
            for k in (
                "direct_aiohttp",
                "sdk",
                "direct_aiohttp_stream",
                "sdk_stream",
                "direct_aiohttp_trust_env",
                "sdk_if_trust_env_false",
                "direct_httpx",
            )
        }
        # First, with one connection in each pool: the SDK's own cost.
        cpu = await cpu_per_call(sequential, args.cpu_calls, blocks=10)
        profile = await profile_sdk(sequential, args.profile_calls, top=15)
        by_c: dict[str, dict[str, Any]] = {}
        for c in CONCURRENCY:
            per_round = max(c, args.requests[c] // args.rounds)
            by_c[str(c)] = {}
            for load, jitter in LOADS.items():
                calls = modes(router, hx, session, base, load)
                if jitter:  # each mode its own model: the same sequence of TTFTs for each
                    calls = {
                        name: modes(router, hx, session, base, f"{load}-{name}")[name]
                        for name in calls
                    }
                # The blocking client at concurrency 1, under the first load only.
                blocking = (
                    blocking_modes(router, blocking_client, base, load)
                    if c == 1 and load == next(iter(LOADS))
                    else {}
                )
                stagger_s = args.ttft_ms / 1000 if jitter else 0.0
                by_c[str(c)][load] = {
                    "fake_ttft_ms": args.ttft_ms,
                    "fake_ttft_jitter_ms": round(args.ttft_ms * jitter, 3),
                    "worker_start_stagger_ms": round(stagger_s * 1000, 3),
                    **await at_concurrency(
                        calls, blocking, fake, c, per_round, args.rounds, stagger_s
                    ),
                }
        top = await ceiling(
            {
                k: fast[k]
                for k in (
                    "direct_httpx",
                    "direct_aiohttp",
                    "direct_aiohttp_trust_env",
                    "sdk",
                    "sdk_if_trust_env_false",
                )
            },
            fake,
            64,
            args.ceiling_requests,
        )
    finally:
        await hx.aclose()
        for s in sessions:
            await s.close()
        blocking_client.close()
        for gw in (gateway, what_if_gateway):
            await gw.aclose()
    return {
        "side_by_side": side_by_side(by_c),
        "by_concurrency": by_c,
        "sdk_cpu_in_isolation": cpu,
        "sdk_profile": profile,
        "client_ceiling_fake_answers_at_once": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small counts (the suite's smoke test)"
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds per concurrency")
    args = parser.parse_args()
    if args.quick:
        args.ttft_ms = QUICK_TTFT_MS
        args.rounds = args.rounds or 2
        args.requests = {1: 10, 16: 32, 64: 128}
        args.cpu_calls, args.profile_calls, args.ceiling_requests = 50, 30, 128
    else:
        args.ttft_ms = TTFT_MS
        args.rounds = args.rounds or 10
        args.requests = {1: 100, 16: 960, 64: 3200}
        args.cpu_calls, args.profile_calls, args.ceiling_requests = 2000, 1000, 3200
    os.environ.setdefault(KEY_ENV, "sk-bench")
    fake = FakeProcess(
        {
            FAST: (0.0, 0.0),
            **{
                model: (args.ttft_ms, args.ttft_ms * LOADS[model.split("-")[0]])
                for model in models(LOADS)[1:]
            },
        }
    )
    try:
        results = asyncio.run(run(args, fake))
    finally:
        fake.stop()
    print(
        json.dumps(
            {
                "unit": "us per request (latency); requests per second; us of client CPU",
                "fake": {
                    "process": "python -m turnout.testing.fake_providers --no-record",
                    "api": "openai chat_completions",
                    "answer_tokens": 8,
                    "prompt_words": sum(len(m["content"].split()) for m in MESSAGES),
                },
                "quick": args.quick,
                "rounds": args.rounds,
                "goal": "sdk added p99 < 1 ms at concurrency 64",
                **results,
                "versions": {
                    "python": sys.version.split()[0],
                    "httpx": httpx.__version__,
                    "aiohttp": aiohttp.__version__,
                },
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
