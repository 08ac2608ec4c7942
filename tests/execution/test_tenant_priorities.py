"""``tenant_priorities`` through the gateway: with the worker's one slot taken, queued
requests reach the upstream high, then normal, then low, whatever order they came in."""

from __future__ import annotations

import asyncio
import threading

import httpx

from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import wait_for

KEYS = {"gold": "sk-gold", "std": "sk-std", "bulk": "sk-bulk"}


async def test_queued_requests_are_served_in_the_order_of_their_tenants_priorities(
    make_settings, start_gateway
) -> None:
    release = threading.Semaphore(0)
    upstream = FakeOpenAI({"held": Answer(hold=release), "m": Answer()}).start()
    try:
        gateway = start_gateway(make_settings(
            workers=[upstream.url], cache_enabled=False, require_auth=True,
            api_keys=[f"{key}:{tenant}" for tenant, key in KEYS.items()],
            tenant_priorities={"gold": "high", "bulk": "low"},
            max_in_flight_per_worker=1, admission_queue_timeout_s=120,
        ))
        pool = gateway.services.pool
        assert wait_for(lambda: pool.knows_model("m"))

        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            def post(tenant: str, model: str = "m") -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(client.post(
                    "/v1/chat/completions",
                    headers={"authorization": f"Bearer {KEYS[tenant]}"},
                    json={"model": model, "messages": [{"role": "user", "content": tenant}]},
                ))

            async def queued(n: int) -> None:
                while sum(pool.queue_depth().values()) < n:
                    await asyncio.sleep(0.02)

            holder = post("std", "held")  # takes the one slot until released
            while not upstream.requests:
                await asyncio.sleep(0.02)
            waiting = []
            for n, tenant in enumerate(["bulk", "std", "gold"], start=1):  # low first
                waiting.append(post(tenant))
                await asyncio.wait_for(queued(n), 30)
            release.release(4)
            replies = await asyncio.gather(holder, *waiting)
    finally:
        release.release(4)
        upstream.stop()
    assert [r.status_code for r in replies] == [200] * 4
    arrived = [r["body"]["messages"][0]["content"] for r in upstream.requests]
    assert arrived == ["std", "gold", "std", "bulk"]
