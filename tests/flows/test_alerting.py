"""The alerting flow under Prefect's test harness: settings from the environment, a
real store and a real webhook receiver."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from sqlalchemy import select

from models import Alert
from tests.alerts.conftest import add_requests
from tests.support.receivers import webhook_receiver


def test_flow_fires_once_notifies_and_reports_bad_rules(store, prefect_harness,
                                                         monkeypatch) -> None:
    from flows.alerting import alerting
    from flows.deployments import FLOWS, deployments

    assert FLOWS["alerting"] is alerting
    scheduled = {d.name: (d.schedules[0].schedule.interval.total_seconds(), d.parameters)
                 for d in deployments() if d.flow_name == "alerting"}
    assert scheduled == {"metrics-every-minute": (60, {"kinds": "metrics"}),
                         "anomalies-hourly": (3600, {"kinds": "anomalies"})}
    rules = [{"name": "errors", "metric": "error_rate", "above": 0.01, "min_requests": 5},
             {"name": "typo", "metric": "error_rate", "above": 0.01, "tenants": ["nobody"]}]
    add_requests(store, datetime.now(UTC), 30, status=502)
    with webhook_receiver() as receiver:
        monkeypatch.setenv("OPTENGINE_ALERTS", json.dumps({"rules": rules}))
        monkeypatch.setenv("OPTENGINE_DELIVERY", json.dumps({
            "webhooks": {"ops": {"url": f"{receiver.url}/ok", "format": "json"}}}))
        first = asyncio.run(alerting(kinds="metrics"))
        second = asyncio.run(alerting(kinds="metrics"))
    assert [(c["rule"], c["change"]) for c in first["changes"]] == [("errors", "firing")]
    assert first["notified"] == 1 and second["changes"] == [] and second["notified"] == 0
    assert any("'typo' names unknown tenant 'nobody'" in e for e in first["errors"])
    [posted] = receiver.posts("/ok")
    assert posted["title"] == "FIRING: errors (overall)" and posted["severity"] == "warning"
    assert posted["details"]["errors"] == 30 and posted["details"]["requests"] == 30
    with store.connect() as conn:
        assert conn.execute(select(Alert.state)).scalars().all() == ["firing"]
