"""The config file watch (issue 10, class 8), against the real daemon: a file being written is not
loaded until its writer closed it (or it was renamed into place) and it held still, so a valid
prefix of the new table is never served."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import turnout
from daemon import Sidecar

LATE = """
  late-scenario:
    description: Added by the new table, after the moved one.
    owner: platform
    data_class: public
    routes: [{target: gpt-4.1-mini}]
"""


def split_table(text: str) -> tuple[str, str]:
    """The example table with agent-assist moved to the end and a new scenario after it: the first
    part alone is a valid table that lacks agent-assist (the old one has it)."""
    start = text.index("\n  agent-assist:")
    # agent-assist is the last scenario of the example: everything from its header on is its block.
    assert "\n  " not in text[start + 1 :].replace("\n    ", "")
    head, block = text[:start] + "\n", text[start + 1 :]
    return head, block.rstrip("\n") + "\n" + LATE


def routes_without_unknown_scenarios(
    s: Sidecar, stop: threading.Event, errors: list[str], count: list[int]
) -> None:
    with s.client(timeout_ms=2000, retry_after_s=0) as c:
        while not stop.is_set():
            try:
                c.explain("agent-assist", key="k", input_tokens=10)
                count[0] += 1
            except turnout.UnknownScenarioError as e:
                errors.append(str(e))
            time.sleep(0.01)


def test_a_file_written_in_two_halves_is_loaded_only_when_complete(
    sidecar: Sidecar, config_path: Path
) -> None:
    head, tail = split_table(config_path.read_text())
    turnout.load_config_text(head)  # the prefix alone is a valid table: the old watch loaded it
    turnout.load_config_text(head + tail)
    stop = threading.Event()
    errors: list[str] = []
    count = [0]
    worker = threading.Thread(
        target=routes_without_unknown_scenarios, args=(sidecar, stop, errors, count)
    )
    worker.start()
    try:
        with config_path.open("w") as f:  # an in-place write, as a slow copy or an editor does it
            f.write(head)
            f.flush()
            os.fsync(f.fileno())
            time.sleep(1.5)  # far longer than any settling interval
            assert not errors, errors
            f.write(tail)
        deadline = time.monotonic() + 5
        with sidecar.client() as c:
            while time.monotonic() < deadline:
                try:
                    c.explain("late-scenario", key="k", input_tokens=10)
                    break
                except turnout.UnknownScenarioError:
                    time.sleep(0.05)
            else:
                raise AssertionError(f"the complete table was not loaded: {sidecar.log()}")
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not errors, f"{len(errors)} requests saw an unknown scenario: {errors[:3]}"
    assert count[0] > 50
    assert "file change: reloaded" in sidecar.log()


def test_an_atomic_replace_is_loaded(sidecar: Sidecar, config_path: Path) -> None:
    head, tail = split_table(config_path.read_text())
    tmp = config_path.with_name(".routing.yaml.tmp")
    tmp.write_text(head + tail)
    os.replace(tmp, config_path)  # the documented way: write a temp file, rename it into place
    deadline = time.monotonic() + 5
    with sidecar.client() as c:
        while time.monotonic() < deadline:
            try:
                c.explain("late-scenario", key="k", input_tokens=10)
                return
            except turnout.UnknownScenarioError:
                time.sleep(0.05)
    raise AssertionError(f"the replaced table was not loaded: {sidecar.log()}")


def test_a_file_held_open_for_writing_is_not_loaded(sidecar: Sidecar, config_path: Path) -> None:
    head, _ = split_table(config_path.read_text())
    with config_path.open("w") as f:
        f.write(head)
        f.flush()
        time.sleep(1.0)
        with sidecar.client() as c:
            c.explain("agent-assist", key="k", input_tokens=10)  # the old table still serves
        assert "file change" not in sidecar.log()
    # Closed now: the prefix is a complete file of its own and is loaded (nothing says otherwise).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "file change: reloaded" not in sidecar.log():
        time.sleep(0.05)
    assert "file change: reloaded" in sidecar.log()
