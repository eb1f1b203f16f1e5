"""The README's first command: route example traffic through the bundled routing table and show the
decisions, the provider-shaped outcomes priced exactly, and the ledger."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

import turnout
from turnout import TurnoutError

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed clock makes the demo reproducible

# (scenario, key, data_class, input_tokens, max_output_tokens)
REQUESTS: list[tuple[str, str, str | None, int, int]] = [
    ("support-summarization", "ticket-1001", None, 1800, 300),
    ("support-summarization", "ticket-1002", None, 2400, 300),
    ("support-summarization", "ticket-1003", None, 900, 200),
    ("support-summarization", "ticket-1004", None, 3100, 400),
    ("support-summarization", "ticket-1005", None, 1500, 300),
    ("support-summarization", "ticket-1006", None, 2200, 300),
    ("contract-extraction", "contract-77", None, 42_000, 2048),
    (
        "contract-extraction",
        "contract-78",
        None,
        130_000,
        2048,
    ),  # too long: fails closed, never MaaS
    ("agent-assist", "user-42", None, 6_000, 800),
    ("agent-assist", "user-43", None, 5_200, 800),
    ("agent-assist", "user-44", "confidential", 5_000, 800),  # boundary: no target may take it
]


def _short(value: Decimal | None) -> str:
    # A per-outcome average is a quotient: shown to a tenth of a micro-dollar (--json has it all).
    return "-" if value is None else str(value.quantize(Decimal("1e-7")))


def usage_for(provider: str, prompt: int, cached: int, output: int) -> dict[str, Any]:
    """The usage object `provider` would return for this request (cache read = `cached` tokens)."""
    cached = max(0, min(cached, prompt))
    if provider == "anthropic":
        write = prompt - cached if prompt >= 1024 else 0
        return {
            "input_tokens": prompt - cached - write,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": write,
            "output_tokens": output,
        }
    if provider == "gemini":
        return {
            "usageMetadata": {
                "promptTokenCount": prompt,
                "cachedContentTokenCount": cached,
                "candidatesTokenCount": output,
            }
        }
    if provider == "deepseek":
        return {
            "prompt_tokens": prompt,
            "prompt_cache_hit_tokens": cached,
            "prompt_cache_miss_tokens": prompt - cached,
            "completion_tokens": output,
        }
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def provider_usage(provider: str, prompt: int, output: int) -> dict[str, Any]:
    """The demo's usage for a request: `provider`'s shape, half the prompt read from its cache."""
    return usage_for(provider, prompt, prompt // 2 // 128 * 128, output)


def run_demo(
    config: turnout.Config,
    *,
    console: Console,
    as_json: bool,
    decisions_table: Callable[[list[dict[str, Any]]], Table],
    dump: Callable[[Any], None],
) -> None:
    router = turnout.Router(config, seed=7)
    rows: list[dict[str, Any]] = []
    for i, (scenario, key, data_class, prompt, max_out) in enumerate(REQUESTS):
        now = NOW + i
        try:
            d = router.route(
                scenario,
                key=key,
                data_class=data_class,
                input_tokens=prompt,
                max_output_tokens=max_out,
                now=now,
            )
        except TurnoutError as e:
            rows.append(
                {"scenario": scenario, "key": key, "error": type(e).__name__, "message": str(e)}
            )
            continue
        rows.append({**d.to_dict(), "key": key})
        provider = config.target_info(d.target)["provider"]
        output = max_out * 3 // 4
        router.report(
            d.id,
            target=d.target,
            status="ok",
            usage=provider_usage(provider, prompt, output),
            ttft_ms=180 + 40 * i,
            latency_ms=1200 + 150 * i,
            accepted=(i % 5 != 3),
            now=now + 2,
        )
    ledger = [r for r in router.counters() if r["requests"] or r["outcomes"]]
    if as_json:
        dump(
            {
                "config": config.source,
                "version": config.version,
                "decisions": rows,
                "ledger": ledger,
                "scenarios": router.scenario_summary(),
            }
        )
        return
    console.print(
        f"[green]ok[/] {config.source}: {len(config.targets)} targets, "
        f"{len(config.scenarios)} scenarios, version {config.version}",
        highlight=False,
    )
    console.print(decisions_table(rows))
    table = Table(title="Ledger (scenario x target)")
    for col in (
        "scenario",
        "target",
        "requests",
        "ok",
        "accepted",
        "uncached in",
        "cache read",
        "cache write",
        "output",
        "cost $",
        "$ / accepted",
    ):
        table.add_column(col, justify="right" if col not in ("scenario", "target") else "left")
    for r in ledger:
        table.add_row(
            r["scenario"],
            r["target"],
            str(r["requests"]),
            str(r["ok"]),
            str(r["accepted"]),
            str(r["uncached_input_tokens"]),
            str(r["cache_read_tokens"]),
            str(r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"]),
            str(r["output_tokens"]),
            str(r["cost_usd"]),  # exact
            _short(r["cost_per_accepted_usd"]),
        )
    console.print(table)
