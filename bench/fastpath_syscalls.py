"""Counts the system calls a fast-path route makes (issue target: none), with strace.

Runs `fastpath_bench --probe-syscalls N` under `strace -f`: the probe routes N requests (half keyed,
half 2,048-token prompts with prefix affinity) between two marker writes to stderr, and this script
counts every system call the routing thread made between the markers. Prints JSON; exits 1 if there
was any, 2 if strace is missing or the probe did not run.

    python bench/fastpath_syscalls.py build/release/bench/fastpath_bench [N]
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LINE = re.compile(r"^(\d+)\s+(\w+)\(")


def count(binary: str, routes: int) -> dict[str, object]:
    strace = shutil.which("strace")
    if strace is None:
        return {"error": "strace is not installed"}
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace"
        proc = subprocess.run(
            [strace, "-f", "-qq", "-o", str(trace), binary, "--probe-syscalls", str(routes)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": f"probe failed ({proc.returncode}): {proc.stderr.strip()[-500:]}"}
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
        tid = str(probe["tid"])
        inside = False
        calls: collections.Counter[str] = collections.Counter()
        seen_begin = seen_end = False
        for line in trace.read_text().splitlines():
            m = LINE.match(line)
            if m is None or m.group(1) != tid:
                continue
            if m.group(2) == "write" and "probe-begin" in line:
                inside, seen_begin = True, True
                continue
            if m.group(2) == "write" and "probe-end" in line:
                inside, seen_end = False, True
                continue
            if inside:
                calls[m.group(2)] += 1
    if not (seen_begin and seen_end):
        return {"error": "the probe's markers are not in the trace"}
    return {
        "routes": probe["routes"],
        "refused": probe["refused"],
        "syscalls": sum(calls.values()),
        "by_name": dict(calls),
        "target": 0,
    }


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    routes = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    result = count(sys.argv[1], routes)
    print(json.dumps(result, indent=2))
    if "error" in result:
        return 2
    return 0 if result["syscalls"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
