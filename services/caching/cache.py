"""The response cache: exact tiers looked up in order, filled upwards, and single flight.

``lookup`` walks L1 -> L2 -> L3 and copies a hit into the faster tiers it missed, in the
background; ``store`` writes L1 at once and queues the entry for the shared tiers (the
client already has its answer in both cases). One background writer empties that queue
in batches: whatever was stored while it wrote the last batch goes in the next, one
Redis pipeline and one store transaction per batch, so a miss costs no round trip or
thread hand-off of its own. ``flight`` makes concurrent identical misses share one
upstream call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.background import BackgroundTasks, WriteBehind
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey

log = logging.getLogger(__name__)

TierWrite = tuple[CacheKey, CachedResponse, float | None]  # key, entry, TTL (None: tier's)
WRITE_BATCH = 256  # most entries per batch
MAX_PENDING = 20_000  # entries waiting for the shared tiers; past it new ones skip them
CLOSE_TIMEOUT_S = 10.0  # how long closing waits for queued writes


class CacheTier(Protocol):
    name: str

    async def get(self, key: CacheKey) -> CachedResponse | None: ...

    async def set(
        self, key: CacheKey, entry: CachedResponse, ttl_s: float | None = None
    ) -> bool: ...

    async def set_many(self, items: Sequence[TierWrite]) -> int: ...

    async def delete(self, key: CacheKey) -> None: ...


@dataclass(slots=True)
class Hit:
    layer: str
    entry: CachedResponse


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter("optengine_cache_lookups", "Cache lookups by tier and result",
                               ["layer", "result"], registry=registry)
        self.lookup_seconds = Histogram(
            "optengine_cache_lookup_seconds", "Time to look up one tier", ["layer"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1),
            registry=registry,
        )
        self.stores = Counter("optengine_cache_stores", "Entries written", ["layer"],
                              registry=registry)
        self.coalesced = Counter("optengine_cache_coalesced",
                                 "Requests that waited for an identical one in flight",
                                 registry=registry)
        self.l1_bytes = Gauge("optengine_cache_l1_bytes", "Bytes held by L1", registry=registry)
        self.l1_evictions = Gauge("optengine_cache_l1_evictions",
                                  "Entries L1 evicted for space", registry=registry)
        self.writes_skipped = Counter(
            "optengine_cache_shared_writes_skipped",
            "Entries kept in L1 only: the shared tiers' write queue was full",
            registry=registry)


class ResponseCache:
    def __init__(
        self,
        tiers: list[CacheTier],
        metrics: CacheMetrics,
        *,
        flight_timeout_s: float = 300.0,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.tiers = tiers
        self._shared = tiers[1:]  # written behind, in batches
        self.metrics = metrics
        self.flight_timeout_s = flight_timeout_s
        self.close_timeout_s = close_timeout_s
        self._inflight: dict[str, asyncio.Future[CachedResponse | None]] = {}
        self._background = BackgroundTasks()
        # stored in L1, not yet in the shared tiers
        self._behind: WriteBehind[TierWrite] = WriteBehind(
            lambda batch: self._fill(self._shared, batch), self._background.spawn,
            batch=WRITE_BATCH, max_pending=MAX_PENDING)
        # each tier's metric children, resolved once rather than by label on every lookup
        self._timers = {t.name: metrics.lookup_seconds.labels(t.name) for t in tiers}
        self._results = {(t.name, r): metrics.lookups.labels(t.name, r)
                         for t in tiers for r in ("hit", "miss")}
        self._stored = {t.name: metrics.stores.labels(t.name) for t in tiers}
        first = tiers[0]
        if hasattr(first, "bytes"):  # read when scraped, not kept up to date per store
            metrics.l1_bytes.set_function(lambda: first.bytes)
            metrics.l1_evictions.set_function(lambda: first.evictions)

    async def lookup(self, key: CacheKey, *, max_age_s: float | None = None) -> Hit | None:
        missed: list[CacheTier] = []
        for tier in self.tiers:
            started = time.perf_counter()
            entry = await tier.get(key)
            self._timers[tier.name].observe(time.perf_counter() - started)
            if entry is not None and (max_age_s is None or entry.age_s <= max_age_s):
                self._results[tier.name, "hit"].inc()
                if missed:
                    self._background.spawn(self._fill(missed, [(key, entry, None)]))
                return Hit(tier.name, entry)
            self._results[tier.name, "miss"].inc()
            missed.append(tier)
        return None

    async def store(self, key: CacheKey, entry: CachedResponse, *, ttl_s: float | None = None
                    ) -> None:
        first = self.tiers[0]
        if await first.set(key, entry, ttl_s):
            self._stored[first.name].inc()
        if self._shared and not self._behind.put((key, entry, ttl_s)):
            self.metrics.writes_skipped.inc()  # the shared tiers cannot keep up

    async def _fill(self, tiers: list[CacheTier], items: Sequence[TierWrite]) -> None:
        for tier in tiers:
            try:
                written = await tier.set_many(items)
                if written:
                    self._stored[tier.name].inc(written)
            except Exception:  # a background write must never take the gateway down
                log.warning("cache write to %s failed", tier.name, exc_info=True)

    async def start(self) -> None:
        """Start the tiers' own background work (L3's filter and hit counts)."""
        for tier in self.tiers:
            start = getattr(tier, "start", None)
            if start is not None:
                await start()

    async def drain(self) -> None:
        """Wait for background writes (tests, shutdown)."""
        await self._background.drain()

    async def aclose(self) -> None:
        """Write what is queued for the shared tiers, waiting at most ``close_timeout_s``
        (a Redis or store that hangs must not hold shutdown): past it the writes are
        cancelled and the count not written is logged; those entries are dropped (only
        this gateway's L1 held them). Then the tiers close."""
        if not await self._background.drain_within(self.close_timeout_s):
            log.warning("cache: %d entries not written to the shared tiers within %.1f s "
                        "at close; dropped", len(self._behind), self.close_timeout_s)
        for tier in self.tiers:
            close = getattr(tier, "aclose", None)
            if close is not None:
                await close()

    def flight(self, key: CacheKey) -> Flight:
        """Leader or follower of the in-flight request for ``key``, as ``async with``.

        The leader calls upstream and must ``finish`` with the entry (or None on
        failure); followers get the leader's entry from ``wait()``, or None when the
        leader failed, in which case they call upstream themselves. A leader that
        leaves the block without finishing (an exception) finishes with None.
        """
        k = str(key)
        existing = self._inflight.get(k)
        if existing is not None:
            self.metrics.coalesced.inc()
            return Flight(self, k, existing)
        future: asyncio.Future[CachedResponse | None] = asyncio.get_running_loop().create_future()
        self._inflight[k] = future
        return Flight(self, k, future, leader=True)


class Flight:
    __slots__ = ("leader", "_cache", "_key", "_future", "_open")

    def __init__(self, cache: ResponseCache, key: str,
                 future: asyncio.Future[CachedResponse | None], *, leader: bool = False) -> None:
        self.leader = leader
        self._cache = cache
        self._key = key
        self._future = future
        self._open = leader  # a leader's flight is listed until it finishes

    async def __aenter__(self) -> Flight:
        return self

    async def __aexit__(self, kind: object, exc: object, tb: object) -> None:
        if exc is not None and self.leader:
            self.finish(None)

    async def wait(self) -> CachedResponse | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self._future),
                                          self._cache.flight_timeout_s)
        except TimeoutError:
            return None

    def finish(self, entry: CachedResponse | None) -> None:
        """Publish the leader's result (idempotent: the first call wins)."""
        if not self._future.done():
            self._future.set_result(entry)
        if self._open:
            self._open = False
            if self._cache._inflight.get(self._key) is self._future:
                del self._cache._inflight[self._key]
