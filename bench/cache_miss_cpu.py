"""CPU the exact tiers spend per cache miss, in process, without HTTP around them.

Concurrent misses walk the path the gateway's cache stage takes (key, lookup L1 -> L3,
single flight, the upstream's answer parsed, store) against L1 and L3 on a fresh SQLite
store, and the background writes and the L3 filter's refreshes are counted too (the
run ends after ``drain``). CPU time of the process (every thread), so a loaded machine
slows it less than it slows wall time. To compare two source trees, run it once per
tree with ``PYTHONPATH`` pointing at the tree.

Example::

    PYTHONPATH=/path/to/tree .venv/bin/python bench/cache_miss_cpu.py --misses 6000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from migrations import upgrade_to_head
from models import create_store_engine
from services.caching import (
    CachedResponse,
    CacheMetrics,
    MemoryCache,
    PersistentCache,
    ResponseCache,
    cache_key,
)

ANSWER = orjson.dumps({
    "id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 8},
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 16, "total_tokens": 36},
})
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Give me one sentence about benchmarks."}],
    "max_tokens": 16, "temperature": 0,
}


async def run(misses: int, concurrency: int, rounds: int) -> None:
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-miss-')) / 'store.db'}"
    upgrade_to_head(url)
    l3 = PersistentCache(create_store_engine(url), ttl_s=3600, max_bytes=1 << 34,
                         max_entry_bytes=1 << 20)
    l1 = MemoryCache(max_bytes=1 << 30, ttl_s=300, max_entry_bytes=1 << 20)
    cache = ResponseCache([l1, l3], CacheMetrics(CollectorRegistry()))
    await cache.start()
    sequence = iter(range(10**12))

    async def client(n: int) -> None:
        for _ in range(n):
            key = cache_key("tenant/bench", "chat.completions", {**REQUEST, "n": next(sequence)})
            if await cache.lookup(key) is not None:
                raise RuntimeError("a unique request hit the cache")
            async with cache.flight(key) as flight:
                await l1.get(key)
                await asyncio.sleep(0)  # the upstream call
                entry = CachedResponse(endpoint="chat.completions", body=orjson.loads(ANSWER))
                await cache.store(key, entry)
                flight.finish(entry)

    for number in range(1, rounds + 1):
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(misses // concurrency) for _ in range(concurrency)))
        await cache.drain()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        done = misses // concurrency * concurrency
        print(f"round {number}: {done} misses, {concurrency} concurrent: "
              f"CPU {1e6 * cpu / done:.0f} us per miss, wall {1e6 * wall / done:.0f} us",
              flush=True)
    await cache.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--misses", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.misses, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
