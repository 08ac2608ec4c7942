"""Planner proposals started as canaries: from the planner's own output format, through
the store and the CLI; what cannot be switched per request is left out with the reason,
and bad input writes nothing."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from services.costs.reports.planner import LeverEstimate, proposed_settings
from services.errors import Conflict, InvalidRequest
from services.experiments import list_configs, list_experiments, load_live, start_proposal
from services.experiments.cli import app

PLANNED = [LeverEstimate("team-a", "token_optimization", 1.0, 30.0, "m"),
           LeverEstimate("team-b", "token_optimization", 0.5, 15.0, "m"),
           LeverEstimate("team-a", "cache_exact", 2.0, 60.0, "m"),
           LeverEstimate("team-c", "routing", 3.0, 90.0, "m")]


def test_a_planner_proposal_becomes_started_canaries_for_its_tenants(store) -> None:
    proposal = proposed_settings(PLANNED)
    result = start_proposal(store, proposal, actor="ops", prefix="opt1",
                            steps=[0.1, 1.0], step_seconds=60, min_samples=50)
    (canary,) = result.canaries
    assert canary["name"] == "opt1-tokens-lossless" and canary["status"] == "running"
    assert canary["tenants"] == ["team-a", "team-b"] and canary["steps"] == [0.1, 1.0]
    assert [a["weight"] for a in canary["arms"]] == [0.9, 0.1]
    assert sorted(result.skipped) == ["cache_enabled", "routing"]
    assert "built when the gateway starts" in result.skipped["cache_enabled"]
    (live,) = load_live(store)
    assert live.applies_to("team-b") and not live.applies_to("team-c")
    assert [dict(a.overrides) for a in live.arms] == [{}, {"token_optimization": "lossless"}]


def test_one_canary_per_policy_and_per_setting(store) -> None:
    result = start_proposal(store, {"token_optimization_tenants": {"a": "lossless",
                                                                    "b": "Budget=64"},
                                    "cache_semantic": "off"}, actor="ops", prefix="p")
    assert sorted(c["name"] for c in result.canaries) == [
        "p-cache_semantic", "p-tokens-budget-64", "p-tokens-lossless"]
    assert result.skipped == {}


@pytest.mark.parametrize(("proposal", "error", "says"), [
    ({}, InvalidRequest, "non-empty mapping"),
    ({"token_optimization_tenants": {"a": "squeeze"}}, InvalidRequest, "token_optimization"),
    ({"token_optimization_tenants": ["a"]}, InvalidRequest, "map tenants"),
    ({"token_optimization": "lossless", "token_optimization_tenants": {"a": "ratio=2"}},
     InvalidRequest, "same setting"),
])
def test_bad_proposals_write_nothing(store, proposal, error, says) -> None:
    with pytest.raises(error, match=says):
        start_proposal(store, proposal, actor="ops", prefix="bad")
    assert list_configs(store) == [] and list_experiments(store) == []


@pytest.mark.parametrize(("pacing", "says"), [
    ({"steps": [0.5, 0.2, 1.0]}, "steps must rise"), ({"step_seconds": -1}, "step_seconds"),
    ({"min_samples": 5}, "min_samples"), ({"prefix": "!!!"}, "shorter prefix"),
])
def test_bad_pacing_or_prefix_writes_nothing(store, pacing, says) -> None:
    with pytest.raises(InvalidRequest, match=says):
        start_proposal(store, {"model": "m"}, actor="ops", **{"prefix": "p", **pacing})
    assert list_configs(store) == [] and list_experiments(store) == []


def test_a_taken_prefix_or_a_claimed_setting_writes_nothing_more(store) -> None:
    start_proposal(store, {"model": "m-small"}, actor="ops", prefix="one")
    with pytest.raises(Conflict, match="exist"):
        start_proposal(store, {"model": "m-small"}, actor="ops", prefix="one")
    with pytest.raises(Conflict, match="already sets"):
        start_proposal(store, {"model": "m-other"}, actor="ops", prefix="two")
    assert [e["name"] for e in list_experiments(store)] == ["one-model"]
    assert len(list_configs(store)) == 2


def test_the_cli_starts_a_proposal_file_and_sets_guardrails(store, tmp_path) -> None:
    path = tmp_path / "optimize.yaml"
    path.write_text(yaml.safe_dump(proposed_settings(PLANNED)))
    runner = CliRunner()
    made = runner.invoke(app, ["propose", str(path), "--prefix", "cli", "--actor", "ops"])
    assert made.exit_code == 0, made.output
    body = json.loads(made.output)
    assert [c["name"] for c in body["canaries"]] == ["cli-tokens-lossless"]
    assert sorted(body["skipped"]) == ["cache_enabled", "routing"]
    only_cache = tmp_path / "cache.yaml"
    only_cache.write_text("cache_enabled: true\n")
    assert runner.invoke(app, ["propose", str(only_cache), "--prefix", "c2"]).exit_code == 2
    assert runner.invoke(app, ["propose", str(tmp_path / "missing.yaml")]).exit_code == 2

    runner.invoke(app, ["config", "q.base", "--set", "model=a"])
    runner.invoke(app, ["config", "q.cand", "--set", "max_latency_ms=500"])
    created = runner.invoke(app, ["create", "q", "--kind", "ab", "--arm", "a=q.base:0.5",
                                  "--arm", "b=q.cand:0.5", "--guardrail", "rating:0.02",
                                  "--guardrail", "escalation_rate"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["guardrails"] == [
        {"metric": "rating", "tolerance": 0.02}, {"metric": "escalation_rate",
                                                  "tolerance": 0.0}]
    bad = runner.invoke(app, ["create", "q2", "--kind", "ab", "--arm", "a=q.base:0.5",
                              "--arm", "b=q.cand:0.5", "--guardrail", "happiness"])
    assert bad.exit_code == 2 and "guardrail metric must be one of" in bad.output
