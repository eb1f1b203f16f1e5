"""The wire protocol's one definition (cpp/turnout/protocol.hpp, seen as turnout._core.protocol)
and its document (docs/protocol.md) say the same thing: every op, error code and field is there."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

import pytest

from turnout import _core
from turnout._core import protocol

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section (up to the next ``## ``)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_module_has_the_interface_clients_use() -> None:
    assert protocol.VERSION == 1
    assert protocol.MAX_MESSAGE_BYTES == 8 << 20
    assert protocol.OPS == (
        "route",
        "explain",
        "report",
        "verdict",
        "adopt",
        "stats",
        "health",
        "reload",
        "settle_local",
        "migration",
    )
    assert protocol.RING_OPS == ("report", "verdict", "adopt")
    assert set(protocol.RING_OPS) <= set(protocol.OPS)
    assert protocol.FIELD.decision_id == "decision_id"
    for name in ("v", "op", "id", "ok", "error", "code", "message"):
        assert getattr(protocol.FIELD, name) == name
    fields = list(protocol.FIELD)
    assert len(fields) == len(set(fields))
    assert all(getattr(protocol.FIELD, f) == f for f in fields)
    with pytest.raises(AttributeError):
        protocol.FIELD.decision_id = "id"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        protocol.FIELD.not_a_field  # noqa: B018
    assert isinstance(protocol.ERROR_CODES, dict)
    assert {"bad_message", "unknown_op", "too_large", "too_deep", "internal"} <= set(
        protocol.ERROR_CODES
    )
    assert all(isinstance(v, str) and v for v in protocol.ERROR_CODES.values())


def test_the_submodule_imports_by_its_dotted_name() -> None:
    from turnout._core.protocol import FIELD  # type: ignore[import-not-found]

    assert FIELD is _core.protocol.FIELD


def test_every_op_has_its_section(doc: str) -> None:
    missing = [op for op in protocol.OPS if f"\n### `{op}`\n" not in doc]
    assert missing == []
    ring = _section(doc, "The fast path's ring records")
    assert all(f"`{op}`" in ring for op in protocol.RING_OPS)


def test_every_error_code_is_in_the_table_with_its_meaning(doc: str) -> None:
    rows = dict(
        re.findall(r"^\| `([a-z_]+)` \| (.+?) \|$", _section(doc, "Error codes"), re.MULTILINE)
    )
    assert rows == protocol.ERROR_CODES


def test_every_field_is_documented(doc: str) -> None:
    missing = [f for f in protocol.FIELD if f"`{f}`" not in doc]
    assert missing == []


def test_the_limits_and_the_version_are_the_documented_ones(doc: str) -> None:
    limits = _section(doc, "Messages")
    assert f"| message size | {protocol.MAX_MESSAGE_BYTES >> 20} MiB" in limits
    assert f"`v` is `{protocol.VERSION}`" in limits


def test_the_stub_lists_exactly_the_fields() -> None:
    stub = ast.parse((resources.files("turnout") / "_core.pyi").read_text(encoding="utf-8"))
    module = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "protocol")
    wire = next(n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "WireFields")
    properties = {
        n.name for n in wire.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
    }
    assert properties == set(protocol.FIELD)
    declared = {
        n.target.id
        for n in module.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    runtime = {n for n in dir(protocol) if n.isupper()}
    assert declared == runtime
