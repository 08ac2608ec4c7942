"""The exact tiers on their own: keys, L1 bounds and expiry, L2 breaker, L3 budget, and
the batched writes to the shared tiers."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from migrations import upgrade_to_head
from models import CacheEntry, create_store_engine
from services.caching import (
    CachedResponse,
    CacheMetrics,
    MemoryCache,
    PersistentCache,
    RedisCache,
    ResponseCache,
    assemble,
    cache_key,
    is_deterministic,
    stream_chunks,
)
from services.caching import memory as memory_module
from services.workers import free_port

BODY = {
    "id": "x",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
}


def entry(size: int = 0) -> CachedResponse:
    body = dict(BODY, padding="x" * size)
    return CachedResponse(endpoint="chat.completions", body=body)


def test_keys_cover_output_fields_and_ignore_delivery_fields() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    key = cache_key("tenant/a", "chat.completions", base)
    assert key == cache_key("tenant/a", "chat.completions", {**base, "stream": True, "user": "u1"})
    for changed in (
        {"model": "m2"},
        {"temperature": 0.0001},
        {"seed": 3},
        {"max_tokens": 9},
        {"tools": [{"type": "function"}]},
        {"top_k": 5},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"response_format": {"type": "json_object"}},
    ):
        assert cache_key("tenant/a", "chat.completions", {**base, **changed}) != key
    assert cache_key("tenant/b", "chat.completions", base) != key
    assert cache_key("tenant/a", "completions", base) != key


def test_only_greedy_requests_are_deterministic() -> None:
    assert is_deterministic({"temperature": 0})
    assert not is_deterministic({"temperature": 0.7})
    assert not is_deterministic({})  # OpenAI and vLLM default to temperature 1


async def test_l1_evicts_least_recently_used_past_its_byte_bound() -> None:
    one = len(entry(1000).to_bytes())  # +-2 bytes: the timestamp's digits vary
    cache = MemoryCache(max_bytes=one * 3 + 20, ttl_s=60, max_entry_bytes=one * 2)
    keys = [cache_key("t", "chat.completions", {"n": i}) for i in range(4)]
    for key in keys[:3]:
        await cache.set(key, entry(1000))
    assert await cache.get(keys[0]) is not None  # 0 is now the most recently used
    await cache.set(keys[3], entry(1000))
    assert await cache.get(keys[1]) is None and cache.evictions == 1
    assert await cache.get(keys[0]) is not None and cache.bytes <= one * 3 + 20
    assert not await cache.set(keys[1], entry(one * 3))  # over the per-entry cap


async def test_l1_entries_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]  # L1's clock, moved by the test (a loaded machine cannot race it)
    monkeypatch.setattr(memory_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    cache = MemoryCache(max_bytes=1 << 20, ttl_s=0.2, max_entry_bytes=1 << 20)
    key = cache_key("t", "chat.completions", {})
    await cache.set(key, entry())
    now[0] += 0.19
    assert await cache.get(key) is not None
    now[0] += 0.02
    assert await cache.get(key) is None and cache.bytes == 0


async def test_l2_round_trip_then_breaker_opens_when_redis_is_gone() -> None:
    from tests.support.redis import ThrowawayRedis

    server = ThrowawayRedis(free_port()).start()
    cache = RedisCache(server.url, ttl_s=60, max_entry_bytes=1 << 20, timeout_s=0.2)
    key = cache_key("t", "chat.completions", {"q": 1})
    try:
        assert await cache.set(key, entry())
        assert (await cache.get(key)).body == entry().body
        assert RedisCache.redis_key(key) == f"oe:c:{{{key.digest}}}"  # cluster hash tag
        server.kill()
        for _ in range(5):
            assert await cache.get(key) is None  # a miss, never an exception
        assert not cache.breaker.allows
    finally:
        server.kill()
        await cache.aclose()


@pytest.fixture
def store_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


async def test_l3_keeps_compressed_entries_within_its_budget(store_engine) -> None:
    size = len(entry(5000).compressed())
    cache = PersistentCache(
        store_engine, ttl_s=60, max_bytes=size * 2 + 10, max_entry_bytes=1 << 20
    )
    keys = [cache_key("t", "chat.completions", {"n": i}) for i in range(3)]
    for key in keys:
        await cache.set(key, entry(5000))
    assert cache.total_bytes() <= size * 2 + 10 and cache.evictions == 1
    assert await cache.get(keys[0]) is None  # the oldest went first
    assert (await cache.get(keys[2])).body["usage"]["completion_tokens"] == 6
    assert size < len(entry(5000).to_bytes()) / 10  # zlib on repetitive text


async def test_l3_expired_rows_are_misses_and_purged(store_engine) -> None:
    cache = PersistentCache(store_engine, ttl_s=0.1, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    key = cache_key("t", "chat.completions", {})
    await cache.set(key, entry())
    await asyncio.sleep(0.2)
    assert await cache.get(key) is None
    assert cache.purge_expired() == 1


def test_stream_replay_round_trips_through_assembly() -> None:
    chunks = list(stream_chunks("chat.completions", BODY, include_usage=True))
    assert len(chunks) >= 4 and chunks[-1]["usage"] == BODY["usage"]
    rebuilt = assemble("chat.completions", chunks[:-1], BODY["usage"])
    assert rebuilt["choices"] == BODY["choices"] and rebuilt["usage"] == BODY["usage"]


def test_streams_with_tool_calls_are_not_assembled() -> None:
    chunk = {
        "id": "c",
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0}]}, "finish_reason": "tool_calls"}
        ],
    }
    assert assemble("chat.completions", [chunk], None) is None


def test_bloom_filter_has_no_false_negatives_and_few_false_positives() -> None:
    import hashlib

    from services.caching.bloom import DigestBloom

    bloom = DigestBloom(10_000, false_positive_rate=0.01)
    added = [hashlib.sha256(f"in-{i}".encode()).hexdigest() for i in range(10_000)]
    for digest in added:
        bloom.add(digest)
    assert all(d in bloom for d in added)
    absent = [hashlib.sha256(f"out-{i}".encode()).hexdigest() for i in range(10_000)]
    assert sum(d in bloom for d in absent) / len(absent) < 0.02


async def test_l3_misses_skip_the_store_but_other_replicas_writes_are_found(store_engine):
    def replica() -> PersistentCache:
        return PersistentCache(
            store_engine, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20, filter_refresh_s=0.2
        )

    reader, writer = replica(), replica()
    await reader.start()
    try:
        key = cache_key("t", "chat.completions", {"from": "the other replica"})
        assert await reader.get(key) is None and reader.filtered_misses == 1
        await writer.set(key, entry())
        # the reader's background loop tops its filter up from the table
        for _ in range(600):
            if reader._filter is not None and key.digest in reader._filter:
                break
            await asyncio.sleep(0.05)
        assert (await reader.get(key)).body == entry().body
        other = cache_key("t", "chat.completions", {"never": "stored"})
        assert await reader.get(other) is None and reader.filtered_misses == 2
    finally:
        await reader.aclose()


async def test_l3_hits_are_counted_in_batches_off_the_request_path(store_engine) -> None:
    cache = PersistentCache(store_engine, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    key = cache_key("t", "chat.completions", {"hot": True})
    await cache.set(key, entry())

    def hit_count() -> int:
        with store_engine.connect() as conn:
            return conn.scalar(select(CacheEntry.hit_count).where(CacheEntry.digest == key.digest))

    for _ in range(3):
        assert (await cache.get(key)).body == entry().body
    assert hit_count() == 0  # nothing written while answering
    assert cache.flush_hits() == 1 and hit_count() == 3
    assert cache.flush_hits() == 0


def test_bloom_filter_counts_distinct_digests_only() -> None:
    import hashlib

    from services.caching.bloom import DigestBloom

    bloom = DigestBloom(1000)
    digest = hashlib.sha256(b"x").hexdigest()
    assert bloom.add(digest) and not bloom.add(digest)
    assert bloom.count == 1


async def test_a_hit_in_a_slower_tier_fills_the_faster_ones(store_engine) -> None:
    l1 = MemoryCache(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20)
    l3 = PersistentCache(store_engine, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    cache = ResponseCache([l1, l3], CacheMetrics(CollectorRegistry()))
    key = cache_key("t", "chat.completions", {"warm": "me"})
    await l3.set(key, entry())
    hit = await cache.lookup(key)
    assert hit is not None and hit.layer == "L3" and hit.entry.body == entry().body
    await cache.drain()
    refilled = await cache.lookup(key)
    assert refilled.layer == "L1" and refilled.entry.body == entry().body


def test_bloom_filter_adds_a_batch_as_one_by_one() -> None:
    import hashlib

    from services.caching.bloom import DigestBloom

    digests = [hashlib.sha256(f"d-{i}".encode()).hexdigest() for i in range(500)]
    batch, single = DigestBloom(2000), DigestBloom(2000)
    assert batch.add_many([*digests, *digests[:50]]) == 500  # repeats count once
    for digest in digests:
        single.add(digest)
    assert np.array_equal(batch._bits, single._bits) and batch.count == single.count == 500
    assert all(d in batch for d in digests)
    assert batch.add_many(digests[:10]) == 0 and batch.add_many([]) == 0


class CountingL3(PersistentCache):
    """L3 that records the size of every batch written."""

    batches: list[int]

    async def set_many(self, items):
        self.batches = [*getattr(self, "batches", []), len(items)]
        return await super().set_many(items)


async def test_stored_entries_reach_the_shared_tiers_in_batches(any_store) -> None:
    from tests.support.redis import ThrowawayRedis

    server = ThrowawayRedis(free_port()).start()
    l2 = RedisCache(server.url, ttl_s=60, max_entry_bytes=1 << 20, timeout_s=0.5)
    l3 = CountingL3(any_store, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    metrics = CacheMetrics(CollectorRegistry())
    cache = ResponseCache([MemoryCache(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20),
                           l2, l3], metrics)
    keys = [cache_key("t", "chat.completions", {"n": i}) for i in range(100)]
    try:
        # concurrent misses: each stores its answer once it has it, the same key twice
        await asyncio.gather(*(cache.store(key, entry()) for key in [*keys, keys[0]]))
        await cache.drain()
        assert len(l3.batches) < len(keys) and sum(l3.batches) == len(keys) + 1
        with any_store.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(CacheEntry)) == len(keys)
        for key in keys:
            assert (await l2.get(key)).body == entry().body
            assert (await l3.get(key)).body == entry().body
        assert metrics.stores.labels("L3")._value.get() == len(keys)
    finally:
        server.kill()
        await cache.aclose()


async def test_shared_tiers_away_lose_nothing_but_their_copy(tmp_path) -> None:
    from sqlalchemy import create_engine

    gone = create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    l2 = RedisCache(f"redis://127.0.0.1:{free_port()}", ttl_s=60, max_entry_bytes=1 << 20,
                    timeout_s=0.05)
    l3 = PersistentCache(gone, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    metrics = CacheMetrics(CollectorRegistry())
    cache = ResponseCache([MemoryCache(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20),
                           l2, l3], metrics)
    key = cache_key("t", "chat.completions", {"q": "kept"})
    await cache.store(key, entry())
    await cache.drain()  # the failed writes end quietly
    assert (await cache.lookup(key)).layer == "L1"
    assert await l2.set_many([(key, entry(), None)]) == 0
    assert await l3.set_many([(key, entry(), None)]) == 0
    assert metrics.stores.labels("L3")._value.get() == 0
    await cache.aclose()


async def test_a_full_write_queue_keeps_new_entries_in_l1_only(store_engine, monkeypatch):
    from services.caching import cache as cache_module

    monkeypatch.setattr(cache_module, "MAX_PENDING", 2)
    l3 = PersistentCache(store_engine, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    metrics = CacheMetrics(CollectorRegistry())
    cache = ResponseCache([MemoryCache(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20),
                           l3], metrics)
    keys = [cache_key("t", "chat.completions", {"n": i}) for i in range(5)]
    for key in keys:  # no await yields to the writer in between: the queue fills
        await cache.store(key, entry())
    await cache.drain()
    assert metrics.writes_skipped._value.get() == 3
    assert [await l3.get(key) is not None for key in keys] == [True, True, False, False, False]
    assert [(await cache.lookup(key)).layer for key in keys] == ["L1"] * 5


async def test_closing_writes_the_entries_still_queued_for_the_shared_tiers(store_engine):
    l3 = PersistentCache(store_engine, ttl_s=60, max_bytes=1 << 30, max_entry_bytes=1 << 20)
    cache = ResponseCache([MemoryCache(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20),
                           l3], CacheMetrics(CollectorRegistry()))
    keys = [cache_key("t", "chat.completions", {"n": i}) for i in range(3)]
    for key in keys:
        await cache.store(key, entry())
    await cache.aclose()  # no drain first: closing writes them
    reader = PersistentCache(store_engine, ttl_s=60, max_bytes=1 << 30,
                             max_entry_bytes=1 << 20)
    assert [await reader.get(key) is not None for key in keys] == [True] * 3


class HungTier(MemoryCache):
    """A shared tier whose writes never return (a store that hangs), closed all the same."""

    name = "L2"
    closed = False

    async def set_many(self, items):
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


async def test_a_hung_shared_tier_is_given_up_after_the_close_timeout(caplog) -> None:
    hung = HungTier(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20)
    cache = ResponseCache([MemoryCache(max_bytes=1 << 20, ttl_s=60, max_entry_bytes=1 << 20),
                           hung], CacheMetrics(CollectorRegistry()), close_timeout_s=0.2)
    for i in range(4):
        await cache.store(cache_key("t", "chat.completions", {"n": i}), entry())
    await asyncio.wait_for(cache.aclose(), timeout=5)
    assert hung.closed
    assert [r.getMessage() for r in caplog.records if r.name == "services.caching.cache"] == [
        "cache: 4 entries not written to the shared tiers within 0.2 s at close; dropped"]
