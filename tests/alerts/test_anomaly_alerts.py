"""Anomaly rules end to end: weeks of hourly traffic in request_log (SQLite and
PostgreSQL), a surge in the last complete hour, an alert that names tenant, model and
lever and says how far outside the expected range it is."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from models import RequestLog
from services.alerts import AlertEngine, open_alerts
from services.alerts.series import hourly_totals
from services.costs import PriceCatalog
from services.costs.reports import HostedUpstreams, roll_up
from services.settings import DeliverySettings
from tests.alerts.conftest import Clock

NOW = datetime(2026, 11, 30, 10, 20, tzinfo=UTC)  # a Monday; 09:00-10:00 is judged
RULES = [{"name": "requests", "metric": "request_anomaly", "above": 8.0, "group_by": "model"},
         {"name": "cost", "metric": "cost_anomaly", "above": 8.0, "group_by": "tenant"}]




def history(store, *, surge: bool, weeks: int = 3) -> None:
    """Hourly traffic of acme on m: office hours, quiet weekends, a Monday 9:00 peak;
    a third of it answered from the cache. With ``surge`` the last hour has 4x the
    uncached requests."""
    rng = np.random.default_rng(7)
    end = NOW.replace(minute=0) - timedelta(hours=1)
    rows = []
    for h in range(weeks * 168, 0, -1):
        hour = end - timedelta(hours=h - 1)
        rate = 10 + 8 * max(0.0, np.sin((hour.hour - 6) / 24 * 2 * np.pi))
        rate *= 0.5 if hour.weekday() >= 5 else 1.0
        rate += 30 if (hour.weekday(), hour.hour) == (0, 9) else 0
        count = int(rng.poisson(rate))
        cached = count // 3
        if surge and h == 1:
            cached, count = cached, cached + 4 * (count - cached)
        for i in range(count):
            rows.append({
                "id": uuid.uuid4().hex, "created_at": hour + timedelta(minutes=i % 60),
                "ingested_at": hour + timedelta(minutes=i % 60, seconds=1),
                "tenant": "acme", "endpoint": "chat.completions", "status_code": 200,
                "model_requested": "m", "model_served": "m",
                "cache_layer": "L1" if i < cached else "MISS",
                "cost_usd": 0.0 if i < cached else 0.002, "baseline_cost_usd": 0.002})
    with store.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), rows)


def engine(make_settings, store) -> AlertEngine:
    settings = make_settings(database_url=str(store.url), delivery=DeliverySettings(),
                             alerts={"rules": RULES, "anomaly_history_days": 28},
                             api_keys=["k:acme"])
    return AlertEngine(settings, store, clock=Clock(NOW), gpu_reader=dict)


async def test_a_surge_in_the_last_hour_fires_with_its_context(make_settings, any_store
                                                               ) -> None:
    history(any_store, surge=True)
    totals = hourly_totals(any_store, start=NOW - timedelta(days=28), end=NOW)
    assert set(totals["lever"]) == {"cache_exact", "direct"}
    roll_up(any_store, PriceCatalog(), HostedUpstreams([]))  # now read from cost_rollups
    pd.testing.assert_frame_equal(
        hourly_totals(any_store, start=NOW - timedelta(days=28), end=NOW), totals)
    result = await engine(make_settings, any_store).evaluate()
    assert sorted((c["rule"], c["subject"], c["change"]) for c in result.changes) == [
        ("cost", "tenant=acme", "firing"), ("requests", "tenant=acme,model=m", "firing")]
    by_rule = {a["rule"]: a for a in open_alerts(any_store)}
    context = by_rule["requests"]["details"]["context"]
    assert context["tenant"] == "acme" and context["model"] == "m"
    assert context["lever"] == "direct" and context["lever_value"] > context["lever_typical"]
    assert context["value"] > context["high"] > context["expected"]
    assert context["hour"] == "2026-11-30T09:00:00+00:00"
    assert "robust sd above the expected" in by_rule["requests"]["message"]
    assert "lever direct moved most" in by_rule["requests"]["message"]


async def test_the_weekly_monday_peak_is_not_an_anomaly(make_settings, any_store) -> None:
    history(any_store, surge=False)
    result = await engine(make_settings, any_store).evaluate()
    assert result.changes == [] and result.judged == 2 and result.errors == []


async def test_metric_runs_leave_the_anomaly_rules_alone(make_settings, store) -> None:
    history(store, surge=True)
    result = await engine(make_settings, store).evaluate(kinds="metrics")
    assert result.judged == 0 and result.changes == []
