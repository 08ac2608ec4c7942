"""Prefix warming: a joining worker gets the cacheable prefixes affinity routes to it.

The vLLM tests prove it on the worker itself: the first real request with a warmed
prefix reads it from vLLM's prefix cache (``usage.prompt_tokens_details.cached_tokens``
and the worker's ``vllm:prefix_cache_hits`` counter), where the same first request
without warming reads nothing. Each uses a system prompt no other test sent, so the
shared worker cannot have it cached from before.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client import CollectorRegistry

from models import CacheablePrefix
from services.caching.prefix import cacheable_prefix_hash, prefix_cache_salt
from services.errors import UpstreamUnavailable
from services.execution import PrefixWarmer, UpstreamClient, WorkerPool, load_warm_prefixes
from services.execution.warming import WarmPrefix, kv_cache_tokens
from tests.execution.support import add
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway, wait_for

MODEL = "tiny-llama"


def unique_system() -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex
    rules = " ".join(f"Rule {i} of policy {tag}: answer in full sentences." for i in range(12))
    return [{"role": "system", "content": f"{tag} You follow these rules. {rules}"}]


def mark(store, messages: Any, *, occurrences: int = 5, tokens: int = 600,
         prefix_hash: str | None = None, tenants: list[str] | None = None) -> str:
    """A cacheable_prefixes row as the token_optimization flow writes it."""
    digest = prefix_hash or cacheable_prefix_hash(messages)
    with store.begin() as conn:
        conn.execute(CacheablePrefix.__table__.insert(), [{
            "prefix_hash": digest, "kind": "system_prompt", "tokens": tokens,
            "occurrences": occurrences, "text": "", "messages": messages,
            "tenants": tenants, "marked_at": datetime.now(UTC)}])
    return digest


def warm_count(gateway: RunningGateway, outcome: str) -> float:
    value = gateway.services.metrics.registry.get_sample_value(
        "optengine_prefix_warm_total", {"outcome": outcome})
    return value or 0.0


def vllm_prefix_hits(worker) -> float:
    text = httpx.get(f"{worker.base_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:prefix_cache_hits_total"))


def first_request(gateway: RunningGateway, system: list[dict[str, Any]]):
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    return client.chat.completions.create(
        model=MODEL, messages=[*system, {"role": "user", "content": "Which rule is first?"}],
        max_tokens=1, temperature=0)


@pytest.fixture
def gateway_on(vllm_worker, store, make_settings, start_gateway, tmp_path):
    def start(**overrides: object) -> RunningGateway:
        return start_gateway(make_settings(
            workers=[vllm_worker.base_url], database_url=f"sqlite:///{tmp_path / 'store.db'}",
            cache_enabled=False, **overrides))
    return start


def test_a_joining_worker_is_warmed_with_the_cacheable_prefixes(
    gateway_on, store, vllm_worker
) -> None:
    system = unique_system()
    mark(store, system)
    mark(store, [{"role": "user", "content": "kept without messages"}], tokens=10)
    with store.begin() as conn:  # a row the flow wrote while prompts were not stored
        conn.execute(CacheablePrefix.__table__.update()
                     .where(CacheablePrefix.tokens == 10).values(messages=None))
    gateway = gateway_on()
    assert wait_for(lambda: warm_count(gateway, "warmed") == 1, timeout_s=60)
    hits_before = vllm_prefix_hits(vllm_worker)

    answer = first_request(gateway, system)

    cached = answer.usage.prompt_tokens_details.cached_tokens
    assert cached >= answer.usage.prompt_tokens // 2, answer.usage  # the system prompt's blocks
    assert vllm_prefix_hits(vllm_worker) - hits_before >= cached
    assert warm_count(gateway, "failed") == warm_count(gateway, "invalid") == 0


def test_with_warming_off_the_first_request_finds_nothing_cached(gateway_on, store) -> None:
    system = unique_system()
    mark(store, system)
    gateway = gateway_on(prefix_warm_enabled=False)
    assert gateway.services.warmer is None

    answer = first_request(gateway, system)

    assert answer.usage.prompt_tokens_details.cached_tokens == 0, answer.usage


def test_broken_rows_are_counted_and_the_gateway_serves_on(gateway_on, store) -> None:
    system = unique_system()
    mark(store, system, occurrences=1)
    mark(store, [{"role": "system", "content": "edited"}], occurrences=9,
         prefix_hash="0" * 64)  # does not hash to its key: skipped
    mark(store, [{"role": "system", "content": {"not": "a content"}}], occurrences=8)  # 400
    gateway = gateway_on()
    assert wait_for(lambda: warm_count(gateway, "warmed") == 1, timeout_s=60)
    assert warm_count(gateway, "invalid") == 1 and warm_count(gateway, "failed") == 1
    worker = gateway.services.pool.workers[0]
    assert worker.healthy and worker.breaker.state == "closed"

    assert first_request(gateway, system).usage.prompt_tokens_details.cached_tokens > 0


# --- without vLLM -----------------------------------------------------------------------


def test_the_most_valuable_prefixes_with_messages_are_read_first(store) -> None:
    low, high = unique_system(), unique_system()
    mark(store, low, occurrences=2, tokens=100)
    mark(store, high, occurrences=3, tokens=100)
    mark(store, unique_system(), occurrences=50, prefix_hash="f" * 64)

    prefixes, broken = load_warm_prefixes(store, 10)

    assert [p.messages for p in prefixes] == [high, low] and broken == 1
    top, skipped = load_warm_prefixes(store, 2)  # the limit counts rows, broken ones too
    assert [p.messages for p in top] == [high] and skipped == 1
    assert all(p.tenants == () for p in prefixes)  # rows without tenants
    mark(store, unique_system(), occurrences=99, tenants=["team-b", "team-a"])
    assert load_warm_prefixes(store, 1)[0][0].tenants == ("team-b", "team-a")


def test_warming_sends_max_tokens_1_at_low_priority_behind_live_traffic(
    store, make_settings, start_gateway, tmp_path
) -> None:
    """One slot, answers released one by one: the second warming request queues (low)
    before a live request (normal), and the live one is served first."""
    first, second = unique_system(), unique_system()
    mark(store, first, occurrences=9)
    mark(store, second, occurrences=3)
    answers = threading.Semaphore(0)
    upstream = FakeOpenAI({MODEL: Answer(hold=answers)}).start()
    executor = ThreadPoolExecutor(2)
    try:
        gateway = start_gateway(make_settings(
            workers=[upstream.url], database_url=f"sqlite:///{tmp_path / 'store.db'}",
            cache_enabled=False, max_in_flight_per_worker=1, admission_queue_timeout_s=120))
        queue = gateway.services.pool.queue_depth
        assert wait_for(lambda: len(upstream.requests) == 1)  # the first warming request
        live = [executor.submit(first_request, gateway, unique_system())]
        assert wait_for(lambda: queue()["normal"] == 1)
        answers.release()  # the first warming request ends: the live one takes the slot
        assert wait_for(lambda: len(upstream.requests) == 2 and queue()["low"] == 1)
        live.append(executor.submit(first_request, gateway, unique_system()))
        assert wait_for(lambda: queue()["normal"] == 1)  # behind the warming request
        answers.release(3)
        assert all(reply.result(60).usage.completion_tokens > 0 for reply in live)
        assert wait_for(lambda: warm_count(gateway, "warmed") == 2)
    finally:
        answers.release(4)  # nothing stays held, whatever failed
        executor.shutdown()
        upstream.stop()
    sent = [r["body"] for r in upstream.requests]
    warming = {"max_tokens": 1, "model": MODEL}
    assert sent[0] == {**warming, "messages": [*first, {"role": "user", "content": ""}]}
    assert [body["messages"][-1]["content"] for body in sent[1:3]] == ["Which rule is first?"] * 2
    assert sent[3] == {**warming, "messages": [*second, {"role": "user", "content": ""}]}


def prefixes(n: int, tokens: int = 100) -> list[WarmPrefix]:
    found = []
    for _ in range(n):
        system = unique_system()
        found.append(WarmPrefix(cacheable_prefix_hash(system), tokens, system))
    return found


def test_each_prefix_is_warmed_on_the_one_worker_affinity_sends_it_to() -> None:
    pool = WorkerPool(UpstreamClient())
    a, b = add(pool, "http://a:1", models=(MODEL,)), add(pool, "http://b:1", models=(MODEL,))
    known = prefixes(40)
    warmer = PrefixWarmer(pool, UpstreamClient(), lambda n: (known, 0), max_prefixes=40,
                          max_tokens=10**6, registry=CollectorRegistry())
    on_a = {u.prefix.prefix_hash for u in warmer._routed_to(a, known)}
    on_b = {u.prefix.prefix_hash for u in warmer._routed_to(b, known)}
    assert on_a and on_b and not on_a & on_b and len(on_a | on_b) == 40

    warmer.max_prefixes, warmer.max_tokens = 3, 250
    assert len(warmer._routed_to(a, known)) == 2  # 3 would be 300 tokens


def test_per_tenant_prefix_caches_are_warmed_once_per_tenant() -> None:
    pool = WorkerPool(UpstreamClient())
    worker = add(pool, "http://a:1", models=(MODEL,))
    shared, solo, nobodys = (WarmPrefix(p.prefix_hash, p.tokens, p.messages, tenants)
                             for p, tenants in zip(prefixes(3), (("a", "b"), ("c",), ()),
                                                   strict=True))
    warmer = PrefixWarmer(pool, UpstreamClient(), lambda n: ([], 0), max_prefixes=10,
                          max_tokens=10**6, salt_key=b"k", registry=CollectorRegistry())
    units = warmer._routed_to(worker, [shared, solo, nobodys])
    assert [(u.prefix, u.cache_salt) for u in units] == [
        (shared, prefix_cache_salt(b"k", "a")), (shared, prefix_cache_salt(b"k", "b")),
        (solo, prefix_cache_salt(b"k", "c"))]  # no tenants: an unsalted copy serves nobody
    assert units[0].prefix.request(MODEL, units[0].cache_salt)["cache_salt"] == (
        prefix_cache_salt(b"k", "a"))
    warmer.max_prefixes = 2  # every tenant's copy is a prefill of its own: bounded alike
    assert len(warmer._routed_to(worker, [shared, solo])) == 2
    shared_only = PrefixWarmer(pool, UpstreamClient(), lambda n: ([], 0), max_prefixes=10,
                               max_tokens=10**6, registry=CollectorRegistry())
    assert [u.cache_salt for u in shared_only._routed_to(worker, [shared, nobodys])] == [
        None, None]


class FlakyModels:
    """Answers the pool's probes from a switch: up (serving the model) or down."""

    def __init__(self) -> None:
        self.up = True

    async def list_models(self, url: str) -> list[str]:
        if not self.up:
            raise UpstreamUnavailable(f"cannot connect to worker {url}")
        return [MODEL]


def test_a_worker_joins_on_its_first_healthy_probe_and_after_an_ejection() -> None:
    async def scenario() -> list[str]:
        client = FlakyModels()
        pool = WorkerPool(client, probe_failures_to_eject=1)  # type: ignore[arg-type]
        joined: list[str] = []
        pool.on_join = lambda worker: joined.append(worker.url)
        worker = await pool.register("http://w:1")
        await pool.probe(worker)  # still healthy: not a join
        client.up = False
        await pool.probe(worker)
        client.up = True
        await pool.probe(worker)
        return joined

    assert asyncio.run(scenario()) == ["http://w:1", "http://w:1"]


def test_a_store_that_is_down_is_counted_not_raised() -> None:
    async def scenario() -> float | None:
        def down(limit: int) -> tuple[list[WarmPrefix], int]:
            raise OSError("store down")

        registry = CollectorRegistry()
        pool = WorkerPool(UpstreamClient())
        warmer = PrefixWarmer(pool, UpstreamClient(), down, max_prefixes=4, max_tokens=100,
                              registry=registry)
        warmer.worker_joined(add(pool, "http://a:1", models=(MODEL,)))

        def counted() -> float | None:
            return registry.get_sample_value("optengine_prefix_warm_total",
                                             {"outcome": "store_error"})

        for _ in range(600):  # the warming runs in a thread: wait for its verdict
            if counted():
                break
            await asyncio.sleep(0.05)
        await warmer.stop()
        return counted()

    assert asyncio.run(scenario()) == 1


class SmallKvWorker:
    """A vLLM worker as the warmer sees it: metrics that give its KV cache size, and a
    chat endpoint that records what it was sent."""

    def __init__(self, metrics: str) -> None:
        self.metrics = metrics
        self.sent: list[dict[str, Any]] = []

    async def get(self, worker: str, path: str, **_: object) -> bytes:
        if path != "/metrics" or not self.metrics:
            raise UpstreamUnavailable(f"cannot connect to worker {worker}")
        return self.metrics.encode()

    async def post_json(self, worker: str, path: str, payload: bytes, **_: object) -> bytes:
        self.sent.append(orjson.loads(payload))
        return b"{}"


def cache_config(blocks: int) -> str:
    """vLLM's line for its KV cache, 128-token blocks (vLLM on CPU)."""
    return ('vllm:cache_config_info{block_size="128",cache_dtype="auto",'
            f'num_gpu_blocks="{blocks}",prefix_caching_hash_algo="sha256"}} 1.0\n')


@pytest.mark.parametrize(("metrics", "warmed"), [
    (cache_config(4), 2),  # 512 tokens, half of it 256: two prefixes of 100
    (cache_config(1000), 5),  # roomy: max_tokens bounds it
    ("", 5),  # no metrics (not vLLM, or unreachable): only max_tokens bounds it
])
def test_warming_fills_at_most_a_share_of_the_workers_kv_cache(metrics: str, warmed: int
                                                               ) -> None:
    async def scenario() -> int:
        worker_api = SmallKvWorker(metrics)
        pool = WorkerPool(UpstreamClient())
        worker = add(pool, "http://a:1", models=(MODEL,))
        known = prefixes(5, tokens=100)
        warmer = PrefixWarmer(pool, worker_api, lambda n: (known, 0),  # type: ignore[arg-type]
                              max_prefixes=10, max_tokens=1000, max_kv_share=0.5,
                              registry=CollectorRegistry())
        await warmer._warm(worker)
        return len(worker_api.sent)

    assert asyncio.run(scenario()) == warmed


def test_the_kv_cache_size_is_read_from_a_real_worker(vllm_worker) -> None:
    async def scenario() -> tuple[int | None, int | None]:
        client = UpstreamClient()
        try:
            return (await kv_cache_tokens(client, vllm_worker.base_url),
                    await kv_cache_tokens(client, "http://127.0.0.1:9"))
        finally:
            await client.aclose()

    tokens, unreachable = asyncio.run(scenario())
    assert tokens is not None and tokens > 0 and tokens % 16 == 0 and unreachable is None
