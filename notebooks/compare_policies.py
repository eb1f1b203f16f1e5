# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     name: python3
#     display_name: Python 3
# ---

# %% [markdown]
# # MaaS, self-hosted or hybrid? Replay one day of support traffic through three policies
#
# The decisions below are the production ones: the same C++ core routes every request, with the
# log's timestamps and a fixed seed, in the what-if engine (docs/replay.md): requests queue, run
# concurrently and wait for one another; the MaaS providers keep their own prompt caches and the
# self-hosted replicas their own KV caches, so the cache hit rate is measured, not assumed.
# The headline is **cost per accepted outcome**, shown two ways for
# the self-hosted pool: the *marginal* GPU time the requests used, and the *fully loaded* cost of
# the pool for the day (every GPU-hour, plus staging, canary, engineering, evals...). They are never
# mixed: a token-price spreadsheet only sees the first.
#
# This file is a notebook in jupytext's percent format: open it in Jupyter, or run it as a script
# (`python notebooks/compare_policies.py --out out/`), as the test suite does.

# %%
import argparse
import random
import sys
from decimal import Decimal
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import turnout
from turnout.replay import replay
from turnout.traces import TraceRow

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, default=HERE / "out")
parser.add_argument("--requests", type=int, default=6000)
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A day of traffic
# Support tickets from 12 products, each with its own long system prompt (instructions, style guide,
# examples); tickets arrive with a daytime peak; summaries are 150-400 tokens.

# %%
rng = random.Random(7)
DAY = 1_767_225_600.0  # 2026-01-01 00:00 UTC
system_prompts = [f"[product {p}] " + "You summarize support tickets. " * 220 for p in range(12)]
requests = []
for i in range(args.requests):
    hour = rng.choices(range(24), weights=[1 + 4 * (8 <= h <= 18) for h in range(24)])[0]
    at = DAY + hour * 3600 + rng.random() * 3600
    product = min(int(rng.expovariate(0.35)), 11)
    ticket = f"ticket {i}: " + "customer text " * rng.randint(40, 400)
    text = turnout.canonical_prompt(
        [
            {"role": "system", "content": system_prompts[product]},
            {"role": "user", "content": ticket},
        ]
    )
    requests.append(
        TraceRow(
            at=at,
            scenario="support-summarization",
            key=None,
            input_tokens=len(text) // 4,
            output_tokens=rng.randint(150, 400),
            text=text,
        )
    )
requests.sort(key=lambda r: r.at)
print(f"{len(requests)} requests, {sum(r.input_tokens for r in requests):,} prompt tokens")

# %% [markdown]
# ## Replay through each policy

# %%
# Simulated behaviour per target (docs/replay.md, "Simulated providers"): MaaS latency
# distributions, error rates and quality; the self-hosted pool keeps its table's replicas and the
# default step model.
models = {
    "gpt-4.1-mini": {
        "ttft_ms": {"p50": 450, "p95": 1200},
        "output_tokens_per_s": {"p50": 110, "p95": 60},
        "accept_rate": 0.96,
        "error_rate": 0.01,
    },
    "claude-sonnet-4": {
        "ttft_ms": {"p50": 700, "p95": 1800},
        "output_tokens_per_s": {"p50": 70, "p95": 40},
        "accept_rate": 0.98,
    },
    "llama-70b": {"accept_rate": 0.95},
}
results = {}
for name in ("maas_only", "self_hosted_only", "hybrid"):
    config = turnout.load_config(HERE / "policies" / f"{name}.yaml")
    results[name] = (config, replay(config, requests, models=models, seed=1))


def usd(picos: int) -> Decimal:
    return Decimal(int(picos)).scaleb(-12)


rows = []
for name, (config, res) in results.items():
    frame = res.requests
    accepted = res.summary["accepted"]
    on_pool = frame["target"] == "llama-70b"
    tokens = usd(sum(int(c) for c in frame.loc[~on_pool, "cost_picos"]))
    marginal = usd(sum(int(c) for c in frame.loc[on_pool, "cost_picos"]))
    # The pool's provisioned day (every GPU-hour plus the monthly overheads) comes from its table.
    pools = turnout.Router(config).self_hosted_costs(86_400)
    loaded = sum((p["fully_loaded_usd"] for p in pools), Decimal(0))
    if not on_pool.any():
        loaded = Decimal(0)
    rows.append(
        {
            "policy": name,
            "accepted": accepted,
            "maas_usd": tokens,
            "self_hosted_marginal_usd": marginal,
            "self_hosted_fully_loaded_usd": loaded,
            "per_accepted_marginal_usd": (tokens + marginal) / accepted,
            "per_accepted_fully_loaded_usd": (tokens + loaded) / accepted,
            "cache_hit_rate": res.summary["cache_hit_rate"]["realized"],
            "p95_latency_ms": res.summary["latency_ms"]["p95"],
        }
    )
summary = pd.DataFrame(rows).set_index("policy")
summary.to_csv(args.out / "summary.csv")  # exact decimals
print(summary.astype(float).round(6).to_string())

# %% [markdown]
# Note the hybrid's MaaS share: with `affinity: {prefix: true}` and no request key, the sticky unit
# is the prompt's prefix family (here: the product's system prompt), so a 10 % canary moves whole
# products, not 10 % of tickets. Pass a `key` per ticket or customer for a per-request split.
#
# ## Cost per accepted outcome: marginal vs fully loaded
# The self-hosted pool looks cheapest on marginal GPU time and is the most expensive once its GPUs
# are paid for all day at this volume: the decision depends on volume and utilisation, per
# scenario — which is what this notebook lets a team check before a migration.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
x = range(len(summary))
ax.bar(
    [i - 0.2 for i in x],
    summary["per_accepted_marginal_usd"].astype(float),
    width=0.4,
    label="marginal",
)
ax.bar(
    [i + 0.2 for i in x],
    summary["per_accepted_fully_loaded_usd"].astype(float),
    width=0.4,
    label="fully loaded",
)
ax.set_xticks(list(x), summary.index)
ax.set_ylabel("USD per accepted outcome")
ax.set_yscale("log")
ax.legend()
fig.tight_layout()
fig.savefig(args.out / "cost_per_accepted.png", dpi=110)

# %%
per_target = (
    results["hybrid"][1]
    .requests.groupby(["target", "outcome"])
    .agg(requests=("arrival_s", "size"), cached_realized=("cached_realized", "sum"))
)
print(per_target.to_string())
