"""Budget reserve/settle: atomic under concurrency, in Redis (shared by replicas) and
in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from services.routing.budgets import BudgetExceeded, BudgetLedger
from services.routing.config import BudgetConfig
from services.workers import free_port
from tests.support.redis import ThrowawayRedis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = ThrowawayRedis(free_port()).start()
    yield server.url
    server.kill()


async def _spend_in_parallel(ledgers: list[BudgetLedger], requests: int) -> tuple[int, float]:
    """``requests`` parallel requests, each reserving $1.00 and then spending $0.70."""

    async def one(i: int) -> bool:
        ledger = ledgers[i % len(ledgers)]
        scopes = ledger.scopes("team-a", None)
        try:
            reservation = await ledger.reserve(scopes, 1.0)
        except BudgetExceeded:
            return False
        await asyncio.sleep(0.01)  # the upstream call
        await ledger.settle(reservation, 0.7)
        return True

    served = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    spent = await ledgers[0].fraction_spent(ledgers[0].scopes("team-a", None)) * 20
    return served, spent


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_fifty_parallel_requests_at_the_limit_never_overspend(backend, redis_url) -> None:
    budgets = {"tenant:team-a": BudgetConfig(limit_usd=20.0, period="day")}
    if backend == "redis":  # two gateway replicas sharing one Redis
        ledgers = [BudgetLedger(budgets, redis_url=redis_url, timeout_s=30) for _ in range(2)]
        await ledgers[0]._redis.flushdb()
    else:
        ledgers = [BudgetLedger(budgets)]
    served, spent = await _spend_in_parallel(ledgers, 50)
    for ledger in ledgers:
        await ledger.aclose()
    assert spent <= 20.0 + 1e-9
    assert 20 <= served < 50  # reservations of $1 while $0.70 is spent: some refused
    assert spent == pytest.approx(served * 0.7)


async def test_a_failed_call_releases_its_reservation() -> None:
    ledger = BudgetLedger({"key:7": BudgetConfig(limit_usd=1.0, period="total")})
    scopes = ledger.scopes("anyone", "7")
    reservation = await ledger.reserve(scopes, 0.9)
    with pytest.raises(BudgetExceeded, match=r"budget exceeded for key:7"):
        await ledger.reserve(scopes, 0.2)
    await ledger.settle(reservation, None)
    assert await ledger.fraction_spent(scopes) == 0
    await ledger.reserve(scopes, 0.2)


async def test_a_reservation_refused_on_one_scope_is_taken_from_none() -> None:
    ledger = BudgetLedger({
        "tenant:*": BudgetConfig(limit_usd=10.0),
        "key:k": BudgetConfig(limit_usd=0.5),
    })
    scopes = ledger.scopes("team-b", "k")
    assert [s.name for s in scopes] == ["tenant:team-b", "key:k"]
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(scopes, 1.0)
    assert await ledger.fraction_spent(scopes[:1]) == 0
