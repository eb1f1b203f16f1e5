"""Scenario decision records (turnout.decide, `turnout decide`): each rule, readiness item and
anti-pattern on its own decision file (tests/python/data/scenarios/, each the neutral file with one
change), contradictions, missing fields, bad files with path:line:col, and the command itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import turnout
from turnout import decide as decide_module
from turnout.decide import (
    ANTI_PATTERNS,
    READINESS,
    RULES,
    DecisionRecord,
    ScenarioError,
    decide,
    load_scenario,
)

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data" / "scenarios"
NEUTRAL = DATA / "neutral.yaml"


def record(name: str) -> DecisionRecord:
    """The record of DATA/name.yaml, without the planner (these tests are about the rules)."""
    return decide(DATA / f"{name}.yaml", plan=False)


def fired(rec: DecisionRecord) -> set[str]:
    return {r.rule.id for r in rec.fired}


def not_ready(rec: DecisionRecord) -> dict[str, tuple[str, ...]]:
    return {i.item: i.missing for i in rec.readiness if not i.ok}


def detected(rec: DecisionRecord) -> dict[str, tuple[str, ...]]:
    return {a.id: a.evidence for a in rec.anti_patterns}


# --- the neutral file -------------------------------------------------------------------------


def test_the_neutral_file_fires_no_rule_and_is_ready() -> None:
    rec = record("neutral")
    assert fired(rec) == set()
    assert rec.recommendation == "maas"
    assert rec.reasons == ["no rule calls for self-hosting: MaaS, with no pool to run"]
    assert [i.item for i in rec.readiness] == list(READINESS)
    assert not_ready(rec) == {}
    assert rec.anti_patterns == []
    assert rec.missing_fields == []
    assert [r.rule.id for r in rec.rules] == [r.id for r in RULES]  # every rule, fired or not


# --- the rules table: each rule on its own file ------------------------------------------------

RULE_FILES = {
    # rule id: (file, recommendation, a phrase of its reason)
    "spiky_demand": ("rule-spiky", "maas", "spiky demand (pattern spiky, peak-to-mean 4)"),
    "frontier_required": ("rule-frontier", "maas", "only providers serve one"),
    "deidentifiable": ("rule-deidentifiable", "maas", "de-identified it may: MaaS or hybrid"),
    "data_stays_inside": (
        "rule-stays-inside",
        "self_hosted",
        "data class 'restricted' may not leave the boundary",
    ),
    "stable_high_volume": (
        "rule-volume",
        "self_hosted",
        "8,000 output tokens/s, keeps 4.00 replicas of 4,000 tokens/s busy at 50% utilization",
    ),
    "not_urgent": ("rule-batch", "batch", "requests can wait"),
    "customization_required": (
        "rule-customization",
        "self_hosted",
        "customization required (lora)",
    ),
    "no_evals_or_mlops": ("rule-no-mlops", "maas", "no MLOps yet: self-hosting is early"),
}


def test_every_rule_has_its_own_file() -> None:
    assert set(RULE_FILES) == {r.id for r in RULES}


@pytest.mark.parametrize("rule", list(RULE_FILES))
def test_each_rule_fires_alone_on_its_own_file(rule: str) -> None:
    name, recommendation, phrase = RULE_FILES[rule]
    rec = record(name)
    assert fired(rec) == {rule}
    assert rec.recommendation == recommendation
    reason = next(r.reason for r in rec.rules if r.rule.id == rule)
    assert phrase in reason
    if rule != "no_evals_or_mlops":  # it only changes a self-hosted or hybrid answer
        assert any(phrase in r for r in rec.reasons), rec.reasons


def test_a_rule_that_does_not_fire_says_why() -> None:
    reasons = {r.rule.id: r.reason for r in record("neutral").rules}
    assert reasons["stable_high_volume"] == (
        "low volume: the mean load, 400 output tokens/s, keeps 0.20 replicas of 4,000 tokens/s "
        "busy at 50% utilization"
    )
    assert reasons["data_stays_inside"] == "the data may leave (as it is or de-identified)"


def test_stable_volume_and_deidentifiable_data_make_a_hybrid() -> None:
    rec = record("hybrid")
    assert fired(rec) == {"stable_high_volume", "deidentifiable"}
    assert rec.recommendation == "hybrid"
    assert rec.reasons[1].endswith("the pool carries the base load, providers the peaks")


def test_without_mlops_self_hosting_is_early() -> None:
    rec = record("volume-no-mlops")
    assert fired(rec) == {"stable_high_volume", "no_evals_or_mlops"}
    assert rec.recommendation == "maas"
    assert rec.reasons[-1].endswith("stay on MaaS until they exist (self-hosted when they do)")


def test_the_boundary_keeps_its_kind_when_requests_can_wait(tmp_path: Path) -> None:
    text = (DATA / "rule-stays-inside.yaml").read_text()
    text = text.replace("urgency: online", "urgency: batch")
    path = tmp_path / "inside-batch.yaml"
    path.write_text(text.replace("table: routing.yaml", f"table: {DATA / 'routing.yaml'}"))
    rec = decide(path, plan=False)
    assert fired(rec) == {"data_stays_inside", "not_urgent"}
    assert rec.recommendation == "self_hosted"  # the hard constraint keeps its kind
    assert rec.reasons[-1].startswith("requests can wait")
    assert rec.reasons[-1].endswith("on self-hosted targets")


# --- contradictions: cannot recommend, with the reason -----------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "contradiction-restricted-maas",
            "contradictory constraints: the data may not leave the boundary, but no self-hosted "
            "candidate may serve it: mini: does not accept data class 'restricted' (accepts "
            "public, deidentified); big: does not accept data class 'restricted' (accepts public, "
            "deidentified)",
        ),
        (
            "contradiction-frontier-inside",
            "contradictory constraints: a frontier model is required (only providers serve one) "
            "but the data may not leave the boundary",
        ),
        (
            "contradiction-frontier-customization",
            "contradictory constraints: a frontier model is required (only providers serve one) "
            "and so is customization of our own weights",
        ),
    ],
)
def test_contradictory_constraints_cannot_be_recommended(name: str, reason: str) -> None:
    rec = record(name)
    assert rec.recommendation == "cannot_recommend"
    assert rec.reasons == [reason]


def test_the_boundary_excludes_candidates_and_says_why() -> None:
    rec = record("contradiction-restricted-maas")
    assert [(c.target, c.usable) for c in rec.candidates] == [("mini", False), ("big", False)]
    md = rec.to_markdown()
    assert "## Recommendation: **cannot-recommend**" in md
    assert "| mini | maas | no | does not accept data class 'restricted'" in md


# --- readiness: each item missing on its own file ----------------------------------------------

READINESS_FILES = {
    "predictable_demand": (
        "ready-forecast",
        ("demand is a forecast, not measured (a trace or the ledger)",),
    ),
    "quality_measured": (
        "ready-no-evals",
        ("no evals of the scenario (quality_gate.evals: false)",),
    ),
    "gateway_routes_both": (
        "ready-maas-routes-only",
        ("the table routes faq to no self-hosted target (routes, fallback, spillover)",),
    ),
    "fallback_before_migration": ("ready-no-fallback", ("the decision file names no fallback",)),
    "self_hosted_cost_complete": ("ready-no-canary", ("no canary pool for pool",)),
    "people_costs_counted": (
        "ready-no-incidents",
        ("no incidents cost for pool (cost.monthly or the table's)",),
    ),
}


def test_every_readiness_item_has_its_own_file() -> None:
    assert set(READINESS_FILES) == set(READINESS)


@pytest.mark.parametrize("item", list(READINESS_FILES))
def test_each_readiness_item_names_what_is_missing(item: str) -> None:
    name, missing = READINESS_FILES[item]
    assert not_ready(record(name)) == {item: missing}


def test_readiness_of_the_table_side() -> None:
    # contracts: restricted data, routed to pools only: providers are out of the question.
    rec = record("rule-stays-inside")
    gateway = next(i for i in rec.readiness if i.item == "gateway_routes_both")
    assert gateway.ok  # providers are out of the question, not missing
    assert gateway.note == "providers are out: the data stays inside"
    spiky = record("rule-spiky")
    assert not_ready(spiky) == {
        "predictable_demand": ("demand is spiky (pattern spiky, peak-to-mean 4)",)
    }


# --- anti-patterns: each on its own file -------------------------------------------------------

ANTI_FILES = {
    "token_price_spreadsheet": (
        "anti-spreadsheet",
        "utilization assumed 95%: a pool held to a latency SLO at its peak runs far below that",
    ),
    "production_gpus_only": (
        "anti-production-only",
        "bare-pool: no reserve and no staging, test, canary pool: only the production replicas "
        "are priced",
    ),
    "migration_without_evals": (
        "anti-migration-no-evals",
        "migration mini -> pool with quality_gate.evals: false",
    ),
    "migration_without_fallback": (
        "anti-migration-no-fallback",
        "migration mini -> pool, and the decision file names no fallback",
    ),
    "old_cache_hit_rate": (
        "anti-old-cache",
        "expected_hit_rate 0.3 describes mini, not the destination pool",
    ),
    "big_bang_switch": (
        "anti-big-bang",
        "migration mini -> pool starts with 100 % of the traffic (migration.steps [100]): no "
        "canary of at most 20 %",
    ),
    "unobserved_cache": (
        "anti-unobserved-cache",
        "expected_hit_rate 0.3, but cached_tokens is not recorded",
    ),
}


def test_every_anti_pattern_has_its_own_file() -> None:
    assert set(ANTI_FILES) == set(ANTI_PATTERNS)


@pytest.mark.parametrize("anti", list(ANTI_FILES))
def test_each_anti_pattern_is_detected_with_its_evidence(anti: str) -> None:
    name, phrase = ANTI_FILES[anti]
    found = detected(record(name))
    assert set(found) == {anti}
    assert any(phrase in e for e in found[anti]), found[anti]


def test_a_clean_migration_shows_no_anti_pattern() -> None:
    rec = record("migration")
    assert rec.anti_patterns == []
    assert not_ready(rec) == {}


def test_a_pool_costed_as_gpu_hours_alone_is_a_spreadsheet(tmp_path: Path) -> None:
    # anti-production-only.yaml counts people for bare-pool (the table has no monthly items for
    # it); without them, bare-pool is GPU-hours alone.
    text = (DATA / "anti-production-only.yaml").read_text()
    start = text.index("  monthly: {engineering")
    text = text[:start] + text[text.index("\n", start) + 1 :]
    found = detected(decide(write(tmp_path, text), plan=False))
    assert set(found) == {"token_price_spreadsheet", "production_gpus_only"}
    assert found["token_price_spreadsheet"] == (
        "bare-pool is costed as GPU-hours alone: no engineering, observability, evals, incidents",
    )


def test_the_old_hit_rate_evidence_names_the_destination_ttl(tmp_path: Path) -> None:
    text = (DATA / "anti-old-cache.yaml").read_text()
    text = text.replace("from: mini\n  to: pool", "from: pool\n  to: mini")
    text = text.replace("hit_rate_of: mini", "hit_rate_of: pool")
    path = tmp_path / "to-mini.yaml"
    path.write_text(text.replace("table: routing.yaml", f"table: {DATA / 'routing.yaml'}"))
    found = detected(decide(path, plan=False))
    assert found["old_cache_hit_rate"] == (
        "expected_hit_rate 0.3 describes pool, not the destination mini: its cache has its own "
        "TTL, prices and locality",
        "cache.ttl_s 120 is not mini's 600 s",
    )


# --- missing fields ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    """A decision file in tmp_path pointing at the test table."""
    path = tmp_path / name
    path.write_text(text.replace("table: routing.yaml", f"table: {DATA / 'routing.yaml'}"))
    return path


def neutral_text() -> str:
    return NEUTRAL.read_text(encoding="utf-8")


def test_missing_required_fields_are_each_named_in_one_error(tmp_path: Path) -> None:
    text = neutral_text().replace("owner: platform\n", "").replace("  pattern: diurnal\n", "")
    text = text.replace("quality_gate:\n  min_accept_rate: 0.9\n  evals: true\n", "")
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert e.value.missing == (
        "owner",
        "demand.pattern",
        "quality_gate.min_accept_rate",
        "quality_gate.evals",
    )
    assert e.value.code == "scenario_invalid"
    assert str(e.value).splitlines() == [
        f"{path}:3:1: missing field 'owner' (who owns the decision)",
        f"{path}:13:3: missing field 'demand.pattern' (steady | diurnal | spiky)",
        f"{path}:3:1: missing field 'quality_gate.min_accept_rate' (a share, 0 to 1)",
        f"{path}:3:1: missing field 'quality_gate.evals' (do evals of this scenario exist?)",
    ]


def test_fields_a_self_hosted_candidate_needs_are_named_in_the_record() -> None:
    rec = record("missing-self-hosted-fields")
    assert rec.missing_fields == [
        "demand.output_tokens",
        "cost.utilization",
        "capacity.performance or capacity.throughput",
        "capacity.reserve",
        "capacity.pools.staging",
        "capacity.pools.test",
        "capacity.pools.canary",
    ]
    assert rec.recommendation == "cannot_recommend"
    assert rec.reasons == [f"missing fields: {', '.join(rec.missing_fields)} (nothing is guessed)"]
    volume = next(r for r in rec.rules if r.rule.id == "stable_high_volume")
    assert volume.reason == (
        "not evaluated: needs demand.output_tokens, cost.utilization, capacity.performance or "
        "capacity.throughput"
    )


def test_a_maas_only_file_needs_no_cost_or_capacity(tmp_path: Path) -> None:
    text = neutral_text().replace("candidates: [pool, mini]", "candidates: [mini, big]")
    start, end = text.index("cost:\n"), text.index("cache:\n")
    text = text[:start] + text[end:]
    text = text.replace("hit_rate_of: pool", "hit_rate_of: mini")
    rec = decide(write(tmp_path, text), plan=False)
    assert rec.missing_fields == []
    assert rec.recommendation == "maas"


def test_a_migration_needs_the_target_of_its_hit_rate(tmp_path: Path) -> None:
    text = (DATA / "migration.yaml").read_text().replace("  hit_rate_of: pool\n", "")
    rec = decide(write(tmp_path, text), plan=False)
    assert rec.missing_fields == ["cache.hit_rate_of"]
    assert rec.recommendation == "cannot_recommend"


# --- bad files: path:line:col ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        (
            "mean_rps: 2",
            "mean_rps: two",
            "15:13",
            "'demand.mean_rps' must be a number > 0 (got 'two')",
        ),
        ("mean_rps: 2", "mean_rps: 0", "15:13", "'demand.mean_rps' must be a number > 0 (got 0)"),
        (
            "peak_to_mean: 1.5",
            "peak_to_mean: 0.5",
            "16:17",
            "'demand.peak_to_mean' must be a number >= 1 (got 0.5)",
        ),
        (
            "pattern: diurnal",
            "pattern: bursty",
            "17:12",
            "'demand.pattern' must be one of steady, diurnal, spiky (got 'bursty')",
        ),
        (
            "may_leave: true",
            "may_leave: yes please",
            "10:14",
            "'data_boundary.may_leave' must be true or false (got 'yes please')",
        ),
        (
            "candidates: [pool, mini]",
            "candidates: pool",
            "23:15",
            "'models.candidates' must be a list",
        ),
        (
            "utilization: 0.5",
            "utilization: 1.5",
            "28:16",
            "'cost.utilization' must be a number > 0 and <= 1 (got 1.5)",
        ),
        (
            "  ttl_s: 120\n",
            "  ttl_s: 120\n  tll_s: 5\n",
            "39:3",
            "unknown field 'cache.tll_s' (fields: expected_hit_rate, hit_rate_of, ttl_s, affinity, "
            "prefix_aware_routing, observed_fields)",
        ),
        (
            "cached_tokens, cache_write",
            "cached_tokens, reasoning, cache_write",
            "41:65",
            "'cache.observed_fields' has 'reasoning': usage fields are input_tokens, "
            "output_tokens, cached_tokens, cache_write_tokens",
        ),
        (
            "utilization: 0.5",
            "utilization: 0.5\n  monthly: {incidents: lots}",
            "29:24",
            "'cost.monthly.incidents' must be a number of USD >= 0 (got 'lots')",
        ),
        (
            "data_boundary:\n  data_class: public\n  may_leave: true\n  can_deidentify: true\n",
            "data_boundary: [public]\n",
            "8:16",
            "'data_boundary' must be a mapping",
        ),
        ("version: 1", "version: 2", "3:10", "unknown version 2; this Turnout reads version 1"),
        ("fallback: [mini]", "fallback: [mini, mini]", "47:18", "'fallback' names 'mini' twice"),
        ("owner: platform", "owner: platform\nowner: x", "7:1", "'owner' is given twice"),
    ],
)
def test_wrong_types_and_values_name_file_line_col(
    tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    text = neutral_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value) == f"{path}:{where}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scenario: [assist\nowner: x\n", ":2:6: not YAML: expected ',' or ']', but got ':'"),
        ("scenario: a\n  owner: b\n", ":2:8: not YAML: mapping values are not allowed here"),
        ("", ":1:1: the decision file is empty"),
        ("- a\n- b\n", ":1:1: not a mapping of fields"),
        (
            "version: !!python/name:os.system 1\n",
            ":1:10: 'version': could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/name:os.system'",
        ),
    ],
)
def test_malformed_yaml_names_file_line_col(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value) == f"{path}{message}"


def test_a_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope\.yaml: cannot open: No such file"):
        load_scenario(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        (
            "scenario: assist",
            "scenario: asist",
            "4:11",
            "has no scenario 'asist' (scenarios: assist, tickets, contracts, faq)",
        ),
        (
            "candidates: [pool, mini]",
            "candidates: [pool, mni]",
            "23:22",
            "candidate 'mni' is not a target of",
        ),
        ("fallback: [mini]", "fallback: [big, mnii]", "47:17", "fallback 'mnii' is not a target"),
        (
            "data_class: public",
            "data_class: internal",
            "9:15",
            "data class 'internal' disagrees with the table's 'public' for assist",
        ),
        (
            "min_accept_rate: 0.9",
            "min_accept_rate: 0.95",
            "44:20",
            "min_accept_rate 0.95 disagrees with the table's quality_gate 0.9 for assist",
        ),
        (
            "mlops: true",
            "mlops: true\nslo: {ttft_p95_ms: 800}",
            "49:20",
            "slo.ttft_p95_ms 800 disagrees with the table's 1000 for assist",
        ),
        (
            "prefix_aware_routing: false",
            "prefix_aware_routing: true",
            "40:25",
            "prefix_aware_routing true disagrees with the table's affinity.prefix for assist",
        ),
        (
            "throughput: {output_tokens_per_s: 4000, input_tokens: 1000, output_tokens: 250, "
            "concurrency: 64}",
            "performance: llama-3.1-8b-fp8-h100x1",
            "31:16",
            "performance row 'llama-3.1-8b-fp8-h100x1' is measured on 1 GPU(s); pool has 2 per "
            "replica",
        ),
        (
            "reserve: 0.2",
            "reserve: 0.2\n  performance: h100-dream",
            "33:16",
            "unknown performance row 'h100-dream'",
        ),
        (
            "utilization: 0.5",
            "utilization: 0.5\n  usd_per_gpu_hour: 1.99",
            "29:21",
            "usd_per_gpu_hour 1.99 disagrees with the table's 2.99 for pool",
        ),
        (
            "mlops: true",
            "mlops: true\nmigration: {from: mini, to: big, steps: [5, 100]}",
            "49:29",
            "migration.to 'big' is not one of models.candidates",
        ),
        (
            "mlops: true",
            "mlops: true\nmigration: {from: mini, to: pool, steps: [50, 5]}",
            "49:42",
            "'migration.steps' must rise strictly, each a percent of the traffic, 1 to 100",
        ),
    ],
)
def test_disagreements_with_the_table_name_file_line_col(
    tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    text = neutral_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}:{where}: "), str(e.value)
    assert message in str(e.value)


def test_a_table_that_does_not_load_is_named_at_the_table_field(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(neutral_text().replace("table: routing.yaml", "table: missing.yaml"))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}:5:8: cannot load the routing table: ")
    assert "missing.yaml" in str(e.value)


def test_scenario_error_is_a_value_error_with_its_code() -> None:
    assert issubclass(turnout.ScenarioError, ValueError)
    assert issubclass(turnout.ScenarioError, turnout.TurnoutError)
    assert turnout.ScenarioError("x").code == "scenario_invalid"


# --- the bundled decision files ----------------------------------------------------------------


def test_the_bundled_scenarios_lead_to_different_recommendations() -> None:
    folder = REPO / "examples" / "scenarios"
    got = {
        name: decide(folder / f"{name}.yaml", plan=False).recommendation
        for name in ("support-summarization", "contract-extraction", "agent-assist")
    }
    assert got == {
        "support-summarization": "hybrid",
        "contract-extraction": "self_hosted",
        "agent-assist": "maas",
    }


# --- the record and the command ----------------------------------------------------------------


def test_the_record_is_json_and_markdown() -> None:
    rec = record("rule-volume")
    data = json.loads(rec.to_json_text())
    assert data["recommendation"] == "self_hosted"
    assert [r["id"] for r in data["rules"] if r["fired"]] == ["stable_high_volume"]
    assert data["plan"] is None
    assert data["plan_note"] == "--no-plan"
    assert data["facts"]["replicas_kept_busy"] == 4.0
    md = rec.to_markdown()
    assert md.startswith("# Decision record: assist\n")
    assert "## Recommendation: **self-hosted**" in md
    assert "| stable_high_volume | self_hosted | yes |" in md
    assert "Not run: --no-plan" in md


def test_without_the_planner_the_record_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "turnout.plan", None)  # import fails: as before plan.py lands
    monkeypatch.delattr(turnout, "plan", raising=False)
    rec = decide(NEUTRAL)
    assert rec.plan is None
    assert rec.plan_note is not None
    assert rec.plan_note.startswith("the planner is not in this build")


def test_maas_only_candidates_get_no_plan() -> None:
    rec = decide(DATA / "contradiction-restricted-maas.yaml")
    assert rec.plan is None
    assert rec.plan_note == "the comparison needs a usable self-hosted and a usable MaaS candidate"


def test_the_planner_prices_a_file_with_both_kinds() -> None:
    pytest.importorskip("turnout.plan")
    rec = decide(NEUTRAL, duration_s=120.0)
    assert rec.plan is not None, rec.plan_note
    assert rec.plan.scenario == "assist"
    volume = next(r for r in rec.rules if r.rule.id == "stable_high_volume")
    assert "the planner" in volume.reason  # the break-even by simulation, not the estimate
    assert rec.reasons[-1].startswith("the planner's cost comparison (by cost alone): ")
    assert "## Cost comparison" in rec.to_markdown()
    assert json.loads(rec.to_json_text())["plan"] is not None


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "turnout.cli", "decide", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_cli_json_parses_and_exits_0() -> None:
    result = cli(DATA / "rule-frontier.yaml", "--json", "--no-plan")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["recommendation"] == "maas"
    assert data["scenario"] == "assist"


def test_cli_out_writes_both_files_and_prints_markdown(tmp_path: Path) -> None:
    out = tmp_path / "records" / "assist"
    result = cli(DATA / "hybrid.yaml", "--out", out, "--no-plan")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Decision record: tickets\n")
    assert (out / "record.md").read_text() == result.stdout
    data = json.loads((out / "record.json").read_text())
    assert data["recommendation"] == "hybrid"


def test_cli_cannot_recommend_exits_3_with_the_record() -> None:
    result = cli(DATA / "contradiction-frontier-inside.yaml", "--json", "--no-plan")
    assert result.returncode == 3
    assert json.loads(result.stdout)["reasons"] == [
        "contradictory constraints: a frontier model is required (only providers serve one) but "
        "the data may not leave the boundary"
    ]


def test_cli_bad_file_exits_2_naming_file_line_col(tmp_path: Path) -> None:
    path = write(tmp_path, neutral_text().replace("urgency: online", "urgency: soon"))
    result = cli(path, "--no-plan")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        f"error: {path}:18:12: 'demand.urgency' must be one of online, batch (got 'soon')"
        in result.stderr
    )


def test_cli_missing_fields_exit_2_naming_each(tmp_path: Path) -> None:
    text = neutral_text().replace("mlops: true\n", "").replace("owner: platform\n", "")
    path = write(tmp_path, text)
    result = cli(path)
    assert result.returncode == 2
    assert "missing field 'owner'" in result.stderr
    assert "missing field 'mlops'" in result.stderr


def test_module_names_every_rule_readiness_item_and_anti_pattern_once() -> None:
    # One definition each: the ids are the record's keys, the tables give the words.
    assert len({r.id for r in RULES}) == len(RULES) == 8
    assert len(READINESS) == 6
    assert len(ANTI_PATTERNS) >= 5
    assert set(decide_module.RECOMMENDATIONS) == {
        "maas",
        "self_hosted",
        "hybrid",
        "batch",
        "cannot_recommend",
    }


def test_docs_document_every_field_rule_item_and_anti_pattern() -> None:
    text = (REPO / "docs" / "decide.md").read_text(encoding="utf-8")
    fields = text[text.index("## The decision file") : text.index("## The rules")]
    documented = re.findall(r"^\| `([\w.]+)` \|", fields, re.M)
    assert sorted(documented) == sorted(decide_module.field_names())

    def first_cells(section: str) -> set[str]:
        start = text.index(section)
        body = text[start : text.find("\n## ", start + 1)]
        return set(re.findall(r"^\| `(\w+)`", body, re.M))

    assert first_cells("## The rules") == {r.id for r in RULES}
    assert first_cells("## The readiness checklist") == set(READINESS)
    assert first_cells("## The anti-patterns") == set(ANTI_PATTERNS)


# --- what the planner would refuse is refused at the field ---------------------------------------

FLAT_24 = "[" + ", ".join(["2"] * 24) + "]"


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        # The planner's Demand needs multipliers of the mean (average 1) and a shared prefix
        # inside the prompt: the file said so only at plan time, with no path:line:col.
        (
            "  output_tokens: 200\n",
            f"  output_tokens: 200\n  diurnal: {FLAT_24}\n",
            "21:12",
            "'demand.diurnal' must average 1 (multipliers of the mean rate; got 2)",
        ),
        (
            "  output_tokens: 200\n",
            "  output_tokens: 200\n  shared_prefix_tokens: 1000\n",
            "21:25",
            "'demand.shared_prefix_tokens' (1000) must be below demand.input_tokens (1000): the "
            "shared prefix is part of the prompt",
        ),
        # Integers too large for a float or for the core: no OverflowError or TypeError.
        (
            "mean_rps: 2",
            "mean_rps: 1" + "0" * 400,
            "15:13",
            "'demand.mean_rps' must be a number > 0 (got 1" + "0" * 400 + ")",
        ),
        (
            "output_tokens_per_s: 4000",
            "output_tokens_per_s: 99999999999999999999999",
            "31:37",
            "'capacity.throughput.output_tokens_per_s' must be an integer >= 1 and <= 2147483647 "
            "(got 99999999999999999999999)",
        ),
        # The core prices the busy share to the millionth: 1e-7 was its error, with no location.
        (
            "utilization: 0.5",
            "utilization: 0.0000001",
            "28:16",
            "'cost.utilization' must be at least 0.000001 (costs are computed to the millionth "
            "of the time; got 1e-07)",
        ),
        (
            "hit_rate_of: pool",
            "hit_rate_of: poool",
            "37:16",
            "hit_rate_of 'poool' is not a target of",
        ),
        (
            "mlops: true\n",
            "mlops: true\nmigration: {from: pool, to: pool, steps: [10, 100]}\n",
            "49:29",
            "migration.to 'pool' is its own migration.from: nothing moves",
        ),
    ],
)
def test_values_the_planner_or_the_table_refuse_name_file_line_col(
    tmp_path: Path, old: str, new: str, where: str, message: str
) -> None:
    text = neutral_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(f"{path}:{where}: {message}")
    result = cli(path, "--no-plan")
    assert result.returncode == 2, result.stderr
    assert f"error: {path}:{where}: " in result.stderr


def test_an_slo_the_table_does_not_set_is_refused_not_ignored(tmp_path: Path) -> None:
    # The table's tickets scenario has no SLO: the planner would size to none, so a file's SLO
    # there was read and never used (docs: it "must equal the table's").
    text = (DATA / "hybrid.yaml").read_text()
    text = text.replace("mlops: true\n", "mlops: true\nslo: {ttft_p95_ms: 800}\n")
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert str(e.value).startswith(
        f"{path}:49:20: slo.ttft_p95_ms 800: the table sets no slo.ttft_p95_ms for tickets"
    )


def test_the_cache_assumptions_and_description_are_in_the_record(tmp_path: Path) -> None:
    # cache.affinity was read and then neither used nor shown; the description was not shown.
    rec = record("neutral")
    data = rec.to_json()
    assert data["cache"] == {
        "expected_hit_rate": 0.3,
        "hit_rate_of": "pool",
        "ttl_s": 120,
        "affinity": "session",
        "prefix_aware_routing": False,
        "observed_fields": ["input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens"],
    }
    assert "- affinity: session" in rec.to_markdown()
    assert data["description"] is None
    text = neutral_text().replace("owner: platform\n", "owner: platform\ndescription: Docs Q&A\n")
    described = decide(write(tmp_path, text), plan=False)
    assert described.to_json()["description"] == "Docs Q&A"
    assert "- Description: Docs Q&A\n" in described.to_markdown()


def _table_with_pool_items(tmp_path: Path, items: str) -> Path:
    """The test table, its pool's cost.monthly extended with `items` (YAML flow entries)."""
    text = (DATA / "routing.yaml").read_text()
    old = "monthly: {engineering: 16000, observability: 900, evals: 1500, incidents: 2000}"
    assert old in text
    table = tmp_path / "routing.yaml"
    table.write_text(text.replace(old, old[:-1] + ", " + items + "}"))
    return table


def _lines(rec: DecisionRecord) -> dict[str, tuple[Any, Any]]:
    assert rec.plan is not None, rec.plan_note
    return {
        r["item"]: (r["replicas"], r["usd_per_month"]) for r in rec.plan.lines.to_dict("records")
    }


def test_a_pool_the_table_prices_as_test_debug_is_the_test_pool(tmp_path: Path) -> None:
    # The planner reads test_debug as the test pool; decide asked it for a test pool in replicas
    # too (capacity.pools.test is required) and the planner refused: "given both in USD and in
    # replicas", exit 2 with no location. Readiness did not count it either.
    table = _table_with_pool_items(tmp_path, "test_debug: 300")
    path = tmp_path / "scenario.yaml"
    path.write_text(neutral_text().replace("table: routing.yaml", f"table: {table}"))
    assert not_ready(decide(path, plan=False)) == {}
    text = neutral_text().replace("pools: {staging: 1, test: 1", "pools: {staging: 1, test: 0")
    path.write_text(text.replace("table: routing.yaml", f"table: {table}"))
    assert not_ready(decide(path, plan=False)) == {}  # test_debug prices the test pool
    path.write_text(neutral_text().replace("table: routing.yaml", f"table: {table}"))
    lines = _lines(decide(path, duration_s=30.0))
    assert lines["test_debug"][1] == Decimal(300)
    assert "test" not in lines  # priced once, as the table gives it
    assert lines["staging"][0] == lines["canary"][0] == 1


def test_a_files_zero_monthly_item_removes_the_tables(tmp_path: Path) -> None:
    # docs/decide.md: a file's cost.monthly item replaces the table's, and 0 removes it. A 0 for
    # staging kept a $0 staging line and dropped the staging replica of capacity.pools: the
    # month lost a pool while readiness said every pool was counted.
    table = _table_with_pool_items(tmp_path, "staging: 700")
    text = neutral_text().replace("utilization: 0.5", "utilization: 0.5\n  monthly: {staging: 0}")
    path = tmp_path / "scenario.yaml"
    path.write_text(text.replace("table: routing.yaml", f"table: {table}"))
    rec = decide(path, duration_s=30.0)
    assert not_ready(rec) == {}
    assert rec.plan is not None
    replica = rec.plan.replica_usd_per_month
    assert _lines(rec)["staging"] == (1, replica)
    # Without the file's 0, the table's $700 prices staging (and no staging replica).
    path.write_text(neutral_text().replace("table: routing.yaml", f"table: {table}"))
    assert _lines(decide(path, duration_s=30.0))["staging"] == (None, Decimal(700))


def test_maas_for_a_frontier_model_says_the_data_goes_de_identified(tmp_path: Path) -> None:
    # The requirement chose MaaS for data that may not leave as it is: the record recommended
    # MaaS without the de-identification that makes it allowed.
    text = (DATA / "rule-frontier.yaml").read_text().replace("may_leave: true", "may_leave: false")
    rec = decide(write(tmp_path, text), plan=False)
    assert fired(rec) == {"frontier_required", "deidentifiable"}
    assert rec.recommendation == "maas"
    assert any("de-identified" in r for r in rec.reasons), rec.reasons


def test_self_hosting_without_mlops_says_so_when_no_maas_candidate_is_usable(
    tmp_path: Path,
) -> None:
    # Stable high volume, no MLOps, only the pool as a candidate: the answer stays self-hosted
    # (nothing else may serve), and the reasons must not drop the missing MLOps.
    text = (DATA / "volume-no-mlops.yaml").read_text()
    text = text.replace("candidates: [pool, mini]", "candidates: [pool]")
    rec = decide(write(tmp_path, text), plan=False)
    assert fired(rec) == {"stable_high_volume", "no_evals_or_mlops"}
    assert rec.recommendation == "self_hosted"
    assert any("no MLOps yet" in r for r in rec.reasons), rec.reasons
