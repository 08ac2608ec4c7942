"""Budget alerts for API keys' own limits (``optengine keys create|update --budget-usd``):
a key at 80% and at 100% of its limit raises the ``budget_used`` alerts a tenant's budget
does, without any routing config; a revoked key's alert closes. On SQLite and PostgreSQL,
with the spend read from ``request_log`` and from the gateways' Redis counters."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from models import ApiKey, session_factory
from services.alerts import AlertEngine, open_alerts
from services.gateway.auth import create_api_key, hash_key, revoke_api_key, update_api_key
from services.routing import BudgetLedger
from services.routing.budgets import Scope
from services.routing.config import BudgetConfig
from services.settings import DeliverySettings
from services.workers import free_port
from tests.alerts.conftest import add_requests
from tests.support.redis import ThrowawayRedis

RULES = [{"name": "budget-80", "metric": "budget_used", "above": 0.8},
         {"name": "budget-100", "metric": "budget_used", "above": 1.0, "severity": "critical"}]


@pytest.fixture
def store(any_store):
    return any_store


def _engine(make_settings, store, clock, **settings) -> AlertEngine:
    config = make_settings(database_url=str(store.url.render_as_string(hide_password=False)),
                           alerts={"rules": RULES}, delivery=DeliverySettings(), **settings)
    return AlertEngine(config, store, clock=clock, gpu_reader=dict)


def _key(sessions: sessionmaker, name: str, budget_usd: float | None) -> str:
    key = create_api_key(sessions, tenant="acme", name=name, budget_usd=budget_usd)
    with sessions() as session:
        return str(session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))))


async def test_a_key_at_80_then_100_percent_of_its_limit_fires_both_rules(
        make_settings, store, clock) -> None:
    sessions = session_factory(store)
    capped, free = _key(sessions, "ci", 1.0), _key(sessions, "web", None)
    add_requests(store, clock.now, 85, cost_usd=0.01, api_key_id=capped)  # $0.85 of $1
    add_requests(store, clock.now, 500, cost_usd=0.01, api_key_id=free)  # no limit
    engine = _engine(make_settings, store, clock)
    first = await engine.evaluate()
    assert [(c["rule"], c["subject"], c["change"]) for c in first.changes] == [
        ("budget-80", f"budget=key:{capped}", "firing")]
    assert first.changes[0]["value"] == pytest.approx(0.85)
    [alert] = open_alerts(store)
    assert f"key {capped} (ci) of acme" in alert["message"]
    assert alert["details"]["context"]["source"] == "request_log"

    clock.advance(minutes=1)
    add_requests(store, clock.now, 20, cost_usd=0.01, api_key_id=capped)  # $1.05
    second = await engine.evaluate()
    assert [(c["rule"], c["change"]) for c in second.changes] == [("budget-100", "firing")]
    assert {a["rule"] for a in open_alerts(store)} == {"budget-80", "budget-100"}


async def test_a_raised_limit_resolves_and_a_revoked_key_closes_its_alert(
        make_settings, store, clock) -> None:
    sessions = session_factory(store)
    capped = _key(sessions, "ci", 1.0)
    add_requests(store, clock.now, 90, cost_usd=0.01, api_key_id=capped)
    engine = _engine(make_settings, store, clock)
    assert [c["change"] for c in (await engine.evaluate()).changes] == ["firing"]

    update_api_key(sessions, int(capped), budget_usd=2.0)  # 45% of the new limit
    clock.advance(minutes=1)
    assert [c["change"] for c in (await engine.evaluate()).changes] == ["resolved"]

    update_api_key(sessions, int(capped), budget_usd=1.0)
    clock.advance(minutes=1)
    assert [c["change"] for c in (await engine.evaluate()).changes] == ["firing"]
    revoke_api_key(sessions, int(capped))
    clock.advance(minutes=1)
    closed = await engine.evaluate()
    assert [(c["subject"], c["change"]) for c in closed.changes] == [
        (f"budget=key:{capped}", "resolved")]
    assert open_alerts(store) == []
    latest = open_alerts(store, states=("resolved",))[0]  # newest first
    assert "key was revoked or its limit removed" in latest["message"]


async def test_the_gateways_redis_counter_is_the_keys_spend_when_shared(
        make_settings, store, clock) -> None:
    sessions = session_factory(store)
    capped = _key(sessions, "ci", 2.0)
    redis = ThrowawayRedis(free_port()).start()
    try:
        ledger = BudgetLedger({}, redis_url=redis.url, clock=clock)
        await ledger.reserve([Scope(f"key:{capped}", BudgetConfig(limit_usd=2.0))], 1.9)
        await ledger.aclose()
        result = await _engine(make_settings, store, clock, redis_url=redis.url).evaluate()
    finally:
        redis.kill()
    assert [(c["rule"], c["subject"]) for c in result.changes] == [
        ("budget-80", f"budget=key:{capped}")]
    assert result.changes[0]["value"] == pytest.approx(0.95)
