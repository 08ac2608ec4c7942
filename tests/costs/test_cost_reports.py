"""Cost reports from rollups: the figures, the three formats, storing, and bad input."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from models import CostReport
from services.costs import PriceCatalog
from services.costs.reports import (
    Investment,
    NaiveDatetime,
    build_report,
    hosted_upstreams,
    latest_reports,
    monthly_budgets,
    roll_up,
    store_report,
)
from services.errors import InvalidRequest
from tests.support.cost_rows import HOSTED, PRICES, T0, every_path, insert

DAY = timedelta(days=1)


@pytest.fixture
def settings(make_settings):
    return make_settings(
        price_overrides=PRICES, baseline_model="base", openai_base_url=HOSTED,
        cost_monthly_budget_usd=1.0,
        routing={"models": [{"name": "cheap", "tier": "fast_cheap", "upstream": "openai",
                             "context_window": 8000}],
                 "budgets": {"tenant:acme": {"limit_usd": 0.01, "period": "day"},
                             "tenant:*": {"limit_usd": 5}}},
    )


@pytest.fixture
def rolled(store, settings):
    insert(store, every_path(T0 + timedelta(minutes=5)))
    roll_up(store, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
    return store


def test_report_shows_spend_levers_budget_and_roi(rolled, settings) -> None:
    doc = build_report(rolled, T0, T0 + DAY, kind="daily", budgets=monthly_budgets(settings),
                       investment=Investment(one_off_usd=0.5, monthly_usd=0.01))
    md = doc.markdown()
    for heading in ("## Totals", "## Top models by spend", "## Savings by lever", "## Budget",
                    "## ROI", "## Method"):
        assert heading in md
    assert "| requests | 8 |" in md
    assert "| routing and cascades | $0.0003 |" in md
    assert "| self-hosting |" in md and "| caller's model choice (not a lever) |" in md
    assert "Attribution gap: $0." in md
    assert "Unpriced models, add them to price_overrides: mystery (1)." in md
    assert "| monthly budget | $1.00 |" in md or "| monthly budget | $1 |" in md
    assert "(savings - investment) / investment" in md
    assert "savings / investment 36 months (gross, not ROI)" in md
    rows = list(csv.reader(io.StringIO(doc.csv())))
    assert rows[0][0] == "section"
    levers = {r[1]: r[2] for r in rows if r[0] == "Savings by lever" and len(r) > 2}
    assert levers["sum of levers"] == levers["baseline - actual"]
    assert "<h2>Savings by lever</h2>" in doc.html()
    assert doc.summary.attribution_gap_usd < 1e-15


def test_tenant_report_has_its_own_budget_and_points_to_roi(rolled, settings) -> None:
    doc = build_report(rolled, T0, T0 + DAY, tenant="acme", budgets=monthly_budgets(settings))
    md = doc.markdown()
    assert "tenant acme" in md
    assert "| monthly budget | $0.304375 |" in md  # a daily budget of 0.01 x 30.44 days
    assert "ROI block is in the all-tenants report" in md


def test_stored_reports_read_back(rolled) -> None:
    doc = build_report(rolled, T0, T0 + DAY, kind="daily")
    report_id = store_report(rolled, doc)
    with rolled.connect() as conn:
        stored = conn.execute(select(CostReport).where(CostReport.id == report_id)).one()
    assert stored.markdown == doc.markdown() and stored.csv == doc.csv()
    assert stored.summary["requests"] == 8
    assert latest_reports(rolled, kind="daily")[0]["id"] == report_id


def test_a_period_without_data_says_no_data(rolled) -> None:
    doc = build_report(rolled, T0 - 3 * DAY, T0 - 2 * DAY)
    assert "no data" in doc.markdown() and "no data" in doc.csv()
    assert not doc.summary.has_data
    assert "no data" in build_report(rolled, T0, T0 + DAY, tenant="nobody").markdown()


def test_naive_and_inverted_periods_are_refused(rolled) -> None:
    with pytest.raises(NaiveDatetime, match="has no timezone"):
        build_report(rolled, datetime(2026, 11, 2), T0 + DAY)
    with pytest.raises(InvalidRequest, match="must be after"):
        build_report(rolled, T0 + DAY, T0)
    with pytest.raises(ValueError, match="unknown format"):
        build_report(rolled, T0, T0 + DAY).render("pdf")
