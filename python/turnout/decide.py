"""Scenario decision records: where one scenario should run (MaaS, self-hosted, hybrid, batch), why,
what is missing before it can move, and which classic mistakes the plan makes.

A decision file (YAML, one per scenario, docs/decide.md) states the decision template: the data
boundary, the demand's shape, the model candidates (targets of a routing table), the cost and
capacity assumptions, the cache assumptions, the quality gate, the fallback, the owner, and whether
evals and MLOps exist. :func:`load_scenario` reads it (every error is ``path:line:col: what``; every
missing field is named) and cross-checks it against its routing table; :func:`decide` applies the
rules table (:data:`RULES`), the readiness checklist (:data:`READINESS`) and the anti-pattern checks
(:data:`ANTI_PATTERNS`), and asks the planner (``turnout.plan``) for the cost comparison.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

import turnout
from turnout import _core
from turnout._errors import ScenarioError, TurnoutError
from turnout.capacity import DIURNAL_MEAN_TOLERANCE

PATTERNS = ("steady", "diurnal", "spiky")
URGENCIES = ("online", "batch")
DEMAND_SOURCES = ("measured", "forecast")
CUSTOMIZATIONS = ("none", "fine_tune", "lora")
AFFINITIES = ("none", "session", "prefix")
USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens")
"""The usage fields a scenario's requests can record (the ledger's token kinds)."""
POOLS = ("staging", "test", "canary")
"""The non-production pools a self-hosted cost must count (besides the reserve)."""
PEOPLE = ("engineering", "observability", "evals", "incidents")
"""The monthly running costs beyond GPUs a self-hosted cost must count."""
RECOMMENDATIONS = ("maas", "self_hosted", "hybrid", "batch", "cannot_recommend")

SPIKY_PEAK_TO_MEAN = 2.5
"""Demand whose peak is this many times its mean (or whose pattern is ``spiky``) is spiky; below
it, demand is stable."""
SPREADSHEET_UTILIZATION = 0.9
"""A utilization assumption at or above this is a token-price spreadsheet's: a pool held to a
latency SLO at its peak runs far below it on average."""
CANARY_MAX_PCT = 20
"""A migration's first step moves at most this share of the traffic (a canary); more is a
big-bang switch."""
MIN_UTILIZATION = 1e-6
"""The smallest utilization: the core prices a replica's busy share to the millionth."""
SCHEMA_VERSION = 1
SECONDS_PER_MONTH = 730 * 3600
"""A month of demand: 730 hours (the planner's month)."""


# ---------------------------------------------------------------------------------------------
# The decision file


@dataclass(frozen=True)
class DataBoundary:
    """Where the scenario's data may go."""

    data_class: str  # the routing table's data class of the scenario
    may_leave: bool  # may the data, as it is, leave our boundary (go to a provider)?
    can_deidentify: bool  # can it be de-identified before it leaves?

    @property
    def stays_inside(self) -> bool:
        """The hard constraint: the data may not leave, and cannot be made fit to."""
        return not self.may_leave and not self.can_deidentify


@dataclass(frozen=True)
class DemandShape:
    """The scenario's demand, as the team knows it."""

    mean_rps: float
    peak_to_mean: float
    pattern: str  # steady | diurnal | spiky
    urgency: str  # online | batch (can wait)
    source: str  # measured | forecast
    input_tokens: int | None = None
    output_tokens: int | None = None
    shared_prefix_tokens: int = 0
    diurnal: tuple[float, ...] | None = None

    @property
    def spiky(self) -> bool:
        return self.pattern == "spiky" or self.peak_to_mean >= SPIKY_PEAK_TO_MEAN


@dataclass(frozen=True)
class Models:
    """The model candidates (targets of the routing table) and what the task needs of them."""

    candidates: tuple[str, ...]
    frontier_required: bool
    customization: str  # none | fine_tune | lora


@dataclass(frozen=True)
class CostModel:
    """Self-hosted cost assumptions (the GPU price itself is the table's)."""

    utilization: float | None = None
    usd_per_gpu_hour: Decimal | None = None  # a cross-check of the table's
    monthly: Mapping[str, Decimal] = field(default_factory=dict)  # extras beyond the table's


@dataclass(frozen=True)
class CacheAssumptions:
    """What the plan assumes of the prompt cache, and what is recorded to check it."""

    expected_hit_rate: float
    ttl_s: int
    affinity: str  # none | session | prefix
    prefix_aware_routing: bool
    observed_fields: tuple[str, ...]
    hit_rate_of: str | None = None  # the target whose cache the expected hit rate describes


@dataclass(frozen=True)
class Capacity:
    """A self-hosted replica's performance and the pools around production."""

    performance: str | None = None  # a row of _core.published_rows()
    throughput: Mapping[str, int] | None = None  # {output_tokens_per_s, input_tokens, ...}
    reserve: float | None = None  # extra production replicas, share of the SLO pool
    pools: Mapping[str, int] = field(default_factory=dict)  # staging/test/canary replicas

    @property
    def replica_throughput(self) -> Mapping[str, int] | None:
        """The replica's throughput row (explicit, or the published row named)."""
        if self.throughput is not None:
            return self.throughput
        if self.performance is not None:
            row = _published_rows()[self.performance]
            return {
                k: int(row[k])
                for k in ("output_tokens_per_s", "input_tokens", "output_tokens", "concurrency")
            }
        return None


@dataclass(frozen=True)
class Migration:
    """A planned move of the scenario's traffic from one target to another."""

    source: str
    destination: str
    steps: tuple[int, ...]  # percent of the traffic on the destination, stage by stage


@dataclass(frozen=True)
class ScenarioFile:
    """One scenario decision file, read and cross-checked against its routing table."""

    path: Path
    scenario: str
    table: Path
    config: turnout.Config
    owner: str
    data: DataBoundary
    demand: DemandShape
    models: Models
    cost: CostModel
    cache: CacheAssumptions
    capacity: Capacity
    min_accept_rate: float
    evals: bool
    mlops: bool
    fallback: tuple[str, ...]
    slo: Mapping[str, int] = field(default_factory=dict)  # ttft_p95_ms / latency_p95_ms
    migration: Migration | None = None
    description: str | None = None

    def info(self) -> dict[str, Any]:
        """The routing table's view of the scenario (Config.scenario_info)."""
        return self.config.scenario_info(self.scenario)

    def kind(self, target: str) -> str:
        """``maas`` or ``self_hosted``: the table's kind of ``target``."""
        return str(self.config.target_info(target)["kind"])


def field_names(schema: Mapping[str, _Field] | None = None, prefix: str = "") -> list[str]:
    """Every field of a decision file, dotted (``demand.mean_rps``), sections too (docs/decide.md
    documents each)."""
    out = []
    for key, spec in (_SCHEMA if schema is None else schema).items():
        out.append(prefix + key)
        if isinstance(spec.convert, _Section):
            out += field_names(spec.convert.schema, f"{prefix}{key}.")
    return out


def _published_rows() -> dict[str, dict[str, Any]]:
    rows = getattr(_core, "published_rows", None)
    return {} if rows is None else {r["name"]: r for r in rows()}


# One field of the file: required or not, and how its node becomes a value.
_Convert = Callable[["_Reader", Node, str], Any]


@dataclass(frozen=True)
class _Field:
    required: bool
    convert: _Convert
    hint: str  # what it is, for "missing field" lines


class _Reader:
    """Turns the composed node tree into values; every problem is ``path:line:col: what``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.missing: list[tuple[str, Node, str]] = []

    def where(self, node: Node) -> str:
        mark = node.start_mark
        return f"{self.path}:{mark.line + 1}:{mark.column + 1}"

    def fail(self, node: Node, message: str) -> NoReturn:
        raise ScenarioError(f"{self.where(node)}: {message}")

    def section(self, node: Node, name: str, schema: Mapping[str, _Field]) -> dict[str, Any]:
        """The fields of the mapping ``node`` by ``schema``; unknown keys are refused, missing
        required ones are collected (named together at the end)."""
        if not isinstance(node, MappingNode):
            self.fail(node, f"'{name}' must be a mapping" if name else "not a mapping of fields")
        nodes: dict[str, Node] = {}
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            dotted = f"{name}.{key}" if name else str(key)
            if key not in schema:
                self.fail(key_node, f"unknown field '{dotted}' (fields: {', '.join(schema)})")
            if key in nodes:
                self.fail(key_node, f"'{dotted}' is given twice")
            nodes[key] = value
        out: dict[str, Any] = {}
        for key, spec in schema.items():
            dotted = f"{name}.{key}" if name else key
            if key in nodes:
                out[key] = spec.convert(self, nodes[key], dotted)
            elif spec.required:
                self.named_missing(dotted, node, spec)
        return out

    def named_missing(self, name: str, node: Node, spec: _Field) -> None:
        # A missing section names each of its required fields, not just the section.
        if isinstance(spec.convert, _Section):
            for key, inner in spec.convert.schema.items():
                if inner.required:
                    self.named_missing(f"{name}.{key}", node, inner)
        else:
            self.missing.append((name, node, spec.hint))


def _scalar(reader: _Reader, node: Node, name: str) -> Any:
    if not isinstance(node, ScalarNode):
        reader.fail(node, f"'{name}' must be a scalar")
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError as e:  # a tag the safe loader refuses (!!python/...), a bad !!int
        reader.fail(node, f"'{name}': {getattr(e, 'problem', None) or e}")
    except ValueError as e:  # an integer past Python's digit limit for text
        reader.fail(node, f"'{name}': {e}")


def _shown(node: Node, value: Any) -> str:
    """A bad value for a message: as written when it is an integer (it may be too long for
    ``repr``), else its repr."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(node.value)
    return repr(value)


def _string(reader: _Reader, node: Node, name: str) -> str:
    value = _scalar(reader, node, name)
    if not isinstance(value, str) or not value:
        reader.fail(node, f"'{name}' must be a non-empty string (got {value!r})")
    return value


def _boolean(reader: _Reader, node: Node, name: str) -> bool:
    value = _scalar(reader, node, name)
    if not isinstance(value, bool):
        reader.fail(node, f"'{name}' must be true or false (got {value!r})")
    return value


def _choice(*options: str) -> _Convert:
    def convert(reader: _Reader, node: Node, name: str) -> str:
        value = _scalar(reader, node, name)
        if value not in options:
            reader.fail(node, f"'{name}' must be one of {', '.join(options)} (got {value!r})")
        return str(value)

    return convert


def _number(low: float, high: float = math.inf, *, low_open: bool = False) -> _Convert:
    def convert(reader: _Reader, node: Node, name: str) -> float:
        value = _scalar(reader, node, name)
        try:  # an integer too large for a float is out of every range here
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if (
            number is None
            or not isinstance(value, (int, float))
            or not math.isfinite(number)
            or number > high
            or number < low
            or (low_open and number == low)
        ):
            bounds = f"{'>' if low_open else '>='} {low:g}" + (
                f" and <= {high:g}" if high != math.inf else ""
            )
            reader.fail(node, f"'{name}' must be a number {bounds} (got {_shown(node, value)})")
        return number

    return convert


MAX_INTEGER = 2**31 - 1
"""The largest integer a decision file holds (token counts, tokens/s, seconds, replicas): the
planner and the core take them as 64-bit integers, and larger ones mean a typo."""


def _integer(low: int) -> _Convert:
    def convert(reader: _Reader, node: Node, name: str) -> int:
        value = _scalar(reader, node, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INTEGER:
            reader.fail(
                node,
                f"'{name}' must be an integer >= {low} and <= {MAX_INTEGER} "
                f"(got {_shown(node, value)})",
            )
        return value

    return convert


def _money(reader: _Reader, node: Node, name: str) -> Decimal:
    value = _scalar(reader, node, name)  # numbers are read from their text: exact
    try:
        amount = Decimal(str(node.value)) if isinstance(value, (int, float)) else None
    except InvalidOperation:
        amount = None
    if isinstance(value, bool) or amount is None or not amount.is_finite() or amount < 0:
        reader.fail(node, f"'{name}' must be a number of USD >= 0 (got {value!r})")
    return amount


def _sequence(item: _Convert, *, min_len: int = 0, exact_len: int | None = None) -> _Convert:
    def convert(reader: _Reader, node: Node, name: str) -> tuple[Any, ...]:
        if not isinstance(node, SequenceNode):
            reader.fail(node, f"'{name}' must be a list")
        values = tuple(item(reader, n, f"{name}[{i}]") for i, n in enumerate(node.value))
        if exact_len is not None and len(values) != exact_len:
            reader.fail(node, f"'{name}' must have {exact_len} items (has {len(values)})")
        if len(values) < min_len:
            reader.fail(node, f"'{name}' must have at least {min_len} item(s)")
        return values

    return convert


def _names(reader: _Reader, node: Node, name: str) -> tuple[str, ...]:
    values = _sequence(_string)(reader, node, name)
    for i, v in enumerate(values):
        if v in values[:i]:
            reader.fail(node.value[i], f"'{name}' names {v!r} twice")
    return values


def _usage_fields(reader: _Reader, node: Node, name: str) -> tuple[str, ...]:
    values = _names(reader, node, name)
    for i, v in enumerate(values):
        if v not in USAGE_FIELDS:
            reader.fail(
                node.value[i], f"'{name}' has {v!r}: usage fields are {', '.join(USAGE_FIELDS)}"
            )
    return values


def _steps(reader: _Reader, node: Node, name: str) -> tuple[int, ...]:
    values = _sequence(_integer(1), min_len=1)(reader, node, name)
    if values[-1] > 100 or list(values) != sorted(set(values)):
        reader.fail(node, f"'{name}' must rise strictly, each a percent of the traffic, 1 to 100")
    return values


def _mapping_of(item: _Convert) -> _Convert:
    def convert(reader: _Reader, node: Node, name: str) -> dict[str, Any]:
        if not isinstance(node, MappingNode):
            reader.fail(node, f"'{name}' must be a mapping")
        out: dict[str, Any] = {}
        for key_node, value in node.value:
            key = _string(reader, key_node, f"a key of '{name}'")
            if key in out:
                reader.fail(key_node, f"'{name}.{key}' is given twice")
            out[key] = item(reader, value, f"{name}.{key}")
        return out

    return convert


class _Section:
    """A nested mapping of fields (its schema names the fields a missing section lacks)."""

    def __init__(self, schema: Mapping[str, _Field]) -> None:
        self.schema = schema

    def __call__(self, reader: _Reader, node: Node, name: str) -> dict[str, Any]:
        return reader.section(node, name, self.schema)


_section = _Section


_THROUGHPUT = {
    "output_tokens_per_s": _Field(True, _integer(1), "a replica's output tokens/s"),
    "input_tokens": _Field(True, _integer(1), "prompt tokens of the measurement"),
    "output_tokens": _Field(True, _integer(1), "output tokens of the measurement"),
    "concurrency": _Field(True, _integer(1), "requests in flight in the measurement"),
}

_SCHEMA: dict[str, _Field] = {
    "version": _Field(True, _integer(1), f"the schema version, {SCHEMA_VERSION}"),
    "scenario": _Field(True, _string, "a scenario of the routing table"),
    "table": _Field(True, _string, "the routing table, relative to this file"),
    "description": _Field(False, _string, ""),
    "owner": _Field(True, _string, "who owns the decision"),
    "data_boundary": _Field(
        True,
        _section(
            {
                "data_class": _Field(True, _string, "the scenario's data class in the table"),
                "may_leave": _Field(True, _boolean, "true or false"),
                "can_deidentify": _Field(True, _boolean, "true or false"),
            }
        ),
        "",
    ),
    "demand": _Field(
        True,
        _section(
            {
                "mean_rps": _Field(True, _number(0, low_open=True), "requests/s > 0"),
                "peak_to_mean": _Field(True, _number(1), "a number >= 1"),
                "pattern": _Field(True, _choice(*PATTERNS), " | ".join(PATTERNS)),
                "urgency": _Field(True, _choice(*URGENCIES), " | ".join(URGENCIES)),
                "source": _Field(True, _choice(*DEMAND_SOURCES), " | ".join(DEMAND_SOURCES)),
                "input_tokens": _Field(False, _integer(1), ""),
                "output_tokens": _Field(False, _integer(1), ""),
                "shared_prefix_tokens": _Field(False, _integer(0), ""),
                "diurnal": _Field(False, _sequence(_number(0), exact_len=24), ""),
            }
        ),
        "",
    ),
    "models": _Field(
        True,
        _section(
            {
                "candidates": _Field(True, _sequence(_string, min_len=1), "targets of the table"),
                "frontier_required": _Field(True, _boolean, "true or false"),
                "customization": _Field(True, _choice(*CUSTOMIZATIONS), " | ".join(CUSTOMIZATIONS)),
            }
        ),
        "",
    ),
    "cost": _Field(
        False,
        _section(
            {
                "utilization": _Field(False, _number(0, 1, low_open=True), ""),
                "usd_per_gpu_hour": _Field(False, _money, ""),
                "monthly": _Field(False, _mapping_of(_money), ""),
            }
        ),
        "",
    ),
    "cache": _Field(
        True,
        _section(
            {
                "expected_hit_rate": _Field(True, _number(0, 1), "a share, 0 to 1"),
                "hit_rate_of": _Field(False, _string, ""),
                "ttl_s": _Field(True, _integer(0), "seconds"),
                "affinity": _Field(True, _choice(*AFFINITIES), " | ".join(AFFINITIES)),
                "prefix_aware_routing": _Field(True, _boolean, "true or false"),
                "observed_fields": _Field(True, _usage_fields, "usage fields recorded"),
            }
        ),
        "",
    ),
    "capacity": _Field(
        False,
        _section(
            {
                "performance": _Field(False, _string, ""),
                "throughput": _Field(False, _section(_THROUGHPUT), ""),
                "reserve": _Field(False, _number(0), ""),
                "pools": _Field(
                    False, _section({p: _Field(False, _integer(0), "") for p in POOLS}), ""
                ),
            }
        ),
        "",
    ),
    "quality_gate": _Field(
        True,
        _section(
            {
                "min_accept_rate": _Field(True, _number(0, 1), "a share, 0 to 1"),
                "evals": _Field(True, _boolean, "do evals of this scenario exist?"),
            }
        ),
        "",
    ),
    "slo": _Field(
        False,
        _section(
            {
                "ttft_p95_ms": _Field(False, _integer(1), ""),
                "latency_p95_ms": _Field(False, _integer(1), ""),
            }
        ),
        "",
    ),
    "fallback": _Field(True, _names, "ordered targets (may be [])"),
    "mlops": _Field(True, _boolean, "does MLOps (deploys, monitoring, on-call) exist?"),
    "migration": _Field(
        False,
        _section(
            {
                "from": _Field(True, _string, "the target the traffic leaves"),
                "to": _Field(True, _string, "the target the traffic moves to"),
                "steps": _Field(True, _steps, "percent on the destination per stage"),
            }
        ),
        "",
    ),
}
"""Every field of a decision file (docs/decide.md). Sections are required when every rule reads
them; ``cost`` and ``capacity`` are optional here because only a self-hosted candidate needs them
(:func:`decide` names what that candidate lacks in the record's ``missing_fields``)."""


def load_scenario(path: str | Path) -> ScenarioFile:
    """Reads a decision file and cross-checks it with its routing table.

    Raises :class:`ScenarioError`: a message line ``path:line:col: what`` for malformed YAML, a
    wrong type or an unknown field, a routing table that does not load, a scenario or target the
    table does not have, or a data class, SLO or quality gate that disagrees with the table; and one
    line per missing required field (``.missing`` lists them all).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"{p}: cannot open: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{p}: not UTF-8 text ({e.reason})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ScenarioError(f"{p}:{line}:{col}: not YAML: {e.problem or e.context}") from None
    if root is None:
        raise ScenarioError(f"{p}:1:1: the decision file is empty")
    reader = _Reader(p)
    raw = reader.section(root, "", _SCHEMA)
    if reader.missing:
        lines = [
            f"{reader.where(node)}: missing field '{name}'" + (f" ({hint})" if hint else "")
            for name, node, hint in reader.missing
        ]
        raise ScenarioError("\n".join(lines), tuple(name for name, _, _ in reader.missing))
    return _build(reader, root, raw)


def _node_of(root: Node, *keys: str) -> Node:
    """The value node at ``keys`` (for the mark of a cross-check error); the deepest found."""
    node = root
    for key in keys:
        if not isinstance(node, MappingNode):
            return node
        found = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        if found is None:
            return node
        node = found
    return node


def _item_node(root: Node, index: int, *keys: str) -> Node:
    node = _node_of(root, *keys)
    if isinstance(node, SequenceNode) and index < len(node.value):
        return node.value[index]
    return node


def _check_demand(reader: _Reader, root: Node, dem: Mapping[str, Any]) -> None:
    """What the planner's Demand requires beyond each field's own range (turnout.capacity), at
    the field: the diurnal multipliers average 1, the shared prefix is shorter than the prompt."""
    diurnal = dem.get("diurnal")
    if diurnal is not None and abs(sum(diurnal) / 24 - 1) > DIURNAL_MEAN_TOLERANCE:
        reader.fail(
            _node_of(root, "demand", "diurnal"),
            f"'demand.diurnal' must average 1 (multipliers of the mean rate; got "
            f"{sum(diurnal) / 24:g})",
        )
    shared, prompt = dem.get("shared_prefix_tokens", 0), dem.get("input_tokens")
    if prompt is not None and shared >= prompt:
        reader.fail(
            _node_of(root, "demand", "shared_prefix_tokens"),
            f"'demand.shared_prefix_tokens' ({shared}) must be below demand.input_tokens "
            f"({prompt}): the shared prefix is part of the prompt",
        )


def _build(reader: _Reader, root: Node, raw: dict[str, Any]) -> ScenarioFile:
    """The checked file: its values, cross-checked with the routing table it names."""
    if raw["version"] != SCHEMA_VERSION:
        reader.fail(
            _node_of(root, "version"),
            f"unknown version {raw['version']}; this Turnout reads version {SCHEMA_VERSION}",
        )
    table = Path(os.path.normpath(reader.path.parent / raw["table"]))
    try:
        config = turnout.load_config(table)
    except (TurnoutError, OSError) as e:
        reader.fail(_node_of(root, "table"), f"cannot load the routing table: {e}")
    scenario = raw["scenario"]
    if scenario not in config.scenarios:
        reader.fail(
            _node_of(root, "scenario"),
            f"the table {table} has no scenario {scenario!r} "
            f"(scenarios: {', '.join(config.scenarios)})",
        )
    info = config.scenario_info(scenario)

    def known_target(name: str, node: Node, what: str) -> None:
        if name not in config.targets:
            reader.fail(
                node,
                f"{what} {name!r} is not a target of {table} "
                f"(targets: {', '.join(config.targets)})",
            )

    d = raw["data_boundary"]
    if d["data_class"] != info["data_class"]:
        reader.fail(
            _node_of(root, "data_boundary", "data_class"),
            f"data class {d['data_class']!r} disagrees with the table's "
            f"{info['data_class']!r} for {scenario}",
        )
    m = raw["models"]
    for i, name in enumerate(m["candidates"]):
        known_target(name, _item_node(root, i, "models", "candidates"), "candidate")
        if name in m["candidates"][:i]:
            reader.fail(_item_node(root, i, "models", "candidates"), f"candidate {name!r} twice")
    for i, name in enumerate(raw["fallback"]):
        known_target(name, _item_node(root, i, "fallback"), "fallback")
    q = raw["quality_gate"]
    table_rate = info.get("min_accept_rate")
    if table_rate is not None and not math.isclose(float(table_rate), q["min_accept_rate"]):
        reader.fail(
            _node_of(root, "quality_gate", "min_accept_rate"),
            f"min_accept_rate {q['min_accept_rate']:g} disagrees with the table's "
            f"quality_gate {float(table_rate):g} for {scenario}",
        )
    slo = raw.get("slo", {})
    for key, value in slo.items():
        if info.get(key) is None:  # the planner sizes to the table's SLO: never to this one
            reader.fail(
                _node_of(root, "slo", key),
                f"slo.{key} {value}: the table sets no slo.{key} for {scenario} (the table's SLO "
                "is the one routed and planned: set it there)",
            )
        if info[key] != value:
            reader.fail(
                _node_of(root, "slo", key),
                f"slo.{key} {value} disagrees with the table's {info[key]} for {scenario}",
            )
    cache = raw["cache"]
    if "hit_rate_of" in cache:
        known_target(cache["hit_rate_of"], _node_of(root, "cache", "hit_rate_of"), "hit_rate_of")
    if cache["prefix_aware_routing"] != bool(info.get("prefix_affinity")):
        reader.fail(
            _node_of(root, "cache", "prefix_aware_routing"),
            f"prefix_aware_routing {str(cache['prefix_aware_routing']).lower()} disagrees with "
            f"the table's affinity.prefix for {scenario}",
        )
    c = raw.get("cost", {})
    if c.get("utilization") is not None and c["utilization"] < MIN_UTILIZATION:
        reader.fail(
            _node_of(root, "cost", "utilization"),
            f"'cost.utilization' must be at least {MIN_UTILIZATION:f} (costs are computed to "
            f"the millionth of the time; got {c['utilization']:g})",
        )
    cap = raw.get("capacity", {})
    if "performance" in cap and cap["performance"] not in _published_rows():
        reader.fail(
            _node_of(root, "capacity", "performance"),
            f"unknown performance row {cap['performance']!r} (rows: "
            f"{', '.join(_published_rows()) or 'none in this build'})",
        )
    if "performance" in cap:
        gpus = int(_published_rows()[cap["performance"]]["gpus"])
        for name in m["candidates"]:
            cost = config.target_info(name).get("cost")
            if cost and cost["gpus_per_replica"] != gpus:
                reader.fail(
                    _node_of(root, "capacity", "performance"),
                    f"performance row {cap['performance']!r} is measured on {gpus} GPU(s); "
                    f"{name} has {cost['gpus_per_replica']} per replica",
                )
    if "performance" in cap and "throughput" in cap:
        reader.fail(
            _node_of(root, "capacity", "throughput"),
            "give capacity.performance or capacity.throughput, not both",
        )
    if "usd_per_gpu_hour" in c:
        for name in m["candidates"]:
            cost = config.target_info(name).get("cost")
            if cost and Decimal(str(cost["usd_per_gpu_hour"])) != c["usd_per_gpu_hour"]:
                reader.fail(
                    _node_of(root, "cost", "usd_per_gpu_hour"),
                    f"usd_per_gpu_hour {c['usd_per_gpu_hour']} disagrees with the table's "
                    f"{cost['usd_per_gpu_hour']} for {name}",
                )
    mig = raw.get("migration")
    migration = None
    if mig is not None:
        known_target(mig["from"], _node_of(root, "migration", "from"), "migration.from")
        known_target(mig["to"], _node_of(root, "migration", "to"), "migration.to")
        if mig["to"] == mig["from"]:
            reader.fail(
                _node_of(root, "migration", "to"),
                f"migration.to {mig['to']!r} is its own migration.from: nothing moves",
            )
        if mig["to"] not in m["candidates"]:
            reader.fail(
                _node_of(root, "migration", "to"),
                f"migration.to {mig['to']!r} is not one of models.candidates",
            )
        migration = Migration(mig["from"], mig["to"], mig["steps"])
    dem = raw["demand"]
    _check_demand(reader, root, dem)
    return ScenarioFile(
        path=reader.path,
        scenario=scenario,
        table=table,
        config=config,
        owner=raw["owner"],
        description=raw.get("description"),
        data=DataBoundary(d["data_class"], d["may_leave"], d["can_deidentify"]),
        demand=DemandShape(
            mean_rps=dem["mean_rps"],
            peak_to_mean=dem["peak_to_mean"],
            pattern=dem["pattern"],
            urgency=dem["urgency"],
            source=dem["source"],
            input_tokens=dem.get("input_tokens"),
            output_tokens=dem.get("output_tokens"),
            shared_prefix_tokens=dem.get("shared_prefix_tokens", 0),
            diurnal=dem.get("diurnal"),
        ),
        models=Models(tuple(m["candidates"]), m["frontier_required"], m["customization"]),
        cost=CostModel(c.get("utilization"), c.get("usd_per_gpu_hour"), c.get("monthly", {})),
        cache=CacheAssumptions(
            expected_hit_rate=cache["expected_hit_rate"],
            ttl_s=cache["ttl_s"],
            affinity=cache["affinity"],
            prefix_aware_routing=cache["prefix_aware_routing"],
            observed_fields=cache["observed_fields"],
            hit_rate_of=cache.get("hit_rate_of"),
        ),
        capacity=Capacity(
            performance=cap.get("performance"),
            throughput=cap.get("throughput"),
            reserve=cap.get("reserve"),
            pools=cap.get("pools", {}),
        ),
        min_accept_rate=q["min_accept_rate"],
        evals=q["evals"],
        mlops=raw["mlops"],
        fallback=tuple(raw["fallback"]),
        slo=slo,
        migration=migration,
    )


# ---------------------------------------------------------------------------------------------
# The rules table


@dataclass(frozen=True)
class Rule:
    """One row of the rules table: when it fires and where it points."""

    id: str
    when: str
    points_to: str  # maas | self_hosted | maas_or_hybrid | batch | self_hosted_is_early


RULES: tuple[Rule, ...] = (
    Rule(
        "spiky_demand",
        f"demand is spiky (pattern spiky, or peak-to-mean >= {SPIKY_PEAK_TO_MEAN:g})",
        "maas",
    ),
    Rule("frontier_required", "a frontier model is required", "maas"),
    Rule(
        "deidentifiable",
        "the data may not leave as it is, but can be de-identified",
        "maas_or_hybrid",
    ),
    Rule(
        "data_stays_inside",
        "the data may not leave the boundary and cannot be de-identified",
        "self_hosted",
    ),
    Rule(
        "stable_high_volume",
        "demand is stable and its mean load keeps at least one "
        "self-hosted replica busy at the assumed utilization",
        "self_hosted",
    ),
    Rule("not_urgent", "requests can wait (urgency batch)", "batch"),
    Rule(
        "customization_required",
        "the model must be fine-tuned or carry a LoRA adapter",
        "self_hosted",
    ),
    Rule("no_evals_or_mlops", "evals or MLOps do not exist yet", "self_hosted_is_early"),
)
"""The rules, in the order the record lists them (the precedence is :func:`_recommend`'s)."""

_RULE = {r.id: r for r in RULES}


@dataclass(frozen=True)
class RuleResult:
    """One rule on one scenario: fired or not, and the reason in words."""

    rule: Rule
    fired: bool
    reason: str  # why it fired; or why not (or what it could not evaluate)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.rule.id,
            "when": self.rule.when,
            "points_to": self.rule.points_to,
            "fired": self.fired,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Candidate:
    """A model candidate after the data boundary: usable, or why not."""

    target: str
    kind: str
    usable: bool
    why_not: str | None = None


def _candidates(sf: ScenarioFile) -> list[Candidate]:
    out = []
    for name in sf.models.candidates:
        info = sf.config.target_info(name)
        kind = str(info["kind"])
        if sf.data.data_class not in info["data_classes"]:
            why = (
                f"does not accept data class {sf.data.data_class!r} "
                f"(accepts {', '.join(info['data_classes'])})"
            )
        elif kind == "maas" and sf.data.stays_inside:
            why = "a provider: the data may not leave the boundary"
        else:
            why = None
        out.append(Candidate(name, kind, why is None, why))
    return out


def _label(kind: str) -> str:
    """A target kind or recommendation in words: MaaS, self-hosted, hybrid..."""
    return {"maas": "MaaS", "self_hosted": "self-hosted"}.get(kind, kind.replace("_", "-"))


def _self_hosted(sf: ScenarioFile) -> list[str]:
    return [n for n in sf.models.candidates if sf.kind(n) == "self_hosted"]


def _volume(sf: ScenarioFile) -> dict[str, Any] | None:
    """The mean load against one replica's throughput at the assumed utilization, or None when the
    file lacks what it takes."""
    tp = sf.capacity.replica_throughput
    if tp is None or sf.cost.utilization is None or sf.demand.output_tokens is None:
        return None
    mean_tokens_per_s = sf.demand.mean_rps * sf.demand.output_tokens
    replica = tp["output_tokens_per_s"] * sf.cost.utilization
    return {
        "mean_output_tokens_per_s": mean_tokens_per_s,
        "replica_output_tokens_per_s": tp["output_tokens_per_s"],
        "utilization": sf.cost.utilization,
        "replicas_kept_busy": mean_tokens_per_s / replica,
    }


def _evaluate(sf: ScenarioFile, missing: list[str], plan: Any = None) -> list[RuleResult]:
    """Every rule on the file; with the planner's ``plan``, the volume rule uses its break-even
    (sized by simulation) instead of the throughput estimate."""
    d, dem, m = sf.data, sf.demand, sf.models
    shape = f"pattern {dem.pattern}, peak-to-mean {dem.peak_to_mean:g}"
    results = [
        RuleResult(
            _RULE["spiky_demand"],
            dem.spiky,
            f"spiky demand ({shape}): MaaS absorbs the peaks; a pool sized for them idles between"
            if dem.spiky
            else f"demand is stable ({shape})",
        ),
        RuleResult(
            _RULE["frontier_required"],
            m.frontier_required,
            "a frontier model is required: only providers serve one"
            if m.frontier_required
            else "no frontier model is required",
        ),
        RuleResult(
            _RULE["deidentifiable"],
            not d.may_leave and d.can_deidentify,
            "the data may not leave as it is, but de-identified it may: MaaS or hybrid "
            "with de-identified requests"
            if not d.may_leave and d.can_deidentify
            else (
                "the data may leave as it is" if d.may_leave else "the data cannot be de-identified"
            ),
        ),
        RuleResult(
            _RULE["data_stays_inside"],
            d.stays_inside,
            f"data class {d.data_class!r} may not leave the boundary and cannot be "
            "de-identified: only self-hosted targets may serve it (a hard constraint)"
            if d.stays_inside
            else "the data may leave (as it is or de-identified)",
        ),
    ]
    volume = _volume(sf)
    if plan is not None:
        results.append(_volume_by_plan(sf, plan))
    elif volume is None:
        needs = [
            f
            for f in (
                "demand.output_tokens",
                "cost.utilization",
                "capacity.performance or capacity.throughput",
            )
            if f in missing
        ]
        why = (
            "not evaluated: no self-hosted candidate"
            if not _self_hosted(sf)
            else f"not evaluated: needs {', '.join(needs)}"
        )
        results.append(RuleResult(_RULE["stable_high_volume"], False, why))
    else:
        busy = volume["replicas_kept_busy"]
        load = (
            f"the mean load, {volume['mean_output_tokens_per_s']:,.0f} output tokens/s, keeps "
            f"{busy:.2f} replicas of {volume['replica_output_tokens_per_s']:,} tokens/s busy at "
            f"{volume['utilization']:.0%} utilization"
        )
        fired = not dem.spiky and busy >= 1
        results.append(
            RuleResult(
                _RULE["stable_high_volume"],
                fired,
                f"stable high volume: {load} (an estimate: the planner's break-even "
                "replaces it): a pool that stays busy pays for itself"
                if fired
                else (f"demand is spiky: {load}" if dem.spiky else f"low volume: {load}"),
            )
        )
    results += [
        RuleResult(
            _RULE["not_urgent"],
            dem.urgency == "batch",
            "requests can wait: run them deferred, in batches (batch prices, idle pool time)"
            if dem.urgency == "batch"
            else "requests are online",
        ),
        RuleResult(
            _RULE["customization_required"],
            m.customization != "none",
            f"customization required ({m.customization}): the weights must be ours to serve"
            if m.customization != "none"
            else "no customization is required",
        ),
    ]
    lacking = [w for w, ok in (("evals", sf.evals), ("MLOps", sf.mlops)) if not ok]
    results.append(
        RuleResult(
            _RULE["no_evals_or_mlops"],
            bool(lacking),
            f"no {' and no '.join(lacking)} yet: self-hosting is early (no way to prove a model "
            "change or to run a pool)"
            if lacking
            else "evals and MLOps exist",
        )
    )
    return results


def _volume_by_plan(sf: ScenarioFile, plan: Any) -> RuleResult:
    """The volume rule by the planner's break-even against its MaaS target."""
    monthly = sf.demand.mean_rps * SECONDS_PER_MONTH
    be = plan.breakeven_requests_per_month
    if be is None:
        text = f"self-hosted never breaks even with {plan.maas} (the planner, sized by simulation)"
    else:
        text = (
            f"{monthly:,.0f} requests/month against the planner's break-even with {plan.maas}, "
            f"{be:,.0f} (sized by simulation)"
        )
    fired = not sf.demand.spiky and be is not None and monthly >= be
    if fired:
        why = f"stable high volume: {text}: a pool pays for itself"
    else:
        why = f"demand is spiky: {text}" if sf.demand.spiky else f"below the break-even: {text}"
    return RuleResult(_RULE["stable_high_volume"], fired, why)


def _recommend(
    sf: ScenarioFile, fired: Mapping[str, str], candidates: list[Candidate], missing: list[str]
) -> tuple[str, list[str]]:
    """The one recommendation and its reasons. Precedence, first match wins:

    1. missing fields: cannot recommend (nothing is guessed);
    2. the data boundary is a hard constraint and fails closed: data that stays inside goes
       self-hosted, or cannot be recommended (no usable self-hosted candidate, or a frontier
       model required);
    3. requirements: customization needs a self-hosted candidate, a frontier model a MaaS one;
       both at once, or a requirement no usable candidate meets, cannot be recommended;
    4. volume and shape: stable high volume goes self-hosted (hybrid when the data may go out
       de-identified too); spiky demand goes MaaS; otherwise MaaS (no pool to run);
    5. no evals or MLOps: a self-hosted or hybrid answer from step 4 stays on MaaS for now;
    6. requests that can wait: batch (deferred, on the kind step 4 or 5 chose); when the
       boundary or a requirement chose the kind, it stays, and the reasons say to run deferred.
    """
    if missing:
        return "cannot_recommend", [f"missing fields: {', '.join(missing)} (nothing is guessed)"]
    usable = {c.kind for c in candidates if c.usable}
    excluded = [f"{c.target}: {c.why_not}" for c in candidates if not c.usable]
    reasons: list[str] = []
    if "data_stays_inside" in fired:
        if "frontier_required" in fired:
            return "cannot_recommend", [
                "contradictory constraints: a frontier model is required (only providers serve "
                "one) but the data may not leave the boundary"
            ]
        if "self_hosted" not in usable:
            return "cannot_recommend", [
                "contradictory constraints: the data may not leave the boundary, but no "
                "self-hosted candidate may serve it: " + "; ".join(excluded)
            ]
        where, chosen_by = "self_hosted", "boundary"
        reasons.append(fired["data_stays_inside"])
        if "no_evals_or_mlops" in fired:
            reasons.append(
                fired["no_evals_or_mlops"] + "; the boundary leaves no other choice: "
                "build them before the cut-over"
            )
    elif not usable:
        return "cannot_recommend", ["no candidate may serve the scenario: " + "; ".join(excluded)]
    elif "customization_required" in fired or "frontier_required" in fired:
        if "customization_required" in fired and "frontier_required" in fired:
            return "cannot_recommend", [
                "contradictory constraints: a frontier model is required (only providers serve "
                "one) and so is customization of our own weights"
            ]
        need = "self_hosted" if "customization_required" in fired else "maas"
        rule = "customization_required" if need == "self_hosted" else "frontier_required"
        if need not in usable:
            return "cannot_recommend", [
                f"{fired[rule]}, but no usable {_label(need)} candidate"
                + (": " + "; ".join(excluded) if excluded else "")
            ]
        where, chosen_by = need, "requirement"
        reasons.append(fired[rule])
        if need == "maas" and "deidentifiable" in fired:
            reasons.append(fired["deidentifiable"])
        if need == "self_hosted" and "no_evals_or_mlops" in fired:
            reasons.append(
                fired["no_evals_or_mlops"] + "; customization leaves no other "
                "choice: build them before the cut-over"
            )
    else:
        chosen_by = "shape"
        if "stable_high_volume" in fired:
            where = "hybrid" if "deidentifiable" in fired else "self_hosted"
            reasons.append(fired["stable_high_volume"])
            if where == "hybrid":
                reasons.append(
                    fired["deidentifiable"] + ": the pool carries the base load, "
                    "providers the peaks"
                )
        elif "spiky_demand" in fired:
            where = "maas"
            reasons.append(fired["spiky_demand"])
        else:
            where = "maas"
            reasons.append("no rule calls for self-hosting: MaaS, with no pool to run")
            if "deidentifiable" in fired:
                reasons.append(fired["deidentifiable"])
        if where != "maas" and "no_evals_or_mlops" in fired:
            if "maas" in usable:
                reasons.append(
                    fired["no_evals_or_mlops"] + f": stay on MaaS until they exist "
                    f"({_label(where)} when they do)"
                )
                where = "maas"
            else:
                reasons.append(
                    fired["no_evals_or_mlops"] + "; no usable MaaS candidate to wait on: "
                    "build them before the cut-over"
                )
        wanted = {
            "self_hosted": {"self_hosted"},
            "maas": {"maas"},
            "hybrid": {"maas", "self_hosted"},
        }[where]
        if not wanted <= usable:
            only = next(iter(usable))
            reasons.append(
                f"{_label(where)} would fit, but the usable candidates are "
                f"all {_label(only)}" + (": " + "; ".join(excluded) if excluded else "")
            )
            where = only
    if "not_urgent" in fired:
        reasons.append(fired["not_urgent"] + f" on {_label(where)} targets")
        if chosen_by == "shape":
            return "batch", reasons
    return where, reasons


# ---------------------------------------------------------------------------------------------
# Readiness and anti-patterns


READINESS: dict[str, str] = {
    "predictable_demand": "Demand is predictable (measured, not spiky)",
    "quality_measured": "Quality is measured per scenario (evals, a quality gate in the table)",
    "gateway_routes_both": "The gateway routes the scenario to providers and to self-hosted "
    "aliases",
    "fallback_before_migration": "A fallback is defined before the migration",
    "self_hosted_cost_complete": "The self-hosted cost includes every pool and the reserve",
    "people_costs_counted": "Engineering, observability, evals and incidents are counted",
}
"""The readiness checklist: item -> what it asks."""


@dataclass(frozen=True)
class ReadinessItem:
    """One checklist item: ok, or what is missing."""

    item: str
    ok: bool
    missing: tuple[str, ...] = ()
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "asks": READINESS[self.item],
            "ok": self.ok,
            "missing": list(self.missing),
            "note": self.note,
        }


def _monthly_counted(sf: ScenarioFile, target: str) -> dict[str, Decimal]:
    """The monthly items counted for a self-hosted target: the table's, then the file's."""
    cost = sf.config.target_info(target).get("cost") or {}
    items = {k: Decimal(str(v)) for k, v in (cost.get("monthly") or {}).items()}
    items.update(sf.cost.monthly)
    return {k: v for k, v in items.items() if v > 0}


def _pool_of(item: str) -> str | None:
    """The pool a ``cost.monthly`` item prices (``test_debug`` prices the test pool), as the
    planner reads it (turnout.plan.POOL_ITEMS); None for any other item."""
    try:
        from turnout.plan import POOL_ITEMS
    except ImportError:  # the planner is another part of this release
        return item if item in POOLS else None
    return POOL_ITEMS.get(item)


def _pools_counted(sf: ScenarioFile, target: str) -> list[str]:
    priced = {_pool_of(item) for item in _monthly_counted(sf, target)}
    return [p for p in POOLS if sf.capacity.pools.get(p, 0) > 0 or p in priced]


def _route_targets(info: Mapping[str, Any]) -> list[str]:
    names = [r["target"] for r in info["routes"] if r.get("weight", 100) > 0]
    names += list(info.get("fallback") or [])
    if info.get("spillover"):
        names.append(info["spillover"]["target"])
    return names


def _readiness(sf: ScenarioFile) -> list[ReadinessItem]:
    info = sf.info()
    items = []
    missing = []
    if sf.demand.source != "measured":
        missing.append("demand is a forecast, not measured (a trace or the ledger)")
    if sf.demand.spiky:
        missing.append(
            f"demand is spiky (pattern {sf.demand.pattern}, peak-to-mean "
            f"{sf.demand.peak_to_mean:g})"
        )
    items.append(ReadinessItem("predictable_demand", not missing, tuple(missing)))
    missing = []
    if not sf.evals:
        missing.append("no evals of the scenario (quality_gate.evals: false)")
    if info.get("min_accept_rate") is None:
        missing.append(f"the table's scenario {sf.scenario} has no quality_gate.min_accept_rate")
    items.append(ReadinessItem("quality_measured", not missing, tuple(missing)))
    kinds = {sf.kind(t) for t in _route_targets(info)}
    wanted = ("self_hosted",) if sf.data.stays_inside else ("maas", "self_hosted")
    missing = [
        f"the table routes {sf.scenario} to no {_label(k)} target (routes, fallback, spillover)"
        for k in wanted
        if k not in kinds
    ]
    note = "providers are out: the data stays inside" if sf.data.stays_inside else None
    items.append(ReadinessItem("gateway_routes_both", not missing, tuple(missing), note))
    missing = []
    if not sf.fallback:
        missing.append("the decision file names no fallback")
    if not info.get("fallback"):
        missing.append(f"the table's scenario {sf.scenario} has no fallback")
    items.append(ReadinessItem("fallback_before_migration", not missing, tuple(missing)))
    hosted = _self_hosted(sf)
    if not hosted:
        note = "no self-hosted candidate"
        items.append(ReadinessItem("self_hosted_cost_complete", True, note=note))
        items.append(ReadinessItem("people_costs_counted", True, note=note))
        return items
    missing = []
    if not sf.capacity.reserve:
        missing.append("no reserve (capacity.reserve)")
    for target in hosted:
        counted = _pools_counted(sf, target)
        missing += [f"no {p} pool for {target}" for p in POOLS if p not in counted]
    items.append(ReadinessItem("self_hosted_cost_complete", not missing, tuple(missing)))
    missing = [
        f"no {p} cost for {t} (cost.monthly or the table's)"
        for t in hosted
        for p in PEOPLE
        if p not in _monthly_counted(sf, t)
    ]
    items.append(ReadinessItem("people_costs_counted", not missing, tuple(missing)))
    return items


ANTI_PATTERNS: dict[str, str] = {
    "token_price_spreadsheet": "Buying GPUs on a token-price spreadsheet",
    "production_gpus_only": "Counting only production GPUs",
    "migration_without_evals": "Migrating without evals",
    "migration_without_fallback": "Migrating without a fallback",
    "old_cache_hit_rate": "Forecasting a migration's cache savings with the old hit rate",
    "big_bang_switch": "A single big-bang switch, no canary",
    "unobserved_cache": "Counting on cache savings nobody records",
}
"""The anti-patterns :func:`decide` detects: id -> title."""


@dataclass(frozen=True)
class AntiPattern:
    """One anti-pattern detected, with its evidence from the file and the table."""

    id: str
    evidence: tuple[str, ...]

    @property
    def title(self) -> str:
        return ANTI_PATTERNS[self.id]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "evidence": list(self.evidence)}


def _anti_patterns(sf: ScenarioFile, candidates: list[Candidate]) -> list[AntiPattern]:
    found = []
    hosted = _self_hosted(sf)
    if hosted:
        evidence = []
        u = sf.cost.utilization
        if u is not None and u >= SPREADSHEET_UTILIZATION:
            evidence.append(
                f"utilization assumed {u:.0%}: a pool held to a latency SLO at its "
                "peak runs far below that on average"
            )
        for t in hosted:
            if not any(p in _monthly_counted(sf, t) for p in PEOPLE):
                evidence.append(f"{t} is costed as GPU-hours alone: no {', '.join(PEOPLE)}")
        if evidence:
            found.append(AntiPattern("token_price_spreadsheet", tuple(evidence)))
        evidence = [
            f"{t}: no reserve and no {', '.join(POOLS)} pool: only the production "
            "replicas are priced"
            for t in hosted
            if not sf.capacity.reserve and not _pools_counted(sf, t)
        ]
        if evidence:
            found.append(AntiPattern("production_gpus_only", tuple(evidence)))
    mig = sf.migration
    if mig is not None:
        move = f"migration {mig.source} -> {mig.destination}"
        if not sf.evals:
            found.append(
                AntiPattern(
                    "migration_without_evals",
                    (
                        f"{move} with quality_gate.evals: false: nothing shows the destination's "
                        f"answers meet min_accept_rate {sf.min_accept_rate:g}",
                    ),
                )
            )
        evidence = []
        if not sf.fallback:
            evidence.append(f"{move}, and the decision file names no fallback")
        if not sf.info().get("fallback"):
            evidence.append(f"{move}, and the table's {sf.scenario} has no fallback")
        if evidence:
            found.append(AntiPattern("migration_without_fallback", tuple(evidence)))
        if sf.cache.hit_rate_of != mig.destination:
            of = sf.cache.hit_rate_of or "no target named (cache.hit_rate_of)"
            evidence = [
                f"expected_hit_rate {sf.cache.expected_hit_rate:g} describes {of}, not "
                f"the destination {mig.destination}: its cache has its own TTL, prices "
                "and locality"
            ]
            ttl = _cache_ttl(sf, mig.destination)
            if ttl is not None and ttl != sf.cache.ttl_s:
                evidence.append(f"cache.ttl_s {sf.cache.ttl_s} is not {mig.destination}'s {ttl} s")
            found.append(AntiPattern("old_cache_hit_rate", tuple(evidence)))
        if mig.steps[0] > CANARY_MAX_PCT:
            found.append(
                AntiPattern(
                    "big_bang_switch",
                    (
                        f"{move} starts with {mig.steps[0]} % of the traffic (migration.steps "
                        f"{list(mig.steps)}): no canary of at most {CANARY_MAX_PCT} %",
                    ),
                )
            )
    if sf.cache.expected_hit_rate > 0:
        evidence = []
        if "cached_tokens" not in sf.cache.observed_fields:
            evidence.append(
                f"expected_hit_rate {sf.cache.expected_hit_rate:g}, but cached_tokens "
                "is not recorded: the hit rate cannot be checked"
            )
        writers = [c.target for c in candidates if c.usable and _writes_cache(sf, c.target)]
        if writers and "cache_write_tokens" not in sf.cache.observed_fields:
            evidence.append(
                f"{', '.join(writers)} bill cache writes, but cache_write_tokens is not recorded"
            )
        if evidence:
            found.append(AntiPattern("unobserved_cache", tuple(evidence)))
    return found


def _cache_ttl(sf: ScenarioFile, target: str) -> int | None:
    """A provider's prompt-cache TTL (a pool's KV cache keeps blocks by capacity, not by TTL)."""
    info = sf.config.target_info(target)
    cache = info.get("cache") if info["kind"] == "maas" else None
    return None if not cache or cache.get("ttl_s") is None else int(cache["ttl_s"])


def _writes_cache(sf: ScenarioFile, target: str) -> bool:
    price = sf.config.target_info(target).get("price") or {}
    return any(price.get(k) for k in ("cache_write_5m_per_mtok", "cache_write_1h_per_mtok"))


def _conditional_missing(sf: ScenarioFile) -> list[str]:
    """Fields required only because a self-hosted candidate (or a migration) is in the file."""
    missing = []
    if _self_hosted(sf):
        for name, value in (
            ("demand.input_tokens", sf.demand.input_tokens),
            ("demand.output_tokens", sf.demand.output_tokens),
            ("cost.utilization", sf.cost.utilization),
            (
                "capacity.performance or capacity.throughput",
                sf.capacity.performance or sf.capacity.throughput,
            ),
            ("capacity.reserve", sf.capacity.reserve),
        ):
            if value is None:
                missing.append(name)
        missing += [f"capacity.pools.{p}" for p in POOLS if p not in sf.capacity.pools]
    if sf.migration is not None and sf.cache.hit_rate_of is None:
        missing.append("cache.hit_rate_of")
    return missing


# ---------------------------------------------------------------------------------------------
# The record


@dataclass
class DecisionRecord:
    """The decision for one scenario: the recommendation, the rules with their reasons, the
    readiness checklist, the anti-patterns, what is missing, and the planner's cost comparison."""

    scenario: str
    source: str
    table: str
    owner: str
    recommendation: str
    reasons: list[str]
    rules: list[RuleResult]
    candidates: list[Candidate]
    readiness: list[ReadinessItem]
    anti_patterns: list[AntiPattern]
    missing_fields: list[str]
    facts: dict[str, Any]
    plan: Any = None  # turnout.plan.Plan | None
    plan_note: str | None = None  # why there is no plan
    description: str | None = None  # the file's, for people
    cache: dict[str, Any] = field(default_factory=dict)  # the file's cache assumptions, as stated

    @property
    def fired(self) -> list[RuleResult]:
        """The rules that fired."""
        return [r for r in self.rules if r.fired]

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (money as Decimal: dump with ``default=str``)."""
        return {
            "scenario": self.scenario,
            "description": self.description,
            "source": self.source,
            "table": self.table,
            "owner": self.owner,
            "recommendation": self.recommendation,
            "reasons": list(self.reasons),
            "rules": [r.to_json() for r in self.rules],
            "candidates": [
                {"target": c.target, "kind": c.kind, "usable": c.usable, "why_not": c.why_not}
                for c in self.candidates
            ],
            "readiness": [i.to_json() for i in self.readiness],
            "anti_patterns": [a.to_json() for a in self.anti_patterns],
            "missing_fields": list(self.missing_fields),
            "facts": dict(self.facts),
            "cache": dict(self.cache),
            "plan": None if self.plan is None else self.plan.to_json(),
            "plan_note": self.plan_note,
        }

    def to_json_text(self) -> str:
        """:meth:`to_json` as indented JSON text (Decimals as strings)."""
        return json.dumps(self.to_json(), indent=2, default=_json_default)

    def to_markdown(self) -> str:
        """The record as a Markdown page."""
        label = _label(self.recommendation)
        out = [
            f"# Decision record: {self.scenario}",
            "",
            f"- Decision file: `{self.source}`",
            f"- Routing table: `{self.table}`",
            f"- Owner: {self.owner}",
            *([f"- Description: {self.description}"] if self.description else []),
            "",
            f"## Recommendation: **{label}**",
            "",
        ]
        out += [f"- {r}" for r in self.reasons]
        out += ["", "## Rules", "", "| rule | points to | fired | reason |", "|---|---|---|---|"]
        out += [
            f"| {r.rule.id} | {r.rule.points_to} | {'yes' if r.fired else 'no'} | "
            f"{_cell(r.reason)} |"
            for r in self.rules
        ]
        out += [
            "",
            "## Candidates",
            "",
            "| target | kind | usable | why not |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {c.target} | {c.kind} | {'yes' if c.usable else 'no'} | {_cell(c.why_not or '')} |"
            for c in self.candidates
        ]
        out += ["", "## Readiness", "", "| item | ok | missing |", "|---|---|---|"]
        out += [
            f"| {READINESS[i.item]} | {'yes' if i.ok else 'no'} | "
            f"{_cell('; '.join(i.missing) or (i.note or ''))} |"
            for i in self.readiness
        ]
        out += ["", "## Anti-patterns", ""]
        out += [f"- **{a.title}** (`{a.id}`): {'; '.join(a.evidence)}" for a in self.anti_patterns]
        if not self.anti_patterns:
            out.append("None detected.")
        out += ["", "## Missing fields", ""]
        out += [f"- `{f}`" for f in self.missing_fields] or ["None."]
        if self.facts:
            out += ["", "## Facts", ""]
            out += [f"- {k}: {_fact(v)}" for k, v in self.facts.items()]
        if self.cache:
            out += ["", "## Cache assumptions", ""]
            out += [f"- {k}: {_fact(v)}" for k, v in self.cache.items()]
        out += ["", "## Cost comparison", ""]
        if self.plan is None:
            out.append(f"Not run: {self.plan_note}")
        else:  # the planner's page, its headings one level down
            out += [
                "#" + line if line.startswith("#") else line
                for line in self.plan.to_markdown().splitlines()
            ]
        return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fact(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def decide(
    scenario_file: ScenarioFile | str | Path,
    *,
    plan: bool = True,
    seed: int = 0,
    duration_s: float = 600.0,
) -> DecisionRecord:
    """The decision record of a decision file (a path is read with :func:`load_scenario`).

    With ``plan`` (and a usable self-hosted and MaaS candidate, and no missing field) the planner
    prices the options (``turnout.plan.plan``); otherwise ``plan_note`` says why there is none.
    """
    sf = scenario_file if isinstance(scenario_file, ScenarioFile) else load_scenario(scenario_file)
    missing = _conditional_missing(sf)
    candidates = _candidates(sf)
    priced, plan_note = _plan(sf, candidates, missing, plan, seed, duration_s)
    rules = _evaluate(sf, missing, priced)
    fired = {r.rule.id: r.reason for r in rules if r.fired}
    recommendation, reasons = _recommend(sf, fired, candidates, missing)
    if priced is not None:
        reasons.append(
            f"the planner's cost comparison (by cost alone): {priced.recommendation}"
            + (f": {priced.reasons[0]}" if priced.reasons else "")
        )
    facts: dict[str, Any] = {}
    volume = _volume(sf)
    if volume is not None:
        facts.update(volume)
    facts.update(_cost_per_mtok(sf))
    record = DecisionRecord(
        scenario=sf.scenario,
        source=str(sf.path),
        table=str(sf.table),
        owner=sf.owner,
        recommendation=recommendation,
        reasons=reasons,
        rules=rules,
        candidates=candidates,
        readiness=_readiness(sf),
        anti_patterns=_anti_patterns(sf, candidates),
        missing_fields=missing,
        facts=facts,
        plan=priced,
        plan_note=plan_note,
        description=sf.description,
        cache=_cache_assumptions(sf.cache),
    )
    return record


def _cache_assumptions(cache: CacheAssumptions) -> dict[str, Any]:
    """The file's cache section as the record shows it (every field, stated or not)."""
    return {
        "expected_hit_rate": cache.expected_hit_rate,
        "hit_rate_of": cache.hit_rate_of,
        "ttl_s": cache.ttl_s,
        "affinity": cache.affinity,
        "prefix_aware_routing": cache.prefix_aware_routing,
        "observed_fields": list(cache.observed_fields),
    }


def _cost_per_mtok(sf: ScenarioFile) -> dict[str, Any]:
    """Each self-hosted candidate's USD per million output tokens at the assumed utilization."""
    price = getattr(_core, "self_hosted_cost_per_mtok", None)
    tp = sf.capacity.replica_throughput
    if price is None or tp is None or sf.cost.utilization is None:
        return {}
    out = {}
    for t in _self_hosted(sf):
        cost = sf.config.target_info(t).get("cost")
        if cost:
            out[f"usd_per_mtok {t}"] = price(
                cost["gpus_per_replica"],
                cost["usd_per_gpu_hour"],
                tp["output_tokens_per_s"],
                str(sf.cost.utilization),
            )
    return out


def _overheads(sf: ScenarioFile, target: str, table: Any) -> Any:
    """The planner's overheads of `target`: the table's (``table``, an ``Overheads``), then the
    file's reserve, monthly items and pools. A pool the table or the file prices as a monthly
    item stays priced as given; ``capacity.pools`` sets the others in replicas."""
    import dataclasses

    given = dict(table.given_usd)
    override: dict[str, Any] = {"reserve": sf.capacity.reserve}
    for name, usd in sf.cost.monthly.items():
        if name in PEOPLE:
            override[f"{name}_usd"] = usd
        elif usd == 0:  # a file's 0 removes the table's item (the pool is then in replicas)
            given.pop(name, None)
        else:
            given[name] = usd
    priced = {_pool_of(name) for name in given}
    for pool in POOLS:
        override[f"{pool}_replicas"] = 0 if pool in priced else sf.capacity.pools[pool]
    override["given_usd"] = tuple(given.items())
    return dataclasses.replace(table, **override)


def _plan(
    sf: ScenarioFile,
    candidates: list[Candidate],
    missing: list[str],
    wanted: bool,
    seed: int,
    duration_s: float,
) -> tuple[Any, str | None]:
    if not wanted:
        return None, "--no-plan"
    if missing:
        return None, f"missing fields: {', '.join(missing)}"
    hosted = [c.target for c in candidates if c.usable and c.kind == "self_hosted"]
    maas = [c.target for c in candidates if c.usable and c.kind == "maas"]
    if not hosted or not maas:
        return None, "the comparison needs a usable self-hosted and a usable MaaS candidate"
    try:
        from turnout import plan as planner
        from turnout.capacity import Demand
    except ImportError as e:  # the planner is another part of this release
        return None, f"the planner is not in this build ({e})"
    d = sf.demand
    target = hosted[0]
    try:  # the loader checked what these need: a refusal here is the planner's, in the note
        demand = Demand(
            mean_rps=d.mean_rps,
            peak_to_mean=d.peak_to_mean,
            diurnal=d.diurnal,
            input_tokens=d.input_tokens,
            output_tokens=d.output_tokens,
            shared_prefix_tokens=d.shared_prefix_tokens,
        )
        overheads = _overheads(sf, target, planner.Overheads.from_target(sf.config, target))
        result = planner.plan(
            sf.config,
            sf.scenario,
            self_hosted=target,
            maas=maas[0],
            demand=demand,
            models={target: {"throughput": dict(sf.capacity.replica_throughput)}},
            overheads=overheads,
            seed=seed,
            duration_s=duration_s,
        )
    except TurnoutError as e:
        return None, f"the planner: {e}"
    return result, None
