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
        return value

    def _from_file(self, target: str, path: str) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise MissingKey(f"target '{target}': api_key_file {path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MissingKey(f"target '{target}': api_key_file {path} is not a regular file")
            if st.st_uid != os.geteuid():
                raise MissingKey(
                    f"target '{target}': api_key_file {path} is owned by uid {st.st_uid}, "
                    f"not by this user ({os.geteuid()})"
                )
            if st.st_mode & 0o077:
                raise MissingKey(
                    f"target '{target}': api_key_file {path} is open to other users "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
                )
            cached = self._files.get(path)
            if cached is not None and cached[0] == st.st_mtime_ns:
                return cached[1]
            data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise MissingKey(f"target '{target}': api_key_file {path} is too large for a key")
        value = data.decode("utf-8", "replace").strip()
        if not value:
            raise MissingKey(f"target '{target}': api_key_file {path} is empty")
        self._files[path] = (st.st_mtime_ns, value)
        return value
