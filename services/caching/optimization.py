"""The cache's control loop, as plain functions the Prefect flow wraps.

Reads what the gateways recorded in ``request_log`` and ``cache_entries``: hit ratio of
each tier against its target, money the hits saved, which entries are worth warming,
and what TTL the observed hit ages call for. Every figure comes from the store, so any
replica's traffic counts and the report can be recomputed.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, func, insert, select

from models import CacheEntry, CacheReport, RequestLog
from services.caching.entry import CachedResponse

# Targets from the product spec: share of the lookups reaching a tier that it answers.
TIER_TARGETS = {"L1": 0.95, "L2": 0.85, "L3": 0.60}
OVERALL_TARGET = 0.60
TIERS = ("L1", "L2", "L3")
LOOKED_UP = ("L1", "L2", "L3", "SEMANTIC", "MISS")


@dataclass
class TierFigures:
    lookups: int
    hits: int
    hit_rate: float | None
    target: float
    meets_target: bool | None


@dataclass
class CacheAnalysis:
    window_start: datetime
    window_end: datetime
    lookups: int
    hits: int
    overall_hit_rate: float | None
    layers: dict[str, TierFigures]
    saved_usd: float
    hit_ages_s: list[float] = field(default_factory=list, repr=False)

    @property
    def below_target(self) -> bool:
        return self.overall_hit_rate is not None and self.overall_hit_rate < OVERALL_TARGET


def analyze(engine: Engine, *, window: timedelta, now: datetime | None = None) -> CacheAnalysis:
    """Per-tier hit ratios over the window: a tier's lookups are the requests that
    missed every faster tier, so each ratio is judged on the traffic it actually saw."""
    end = now or datetime.now(UTC)
    start = end - window
    in_window = (RequestLog.created_at >= start) & (RequestLog.created_at < end)
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(RequestLog.cache_layer, func.count())
                .where(in_window, RequestLog.cache_layer.in_(LOOKED_UP))
                .group_by(RequestLog.cache_layer)
            ).all()
        )
        saved = conn.scalar(
            select(func.coalesce(func.sum(RequestLog.baseline_cost_usd), 0.0)).where(
                in_window, RequestLog.cache_layer.in_(("L1", "L2", "L3", "SEMANTIC"))
            )
        )
        ages = list(
            conn.scalars(
                select(RequestLog.cache_age_s).where(
                    in_window, RequestLog.cache_age_s.is_not(None)
                )
            )
        )
    lookups = sum(counts.values())
    hits = lookups - counts.get("MISS", 0)
    layers: dict[str, TierFigures] = {}
    reaching = lookups
    for tier in TIERS:
        tier_hits = counts.get(tier, 0)
        rate = tier_hits / reaching if reaching else None
        layers[tier] = TierFigures(
            lookups=reaching,
            hits=tier_hits,
            hit_rate=rate,
            target=TIER_TARGETS[tier],
            meets_target=None if rate is None else rate >= TIER_TARGETS[tier],
        )
        reaching -= tier_hits
    return CacheAnalysis(
        window_start=start,
        window_end=end,
        lookups=lookups,
        hits=hits,
        overall_hit_rate=hits / lookups if lookups else None,
        layers=layers,
        saved_usd=float(saved or 0.0),
        hit_ages_s=ages,
    )


def recommend_ttls(ages_s: list[float], current_ttls_s: dict[str, float]) -> dict[str, dict]:
    """TTL advice per tier from the ages at which entries were hit.

    Hits cannot be older than the TTL, so hits crowding near the TTL mean entries expire
    while still wanted (double it); a p95 hit age well inside the TTL means memory is
    spent on entries nobody asks for again (shrink to 1.5x that age).
    """
    advice: dict[str, dict] = {}
    if len(ages_s) < 20:
        return {tier: {"current_s": ttl, "recommended_s": ttl, "reason": "too few hits to judge"}
                for tier, ttl in current_ttls_s.items()}
    p95 = statistics.quantiles(ages_s, n=20, method="inclusive")[-1]
    for tier, ttl in current_ttls_s.items():
        if p95 >= 0.8 * ttl:
            recommended, reason = ttl * 2, f"p95 hit age {p95:.0f}s is near the TTL"
        elif p95 * 1.5 < ttl / 2:
            recommended, reason = max(60.0, p95 * 1.5), f"p95 hit age {p95:.0f}s is far inside"
        else:
            recommended, reason = ttl, f"p95 hit age {p95:.0f}s fits the TTL"
        advice[tier] = {"current_s": ttl, "recommended_s": round(recommended), "reason": reason,
                        "p95_hit_age_s": round(p95, 1)}
    return advice


def most_hit_entries(engine: Engine, *, limit: int) -> list[tuple[str, str, CachedResponse]]:
    """The live L3 entries hit most often: (namespace, digest, entry), for warming."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        rows = conn.execute(
            select(CacheEntry.namespace, CacheEntry.digest, CacheEntry.value)
            .where(CacheEntry.expires_at > now, CacheEntry.hit_count > 0)
            .order_by(CacheEntry.hit_count.desc())
            .limit(limit)
        ).all()
    return [(ns, digest, CachedResponse.decompressed(value)) for ns, digest, value in rows]


def write_report(
    engine: Engine,
    analysis: CacheAnalysis,
    *,
    purged: int,
    warmed: int,
    ttl_recommendations: dict[str, dict],
) -> int:
    values = {
        "window_start": analysis.window_start,
        "window_end": analysis.window_end,
        "lookups": analysis.lookups,
        "hits": analysis.hits,
        "overall_hit_rate": analysis.overall_hit_rate,
        "layers": {tier: asdict(figures) for tier, figures in analysis.layers.items()},
        "saved_usd": analysis.saved_usd,
        "purged_entries": purged,
        "warmed_entries": warmed,
        "ttl_recommendations": ttl_recommendations,
    }
    with engine.begin() as conn:
        return int(conn.execute(insert(CacheReport).values(**values)).inserted_primary_key[0])
