"""The one place the batch engine touches the worker pool (an adapter, on purpose).

Everything the engine needs from the pool is here: how many requests may be in flight
for a model (``capacity``) and a worker for one request, leased through the pool's
admission (``worker_for``). Batch lines go in at low priority, so interactive traffic
sharing the workers is admitted first, and they count toward each worker's cap and
circuit breaker like any other request; they wait out the whole queue timeout rather
than being refused early (nobody is waiting on a batch line's socket).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.errors import InvalidRequest, Overloaded, UpstreamError, UpstreamUnavailable
from services.execution import WorkerPool, WorkerState

PER_WORKER_IN_FLIGHT = 64  # the admission cap's default: one worker's batch


def capacity(pool: WorkerPool, model: str, *, per_worker: int = PER_WORKER_IN_FLIGHT) -> int:
    """Requests to keep in flight for ``model``: ``per_worker`` (within the pool's own
    cap) on each worker that can take requests now."""
    if pool.max_in_flight:
        per_worker = min(per_worker, pool.max_in_flight)
    usable = sum(
        1 for w in pool.workers
        if w.healthy and not w.draining and w.breaker.state != "open" and model in w.models
    )
    return usable * per_worker


@asynccontextmanager
async def worker_for(
    pool: WorkerPool, model: str, *, expected_tokens: int
) -> AsyncIterator[WorkerState]:
    """A worker for one request to ``model``, leased (in flight, ``expected_tokens``
    outstanding) for the duration of the block.

    The block's outcome is the worker's verdict: upstream failures count toward its
    circuit breaker, a request the worker rejected (4xx) does not. A pool that stays at
    its cap past the queue timeout is an unavailable upstream to the engine (retried).
    """
    try:
        lease = await pool.acquire(model, tokens=expected_tokens, priority="low",
                                   fail_fast=False)
    except Overloaded as exc:
        raise UpstreamUnavailable(exc.message) from exc
    try:
        yield lease.worker
    except UpstreamError as exc:
        lease.failed(exc.message)
        raise
    except InvalidRequest:
        lease.succeeded()
        raise
    else:
        lease.succeeded()
    finally:
        lease.release()
