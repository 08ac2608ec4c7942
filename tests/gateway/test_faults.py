"""Fault injection under load with real processes: Redis killed and restarted,
PostgreSQL stopped and restarted (a throwaway cluster of this test's own), a slow
upstream. Counted failures are 0 where a fallback exists (Redis is only a cache tier
here; the store's rows go to the spill file and are replayed) and no request_log row
is lost."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from models.tables import RequestLog
from services.workers import free_port
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import wait_for
from tests.support.postgres import ThrowawayPostgres, create_database
from tests.support.redis import ThrowawayRedis

REQUESTS = 160
CLIENTS = 4


@pytest.fixture
def cluster() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres(free_port())
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def fault_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(free_port()).start()
    yield server
    server.kill()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI({"m": Answer(delay_s=0.01), "slow": Answer(delay_s=5.0)}).start()
    yield server
    server.stop()


@pytest.mark.postgres
def test_redis_and_postgres_outages_under_load_fail_nothing_and_lose_no_row(
    cluster: ThrowawayPostgres, fault_redis: ThrowawayRedis, fake: FakeOpenAI,
    make_settings, start_gateway,
) -> None:
    gateway = start_gateway(make_settings(
        workers=[fake.url], database_url=create_database(cluster.url),
        redis_url=fault_redis.url, upstream_read_timeout_s=1.0,
    ))
    statuses: Counter[int] = Counter()
    sent = threading.Semaphore(0)
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            for i in range(offset, REQUESTS, CLIENTS):
                body = {"model": "m", "temperature": 0, "max_tokens": 4,
                        "messages": [{"role": "user", "content": f"question {i % 40}"}]}
                status = http.post("/v1/chat/completions", json=body).status_code
                with lock:
                    statuses[status] += 1
                sent.release()

    def after(n: int) -> None:  # wait until n more requests were answered
        for _ in range(n):
            assert sent.acquire(timeout=60), "traffic stalled"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    after(20)
    fault_redis.kill()
    after(30)
    fault_redis.start()
    after(20)
    cluster.stop()
    after(40)
    cluster.start()
    for thread in threads:
        thread.join(120)
    assert statuses == Counter({200: REQUESTS})  # every fault had a fallback

    # a slow upstream is a timeout for its caller only, and is recorded too
    slow = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
        "model": "slow", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]})
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout"

    def logged() -> int:
        try:
            gateway.flush_telemetry()
            with gateway.services.sessions() as session:
                return session.scalar(select(func.count()).select_from(RequestLog)) or 0
        except Exception:  # the pool's connections from before the restart
            return -1

    assert wait_for(lambda: logged() == REQUESTS + 1, timeout_s=60), logged()
    assert not gateway.services.telemetry.pending_spill
