"""Background tasks of long-lived services (health probes, key refresh, telemetry)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


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
