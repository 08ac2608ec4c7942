"""The cost report's anomalies: three weeks of hourly traffic with a daily and weekly
rhythm, one hour of the reported day with six times its usual traffic for one tenant.
The hour is listed for that tenant (overall report) and its model (tenant report), with
its expected range; the other tenant and a quiet day list none."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from models import RequestLog
from services.costs import PriceCatalog
from services.costs.reports import HostedUpstreams, build_report, roll_up

DAY = datetime(2026, 11, 30, tzinfo=UTC)  # a Monday: the reported day
SURGE = DAY + timedelta(hours=14)


def traffic(store, *, surge: bool) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for h in range(-21 * 24, 24):
        hour = DAY + timedelta(hours=h)
        rate = 10 + 8 * max(0.0, np.sin((hour.hour - 6) / 24 * 2 * np.pi))
        rate *= 0.5 if hour.weekday() >= 5 else 1.0
        for tenant, model in (("acme", "m"), ("beta", "n")):
            count = int(rng.poisson(rate))
            if surge and tenant == "acme" and hour == SURGE:
                count *= 6
            rows += [{"id": uuid.uuid4().hex, "created_at": hour + timedelta(minutes=i % 60),
                      "ingested_at": hour + timedelta(minutes=i % 60, seconds=1),
                      "tenant": tenant, "endpoint": "chat.completions", "status_code": 200,
                      "model_requested": model, "model_served": model, "cost_usd": 0.002,
                      "baseline_cost_usd": 0.003} for i in range(count)]
    with store.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), rows)
    roll_up(store, PriceCatalog(), HostedUpstreams([]))


def anomalies(doc) -> list[list[str]]:
    [section] = [s for s in doc.sections if s.title == "Anomalies"]
    return section.rows


def test_a_surge_is_listed_for_its_tenant_and_model(store) -> None:
    traffic(store, surge=True)
    overall = anomalies(build_report(store, DAY, DAY + timedelta(days=1)))
    assert {(r[0], r[1], r[2]) for r in overall} >= {
        ("tenant acme", "requests", "2026-11-30 14:00"),
        ("tenant acme", "cost (USD)", "2026-11-30 14:00")}
    assert not [r for r in overall if r[0] == "tenant beta"]
    [requests] = [r for r in overall if r[0] == "tenant acme" and r[1] == "requests"]
    low, high = (float(v) for v in requests[5].split(" to "))
    assert float(requests[3]) > high > float(requests[4]) > low
    assert float(requests[6]) > 8
    tenant = anomalies(build_report(store, DAY, DAY + timedelta(days=1), tenant="acme"))
    assert ("model m", "requests", "2026-11-30 14:00") in {(r[0], r[1], r[2]) for r in tenant}


def test_a_quiet_day_lists_none_and_a_short_history_says_so(store) -> None:
    traffic(store, surge=False)
    doc = build_report(store, DAY, DAY + timedelta(days=1))
    assert anomalies(doc) == []
    assert "No hour of the period was outside its expected range." in doc.markdown()
    early = build_report(store, DAY - timedelta(days=20), DAY - timedelta(days=19))
    assert "Not judged (under two days of history before the period): total" in \
        early.markdown()


@pytest.mark.parametrize("fmt", ["md", "csv", "html"])
def test_every_format_carries_the_anomalies(store, fmt) -> None:
    traffic(store, surge=True)
    text = build_report(store, DAY, DAY + timedelta(days=1)).render(fmt)
    assert "Anomalies" in text and "2026-11-30 14:00" in text
