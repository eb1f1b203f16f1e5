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
    bundled = (resources.files("turnout") / "examples" / "routing.yaml").read_text(
        encoding="utf-8"
    )
    assert bundled == (REPO / "examples" / "routing.yaml").read_text(encoding="utf-8")


def test_version_is_written_once() -> None:
    # (tomllib is 3.11+, the package supports 3.10: read the one [project] version line directly)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert match, "no version in [project]"
    declared = match.group(1)
    assert turnout.__version__ == declared
    assert importlib.metadata.version("turnout") == declared


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (turnout.ConfigError, ValueError),
        (turnout.InvalidArgumentError, ValueError),
        (turnout.UsageError, ValueError),
        (turnout.TargetNotAllowedError, ValueError),
        (turnout.PriceMissingError, ValueError),
        (turnout.UnknownScenarioError, KeyError),
        (turnout.UnknownTargetError, KeyError),
        (turnout.UnknownDecisionError, KeyError),
        (turnout.NoEligibleTargetError, RuntimeError),
        (turnout.BudgetExhaustedError, turnout.NoEligibleTargetError),
    ],
)
def test_errors_subclass_builtins(error: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(error, builtin)
    assert issubclass(error, turnout.TurnoutError)


def test_config_error_is_caught_as_value_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r":1:1: the routing table is empty"):
        turnout.load_config(path)


def test_key_errors_print_their_message() -> None:
    # KeyError's str() is the repr of its argument; ours print the message as given.
    assert str(turnout.UnknownScenarioError("unknown scenario 'x'")) == "unknown scenario 'x'"
