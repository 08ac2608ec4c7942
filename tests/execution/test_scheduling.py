"""Token estimates and the scheduling policies."""

from __future__ import annotations

import random

import pytest

from services.execution import UpstreamClient, WorkerPool, estimate_tokens
from tests.execution.support import add


def test_estimate_counts_prompt_and_expected_output() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert estimate_tokens(chat) == 100 + 50
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 40}]}],
             "max_completion_tokens": 7, "n": 3}
    assert estimate_tokens(parts) == 10 + 21
    assert estimate_tokens({"prompt": [1, 2, 3, 4]}, default_output_tokens=10) == 14
    assert estimate_tokens({"prompt": ["abcd", "abcdefgh"]}, default_output_tokens=0) == 3
    assert estimate_tokens({"prompt": "hi"}) == 1 + 256  # no max_tokens: the default


@pytest.fixture
async def client():
    client = UpstreamClient(connect_timeout_s=1)
    yield client
    await client.aclose()


async def test_least_outstanding_tokens_weighs_long_requests(client) -> None:
    pool = WorkerPool(client, policy="least_outstanding_tokens")
    add(pool, "http://a", outstanding=1, tokens=4000)  # one long generation
    b = add(pool, "http://b", outstanding=3, tokens=300)  # three short ones
    lease = await pool.acquire("m", tokens=100)
    assert lease.worker is b

    by_requests = WorkerPool(client, policy="least_outstanding_requests")
    a = add(by_requests, "http://a", outstanding=1, tokens=4000)
    add(by_requests, "http://b", outstanding=3, tokens=300)
    assert (await by_requests.acquire("m")).worker is a


async def test_power_of_two_never_picks_the_heaviest(client) -> None:
    pool = WorkerPool(client, policy="power_of_two", rng=random.Random(7))
    for name, tokens in zip("abcd", (10, 20, 30, 10_000), strict=True):
        add(pool, f"http://{name}", tokens=tokens)
    chosen = set()
    for _ in range(50):
        lease = await pool.acquire("m")
        chosen.add(lease.worker.url)
        lease.release()
    assert "http://d" not in chosen  # it loses every pair it is sampled into
    assert len(chosen) >= 2  # sampling spreads the rest
