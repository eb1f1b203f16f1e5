# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     name: python3
#     display_name: Python 3
# ---

# %% [markdown]
# # Cache-aware routing, and the hit-rate forecast of a migration
#
# A team pays a MaaS provider for support summarization and plans to move it to its own vLLM pool.
# Their spreadsheet takes the provider's prompt-cache hit rate (it is on the invoice) and assumes
# the pool will reuse as much of each prompt. It will not, necessarily: a pool's cache is its
# replicas' KV memory, a request only hits it on the replica that holds its prefix, and which
# replica that is depends on the routing. Moving changes cache semantics (TTL, granularity, write
# and read prices, locality); the forecast must use the *new* hit rate.
#
# This notebook replays the same traffic (shared system prompts, multi-turn sessions:
# `turnout.workload.generate`, a fixed seed) through the MaaS table and through a four-replica
# self-hosted pool with prefix affinity on and off, in the what-if engine (docs/replay.md). Each
# cache is simulated, not assumed: the provider's by its documented rules, each replica's as a true
# KV cache. It compares the router's predicted hit rate with the realized one, per policy and over
# time, then prices the migration with the old rate and with the new one.
#
# Run it in Jupyter, or as a script: `python notebooks/cache_forecast.py --out out/`.

# %%
import argparse
import json
import os
import sys
from decimal import Decimal, localcontext
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import yaml

import turnout
from turnout.replay import replay, usd
from turnout.workload import generate

# The notebook's folder (its policy tables): this file's, or TURNOUT_NOTEBOOK_DIR in a kernel
# started elsewhere, or the working directory (Jupyter starts kernels in the notebook's folder).
HERE = (
    Path(__file__).resolve().parent
    if "__file__" in globals()
    else Path(os.environ.get("TURNOUT_NOTEBOOK_DIR", Path.cwd()))
)
parser = argparse.ArgumentParser()
parser.add_argument(
    "--out", type=Path, default=os.environ.get("TURNOUT_NOTEBOOK_OUT", HERE / "out")
)
parser.add_argument("--requests", type=int, default=8000)
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The traffic
# Support conversations: each session uses one of 8 shared system prompts (a few popular ones) and
# one of 4 tool schemas, and runs a few turns; turn k+1's prompt extends turn k's exactly. Three
# requests a second on average, with a daily curve and bursts.

# %%
SCENARIO = "support-summarization"
RATE_RPS = 3.0
trace = list(generate(args.requests, seed=3, rate=RATE_RPS, scenarios=[(SCENARIO, "deidentified")]))
arrivals = pd.concat([pd.Series(c.arrival_s) for c in trace])
span_h = (arrivals.max() - arrivals.min()) / 3600
print(f"{args.requests:,} requests over {span_h:.2f} h")

# %% [markdown]
# ## Three tables
# The MaaS table routes to gpt-4.1-mini (OpenAI's cache: prompts of 1,024 tokens or more, 128-token
# steps, minutes of TTL). The pool is `self_hosted_only.yaml`'s with four replicas instead of two,
# once with `affinity: {prefix: true}` (each request goes where its prefix is warm, weighed against
# load) and once without (load alone).

# %%
maas = turnout.load_config(HERE / "policies" / "maas_only.yaml")
pool_table = yaml.safe_load((HERE / "policies" / "self_hosted_only.yaml").read_text("utf-8"))
POOL = "llama-70b"
pool_table["targets"][POOL]["replicas"] = [
    {"endpoint": f"http://127.0.0.1:{8001 + i}", "max_inflight": 64} for i in range(4)
]


def pool_with_affinity(on: bool) -> turnout.Config:
    table = json.loads(json.dumps(pool_table))  # a deep copy
    table["scenarios"][SCENARIO]["affinity"] = {"prefix": on}
    return turnout.load_config_text(yaml.safe_dump(table), f"<pool, affinity {on}>")


tables = {
    "maas": maas,
    "self_hosted_affinity": pool_with_affinity(True),
    "self_hosted_no_affinity": pool_with_affinity(False),
}
results = {name: replay(config, trace, seed=1) for name, config in tables.items()}


def hit_rate(frame: pd.DataFrame, column: str) -> float:
    done = frame[frame["outcome"] != "failed"]
    return int(done[column].sum()) / int(done["input_tokens"].sum())


rates = pd.DataFrame(
    {
        name: {
            "predicted": hit_rate(res.requests, "cached_predicted"),
            "realized": hit_rate(res.requests, "cached_realized"),
            "cost_usd": res.summary["cost_usd"],
            "latency_p95_ms": res.summary["latency_ms"]["p95"],
        }
        for name, res in results.items()
    }
).T.rename_axis("policy")
rates.to_csv(args.out / "hit_rates.csv")
print(rates.to_string())

# %% [markdown]
# ## Predicted vs realized, per policy
# *Predicted*: the cached tokens the router expected when it decided (its cache directory: what it
# knows of each replica's KV blocks, or of the provider's cache). *Realized*: what the caches gave.
# On MaaS the router's model of the provider's cache is its own rules, so the two agree; in the
# pool, without affinity, requests land where their prefix is not, and the pool's caches fill with
# copies of the same prompts.

# %%
fig, ax = plt.subplots(figsize=(8, 4))
x = range(len(rates))
ax.bar([i - 0.2 for i in x], 100 * rates["predicted"].astype(float), width=0.4, label="predicted")
ax.bar([i + 0.2 for i in x], 100 * rates["realized"].astype(float), width=0.4, label="realized")
ax.set_xticks(list(x), rates.index)
ax.set_xlabel("policy")
ax.set_ylabel("cached input tokens (% of input tokens)")
ax.set_ylim(0, 100)
ax.set_title("Prompt-cache hit rate: predicted by the router vs realized")
ax.legend(loc="lower right")
fig.tight_layout()
fig.savefig(args.out / "hit_rate_by_policy.png", dpi=110)

# %% [markdown]
# ## Over time
# From the per-request columns, in 10-minute bins: caches start cold, and the pool without affinity
# stays below the others all along.

# %%
fig, ax = plt.subplots(figsize=(9, 4))
for name, res in results.items():
    done = res.requests[res.requests["outcome"] != "failed"]
    bins = ((done["arrival_s"] - res.requests["arrival_s"].min()) // 600).astype(int)
    by = done.groupby(bins)[["cached_predicted", "cached_realized", "input_tokens"]].sum()
    hours = by.index / 6
    (line,) = ax.plot(hours, 100 * by["cached_realized"] / by["input_tokens"], label=name)
    ax.plot(
        hours,
        100 * by["cached_predicted"] / by["input_tokens"],
        linestyle="--",
        color=line.get_color(),
        alpha=0.6,
    )
ax.set_xlabel("time since the first request (hours)")
ax.set_ylabel("cached input tokens (%)")
ax.set_title("Hit rate over time: realized (solid) and predicted (dashed), 10-minute bins")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(args.out / "hit_rate_over_time.png", dpi=110)

# %% [markdown]
# ## Forecasting the migration: the old hit rate against the new one
# A replica's marginal cost is its GPU time: uncached prompt tokens at the prefill rate, output at
# the decode rate (the table's `cost:` block; the router prices every self-hosted outcome this way,
# per request, to the picodollar). The spreadsheet's forecast of the pool's bill at hit rate *h* is
# the same formula over the traffic's totals. With the realized rate it gives the replay's cost
# (to a picodollar per request of rounding); with the provider's old rate it does not.

# %%
cost = pool_table["targets"][POOL]["cost"]


def forecast_usd(frame: pd.DataFrame, rate: Decimal) -> Decimal:
    """The pool's marginal cost for the completed requests of `frame` if a share `rate` of their
    prompt tokens is cached."""
    done = frame[frame["outcome"] != "failed"]
    input_tokens, output_tokens = int(done["input_tokens"].sum()), int(done["output_tokens"].sum())
    with localcontext() as ctx:
        ctx.prec = 50
        seconds = (1 - rate) * input_tokens / cost["prefill_tokens_per_s"] + Decimal(
            output_tokens
        ) / cost["decode_tokens_per_s"]
        usd_per_s = cost["gpus_per_replica"] * Decimal(str(cost["usd_per_gpu_hour"])) / 3600
        return (seconds * usd_per_s).quantize(Decimal("1e-12"))


def exact_rate(frame: pd.DataFrame) -> Decimal:
    done = frame[frame["outcome"] != "failed"]
    with localcontext() as ctx:
        ctx.prec = 50
        return Decimal(int(done["cached_realized"].sum())) / int(done["input_tokens"].sum())


old_rate = exact_rate(results["maas"].requests)
month = Decimal(730) / Decimal(str(span_h))  # this traffic's span, scaled to a month
forecast = {"old_rate": float(old_rate), "requests": args.requests, "pools": {}}
for name in ("self_hosted_affinity", "self_hosted_no_affinity"):
    res = results[name]
    realized = usd(sum(int(c) for c in res.requests["cost_picos"]))
    new_rate = exact_rate(res.requests)
    old, new = forecast_usd(res.requests, old_rate), forecast_usd(res.requests, new_rate)
    forecast["pools"][name] = {
        "new_rate": float(new_rate),
        "realized_usd": str(realized),
        "forecast_new_rate_usd": str(new),
        "forecast_old_rate_usd": str(old),
        "old_rate_error_pct": float(100 * (old - realized) / realized),
        "old_rate_error_usd_per_month": float((old - realized) * month),
    }
(args.out / "forecast.json").write_text(json.dumps(forecast, indent=2) + "\n", encoding="utf-8")
table = pd.DataFrame(forecast["pools"]).T
print(table.to_string())

# %%
fig, ax = plt.subplots(figsize=(8, 4))
pools = list(forecast["pools"])
for i, (key, label) in enumerate(
    (
        ("forecast_old_rate_usd", "forecast with the provider's hit rate"),
        ("forecast_new_rate_usd", "forecast with the pool's own hit rate"),
        ("realized_usd", "realized (replay)"),
    )
):
    ax.bar(
        [j + (i - 1) * 0.27 for j in range(len(pools))],
        [float(forecast["pools"][p][key]) for p in pools],
        width=0.27,
        label=label,
    )
ax.set_xticks(range(len(pools)), pools)
ax.set_xlabel("self-hosted policy")
ax.set_ylabel(f"pool marginal cost for {args.requests:,} requests (USD)")
ax.set_title("Migration cost forecast: old hit rate vs new hit rate vs realized")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(args.out / "forecast_error.png", dpi=110)

# %% [markdown]
# ## The decision, in numbers

# %%
on = forecast["pools"]["self_hosted_affinity"]
off = forecast["pools"]["self_hosted_no_affinity"]
print(
    f"The provider's realized hit rate is {100 * forecast['old_rate']:.1f} %. The pool reaches "
    f"{100 * on['new_rate']:.1f} % with prefix affinity and {100 * off['new_rate']:.1f} % "
    f"without. Forecasting the pool with the provider's rate is off by "
    f"{on['old_rate_error_pct']:+.1f} % with affinity and {off['old_rate_error_pct']:+.1f} % "
    f"without: ${abs(off['old_rate_error_usd_per_month']):,.0f} a month of GPU time "
    f"{'missing from' if off['old_rate_error_usd_per_month'] < 0 else 'too much in'} the plan at "
    f"this volume (before any extra replica that the extra prefill needs)."
)

# %% [markdown]
# ## Decision
# **Migrate to the pool only with prefix-aware routing on (`affinity: {prefix: true}`), and
# forecast its bill with the pool's own simulated hit rate, not the provider's.** With affinity,
# the pool's replicas keep each session and system prompt warm and the pool about matches the
# provider's hit rate, so the old figure happens to forecast well. Without it, the same four
# replicas realize a markedly lower hit rate and the forecast made with the provider's rate
# underestimates the pool's GPU time by about a fifth (the monthly figure printed above). The hit
# rate is a property of the routing and the cache, not of the traffic: re-measure it in a replay
# (or a canary) whenever either changes.
