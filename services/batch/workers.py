"""The one place the batch engine touches the worker pool (an adapter, on purpose).

Everything the engine needs from the pool is here: how many requests may be in flight
for a model (``capacity``) and a worker for one request, counted as in flight while it
runs (``worker_for``). When the pool grows an admission API (``await pool.acquire(model,
tokens=..., priority=...)``), only this module changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.execution import WorkerPool, WorkerState

PER_WORKER_IN_FLIGHT = 64  # vLLM's default max batch: enough to keep each batch full


def capacity(pool: WorkerPool, model: str, *, per_worker: int = PER_WORKER_IN_FLIGHT) -> int:
    """Requests to keep in flight for ``model``: ``per_worker`` per healthy worker."""
    healthy = sum(1 for w in pool.workers if w.healthy and model in w.models)
    return healthy * per_worker


@asynccontextmanager
async def worker_for(
    pool: WorkerPool, model: str, *, expected_tokens: int, exclude: tuple[WorkerState, ...] = ()
) -> AsyncIterator[WorkerState]:
    """A worker for one request to ``model``, leased for the duration of the block.

    ``expected_tokens`` is for a token-aware pool (least outstanding tokens); the current
    pool balances on requests in flight and ignores it. Batch traffic uses low priority
    once the pool has priority classes.
    """
    del expected_tokens
    worker = pool.choose(model, exclude=exclude)
    with pool.lease(worker):
        yield worker


def mark_failed(pool: WorkerPool, worker: WorkerState, reason: str) -> None:
    pool.mark_failed(worker, reason)
