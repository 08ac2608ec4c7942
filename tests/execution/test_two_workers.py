"""Two real vLLM-CPU workers behind one gateway: the least-loaded one is chosen, a
killed one is ejected while traffic continues on the other, and it is taken back
through its circuit breaker's half-open probe when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.workers import VllmWorker, free_port
from tests.conftest import ROOT
from tests.execution.test_admission_gateway import LongStream, complete
from tests.support.gateway import wait_for
from tests.support.proxy import KillableProxy


@pytest.fixture(scope="module")
def second_worker(tiny_model, vllm_worker) -> Iterator[VllmWorker]:
    worker = VllmWorker(
        tiny_model,
        python=ROOT / ".venv-vllm" / "bin" / "python",
        kvcache_gib=1,
        log_path=ROOT / "data" / "logs" / "vllm-tests-second.log",
        startup_timeout_s=300,
    )
    with worker:
        yield worker


def served_by(gateway, replies: list[httpx.Response]) -> list[str]:
    gateway.flush_telemetry()
    ids = {r.headers["x-request-id"] for r in replies}
    with gateway.services.engine.connect() as conn:
        rows = conn.exec_driver_sql("select id, worker from request_log").all()
    return [worker for request_id, worker in rows if request_id in ids]


def test_the_least_loaded_worker_is_chosen(
    vllm_worker, second_worker, make_settings, start_gateway
) -> None:
    gateway = start_gateway(make_settings(
        workers=[vllm_worker.base_url, second_worker.base_url], cache_enabled=False
    ))
    for i in range(2):  # one request on each worker first: no cold start in the race below
        assert complete(gateway, f"warm {i}", max_tokens=8).status_code == 200
    # A race is judged only if the long generation still held its worker when a short
    # request was dispatched; a loaded machine can (rarely) finish it first, so up to
    # three races are run and the first that happened is judged.
    for _attempt in range(3):
        raced, idle_url, replies, choices = race(gateway)
        if raced:
            break
    assert [r.status_code for r in replies] == [200] * 4
    assert len(choices) == 4, choices
    assert raced, ("the long generation ended before any short request was dispatched",
                   choices)
    assert raced == [idle_url] * len(raced)
    assert set(served_by(gateway, replies)) <= {url for url, _ in choices}


def race(gateway) -> tuple[list[str], str, list[httpx.Response], list[tuple[str, bool]]]:
    """A long generation on one worker, then four short requests at once: the workers
    chosen for them, with whether the long generation still held its worker at the
    moment of each choice (the gateway's one event loop: nothing runs between the look
    and the choice, so no clock decides whether the race was fair)."""
    pool = gateway.services.pool
    assert wait_for(lambda: not any(w.outstanding for w in pool.workers))  # a fresh start
    holder = LongStream(gateway, max_tokens=1500)  # ~1500 tokens in flight on one worker
    choose = pool.acquire
    choices: list[tuple[str, bool]] = []
    try:
        assert wait_for(lambda: holder.chunks > 0)
        busy = next(w for w in pool.workers if w.outstanding)
        idle = next(w for w in pool.workers if w is not busy)
        assert busy.outstanding_tokens > 1000

        async def recording(model: str, **options: object):
            held = busy.outstanding_tokens > 1000
            lease = await choose(model, **options)
            choices.append((lease.worker.url, held))
            return lease

        pool.acquire = recording
        with ThreadPoolExecutor(4) as threads:  # all at once
            replies = list(threads.map(
                lambda i: complete(gateway, f"short {i}", max_tokens=8), range(4)
            ))
    finally:
        pool.acquire = choose
        holder.cancel()
    return [url for url, held in choices if held], idle.url, replies, choices


def test_a_killed_worker_is_ejected_and_taken_back_through_its_breaker(
    vllm_worker, second_worker, make_settings, start_gateway
) -> None:
    port = free_port()
    proxy = KillableProxy(port, vllm_worker.port).start()
    gateway = start_gateway(make_settings(
        workers=[proxy.url, second_worker.base_url], cache_enabled=False,
        breaker_failure_threshold=2, breaker_reset_s=1.0,
    ))
    pool = gateway.services.pool
    flaky, steady = pool.get(proxy.url), pool.get(second_worker.base_url)
    assert wait_for(lambda: flaky.healthy and steady.healthy)

    proxy.kill()
    with ThreadPoolExecutor(4) as executor:
        replies = list(executor.map(lambda i: complete(gateway, f"during {i}", 8), range(12)))
    assert [r.status_code for r in replies] == [200] * 12  # retried on the other worker
    assert set(served_by(gateway, replies)) == {steady.url}
    assert flaky.breaker.failures >= 2 and flaky.breaker.state != "closed"
    assert wait_for(lambda: not flaky.healthy)  # three failed probes: ejected

    proxy = KillableProxy(port, vllm_worker.port).start()  # the worker is back
    try:
        assert wait_for(lambda: flaky.healthy)
        served_before = flaky.served
        assert wait_for(lambda: (complete(gateway, "probe?", 4).status_code == 200
                                 and flaky.served > served_before))
        assert flaky.breaker.state == "closed"  # the half-open probe succeeded
    finally:
        proxy.kill()


CUT_TOKENS = 1000


def test_requests_in_flight_on_a_killed_worker_are_retried_on_the_other(
    vllm_worker, second_worker, make_settings, start_gateway
) -> None:
    """Non-streamed requests cut by the kill are retried elsewhere (nothing reached the
    client yet): every one is answered, by the worker that stayed."""
    proxy = KillableProxy(free_port(), vllm_worker.port).start()
    gateway = start_gateway(make_settings(
        workers=[proxy.url, second_worker.base_url], cache_enabled=False
    ))
    pool = gateway.services.pool
    flaky, steady = pool.get(proxy.url), pool.get(second_worker.base_url)
    assert wait_for(lambda: flaky.healthy and steady.healthy)
    for i in range(2):  # a request on each worker first: the six below are leased at once
        assert complete(gateway, f"warm {i}", max_tokens=8).status_code == 200
    choose = pool.acquire
    leased: list[str] = []  # the first choice of each request
    retried: list[str] = []  # choices made after the kill
    cut: list[int] = []

    async def recording(model: str, **options: object):
        lease = await choose(model, **options)
        (retried if cut else leased).append(lease.worker.url)
        return lease

    async def kill_once_all_are_leased() -> None:
        """On the gateway's loop, so no request ends between the look and the kill."""
        while len(leased) < 6:
            await asyncio.sleep(0.01)
        cut.append(flaky.outstanding)
        proxy.kill()

    pool.acquire = recording
    try:
        with ThreadPoolExecutor(6) as executor:
            # the tiny model writes up to 2,000 tokens a second here: 1,000 tokens each is
            # half a second at least, so the kill finds the killed worker's requests in flight
            pending = [executor.submit(complete, gateway, f"cut {i}", CUT_TOKENS)
                       for i in range(6)]
            gateway.run(kill_once_all_are_leased(), timeout_s=120)
            replies = [p.result() for p in pending]
    finally:
        pool.acquire = choose
        proxy.kill()
    assert [r.status_code for r in replies] == [200] * 6
    assert all(r.json()["usage"]["completion_tokens"] == CUT_TOKENS for r in replies)
    assert cut[0] >= 1 and retried == [steady.url] * cut[0]  # each cut request, once
    # the cut requests were answered by the worker that stayed; any request the killed
    # worker had finished before the kill kept its answer
    served = served_by(gateway, replies)
    assert served.count(flaky.url) == leased.count(flaky.url) - cut[0]
    assert served.count(steady.url) == leased.count(steady.url) + cut[0]
    assert flaky.breaker.failures == cut[0]
