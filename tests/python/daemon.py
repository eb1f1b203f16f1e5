"""The real turnout-sidecar as tests start it: one daemon process with its own socket, shm name,
metrics port and log, and the fixtures' building blocks (conftest.py turns them into fixtures)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import turnout

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sidecar:
    """One daemon process with its own socket dir, shm name and metrics port."""

    def __init__(self, workdir: Path, config: Path, shm: str) -> None:
        self.workdir = workdir
        self.config = config
        self.shm = shm
        self.endpoint = f"ipc://{workdir / 's.sock'}"
        self.metrics_port = free_port()
        self.state_dir = workdir / "state"  # never the user's ~/.local/state
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def command(self, *extra: str) -> list[str]:
        """The daemon's argv (a subclass may wrap it, e.g. in another mount namespace)."""
        return [
            turnout._sidecar_path(),
            str(self.config),
            "--endpoint",
            self.endpoint,
            "--shm",
            self.shm,
            "--state-dir",
            str(self.state_dir),
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            "--foreground",
            *extra,
        ]

    def start(self, *extra: str, wait: bool = True) -> Sidecar:
        log = self.workdir / f"sidecar-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as f:
            self.proc = subprocess.Popen(self.command(*extra), stdout=subprocess.DEVNULL, stderr=f)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        with turnout.Client(self.endpoint, timeout_ms=200, retry_after_s=0) as c:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"sidecar exited: {self.log()}")
                try:
                    c.health()
                    return
                except turnout.SidecarUnavailableError:
                    time.sleep(0.02)
        raise AssertionError(f"sidecar not ready in {STARTUP_S} s: {self.log()}")

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def client(self, **kwargs: Any) -> turnout.Client:
        kwargs.setdefault("timeout_ms", 2000)
        return turnout.Client(self.endpoint, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
