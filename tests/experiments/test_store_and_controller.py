"""Config versions, experiments, sticky assignment and the canary controller on a real
(migrated SQLite) store, with request_log rows written as the telemetry writer would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from models import Alert, ConfigAudit, Experiment, ExperimentResult, RequestLog
from services.errors import Conflict, InvalidRequest, NotFound
from services.experiments import (
    bucket,
    create_config,
    create_experiment,
    describe,
    load_live,
    run_once,
    transition,
)
from services.routing.feedback import store_rating

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _configs(engine) -> None:
    create_config(engine, "base", {"model": "m-base"}, actor="alice")
    create_config(engine, "cand", {"model": "m-cand", "token_optimization": "lossless"},
                  actor="alice")


def _canary(engine, name: str = "c1", **kw) -> dict:
    kw = {"kind": "canary", "unit": "header", "steps": [0.25, 0.5, 1.0], "step_seconds": 60,
          "min_samples": 50, **kw}
    return create_experiment(engine, name, [{"name": "control", "config": "base"},
                                            {"name": "canary", "config": "cand"}],
                             actor="alice", **kw)


def test_config_versions_are_validated_immutable_and_audited(store) -> None:
    made = create_config(store, "v1", {"cache_semantic": "on", "token_optimization": "Budget=64",
                                       "cache_semantic_min_probability": 0.9}, actor="bob")
    assert made["overrides"] == {"cache_semantic": True, "token_optimization": "budget=64",
                                 "cache_semantic_min_probability": 0.9}
    with pytest.raises(Conflict, match="immutable"):
        create_config(store, "v1", {"model": "x"}, actor="bob")
    with pytest.raises(InvalidRequest, match="unknown setting"):
        create_config(store, "v2", {"cache_l1_ttl_s": 5}, actor="bob")
    with pytest.raises(InvalidRequest, match="token_optimization"):
        create_config(store, "v3", {"token_optimization": "squeeze"}, actor="bob")
    with pytest.raises(InvalidRequest, match="cache_semantic_min_probability"):
        create_config(store, "v4", {"cache_semantic_min_probability": 1.5}, actor="bob")
    with pytest.raises(InvalidRequest, match="name"):
        create_config(store, "Bad Name!", {"model": "x"}, actor="bob")
    with pytest.raises(InvalidRequest, match="worker pool name"):
        create_config(store, "v5", {"worker_pool": "Pool #1"}, actor="bob")
    with pytest.raises(InvalidRequest, match="no pool 'vllm-1'"):
        create_config(store, "v6", {"worker_pool": "vllm-1"}, actor="bob",
                      worker_pools=["vllm-0"])
    with Session(store) as s:
        rows = s.scalars(select(ConfigAudit)).all()
    assert [(r.actor, r.action, r.subject) for r in rows] == [("bob", "config.create", "v1")]


def test_experiment_input_is_checked(store) -> None:
    _configs(store)
    arms = [{"name": "a", "config": "base", "weight": 0.5},
            {"name": "b", "config": "cand", "weight": 0.6}]
    with pytest.raises(InvalidRequest, match="sum to 1"):
        create_experiment(store, "e", arms, actor="x")
    with pytest.raises(InvalidRequest, match="unknown config"):
        create_experiment(store, "e", [{"name": "a", "config": "base", "weight": 0.5},
                                       {"name": "b", "config": "nope", "weight": 0.5}], actor="x")
    with pytest.raises(InvalidRequest, match="steps"):
        _canary(store, steps=[0.5, 0.25, 1.0])
    with pytest.raises(InvalidRequest, match="unit"):
        _canary(store, unit="cookie")
    with pytest.raises(NotFound):
        transition(store, "missing", "start", actor="x")


def test_two_live_experiments_may_not_claim_one_setting_for_the_same_tenants(store) -> None:
    _configs(store)
    _canary(store, "first", tenants=["t1", "t2"])
    transition(store, "first", "start", actor="x", now=T0)
    _canary(store, "second", tenants=["t2"])
    with pytest.raises(Conflict, match="first"):
        transition(store, "second", "start", actor="x", now=T0)
    _canary(store, "third", tenants=["t3"])  # other tenants: fine
    transition(store, "third", "start", actor="x", now=T0)
    transition(store, "first", "abort", actor="x", now=T0)
    transition(store, "second", "start", actor="x", now=T0)  # free again
    with pytest.raises(Conflict, match="cannot pause"):
        transition(store, "first", "pause", actor="x")


def test_assignment_is_sticky_weighted_and_a_canary_ramp_only_adds_units(store) -> None:
    _configs(store)
    _canary(store)
    transition(store, "c1", "start", actor="x", now=T0)
    units = [f"user-{i}" for i in range(4000)]
    (live,) = load_live(store)
    at_25 = {u for u in units if live.arm_for(u).name == "canary"}
    assert 0.22 < len(at_25) / len(units) < 0.28
    assert all(live.arm_for(u).name == "canary" for u in at_25)  # sticky
    with Session(store) as s, s.begin():
        from services.experiments.store import set_canary_share
        set_canary_share(s, s.get(Experiment, "c1"), 0.5)
    (live,) = load_live(store)
    at_50 = {u for u in units if live.arm_for(u).name == "canary"}
    assert at_25 < at_50 and 0.46 < len(at_50) / len(units) < 0.54
    assert live.arms[1].overrides == {"model": "m-cand", "token_optimization": "lossless"}
    assert bucket("c1", "user-1") != bucket("other", "user-1")


def _log(engine, arm: str, n: int, at: datetime, *, latency: float, errors: int = 0,
         seed: int = 0, experiment: str = "c1", ttft: float = 20.0, **columns) -> list[str]:
    """``n`` log rows of one arm; ``columns``: more values for every row, or a function
    of the row's index giving its value."""
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(np.log(latency), 0.4, n)
    first = rng.lognormal(np.log(ttft), 0.4, n)
    rows = [{"id": f"{arm}-{seed}-{i}", "created_at": at + timedelta(seconds=i % 50),
             "tenant": "t", "endpoint": "chat.completions",
             "status_code": 502 if i < errors else 200, "latency_ms": float(lat[i]),
             "cost_usd": 0.001, "ttft_ms": float(first[i]),
             "experiment_arms": f"other=x,{experiment}={arm}",
             **{k: v(i) if callable(v) else v for k, v in columns.items()}}
            for i in range(n)]
    with engine.begin() as conn:
        conn.execute(insert(RequestLog), rows)
    return [r["id"] for r in rows]


def test_a_slower_canary_is_rolled_back_with_an_alert(store) -> None:
    _configs(store)
    _canary(store)
    transition(store, "c1", "start", actor="x", now=T0)
    _log(store, "control", 300, T0, latency=100, seed=1)
    _log(store, "canary", 100, T0, latency=180, seed=2)
    (decision,) = run_once(store, T0 + timedelta(seconds=30))
    assert decision.decision == "rollback" and "latency_ms" in decision.reason
    assert describe(store, "c1")["status"] == "rolled_back"
    assert load_live(store) == []
    with Session(store) as s:
        assert s.scalars(select(Alert)).one().source == "experiments"
        result = s.scalars(select(ExperimentResult)).one()
    latency = next(c for c in result.detail["comparisons"]["canary"]
                   if c["metric"] == "latency_ms")
    assert 0.5 < latency["effect"] < 1.1 and latency["ci_low"] > 0
    arms = result.detail["arms"]
    assert 80 < arms["control"]["latency_p50_ms"] < 120 < arms["canary"]["latency_p50_ms"]
    assert arms["canary"]["latency_p99_ms"] > arms["canary"]["latency_p95_ms"]
    assert arms["canary"]["ttft_p50_ms"] is not None


def test_a_healthy_canary_steps_up_to_promotion_and_holds_without_data(store) -> None:
    _configs(store)
    _canary(store)
    transition(store, "c1", "start", actor="x", now=T0)
    # enough samples but the step's time is not over
    _log(store, "control", 200, T0, latency=100, seed=1)
    _log(store, "canary", 70, T0, latency=100, seed=2)
    assert run_once(store, T0 + timedelta(seconds=30))[0].decision == "hold"
    (d,) = run_once(store, T0 + timedelta(seconds=61))
    assert d.decision == "advance", d.reason
    assert [a["weight"] for a in describe(store, "c1")["arms"]] == [0.5, 0.5]
    # the next step has no data yet: time alone never promotes
    t1 = T0 + timedelta(seconds=61)
    (d,) = run_once(store, t1 + timedelta(hours=1))
    assert d.decision == "hold" and "samples" in d.reason
    _log(store, "control", 100, t1, latency=100, seed=3)
    _log(store, "canary", 100, t1, latency=95, seed=4)
    (d,) = run_once(store, t1 + timedelta(hours=1, seconds=1))
    assert d.decision == "promote", d.reason
    exp = describe(store, "c1")
    assert exp["status"] == "promoted" and exp["arms"][1]["weight"] == 1.0
    (live,) = load_live(store)
    assert live.arm_for("anyone").name == "canary"
    with Session(store) as s:
        actions = [r.action for r in s.scalars(select(ConfigAudit).where(
            ConfigAudit.subject == "c1").order_by(ConfigAudit.id))]
    assert actions == ["experiment.create", "experiment.start", "experiment.advance",
                       "experiment.promote"]


def test_an_unreachable_store_holds_every_step(store, tmp_path) -> None:
    _configs(store)
    _canary(store)
    transition(store, "c1", "start", actor="x", now=T0)
    gone = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                         connect_args={"connect_timeout": 2})
    (d,) = run_once(gone, T0 + timedelta(hours=1))
    assert d.decision == "hold" and "unreachable" in d.reason
    assert describe(store, "c1")["step"] == 0


def test_errors_breach_the_error_rate_guardrail(store) -> None:
    _configs(store)
    create_experiment(store, "ab", [{"name": "a", "config": "base", "weight": 0.5},
                                    {"name": "b", "config": "cand", "weight": 0.5}],
                      actor="x", unit="tenant",
                      guardrails=[{"metric": "error_rate", "tolerance": 0.0}])
    transition(store, "ab", "start", actor="x", now=T0)
    _log(store, "a", 400, T0, latency=100, errors=2, seed=1, experiment="ab")
    _log(store, "b", 400, T0, latency=100, errors=60, seed=2, experiment="ab")
    (d,) = run_once(store, T0 + timedelta(seconds=5))
    assert d.decision == "rollback" and "error_rate" in d.reason


def test_a_sample_ratio_mismatch_holds_the_step(store) -> None:
    _configs(store)
    _canary(store)  # 25% canary, but the log holds as many canary requests as control
    transition(store, "c1", "start", actor="x", now=T0)
    _log(store, "control", 300, T0, latency=100, seed=1)
    _log(store, "canary", 300, T0, latency=100, seed=2)
    (d,) = run_once(store, T0 + timedelta(seconds=120))
    assert d.decision == "hold" and "sample ratio mismatch" in d.reason
    assert d.detail["srm_p"] < 0.001


def test_a_slower_first_token_breaches_a_ttft_guardrail(store) -> None:
    _configs(store)
    create_experiment(store, "ab", [{"name": "a", "config": "base", "weight": 0.5},
                                    {"name": "b", "config": "cand", "weight": 0.5}],
                      actor="x", guardrails=[{"metric": "ttft_ms", "tolerance": 0.1}])
    transition(store, "ab", "start", actor="x", now=T0)
    _log(store, "a", 300, T0, latency=100, ttft=20, seed=1, experiment="ab")
    _log(store, "b", 300, T0, latency=100, ttft=40, seed=2, experiment="ab")
    (d,) = run_once(store, T0 + timedelta(seconds=5))
    assert d.decision == "rollback" and "ttft_ms" in d.reason


def _ab(engine, guardrails: list[dict]) -> None:
    _configs(engine)
    create_experiment(engine, "ab", [{"name": "a", "config": "base", "weight": 0.5},
                                     {"name": "b", "config": "cand", "weight": 0.5}],
                      actor="x", guardrails=guardrails)
    transition(engine, "ab", "start", actor="x", now=T0)


def test_worse_ratings_from_the_feedback_store_roll_back(store) -> None:
    _ab(store, [{"metric": "rating"}, {"metric": "latency_ms"}])
    for arm, seed, good_share in (("a", 1, 0.9), ("b", 2, 0.6)):
        ids = _log(store, arm, 400, T0, latency=100, seed=seed, experiment="ab")
        for i, request_id in enumerate(ids):  # as POST /v1/feedback stores them
            store_rating(store, request_id, "t", float(i < good_share * len(ids)))
    (d,) = run_once(store, T0 + timedelta(seconds=5))
    assert d.decision == "rollback" and "b rating" in d.reason
    assert d.detail["arms"]["a"]["mean_rating"] == pytest.approx(0.9)
    assert d.detail["arms"]["b"]["mean_rating"] == pytest.approx(0.6)


def test_cascade_escalations_and_judge_scores_are_read_per_arm(store) -> None:
    _ab(store, [{"metric": "escalation_rate"}, {"metric": "judge_score"}])
    _log(store, "a", 300, T0, latency=100, seed=1, experiment="ab",
         cascade_decision=lambda i: "escalated" if i % 10 == 0 else "accepted",
         cascade_score=lambda i: 0.3 if i % 10 == 0 else 0.9)
    _log(store, "b", 300, T0, latency=100, seed=2, experiment="ab",
         cascade_decision=lambda i: "escalated" if i % 2 == 0 else "accepted",
         cascade_score=lambda i: 0.3 if i % 2 == 0 else 0.9)
    _log(store, "b", 50, T0, latency=100, seed=3, experiment="ab")  # not cascaded
    (d,) = run_once(store, T0 + timedelta(seconds=5))
    arms = d.detail["arms"]
    assert arms["a"]["escalation_rate"] == pytest.approx(0.1)
    assert arms["b"]["escalation_rate"] == pytest.approx(0.5)
    assert arms["b"]["mean_judge_score"] == pytest.approx(0.6)
    assert d.decision == "rollback"
    assert "b escalation_rate" in d.reason and "b judge_score" in d.reason


def test_tokens_per_request_are_compared_with_the_prompt_as_sent_as_covariate(store) -> None:
    # the candidate's token policy trims every prompt by a fifth: prompt tokens fall,
    # completion tokens do not move; the covariate is the prompt before the policy
    _ab(store, [{"metric": "prompt_tokens"}, {"metric": "completion_tokens"},
                {"metric": "cost_usd"}])
    sizes = np.random.default_rng(9).lognormal(np.log(800), 0.7, 800).astype(int) + 10
    for arm, seed, keep, offset in (("a", 1, 1.0, 0), ("b", 2, 0.8, 400)):
        _log(store, arm, 400, T0, latency=100, seed=seed, experiment="ab",
             prompt_tokens_before_optimization=lambda i, o=offset: int(sizes[o + i]),
             prompt_tokens=lambda i, o=offset, k=keep: int(sizes[o + i] * k),
             completion_tokens=lambda i: 20 + i % 7,
             cost_usd=lambda i, o=offset, k=keep: sizes[o + i] * k * 1e-6 + 1e-5)
    (d,) = run_once(store, T0 + timedelta(seconds=5))
    found = {c["metric"]: c for c in d.detail["comparisons"]["b"]}
    assert -0.25 < found["prompt_tokens"]["effect"] < -0.15
    assert found["prompt_tokens"]["ci_high"] < 0  # fewer tokens: not a breach
    assert found["completion_tokens"]["ci_low"] < 0 < found["completion_tokens"]["ci_high"]
    assert found["cost_usd"]["ci_high"] < 0
    assert d.decision == "hold"  # an A/B test without a breach runs on
    assert d.detail["arms"]["b"]["mean_prompt_tokens"] < d.detail["arms"]["a"][
        "mean_prompt_tokens"]
