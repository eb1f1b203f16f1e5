"""The ``turnout`` command: validate a routing table, route, price usage, run the demo, replay."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from decimal import Decimal
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

import turnout
from turnout import TurnoutError
from turnout._demo import (
    DEFAULT_OUT,
    DEFAULT_REQUESTS,
    DEFAULT_SEED,
    RATE_RPS,
    run_demo,
    short_money,
)
from turnout.ledger import COUNTER_FIELDS, GATE_COLUMNS, SHARE_COLUMNS

# Piped output (CI logs, `| less`) gets room for the tables; a terminal keeps its own width.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True, soft_wrap=True)  # file:line:col stays on one line


# What loading a table can raise: a malformed table, a missing or unreadable file.
_LOAD_ERRORS = (TurnoutError, OSError)


def _load(path: str) -> turnout.Config:
    """The table at `path`; whatever went wrong is one line on stderr and exit 2."""
    try:
        return turnout.load_config(path)
    except _LOAD_ERRORS as e:
        _fail(e, 2)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def _dump(obj: Any) -> None:
    click.echo(json.dumps(obj, default=_json_default, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(turnout.__version__, prog_name="turnout")
def main() -> None:
    """Turnout: route LLM scenarios between MaaS and self-hosted targets, with exact cost."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print JSON: {"ok": true, "version", "targets", "scenarios", ...} or, exiting 2, '
    '{"ok": false, "error": {"type", "message"}}.',
)
def validate(config: str, as_json: bool) -> None:
    """Validate a routing table (errors name file:line:col)."""
    if as_json:
        try:
            cfg = turnout.load_config(config)
        except _LOAD_ERRORS as e:
            _dump(
                {
                    "ok": False,
                    "config": config,
                    "error": {"type": type(e).__name__, "message": str(e)},
                }
            )
            sys.exit(2)
        _dump(
            {
                "ok": True,
                "config": cfg.source,
                "version": cfg.version,
                "targets": cfg.targets,
                "scenarios": cfg.scenarios,
            }
        )
        return
    cfg = _load(config)
    console.print(
        f"[green]ok[/] {cfg.source}: {len(cfg.targets)} targets, {len(cfg.scenarios)} scenarios, "
        f"version {cfg.version}",
        highlight=False,
    )


def _fail(e: Exception, code: int) -> NoReturn:
    # Text, not markup: messages hold brackets ("routes[0]", "[public, ...]").
    err_console.print(Text("error: ", style="bold red") + Text(str(e)), highlight=False)
    sys.exit(code)


def _decisions_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Routing decisions", show_lines=True)
    for col in ("id", "scenario / key", "target", "fallbacks", "predicted $", "reasons"):
        table.add_column(col, overflow="fold")
    for r in rows:
        who = Text(f"{r['scenario']}\n{r.get('key') or ''}")
        if "error" in r:
            table.add_row("-", who, Text(r["error"], style="red"), "", "", Text(r["message"]))
            continue
        target = r["target"] + (f"\n{r['endpoint']}" if r["endpoint"] else "")
        table.add_row(
            str(r["id"]),
            who,
            Text(target),
            Text("\n".join(r["fallbacks"])),
            str(r["predicted_cost_usd"]),
            Text("\n".join(r["reasons"])),
        )
    return table


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--scenario", "-s", required=True, help="Scenario name, as in the routing table.")
@click.option("--key", help="Sticky key (user, conversation).")
@click.option("--data-class", help="Data class of this request, if stricter than the scenario's.")
@click.option("--input-tokens", type=click.IntRange(min=0), help="Prompt size in tokens.")
@click.option("--max-output-tokens", type=click.IntRange(min=0), help="Output cap in tokens.")
@click.option(
    "--count",
    type=click.IntRange(1, 100_000),
    default=1,
    show_default=True,
    help="Route this many requests, one after another: each is reported as an ok outcome "
    "before the next, so none stays in flight and the targets show the split the table gives "
    "(weights, per-key stickiness), not a burst filling the pools. With --key, keys get a "
    "numeric suffix.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sticky hashing seed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def route(
    config: str,
    scenario: str,
    key: str | None,
    data_class: str | None,
    input_tokens: int | None,
    max_output_tokens: int | None,
    count: int,
    seed: int,
    as_json: bool,
) -> None:
    """Ask the router where requests of SCENARIO go."""
    router = turnout.Router(_load(config), seed=seed)
    rows = []
    for i in range(count):
        k = key if count == 1 or key is None else f"{key}-{i}"
        try:
            d = router.route(
                scenario,
                key=k,
                data_class=data_class,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
            )
            # Done before the next one: the count measures the split, not the pools' capacity.
            router.report(d.id, target=d.target, status="ok")
        except TurnoutError as e:
            _fail(e, 1)
        rows.append({**d.to_dict(), "key": k})
    if as_json:
        _dump(rows if count > 1 else rows[0])
        return
    console.print(_decisions_table(rows))
    if count > 1:
        console.print(_split_table(rows))


def _split_table(rows: list[dict[str, Any]]) -> Table:
    """How many of the routed requests went to each target."""
    split = Counter(r["target"] for r in rows)
    table = Table(title=f"Split over {len(rows)} requests")
    table.add_column("target")
    table.add_column("requests", justify="right")
    table.add_column("share", justify="right")
    for target, n in split.most_common():
        table.add_row(target, str(n), f"{100 * n / len(rows):.1f}%")
    return table


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--target", "-t", required=True, help="Target whose price catalog applies.")
@click.option(
    "--usage",
    "usage_file",
    required=True,
    type=click.File("r"),
    help="JSON file with the provider's native usage (or whole response, or stream events).",
)
@click.option("--provider", help="Read the usage as this provider's shape (default: the target's).")
@click.option("--batch", is_flag=True, help="Apply the batch discount.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def cost(
    config: str, target: str, usage_file: Any, provider: str | None, batch: bool, as_json: bool
) -> None:
    """Price a provider usage object exactly."""
    cfg = _load(config)
    try:
        # Floats stay exact: parse them as Decimal text, never through binary floating point first.
        usage = json.load(usage_file, parse_float=Decimal)
        usage = _decimals_to_float(usage)
        c = turnout.price_usage(cfg, target, usage, provider=provider, batch=batch)
    except (TurnoutError, json.JSONDecodeError) as e:
        _fail(e, 1)
    fields = {k: getattr(c, k) for k in c.__dataclass_fields__}
    if as_json:
        _dump(fields)
        return
    table = Table(title=f"Cost on {target}")
    table.add_column("field")
    table.add_column("value", justify="right")
    for k, v in fields.items():
        table.add_row(k, "" if v is None else str(v))
    console.print(table)


def _decimals_to_float(value: Any) -> Any:
    # The core reads numbers as msgpack values; a provider's float `cost` keeps its shortest repr.
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _decimals_to_float(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals_to_float(v) for v in value]
    return value


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT,
    show_default=True,
    help="Folder for the plots, the records, the workload and the replays (files in it are "
    "replaced).",
)
@click.option(
    "--requests",
    type=click.IntRange(min=100),
    default=DEFAULT_REQUESTS,
    show_default=True,
    help=f"Requests in the generated workload ({RATE_RPS:g} per second on average).",
)
@click.option(
    "--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Workload and replay seed."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document (the folder's summary.json) instead of tables.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
def demo(out: str, requests: int, seed: int, as_json: bool, no_progress: bool) -> None:
    """MaaS vs self-hosted vs hybrid on generated traffic: replay, compare, decide, plot."""
    from pathlib import Path

    try:
        run_demo(
            Path(out),
            requests=requests,
            seed=seed,
            progress=not no_progress,
            console=console,
            as_json=as_json,
            dump=_dump,
        )
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="bold red"), highlight=False)
        sys.exit(130)
    except (TurnoutError, OSError) as e:
        _fail(e, 2)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--endpoint",
    help="ipc://PATH or tcp://HOST:PORT (default: ipc:// socket in a private directory); tcp:// "
    "needs the --curve-* options (or, on loopback, --insecure-tcp).",
)
@click.option("--shm", help="Shared-memory segment name (default turnout-$UID).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where the ledger, budgets and pending decisions are kept across restarts (default "
    "$STATE_DIRECTORY, else $XDG_STATE_HOME/turnout, else ~/.local/state/turnout).",
)
@click.option("--metrics", help="Serve /metrics and /healthz on this loopback HOST:PORT.")
@click.option("--foreground", is_flag=True, help="Stay in the foreground and log to stderr.")
@click.option("--no-watch", is_flag=True, help="Do not reload when the CONFIG file changes.")
@click.option(
    "--curve-secret-key",
    type=click.Path(dir_okay=False),
    help="File with the server's Z85 CURVE secret key (mode 0600): clients must use CURVE.",
)
@click.option(
    "--curve-authorized-keys",
    type=click.Path(dir_okay=False),
    help="File with the Z85 public keys of the clients let in, one per line ('#' comments).",
)
@click.option(
    "--insecure-tcp",
    type=click.Choice(["read-only", "read-write"]),
    help="Serve a loopback tcp:// endpoint without CURVE (every local user can connect).",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False),
    help="Append every decision to this file in the Turnout trace format (mode 0600; keys and "
    "prompts hashed), for `turnout replay`. Reopened on SIGHUP.",
)
@click.option("--record-keys", is_flag=True, help="Record request keys as given, not hashed.")
@click.option(
    "--record-text", is_flag=True, help="Record prompts as sent (text or token ids), not hashed."
)
@click.option(
    "--record-buffer",
    type=click.IntRange(min=1),
    help="Bytes of recording events waiting for the writer (default 8 MiB); beyond, dropped and "
    "counted.",
)
@click.option(
    "--record-wait",
    type=click.IntRange(min=0),
    help="Seconds a decision waits for its ok outcome before it is recorded without one "
    "(default 3600).",
)
def serve(
    config: str,
    endpoint: str | None,
    shm: str | None,
    state_dir: str | None,
    metrics: str | None,
    foreground: bool,
    no_watch: bool,
    curve_secret_key: str | None,
    curve_authorized_keys: str | None,
    insecure_tcp: str | None,
    record: str | None,
    record_keys: bool,
    record_text: bool,
    record_buffer: int | None,
    record_wait: int | None,
) -> None:
    """Run the turnout-sidecar daemon on a routing table (execs the installed binary)."""
    import os

    try:
        binary = turnout._sidecar_path()
    except FileNotFoundError as e:
        _fail(e, 2)
    argv = [binary, config]
    for flag, value in (
        ("--endpoint", endpoint),
        ("--shm", shm),
        ("--state-dir", state_dir),
        ("--metrics", metrics),
        ("--curve-secret-key", curve_secret_key),
        ("--curve-authorized-keys", curve_authorized_keys),
        ("--insecure-tcp", insecure_tcp),
        ("--record", record),
        ("--record-buffer", None if record_buffer is None else str(record_buffer)),
        ("--record-wait", None if record_wait is None else str(record_wait)),
    ):
        if value:
            argv += [flag, value]
    for flag, given in (
        ("--foreground", foreground),
        ("--no-watch", no_watch),
        ("--record-keys", record_keys),
        ("--record-text", record_text),
    ):
        if given:
            argv.append(flag)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, argv)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--sidecar", help="Route through the local sidecar at this endpoint (reports too).")
@click.option("--shm", help="With --sidecar: its shared-memory segment (fast path, its table).")
@click.option("--api-key-env", help="Callers must send this variable's value as a Bearer key.")
@click.option(
    "--api-keys-file",
    type=click.Path(dir_okay=False),
    help="Callers' Bearer keys, one per line (owned by you, mode 0600).",
)
def gateway(
    config: str,
    host: str,
    port: int,
    sidecar: str | None,
    shm: str | None,
    api_key_env: str | None,
    api_keys_file: str | None,
) -> None:
    """Serve the OpenAI-compatible front door: POST /v1/chat/completions calls the scenario named
    by `model` through the worker SDK."""
    import asyncio

    try:
        from turnout.gateway import server
    except ImportError as e:
        _fail(RuntimeError(f"{e}: reinstall turnout (aiohttp is one of its dependencies)"), 2)
    if shm and not sidecar:
        _fail(ValueError("--shm needs --sidecar"), 2)
    try:
        keys = server.load_api_keys(api_key_env, api_keys_file)
        server.check_bind(host, keys)
        gw, config_of, counters = server.open_source(config, sidecar=sidecar, shm=shm)
    except (ValueError, *_LOAD_ERRORS) as e:
        _fail(e, 2)
    app = server.build_app(gw, config_of, api_keys=keys, counters=counters)
    announce = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        asyncio.run(server.serve(app, host, port, announce=announce))
    except OSError as e:
        _fail(e, 1)


def _client(endpoint: str | None, timeout_ms: int) -> turnout.Client:
    """A client of the sidecar at `endpoint`; a malformed endpoint is a usage error (exit 2)."""
    try:
        return turnout.Client(endpoint, timeout_ms=timeout_ms)
    except turnout.InvalidArgumentError as e:
        _fail(e, 2)


@main.command()
@click.option("--endpoint", help="The sidecar's endpoint (default: ipc:// in the runtime dir).")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def stats(endpoint: str | None, timeout_ms: int, as_json: bool) -> None:
    """Show a running sidecar's counters and breakers (the stats op)."""
    try:
        with _client(endpoint, timeout_ms) as client:
            reply = client.stats()
    except TurnoutError as e:
        _fail(e, 1)
    if as_json:
        _dump(reply)
        return
    console.print(
        f"sidecar pid {reply['pid']}, generation {reply['generation']}, config "
        f"{reply['config_version']} ({reply['config']}), shm {reply['shm']}, "
        f"up {reply['uptime_s']:.0f} s, {reply['pending_decisions']} pending decisions",
        highlight=False,
    )
    fast = reply.get("fast_path") or {}
    if fast.get("enabled"):
        console.print(
            f"fast path: table {fast['table']}, {fast['clients']} clients, "
            f"{fast['records']} records applied, {fast['rejected']} rejected",
            highlight=False,
        )
    elif fast:
        console.print(f"fast path off: {fast.get('why_not', '')}", highlight=False)
    # Every count and amount of the ledger's field list (statuses, tokens, latencies: --json).
    shown = [c for f in COUNTER_FIELDS if f.kind in ("count", "money") for c in f.columns]
    table = Table(title="Ledger")
    for col in ("scenario", "target", *shown):
        table.add_column(col, justify="right" if col not in ("scenario", "target") else "left")
    for r in reply["counters"]:
        table.add_row(r["scenario"], r["target"], *(str(r[c]) for c in shown))
    console.print(table)
    # What each row says against its scenario's slo and quality_gate ("-": undefined).
    judged = [*SHARE_COLUMNS, *GATE_COLUMNS]
    objectives = Table(title="Objectives (slo, quality_gate)")
    for col in ("scenario", "target", *judged):
        objectives.add_column(col, justify="right" if col not in ("scenario", "target") else "left")
    for r in reply["counters"]:
        objectives.add_row(r["scenario"], r["target"], *(_judged(r[c]) for c in judged))
    console.print(objectives)
    breakers = Table(title="Breakers")
    for col in ("target", "endpoint", "phase", "consecutive failures", "opened", "in flight"):
        breakers.add_column(col)
    for b in reply["breakers"]:
        breakers.add_row(
            b["target"],
            b["endpoint"] or "",
            b["phase"],
            str(b["consecutive_failures"]),
            str(b["times_opened"]),
            str(b["inflight"]),
        )
    console.print(breakers)


@main.command()
@click.option("--endpoint", help="The sidecar's endpoint (default: ipc:// in the runtime dir).")
@click.option("--scenario", "-s", required=True, help="Scenario name, as in the routing table.")
@click.option("--key", help="Sticky key (user, conversation).")
@click.option("--data-class", help="Data class of this request, if stricter than the scenario's.")
@click.option("--input-tokens", type=click.IntRange(min=0), help="Prompt size in tokens.")
@click.option("--max-output-tokens", type=click.IntRange(min=0), help="Output cap in tokens.")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def explain(
    endpoint: str | None,
    scenario: str,
    key: str | None,
    data_class: str | None,
    input_tokens: int | None,
    max_output_tokens: int | None,
    timeout_ms: int,
    as_json: bool,
) -> None:
    """Ask a running sidecar what it would decide for SCENARIO now (nothing is committed)."""
    try:
        with _client(endpoint, timeout_ms) as client:
            d = client.explain(
                scenario,
                key=key,
                data_class=data_class,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
            )
    except TurnoutError as e:
        _fail(e, 1)
    row = {**d.to_dict(), "key": key}
    if as_json:
        _dump(row)
    else:
        console.print(_decisions_table([row]))


_FORMAT_CHOICE = click.Choice(["auto", "turnout", "mooncake", "azure", "burstgpt"])
_models_option = click.option(
    "--models",
    "models_file",
    type=click.Path(dir_okay=False),
    help="JSON file: simulated behaviour per target (docs/replay.md).",
)


def _policies(config: str, extra: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, table path) of every policy: CONFIG under its file name, then each NAME=CONFIG."""
    from pathlib import Path

    out = [(Path(config).stem, config)]
    for spec in extra:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{spec!r}: give NAME=CONFIG", param_hint="--policy")
        out.append((name, path))
    names = [n for n, _ in out]
    for n in names:
        if names.count(n) > 1:
            raise click.BadParameter(
                f"two policies are named {n!r} (CONFIG is named after its file)",
                param_hint="--policy",
            )
    return out


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "trace_format",
    type=_FORMAT_CHOICE,
    default="auto",
    show_default=True,
    help="The trace's format (auto: by extension and first line).",
)
@click.option("--scenario", help="Scenario of the requests the trace gives none.")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="NAME=CONFIG",
    help="Also replay this routing table, as NAME (repeatable; CONFIG is named after its file).",
)
@_models_option
@click.option(
    "--seed",
    "seeds",
    type=int,
    multiple=True,
    default=(0,),
    show_default=True,
    help="Seed (repeatable: each policy is replayed with each seed, named NAME-seedN).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Write OUT/NAME/requests.parquet, OUT/NAME/series.parquet (CSV without pyarrow) and "
    "OUT/summary.json.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per policy, a line each, in the order CONFIG, then each --policy "
    "(each policy's seeds in the order given).",
)
@click.option("--skip-bad", is_flag=True, help="Skip malformed trace lines (they are counted).")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="Policies replayed at once, in parallel processes (default: the CPU count).",
)
@click.option(
    "--imprecise-kv",
    is_flag=True,
    help="Replicas send no KV events: the router learns their caches from its own decisions.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
def replay(
    config: str,
    trace: str,
    trace_format: str,
    scenario: str | None,
    policies: tuple[str, ...],
    models_file: str | None,
    seeds: tuple[int, ...],
    out: str | None,
    as_json: bool,
    skip_bad: bool,
    jobs: int | None,
    imprecise_kv: bool,
    no_progress: bool,
) -> None:
    """Replay TRACE through the routing table CONFIG (and more with --policy) in the simulator."""
    from turnout import replay as replay_module
    from turnout.traces import TraceReader

    tables = _policies(config, policies)
    for _, path in tables:
        cfg = _load(path)  # a bad table is reported before any work starts
        if scenario is not None and scenario not in cfg.scenarios:
            _fail(
                turnout.UnknownScenarioError(
                    f"unknown scenario {scenario!r}: {path} has {', '.join(cfg.scenarios)}"
                ),
                2,
            )
    try:
        reader = TraceReader(trace, trace_format)
        models = replay_module.load_models(models_file) if models_file else None
    except TurnoutError as e:
        _fail(e, 2)
    work = [
        replay_module.Job(
            policy=name,
            name=f"{name}-seed{seed}" if len(seeds) > 1 else name,
            config=path,
            trace=trace,
            seed=seed,
            format=reader.format,
            scenario=scenario,
            models=models,
            precise_kv=not imprecise_kv,
            skip_bad=skip_bad,
            out=out,
        )
        for name, path in tables
        for seed in seeds
    ]
    try:
        results = replay_module.sweep(work, processes=jobs, progress=not no_progress)
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="bold red"), highlight=False)
        sys.exit(130)
    except (TurnoutError, OSError) as e:
        _fail(e, 2 if isinstance(e, (ValueError, KeyError, OSError)) else 1)
    read = results[0].read
    if read.skipped:
        err_console.print(
            Text(f"skipped {read.skipped} bad trace lines; first: {read.skipped_examples[0]}"),
            highlight=False,
        )
    if read.failed_in_source:
        err_console.print(
            f"left out {read.failed_in_source} requests that failed in the source "
            "(0 response tokens)",
            highlight=False,
        )
    if out is not None:
        replay_module.write_sweep_summary(out, results)
    if as_json:
        for r in results:
            click.echo(replay_module.summary_json(r))
        return
    console.print(_replay_table(results))
    for r in results:
        for name, m in r.summary["migrations"].items():
            console.print(_migration_table(r.job.label, name, m))


def _migration_table(policy: str, scenario: str, m: dict[str, Any]) -> Table:
    """A migration's rehearsal in one replay: its moves; for an abort, what it cost until then."""
    outcome = m["outcome"]
    if outcome in ("ramping", "paused"):
        outcome += " at the trace's end"
    caption = None
    if m["abort"] is not None:
        a, c = m["abort"], m["abort"]["cost_of_regression"]
        caption = (
            f"aborted ({a['cause']}) at {a['at_s']:,.1f} s after {a['requests']:,} requests, "
            f"{a['candidate_requests']:,} on the candidate; the regression cost until then: "
            f"{'+' if c['extra_usd'] >= 0 else ''}{short_money(c['extra_usd'])} USD vs the "
            f"baseline (candidate {short_money(c['candidate_usd'])} USD, at the baseline's cost "
            f"{short_money(c['baseline_equivalent_usd'])} USD), "
            f"{c['failed']:,} failed and {c['rejected']:,} rejected candidate requests"
        )
    title = f"Migration of {scenario} in {policy}: {m['baseline']} -> {m['candidate']}, {outcome}"
    table = Table(title=title, caption=caption)
    for col in ("t s", "from", "to", "step", "%", "cause", "requests", "candidate", "detail"):
        left = col in ("from", "to", "cause", "detail")
        table.add_column(col, justify="left" if left else "right")
    for t in m["transitions"]:
        table.add_row(
            f"{t['at_s']:,.1f}",
            t["from"],
            t["to"],
            str(t["step"]),
            str(t["percent"]),
            t["cause"],
            f"{t['requests']:,}",
            f"{t['candidate_requests']:,}",
            t["detail"],
        )
    return table


def _replay_table(results: list[Any]) -> Table:
    table = Table(title="Replay")
    columns = (
        "policy", "requests", "served", "fallbacks", "failed", "cost $", "accepted",
        "$ / accepted", "TTFT p95 ms", "latency p95 ms", "cache hit (pred / real)", "GPU-hours",
        "SLO met", "gate",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in results:
        s = r.summary
        hit = s["cache_hit_rate"]
        table.add_row(
            r.job.label,
            str(s["requests"]),
            str(s["served"]),
            str(s["fallbacks"]),
            str(s["failed"]),
            str(s["cost_usd"]),
            str(s["accepted"]),
            short_money(s["cost_per_accepted_usd"]),
            _num(s["ttft_ms"]["p95"]),
            _num(s["latency_ms"]["p95"]),
            f"{_num(hit['predicted'])} / {_num(hit['realized'])}",
            _num(s["gpu_hours"]),
            _tally([e["slo_met"] for e in s["scenarios"].values()], True),
            _tally([e["quality_gate"] for e in s["scenarios"].values()], "pass"),
        )
    return table


def _tally(verdicts: list[Any], good: Any) -> str:
    """``k/n``: of the scenarios with a verdict (not None), how many are `good`."""
    given = [v for v in verdicts if v is not None]
    return f"{sum(v == good for v in given)}/{len(given)}" if given else "-"


def _judged(value: float | str | None) -> str:
    """A derived ledger column in the stats table: a share as a percentage rounded down to 0.01
    (0.94996 reads 94.99 %, never a 95 % it missed), a gate as is, "-" if undefined."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    # round(…, 6) first: 0.95 * 10000 is 9499.999999999998 in binary floating point.
    return f"{math.floor(round(value * 10_000, 6)) / 100:.2f} %"




def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--requests", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Mean requests/s.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Spread the requests over this many seconds (instead of --rate; default rate 10/s).",
)
@click.option(
    "--scenarios",
    multiple=True,
    metavar="NAME[:DATA_CLASS],...",
    help="Scenarios (with their data class), most popular first; default: the bundled example's.",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["turnout", "parquet"]),
    help="Output format (default: parquet for *.parquet, else Turnout JSON Lines).",
)
@click.option(
    "--block-tokens",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Tokens per block id in the trace.",
)
def generate(
    out: str,
    requests: int,
    seed: int,
    rate: float | None,
    duration: float | None,
    scenarios: tuple[str, ...],
    out_format: str | None,
    block_tokens: int,
) -> None:
    """Generate a seeded trace of multi-turn, diurnal and bursty traffic into OUT."""
    import time

    from turnout.traces import TraceWriter
    from turnout.workload import DEFAULT_SCENARIOS, WorkloadShape, parse_scenarios
    from turnout.workload import generate as generate_trace

    if rate is not None and duration is not None:
        raise click.UsageError("give --rate or --duration, not both")
    try:
        mix = parse_scenarios(scenarios) if scenarios else list(DEFAULT_SCENARIOS)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--scenarios") from None
    fmt = out_format or ("parquet" if out.endswith(".parquet") else "turnout")
    started = time.perf_counter()
    try:
        with TraceWriter(out, fmt) as writer:  # type: ignore[arg-type]
            for chunk in generate_trace(
                requests,
                seed=seed,
                rate=rate,
                duration_s=duration,
                scenarios=mix,
                shape=WorkloadShape(block_tokens=block_tokens),
            ):
                writer.write_columns(chunk)
    except (TurnoutError, OSError) as e:
        _fail(e, 2)
    elapsed = time.perf_counter() - started
    err_console.print(
        f"wrote {writer.requests} requests to {out} ({fmt}) in {elapsed:.2f} s "
        f"({writer.requests / max(elapsed, 1e-9):,.0f} requests/s)",
        highlight=False,
    )


@main.command()
@click.argument("scenario_file", metavar="SCENARIO.yaml", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON, not Markdown.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Also write OUT/record.md and OUT/record.json.",
)
@click.option("--no-plan", is_flag=True, help="Skip the planner's cost comparison (fast).")
@click.option("--seed", type=int, default=0, show_default=True, help="The planner's seed.")
def decide(scenario_file: str, as_json: bool, out: str | None, no_plan: bool, seed: int) -> None:
    """Write the decision record of a scenario decision file (docs/decide.md).

    Exit status: 0 with a recommendation, 3 when it cannot recommend (the record says why),
    2 when the file cannot be read (file:line:col).
    """
    from pathlib import Path

    from turnout.decide import decide as decide_scenario

    try:
        record = decide_scenario(scenario_file, plan=not no_plan, seed=seed)
    except (TurnoutError, OSError) as e:
        _fail(e, 2)
    markdown, text = record.to_markdown(), record.to_json_text()
    if out is not None:
        folder = Path(out)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "record.md").write_text(markdown, encoding="utf-8")
            (folder / "record.json").write_text(text + "\n", encoding="utf-8")
        except OSError as e:
            _fail(e, 2)
    click.echo(text if as_json else markdown, nl=as_json)
    if record.recommendation == "cannot_recommend":
        sys.exit(3)


def _diurnal_shape(spec: str) -> tuple[float, ...] | None:
    """--diurnal's value as capacity.Demand.diurnal (None = flat)."""
    from turnout.workload import hourly_shape

    if spec == "flat":
        return None
    if spec == "generator":
        return hourly_shape()
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{spec!r}: give flat, generator or 24 comma-separated numbers", param_hint="--diurnal"
        ) from None
    if len(values) != 24 or not all(math.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise click.BadParameter(
            f"give 24 finite hourly multipliers >= 0, not all 0 (got {len(values)} values)",
            param_hint="--diurnal",
        )
    mean = sum(values) / 24
    return tuple(v / mean for v in values)


@main.command("plan")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--scenario", "-s", required=True, help="Scenario name, as in the routing table.")
@click.option("--self-hosted", "self_hosted", required=True, help="The self-hosted target to size.")
@click.option("--maas", required=True, help="The MaaS target to compare with.")
@click.option(
    "--trace",
    type=click.Path(dir_okay=False),
    help="Measure the demand from this trace (instead of --rate and the sizes).",
)
@click.option(
    "--format",
    "trace_format",
    type=_FORMAT_CHOICE,
    default="auto",
    show_default=True,
    help="The trace's format.",
)
@click.option("--rate", type=float, help="Mean requests/s (instead of --trace).")
@click.option("--peak-to-mean", type=float, default=1.0, show_default=True)
@click.option(
    "--diurnal",
    default="flat",
    show_default=True,
    help="The daily shape: flat, generator (turnout generate's curve: 0.4x at 03:00 UTC, 1.6x "
    "at 15:00), or 24 comma-separated hourly multipliers (UTC hours 0-23, scaled to mean 1).",
)
@click.option("--input-tokens", type=int, default=1000, show_default=True)
@click.option("--output-tokens", type=int, default=200, show_default=True)
@click.option(
    "--shared-prefix-tokens",
    type=int,
    default=0,
    show_default=True,
    help="Leading prompt tokens every request shares (a system prompt): cacheable.",
)
@_models_option
@click.option(
    "--reserve",
    type=float,
    default=0.2,
    show_default=True,
    help="Spare production replicas, as a share of the SLO pool (rounded up).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--duration",
    type=float,
    default=600.0,
    show_default=True,
    help="Simulated seconds of each measurement.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Write OUT/plan.json, OUT/plan.md and the frames as CSV (lines, options, curve, "
    "sensitivity).",
)
def plan_command(
    config: str,
    scenario: str,
    self_hosted: str,
    maas: str,
    trace: str | None,
    trace_format: str,
    rate: float | None,
    peak_to_mean: float,
    diurnal: str,
    input_tokens: int,
    output_tokens: int,
    shared_prefix_tokens: int,
    models_file: str | None,
    reserve: float,
    seed: int,
    duration: float,
    as_json: bool,
    out: str | None,
) -> None:
    """Plan SCENARIO's capacity: size the self-hosted pool for its SLO by simulation, price its
    fully loaded month, compare MaaS-only, self-hosted-only and hybrid, find the break-even."""
    from turnout import capacity
    from turnout import plan as plan_module
    from turnout.replay import load_models

    if (trace is None) == (rate is None):
        raise click.UsageError("give --trace FILE or --rate RPS (one of them)")
    if trace is not None:
        ctx = click.get_current_context()
        shape = ("peak_to_mean", "diurnal", "input_tokens", "output_tokens", "shared_prefix_tokens")
        given = [
            "--" + name.replace("_", "-")
            for name in shape
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:  # the trace measures them: a value given too would be silently ignored
            raise click.UsageError(f"{', '.join(given)} describe a --rate demand, not a --trace")
    cfg = _load(config)
    try:
        if trace is not None:
            demand = capacity.Demand.from_trace(trace, scenario=scenario, format=trace_format)
        else:
            demand = capacity.Demand(
                mean_rps=rate,
                peak_to_mean=peak_to_mean,
                diurnal=_diurnal_shape(diurnal),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                shared_prefix_tokens=shared_prefix_tokens,
            )
        models = load_models(models_file) if models_file else None
        if not (duration > 0):
            raise turnout.PlanError(f"cannot plan: --duration must be > 0 s (got {duration})")
        overheads = plan_module.Overheads.from_target(cfg, self_hosted, reserve=reserve)
        result = plan_module.plan(
            cfg,
            scenario,
            self_hosted=self_hosted,
            maas=maas,
            demand=demand,
            models=models,
            overheads=overheads,
            seed=seed,
            duration_s=duration,
        )
    except (TurnoutError, OSError) as e:
        _fail(e, 2)  # every refusal is about the inputs (docs/plan.md, "Bad input")
    if out is not None:
        try:
            _write_plan(result, out)
        except OSError as e:
            _fail(e, 2)
    if as_json:
        _dump(result.to_json())
        return
    _print_plan(result)


def _write_plan(result: Any, out: str) -> None:
    """OUT/plan.json, OUT/plan.md and OUT/{lines,options,curve,sensitivity}.csv."""
    from pathlib import Path

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan.json").write_text(
        json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8"
    )
    (folder / "plan.md").write_text(result.to_markdown(), encoding="utf-8")
    for name in ("lines", "options", "curve", "sensitivity"):
        getattr(result, name).to_csv(folder / f"{name}.csv", index=False)


def _print_plan(p: Any) -> None:
    d = p.demand
    console.print(
        f"[bold]{p.scenario}[/]: {d.mean_rps:g} requests/s (peak {d.peak_rps:g}), "
        f"{d.requests_per_month():,.0f} requests/month; {p.self_hosted}: "
        f"{p.sizing.replicas} replica(s) meet the SLO at peak",
        highlight=False,
    )
    console.print(_frame_table(p.lines, f"The fully loaded month of {p.self_hosted}"))
    console.print(f"total: ${p.self_hosted_usd_per_month} per month", highlight=False)
    console.print(_frame_table(p.options, f"Options ({p.maas} for MaaS)"))
    be = p.breakeven_requests_per_month
    console.print(
        "break-even: "
        + (f"{be:,.0f} requests/month" if be is not None else "never (self-hosted costs more)"),
        highlight=False,
    )
    console.print(_frame_table(p.sensitivity, "Sensitivity"))
    console.print(f"[bold]recommendation: {p.recommendation}[/]", highlight=False)
    for reason in p.reasons:
        console.print(Text(f"- {reason}"), highlight=False)


def _frame_table(frame: Any, title: str) -> Table:
    """A DataFrame as a Rich table: money exact, other numbers to 4 significant digits."""
    import pandas as pd

    table = Table(title=title)
    for i, col in enumerate(frame.columns):
        table.add_column(str(col), justify="left" if i == 0 else "right")
    for row in frame.astype(object).itertuples(index=False):
        table.add_row(*(_cell(v, pd.NA) for v in row))
    return table


def _cell(value: Any, na: Any) -> str:
    if value is None or value is na:
        return "-"
    if isinstance(value, float):
        return "-" if value != value else _num(value)  # NaN: no figure
    if isinstance(value, Decimal):
        return f"{value:.6g}" if abs(value) < 1000 else f"{value:.2f}"  # --json: exact
    return str(value)


# -- turnout migration ---------------------------------------------------------------------------

_endpoint_option = click.option(
    "--endpoint", help="The sidecar's endpoint (default: ipc:// in the runtime dir)."
)
_timeout_option = click.option(
    "--timeout-ms", type=click.IntRange(min=1), default=2000, show_default=True
)
# A refused command or status (no such scenario or migration, a phase that does not allow it, an
# endpoint that is neither local nor authenticated): its message and exit 2. Not answering: exit 1.
_REFUSED = (
    turnout.NoMigrationError,
    turnout.MigrationConflictError,
    turnout.PermissionDeniedError,
    turnout.UnknownScenarioError,
    turnout.ProtocolError,
)


def _migration_call(
    endpoint: str | None, timeout_ms: int, scenario: str | None, action: str
) -> dict[str, Any]:
    try:
        with _client(endpoint, timeout_ms) as client:
            return client.migration(scenario, action)
    except _REFUSED as e:
        _fail(e, 2)
    except TurnoutError as e:
        _fail(e, 1)


def _finite(value: Any) -> Any:
    """`value` with every infinite float (an interval without data) as None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    import datetime

    t = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _signed_pct(x: float) -> str:
    """A regression bound in percentage points (rates) or percent (cost)."""
    if not math.isfinite(x):
        return "-inf" if x < 0 else "+inf"
    return f"{x * 100:+.2f}"


def _estimate(metric: str, x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"${x:.6f}" if metric == "cost_per_accepted" else f"{x * 100:.2f} %"


def _print_migration(m: dict[str, Any], transitions: int = 5) -> None:
    steps = m["steps"]
    console.print(
        Text.assemble(
            (m["scenario"], "bold"),
            f": {m['phase']}, step {m['step'] + 1}/{len(steps)} {steps}, candidate "
            f"{m['candidate_percent']} % to {m['candidate']} (baseline {m['baseline']}), "
            f"incident owner {m['incident_owner']}",
        ),
        highlight=False,
    )
    arms = m["arms"]
    console.print(
        f"  {m['step_outcomes']}/{m['min_samples']} candidate samples this step; stage "
        f"{m['stage']}, attempt {m['attempt']}, delta {m['delta']}",
        highlight=False,
    )
    console.print(
        f"  started {_utc(m['started_at'])}, step started {_utc(m['step_started_at'])}, "
        f"deadline {_utc(m['deadline_at'])}; outcomes: candidate {arms['candidate']['outcomes']} "
        f"({arms['candidate']['errors']} errors), baseline {arms['baseline']['outcomes']} "
        f"({arms['baseline']['errors']} errors)",
        highlight=False,
    )
    if m["criteria"]:
        table = Table(title=f"{m['scenario']}: stop criteria (regression in pp; cost in %)")
        for col in ("metric", "candidate", "baseline", "regression", "min effect", "verdict"):
            table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
        for c in m["criteria"]:
            style = {"fail": "red", "pass": "green"}.get(c["verdict"], "yellow")
            table.add_row(
                c["metric"],
                _estimate(c["metric"], c["candidate"]),
                _estimate(c["metric"], c["baseline"]),
                f"[{_signed_pct(c['lo'])}, {_signed_pct(c['hi'])}]",
                f"{c['min_effect'] * 100:.2f}",
                Text(c["verdict"], style=style),
            )
        console.print(table)
    if m["transitions"]:
        table = Table(title=f"{m['scenario']}: last transitions")
        for col in ("at", "move", "step", "cause", "candidate / baseline outcomes", "detail"):
            table.add_column(col, overflow="fold")
        for t in m["transitions"][-transitions:]:
            table.add_row(
                _utc(t["at"]),
                f"{t['from_phase']} -> {t['to_phase']}",
                f"{t['step'] + 1}/{len(steps)}",
                t["cause"],
                f"{t['candidate_outcomes']} / {t['baseline_outcomes']}",
                Text(t["detail"]),
            )
        console.print(table)


@main.group()
def migration() -> None:
    """A running sidecar's migrations (canaries): status, and promote/pause/resume/abort."""


@migration.command("status")
@click.argument("scenario", required=False)
@_endpoint_option
@_timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (infinite bounds as null).")
def migration_status(
    scenario: str | None, endpoint: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Show the migration of SCENARIO, or of every scenario that has one."""
    reply = _migration_call(endpoint, timeout_ms, scenario, "status")
    if as_json:
        _dump(_finite(reply))
        return
    if not reply["migrations"]:
        console.print("no scenario of the served table has a migration", highlight=False)
    for m in reply["migrations"]:
        _print_migration(m)


def _migration_command(action: str) -> click.Command:
    @_endpoint_option
    @_timeout_option
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (infinite bounds as null).")
    @click.argument("scenario")
    def command(scenario: str, endpoint: str | None, timeout_ms: int, as_json: bool) -> None:
        reply = _migration_call(endpoint, timeout_ms, scenario, action)
        if as_json:
            _dump(_finite(reply))
            return
        t, m = reply["transition"], reply["migration"]
        console.print(
            f"{scenario}: {t['from_phase']} -> {t['to_phase']} ({t['cause']}), step "
            f"{t['step'] + 1}/{len(m['steps'])}, candidate {m['candidate_percent']} %",
            highlight=False,
        )

    command.__doc__ = {
        "promote": "Promote SCENARIO's candidate to 100 % now (ends the run).",
        "pause": "Pause SCENARIO's canary at its step (aborted unless resumed in max_step_s).",
        "resume": "Resume SCENARIO's paused canary at the same step, its deadline from now.",
        "abort": "Abort SCENARIO's canary: all traffic back to the baseline (ends the run).",
    }[action]
    return migration.command(action)(command)


for _action in ("promote", "pause", "resume", "abort"):
    _migration_command(_action)


if __name__ == "__main__":  # pragma: no cover
    main()
