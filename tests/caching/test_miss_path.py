"""What a cache miss keeps and how: entries around the upstream's bytes, L1 entries the
garbage collector does not track, single flight's leader and followers, L1's gauges."""

from __future__ import annotations

import asyncio
import gc

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.caching import CachedResponse, CacheMetrics, MemoryCache, ResponseCache, cache_key

BODY = {
    "id": "x", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
}


def l1(max_bytes: int = 1 << 20) -> MemoryCache:
    return MemoryCache(max_bytes=max_bytes, ttl_s=60, max_entry_bytes=1 << 20)


def test_an_entry_kept_as_bytes_reads_and_serialises_like_one_kept_as_a_dict() -> None:
    raw = b'{"id": "x",  "usage": {"total_tokens": 7}}'  # as an upstream sent it
    kept = CachedResponse.from_json("chat.completions", raw, created_at=12.5)
    assert kept.body == {"id": "x", "usage": {"total_tokens": 7}}
    assert kept.usage() == {"total_tokens": 7} and kept.body_json == raw
    again = CachedResponse.from_bytes(kept.to_bytes())
    assert again == CachedResponse("chat.completions", kept.body, created_at=12.5)
    assert CachedResponse.decompressed(kept.compressed()) == again
    made = CachedResponse("completions", BODY, created_at=3.0)
    assert orjson.loads(made.to_bytes()) == {"e": "completions", "t": 3.0, "b": BODY}


def test_a_body_that_is_not_a_json_object_is_refused_when_read() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        _ = CachedResponse.from_json("chat.completions", b"[1, 2]").body


async def test_l1_entries_add_no_objects_for_the_garbage_collector_to_walk() -> None:
    cache = l1(max_bytes=1 << 30)
    keys = [cache_key("t", "chat.completions", {"n": i}) for i in range(2000)]
    gc.collect()
    before = len(gc.get_objects())
    for key in keys:
        await cache.set(key, CachedResponse.from_json("chat.completions", orjson.dumps(BODY)))
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # a dict per body would be ~10,000
    hit = await cache.get(keys[7])
    assert hit is not None and hit.body == BODY and hit.age_s < 60


async def test_l1_counts_an_entry_as_its_body_json() -> None:
    cache = l1()
    entry = CachedResponse("chat.completions", BODY)
    await cache.set(cache_key("t", "chat.completions", {"a": 1}), entry)
    assert cache.bytes == len(orjson.dumps(BODY))


async def test_l1_gauges_show_bytes_and_evictions_when_scraped() -> None:
    registry = CollectorRegistry()
    size = len(orjson.dumps(BODY))
    memory = l1(max_bytes=2 * size)
    cache = ResponseCache([memory], CacheMetrics(registry))
    for i in range(3):
        await cache.store(cache_key("t", "chat.completions", {"n": i}),
                          CachedResponse("chat.completions", BODY))
    assert registry.get_sample_value("optengine_cache_l1_bytes") == 2 * size
    assert registry.get_sample_value("optengine_cache_l1_evictions") == 1
    assert registry.get_sample_value("optengine_cache_stores_total", {"layer": "L1"}) == 3


async def test_followers_get_the_leaders_entry_and_a_failed_follower_leaves_it_running() -> None:
    cache = ResponseCache([l1()], CacheMetrics(CollectorRegistry()))
    key = cache_key("t", "chat.completions", {"same": True})
    entry = CachedResponse("chat.completions", BODY)
    async with cache.flight(key) as leader:
        assert leader.leader
        with pytest.raises(RuntimeError):
            async with cache.flight(key) as quitter:
                assert not quitter.leader
                raise RuntimeError("the follower's client went away")
        async with cache.flight(key) as follower:
            waiting = asyncio.ensure_future(follower.wait())
            await asyncio.sleep(0)
            assert not waiting.done()  # the quitter did not finish the leader's flight
            leader.finish(entry)
            assert await waiting is entry
    async with cache.flight(key) as next_one:  # the finished flight is gone
        assert next_one.leader
        next_one.finish(None)


async def test_a_leader_that_fails_releases_its_followers_and_the_key() -> None:
    cache = ResponseCache([l1()], CacheMetrics(CollectorRegistry()))
    key = cache_key("t", "chat.completions", {"fails": True})
    follower_result: list[object] = []

    async def follow() -> None:
        async with cache.flight(key) as follower:
            follower_result.append(await follower.wait())

    with pytest.raises(ConnectionError):
        async with cache.flight(key) as leader:
            assert leader.leader
            waiting = asyncio.ensure_future(follow())
            await asyncio.sleep(0)
            raise ConnectionError("upstream down")
    await waiting
    assert follower_result == [None]  # the follower goes upstream itself
    async with cache.flight(key) as again:
        assert again.leader
        again.finish(None)
