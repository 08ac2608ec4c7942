"""L3: compressed responses in the store's ``cache_entries`` table.

Shared by every replica and long-lived (24 h by default). A Bloom filter of the digests
present answers most misses from memory. A background loop (``start``) loads it, tops it
up every ``filter_refresh_s`` with the rows any replica wrote since (an index on
``created_at`` keeps that cheap), and writes the hit counts gathered since its last
turn in one batch, so a hit is a read, never a write transaction on the request's path.
Another replica's write is invisible here until the next refresh; when Redis is on, that
entry is in L2, which is looked up first. Before the first load, and when the store
could not be read, every lookup asks the store.

Lookups and writes run in a worker thread, a batch of writes in one transaction; a
write that fails (store away) is dropped, never surfaced: L3 is an optimisation, and the
request has already been answered. The byte budget is enforced by evicting the least
recently hit entries once the running total passes it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from models import CacheEntry
from services.background import cancel_and_wait, now_and_every
from services.caching.bloom import DigestBloom
from services.caching.cache import TierWrite
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
        filter_refresh_s: float = 2.0,
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
        self.filtered_misses = 0
        self._hits: dict[str, tuple[int, datetime]] = {}  # digest -> (hits, last) to write
        self._hits_lock = threading.Lock()
        self._maintenance: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the filter and keep it (and the hit counts) in step with the store."""
        self._maintenance = await now_and_every(
            self._filter_refresh_s, self.maintain, name="l3-maintenance",
            failure="L3 maintenance failed (store away?); lookups ask the store meanwhile",
        )

    async def aclose(self) -> None:
        await cancel_and_wait(self._maintenance)
        self._maintenance = None
        await asyncio.to_thread(self._maintain_quietly)

    def maintain(self) -> None:
        """One turn of the background loop: top up the filter, write pending hit counts."""
        try:
            self._refresh_filter()  # when it fails the store is away: a stale filter costs
        finally:  # nothing then, and the next refresh reads back to the last row it saw
            self.flush_hits()

    def _maintain_quietly(self) -> None:
        try:
            self.maintain()
        except SQLAlchemyError as exc:
            log.debug("L3 maintenance failed: %s", exc)

    async def get(self, key: CacheKey) -> CachedResponse | None:
        if self._filter is not None and key.digest not in self._filter:
            self.filtered_misses += 1
            return None
        try:
            return await asyncio.to_thread(self._get, key)
        except SQLAlchemyError as exc:
            log.debug("L3 lookup failed: %s", exc)
            return None

    async def set(self, key: CacheKey, entry: CachedResponse, ttl_s: float | None = None) -> bool:
        return await self.set_many([(key, entry, ttl_s)]) == 1

    async def set_many(self, items: Sequence[TierWrite]) -> int:
        """Write entries in one transaction (one thread hand-off); returns how many were
        written: 0 when the store is away, entries over the size cap are skipped."""
        rows: dict[str, dict[str, Any]] = {}  # by digest: an upsert touches a row once
        now = datetime.now(UTC)
        for key, entry, ttl_s in items:
            data = entry.compressed()
            if len(data) > self.max_entry_bytes:
                continue
            ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
            rows[key.digest] = {
                "digest": key.digest,
                "namespace": key.namespace,
                "endpoint": entry.endpoint,
                "value": data,
                "size_bytes": len(data),
                "created_at": now,
                "expires_at": now + timedelta(seconds=ttl),
                "last_hit_at": None,
                "hit_count": 0,
            }
        if not rows:
            return 0
        try:
            await asyncio.to_thread(self._set_many, list(rows.values()))
        except SQLAlchemyError as exc:
            log.debug("L3 write failed: %s", exc)
            return 0
        return len(rows)

    async def delete(self, key: CacheKey) -> None:
        try:
            await asyncio.to_thread(self._delete, key)
        except SQLAlchemyError as exc:
            log.debug("L3 delete failed: %s", exc)

    def _refresh_filter(self) -> None:
        """Load every live digest (first call, or when the filter is full), else only
        the ones written since the last refresh, by any replica."""
        rebuild = self._filter is None or self._filter.count > self._filter_capacity
        since = None if rebuild else self._filter_seen_until
        # the newest time first: a row written between the two reads is read again next
        # turn, never skipped; only digests are read, no per-row time parsing
        newest_query = select(func.max(CacheEntry.created_at))
        query = select(CacheEntry.digest)
        if since is not None:  # with a margin for clock skew between replicas
            query = query.where(CacheEntry.created_at >= since - timedelta(seconds=60))
        with self._engine.connect() as conn:
            newest = conn.scalar(newest_query)
            digests = conn.scalars(query).all()
        target = (
            DigestBloom(max(self._filter_capacity, 2 * len(digests))) if rebuild
            else self._filter
        )
        assert target is not None
        target.add_many(digests)  # re-adding a digest seen before changes nothing
        self._filter = target
        self._filter_seen_until = _aware(newest) if newest is not None else since

    # --- blocking parts, run in a thread ----------------------------------------------

    def _get(self, key: CacheKey) -> CachedResponse | None:
        now = datetime.now(UTC)
        with self._engine.connect() as conn:
            row = conn.execute(
                select(CacheEntry.value, CacheEntry.expires_at, CacheEntry.namespace).where(
                    CacheEntry.digest == key.digest
                )
            ).one_or_none()
        if row is None or row.namespace != key.namespace or _aware(row.expires_at) <= now:
            return None
        with self._hits_lock:
            count, _ = self._hits.get(key.digest, (0, now))
            self._hits[key.digest] = (count + 1, now)
        return CachedResponse.decompressed(row.value)

    def flush_hits(self) -> int:
        """Write the hit counts gathered since the last flush, in one batch; returns how
        many entries were updated. On failure they are kept for the next turn."""
        with self._hits_lock:
            pending, self._hits = self._hits, {}
        if not pending:
            return 0
        statement = (
            update(CacheEntry)
            .where(CacheEntry.digest == bindparam("d"))
            .values(hit_count=CacheEntry.hit_count + bindparam("n"), last_hit_at=bindparam("t"))
        )
        rows = [{"d": d, "n": n, "t": t} for d, (n, t) in pending.items()]
        try:
            with self._engine.begin() as conn:
                conn.execute(statement, rows)
        except SQLAlchemyError:
            with self._hits_lock:
                for digest, (n, t) in pending.items():
                    count, last = self._hits.get(digest, (0, t))
                    self._hits[digest] = (count + n, max(last, t))
            raise
        return len(rows)

    def _set_many(self, rows: list[dict[str, Any]]) -> None:
        table = CacheEntry.__table__
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(table)
        statement = statement.on_conflict_do_update(
            index_elements=["digest"],
            set_={name: statement.excluded[name] for name in rows[0] if name != "digest"},
        )
        with self._engine.begin() as conn:
            conn.execute(statement, rows)
        if self._filter is not None:
            self._filter.add_many(row["digest"] for row in rows)
        written = sum(row["size_bytes"] for row in rows)
        if self._approx_bytes is None:
            self._approx_bytes = self.total_bytes()
        else:
            self._approx_bytes += written
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
