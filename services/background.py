"""Background tasks of long-lived services (health probes, key refresh, telemetry,
writes behind the request path)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class BackgroundTasks:
    """Tasks an owner starts and does not await on the request path (cache fills, writes
    behind): each is referenced until it ends (the event loop keeps only weak references,
    so an unreferenced task can be collected mid-flight) and ``drain`` waits for them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every task has ended, those spawned meanwhile included (a write
        behind starts its next batch's task as one ends); the tasks log their own
        failures."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def drain_within(self, timeout_s: float) -> bool:
        """``drain`` for at most ``timeout_s`` (shutdown): past it the tasks still running
        are cancelled and waited for, and False is returned."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.drain()
            return True
        except TimeoutError:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return False


class WriteBehind(Generic[T]):
    """Items queued on the event loop and handed to ``write`` in batches of at most
    ``batch`` by one background task (started through ``spawn`` when the queue was idle):
    whatever queued while the last batch was written is the next batch. An item stays
    queued (counted by ``len``) until its batch's ``write`` has returned, so a writer
    cancelled mid-batch (shutdown) leaves the batch counted as unwritten. Past
    ``max_pending`` unwritten items ``put`` refuses, so a store that cannot keep up costs
    memory up to a bound, never without one. ``write`` handles its own failures."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]],
                 spawn: Callable[[Coroutine[object, object, None]], object], *,
                 batch: int = 256, max_pending: int = 20_000) -> None:
        self._write, self._spawn = write, spawn
        self.batch, self.max_pending = batch, max_pending
        self._pending: list[T] = []
        self._running = False

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, item: T) -> bool:
        """Queue ``item``; False (nothing queued) when ``max_pending`` are unwritten."""
        if len(self._pending) >= self.max_pending:
            return False
        self._pending.append(item)
        if not self._running:
            self._running = True
            self._spawn(self._run())
        return True

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self.batch]
                await self._write(batch)
                del self._pending[:len(batch)]  # put only appends: these are the batch
        finally:
            self._running = False


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Stop a background loop and wait until it has really ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def every(interval_s: float, blocking: Callable[[], object], *, name: str,
          failure: str) -> asyncio.Task[None]:
    """Run ``blocking`` in a worker thread every ``interval_s`` until cancelled; a failure
    is logged with ``failure`` and the loop goes on (the store coming back heals it)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(blocking)
            except Exception:
                log.warning(failure, exc_info=True)

    return asyncio.create_task(loop(), name=name)


async def now_and_every(interval_s: float, blocking: Callable[[], object], *, name: str,
                        failure: str) -> asyncio.Task[None]:
    """Run ``blocking`` once before returning (a service starts with its data loaded when
    the store is there; a failure is logged, not raised), then as ``every`` does."""
    try:
        await asyncio.to_thread(blocking)
    except Exception:
        log.warning(failure, exc_info=True)
    return every(interval_s, blocking, name=name, failure=failure)
