"""Admission control in the pool: the per-worker cap, the priority queue, the queue
timeout, and draining."""

from __future__ import annotations

import asyncio

import pytest

from services.errors import InvalidRequest, Overloaded, UpstreamUnavailable
from services.execution import Lease, UpstreamClient, WorkerPool, request_priority
from services.execution.admission import Waiter, WaitQueue
from tests.execution.support import add


@pytest.fixture
async def client():
    client = UpstreamClient(connect_timeout_s=1)
    yield client
    await client.aclose()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def one_waiting(pool: WorkerPool) -> tuple[Lease, asyncio.Task[Lease]]:
    """Fill the pool's only slot, and queue one request behind it."""
    held = await pool.acquire("m")
    waiting = asyncio.create_task(pool.acquire("m"))
    await settle()
    return held, waiting


def test_x_priority_can_only_lower_a_request() -> None:
    assert request_priority("normal", None) == "normal"
    assert request_priority("normal", "low") == "low"
    assert request_priority("normal", " HIGH ") == "normal"  # not raised
    assert request_priority("high", "normal") == "normal"
    assert request_priority("low", "high") == "low"
    with pytest.raises(InvalidRequest, match="X-Priority"):
        request_priority("normal", "urgent")


async def test_cap_holds_and_a_released_slot_goes_to_the_next_waiter(client) -> None:
    pool = WorkerPool(client, max_in_flight=2)
    a = add(pool, "http://a")
    first, second = await pool.acquire("m"), await pool.acquire("m")
    third = asyncio.create_task(pool.acquire("m"))
    await settle()
    assert not third.done() and a.outstanding == 2
    assert pool.queue_depth()["normal"] == 1
    first.release()
    lease = await asyncio.wait_for(third, 1)
    assert lease.worker is a and a.outstanding == 2
    assert pool.queue_depth()["normal"] == 0
    second.release()
    lease.release()
    assert a.outstanding == 0


async def test_waiters_are_served_by_priority_then_arrival(client) -> None:
    pool = WorkerPool(client, max_in_flight=1)
    add(pool, "http://a")
    held = await pool.acquire("m")
    order: list[str] = []

    async def wait(name: str, priority: str) -> None:
        lease = await pool.acquire("m", priority=priority)  # type: ignore[arg-type]
        order.append(name)
        await asyncio.sleep(0)
        lease.release()

    tasks = []
    for name, priority in [("low-1", "low"), ("normal-1", "normal"), ("high-1", "high"),
                           ("normal-2", "normal"), ("low-2", "low"), ("high-2", "high")]:
        tasks.append(asyncio.create_task(wait(name, priority)))
        await settle()
    assert pool.queue_depth() == {"high": 2, "normal": 2, "low": 2}
    held.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert order == ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]


async def test_queue_timeout_is_overloaded_with_retry_after(client) -> None:
    pool = WorkerPool(client, max_in_flight=1, queue_timeout_s=0.05)
    a = add(pool, "http://a")
    held = await pool.acquire("m")
    with pytest.raises(Overloaded) as refused:
        await pool.acquire("m")
    assert refused.value.status_code == 503 and refused.value.code == "overloaded"
    assert int(refused.value.headers["retry-after"]) >= 1
    assert pool.queue_depth()["normal"] == 0 and a.outstanding == 1
    held.release()
    assert a.outstanding == 0


async def test_a_request_the_queue_cannot_serve_in_time_is_refused_at_once(client) -> None:
    pool = WorkerPool(client, max_in_flight=1, queue_timeout_s=0.9)
    a = add(pool, "http://a")
    first = await pool.acquire("m")
    first._started_at -= 0.5  # as if held 0.5 s: the pool learns a hold time of 0.5 s
    first.release()
    held, waiting = await one_waiting(pool)  # one hold of wait: fits in 0.9 s
    with pytest.raises(Overloaded, match="1 requests are waiting ahead") as refused:
        await pool.acquire("m")  # two holds behind: refused at once, not after 0.9 s
    assert int(refused.value.headers["retry-after"]) >= 1
    patient = asyncio.create_task(pool.acquire("m", fail_fast=False))  # a batch line waits
    await settle()
    assert pool.queue_depth()["normal"] == 2
    held.release()
    (await waiting).release()  # the one that fitted is served, then the patient one
    (await patient).release()
    assert a.outstanding == 0 and pool.queue_depth()["normal"] == 0


async def test_a_new_waiter_counts_only_those_served_before_it() -> None:
    queue = WaitQueue()
    waiters = [Waiter(priority, model, 0, frozenset(), None, 0.0) for priority, model in
               [("high", "m"), ("normal", "m"), ("normal", "m"), ("low", "m"), ("high", "x")]]
    for waiter in waiters:
        queue.push(waiter)
    assert [queue.ahead_of(p, "m") for p in ("high", "normal", "low")] == [1, 3, 4]
    assert queue.ahead_of("low", "x") == 1 and queue.ahead_of("normal", "other") == 0
    queue.remove(waiters[1])
    queue.remove(waiters[1])  # twice: no double count
    assert [queue.ahead_of(p, "m") for p in ("high", "normal", "low")] == [1, 2, 3]


async def test_a_cancelled_waiter_leaves_no_trace(client) -> None:
    pool = WorkerPool(client, max_in_flight=1)
    a = add(pool, "http://a")
    held, waiting = await one_waiting(pool)
    waiting.cancel()
    await settle()
    held.release()
    assert a.outstanding == 0 and pool.queue_depth()["normal"] == 0


async def test_no_cap_means_no_queue(client) -> None:
    pool = WorkerPool(client, max_in_flight=0)
    a = add(pool, "http://a")
    for _ in range(200):
        await pool.acquire("m")
    assert a.outstanding == 200


async def test_waiters_fail_fast_when_their_last_worker_goes(client) -> None:
    pool = WorkerPool(client, max_in_flight=1)
    a = add(pool, "http://a")
    held, waiting = await one_waiting(pool)
    a.healthy = False  # ejected by the health loop ...
    await pool.probe_all()  # ... whose pass admits waiters (none of ours can be served)
    with pytest.raises(UpstreamUnavailable):
        await asyncio.wait_for(waiting, 1)
    held.release()


async def test_drain_stops_new_requests_and_waits_for_in_flight(client) -> None:
    pool = WorkerPool(client)
    a, b = add(pool, "http://a"), add(pool, "http://b", tokens=10_000)
    in_flight = await pool.acquire("m")
    assert in_flight.worker is a
    drained = asyncio.create_task(pool.drain("http://a", timeout_s=5))
    await settle()
    assert not drained.done() and a.draining
    assert (await pool.acquire("m")).worker is b  # a takes nothing new
    in_flight.succeeded()
    in_flight.release()
    worker = await asyncio.wait_for(drained, 1)
    assert worker is a and a.outstanding == 0

    held = await pool.acquire("m")  # on b
    still_busy = await pool.drain("http://b", timeout_s=0.05)  # gives up, stays draining
    assert still_busy.outstanding == 2 and still_busy.draining
    with pytest.raises(UpstreamUnavailable):
        await pool.acquire("m")
    held.release()
    with pytest.raises(InvalidRequest):
        await pool.drain("http://nowhere", timeout_s=1)
