"""Replay a traffic log through a routing table, with simulated providers, and read the ledger.

The decisions are the production ones (the same C++ core, time injected from the log, a fixed seed);
only the providers are simulated: each target answers with its own provider's usage shape, cache
behaviour (a warm prefix is read, a cold one written), latency and quality. Use it to compare MaaS,
self-hosted and hybrid policies on the same traffic before changing production.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from turnout import _core
from turnout._errors import NoEligibleTargetError
from turnout.router import Router


@dataclass(frozen=True)
class TargetModel:
    """How a simulated target behaves: latency (ms), acceptance rate and error rate."""

    ttft_ms: float = 400.0
    ms_per_output_token: float = 12.0
    accept_rate: float = 0.95
    error_rate: float = 0.01


@dataclass(frozen=True)
class Request:
    """One request of a traffic log."""

    at: float  # seconds since the epoch
    scenario: str
    key: str | None
    input_tokens: int
    output_tokens: int
    text: str | None = None  # the prompt's canonical text, for prefix affinity


@dataclass
class ReplayResult:
    """What a replay produced: the router (ledger, breakers, directories) and per-request rows."""

    router: Router
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, *, period_s: float | None = None) -> list[dict[str, Any]]:
        """Per scenario: cost, accepted outcomes, cost per accepted outcome; with ``period_s``, also
        the self-hosted pools' fully loaded cost over that period (never mixed into token cost)."""
        rows = self.router.scenario_summary()
        if period_s is not None:
            pools = self.router.self_hosted_costs(period_s)
            loaded = sum((p["fully_loaded_usd"] for p in pools), Decimal(0))
            marginal = sum((p["marginal_usd"] for p in pools), Decimal(0))
            for r in rows:
                r["self_hosted_fully_loaded_usd"] = loaded
                r["self_hosted_marginal_usd"] = marginal
        return rows


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


def replay(
    config: _core.Config,
    requests: Iterable[Request],
    *,
    models: Mapping[str, TargetModel] | None = None,
    seed: int = 0,
) -> ReplayResult:
    """Routes every request as production would, simulates the target's answer, reports it with the
    provider's native usage and a quality verdict. Deterministic for a given seed."""
    rng = random.Random(seed)
    router = Router(config, seed=seed)
    models = models or {}
    result = ReplayResult(router)
    for req in requests:
        try:
            d = router.route(
                req.scenario,
                key=req.key,
                input_tokens=req.input_tokens,
                max_output_tokens=req.output_tokens,
                text=req.text,
                now=req.at,
            )
        except NoEligibleTargetError as e:  # includes BudgetExhaustedError
            result.rows.append(
                {"at": req.at, "scenario": req.scenario, "target": None, "error": type(e).__name__}
            )
            continue
        # The worker tries the decision's target, then its fallbacks in order, as production would.
        now = req.at
        for target in [d.target, *d.fallbacks]:
            m = models.get(target, TargetModel())
            failed = rng.random() < m.error_rate
            latency = m.ttft_ms + (0 if failed else m.ms_per_output_token * req.output_tokens)
            cached = d.expected_cached_tokens if target == d.target else 0
            usage = None
            accepted = None
            if not failed:
                provider = config.target_info(target)["provider"]
                usage = usage_for(provider, req.input_tokens, cached, req.output_tokens)
                accepted = rng.random() < m.accept_rate
            now += latency / 1000
            receipt = router.report(
                d.id,
                target=target,
                status="error" if failed else "ok",
                usage=usage,
                ttft_ms=m.ttft_ms,
                latency_ms=latency,
                accepted=accepted,
                now=now,
            )
            result.rows.append(
                {
                    "at": req.at,
                    "scenario": req.scenario,
                    "target": target,
                    "fallback": target != d.target,
                    "cached_tokens": cached,
                    "cost_usd": receipt["cost_usd"],
                    "accepted": accepted,
                    "latency_ms": latency,
                    "error": "error" if failed else None,
                }
            )
            if not failed:
                break
    return result
