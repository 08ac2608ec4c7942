"""CPU the response cache adds to a cache miss, in process, without HTTP around it.

Concurrent misses run through the gateway's real cache stage (``CacheStage``: directives,
namespace, key, lookup L1 -> L3, single flight, the answer kept, the store) in front of
a stand-in for the upstream that answers a fixed body, with L1 and L3 on a fresh SQLite
store; the background writes and the L3 filter's refreshes are counted too (a round
ends after ``drain``). Each round also runs the same requests through the pipeline
without the cache stage, so the difference is what the stage costs per miss. CPU time
of the process (every thread), so a loaded machine slows it less than it slows wall
time. The garbage collector's cost is not measured here: this process's heap is small,
a gateway's is not. To compare two source trees, run it once per tree with
``PYTHONPATH`` pointing at the tree.

Example::

    PYTHONPATH=/path/to/tree .venv/bin/python bench/cache_miss_cpu.py --misses 6000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from migrations import upgrade_to_head
from models import create_store_engine
from services.caching import CacheMetrics, MemoryCache, PersistentCache, ResponseCache
from services.gateway.auth import Principal
from services.gateway.pipeline import Pipeline, Reply, RequestContext
from services.gateway.stages import CacheStage
from services.protocol import ChatCompletionRequest, Usage

ANSWER = orjson.dumps({
    "id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 8},
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 16, "total_tokens": 36},
})
USAGE = Usage(prompt_tokens=20, completion_tokens=16, total_tokens=36)
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "Give me one sentence about benchmarks."}],
    "max_tokens": 16, "temperature": 0,
}
PRINCIPAL = Principal(tenant="bench", key_id="static:bench")


class Upstream:
    """The last stage: yields once (the upstream call) and answers the fixed body."""

    name = "upstream"

    async def __call__(self, ctx: RequestContext, call_next: object) -> Reply:
        await asyncio.sleep(0)
        ctx.usage = USAGE
        return Reply(body=ANSWER)


def contexts(n: int, sequence: Callable[[], int]) -> list[RequestContext]:
    """Unique requests as the gateway's route hands them to the pipeline (parsed, and
    their dict already made by the stages before the cache)."""
    made = []
    for _ in range(n):
        body = {**REQUEST, "messages": [REQUEST["messages"][0], {
            "role": "user", "content": f"{REQUEST['messages'][1]['content']} [{sequence()}]"}]}
        request = ChatCompletionRequest.model_validate(body)
        ctx = RequestContext(request_id="req-bench", endpoint="chat.completions",
                             request=request, principal=PRINCIPAL,
                             model_requested=request.model)
        ctx.request_dict  # noqa: B018  # made once per request, before the cache stage
        made.append(ctx)
    return made


async def cpu_per_request(pipeline: Pipeline, ctxs: list[RequestContext], concurrency: int,
                          cache: ResponseCache | None) -> tuple[float, float]:
    """(CPU, wall) seconds per request for ``ctxs`` through ``pipeline``."""
    share = len(ctxs) // concurrency

    async def client(mine: list[RequestContext]) -> None:
        for ctx in mine:
            reply = await pipeline(ctx)
            if ctx.cache_layer not in (None, "MISS") or reply.body != ANSWER:
                raise RuntimeError(f"a unique request was answered from {ctx.cache_layer}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(ctxs[i * share:(i + 1) * share])
                           for i in range(concurrency)))
    if cache is not None:
        await cache.drain()
    done = share * concurrency
    return (time.process_time() - cpu) / done, (time.perf_counter() - wall) / done


async def run(misses: int, concurrency: int, rounds: int) -> None:
    url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-miss-')) / 'store.db'}"
    upgrade_to_head(url)
    l3 = PersistentCache(create_store_engine(url), ttl_s=3600, max_bytes=1 << 34,
                         max_entry_bytes=1 << 20)
    l1 = MemoryCache(max_bytes=1 << 30, ttl_s=300, max_entry_bytes=1 << 20)
    cache = ResponseCache([l1, l3], CacheMetrics(CollectorRegistry()))
    await cache.start()
    with_stage = Pipeline([CacheStage(cache), Upstream()])
    without = Pipeline([Upstream()])
    counter = iter(range(10**12))

    def sequence() -> int:
        return next(counter)

    for number in range(1, rounds + 1):
        cpu, wall = await cpu_per_request(with_stage, contexts(misses, sequence), concurrency,
                                          cache)
        base_cpu, _ = await cpu_per_request(without, contexts(misses, sequence), concurrency,
                                            None)
        print(f"round {number}: {misses // concurrency * concurrency} misses, {concurrency} "
              f"concurrent: CPU {1e6 * cpu:.0f} us per miss with the cache stage, "
              f"{1e6 * base_cpu:.0f} us without, the stage {1e6 * (cpu - base_cpu):.0f} us; "
              f"wall {1e6 * wall:.0f} us per miss", flush=True)
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
