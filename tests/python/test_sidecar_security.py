"""The turnout-sidecar daemon's access control and config watch, started for real: ZeroMQ CURVE
with a ZAP allow-list for tcp:// binds, and reload when the routing table file changes.

The clients here speak the wire protocol with pyzmq directly (turnout.Client has no CURVE
parameters yet): one msgpack map ``{v: 1, op, id}`` per request on a DEALER socket.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import turnout

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 10.0
SILENCE_MS = 600  # how long a refused client waits for a reply that must not come
_ids = itertools.count(1)

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Keypair:
    public: bytes  # Z85
    secret: bytes  # Z85

    @staticmethod
    def new() -> Keypair:
        public, secret = zmq.curve_keypair()
        return Keypair(public, secret)


def request(
    endpoint: str,
    op: str = "health",
    *,
    server: bytes | None = None,
    client: Keypair | None = None,
    timeout_ms: int = 2000,
) -> dict[str, Any] | None:
    """One request on a fresh DEALER (a CURVE client when `server` is given); None on no reply."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 0)
        if server is not None:
            assert client is not None
            s.curve_serverkey = server
            s.curve_publickey = client.public
            s.curve_secretkey = client.secret
        s.connect(endpoint)
        rid = next(_ids)
        s.send(msgpack.packb({"v": 1, "op": op, "id": rid}))
        if not s.poll(timeout_ms, zmq.POLLIN):
            return None
        reply = msgpack.unpackb(s.recv(), raw=False)
        assert reply["id"] == rid
        return reply
    finally:
        s.close(linger=0)


class Daemon:
    """One turnout-sidecar in the foreground, its stderr in a file."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.shm = f"sy-sec-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"sidecar-{self.shm}.log"

    def start(self, endpoint: str, *extra: str) -> Daemon:
        argv = [turnout._sidecar_path(), str(self.config), "--endpoint", endpoint]
        argv += ["--shm", self.shm, "--foreground", *extra]
        with self.log_path.open("wb") as f:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f)
        return self

    def wait_ready(self, endpoint: str, **curve: Any) -> dict[str, Any]:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited: {self.log()}")
            reply = request(endpoint, timeout_ms=200, **curve)
            if reply is not None:
                assert reply["ok"], reply
                return reply
        raise AssertionError(f"sidecar not ready in {STARTUP_S} s: {self.log()}")

    def exit_line(self) -> str:
        """For a daemon that must refuse to start: its exit status is 1 and it said one line."""
        assert self.proc is not None
        assert self.proc.wait(timeout=STARTUP_S) == 1
        lines = self.log().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for p in Path("/dev/shm").glob(f"{self.shm}*"):  # segment, lock, rings, table slots
            p.unlink(missing_ok=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sy-", dir="/tmp"))  # short: ipc paths must fit sun_path
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def config_path(workdir: Path) -> Path:
    path = workdir / "routing.yaml"
    shutil.copy(REPO / "examples" / "routing.yaml", path)
    return path


@pytest.fixture
def daemons(workdir: Path, config_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemons: list[Daemon], workdir: Path, config_path: Path) -> Daemon:
    d = Daemon(workdir, config_path)
    daemons.append(d)
    return d


@dataclass
class Keys:
    server: Keypair
    client: Keypair
    secret_file: Path
    authorized_file: Path

    def args(self) -> tuple[str, ...]:
        return (
            "--curve-secret-key",
            str(self.secret_file),
            "--curve-authorized-keys",
            str(self.authorized_file),
        )


@pytest.fixture
def keys(workdir: Path) -> Keys:
    server, client = Keypair.new(), Keypair.new()
    secret_file = workdir / "server.key"
    secret_file.write_bytes(b"# turnout-sidecar CURVE secret key\n" + server.secret + b"\n")
    secret_file.chmod(0o600)
    authorized_file = workdir / "authorized_keys"
    authorized_file.write_bytes(
        b"# clients allowed in\n\n" + client.public + b" worker-1\n#" + Keypair.new().public + b"\n"
    )
    authorized_file.chmod(0o644)
    return Keys(server, client, secret_file, authorized_file)


def _tcp(host: str = "127.0.0.1") -> tuple[str, str]:
    """(bind endpoint, connect endpoint) on a free port."""
    port = _free_port()
    return f"tcp://{host}:{port}", f"tcp://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------ CURVE


def test_only_authorized_curve_clients_get_answers(daemon: Daemon, keys: Keys) -> None:
    bind, connect = _tcp()
    daemon.start(bind, *keys.args())
    curve = {"server": keys.server.public, "client": keys.client}
    health = daemon.wait_ready(connect, **curve)
    assert health["status"] == "serving"
    assert f"server public key {keys.server.public.decode()}" in daemon.log()

    stranger = Keypair.new()
    assert (
        request(connect, server=keys.server.public, client=stranger, timeout_ms=SILENCE_MS) is None
    )
    assert request(connect, timeout_ms=SILENCE_MS) is None  # plain ZeroMQ, no CURVE
    # The right client key against another server key fails the handshake too.
    wrong_server = Keypair.new().public
    assert request(connect, server=wrong_server, client=keys.client, timeout_ms=SILENCE_MS) is None

    reply = request(connect, "stats", **curve)
    assert reply is not None
    assert reply["ok"]
    log = daemon.log()
    assert f"denied client key {stranger.public.decode()}" in log
    # A refused peer retries its handshake: its key is logged once, not once per attempt.
    assert (
        request(connect, server=keys.server.public, client=stranger, timeout_ms=SILENCE_MS) is None
    )
    assert daemon.log().count(stranger.public.decode()) == 1


def test_the_client_speaks_curve(daemon: Daemon, keys: Keys) -> None:
    bind, connect = _tcp()
    daemon.start(bind, *keys.args())
    daemon.wait_ready(connect, server=keys.server.public, client=keys.client)
    with turnout.Client(
        connect,
        timeout_ms=2000,
        curve_server_key=keys.server.public.decode(),
        curve_secret_key=keys.client.secret,
    ) as c:
        d = c.route("contract-extraction", input_tokens=100)
        usage = {"prompt_tokens": 100, "completion_tokens": 20}
        receipt = c.report(d.id, target=d.target, status="ok", usage=usage)
        assert receipt is not None
        assert receipt["priced"]
    stranger = Keypair.new()
    with (
        turnout.Client(
            connect,
            timeout_ms=SILENCE_MS,
            retry_after_s=0,
            curve_server_key=keys.server.public,
            curve_secret_key=stranger.secret,
        ) as c,
        pytest.raises(turnout.SidecarUnavailableError),
    ):
        c.health()
    with pytest.raises(turnout.InvalidArgumentError):
        turnout.Client(connect, curve_server_key=keys.server.public)
    with pytest.raises(turnout.InvalidArgumentError):
        turnout.Client(connect, curve_server_key=b"short", curve_secret_key=b"short")


def test_sighup_rereads_the_authorized_keys(daemon: Daemon, keys: Keys) -> None:
    bind, connect = _tcp()
    daemon.start(bind, *keys.args())
    daemon.wait_ready(connect, server=keys.server.public, client=keys.client)
    newcomer = Keypair.new()
    assert (
        request(connect, server=keys.server.public, client=newcomer, timeout_ms=SILENCE_MS) is None
    )

    keys.authorized_file.write_bytes(newcomer.public + b"\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "SIGHUP: 1 authorized client keys" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert request(connect, server=keys.server.public, client=newcomer) is not None
    # The old key is out: a new connection with it is refused.
    assert (
        request(connect, server=keys.server.public, client=keys.client, timeout_ms=SILENCE_MS)
        is None
    )

    # A broken file keeps the keys in force.
    keys.authorized_file.write_text("not-a-key\n")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "keeping 1 authorized client keys" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    assert f"{keys.authorized_file}:1: not a Z85 CURVE key" in daemon.log()
    assert request(connect, server=keys.server.public, client=newcomer) is not None


def test_non_loopback_bind_needs_curve_keys(
    daemons: list[Daemon], workdir: Path, config_path: Path, keys: Keys
) -> None:
    bind, connect = _tcp("0.0.0.0")
    refused = Daemon(workdir, config_path)
    daemons.append(refused)
    line = refused.start(bind).exit_line()
    assert line.startswith("turnout-sidecar: refusing to bind non-loopback address")
    assert "--curve-secret-key" in line

    served = Daemon(workdir, config_path)
    daemons.append(served)
    served.start(bind, *keys.args())
    served.wait_ready(connect, server=keys.server.public, client=keys.client)
    assert request(connect, timeout_ms=SILENCE_MS) is None


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(
            lambda k: k.secret_file.chmod(0o644),
            "is mode 0644: only its owner may read it",
            id="0644",
        ),
        pytest.param(
            lambda k: k.authorized_file.chmod(0o666),
            "is mode 0666: others could add keys",
            id="authorized-world-writable",
        ),
        pytest.param(
            lambda k: k.authorized_file.write_text("# nobody\n"), "holds no key", id="no-keys"
        ),
        pytest.param(
            lambda k: k.authorized_file.write_text("# ok\nshort-key\n"),
            "authorized_keys:2: not a Z85 CURVE key",
            id="bad-line",
        ),
        pytest.param(
            lambda k: k.secret_file.write_bytes(k.server.secret + b"\n" + k.client.secret + b"\n"),
            "must hold exactly one Z85 key",
            id="two-secrets",
        ),
    ],
)
def test_bad_key_files_are_refused_with_one_line(
    daemon: Daemon, keys: Keys, setup: Any, expected: str
) -> None:
    setup(keys)
    bind, _ = _tcp()
    line = daemon.start(bind, *keys.args()).exit_line()
    assert line.startswith("turnout-sidecar: ")
    assert expected in line


def test_curve_needs_both_options(daemon: Daemon, keys: Keys) -> None:
    bind, _ = _tcp()
    line = daemon.start(bind, "--curve-secret-key", str(keys.secret_file)).exit_line()
    assert "needs both --curve-secret-key and --curve-authorized-keys" in line


def test_serve_passes_the_curve_and_watch_options(
    workdir: Path, config_path: Path, keys: Keys
) -> None:
    keys.secret_file.chmod(0o640)
    bind, _ = _tcp("0.0.0.0")
    run = [
        sys.executable,
        "-c",
        "from turnout.cli import main; main()",
        "serve",
        str(config_path),
    ]
    run += ["--endpoint", bind, "--shm", f"sy-sec-{uuid.uuid4().hex[:8]}", "--foreground"]
    run += ["--no-watch", *keys.args()]
    done = subprocess.run(run, capture_output=True, timeout=STARTUP_S, check=False)
    assert done.returncode == 1
    assert "is mode 0640" in done.stderr.decode()


# ----------------------------------------------------------------------------------- file watch


def _health(endpoint: str) -> dict[str, Any]:
    reply = request(endpoint)
    assert reply is not None
    assert reply["ok"], reply
    return reply


def _wait_for(predicate: Any, daemon: Daemon, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)


def test_a_changed_file_is_reloaded_a_broken_one_is_reported_once(
    daemon: Daemon, workdir: Path, config_path: Path
) -> None:
    endpoint = f"ipc://{workdir / 's.sock'}"
    daemon.start(endpoint)
    v0 = daemon.wait_ready(endpoint)["config_version"]
    good = config_path.read_text()

    changed = good.replace(
        "weight: 90}, {target: gpt-4.1-mini, weight: 10}",
        "weight: 80}, {target: gpt-4.1-mini, weight: 20}",
    )
    assert changed != good
    config_path.write_text(changed)
    _wait_for(lambda: _health(endpoint)["config_version"] != v0, daemon)
    v1 = _health(endpoint)["config_version"]
    assert "file change: reloaded" in daemon.log()

    broken = changed.replace("max_output_tokens: 2048", "max_output_tokens: lots")
    line = next(i for i, t in enumerate(broken.splitlines(), 1) if "lots" in t)
    config_path.write_text(broken)
    _wait_for(lambda: "file change: reload failed" in daemon.log(), daemon)
    assert f"still serving config {v1}: {config_path}:{line}:" in daemon.log()
    assert _health(endpoint)["config_version"] == v1
    time.sleep(1.0)  # several polls of the same broken file
    assert daemon.log().count("reload failed") == 1

    # An editor's save: a new file renamed over the old one.
    tmp = workdir / "routing.yaml.new"
    tmp.write_text(good)
    tmp.replace(config_path)
    _wait_for(lambda: _health(endpoint)["config_version"] == v0, daemon)
    assert daemon.log().count("file change: reloaded") == 2


def test_a_touched_file_with_the_same_content_is_not_reloaded(
    daemon: Daemon, workdir: Path, config_path: Path
) -> None:
    endpoint = f"ipc://{workdir / 's.sock'}"
    daemon.start(endpoint)
    generation = daemon.wait_ready(endpoint)["generation"]
    config_path.write_text(config_path.read_text())
    time.sleep(1.0)
    assert _health(endpoint)["generation"] == generation
    assert "file change" not in daemon.log()


def test_no_watch_leaves_reloads_to_sighup(
    daemon: Daemon, workdir: Path, config_path: Path
) -> None:
    endpoint = f"ipc://{workdir / 's.sock'}"
    daemon.start(endpoint, "--no-watch")
    v0 = daemon.wait_ready(endpoint)["config_version"]
    config_path.write_text(
        config_path.read_text().replace("max_output_tokens: 2048", "max_output_tokens: 1024")
    )
    time.sleep(1.0)
    assert _health(endpoint)["config_version"] == v0
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: _health(endpoint)["config_version"] != v0, daemon)
