"""The docs against the code. docs/config.md: every key the loader accepts is documented in the
section of its mapping, every routing table shown on the page loads, and the examples use no other
keys. docs/operations.md: every flag of turnout-sidecar and every metric family a running sidecar
serves is in its tables. docs/architecture.md: its error table names real classes. And every docs
section a source comment cites exists.

The keys come from the loader itself: a table with an unknown key in one mapping makes it answer
"unknown key ...; expected one of: <every key of that mapping>". The probes below place such a key
in each kind of mapping; config.cpp's own lists (each ``expect_map`` call) are read to prove the
probes reach every one of them, so a mapping added to the loader without a probe fails here.
"""

from __future__ import annotations

import builtins
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import turnout
from support import base_config, dump

REPO = Path(__file__).resolve().parents[2]
CONFIG_MD = REPO / "docs" / "config.md"
CONFIG_CPP = REPO / "cpp" / "turnout" / "config.cpp"
LITELLM_PRICES = REPO / "tests" / "data" / "litellm_prices.json"
UNKNOWN = "zz_not_a_key"

Table = dict[str, Any]


def _root(t: Table) -> None:
    t[UNKNOWN] = 1


def _maas(t: Table) -> None:
    t["targets"]["mini"][UNKNOWN] = 1


def _self_hosted(t: Table) -> None:
    t["targets"]["pool"][UNKNOWN] = 1


def _price(t: Table) -> None:
    t["targets"]["mini"]["price"][UNKNOWN] = 1


def _tier(t: Table) -> None:
    t["targets"]["mini"]["price"]["tiers"] = [{UNKNOWN: 1}]


def _litellm(t: Table) -> None:
    t["targets"]["mini"]["price"] = {"from_litellm": "prices.json", UNKNOWN: 1}


def _cache(t: Table) -> None:
    t["targets"]["mini"]["cache"] = {UNKNOWN: 1}


def _breaker(t: Table) -> None:
    t["targets"]["mini"]["breaker"] = {UNKNOWN: 1}


def _cost(t: Table) -> None:
    t["targets"]["pool"]["cost"][UNKNOWN] = 1


def _kv(t: Table) -> None:
    t["targets"]["pool"]["kv"] = {UNKNOWN: 1}


def _replica(t: Table) -> None:
    t["targets"]["pool"]["replicas"][0][UNKNOWN] = 1


def _scenario(t: Table) -> None:
    t["scenarios"]["chat"][UNKNOWN] = 1


def _scenario_part(key: str) -> Callable[[Table], None]:
    def place(t: Table) -> None:
        t["scenarios"]["chat"][key] = {UNKNOWN: 1}

    return place


def _route(t: Table) -> None:
    t["scenarios"]["chat"]["routes"][0][UNKNOWN] = 1


def _migration_block(t: Table) -> dict[str, Any]:
    """Turns the scenario's routes into a migration block and returns it."""
    chat = t["scenarios"]["chat"]
    del chat["routes"]
    chat["migration"] = {
        "baseline": "mini",
        "candidate": "backup",
        "stage": "canary",
        "incident_owner": "oncall",
    }
    return chat["migration"]


def _migration(t: Table) -> None:
    _migration_block(t)[UNKNOWN] = 1


def _migration_part(key: str, value: Callable[[], Any]) -> Callable[[Table], None]:
    def place(t: Table) -> None:
        _migration_block(t)[key] = value()

    return place


# (heading in docs/config.md whose section lists the mapping's keys, where to put the unknown key)
PROBES: list[tuple[str, Callable[[Table], None]]] = [
    ("Top-level keys", _root),
    ("MaaS target keys", _maas),
    ("Self-hosted target keys", _self_hosted),
    ("`price`: token prices", _price),
    ("`price.tiers`: long-context tiers", _tier),
    ("`price.from_litellm`: prices from LiteLLM's price map", _litellm),
    ("`cache`: the provider's prompt cache", _cache),
    ("`breaker`: circuit breaker", _breaker),
    ("`cost`: what a self-hosted pool costs", _cost),
    ("`kv`: the pool's KV cache", _kv),
    ("`replicas`", _replica),
    ("Scenario keys", _scenario),
    ("`routes`: weights and canaries", _route),
    ("`slo`", _scenario_part("slo")),
    ("`quality_gate`", _scenario_part("quality_gate")),
    ("`spillover`", _scenario_part("spillover")),
    ("`budget`", _scenario_part("budget")),
    ("`affinity`", _scenario_part("affinity")),
    ("`migration`: a canary from a baseline to a candidate", _migration),
    ("`migration.stop`: stop criteria", _migration_part("stop", lambda: {UNKNOWN: {}})),
    ("`migration.stop` rate criteria", _migration_part("stop", lambda: {"errors": {UNKNOWN: 1}})),
    (
        "`migration.stop.cost_per_accepted`",
        _migration_part("stop", lambda: {"cost_per_accepted": {UNKNOWN: 1}}),
    ),
    ("`migration.guardrails`: hard limits", _migration_part("guardrails", lambda: {UNKNOWN: 1})),
]


def accepted_keys(tmp_path: Path, place: Callable[[Table], None]) -> list[str]:
    """The keys the loader accepts in the mapping `place` puts an unknown key into."""
    table = base_config()
    place(table)
    path = tmp_path / "probe.yaml"
    path.write_text(dump(table), encoding="utf-8")
    with pytest.raises(turnout.ConfigError) as info:
        turnout.load_config(path)
    m = re.search(rf"unknown key '{UNKNOWN}' in .*; expected one of: (.*)$", str(info.value))
    assert m, f"the probe did not reach an unknown-key check: {info.value}"
    return m.group(1).split(", ")


def source_key_lists() -> list[list[str]]:
    """The allowed-key list of every expect_map call in config.cpp (its first braced list)."""
    text = CONFIG_CPP.read_text(encoding="utf-8")
    lists = [
        re.findall(r'"([^"]+)"', m.group(1))
        for m in re.finditer(r'expect_map\([^;{]*?\{((?:\s*"[^"]*"\s*,?)+)\}', text)
    ]
    assert lists, "no expect_map call found in config.cpp"
    return lists


def doc_sections() -> dict[str, str]:
    """docs/config.md by heading text: the text from a heading to the next heading of any level."""
    sections: dict[str, str] = {}
    title = None
    in_code = False
    for line in CONFIG_MD.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#+ (.*)", line)
        if m:
            title = m.group(1).strip()
            assert title not in sections, f"docs/config.md has two headings '{title}'"
            sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    return sections


def yaml_blocks() -> list[str]:
    """The contents of every ```yaml fence in docs/config.md."""
    text = CONFIG_MD.read_text(encoding="utf-8")
    return re.findall(r"^[ \t]*```yaml\n(.*?)^[ \t]*```", text, re.M | re.S)


def test_probes_reach_every_mapping_the_loader_checks(tmp_path: Path) -> None:
    probed = sorted(sorted(accepted_keys(tmp_path, place)) for _, place in PROBES)
    in_source = sorted(sorted(keys) for keys in source_key_lists())
    assert probed == in_source, "a mapping of config.cpp has no probe here (or a probe is stale)"


@pytest.mark.parametrize(("heading", "place"), PROBES, ids=[h for h, _ in PROBES])
def test_every_accepted_key_is_documented(
    tmp_path: Path, heading: str, place: Callable[[Table], None]
) -> None:
    sections = doc_sections()
    assert heading in sections, f"docs/config.md has no heading '{heading}'"
    rows = set(re.findall(r"^\| `([^`]+)` \|", sections[heading], re.M))
    accepted = accepted_keys(tmp_path, place)
    missing = [k for k in accepted if k not in rows]
    assert not missing, f"keys missing from the table under '{heading}': {missing}"
    extra = sorted(rows - set(accepted))
    assert not extra, f"keys documented under '{heading}' that the loader refuses: {extra}"


def test_every_whole_table_on_the_page_loads(tmp_path: Path) -> None:
    tables = [b for b in yaml_blocks() if re.search(r"^version:", b, re.M)]
    assert len(tables) >= 5, f"expected the page's whole tables, found {len(tables)}"
    # The LiteLLM example reads its price map from next to the table.
    shutil.copy(LITELLM_PRICES, tmp_path / "model_prices_and_context_window.json")
    for i, text in enumerate(tables):
        path = tmp_path / f"table{i}.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            config = turnout.load_config(path)
        except turnout.ConfigError as e:
            pytest.fail(f"whole table #{i + 1} of docs/config.md does not load: {e}")
        assert config.scenarios, path


NAMED = {"targets", "scenarios", "monthly"}  # mappings whose keys are names, not keys


def example_keys(block: str) -> set[str]:
    """The keys an example uses: block keys whose parent is not a mapping of names, and every key
    of a flow mapping ({a: 1}) not written directly in a mapping of names."""
    keys: set[str] = set()
    parents: list[tuple[int, str]] = []  # (indent, key) of the block keys above this line
    for raw in block.splitlines():
        line = re.sub(r'"[^"]*"', '""', raw)
        line = re.sub(r"(^|\s)#.*", "", line).rstrip()
        line = re.sub(r"monthly:\s*\{[^}]*\}", "monthly: {}", line)  # overhead names
        m = re.match(r"^(\s*)(- )?([A-Za-z_][A-Za-z0-9_.-]*):(\s|$)(.*)", line)
        if not m:
            keys |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*):\s", line))
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = parents[-1][1] if parents else ""
        key, rest = m.group(3), m.group(5)
        if parent not in NAMED:
            keys.add(key)
        if key not in NAMED:
            keys |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*):\s", rest))
        parents.append((indent, key))
    return keys


def test_examples_use_only_documented_keys() -> None:
    """Every key in an example, whole table or fragment, is one the page documents: an example
    with a typo would teach the typo."""
    documented = {"version"}
    for text in doc_sections().values():
        documented |= set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    used = set().union(*(example_keys(b) for b in yaml_blocks()))
    assert len(used) > 50, sorted(used)
    assert not used - documented, f"example keys not documented: {sorted(used - documented)}"


# ---- docs/operations.md against the daemon -------------------------------------------------------

OPERATIONS_MD = REPO / "docs" / "operations.md"


def operations_table(heading: str) -> list[list[str]]:
    """The table rows under the `## heading` of docs/operations.md (header rows left out), as cell
    texts."""
    text = OPERATIONS_MD.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[2:]:
        if line.startswith("## "):
            break
        if line.startswith("|---"):
            rows.pop()  # the header above it
        elif line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_daemon_flag_is_documented() -> None:
    usage = subprocess.run(
        [turnout._sidecar_path(), "--help"], capture_output=True, text=True, check=True
    ).stdout
    # Flags as the help lists them: "[--flag" in the synopsis, "  --flag" starting a line.
    flags = set(re.findall(r"(?:^\s+|\[)(--[a-z][a-z-]*)", usage, re.M))
    assert {"--endpoint", "--shm", "--metrics", "--foreground"} <= flags, usage
    documented = set()
    for row in operations_table("Running it"):
        documented |= set(re.findall(r"`(--[a-z][a-z-]*)", row[0]))
    assert flags - {"--help"} <= documented, f"undocumented flags: {flags - documented}"
    assert documented <= flags | {"--version", "--help"}, f"stale: {documented - flags}"


@pytest.fixture
def metrics_text() -> Iterator[str]:
    """/metrics of a real sidecar serving examples/routing.yaml."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="td-", dir="/tmp"))  # short: ipc paths are limited
    shm = f"turnout-docs-{uuid.uuid4().hex[:8]}"
    endpoint = f"ipc://{workdir / 's.sock'}"
    argv = [
        turnout._sidecar_path(),
        str(REPO / "examples" / "routing.yaml"),
        "--foreground",
        "--endpoint",
        endpoint,
        "--shm",
        shm,
        "--metrics",
        f"127.0.0.1:{port}",
    ]
    log = workdir / "sidecar.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    yield r.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        for path in Path("/dev/shm").glob(f"{shm}*"):
            path.unlink()
        shutil.rmtree(workdir, ignore_errors=True)


def test_every_metric_family_is_documented(metrics_text: str) -> None:
    served = dict(re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M))
    assert len(served) > 10, metrics_text[:500]
    documented = {
        row[0].strip("`"): row[1] for row in operations_table("Metrics") if row[0].startswith("`")
    }
    assert documented == served


def test_the_error_table_of_the_architecture_page_names_real_classes() -> None:
    """Each row of docs/architecture.md's error table: the Python class exists, derives from
    TurnoutError and from the built-in the row names."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \| `(\w+)` \| `(\w+)`", text, re.M)
    assert len(rows) >= 10, rows
    for code, name, builtin in rows:
        cls = getattr(turnout, name)
        assert issubclass(cls, turnout.TurnoutError), (code, name)
        assert issubclass(cls, getattr(builtins, builtin)), (code, name, builtin)


def test_sections_the_code_cites_exist() -> None:
    """Comments cite the docs as `docs/<page>.md, "<section>"`: each such section is a heading."""
    cited: set[tuple[str, str]] = set()
    for folder in ("cpp", "bindings", "python", "bench", "tests"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in {".cpp", ".hpp", ".py", ".pyi"} and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")
                cited |= set(re.findall(r'(docs/[\w-]+\.md), "([^"]+)"', text))
    assert ("docs/architecture.md", "KV events") in cited
    for page, section in sorted(cited):
        text = (REPO / page).read_text(encoding="utf-8")
        assert re.search(rf"^#+ {re.escape(section)}$", text, re.M), f'{page} has no "{section}"'
