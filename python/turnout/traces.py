"""Traffic traces: the Turnout trace format (JSON Lines or Parquet), readers for public trace
formats (Mooncake, Azure LLM inference, BurstGPT), and the conversion of a trace into the columns
the simulator takes (``turnout._core.Simulation.add``).

Everything streams: a trace is read in chunks of numpy columns (:class:`TraceColumns`), never as
one Python object per request held at once, so a 10 M-request trace replays in bounded memory.
The formats: docs/replay.md, "Trace formats".
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from turnout import _core
from turnout._errors import TraceError, UnknownScenarioError
from turnout.prefix import canonical_prompt

TRACE_VERSION = 1
"""The version in a Turnout trace's header line ``{"turnout_trace": 1}``."""

FORMATS = ("turnout", "mooncake", "azure", "burstgpt")
"""The formats :func:`read_trace` reads (a Turnout trace: JSON Lines, or Parquet: ``*.parquet``)."""

DEFAULT_START_S = 1_767_225_600.0
"""Where traces with relative times (Mooncake, BurstGPT) start: 2026-01-01 00:00 UTC."""

DEFAULT_BLOCK_TOKENS = 16
"""Tokens per block of a Turnout trace's ``blocks`` when ``block_tokens`` is not given."""

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` block in Mooncake traces."""

TEXT_BLOCK_TOKENS = 16
"""Block size a ``text`` or ``messages`` prompt is hashed at (PrefixHasher::hash_text, 4 chars a
token)."""

CHUNK_ROWS = 65_536
"""Requests per chunk of columns handed to the simulator."""

_CHUNK_VALUES = 8_000_000  # prompt tokens/blocks per chunk: bounds a chunk's memory
_U32 = 2**32
_U64 = 2**64
_ROW_FIELDS = frozenset(
    {"at", "scenario", "key", "data_class", "input_tokens", "output_tokens", "accepted"}
)
_PROMPT_FIELDS = ("token_ids", "text", "messages", "blocks")
_TURNOUT_FIELDS = _ROW_FIELDS | set(_PROMPT_FIELDS) | {"block_tokens"}
_MAX_SKIPPED_EXAMPLES = 5

PromptKind = Literal["tokens", "blocks"]


@dataclass(frozen=True)
class TraceRow:
    """One request of a trace, as the Turnout format has it (a Python API convenience; readers
    yield :class:`TraceColumns`). At most one prompt form is given."""

    at: float  # seconds since the epoch
    input_tokens: int
    output_tokens: int
    scenario: str | None = None
    key: str | None = None
    data_class: str | None = None
    accepted: bool | None = None
    token_ids: Sequence[int] | None = None
    text: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    blocks: Sequence[int] | None = None
    block_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as a Turnout trace line (absent prompt fields left out)."""
        out: dict[str, Any] = {
            "at": self.at,
            "scenario": self.scenario,
            "key": self.key,
            "data_class": self.data_class,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "accepted": self.accepted,
        }
        for name in _PROMPT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if name != "text" else value
        if self.blocks is not None:
            out["block_tokens"] = self.block_tokens or DEFAULT_BLOCK_TOKENS
        return out


@dataclass
class TraceColumns:
    """A chunk of requests as the simulator takes them (``Simulation.add``): one entry per request
    in every column; the prompts either as token ids or as block hashes (``prompt``), concatenated,
    request i's being ``values[offsets[i]:offsets[i + 1]]``."""

    arrival_s: np.ndarray  # float64, seconds since the epoch
    scenario: list[str | None]
    key: list[str | None]
    data_class: list[str | None]
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    accepted: np.ndarray  # int8: 1, 0, or -1 (no label)
    prompt: PromptKind
    offsets: np.ndarray  # int64[n + 1]
    values: np.ndarray  # uint32 token ids or uint64 block hashes
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    lines: np.ndarray | None = None  # int64: each request's line (row) in its file, for errors

    def __len__(self) -> int:
        return len(self.arrival_s)

    def tail(self, start: int) -> TraceColumns:
        """The requests from `start` on, as a chunk of their own."""
        base = int(self.offsets[start])
        return TraceColumns(
            arrival_s=self.arrival_s[start:],
            scenario=self.scenario[start:],
            key=self.key[start:],
            data_class=self.data_class[start:],
            input_tokens=self.input_tokens[start:],
            output_tokens=self.output_tokens[start:],
            accepted=self.accepted[start:],
            prompt=self.prompt,
            offsets=self.offsets[start:] - base,
            values=self.values[base:],
            block_tokens=self.block_tokens,
            lines=None if self.lines is None else self.lines[start:],
        )

    def add_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Simulation.add`` for this chunk."""
        args: dict[str, Any] = {
            "arrival_s": self.arrival_s,
            "scenario": self.scenario,
            "key": self.key,
            "data_class": self.data_class,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "accepted": self.accepted,
        }
        if self.prompt == "tokens":
            args.update(token_offsets=self.offsets, token_ids=self.values)
        else:
            args.update(
                block_offsets=self.offsets, blocks=self.values, block_tokens=self.block_tokens
            )
        return args

    def rows(self) -> Iterator[TraceRow]:
        """The chunk's requests one by one (for writing JSON Lines and for tests)."""
        for i in range(len(self)):
            prompt = self.values[self.offsets[i] : self.offsets[i + 1]].tolist()
            label = int(self.accepted[i])
            yield TraceRow(
                at=float(self.arrival_s[i]),
                input_tokens=int(self.input_tokens[i]),
                output_tokens=int(self.output_tokens[i]),
                scenario=self.scenario[i],
                key=self.key[i],
                data_class=self.data_class[i],
                accepted=None if label < 0 else bool(label),
                token_ids=prompt if self.prompt == "tokens" and prompt else None,
                blocks=prompt if self.prompt == "blocks" and prompt else None,
                block_tokens=self.block_tokens if self.prompt == "blocks" and prompt else None,
            )


@dataclass
class ReadStats:
    """What reading (and adding) a trace found: requests read, bad lines skipped (``skip_bad``)
    with the first few reasons, and the source's failed requests left out (0 output tokens:
    BurstGPT's failures, and decisions a sidecar recorded without an answer: nothing to replay)."""

    requests: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    failed_in_source: int = 0

    def skip(self, message: str) -> None:
        """Counts one skipped line, keeping the first few reasons."""
        self.skipped += 1
        if len(self.skipped_examples) < _MAX_SKIPPED_EXAMPLES:
            self.skipped_examples.append(message)


class _ChunkBuilder:
    """Accumulates requests row by row and hands out :class:`TraceColumns` chunks.

    A chunk holds one prompt kind (tokens, or blocks of one size): a request whose prompt is of
    another kind closes the current chunk. Requests without a prompt fit any chunk.
    """

    def __init__(self, chunk_rows: int = CHUNK_ROWS) -> None:
        self._chunk_rows = chunk_rows
        self._reset()

    def _reset(self) -> None:
        self.at: list[float] = []
        self.scenario: list[str | None] = []
        self.key: list[str | None] = []
        self.data_class: list[str | None] = []
        self.input_tokens: list[int] = []
        self.output_tokens: list[int] = []
        self.accepted: list[int] = []
        self.lines: list[int] = []
        self.offsets: list[int] = [0]
        self.values: list[np.ndarray] = []
        self.n_values = 0
        self.prompt: PromptKind | None = None
        self.block_tokens = DEFAULT_BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.at)

    def fits(self, prompt: PromptKind | None, block_tokens: int) -> bool:
        """Whether a request with this prompt kind may join the current chunk."""
        if prompt is None or self.prompt is None:
            return True
        return prompt == self.prompt and (prompt == "tokens" or block_tokens == self.block_tokens)

    def append(
        self,
        *,
        line: int,
        at: float,
        input_tokens: int,
        output_tokens: int,
        scenario: str | None = None,
        key: str | None = None,
        data_class: str | None = None,
        accepted: bool | None = None,
        prompt: PromptKind | None = None,
        values: np.ndarray | Sequence[int] = (),
        block_tokens: int = DEFAULT_BLOCK_TOKENS,
    ) -> TraceColumns | None:
        """Adds one request; returns the finished chunk when this request closed one."""
        done = None
        if not self.fits(prompt, block_tokens):
            done = self.take()
        if prompt is not None and self.prompt is None:
            self.prompt = prompt
            self.block_tokens = block_tokens
        self.at.append(at)
        self.scenario.append(scenario)
        self.key.append(key)
        self.data_class.append(data_class)
        self.input_tokens.append(input_tokens)
        self.output_tokens.append(output_tokens)
        self.accepted.append(-1 if accepted is None else int(accepted))
        self.lines.append(line)
        if len(values):
            kind = np.uint32 if prompt == "tokens" else np.uint64
            self.values.append(np.asarray(values, dtype=kind))
            self.n_values += len(values)
        self.offsets.append(self.n_values)
        if done is None and (len(self.at) >= self._chunk_rows or self.n_values >= _CHUNK_VALUES):
            done = self.take()
        return done

    def take(self) -> TraceColumns | None:
        """The requests gathered so far as a chunk (None if there are none); starts a new one."""
        if not self.at:
            return None
        prompt: PromptKind = self.prompt or "blocks"
        chunk = TraceColumns(
            arrival_s=np.asarray(self.at, dtype=np.float64),
            scenario=self.scenario,
            key=self.key,
            data_class=self.data_class,
            input_tokens=np.asarray(self.input_tokens, dtype=np.int64),
            output_tokens=np.asarray(self.output_tokens, dtype=np.int64),
            accepted=np.asarray(self.accepted, dtype=np.int8),
            prompt=prompt,
            offsets=np.asarray(self.offsets, dtype=np.int64),
            values=(
                np.concatenate(self.values) if self.values else np.zeros(0, dtype=np.uint64)
            ).astype(np.uint32 if prompt == "tokens" else np.uint64, copy=False),
            block_tokens=self.block_tokens,
            lines=np.asarray(self.lines, dtype=np.int64),
        )
        self._reset()
        return chunk


# ---------------------------------------------------------------------------------------------
# Field checks: each names the field and what is wrong; the reader adds file:line.


class _Bad(Exception):
    """One line is malformed (internal: the reader turns it into a TraceError or a skip)."""


def _int(row: Mapping[str, Any], name: str, *, lo: int = 0, hi: int = 2**63) -> int:
    value = row.get(name)
    if value is None:
        raise _Bad(f"missing {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{name!r} must be an integer, got {json.dumps(value)}")
    if not lo <= value < hi:
        raise _Bad(f"{name!r} out of range: {value}")
    return value


def _number(row: Mapping[str, Any], name: str) -> float:
    value = row.get(name)
    if value is None:
        raise _Bad(f"missing {name!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{name!r} must be a number, got {json.dumps(value)}")
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"{name!r} must be a finite number >= 0, got {value}")
    return float(value)


def _optional_str(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise _Bad(f"{name!r} must be a string or null, got {json.dumps(value)}")
    return value


def _int_list(row: Mapping[str, Any], name: str, hi: int) -> np.ndarray:
    """A list of integers in [0, hi) as an array (checked in numpy: one Python step per list)."""
    value = row[name]
    if not isinstance(value, list):
        raise _Bad(f"{name!r} must be a list of integers")
    if not value:
        return np.zeros(0, dtype=np.uint64)
    array = None
    if set(map(type, value)) == {int}:  # no bool, float or str slips into the conversion
        try:
            array = np.array(value, dtype=np.uint64 if hi == _U64 else np.int64)
        except OverflowError:
            array = None
        if array is not None and hi < _U64 and not (array.min() >= 0 and array.max() < hi):
            array = None
    if array is None:
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
                raise _Bad(f"{name}[{i}] must be an integer in [0, {hi}), got {json.dumps(v)}")
        raise _Bad(f"{name!r} must be a list of integers in [0, {hi})")
    return array


def _messages_text(value: Any) -> str:
    if not isinstance(value, list):
        raise _Bad("'messages' must be a list of {role, content}")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Bad(f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _Bad(f"messages[{i}].content must be a string or a list of parts")
    return canonical_prompt(value)


def _turnout_row(row: Any) -> dict[str, Any]:
    """Checks one Turnout trace record; returns the builder's arguments (less `line`)."""
    if not isinstance(row, dict):
        raise _Bad("a request must be a JSON object")
    unknown = sorted(set(row) - _TURNOUT_FIELDS)
    if unknown:
        raise _Bad(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(_TURNOUT_FIELDS))})")
    accepted = row.get("accepted")
    if accepted is not None and not isinstance(accepted, bool):
        raise _Bad(f"'accepted' must be true, false or null, got {json.dumps(accepted)}")
    args: dict[str, Any] = {
        "at": _number(row, "at"),
        "input_tokens": _int(row, "input_tokens"),
        "output_tokens": _int(row, "output_tokens"),
        "scenario": _optional_str(row, "scenario"),
        "key": _optional_str(row, "key"),
        "data_class": _optional_str(row, "data_class"),
        "accepted": accepted,
    }
    forms = [name for name in _PROMPT_FIELDS if row.get(name) is not None]
    if len(forms) > 1:
        raise _Bad(f"give at most one prompt form, got {' and '.join(forms)}")
    if "block_tokens" in row and forms != ["blocks"]:
        raise _Bad("'block_tokens' goes with 'blocks' only")
    form = forms[0] if forms else None
    if form == "token_ids":
        args.update(prompt="tokens", values=_int_list(row, "token_ids", _U32))
    elif form == "blocks":
        block_tokens = row.get("block_tokens", DEFAULT_BLOCK_TOKENS)
        if isinstance(block_tokens, bool) or not isinstance(block_tokens, int) or block_tokens < 1:
            raise _Bad(f"'block_tokens' must be a positive integer, got {block_tokens!r}")
        args.update(
            prompt="blocks", values=_int_list(row, "blocks", _U64), block_tokens=block_tokens
        )
    elif form is not None:
        text = row[form] if form == "text" else _messages_text(row[form])
        if not isinstance(text, str):
            raise _Bad("'text' must be a string")
        args.update(
            prompt="blocks",
            values=_core.trace_blocks(text=text),  # the chain the sidecar's --record writes
            block_tokens=TEXT_BLOCK_TOKENS,
        )
    return args


def _mooncake_row(row: Any, start_s: float) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise _Bad("a request must be a JSON object")
    hash_ids = row.get("hash_ids")
    if hash_ids is None:
        raise _Bad("missing 'hash_ids'")
    session = row.get("session_id")
    return {
        "at": start_s + _number(row, "timestamp") / 1000.0,
        "input_tokens": _int(row, "input_length"),
        "output_tokens": _int(row, "output_length"),
        "key": None if session is None else str(session),
        "prompt": "blocks",
        "values": _int_list(row, "hash_ids", _U64),
        "block_tokens": MOONCAKE_BLOCK_TOKENS,
    }


# ---------------------------------------------------------------------------------------------
# CSV formats


def _csv_int(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        try:  # some exports write counts as floats ("18.0")
            f = float(value)
        except ValueError:
            raise _Bad(f"{name!r} must be an integer, got {value!r}") from None
        if not f.is_integer():
            raise _Bad(f"{name!r} must be an integer, got {value!r}") from None
        n = int(f)
    if n < 0:
        raise _Bad(f"{name!r} must be >= 0, got {n}")
    return n


_epoch_days: dict[str, int] = {}


def parse_azure_timestamp(text: str) -> float:
    """Seconds since the epoch of an Azure trace ``TIMESTAMP`` (UTC, ``YYYY-MM-DD HH:MM:SS`` with
    up to 7 decimal digits, 100 ns ticks; an optional ``+00:00`` or ``Z`` is accepted)."""
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1]
    elif s.endswith("+00:00"):
        s = s[:-6]
    if len(s) < 19 or s[10] not in " T" or s[13] != ":" or s[16] != ":":
        raise _Bad(f"'TIMESTAMP' must be 'YYYY-MM-DD HH:MM:SS[.fffffff]', got {text!r}")
    day = s[:10]
    days = _epoch_days.get(day)
    try:
        if days is None:
            days = (date.fromisoformat(day) - date(1970, 1, 1)).days
            _epoch_days[day] = days
        hh, mm, ss = int(s[11:13]), int(s[14:16]), int(s[17:19])
        frac = 0.0
        if len(s) > 19:
            digits = s[20:]
            if s[19] != "." or not digits.isdigit():
                raise ValueError
            frac = int(digits) / 10 ** len(digits)
    except ValueError:
        raise _Bad(f"'TIMESTAMP' must be 'YYYY-MM-DD HH:MM:SS[.fffffff]', got {text!r}") from None
    if hh > 23 or mm > 59 or ss > 60:
        raise _Bad(f"'TIMESTAMP' has an impossible time: {text!r}")
    return days * 86400.0 + hh * 3600 + mm * 60 + ss + frac


AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens")


def _column_index(
    header: list[str], wanted: Sequence[str], fmt: str, optional: Sequence[str] = ()
) -> dict[str, int]:
    names = [h.strip() for h in header]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise _Bad(f"not a {fmt} header: missing column {missing[0]!r} (has: {', '.join(names)})")
    return {w: names.index(w) for w in (*wanted, *optional) if w in names}


# ---------------------------------------------------------------------------------------------
# Readers


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def detect_format(path: str | Path) -> str:
    """The format of the trace at `path`, by its extension and its first line: ``turnout``
    (``*.parquet``, or JSON Lines with ``at``), ``mooncake`` (JSON Lines with ``hash_ids``),
    ``azure`` or ``burstgpt`` (CSV, by header). Raises :class:`TraceError` when it cannot tell."""
    p = Path(path)
    suffix = _base_suffix(p)
    if suffix == ".parquet":
        return "turnout"
    try:
        with _open_text(p) as f:
            first = ""
            for line in f:
                if line.strip():
                    first = line.strip()
                    break
    except UnicodeDecodeError:
        raise TraceError(f"{p}: cannot tell the trace format (not UTF-8 text)") from None
    except OSError as e:
        raise TraceError(f"{p}: cannot open: {e.strerror or e}") from None
    if first.startswith("{"):
        try:
            head = json.loads(first)
        except json.JSONDecodeError:
            head = {}
        if isinstance(head, dict):
            if "turnout_trace" in head or "at" in head:
                return "turnout"
            if "hash_ids" in head or "input_length" in head:
                return "mooncake"
    elif suffix in (".csv", ".txt", "") or "," in first:
        columns = {c.strip() for c in next(csv.reader([first]), [])}
        if set(AZURE_COLUMNS) <= columns:
            return "azure"
        if {"Timestamp", "Request tokens", "Response tokens"} <= columns:
            return "burstgpt"
    raise TraceError(
        f"{p}: cannot tell the trace format from its extension and first line; give the format "
        f"({', '.join(FORMATS)})"
    )


class TraceReader:
    """Reads a trace file in chunks of columns.

    ``format`` is one of :data:`FORMATS` or ``"auto"`` (:func:`detect_format`). A malformed line
    raises :class:`TraceError` naming ``file:line`` and what is wrong; with ``skip_bad`` it is
    counted in :attr:`stats` and skipped. ``start_s`` places traces whose times are relative
    (Mooncake, BurstGPT) on the clock.
    """

    def __init__(
        self,
        path: str | Path,
        format: str = "auto",
        *,
        skip_bad: bool = False,
        start_s: float = DEFAULT_START_S,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.path = Path(path)
        if format != "auto" and format not in FORMATS:
            raise TraceError(
                f"unknown trace format {format!r} (formats: auto, {', '.join(FORMATS)})"
            )
        if not self.path.is_file():
            raise TraceError(f"{self.path}: no such trace file")
        self.format = detect_format(self.path) if format == "auto" else format
        self.parquet = _base_suffix(self.path) == ".parquet"
        if self.parquet and self.format != "turnout":
            raise TraceError(f"{self.path}: a Parquet trace is in the turnout format")
        self.skip_bad = skip_bad
        self.start_s = start_s
        self.chunk_rows = chunk_rows
        self.stats = ReadStats()

    def chunks(self) -> Iterator[TraceColumns]:
        """The trace as chunks of columns, in file order (each call reads the file anew)."""
        self.stats = ReadStats()
        if self.parquet:
            yield from self._parquet_chunks()
            return
        builder = _ChunkBuilder(self.chunk_rows)
        with _open_text(self.path) as f:
            for line, args in self._records(f):
                chunk = builder.append(line=line, **args)
                if chunk is not None:
                    yield chunk
        last = builder.take()
        if last is not None:
            yield last

    def rows(self) -> Iterator[TraceRow]:
        """The trace's requests one by one (prompts as token ids or blocks)."""
        for chunk in self.chunks():
            yield from chunk.rows()

    def _bad(self, line: int, what: str) -> None:
        message = f"{self.path}:{line}: {what}"
        if not self.skip_bad:
            raise TraceError(message)
        self.stats.skip(message)

    def _records(self, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        parse: Callable[[IO[str]], Iterator[tuple[int, dict[str, Any]]]] = {
            "turnout": self._turnout_records,
            "mooncake": self._mooncake_records,
            "azure": self._azure_records,
            "burstgpt": self._burstgpt_records,
        }[self.format]
        try:
            for line, args in parse(f):
                self.stats.requests += 1
                yield line, args
        except UnicodeDecodeError as e:
            raise TraceError(f"{self.path}: not UTF-8 text ({e.reason})") from None

    def _json_lines(self, f: IO[str]) -> Iterator[tuple[int, Any]]:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield n, json.loads(text)
            except json.JSONDecodeError as e:
                self._bad(n, f"not JSON: {e.msg} (column {e.colno})")

    def _turnout_records(self, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        first = True
        for n, obj in self._json_lines(f):
            if first and isinstance(obj, dict) and "turnout_trace" in obj:
                first = False
                if obj != {"turnout_trace": TRACE_VERSION}:
                    raise TraceError(
                        f"{self.path}:{n}: unsupported trace header {json.dumps(obj)} "
                        f'(this version reads {{"turnout_trace": {TRACE_VERSION}}})'
                    )
                continue
            first = False
            try:
                args = _turnout_row(obj)
            except _Bad as e:
                self._bad(n, str(e))
                continue
            if args["output_tokens"] == 0:  # no answer in the source (the sidecar records those)
                self.stats.failed_in_source += 1
                continue
            yield n, args

    def _mooncake_records(self, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        for n, obj in self._json_lines(f):
            try:
                yield n, _mooncake_row(obj, self.start_s)
            except _Bad as e:
                self._bad(n, str(e))

    def _csv_rows(
        self, f: IO[str], wanted: Sequence[str], fmt: str, optional: Sequence[str] = ()
    ) -> Iterator[tuple[int, list[str], dict[str, int]]]:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        try:
            index = _column_index(header, wanted, fmt, optional)
        except _Bad as e:
            raise TraceError(f"{self.path}:1: {e}") from None
        width = len(header)
        for cells in reader:
            n = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) != width:
                self._bad(n, f"expected {width} columns, got {len(cells)}")
                continue
            yield n, cells, index

    def _azure_records(self, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        for n, cells, ix in self._csv_rows(f, AZURE_COLUMNS, "Azure LLM inference trace"):
            try:
                yield (
                    n,
                    {
                        "at": parse_azure_timestamp(cells[ix["TIMESTAMP"]]),
                        "input_tokens": _csv_int(cells[ix["ContextTokens"]], "ContextTokens"),
                        "output_tokens": _csv_int(cells[ix["GeneratedTokens"]], "GeneratedTokens"),
                    },
                )
            except _Bad as e:
                self._bad(n, str(e))

    def _burstgpt_records(self, f: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        wanted = ("Timestamp", "Request tokens", "Response tokens")
        for n, cells, ix in self._csv_rows(f, wanted, "BurstGPT", ("Session ID",)):
            session = ix.get("Session ID")
            try:
                try:
                    t = float(cells[ix["Timestamp"]])
                except ValueError:
                    raise _Bad(
                        f"'Timestamp' must be seconds (a number), got {cells[ix['Timestamp']]!r}"
                    ) from None
                if not math.isfinite(t) or t < 0:
                    raise _Bad(f"'Timestamp' must be a finite number >= 0, got {t}")
                output = _csv_int(cells[ix["Response tokens"]], "Response tokens")
                if output == 0:  # failed at the source: no answer to replay
                    self.stats.failed_in_source += 1
                    continue
                yield (
                    n,
                    {
                        "at": self.start_s + t,
                        "input_tokens": _csv_int(cells[ix["Request tokens"]], "Request tokens"),
                        "output_tokens": output,
                        "key": None if session is None else cells[session] or None,
                    },
                )
            except _Bad as e:
                self._bad(n, str(e))

    def _parquet_chunks(self) -> Iterator[TraceColumns]:
        pq = _pyarrow_parquet()
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError kinds
            raise TraceError(f"{self.path}: not a Parquet file: {e}") from None
        names = set(pf.schema_arrow.names)
        unknown = sorted(names - _TURNOUT_FIELDS)
        if unknown:
            raise TraceError(f"{self.path}: unknown column {unknown[0]!r}")
        for required in ("at", "input_tokens", "output_tokens"):
            if required not in names:
                raise TraceError(f"{self.path}: missing column {required!r}")
        builder = _ChunkBuilder(self.chunk_rows)
        row = 0
        for batch in pf.iter_batches(batch_size=self.chunk_rows):
            fast = _parquet_batch_columns(batch, row)
            if fast is not None:  # a clean batch of one prompt kind: no Python object per request
                last = builder.take()
                if last is not None:
                    yield last
                row += len(fast)
                self.stats.requests += len(fast)
                yield fast
                continue
            records = batch.to_pylist()
            for record in records:
                row += 1
                clean = {k: v for k, v in record.items() if v is not None}
                try:
                    args = _turnout_row(clean)
                except _Bad as e:
                    self._bad_row(row, str(e))
                    continue
                if args["output_tokens"] == 0:  # no answer in the source
                    self.stats.failed_in_source += 1
                    continue
                self.stats.requests += 1
                chunk = builder.append(line=row, **args)
                if chunk is not None:
                    yield chunk
        last = builder.take()
        if last is not None:
            yield last

    def _bad_row(self, row: int, what: str) -> None:
        message = f"{self.path}: row {row}: {what}"
        if not self.skip_bad:
            raise TraceError(message)
        self.stats.skip(message)


def _parquet_batch_columns(batch: Any, first_row: int) -> TraceColumns | None:
    """A Parquet batch as columns, vectorised, when every value in it is valid and its requests
    have one prompt kind; None sends the batch through the row-by-row checks (exact errors)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}

    def used(name: str) -> bool:
        return name in cols and cols[name].null_count < n

    if n == 0 or used("text") or used("messages") or (used("token_ids") and used("blocks")):
        return None
    numbers = {}
    for name in ("at", "input_tokens", "output_tokens"):
        col = cols[name]
        if col.null_count or not (pa.types.is_integer(col.type) or name == "at"):
            return None
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            return None
        numbers[name] = col.to_numpy()
    at = numbers["at"].astype(np.float64)
    if not np.all(np.isfinite(at) & (at >= 0)):
        return None
    if (numbers["input_tokens"] < 0).any() or (numbers["output_tokens"] < 1).any():
        return None
    text_columns = {}
    for name in ("scenario", "key", "data_class"):
        if name not in cols:
            text_columns[name] = [None] * n
        elif pa.types.is_string(cols[name].type) or pa.types.is_large_string(cols[name].type):
            text_columns[name] = cols[name].to_pylist()
        else:
            return None
    accepted = np.full(n, -1, dtype=np.int8)
    if "accepted" in cols:
        col = cols["accepted"]
        if not pa.types.is_boolean(col.type):
            return None
        labels = col.fill_null(False).to_numpy(zero_copy_only=False)
        accepted = np.where(col.is_null().to_numpy(zero_copy_only=False), -1, labels).astype(
            np.int8
        )
    prompt: PromptKind = "tokens" if used("token_ids") else "blocks"
    block_tokens = DEFAULT_BLOCK_TOKENS
    offsets = np.zeros(n + 1, dtype=np.int64)
    values = np.zeros(0, dtype=np.uint32 if prompt == "tokens" else np.uint64)
    name = "token_ids" if prompt == "tokens" else "blocks"
    if used(name):
        col = cols[name]
        if not pa.types.is_integer(col.type.value_type):
            return None
        flat = col.flatten().to_numpy()
        if flat.size and (flat.min() < 0 or (prompt == "tokens" and flat.max() >= _U32)):
            return None
        lengths = pc.list_value_length(col).fill_null(0).to_numpy()
        np.cumsum(lengths, out=offsets[1:])
        values = flat.astype(values.dtype)
        if prompt == "blocks" and "block_tokens" in cols:
            sizes = cols["block_tokens"].to_numpy(zero_copy_only=False)
            given = sizes[(lengths > 0) & ~np.isnan(sizes.astype(np.float64))]
            if given.size:
                if not (given == given[0]).all() or given[0] < 1:
                    return None
                block_tokens = int(given[0])
    return TraceColumns(
        arrival_s=at,
        scenario=text_columns["scenario"],
        key=text_columns["key"],
        data_class=text_columns["data_class"],
        input_tokens=numbers["input_tokens"].astype(np.int64),
        output_tokens=numbers["output_tokens"].astype(np.int64),
        accepted=accepted,
        prompt=prompt,
        offsets=offsets,
        values=values,
        block_tokens=block_tokens,
        lines=np.arange(first_row + 1, first_row + n + 1, dtype=np.int64),
    )


def read_trace(
    path: str | Path,
    format: str = "auto",
    *,
    skip_bad: bool = False,
    start_s: float = DEFAULT_START_S,
) -> TraceReader:
    """A :class:`TraceReader` over the trace at `path` (nothing is read until it is iterated)."""
    return TraceReader(path, format, skip_bad=skip_bad, start_s=start_s)


def columns_from_rows(
    rows: Iterable[TraceRow | Mapping[str, Any]], *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[TraceColumns]:
    """Chunks of columns from requests given as :class:`TraceRow` s or Turnout-format dicts
    (checked as a trace file's lines are; the position in `rows` stands for the line)."""
    builder = _ChunkBuilder(chunk_rows)
    for n, row in enumerate(rows, start=1):
        record = row.to_json() if isinstance(row, TraceRow) else dict(row)
        record = {k: v for k, v in record.items() if v is not None or k not in _PROMPT_FIELDS}
        try:
            args = _turnout_row(record)
        except _Bad as e:
            raise TraceError(f"request {n}: {e}") from None
        chunk = builder.append(line=n, **args)
        if chunk is not None:
            yield chunk
    last = builder.take()
    if last is not None:
        yield last


# ---------------------------------------------------------------------------------------------
# Scenarios


def scenario_resolver(
    scenarios: Sequence[str], default: str | None
) -> Callable[[TraceColumns, str], None]:
    """A check that fills each chunk's missing scenarios with the default (``default``, else the
    table's only scenario) and rejects scenarios the table does not have
    (:class:`~turnout.UnknownScenarioError`, listing the table's)."""
    known = set(scenarios)
    listing = ", ".join(scenarios)
    if default is not None and default not in known:
        raise UnknownScenarioError(f"unknown scenario {default!r}: the routing table has {listing}")
    fallback = default if default is not None else (scenarios[0] if len(scenarios) == 1 else None)

    def resolve(chunk: TraceColumns, where: str) -> None:
        names = chunk.scenario
        for i, name in enumerate(names):
            if name is None:
                if fallback is None:
                    line = int(chunk.lines[i]) if chunk.lines is not None else i + 1
                    raise TraceError(
                        f"{where}:{line}: the request names no scenario and the routing table has "
                        f"several ({listing}): give one (--scenario)"
                    )
                names[i] = fallback
            elif name not in known:
                line = int(chunk.lines[i]) if chunk.lines is not None else i + 1
                raise UnknownScenarioError(
                    f"{where}:{line}: unknown scenario {name!r}: the routing table has {listing}"
                )

    return resolve


# ---------------------------------------------------------------------------------------------
# Writing


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is in the test extra
        raise TraceError(
            "Parquet needs pyarrow: pip install 'turnout[parquet]' (or use JSON Lines)"
        ) from None
    return pq


def _json_lines(chunk: TraceColumns) -> Iterator[str]:
    """The chunk's requests as Turnout trace lines (the prompt list spliced in as text: the
    bulk of a line, written without a JSON encoder's per-item work)."""
    at = chunk.arrival_s.tolist()
    inputs = chunk.input_tokens.tolist()
    outputs = chunk.output_tokens.tolist()
    labels = chunk.accepted.tolist()
    offsets = chunk.offsets.tolist()
    values = chunk.values.tolist()
    field = "token_ids" if chunk.prompt == "tokens" else "blocks"
    size = f',"block_tokens":{chunk.block_tokens}' if chunk.prompt == "blocks" else ""
    dumps = json.dumps
    for i in range(len(at)):
        head = dumps(
            {
                "at": at[i],
                "scenario": chunk.scenario[i],
                "key": chunk.key[i],
                "data_class": chunk.data_class[i],
                "input_tokens": inputs[i],
                "output_tokens": outputs[i],
                "accepted": None if labels[i] < 0 else bool(labels[i]),
            },
            separators=(",", ":"),
        )
        lo, hi = offsets[i], offsets[i + 1]
        if hi > lo:
            prompt = ",".join(map(str, values[lo:hi]))
            yield f'{head[:-1]},"{field}":[{prompt}]{size}}}\n'
        else:
            yield head + "\n"


def _parquet_schema(pa: Any) -> Any:
    """The Parquet schema of a Turnout trace (the JSON Lines fields as columns)."""
    return pa.schema(
        [
            ("at", pa.float64()),
            ("scenario", pa.string()),
            ("key", pa.string()),
            ("data_class", pa.string()),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("accepted", pa.bool_()),
            ("token_ids", pa.large_list(pa.uint32())),
            ("blocks", pa.large_list(pa.uint64())),
            ("block_tokens", pa.int64()),
        ],
        metadata={"turnout_trace": str(TRACE_VERSION)},
    )


class TraceWriter:
    """Writes a Turnout trace: JSON Lines (with the ``{"turnout_trace": 1}`` header) or, with
    ``format="parquet"``, Parquet (the same columns; ``blocks``/``token_ids`` as list columns)."""

    def __init__(self, path: str | Path, format: Literal["turnout", "parquet"] = "turnout") -> None:
        if format not in ("turnout", "parquet"):
            raise TraceError(f"unknown output format {format!r} (formats: turnout, parquet)")
        self.path = Path(path)
        self.format = format
        self.requests = 0
        self._text: IO[str] | None = None
        self._parquet: Any = None
        if format == "turnout":
            self._text = self.path.open("w", encoding="utf-8")
            self._text.write(json.dumps({"turnout_trace": TRACE_VERSION}) + "\n")

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finishes the file."""
        if self._text is not None:
            self._text.close()
            self._text = None
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    def write_rows(self, rows: Iterable[TraceRow]) -> None:
        """Appends requests given one by one (prompts kept in the form given)."""
        if self._text is None:
            for chunk in columns_from_rows(rows):
                self.write_columns(chunk)
            return
        for row in rows:
            self._text.write(json.dumps(row.to_json(), separators=(",", ":")) + "\n")
            self.requests += 1

    def write_columns(self, chunk: TraceColumns) -> None:
        """Appends a chunk of columns."""
        if self._text is not None:
            self._text.writelines(_json_lines(chunk))
            self.requests += len(chunk)
            return
        self._write_parquet(chunk)

    def _write_parquet(self, chunk: TraceColumns) -> None:
        import pyarrow as pa

        pq = _pyarrow_parquet()
        schema = _parquet_schema(pa)
        n = len(chunk)
        empty = np.diff(chunk.offsets) == 0
        is_blocks = chunk.prompt == "blocks"
        kind = schema.field("blocks" if is_blocks else "token_ids").type
        prompt = pa.LargeListArray.from_arrays(
            pa.array(chunk.offsets),
            pa.array(chunk.values, type=kind.value_type),
            mask=pa.array(empty),
        )
        no_prompt = pa.nulls(n, type=schema.field("token_ids" if is_blocks else "blocks").type)
        no_block_size = empty | (not is_blocks)
        table = pa.table(
            {
                "at": pa.array(chunk.arrival_s),
                "scenario": pa.array(chunk.scenario, type=pa.string()),
                "key": pa.array(chunk.key, type=pa.string()),
                "data_class": pa.array(chunk.data_class, type=pa.string()),
                "input_tokens": pa.array(chunk.input_tokens),
                "output_tokens": pa.array(chunk.output_tokens),
                "accepted": pa.array(chunk.accepted == 1, mask=chunk.accepted < 0),
                "token_ids": no_prompt if is_blocks else prompt,
                "blocks": prompt if is_blocks else no_prompt,
                "block_tokens": pa.array(
                    np.full(n, chunk.block_tokens, dtype=np.int64), mask=no_block_size
                ),
            },
            schema=schema,
        )
        if self._parquet is None:
            # Dictionary pages pay for the repeated names only, not for the random block ids.
            self._parquet = pq.ParquetWriter(
                self.path, schema, use_dictionary=["scenario", "key", "data_class"]
            )
        self._parquet.write_table(table)
        self.requests += n
