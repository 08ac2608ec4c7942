"""The demand_forecasting and forecast_backtest flows under Prefect's test harness:
decisions recorded per model (decide-only without an actuator), the backtest flow with
no history stores nothing, and both are deployed on their schedules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from models import ForecastScore, RequestLog, ScalingDecision, session_factory


def test_flows_record_decisions_and_are_deployed(store, prefect_harness, monkeypatch) -> None:
    from flows.demand_forecasting import demand_forecasting
    from flows.deployments import deployments
    from flows.forecast_backtest import forecast_backtest

    monkeypatch.setenv("OPTENGINE_SCALING_MODELS", "busy,quiet")
    monkeypatch.setenv("OPTENGINE_SCALING_WORKER_CAPACITY_TOKENS_S", "100")
    now = datetime.now(UTC)
    with session_factory(store).begin() as session:
        session.add_all([RequestLog(
            id=str(uuid.uuid4()), tenant="t", endpoint="chat", model_served="busy",
            status_code=200, prompt_tokens=990, completion_tokens=10,
            created_at=now - timedelta(seconds=2 * i)) for i in range(300)])
    results = demand_forecasting()
    assert [r["model"] for r in results] == ["busy", "quiet"]
    busy, quiet = results
    assert busy["desired"] > busy["current"] == 0 and busy["predictive"] is not None
    assert quiet["predictive"] is None and "no forecast" in quiet["reason"]
    with session_factory(store)() as session:
        rows = session.scalars(select(ScalingDecision).order_by(ScalingDecision.id)).all()
        assert [(r.model, r.actuated) for r in rows] == [("busy", False), ("quiet", False)]
    assert forecast_backtest(models=["quiet"]) == {"quiet": []}
    with session_factory(store)() as session:
        assert session.scalars(select(ForecastScore)).all() == []
    scheduled = {d.flow_name: d.name for d in deployments()}
    assert scheduled["demand_forecasting"] == "every-minute"
    assert scheduled["forecast_backtest"] == "daily"
