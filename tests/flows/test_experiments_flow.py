"""The experiments flow under Prefect's test harness: one look per running experiment,
stored; a breached canary is rolled back; the deployment runs every minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from models import ExperimentResult, RequestLog
from services.experiments import create_config, create_experiment, describe, transition


def test_flow_rolls_back_a_slower_canary_and_stores_the_look(prefect_harness, store) -> None:
    from flows.deployments import deployments
    from flows.experiments import experiments

    create_config(store, "base", {"model": "a"}, actor="t")
    create_config(store, "cand", {"model": "b"}, actor="t")
    create_experiment(store, "c", [{"name": "control", "config": "base"},
                                   {"name": "canary", "config": "cand"}],
                      actor="t", kind="canary", unit="tenant", min_samples=30)
    started = datetime.now(UTC) - timedelta(seconds=5)
    transition(store, "c", "start", actor="t", now=started)
    rows = [{"id": f"r{i}", "created_at": started + timedelta(seconds=1), "tenant": "t",
             "endpoint": "chat.completions", "status_code": 200,
             "latency_ms": (300.0 if i % 2 else 100.0) * (1 + (i % 7) / 20),
             "experiment_arms": "c=canary" if i % 2 else "c=control"} for i in range(200)]
    with store.begin() as conn:
        conn.execute(insert(RequestLog), rows)

    decisions = experiments(database_url=str(store.url))
    assert [(d["experiment"], d["decision"]) for d in decisions] == [("c", "rollback")]
    assert describe(store, "c")["status"] == "rolled_back"
    with Session(store) as s:
        assert s.scalars(select(ExperimentResult.decision)).all() == ["rollback"]
    schedule = {d.name: d.schedules[0].schedule for d in deployments() if d.schedules}
    assert schedule["every-minute"].interval.total_seconds() == 60
