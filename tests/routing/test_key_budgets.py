"""A key's stored spending limit (``optengine keys create --budget-usd``) holds on every
request made with the key, routing configured or not: reserved and settled like every
budget, 429 past it, 503 while its Redis is gone, and a new period starts from zero."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from migrations import upgrade_to_head
from models import create_store_engine, session_factory
from models.tables import ApiKey
from services.cli import app
from services.gateway.auth import create_api_key, hash_key
from tests.routing.conftest import MOST
from tests.routing.conftest import post_with_key as _post
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.redis import ThrowawayRedis


def _key_id(gateway: RunningGateway, key: str) -> int:
    with gateway.services.sessions() as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key)))


def test_a_key_past_its_stored_limit_gets_429_while_its_tenants_other_key_is_served(
    keyed_gateway, fake_workers: FakeOpenAI
) -> None:
    gateway, keys = keyed_gateway({"capped": (MOST * 2.5, "month"), "free": None})
    assert gateway.services.routing is None  # no routing configured
    statuses = [_post(gateway, keys["capped"]).status_code for _ in range(2)]
    refused = _post(gateway, keys["capped"])  # 2 x MOST settled exactly: 0.5 x MOST left
    assert statuses == [200, 200] and refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
    assert f"budget exceeded for key:{_key_id(gateway, keys['capped'])}" in error["message"]
    assert "per month" in error["message"]
    assert [_post(gateway, keys["free"]).status_code for _ in range(3)] == [200] * 3
    assert fake_workers.calls("large") == 5  # the refused request never went upstream


def test_a_key_budget_holds_with_routing_configured_too(keyed_gateway) -> None:
    from tests.routing.conftest import routing_config

    gateway, keys = keyed_gateway({"capped": (MOST * 1.5, "day")}, routing=routing_config())
    assert gateway.services.routing is not None
    assert [_post(gateway, keys["capped"]).status_code for _ in range(2)] == [200, 429]


def test_a_daily_limit_starts_from_zero_the_next_utc_day_and_a_total_one_never_does(
    keyed_gateway
) -> None:
    gateway, keys = keyed_gateway({"daily": (MOST * 1.5, "day"), "total": (MOST * 1.5, "total")})
    ledger = gateway.services.budget.ledger
    now = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)
    ledger.clock = lambda: now
    for key in keys.values():
        assert [_post(gateway, key).status_code for _ in range(2)] == [200, 429]
    now += timedelta(minutes=2)  # 1 April
    assert _post(gateway, keys["daily"]).status_code == 200
    assert _post(gateway, keys["daily"]).status_code == 429
    assert _post(gateway, keys["total"]).status_code == 429


def test_redis_gone_is_a_503_for_a_budgeted_key_only(
    keyed_gateway, budget_redis: ThrowawayRedis
) -> None:
    gateway, keys = keyed_gateway({"capped": (100.0, "month"), "free": None},
                                  budget_redis_timeout_s=0.3,
                                  budget_unavailable_retry_after_s=7)
    assert _post(gateway, keys["capped"]).status_code == 200
    budget_redis.kill()
    unavailable = _post(gateway, keys["capped"])
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "budget_unavailable"
    assert unavailable.headers["retry-after"] == "7"
    assert _post(gateway, keys["free"]).status_code == 200  # no budget: served as before
    budget_redis.start()
    assert _post(gateway, keys["capped"]).status_code == 200


def _keys(*args: str):
    return CliRunner().invoke(app, ["keys", *args])


def test_keys_create_stores_the_limit_and_period_and_keys_list_shows_them(store) -> None:
    monthly = _keys("create", "--tenant", "team-a", "--budget-usd", "5")
    daily = _keys("create", "--tenant", "team-a", "--name", "ci", "--budget-usd", "0.5",
                  "--budget-period", "day")
    free = _keys("create", "--tenant", "team-b")
    assert all(r.exit_code == 0 and r.output.startswith("oe-") for r in (monthly, daily, free))
    listed = _keys("list")
    assert listed.exit_code == 0, listed.output
    lines = [line.split("\t") for line in listed.output.splitlines()]
    assert [(line[2], line[3], line[4]) for line in lines] == [
        ("team-a", "-", "$5/month"), ("team-a", "ci", "$0.5/day"), ("team-b", "-", "unlimited")]


@pytest.mark.parametrize(("args", "message"), [
    (["--budget-usd", "0"], "greater than 0"),
    (["--budget-usd", "-3"], "greater than 0"),
    (["--budget-usd", "5", "--budget-period", "week"], "'total', 'day' or 'month'"),
    (["--budget-period", "day"], "needs a budget"),
    (["--budget-usd", "five"], "valid number"),
])
def test_keys_create_refuses_a_bad_budget_and_stores_nothing(store, args, message) -> None:
    result = _keys("create", "--tenant", "team-a", *args)
    assert result.exit_code == 2
    words = " ".join(result.output.replace("│", " ").split())  # unwrap the error box
    assert message in words, result.output
    with session_factory(store)() as session:
        assert session.scalars(select(ApiKey)).all() == []


def test_a_stored_key_with_an_impossible_budget_is_refused_not_spent_blind(
    make_settings, start_gateway, fake_workers: FakeOpenAI
) -> None:
    settings = make_settings(workers=[fake_workers.url], require_auth=True)
    upgrade_to_head(settings.database_url)
    sessions = session_factory(create_store_engine(settings.database_url))
    bad, good = (create_api_key(sessions, tenant="team-a") for _ in range(2))
    with sessions.begin() as session:  # written by a version that did not check limits
        session.get(ApiKey, 1).budget_usd = 0.0
    gateway = start_gateway(settings)
    assert _post(gateway, bad).status_code == 401
    assert _post(gateway, good).status_code == 200
