"""The circuit breaker, on a fake clock, and in the pool's choice of worker."""

from __future__ import annotations

import pytest

from services.errors import UpstreamUnavailable
from services.execution import UpstreamClient, WorkerPool
from services.execution.breaker import CircuitBreaker
from tests.execution.support import add


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_lets_one_probe_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allows_request()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allows_request()

    clock.now += 10
    assert breaker.state == "half_open" and breaker.allows_request()
    breaker.on_dispatch()  # the probe
    assert not breaker.allows_request()  # only one at a time
    breaker.record_failure()  # probe failed: open for another period
    assert breaker.state == "open"
    clock.now += 10
    breaker.on_dispatch()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_a_success_resets_the_count_and_an_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, reset_after_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    clock.now += 5
    breaker.on_dispatch()
    breaker.on_abandoned()  # the probe's client went away: no verdict
    assert breaker.allows_request()
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)


async def test_pool_skips_an_open_circuit_until_the_probe_succeeds() -> None:
    client = UpstreamClient(connect_timeout_s=1)
    # a reset period no loaded machine outlasts; the test ends it by hand below
    pool = WorkerPool(client, breaker_threshold=2, breaker_reset_s=3600)
    a, b = add(pool, "http://a"), add(pool, "http://b", tokens=500)
    for _ in range(2):
        lease = await pool.acquire("m", exclude=[b])
        lease.failed("connect refused")
        lease.release()
    assert a.breaker.state == "open"
    assert (await pool.acquire("m")).worker is b  # though a is less loaded
    with pytest.raises(UpstreamUnavailable):
        await pool.acquire("m", exclude=[b])

    a.breaker.reset_after_s = 0  # cooled down: half-open
    probe = await pool.acquire("m", exclude=[b])
    assert probe.worker is a
    with pytest.raises(UpstreamUnavailable):  # one probe at a time
        await pool.acquire("m", exclude=[b])
    probe.succeeded()
    probe.release()
    assert a.breaker.state == "closed" and a.healthy
    await client.aclose()
