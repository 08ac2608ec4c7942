"""The cost_management flow under Prefect's test harness, on a real SQLite store: the
rollup, reports per tenant and overall stored and published as artifacts, and requests
of an unpriced model that do not stop it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy import select

from flows.cost_management import cost_management
from models import CostReport
from tests.support.cost_rows import HOSTED, PRICES, T0, every_path, insert, row, usage
from tests.support.receivers import smtp_server, webhook_receiver


@pytest.fixture
def priced_store(store, monkeypatch):
    monkeypatch.setenv("OPTENGINE_PRICE_OVERRIDES", json.dumps(PRICES))
    monkeypatch.setenv("OPTENGINE_BASELINE_MODEL", "base")
    monkeypatch.setenv("OPTENGINE_OPENAI_BASE_URL", HOSTED)
    monkeypatch.setenv("OPTENGINE_COST_INVESTMENT_ONE_OFF_USD", "0.01")
    return store


def test_daily_run_rolls_up_and_reports_every_tenant(priced_store, prefect_harness) -> None:
    insert(priced_store, every_path(T0 + timedelta(minutes=5)))
    insert(priced_store, [row(T0 + timedelta(hours=3), tenant="globex", model_served="cheap",
                              worker=HOSTED, cost_usd=0.0004, api_key_id="static:ci",
                              **usage(1000, 600, 100))])
    result = cost_management(mode="daily", now=T0 + timedelta(days=1))
    assert result["rollup"]["hours"] == 2
    by_tenant = {r["tenant"]: r["summary"] for r in result["reports"]}
    assert set(by_tenant) == {None, "acme", "globex"}
    assert by_tenant[None]["requests"] == 9 and by_tenant["globex"]["requests"] == 1
    overall = by_tenant[None]
    assert sum(overall["saved_by_lever"].values()) == pytest.approx(overall["saved_usd"])
    with priced_store.connect() as conn:
        stored = conn.execute(select(CostReport.kind, CostReport.tenant, CostReport.markdown)
                              ).all()
    assert {(k, t) for k, t, _ in stored} == {("daily", None), ("daily", "acme"),
                                              ("daily", "globex")}
    overall_md = next(md for _, t, md in stored if t is None)
    assert "## ROI" in overall_md and "mystery (1)" in overall_md
    assert "| key:static:ci | - | globex | 1 | $0.0004 | unlimited |" in overall_md
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_="cost-daily-")))}
    assert {"cost-daily-all-tenants", "cost-daily-acme", "cost-daily-globex",
            "cost-daily-all-tenants-levers"} <= keys


def test_hourly_run_is_the_rollup_alone_and_a_quiet_day_says_no_data(
        priced_store, prefect_harness) -> None:
    first = cost_management()
    assert first == {"mode": "hourly", "rollup": {"hours": 0, "rows": 0, "seconds":
                                                  first["rollup"]["seconds"],
                                                  "watermark": None}}
    quiet = cost_management(mode="weekly", now=T0)
    assert [r["summary"]["requests"] for r in quiet["reports"]] == [0]
    with priced_store.connect() as conn:
        assert "no data" in conn.scalar(select(CostReport.markdown))
    with pytest.raises(ValueError, match="unknown mode"):
        cost_management(mode="yearly")


def test_the_all_tenants_report_is_delivered_by_webhook_and_email(
        priced_store, prefect_harness, monkeypatch, tmp_path) -> None:
    rows = every_path(T0 + timedelta(minutes=5))
    insert(priced_store, rows)
    with webhook_receiver() as hooks, smtp_server(tmp_path) as smtp:
        monkeypatch.setenv("OPTENGINE_DELIVERY", json.dumps({
            "webhooks": {"finance": {"url": f"{hooks.url}/ok", "format": "json"},
                         "broken": {"url": f"{hooks.url}/fail", "format": "slack"}},
            "smtp": {"host": "127.0.0.1", "port": smtp.port, "to": ["finance@example.org"],
                     "starttls": False},
            "retries": 0, "deadline_s": 5,
        }))
        result = cost_management(mode="daily", now=T0 + timedelta(days=1))
        [posted] = hooks.posts("/ok")
        [mail] = smtp.messages
    # a receiver that answers 500 is a failed result, not a failed flow
    assert {(d["channel"], d["ok"]) for d in result["delivered"]} == {
        ("webhook:finance", True), ("webhook:broken", False), ("email", True)}
    assert posted["source"] == "cost_management" and "## ROI" in posted["text"]
    # every request but the unpriced model's, which reports count apart
    assert posted["details"]["summary"]["requests"] == len(rows) - 1
    csv_parts = [p for p in mail.walk() if p.get_content_type() == "text/csv"]
    assert len(csv_parts) == 1 and b"lever" in csv_parts[0].get_payload(decode=True)
