"""Spend per API key in the cost reports: ``key_cost_rollups`` written by the same rollup
run as ``cost_rollups``, and the report's "API keys" section holding each key's spend
against its budget (stored limit, else the routing config's ``key:<id>``), revoked keys
still listed. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import ApiKey, KeyCostRollup, session_factory
from services.costs import PriceCatalog
from services.costs.reports import (
    build_report,
    configured_key_budgets,
    hosted_upstreams,
    key_spend,
    report_options,
    roll_up,
)
from services.costs.reports.keys import budget_window
from services.gateway.auth import create_api_key, hash_key, revoke_api_key
from services.routing.config import BudgetConfig
from tests.support.cost_rows import HOSTED, PRICES, T0, insert, row, usage

DAY = timedelta(days=1)
D0 = T0.replace(hour=0)  # midnight: reports of 2 November


@pytest.fixture
def settings(make_settings):
    return make_settings(
        price_overrides=PRICES, baseline_model="base", openai_base_url=HOSTED,
        routing={"models": [{"name": "cheap", "tier": "fast_cheap", "upstream": "openai",
                             "context_window": 8000}],
                 "budgets": {"key:static:abc": {"limit_usd": 0.001, "period": "month"}}},
    )


@pytest.fixture
def keys(any_store) -> dict[str, str]:
    """Stored keys of acme and globex: name -> id."""
    sessions = session_factory(any_store)
    made = {"ci": ("acme", 0.001, "day"), "web": ("acme", None, None),
            "old": ("acme", 1.0, "month"), "idle": ("acme", 2.0, "total"),
            "other": ("globex", 1.0, "month")}
    ids = {}
    for name, (tenant, limit, period) in made.items():
        key = create_api_key(sessions, tenant=tenant, name=name, budget_usd=limit,
                             budget_period=period)
        with sessions() as session:
            ids[name] = str(session.scalar(select(ApiKey.id).where(
                ApiKey.key_hash == hash_key(key))))
    return ids


def _spent(at, key_id: str | None, cost: float, tenant: str = "acme", **values) -> dict:
    return row(at, tenant=tenant, api_key_id=key_id, model_served="cheap", worker=HOSTED,
               cost_usd=cost, **usage(1000, 1000, 100), **values)


@pytest.fixture
def rolled(any_store, keys, settings):
    at = T0 + timedelta(minutes=5)
    insert(any_store, [
        _spent(at - DAY, keys["ci"], 0.0004),  # the day before: not in today's budget
        _spent(at, keys["ci"], 0.0003), _spent(at + timedelta(hours=2), keys["ci"], 0.0003),
        # an escalated cascade attempt: spend its budget counts, not a request
        _spent(at, keys["ci"], 0.0001,
               route_reason="cascade: cheap attempt escalated, score 0.2"),
        _spent(at, keys["web"], 0.002),
        _spent(at, keys["old"], 0.0002, status_code=502),
        _spent(at, "static:abc", 0.0009),
        _spent(at, keys["other"], 0.0005, tenant="globex"),
        _spent(at, None, 0.5),  # no key: in the totals, not in the keys section
    ])
    revoke_api_key(session_factory(any_store), int(keys["old"]), now=at + DAY)
    roll_up(any_store, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
    return any_store


def test_rollup_writes_spend_per_key_and_hour_and_a_rerun_changes_nothing(
        rolled, keys, settings) -> None:
    def key_rows():
        with rolled.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(select(
                KeyCostRollup.api_key_id, KeyCostRollup.requests, KeyCostRollup.errors,
                func.round(KeyCostRollup.cost_usd * 1e6)).order_by(KeyCostRollup.hour)))

    first = key_rows()
    # the day before, and the hour of T0: one request and an escalated attempt (not one)
    assert first.count((keys["ci"], 1, 0, 400)) == 2
    assert (keys["old"], 1, 1, 200) in first
    assert len(first) == 7  # ci x 3 hours, web, old, static:abc, other
    # a late row (replayed after an outage) redoes its hour only, key rows included
    insert(rolled, [_spent(T0 + timedelta(minutes=30), keys["web"], 0.001)])
    roll_up(rolled, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
    after = key_rows()
    assert (keys["web"], 2, 0, 3000) in after and len(after) == 7
    roll_up(rolled, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
    assert key_rows() == after


def test_all_tenants_report_lists_every_key_against_its_budget(rolled, keys,
                                                                 settings) -> None:
    doc = build_report(rolled, D0, D0 + DAY, kind="daily", **report_options(settings))
    section = next(s for s in doc.sections if s.title == "API keys")
    rows = {r[0]: r for r in section.rows}
    assert list(rows) == [f"key:{keys['web']}", "key:static:abc", f"key:{keys['ci']}",
                          f"key:{keys['other']}", f"key:{keys['old']}", f"key:{keys['idle']}"]
    ci = rows[f"key:{keys['ci']}"]
    assert ci[1:] == ["ci", "acme", "2", "$0.0007", "$0.001/day", "2026-11-02", "$0.0007",
                      "70.0%"]  # 1 November's spend is not in its budget day
    assert rows[f"key:{keys['web']}"][5:] == ["unlimited", "-", "-", "-"]
    assert rows["key:static:abc"][1:] == ["-", "acme", "1", "$0.0009", "$0.001/month",
                                          "2026-11", "$0.0009", "90.0%"]
    assert rows[f"key:{keys['old']}"][1] == "old (revoked 2026-11-03)"
    assert rows[f"key:{keys['old']}"][5] == "unlimited"  # a revoked key has no budget left
    assert rows[f"key:{keys['idle']}"][3:] == ["0", "$0", "$2 total", "total", "$0", "0.0%"]
    md = doc.markdown()
    assert "## API keys" in md and f"| key:{keys['ci']} | ci | acme |" in md
    assert [r for r in doc.csv().splitlines() if r.startswith("API keys,key:static:abc")]


def test_a_key_over_its_budget_is_marked_and_a_tenant_report_lists_its_own_keys(
        rolled, keys, settings) -> None:
    insert(rolled, [_spent(T0 + timedelta(hours=5), keys["ci"], 0.0005)])
    roll_up(rolled, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
    doc = build_report(rolled, D0, D0 + DAY, tenant="globex", **report_options(settings))
    section = next(s for s in doc.sections if s.title == "API keys")
    assert [r[0] for r in section.rows] == [f"key:{keys['other']}"]
    [ci] = [k for k in key_spend(rolled, D0, D0 + DAY, tenant="acme")
            if k.key_id == keys["ci"]]
    assert ci.budget_used == pytest.approx(1.2)
    doc = build_report(rolled, D0, D0 + DAY, tenant="acme", **report_options(settings))
    [row_] = [r for s in doc.sections if s.title == "API keys" for r in s.rows
              if r[0] == f"key:{keys['ci']}"]
    assert row_[-1] == "120.0% (over)"


def test_without_keys_the_section_says_so(any_store, settings) -> None:
    insert(any_store, [_spent(T0, None, 0.001)])
    roll_up(any_store, PriceCatalog.from_settings(settings), hosted_upstreams(settings))
    doc = build_report(any_store, T0, T0 + DAY)
    section = next(s for s in doc.sections if s.title == "API keys")
    assert section.rows == [] and "No request of the period was made with an API key" in (
        section.notes[0])


def test_budget_windows_and_configured_key_budgets(settings) -> None:
    end = D0 + DAY  # midnight after 2 November
    assert budget_window("day", end) == (D0, "2026-11-02")
    assert budget_window("month", end) == (D0.replace(day=1), "2026-11")
    assert budget_window("total", end) == (None, "total")
    assert configured_key_budgets(settings) == {
        "key:static:abc": BudgetConfig(limit_usd=0.001, period="month")}
