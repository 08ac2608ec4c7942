"""L2: Redis, shared by every gateway replica.

Keys are ``oe:c:{<digest>}``: the digest in a hash tag, so the layout is valid on Redis
Cluster and entries spread evenly over its slots (the namespace is already inside the
digest). Every call has a short timeout, and a circuit breaker skips Redis entirely
for a cool-down after repeated failures: Redis going away makes the layer a miss, never
a failed or slow request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.caching.cache import TierWrite
from services.caching.entry import CachedResponse
from services.caching.keys import CacheKey

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures, for ``cooldown_s``; then lets one
    call through to test the water."""

    def __init__(self, *, threshold: int = 3, cooldown_s: float = 5.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.open_until = 0.0

    @property
    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    def success(self) -> None:
        self.failures = 0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            if self.allows:
                log.warning("Redis cache unavailable; skipping it for %.0f s", self.cooldown_s)
            self.open_until = time.monotonic() + self.cooldown_s


class RedisCache:
    name = "L2"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        max_entry_bytes: int,
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.breaker = breaker or CircuitBreaker()
        self._redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )

    @staticmethod
    def redis_key(key: CacheKey) -> str:
        return f"oe:c:{{{key.digest}}}"

    async def get(self, key: CacheKey) -> CachedResponse | None:
        if not self.breaker.allows:
            return None
        try:
            data = await self._redis.get(self.redis_key(key))
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        self.breaker.success()
        return CachedResponse.decompressed(data) if data else None

    async def set(self, key: CacheKey, entry: CachedResponse, ttl_s: float | None = None) -> bool:
        return await self.set_many([(key, entry, ttl_s)]) == 1

    async def set_many(self, items: Sequence[TierWrite]) -> int:
        """Write entries in one pipeline (one round trip, not a transaction: the
        commands are independent); returns how many were written, 0 when Redis is away.
        Entries over the size cap are skipped."""
        if not self.breaker.allows:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for key, entry, ttl_s in items:
            data = entry.compressed()
            if len(data) > self.max_entry_bytes:
                continue
            ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
            pipe.set(self.redis_key(key), data, px=max(1, int(ttl * 1000)))
        written = len(pipe)
        if not written:
            return 0
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("set", exc)
            return 0
        self.breaker.success()
        return written

    async def delete(self, key: CacheKey) -> None:
        if self.breaker.allows:
            try:
                await self._redis.delete(self.redis_key(key))
            except (RedisError, OSError) as exc:
                self._failed("delete", exc)

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _failed(self, op: str, exc: Exception) -> None:
        log.debug("Redis %s failed: %s", op, exc)
        self.breaker.failure()
