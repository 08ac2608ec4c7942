"""GET /admin/alerts lists the alerts the alerting flow keeps, behind the admin key."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from models import create_store_engine
from services.alerts import AlertEngine
from services.settings import DeliverySettings
from tests.alerts.conftest import Clock, add_requests


def test_firing_alerts_are_listed_for_the_admin_only(make_settings, start_gateway) -> None:
    settings = make_settings(
        admin_api_key="admin-secret", delivery=DeliverySettings(),
        alerts={"rules": [
            {"name": "errors", "metric": "error_rate", "above": 0.01, "min_requests": 5},
            {"name": "hit-rate", "metric": "cache_hit_rate", "below": 0.6, "for": "10m",
             "min_requests": 5}]})
    gateway = start_gateway(settings)  # migrates the store
    store = create_store_engine(settings.database_url)
    try:
        clock = Clock(datetime.now(UTC))
        add_requests(store, clock.now, 20, status=503)
        asyncio.run(AlertEngine(settings, store, clock=clock, gpu_reader=dict).evaluate())
    finally:
        store.dispose()
    refused = httpx.get(f"{gateway.url}/admin/alerts")
    assert refused.status_code == 401
    admin = {"authorization": "Bearer admin-secret"}
    [firing] = httpx.get(f"{gateway.url}/admin/alerts", headers=admin).json()
    assert firing["rule"] == "errors" and firing["state"] == "firing"
    assert firing["value"] == 1.0 and firing["threshold"] == 0.01
    assert firing["details"]["context"]["errors"] == 20
    both = httpx.get(f"{gateway.url}/admin/alerts", params={"pending": "true"}, headers=admin)
    assert sorted(a["rule"] for a in both.json()) == ["errors", "hit-rate"]
