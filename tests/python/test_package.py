"""The package as users import it: exports, typing, exception classes, version, bundled files."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from importlib import resources
from pathlib import Path

import pytest

import turnout
from turnout import _core, _errors

REPO = Path(__file__).resolve().parents[2]


def test_all_names_exist() -> None:
    assert turnout.__all__, "empty __all__"
    missing = [name for name in turnout.__all__ if not hasattr(turnout, name)]
    assert missing == []
    assert len(set(turnout.__all__)) == len(turnout.__all__)


def test_every_public_error_is_exported() -> None:
    errors = {
        name
        for name, value in vars(_errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert errors <= set(turnout.__all__)


def test_py_typed_ships() -> None:
    assert (resources.files("turnout") / "py.typed").is_file()


def test_core_stub_ships() -> None:
    # STYLE.md 1: the private binding is re-exported "with __all__, a .pyi stub and py.typed";
    # without a
    # stub, type checkers see turnout._core (Router, Config, Decision) as Any.
    package = resources.files("turnout")
    assert (package / "_core.pyi").is_file() or (package / "_core" / "__init__.pyi").is_file()


def test_core_stub_matches_the_module() -> None:
    stub = ast.parse((resources.files("turnout") / "_core.pyi").read_text(encoding="utf-8"))
    stubbed: dict[str, set[str]] = {}
    for node in stub.body:
        if isinstance(node, ast.ClassDef):
            stubbed[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, ast.FunctionDef):
            stubbed[node.name] = set()
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed[node.target.id] = set()
    runtime = {name for name in dir(_core) if not name.startswith("_") or name == "__version__"}
    assert runtime <= set(stubbed), f"missing from the stub: {sorted(runtime - set(stubbed))}"
    for name, members in stubbed.items():
        assert hasattr(_core, name), f"the stub declares {name}, the module lacks it"
        if members:
            cls = getattr(_core, name)
            public = {m for m in dir(cls) if not m.startswith("_")}
            assert public <= members, f"{name}: missing from the stub: {sorted(public - members)}"
            assert all(hasattr(cls, m) for m in members), (
                f"{name}: stub declares members the class lacks"
            )


def test_bundled_example_matches_the_repository() -> None:
    bundled = (resources.files("turnout") / "examples" / "routing.yaml").read_text(encoding="utf-8")
    assert bundled == (REPO / "examples" / "routing.yaml").read_text(encoding="utf-8")


def test_bundled_demo_tables_match_the_repository() -> None:
    # `turnout demo` replays the notebooks' policy tables and decides the bundled scenario files.
    examples = resources.files("turnout") / "examples"
    for name in ("maas_only", "self_hosted_only", "hybrid"):
        bundled = (examples / "policies" / f"{name}.yaml").read_text(encoding="utf-8")
        assert bundled == (REPO / "notebooks" / "policies" / f"{name}.yaml").read_text("utf-8")
    for path in sorted((REPO / "examples" / "scenarios").glob("*.yaml")):
        bundled = (examples / "scenarios" / path.name).read_text(encoding="utf-8")
        assert bundled == path.read_text(encoding="utf-8")


def test_version_is_written_once() -> None:
    # (tomllib is 3.11+, the package supports 3.10: read the one [project] version line directly)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert match, "no version in [project]"
    declared = match.group(1)
    assert turnout.__version__ == declared
    assert importlib.metadata.version("turnout") == declared


# Every code of the core's table (kErrorCodes) -> the built-in its class must subclass, so users'
# `except` clauses keep working. A code added to the table without a decision here fails below.
BUILTIN_OF_CODE: dict[str, type[Exception]] = {
    "config_invalid": ValueError,
    "unknown_scenario": KeyError,
    "unknown_target": KeyError,
    "no_eligible_target": RuntimeError,
    "budget_exhausted": RuntimeError,
    "invalid_argument": ValueError,
    "unknown_decision": KeyError,
    "target_not_allowed": ValueError,
    "usage_invalid": ValueError,
    "price_missing": ValueError,
    "unavailable": ConnectionError,
    "not_found": FileNotFoundError,
    "io_error": OSError,
    "permission_denied": PermissionError,
    "busy": RuntimeError,
    "incompatible_layout": RuntimeError,
    "bad_message": ValueError,
    "unknown_op": ValueError,
    "too_large": ValueError,
    "too_deep": ValueError,
    "no_migration": KeyError,
    "migration_conflict": RuntimeError,
    "internal": RuntimeError,
}


def test_every_core_error_code_has_one_class() -> None:
    table = _core.error_codes()
    assert list(table) == list(_errors.ERRORS), "ERRORS must list kErrorCodes, in its order"
    assert set(BUILTIN_OF_CODE) == set(table)
    assert all(what for what in table.values()), "every code says what it means"


@pytest.mark.parametrize("code", list(BUILTIN_OF_CODE))
def test_each_code_raises_its_class(code: str) -> None:
    cls = _errors.ERRORS[code]
    assert issubclass(cls, BUILTIN_OF_CODE[code])
    assert issubclass(cls, turnout.TurnoutError)
    assert cls.__name__ in turnout.__all__
    error = _errors.error_for(code, "what went wrong")
    assert type(error) is cls
    assert error.code == code
    assert str(error) == "what went wrong"  # KeyError and OSError subclasses too


def test_the_protocol_codes_share_a_class_and_say_which() -> None:
    protocol = ("bad_message", "unknown_op", "too_large", "too_deep")
    assert {_errors.ERRORS[c] for c in protocol} == {turnout.ProtocolError}
    assert [_errors.error_for(c, "m").code for c in protocol] == list(protocol)
    assert turnout.ProtocolError.code is None  # one class, four codes: the instance says which


def test_a_class_of_one_code_carries_it_when_raised_directly() -> None:
    assert turnout.InvalidArgumentError("x").code == "invalid_argument"
    assert turnout.SidecarUnavailableError("x").code == "unavailable"


def test_an_unknown_wire_code_is_a_sidecar_error_with_that_code() -> None:
    error = _errors.error_for("from_a_newer_sidecar", "m")
    assert type(error) is turnout.SidecarError
    assert error.code == "from_a_newer_sidecar"


def test_budget_exhausted_is_a_no_eligible_target() -> None:
    assert issubclass(turnout.BudgetExhaustedError, turnout.NoEligibleTargetError)


def test_config_error_is_caught_as_value_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r":1:1: the routing table is empty"):
        turnout.load_config(path)


def test_key_errors_print_their_message() -> None:
    # KeyError's str() is the repr of its argument; ours print the message as given.
    assert str(turnout.UnknownScenarioError("unknown scenario 'x'")) == "unknown scenario 'x'"
