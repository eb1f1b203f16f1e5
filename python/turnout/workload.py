"""A seeded workload generator: realistic traffic for the what-if engine when there is no log.

Sessions (conversations, agent runs) arrive by a non-homogeneous Poisson process whose rate is a
diurnal curve (a daily sine, peak at 15:00 UTC) times a burst factor (a two-state Markov-modulated
Poisson process: calm periods and bursts). Each session belongs to a scenario (with its data class),
uses one of its scenario's shared system prompts (Zipf-popular) and tool schemas, and runs a few
turns: turn k+1's prompt is turn k's prompt, its answer and a new user message, so it extends turn
k's prompt exactly. User messages and answers have lognormal (long-tailed) lengths.

Prompts are given as block ids (the Turnout format's ``blocks``, no text): equal ids at equal
positions stand for equal content. The ids are only names; the simulator derives the tokens and
their true chained hashes from them (``synthesize_tokens``).

Everything is vectorised with numpy; the trace is produced in chunks of columns. The model and its
command: docs/replay.md, "Generating traffic".
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from turnout.traces import CHUNK_ROWS, DEFAULT_START_S, TraceColumns

DEFAULT_SCENARIOS: tuple[tuple[str, str | None], ...] = (
    ("agent-assist", "public"),
    ("support-summarization", "deidentified"),
    ("contract-extraction", "restricted"),
)
"""The scenarios of the bundled example table (examples/routing.yaml) with their data classes."""

DEFAULT_RATE = 10.0
"""Requests per second when neither a rate nor a duration is given."""


@dataclass(frozen=True)
class WorkloadShape:
    """The generator's knobs (lengths in tokens, times in seconds)."""

    block_tokens: int = 256  # tokens per block id in the trace (Mooncake's are 512)
    mean_turns: float = 4.0  # turns per session (geometric)
    think_s_median: float = 20.0  # pause between a turn's answer and the next message
    answer_tokens_per_s: float = 60.0  # how long an answer takes, for the next turn's time
    user_median: float = 150.0  # new user tokens per turn (lognormal)
    user_sigma: float = 1.0
    output_median: float = 200.0  # answer tokens (lognormal)
    output_sigma: float = 0.9
    max_output: int = 8192
    max_input: int = 131_072  # the context is cut here (the prompt keeps its head)
    system_prompts: int = 8  # shared system prompts per scenario (Zipf-popular)
    system_median: float = 1500.0  # system prompt tokens (lognormal over the pool)
    tool_schemas: int = 4  # per scenario; schema 0 is "no tools"
    tool_median: float = 800.0
    diurnal_amplitude: float = 0.6  # the daily curve is 1 + a sin(.): 0.4x at night, 1.6x at peak
    burst_factor: float = 4.0  # arrival rate during a burst, relative to calm
    burst_mean_s: float = 300.0
    calm_mean_s: float = 3600.0


def parse_scenarios(specs: Sequence[str]) -> list[tuple[str, str | None]]:
    """``NAME`` or ``NAME:DATA_CLASS`` specs (comma-separated lists allowed) as (name, class)."""
    out: list[tuple[str, str | None]] = []
    for spec in specs:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, _, data_class = part.partition(":")
            if not name:
                raise ValueError(f"scenario spec {part!r} has no name (NAME or NAME:DATA_CLASS)")
            out.append((name, data_class or None))
    if not out:
        raise ValueError("give at least one scenario")
    return out


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over a uint64 array (wrapping; in place): distinct inputs give
    distinct, scattered ids."""
    x += _GOLDEN
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


_TAG_SYSTEM, _TAG_TOOL, _TAG_TURNS = 1, 2, 3


def _run_heads(tag: int, owner: np.ndarray, seed: int) -> np.ndarray:
    """The seed of each run of content named (tag, owner): block i of the run is mix(head ^ i)."""
    return _mix(np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF) ^ (np.uint64(tag) << np.uint64(56)) ^ owner)


_PEAK_OFFSET_S = 9 * 3600.0  # the sine rises through 1 at 09:00 UTC: peak 15:00, trough 03:00


def _day_phase(second_of_day: np.ndarray | float) -> np.ndarray | float:
    """The daily curve's phase (radians) at a UTC second of the day: 1 + a sin(phase)."""
    return 2 * np.pi * (second_of_day - _PEAK_OFFSET_S) / 86_400.0


def hourly_shape(amplitude: float = WorkloadShape.diurnal_amplitude) -> tuple[float, ...]:
    """The generator's daily curve as 24 hourly multipliers (UTC hours 0..23): each hour's exact
    mean of 1 + `amplitude` sin(phase), so they average exactly 1 (``capacity.Demand.diurnal``)."""
    if not 0 <= amplitude <= 1:
        raise ValueError("the diurnal amplitude must be within 0..1")
    out = []
    for hour in range(24):
        a, b = _day_phase(hour * 3600.0), _day_phase((hour + 1) * 3600.0)
        out.append(1.0 + amplitude * (math.cos(a) - math.cos(b)) / (b - a))
    return tuple(out)


def _arrival_times(
    n: int, rate: float, rng: np.random.Generator, start_s: float, shape: WorkloadShape
) -> np.ndarray:
    """`n` sorted arrival times (seconds since the epoch) of the diurnal x bursty process whose
    mean rate is `rate` per second (time-rescaling: unit-rate Poisson points mapped through the
    inverse of the integrated rate)."""
    if n == 0:
        return np.zeros(0)
    calm, burst = shape.calm_mean_s, shape.burst_mean_s
    mean_burst_factor = (calm + shape.burst_factor * burst) / (calm + burst)
    horizon = 3.0 * n / rate + 86_400.0
    points = np.cumsum(rng.exponential(size=n))
    while True:
        dt = min(10.0, max(horizon / 400_000, 1e-3))
        t = np.arange(0.0, horizon + dt, dt)
        diurnal = 1.0 + shape.diurnal_amplitude * np.sin(_day_phase((start_s + t) % 86_400.0))
        # Two-state Markov chain: calm and burst periods of exponential lengths, alternating.
        k = int(horizon / (calm + burst) * 2) + 8
        periods = rng.exponential(np.tile([calm, burst], k))
        edges = np.cumsum(periods)
        state = np.searchsorted(edges, t, side="right") % 2
        factor = np.where(state == 1, shape.burst_factor, 1.0) / mean_burst_factor
        integral = np.concatenate([[0.0], np.cumsum(rate * diurnal * factor * dt)])[: len(t)]
        if integral[-1] >= points[-1]:
            return start_s + np.interp(points, integral, t)
        horizon *= 2


def _lognormal(
    rng: np.random.Generator, median: float, sigma: float, size: int, hi: int
) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(math.log(median), sigma, size)), 1, hi).astype(np.int64)


def generate(
    requests: int = 10_000,
    *,
    seed: int = 0,
    rate: float | None = None,
    duration_s: float | None = None,
    scenarios: Sequence[tuple[str, str | None]] = DEFAULT_SCENARIOS,
    start_s: float = DEFAULT_START_S,
    shape: WorkloadShape = WorkloadShape(),
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[TraceColumns]:
    """A generated trace of `requests` requests, in arrival order, as chunks of columns (prompts
    as block ids). The mean rate is `rate` requests/s, or `requests / duration_s` (give at most
    one; default :data:`DEFAULT_RATE`). The same arguments give the same trace."""
    if requests < 0:
        raise ValueError("requests must be >= 0")
    if rate is not None and duration_s is not None:
        raise ValueError("give a rate or a duration, not both")
    if duration_s is not None:
        if duration_s <= 0:
            raise ValueError("duration must be > 0")
        rate = requests / duration_s
    rate = DEFAULT_RATE if rate is None else rate
    if not rate > 0:
        raise ValueError("rate must be > 0")
    if not scenarios:
        raise ValueError("give at least one scenario")
    if shape.block_tokens < 1:
        raise ValueError("block_tokens must be >= 1")
    if requests == 0:
        return
    rng = np.random.default_rng(seed)
    bt = shape.block_tokens
    n_scen = len(scenarios)

    # Sessions: how many turns each, cut so the turns add up to `requests`.
    sessions_guess = int(requests / shape.mean_turns * 1.2) + 16
    turns = rng.geometric(1.0 / shape.mean_turns, size=sessions_guess)
    while turns.sum() < requests:
        turns = np.concatenate([turns, rng.geometric(1.0 / shape.mean_turns, size=sessions_guess)])
    ends = np.cumsum(turns)
    n_sessions = int(np.searchsorted(ends, requests) + 1)
    turns = turns[:n_sessions].copy()
    turns[-1] -= int(ends[n_sessions - 1] - requests)

    # Each session's scenario, system prompt and tool schema; their sizes in blocks.
    popularity = 1.0 / np.arange(1, n_scen + 1)
    scenario = rng.choice(n_scen, size=n_sessions, p=popularity / popularity.sum())
    zipf = 1.0 / np.arange(1, shape.system_prompts + 1) ** 1.1
    system = rng.choice(shape.system_prompts, size=n_sessions, p=zipf / zipf.sum())
    tool = rng.integers(0, shape.tool_schemas, size=n_sessions)
    system_blocks_pool = np.ceil(
        rng.lognormal(math.log(shape.system_median), 0.5, (n_scen, shape.system_prompts)) / bt
    ).astype(np.int64)
    tool_blocks_pool = np.ceil(
        rng.lognormal(math.log(shape.tool_median), 0.5, (n_scen, shape.tool_schemas)) / bt
    ).astype(np.int64)
    tool_blocks_pool[:, 0] = 0  # schema 0: no tools
    system_blocks = system_blocks_pool[scenario, system]
    tool_blocks = tool_blocks_pool[scenario, tool]

    # Requests, session-major: turn index, lengths, time offsets within the session.
    session_of = np.repeat(np.arange(n_sessions), turns)
    first = np.concatenate([[0], np.cumsum(turns)[:-1]])
    np.arange(requests) - np.repeat(first, turns)
    user = _lognormal(rng, shape.user_median, shape.user_sigma, requests, 16_384)
    output = _lognormal(rng, shape.output_median, shape.output_sigma, requests, shape.max_output)
    exchanged = user + output
    before = np.cumsum(exchanged) - exchanged  # tokens exchanged before this turn, trace-wide
    before -= np.repeat(before[first], turns)  # ... within its session
    head = (system_blocks + tool_blocks)[session_of] * bt
    input_tokens = np.minimum(head + before + user, shape.max_input)
    gap = rng.lognormal(math.log(shape.think_s_median), 1.0, requests) + np.concatenate(
        [[0.0], output[:-1] / shape.answer_tokens_per_s]
    )
    gap[first] = 0.0
    offset = np.cumsum(gap)
    offset -= np.repeat(offset[first], turns)

    mean_turns = requests / n_sessions
    starts = _arrival_times(n_sessions, rate / mean_turns, rng, start_s, shape)
    arrival = starts[session_of] + offset
    order = np.argsort(arrival, kind="stable")

    names = np.array([name for name, _ in scenarios], dtype=object)
    classes = np.array([data_class for _, data_class in scenarios], dtype=object)
    session_keys = np.array([f"s{seed}-{i}" for i in range(n_sessions)], dtype=object)
    u = np.uint64
    # Each session's three runs of content: its system prompt, its tool schemas, its own turns.
    heads = np.stack(
        [
            _run_heads(_TAG_SYSTEM, (scenario.astype(u) << u(16)) | system.astype(u), seed),
            _run_heads(_TAG_TOOL, (scenario.astype(u) << u(16)) | tool.astype(u), seed),
            _run_heads(_TAG_TURNS, np.arange(n_sessions, dtype=u), seed),
        ],
        axis=1,
    )
    for lo in range(0, requests, chunk_rows):
        idx = order[lo : lo + chunk_rows]
        s = session_of[idx]
        n_blocks = -(-input_tokens[idx] // bt)
        in_system = np.minimum(system_blocks[s], n_blocks)
        in_tool = np.minimum(tool_blocks[s], n_blocks - in_system)
        runs = np.stack([in_system, in_tool, n_blocks - in_system - in_tool], axis=1).ravel()
        run_starts = np.cumsum(runs) - runs
        total = int(runs.sum())
        position = np.arange(total, dtype=np.int64) - np.repeat(run_starts, runs)
        blocks = np.repeat(heads[s].ravel(), runs) ^ position.astype(u)
        sc = scenario[s]
        yield TraceColumns(
            arrival_s=arrival[idx],
            scenario=names[sc].tolist(),
            key=session_keys[s].tolist(),
            data_class=classes[sc].tolist(),
            input_tokens=input_tokens[idx],
            output_tokens=output[idx],
            accepted=np.full(len(idx), -1, dtype=np.int8),
            prompt="blocks",
            offsets=np.concatenate([[0], np.cumsum(n_blocks)]).astype(np.int64),
            values=_mix(blocks),
            block_tokens=bt,
            lines=np.arange(lo + 1, lo + len(idx) + 1, dtype=np.int64),
        )
