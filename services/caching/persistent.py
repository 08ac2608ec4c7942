"""L3: compressed responses in the store's ``cache_entries`` table.

Shared by every replica and long-lived (24 h by default). Lookups and writes run in a
worker thread; a write that fails (store away) is dropped, never surfaced: L3 is an
optimisation, and the request has already been answered. The byte budget is enforced by
evicting the least recently hit entries once the running total passes it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from models import CacheEntry
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey

log = logging.getLogger(__name__)


class PersistentCache:
    name = "L3"

    def __init__(
        self, engine: Engine, *, ttl_s: float, max_bytes: int, max_entry_bytes: int
    ) -> None:
        self._engine = engine
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._approx_bytes: int | None = None
        self.evictions = 0

    async def get(self, key: CacheKey) -> CachedResponse | None:
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
