"""Per-key rate limits: a token bucket per API key in Redis, shared by replicas, 429 with
Retry-After past it, and requests let through while Redis is away."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from services.ratelimit import RateLimit, RateLimiter, RateLimitExceeded
from services.workers import free_port
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.redis import ThrowawayRedis

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI({"m": Answer()}).start()
    yield server
    server.stop()


@pytest.fixture
def limits_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(free_port()).start()
    yield server
    server.kill()


def test_two_replicas_share_each_keys_bucket_and_refuse_with_retry_after(
    fake: FakeOpenAI, limits_redis: ThrowawayRedis, make_settings, start_gateway,
) -> None:
    # 0.01 requests/s: a token comes back after 100 s, far beyond the test
    settings = dict(workers=[fake.url], cache_enabled=False, redis_url=limits_redis.url,
                    api_keys=["sk-a:team-a", "sk-b:team-b"], rate_limit_rps=0.01,
                    rate_limit_burst=3, rate_limit_tenants={"team-b": {"rps": 0.01,
                                                                       "burst": 1}})
    replicas = [start_gateway(make_settings(**settings)) for _ in range(2)]

    def post(i: int, key: str) -> httpx.Response:
        return httpx.post(f"{replicas[i % 2].url}/v1/chat/completions", json=CHAT,
                          headers={"authorization": f"Bearer {key}"}, timeout=30)

    a = [post(i, "sk-a") for i in range(4)]
    assert [r.status_code for r in a] == [200, 200, 200, 429]  # 3 between both replicas
    error = a[3].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert 1 <= int(a[3].headers["retry-after"]) <= 100
    b = [post(i, "sk-b") for i in range(2)]  # its tenant's own, smaller bucket
    assert [r.status_code for r in b] == [200, 429]
    limits_redis.kill()  # limits protect capacity: without Redis requests go through
    assert post(0, "sk-a").status_code == 200


async def test_the_bucket_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(RateLimit(rps=2, burst=2))
    import services.ratelimit.bucket as bucket

    original = bucket.time.monotonic
    bucket.time.monotonic = lambda: now[0]  # type: ignore[assignment]
    try:
        await limiter.take("t", "k")
        await limiter.take("t", "k")
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.take("t", "k")
        assert refused.value.headers["retry-after"] == "1"
        await limiter.take("t", "other-key")  # buckets are per key
        now[0] += 0.5  # one token back at 2/s
        await limiter.take("t", "k")
        with pytest.raises(RateLimitExceeded):
            await limiter.take("t", "k")
    finally:
        bucket.time.monotonic = original  # type: ignore[assignment]
