"""Shared fixtures: the bundled example routing table, builders for small tables on disk, and the
real daemon (its own socket dir, shm name, config per test; every daemon is killed at the end)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import turnout
from daemon import Sidecar
from support import config_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def example_path() -> Path:
    """examples/routing.yaml of the repository."""
    path = REPO / "examples" / "routing.yaml"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def example_config(example_path: Path) -> turnout.Config:
    return turnout.load_config(example_path)


@pytest.fixture
def example_router(example_config: turnout.Config) -> turnout.Router:
    return turnout.Router(example_config, seed=0)


def _make_config(tmp_path: Path, name: str = "routing.yaml", **overrides: Any) -> Path:
    """Writes the minimal valid routing table of support.base_config(), deep-merged with `overrides`
    (support.DELETE removes a key), to tmp_path/name and returns its path."""
    path = tmp_path / name
    path.write_text(config_text(**overrides), encoding="utf-8")
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """``make_config(**overrides) -> Path``: a routing table file in this test's tmp_path."""

    def build(**overrides: Any) -> Path:
        return _make_config(tmp_path, **overrides)

    return build


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[[str], Path]:
    """``write_yaml(text) -> Path``: hand-written YAML text as a file in this test's tmp_path."""

    def write(text: str, name: str = "routing.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def make_router(make_config: Callable[..., Path]) -> Callable[..., turnout.Router]:
    """``make_router(seed=0, decision_ttl_s=3600, max_pending=None, **overrides) -> Router``."""

    def build(
        *,
        seed: int = 0,
        decision_ttl_s: float = 3600.0,
        max_pending: int | None = None,
        **overrides: Any,
    ) -> turnout.Router:
        config = turnout.load_config(make_config(**overrides))
        kwargs: dict[str, Any] = {"seed": seed, "decision_ttl_s": decision_ttl_s}
        if max_pending is not None:
            kwargs["max_pending"] = max_pending
        return turnout.Router(config, **kwargs)

    return build


# -- the real daemon (tests/python/daemon.py) ----------------------------------------------------


@pytest.fixture(autouse=True, scope="session")
def _private_state_home() -> Iterator[None]:
    """A daemon a test starts without --state-dir keeps its state here, never in ~/.local/state."""
    d = tempfile.mkdtemp(prefix="turnout-state-")
    keep = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "STATE_DIRECTORY")}
    os.environ["XDG_STATE_HOME"] = d
    os.environ.pop("STATE_DIRECTORY", None)
    yield
    for k, v in keep.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short paths: an ipc:// socket path must fit in sun_path (108 bytes).
    d = Path(tempfile.mkdtemp(prefix="sy-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shm_name() -> Iterator[str]:
    name = f"sy-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    for p in Path("/dev/shm").glob(f"{name}*"):  # the segment, its lock, rings and table segments
        p.unlink(missing_ok=True)


@pytest.fixture
def config_path(workdir: Path) -> Path:
    path = workdir / "routing.yaml"
    shutil.copy(REPO / "examples" / "routing.yaml", path)
    return path


@pytest.fixture
def sidecars(workdir: Path, config_path: Path, shm_name: str) -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for s in started:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=10)


@pytest.fixture
def sidecar(sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str) -> Sidecar:
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    return s.start()
