"""Flow ``cache_optimization``: every 5 minutes (and on demand), judge the cache.

Per-tier hit ratios against the targets (L1 95%, L2 85%, L3 60%), purge of expired L3
rows, warming of the shared L2 with the most-hit L3 entries (an L2 hit fills a
gateway's L1, so this warms L1 on first touch), TTL advice from the ages of hits, and a
``cache_reports`` row for the dashboard. An overall hit rate under 60% is alerted on by
the ``alerting`` flow's cache-hit-rate rule (pending, firing, resolved), not once per
run here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.caching import CacheKey, PersistentCache, RedisCache
from services.caching.optimization import (
    CacheAnalysis,
    analyze,
    most_hit_entries,
    recommend_ttls,
    write_report,
)
from services.settings import Settings, load_settings

STORE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(**STORE_RETRIES)
def analyze_window(database_url: str, window_minutes: int) -> CacheAnalysis:
    engine = create_store_engine(database_url)
    try:
        return analyze(engine, window=timedelta(minutes=window_minutes))
    finally:
        engine.dispose()


@task(**STORE_RETRIES)
def purge_expired(settings: Settings) -> int:
    engine = create_store_engine(settings.database_url)
    try:
        return PersistentCache(
            engine, ttl_s=settings.cache_l3_ttl_s, max_bytes=settings.cache_l3_max_bytes,
            max_entry_bytes=settings.cache_max_entry_bytes,
        ).purge_expired()
    finally:
        engine.dispose()


@task(**STORE_RETRIES)
async def warm_shared_tier(settings: Settings, limit: int) -> int:
    if not settings.redis_url or limit <= 0:
        return 0
    engine = create_store_engine(settings.database_url)
    try:
        entries = most_hit_entries(engine, limit=limit)
    finally:
        engine.dispose()
    # a flow, off the hot path: a patient timeout (1 s timed out on a machine at load 20)
    l2 = RedisCache(settings.redis_url, ttl_s=settings.cache_l2_ttl_s,
                    max_entry_bytes=settings.cache_max_entry_bytes, timeout_s=5.0)
    warmed = 0
    try:
        for namespace, digest, entry in entries:
            warmed += await l2.set(CacheKey(namespace, digest), entry)
    finally:
        await l2.aclose()
    return warmed


@task(**STORE_RETRIES)
def record(database_url: str, analysis: CacheAnalysis, purged: int, warmed: int,
           ttl_advice: dict[str, dict]) -> dict[str, Any]:
    engine = create_store_engine(database_url)
    try:
        report_id = write_report(engine, analysis, purged=purged, warmed=warmed,
                                 ttl_recommendations=ttl_advice)
    finally:
        engine.dispose()
    return {"report_id": report_id, "below_target": analysis.below_target}


@flow(name="cache_optimization")
async def cache_optimization(window_minutes: int = 60, warm_limit: int = 200) -> dict[str, Any]:
    settings = load_settings()
    logger = get_run_logger()
    analysis = analyze_window(settings.database_url, window_minutes)
    purged = purge_expired(settings)
    warmed = await warm_shared_tier(settings, warm_limit)
    ttl_advice = recommend_ttls(
        analysis.hit_ages_s,
        {"L1": settings.cache_l1_ttl_s, "L2": settings.cache_l2_ttl_s,
         "L3": settings.cache_l3_ttl_s},
    )
    ids = record(settings.database_url, analysis, purged, warmed, ttl_advice)
    logger.info(
        "cache: %d lookups, hit rate %s, saved $%.4f, purged %d, warmed %d",
        analysis.lookups,
        "n/a" if analysis.overall_hit_rate is None else f"{analysis.overall_hit_rate:.1%}",
        analysis.saved_usd, purged, warmed,
    )
    return {**ids, "lookups": analysis.lookups, "overall_hit_rate": analysis.overall_hit_rate,
            "purged": purged, "warmed": warmed}
