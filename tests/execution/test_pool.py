"""Worker choice and membership, with a real vLLM worker for discovery; scheduling,
admission, breaker and drain behaviour are in the other modules of this folder."""

from __future__ import annotations

import pytest

from services.errors import ModelNotFound, UpstreamUnavailable
from services.execution import UpstreamClient, WorkerPool, WorkerState
from services.workers import free_port
from tests.execution.support import add


@pytest.fixture
async def pool():
    client = UpstreamClient(connect_timeout_s=1)
    yield WorkerPool(client, policy="least_outstanding_requests")
    await client.aclose()


async def choose(pool: WorkerPool, model: str = "m", **options) -> WorkerState:
    """The worker ``acquire`` picks; the lease is given back at once."""
    lease = await pool.acquire(model, **options)
    lease.release()
    return lease.worker


async def test_least_outstanding_healthy_worker_is_chosen(pool) -> None:
    add(pool, "http://a", outstanding=3)
    b = add(pool, "http://b", outstanding=1)
    add(pool, "http://c", outstanding=0, healthy=False)
    add(pool, "http://d", outstanding=0, models=("other",))
    assert await choose(pool) is b


async def test_ties_are_shared_in_turn(pool) -> None:
    add(pool, "http://a")
    add(pool, "http://b")
    chosen = [(await choose(pool)).url for _ in range(4)]
    assert chosen == ["http://a", "http://b", "http://a", "http://b"]


async def test_lease_counts_in_flight_requests(pool) -> None:
    a = add(pool, "http://a")
    lease = await pool.acquire("m", tokens=100)
    assert a.outstanding == 1 and a.outstanding_tokens == 100
    assert await choose(pool) is a  # still the only one
    lease.release()
    lease.release()  # idempotent
    assert a.outstanding == 0 and a.outstanding_tokens == 0 and a.served == 2


async def test_unknown_model_vs_no_healthy_worker(pool) -> None:
    add(pool, "http://a", healthy=False)
    with pytest.raises(UpstreamUnavailable):
        await choose(pool)
    with pytest.raises(ModelNotFound):
        await choose(pool, "never-served")


async def test_exclude_skips_tried_workers(pool) -> None:
    a = add(pool, "http://a")
    b = add(pool, "http://b", outstanding=4)
    assert await choose(pool, exclude=[a]) is b
    with pytest.raises(UpstreamUnavailable):
        await choose(pool, exclude=[a, b])


async def test_probe_marks_dead_worker_unhealthy(pool) -> None:
    dead = await pool.register(f"http://127.0.0.1:{free_port()}")
    assert dead.healthy is False and "connect" in dead.last_error


@pytest.mark.vllm
async def test_register_discovers_models_of_a_real_worker(pool, vllm_worker) -> None:
    seen = []
    pool._on_models = seen.append
    worker = await pool.register(vllm_worker.base_url + "/v1/")
    assert worker.url == vllm_worker.base_url  # trailing /v1/ normalised away
    assert worker.healthy and worker.models == {"tiny-llama"}
    assert seen == [frozenset({"tiny-llama"})]
    assert pool.models() == ["tiny-llama"]
    assert pool.deregister(vllm_worker.base_url) and pool.models() == []


async def test_prefix_affinity_is_sticky_and_spread(pool) -> None:
    for name in "abcd":
        add(pool, f"http://{name}")
    first = {key: (await choose(pool, affinity=key)).url for key in map(str, range(200))}
    again = {key: (await choose(pool, affinity=key)).url for key in map(str, range(200))}
    assert first == again  # the same prefix always goes to the same idle worker
    assert len(set(first.values())) == 4  # and prefixes spread over all workers


async def test_a_hot_prefix_cannot_overload_its_worker(pool) -> None:
    workers = [add(pool, f"http://{name}") for name in "abcd"]
    for _ in range(40):  # one hot prefix, 40 requests in flight at once
        await pool.acquire("m", affinity="hot system prompt")
    loads = sorted(w.outstanding for w in workers)
    mean = 40 / 4
    assert loads[-1] <= 1.25 * mean + 1  # bounded load
    assert loads[-1] > mean  # but the prefix's own worker took more than its share


async def test_affinity_off_falls_back_to_least_outstanding(pool) -> None:
    pool.affinity_load_factor = None
    add(pool, "http://a", outstanding=2)
    b = add(pool, "http://b")
    assert await choose(pool, affinity="anything") is b


async def test_a_store_read_older_than_a_registration_does_not_undo_it() -> None:
    """The health loop reads the registry while an admin call registers or removes a
    worker: the read that started first must not drop (or bring back) that worker."""
    import asyncio

    read_started, release_read = asyncio.Event(), asyncio.Event()
    release_read.set()
    snapshot = {"http://old": "registered"}  # what the store held when the read began

    async def slow_store(seen: list[WorkerState]) -> dict[str, str]:
        read_started.set()
        await release_read.wait()
        return dict(snapshot)

    client = UpstreamClient(connect_timeout_s=1)
    pool = WorkerPool(client, store_sync=slow_store)
    try:
        await pool.sync_store()
        assert [w.url for w in pool.workers] == ["http://old"]

        read_started.clear()
        release_read.clear()
        sync = asyncio.create_task(pool.sync_store())
        await read_started.wait()
        await pool.register(f"http://127.0.0.1:{free_port()}")  # nothing listens: unhealthy
        pool.deregister("http://old")
        release_read.set()
        await sync
        assert len(pool.workers) == 1 and pool.workers[0].url != "http://old"

        snapshot = {pool.workers[0].url: "registered"}  # the store caught up
        await pool.sync_store()
        await pool.sync_store()  # later reads follow the store again
        assert [w.url for w in pool.workers] == list(snapshot)
        snapshot = {}
        await pool.sync_store()
        assert pool.workers == []
    finally:
        await client.aclose()
