"""L3: compressed responses in the store's ``cache_entries`` table.

Shared by every replica and long-lived (24 h by default). A Bloom filter of the digests
present answers most misses from memory; it is loaded at start and topped up from the
table every few seconds, so entries written by other replicas are found too. Lookups
and writes run in a worker thread; a write that fails (store away) is dropped, never
surfaced: L3 is an optimisation, and the request has already been answered. The byte
budget is enforced by evicting the least recently hit entries once the running total
passes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from models import CacheEntry
from services.caching.bloom import DigestBloom
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey

log = logging.getLogger(__name__)


class PersistentCache:
    name = "L3"

    def __init__(
        self,
        engine: Engine,
        *,
        ttl_s: float,
        max_bytes: int,
        max_entry_bytes: int,
        filter_capacity: int = 1_000_000,
        filter_refresh_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._approx_bytes: int | None = None
        self.evictions = 0
        self._filter_capacity = filter_capacity
        self._filter_refresh_s = filter_refresh_s
        self._filter: DigestBloom | None = None
        self._filter_seen_until: datetime | None = None
        self._filter_checked_at = 0.0
        self.filtered_misses = 0

    async def get(self, key: CacheKey) -> CachedResponse | None:
        if not await self._maybe_present(key.digest):
            self.filtered_misses += 1
            return None
        try:
            return await asyncio.to_thread(self._get, key)
        except SQLAlchemyError as exc:
            log.debug("L3 lookup failed: %s", exc)
            return None

    async def set(self, key: CacheKey, entry: CachedResponse, ttl_s: float | None = None) -> bool:
        data = entry.compressed()
        if len(data) > self.max_entry_bytes:
            return False
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        try:
            await asyncio.to_thread(self._set, key, entry, data, ttl)
        except SQLAlchemyError as exc:
            log.debug("L3 write failed: %s", exc)
            return False
        return True

    async def delete(self, key: CacheKey) -> None:
        try:
            await asyncio.to_thread(self._delete, key)
        except SQLAlchemyError as exc:
            log.debug("L3 delete failed: %s", exc)

    async def _maybe_present(self, digest: str) -> bool:
        now = time.monotonic()
        if self._filter is None or now - self._filter_checked_at >= self._filter_refresh_s:
            self._filter_checked_at = now
            try:
                await asyncio.to_thread(self._refresh_filter)
            except SQLAlchemyError as exc:
                log.debug("L3 filter refresh failed: %s", exc)
        return self._filter is None or digest in self._filter

    def _refresh_filter(self) -> None:
        """Load every live digest (first call, or when the filter is full), else only
        the ones written since the last refresh, by any replica."""
        rebuild = self._filter is None or self._filter.count > self._filter_capacity
        since = None if rebuild else self._filter_seen_until
        query = select(CacheEntry.digest, CacheEntry.created_at)
        if since is not None:  # with a margin for clock skew between replicas
            query = query.where(CacheEntry.created_at >= since - timedelta(seconds=60))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        target = (
            DigestBloom(max(self._filter_capacity, 2 * len(rows))) if rebuild else self._filter
        )
        assert target is not None
        newest = since
        for digest, created_at in rows:
            target.add(digest)
            created_at = _aware(created_at)
            if newest is None or created_at > newest:
                newest = created_at
        self._filter = target
        self._filter_seen_until = newest

    # --- blocking parts, run in a thread ----------------------------------------------

    def _get(self, key: CacheKey) -> CachedResponse | None:
        now = datetime.now(UTC)
        with self._engine.begin() as conn:
            row = conn.execute(
                select(CacheEntry.value, CacheEntry.expires_at, CacheEntry.namespace).where(
                    CacheEntry.digest == key.digest
                )
            ).one_or_none()
            if row is None or row.namespace != key.namespace or _aware(row.expires_at) <= now:
                return None
            conn.execute(
                update(CacheEntry)
                .where(CacheEntry.digest == key.digest)
                .values(hit_count=CacheEntry.hit_count + 1, last_hit_at=now)
            )
        return CachedResponse.decompressed(row.value)

    def _set(self, key: CacheKey, entry: CachedResponse, data: bytes, ttl_s: float) -> None:
        now = datetime.now(UTC)
        values = {
            "namespace": key.namespace,
            "endpoint": entry.endpoint,
            "value": data,
            "size_bytes": len(data),
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_s),
            "last_hit_at": None,
            "hit_count": 0,
        }
        with self._engine.begin() as conn:
            if self._engine.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            statement = insert(CacheEntry).values(digest=key.digest, **values)
            conn.execute(
                statement.on_conflict_do_update(index_elements=["digest"], set_=values)
            )
        if self._filter is not None:
            self._filter.add(key.digest)
        if self._approx_bytes is None:
            self._approx_bytes = self.total_bytes()
        else:
            self._approx_bytes += len(data)
        if self._approx_bytes > self.max_bytes:
            self.evict_to_budget()

    def _delete(self, key: CacheKey) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(CacheEntry).where(CacheEntry.digest == key.digest))

    def total_bytes(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.scalar(select(func.coalesce(func.sum(CacheEntry.size_bytes), 0))))

    def evict_to_budget(self) -> int:
        """Delete least recently hit entries until the table fits ``max_bytes``."""
        removed = 0
        with self._engine.begin() as conn:
            total = int(conn.scalar(select(func.coalesce(func.sum(CacheEntry.size_bytes), 0))))
            if total > self.max_bytes:
                rows = conn.execute(
                    select(CacheEntry.digest, CacheEntry.size_bytes).order_by(
                        func.coalesce(CacheEntry.last_hit_at, CacheEntry.created_at)
                    )
                )
                victims = []
                for digest, size in rows:
                    if total <= self.max_bytes:
                        break
                    victims.append(digest)
                    total -= size
                if victims:
                    conn.execute(delete(CacheEntry).where(CacheEntry.digest.in_(victims)))
                removed = len(victims)
        self.evictions += removed
        self._approx_bytes = total
        return removed

    def purge_expired(self) -> int:
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(CacheEntry).where(CacheEntry.expires_at <= datetime.now(UTC))
            )
        self._approx_bytes = None
        return result.rowcount or 0


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
