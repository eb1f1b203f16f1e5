"""Errors as users meet them: each failure raises the class of its code (turnout._errors), which
subclasses the built-in a user would catch. Shared-memory segments are real files in /dev/shm."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import turnout
from turnout import _core

SHM = Path("/dev/shm")
NOBODY = 65534
_names = itertools.count()


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A segment name of this test; whatever it planted under it is removed afterwards."""
    name = f"turnout-pytest-errors-{os.getpid()}-{next(_names)}"
    yield name
    for path in SHM.glob(f"{name}*"):
        path.unlink()


def plant(name: str, mode: int, data: bytes = b"\x5a" * 4096) -> Path:
    """A segment file `name` holding `data`, with exactly `mode` (whatever the umask)."""
    path = SHM / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


ATTACHES: dict[str, Callable[[str], object]] = {
    "attach": turnout.attach,
    "fast_path": _core.attach_fast_path,
}


@pytest.mark.parametrize("attach", list(ATTACHES.values()), ids=list(ATTACHES))
def test_a_missing_segment_is_file_not_found(
    attach: Callable[[str], object], shm_name: str
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        attach(shm_name)
    assert isinstance(info.value, turnout.NotFoundError)
    assert info.value.code == "not_found"
    assert str(info.value) == (
        f"shared-memory segment '{shm_name}': cannot open: No such file or directory"
    )


@pytest.mark.parametrize("attach", list(ATTACHES.values()), ids=list(ATTACHES))
def test_a_segment_of_another_layout_is_incompatible(
    attach: Callable[[str], object], shm_name: str
) -> None:
    plant(shm_name, 0o600)  # private to us, but no Turnout magic
    with pytest.raises(turnout.IncompatibleLayoutError) as info:
        attach(shm_name)
    assert info.value.code == "incompatible_layout"
    assert isinstance(info.value, turnout.SidecarError)
    assert f"cannot read shared-memory segment '{shm_name}': it is not a Turnout segment" in str(
        info.value
    )


@pytest.mark.parametrize("attach", list(ATTACHES.values()), ids=list(ATTACHES))
def test_a_segment_others_can_write_is_refused(
    attach: Callable[[str], object], shm_name: str
) -> None:
    plant(shm_name, 0o666)
    with pytest.raises(PermissionError) as info:
        attach(shm_name)
    assert isinstance(info.value, turnout.PermissionDeniedError)
    assert info.value.code == "permission_denied"
    assert (
        f"/dev/shm/{shm_name} (owner uid {os.geteuid()}, mode 0666) is open to other users"
        in str(info.value)
    )


@pytest.mark.parametrize("attach", list(ATTACHES.values()), ids=list(ATTACHES))
def test_a_segment_of_another_user_is_refused(
    attach: Callable[[str], object], shm_name: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a segment to uid 65534")
    os.chown(plant(shm_name, 0o600), NOBODY, NOBODY)
    with pytest.raises(PermissionError) as info:
        attach(shm_name)
    assert info.value.code == "permission_denied"
    assert f"/dev/shm/{shm_name} (owner uid {NOBODY}, mode 0600) belongs to another user" in str(
        info.value
    )


def test_a_client_without_its_fast_path_says_why(shm_name: str) -> None:
    # The fast path is an optimisation: a Client without its segment keeps the socket, says why.
    with turnout.Client("ipc:///nonexistent/turnout.sock", shm=shm_name, timeout_ms=10) as c:
        assert c.fast_path_error == (
            f"shared-memory segment '{shm_name}': cannot open: No such file or directory"
        )


def test_an_invalid_segment_name_is_an_invalid_argument() -> None:
    with pytest.raises(ValueError, match="invalid shared-memory name") as info:
        turnout.attach("../etc/passwd")
    assert isinstance(info.value, turnout.InvalidArgumentError)
    assert info.value.code == "invalid_argument"


def test_kv_events_without_publishers_is_an_invalid_argument(
    make_router: Callable[..., turnout.Router],
) -> None:
    with pytest.raises(turnout.InvalidArgumentError, match="names a kv_events publisher"):
        make_router().subscribe_kv_events()


def test_python_only_codes_are_not_core_codes_and_each_class_carries_its_own() -> None:
    from turnout import _errors

    core = _core.error_codes()
    for code, cls in _errors.PYTHON_ERRORS.items():
        assert code not in core
        assert code not in _errors.ERRORS
        assert cls.code == code
        assert cls(f"x {code}").code == code
        assert cls.__name__ in turnout.__all__
