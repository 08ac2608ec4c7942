"""Token buckets per API key: ``rps`` requests a second on average, bursts of ``burst``.

A bucket holds up to ``burst`` tokens and refills at ``rps`` a second; a request takes
one or is refused with a 429 ``rate_limit_exceeded`` whose Retry-After says when the
next token is there. With Redis the bucket is one hash per key and a request is one Lua
script (refill, take, store: atomic), timed by Redis's own clock, so every replica
shares the bucket and their clocks do not matter. Without Redis the buckets are in this
process (one replica).

Redis gone: the limiter lets requests through (it protects capacity, unlike a budget,
which protects money and refuses instead) and logs it once per outage; it uses Redis
again as soon as Redis answers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from services.errors import RateLimited

log = logging.getLogger(__name__)

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class RateLimitExceeded(RateLimited):
    default_code = "rate_limit_exceeded"


@dataclass(frozen=True)
class RateLimit:
    rps: float  # tokens added a second
    burst: float  # bucket size: requests that may come at once

    def __post_init__(self) -> None:
        if self.rps <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs rps > 0 and burst >= 1")


class RateLimiter:
    def __init__(self, default: RateLimit | None, tenants: dict[str, RateLimit] | None = None,
                 *, redis_url: str = "", timeout_s: float = 0.1) -> None:
        self._default = default
        self._tenants = dict(tenants or {})
        self._local: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic ts)
        self._redis = None
        self._script = None
        self._redis_down = False
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
            self._script = self._redis.register_script(_TAKE)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    def limit_for(self, tenant: str) -> RateLimit | None:
        return self._tenants.get(tenant, self._default)

    async def take(self, tenant: str, key_id: str | None) -> None:
        """Take one token from the caller's bucket (its API key's, else its tenant's),
        or raise ``RateLimitExceeded`` with Retry-After."""
        limit = self.limit_for(tenant)
        if limit is None:
            return
        bucket = f"optengine:ratelimit:{{key:{key_id}}}" if key_id else (
            f"optengine:ratelimit:{{tenant:{tenant}}}")
        wait = await self._take(bucket, limit)
        if wait is not None:
            raise RateLimitExceeded(
                f"rate limit of {limit.rps:g} requests/s (bursts of {limit.burst:g}) "
                f"reached; retry in {wait:.2f} s",
                headers={"retry-after": str(max(1, math.ceil(wait)))},
            )

    async def _take(self, bucket: str, limit: RateLimit) -> float | None:
        """None when a token was taken, else the seconds until one is there."""
        if self._script is not None:
            import redis.exceptions

            try:
                allowed, wait = await self._script(keys=[bucket],
                                                   args=[repr(limit.rps), repr(limit.burst)])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    OSError) as exc:
                if not self._redis_down:
                    log.warning("rate limits not enforced: Redis unreachable (%s)", exc)
                self._redis_down = True
                return None
            if self._redis_down:
                log.info("rate limits enforced again: Redis answers")
                self._redis_down = False
            return None if int(allowed) else float(wait)
        now = time.monotonic()
        tokens, ts = self._local.get(bucket, (limit.burst, now))
        tokens = min(limit.burst, tokens + (now - ts) * limit.rps)
        if tokens >= 1:
            self._local[bucket] = (tokens - 1, now)
            return None
        self._local[bucket] = (tokens, now)
        return (1 - tokens) / limit.rps
