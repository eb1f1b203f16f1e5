"""API keys of targets: from the environment variable or the file a target names, never the table.

A key file must be owned by this user and unreadable by others (like an SSH key): one another
local user can read or replace is refused. A missing key is a failure of that target (class
``auth``: the call fails over), never a request sent without its key.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

#: The largest key file read (keys are ~100 bytes; anything near this is not a key).
MAX_KEY_FILE_BYTES = 64 * 1024


class MissingKey(Exception):
    """The target's key cannot be had: the message says which variable or file and why."""


class Credentials:
    """Reads keys as targets name them; a key file is read once per (path, mtime)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._files: dict[str, tuple[int, str]] = {}

    def key(self, target: str, call: Mapping[str, Any]) -> str | None:
        """The key of a target whose ``target_info()["call"]`` is ``call``; None when it names
        none (a self-hosted pool without keys). Raises MissingKey."""
        path = call.get("api_key_file")
        if path:
            return self._from_file(target, path)
        name = call.get("api_key_env")
        if not name:
            return None
        value = self._environ.get(name, "").strip()
        if not value:
            raise MissingKey(f"target '{target}': its key variable {name} is not set")
        return _checked(value, f"target '{target}': the key in {name}")

    def _from_file(self, target: str, path: str) -> str:
        what = f"target '{target}': api_key_file {path}"
        mtime, text = private_text(path, what, self._files.get(path, (None, ""))[0])
        if text is None:  # unchanged since it was read
            return self._files[path][1]
        value = _checked(text.strip(), what)
        self._files[path] = (mtime, value)
        return value


def private_text(path: str, what: str, known_mtime: int | None = None) -> tuple[int, str | None]:
    """(mtime, text) of a private file: a regular file (not a link, not a FIFO) owned by this
    user, mode 0600 or stricter, at most MAX_KEY_FILE_BYTES, not empty; text None when its mtime
    is `known_mtime` (not read again). Raises MissingKey naming `what`."""
    try:
        # O_NONBLOCK: a FIFO must not hang the call (it is refused below, not read).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise MissingKey(f"{what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MissingKey(f"{what} is not a regular file")
        if st.st_uid != os.geteuid():
            raise MissingKey(
                f"{what} is owned by uid {st.st_uid}, not by this user ({os.geteuid()})"
            )
        if st.st_mode & 0o077:
            raise MissingKey(
                f"{what} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
            )
        if known_mtime is not None and known_mtime == st.st_mtime_ns:
            return st.st_mtime_ns, None
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise MissingKey(f"{what} is too large for a key")
    text = data.decode("latin-1")
    if not text.strip():
        raise MissingKey(f"{what} is empty")
    return st.st_mtime_ns, text


def _checked(key: str, what: str) -> str:
    """A key an HTTP header can carry: printable ASCII, no spaces or control characters (a
    two-line file or a stray byte would otherwise reach the wire, or an error message)."""
    if not (key.isascii() and key.isprintable()) or " " in key:
        raise MissingKey(f"{what} has characters a key cannot have (spaces, control or non-ASCII)")
    return key
