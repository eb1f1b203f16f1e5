"""The node's boundary (issue 10, class 6), against the real daemon: another local user cannot
plant segments, lock files, tables or endpoints that the sidecar or a client adopts, cannot use
loopback TCP without an explicit opt-in, and /metrics names no file path and no endpoint.

The tests run as root; the other user is `nobody` (setpriv). Root bypasses file permissions, so
what is checked is ownership and mode, explicitly."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import msgpack
import pytest
import zmq

import turnout
from daemon import Sidecar, free_port
from turnout._core import protocol

OTHER = 65534  # nobody
SETPRIV = shutil.which("setpriv")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None,
    reason="needs root and setpriv to act as a second local user",
)


def as_other(*argv: str) -> subprocess.CompletedProcess[str]:
    """Runs argv as the other user (uid and gid 65534, no groups)."""
    return subprocess.run(
        [SETPRIV or "setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )


def plant_file(path: Path, mode: str = "666") -> None:
    """The other user creates `path` (1 page of junk) with `mode`, as an attacker would."""
    as_other("sh", "-c", f"umask 0; head -c 4096 /dev/zero > '{path}'; chmod {mode} '{path}'")
    assert path.stat().st_uid == OTHER


def plant_socket(path: Path) -> subprocess.Popen[bytes]:
    """The other user listens on an ipc socket at `path` (a fake sidecar); killed by the caller."""
    code = textwrap.dedent(
        f"""
        import os, socket, sys, time
        os.umask(0)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind({str(path)!r}); s.listen(8)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [
            SETPRIV or "setpriv",
            f"--reuid={OTHER}",
            f"--regid={OTHER}",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            code,
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    assert path.stat().st_uid == OTHER
    return proc


def end(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def shared_dir(workdir: Path, name: str) -> Path:
    """A world-writable sticky directory like /tmp, reachable by the other user."""
    os.chmod(workdir, 0o711)
    d = workdir / name
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def start_fails(s: Sidecar, *extra: str) -> str:
    s.start(*extra, wait=False)
    assert s.proc is not None
    assert s.proc.wait(timeout=15) == 1, s.log()
    return s.log()


# -- segments, rings, tables and lock files planted in /dev/shm ------------------------------------


@pytest.mark.parametrize("suffix", ["", ".lock"])
def test_sidecar_refuses_a_counter_segment_or_lock_file_another_user_created(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str, suffix: str
) -> None:
    planted = Path("/dev/shm") / f"{shm_name}{suffix}"
    plant_file(planted)
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    log = start_fails(s)
    assert "permission" in log.lower() or "belongs to" in log, log
    for part in (str(planted), f"uid {OTHER}", "mode 0666"):
        assert part in log, log
    # Neither adopted nor replaced: it is still the other user's file.
    assert planted.stat().st_uid == OTHER


@pytest.mark.parametrize("suffix", [".rings", ".t1"])
def test_sidecar_neither_adopts_nor_replaces_rings_or_a_table_another_user_created(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str, suffix: str
) -> None:
    planted = Path("/dev/shm") / f"{shm_name}{suffix}"
    plant_file(planted)
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    s.start()  # the socket serves; the fast path is off, and says why
    for part in ("fast path off", str(planted), f"uid {OTHER}"):
        assert part in s.log(), s.log()
    assert planted.stat().st_uid == OTHER
    with s.client() as c:
        assert c.route("agent-assist", key="k", input_tokens=10).target


def test_sidecar_rebuilds_a_stale_segment_of_its_own_user_opened_to_others(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    planted = Path("/dev/shm") / shm_name
    planted.write_bytes(b"\0" * 4096)
    os.chmod(planted, 0o666)  # ours, but anyone could have written it: recreated, 0600
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    s.start()
    st = planted.stat()
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert "rebuilding" in s.log()


def test_client_refuses_a_table_segment_another_user_planted(shm_name: str) -> None:
    planted = Path("/dev/shm") / shm_name
    plant_file(planted)
    with pytest.raises(PermissionError, match=f"uid {OTHER}"):
        turnout.attach(shm_name)
    with pytest.raises(PermissionError, match=f"uid {OTHER}"):
        turnout._core.attach_fast_path(shm_name)  # what Client(shm=...) maps


def test_sidecar_refuses_an_endpoint_lock_file_another_user_created(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    pub = shared_dir(workdir, "pub")
    lock = pub / "s.sock.lock"
    plant_file(lock)
    s = Sidecar(workdir, config_path, shm_name)
    s.endpoint = f"ipc://{pub / 's.sock'}"
    sidecars.append(s)
    log = start_fails(s)
    assert str(lock) in log, log
    assert f"uid {OTHER}" in log, log


def test_sidecar_refuses_a_socket_directory_others_can_write(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    d = workdir / "open"
    d.mkdir()
    os.chmod(d, 0o777)  # not sticky: anyone could replace the socket
    s = Sidecar(workdir, config_path, shm_name)
    s.endpoint = f"ipc://{d / 's.sock'}"
    sidecars.append(s)
    log = start_fails(s)
    assert "writable by other users" in log, log


# -- the endpoint: the default location, a planted fake, the socket itself -------------------------


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "HOME")}
    env.update(extra)
    return env


def expected_default(home: Path) -> str:
    """The documented rule without XDG_RUNTIME_DIR: /run/user/$UID/turnout if that is ours, else
    $HOME/.turnout; never the old /tmp/turnout-$UID."""
    run_user = Path(f"/run/user/{os.geteuid()}")
    if run_user.is_dir() and run_user.stat().st_uid == os.geteuid():
        return f"ipc://{run_user}/turnout/sidecar.sock"
    return f"ipc://{home}/.turnout/sidecar.sock"


def test_default_endpoint_is_never_a_shared_directory(workdir: Path) -> None:
    home = workdir / "home"
    home.mkdir()
    got = run_python(
        "import turnout.sidecar as s; print(s.default_endpoint())", clean_env(HOME=str(home))
    )
    assert got.returncode == 0, got.stderr
    endpoint = got.stdout.strip()
    assert not endpoint.startswith(f"ipc:///tmp/turnout-{os.geteuid()}"), endpoint
    assert endpoint == expected_default(home)
    xdg = workdir / "xdg"
    xdg.mkdir(mode=0o700)
    got = run_python(
        "import turnout.sidecar as s; print(s.default_endpoint())",
        clean_env(XDG_RUNTIME_DIR=str(xdg)),
    )
    assert got.stdout.strip() == f"ipc://{xdg}/turnout/sidecar.sock", got.stderr


def test_sidecar_and_client_share_the_default_endpoint_in_a_private_directory(
    workdir: Path, config_path: Path, shm_name: str
) -> None:
    home = workdir / "home"
    home.mkdir()
    env = clean_env(HOME=str(home))
    expected = expected_default(home)
    proc = subprocess.Popen(
        [turnout._sidecar_path(), str(config_path), "--shm", shm_name, "--foreground"],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        line = b""
        assert proc.stderr is not None
        while time.monotonic() < deadline and b"serving" not in line:
            line = proc.stderr.readline()
        assert f" on {expected},".encode() in line, line
        sock = Path(expected.removeprefix("ipc://"))
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        # A client with the same environment finds it by default: one definition, in the core.
        got = run_python(
            "import turnout\nwith turnout.Client(timeout_ms=5000) as c:\n"
            "    print(c.endpoint, c.health()['pid'])\n",
            env,
        )
        assert got.stdout.split() == [expected, str(proc.pid)], got.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_client_refuses_a_fake_sidecar_planted_at_the_default_endpoint(workdir: Path) -> None:
    xdg = shared_dir(
        workdir, "xdg"
    )  # a runtime dir others can write: where the old /tmp fallback was
    as_other("mkdir", "-m", "0777", str(xdg / "turnout"))
    fake = plant_socket(xdg / "turnout" / "sidecar.sock")
    try:
        got = run_python(
            "import turnout\ntry:\n    turnout.Client(timeout_ms=100)\n"
            "except PermissionError as e:\n"
            "    print('refused:', e)\n",
            clean_env(XDG_RUNTIME_DIR=str(xdg)),
        )
    finally:
        end(fake)
    assert got.stdout.startswith("refused:"), (got.stdout, got.stderr)
    assert f"uid {OTHER}" in got.stdout


def test_client_refuses_a_socket_another_user_owns(workdir: Path) -> None:
    pub = shared_dir(workdir, "pub")
    fake = plant_socket(pub / "sidecar.sock")
    try:
        with pytest.raises(
            PermissionError, match=f"socket {pub / 'sidecar.sock'} \\(owner uid {OTHER}"
        ):
            turnout.Client(f"ipc://{pub / 'sidecar.sock'}", timeout_ms=100)
    finally:
        end(fake)


def test_another_user_cannot_connect_to_the_sidecar_socket(sidecar: Sidecar) -> None:
    path = sidecar.endpoint.removeprefix("ipc://")
    st = os.stat(path)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o600
    os.chmod(sidecar.workdir, 0o711)  # even with the directory traversable, the socket is 0600
    probe = (
        "import socket\ns = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({path!r}); print('connected')\n"
        "except PermissionError:\n    print('refused')\n"
    )
    got = as_other("/usr/bin/python3", "-c", probe)
    assert got.stdout.strip() == "refused"


# -- TCP without CURVE -----------------------------------------------------------------------------


def test_loopback_tcp_without_curve_needs_the_explicit_opt_in(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    s = Sidecar(workdir, config_path, shm_name)
    s.endpoint = f"tcp://127.0.0.1:{free_port()}"
    sidecars.append(s)
    log = start_fails(s)
    assert "--insecure-tcp" in log, log
    assert "CURVE" in log, log


def test_insecure_tcp_is_read_only_by_default_and_loudly_logged(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    s = Sidecar(workdir, config_path, shm_name)
    s.endpoint = f"tcp://127.0.0.1:{free_port()}"
    sidecars.append(s)
    s.start("--insecure-tcp", "read-only")
    assert "INSECURE" in s.log(), s.log()
    with s.client(retry_after_s=0) as c:
        assert c.health()
        assert c.stats()
        assert c.explain("agent-assist", key="k", input_tokens=10).target
        with pytest.raises(PermissionError, match="read-only"):
            c.reload()
        with pytest.raises(PermissionError, match="read-only"):
            c.route("agent-assist", key="k", input_tokens=10)
    # Every op, raw: the ops that write are refused before their fields are even read.
    assert protocol.READ_ONLY_OPS == ("explain", "stats", "health", "migration")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(s.endpoint)
    try:
        for op in protocol.OPS:
            sock.send(msgpack.packb({"v": protocol.VERSION, "id": 7, "op": op}))
            reply = msgpack.unpackb(sock.recv())
            code = reply.get("error", {}).get("code") if not reply["ok"] else None
            if op in protocol.READ_ONLY_OPS:
                assert code != "permission_denied", (op, reply)
            elif op == "adopt":
                assert code == "bad_message", reply  # a ring record only, whatever the socket
            else:
                assert code == "permission_denied", (op, reply)
    finally:
        sock.close()
        ctx.term()


def test_insecure_tcp_read_write_is_a_second_explicit_choice(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    s = Sidecar(workdir, config_path, shm_name)
    s.endpoint = f"tcp://127.0.0.1:{free_port()}"
    sidecars.append(s)
    s.start("--insecure-tcp", "read-write")
    assert "INSECURE" in s.log()
    with s.client() as c:
        d = c.route("agent-assist", key="k", input_tokens=10)
        assert d.target


def test_insecure_tcp_is_refused_for_ipc_and_bad_values(
    sidecars: list[Sidecar], workdir: Path, config_path: Path, shm_name: str
) -> None:
    s = Sidecar(workdir, config_path, shm_name)
    sidecars.append(s)
    assert "tcp://" in start_fails(s, "--insecure-tcp", "read-only")
    assert "read-only or read-write" in start_fails(s, "--insecure-tcp", "yes")


# -- /metrics --------------------------------------------------------------------------------------


def test_metrics_name_no_config_path_and_no_endpoint(sidecar: Sidecar, config_path: Path) -> None:
    with sidecar.client() as c:
        c.route("support-summarization", key="k", input_tokens=10)
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert "turnout_inflight" in body
    assert "turnout_config_info" in body
    assert str(config_path) not in body
    assert "routing.yaml" not in body
    assert "http://127.0.0.1:800" not in body
    assert "endpoint=" not in body
    assert 'replica="0"' in body
