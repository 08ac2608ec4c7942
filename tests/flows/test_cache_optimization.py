"""The cache optimisation flow under Prefect's test harness, on a real store and Redis."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from models import Alert, CacheReport, RequestLog
from services.caching import CachedResponse, PersistentCache, RedisCache, cache_key
from services.caching.optimization import analyze, recommend_ttls
from services.workers import free_port
from tests.support.redis import ThrowawayRedis


def log_rows(layers: dict[str, int], now: datetime) -> list[dict]:
    rows = []
    for layer, count in layers.items():
        for i in range(count):
            rows.append(
                {
                    "id": f"req-{uuid.uuid4().hex}",
                    "created_at": now - timedelta(minutes=1 + i % 30),
                    "tenant": "t",
                    "endpoint": "chat.completions",
                    "status_code": 200,
                    "cache_layer": layer,
                    "baseline_cost_usd": 0.01,
                    "cache_age_s": 30.0 + i if layer in ("L1", "L2", "L3") else None,
                }
            )
    return rows


def test_tier_ratios_are_judged_on_the_traffic_each_tier_saw(store) -> None:
    now = datetime.now(UTC)
    with store.begin() as conn:
        conn.execute(
            RequestLog.__table__.insert(),
            log_rows({"L1": 50, "L2": 20, "L3": 10, "MISS": 20, None: 7}, now),
        )
    analysis = analyze(store, window=timedelta(hours=1), now=now)
    assert analysis.lookups == 100 and analysis.hits == 80  # BYPASS rows are not lookups
    assert analysis.layers["L1"].hit_rate == pytest.approx(0.5)
    assert analysis.layers["L2"].lookups == 50 and analysis.layers["L2"].hit_rate == 0.4
    assert analysis.layers["L3"].lookups == 30 and analysis.layers["L3"].hit_rate == pytest.approx(
        1 / 3
    )
    assert analysis.saved_usd == pytest.approx(0.8)
    assert not analysis.below_target and analysis.layers["L1"].meets_target is False


def test_ttl_advice_follows_hit_ages() -> None:
    near_expiry = recommend_ttls([250.0 + i for i in range(40)], {"L1": 300})
    assert near_expiry["L1"]["recommended_s"] == 600
    early = recommend_ttls([10.0 + i for i in range(40)], {"L3": 86400})
    assert early["L3"]["recommended_s"] < 86400 / 2
    assert recommend_ttls([1.0], {"L1": 300})["L1"]["recommended_s"] == 300


def test_flow_reports_purges_and_warms(store, prefect_harness, monkeypatch) -> None:
    from flows.cache_optimization import cache_optimization

    redis_server = ThrowawayRedis(free_port()).start()
    monkeypatch.setenv("OPTENGINE_REDIS_URL", redis_server.url)
    now = datetime.now(UTC)
    with store.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), log_rows({"L1": 10, "MISS": 30, "L3": 5}, now))
    l3 = PersistentCache(store, ttl_s=3600, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    body = {"object": "chat.completion", "choices": [], "model": "m"}
    hot = cache_key("tenant/t", "chat.completions", {"q": "hot"})
    expired = cache_key("tenant/t", "chat.completions", {"q": "old"})
    asyncio.run(l3.set(hot, CachedResponse("chat.completions", body)))
    asyncio.run(l3.get(hot))  # one hit: worth warming
    l3.flush_hits()  # what the gateway's L3 does in the background
    asyncio.run(l3.set(expired, CachedResponse("chat.completions", body), ttl_s=0.01))
    try:
        result = asyncio.run(cache_optimization(window_minutes=60))
        assert result["purged"] == 1 and result["warmed"] == 1
        assert result["overall_hit_rate"] == pytest.approx(15 / 45)
        assert result["below_target"]  # alerted on by the alerting flow, not here
        # a generous read timeout: the check must not fail on a loaded machine
        warmed = RedisCache(redis_server.url, ttl_s=60, max_entry_bytes=1 << 20, timeout_s=10)


        async def read() -> tuple:
            return await warmed.get(hot), await warmed.get(expired)

        got_hot, got_expired = asyncio.run(read())
        assert got_hot.body == body and got_expired is None  # the most-hit entry, whole
    finally:
        redis_server.kill()
    with store.connect() as conn:
        report = conn.execute(select(CacheReport)).one()
        alerts = conn.execute(select(Alert)).all()
    assert report.lookups == 45 and report.hits == 15 and report.purged_entries == 1
    assert report.layers["L1"]["target"] == 0.95 and report.layers["L1"]["meets_target"] is False
    assert "L2" in report.ttl_recommendations
    assert alerts == []
