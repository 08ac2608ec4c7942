"""Running a batch's lines through the worker pool: continuous, longest first.

vLLM batches continuously inside each worker, so the way to keep a worker's batch full
is to keep enough requests in flight: ``capacity`` per healthy worker (64 by default),
refilled the moment one finishes (no static batches that wait for their slowest line).
Lines go out by length bin, longest predicted first (multi-bin batching): similar
lengths decode side by side, and the long ones do not start last and leave a long tail
with idle workers. A failure of the upstream (connect, 5xx, timeout) is retried with
backoff, since a batch request is idempotent and nothing is recorded until it finishes;
a 4xx is the line's own fault and is recorded as its error at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.batch import workers
from services.batch.lines import BatchLine
from services.batch.predictor import length_bin
from services.errors import EngineError, UpstreamError
from services.execution import UpstreamClient, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedLine:
    line: BatchLine
    predicted_tokens: int

    @property
    def bin(self) -> int:
        return length_bin(self.predicted_tokens)


def plan(lines: list[BatchLine], predictions: list[int]) -> list[PlannedLine]:
    """Dispatch order: longest length bin first, input order within a bin."""
    planned = [PlannedLine(line, tokens) for line, tokens in zip(lines, predictions, strict=True)]
    return sorted(planned, key=lambda p: (-p.bin, p.line.line))


@dataclass(slots=True)
class LineOutcome:
    line: BatchLine
    status_code: int
    body: dict[str, Any]  # the upstream's response, or an OpenAI error body
    started_at: datetime
    latency_ms: float
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code == 200


OnDone = Callable[[LineOutcome], None]


class Dispatcher:
    def __init__(
        self,
        pool: WorkerPool,
        client: UpstreamClient,
        *,
        per_worker: int = workers.PER_WORKER_IN_FLIGHT,
        retries: int = 3,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._client = client
        self._per_worker = per_worker
        self._retries = retries
        self._retry_backoff_s = retry_backoff_s

    async def run(
        self, planned: list[PlannedLine], on_done: OnDone, *, stop: Callable[[], bool]
    ) -> None:
        """Send every line (until ``stop()``), calling ``on_done`` as each finishes.

        Lines of each model are kept ``capacity`` deep in flight; once ``stop()`` is
        true no new line starts and the ones in flight are awaited.
        """
        queues: dict[str, deque[PlannedLine]] = {}
        for item in planned:
            queues.setdefault(item.line.model, deque()).append(item)
        in_flight: dict[str, int] = dict.fromkeys(queues, 0)
        tasks: dict[asyncio.Task[LineOutcome], str] = {}
        while tasks or (any(queues.values()) and not stop()):
            if not stop():
                for model, queue in queues.items():
                    room = self._capacity(model) - in_flight[model]
                    for _ in range(min(room, len(queue))):
                        task = asyncio.create_task(self._send(queue.popleft()))
                        tasks[task] = model
                        in_flight[model] += 1
            if not tasks:  # nothing can start (no capacity) and nothing runs: wait a bit
                await asyncio.sleep(0.25)
                continue
            done, _ = await asyncio.wait(tasks, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                in_flight[tasks.pop(task)] -= 1
                on_done(task.result())

    def _capacity(self, model: str) -> int:
        # at least one line goes out even with no healthy worker, so it can fail (and be
        # retried, then recorded) instead of the batch waiting forever
        return max(1, workers.capacity(self._pool, model, per_worker=self._per_worker))

    async def _send(self, item: PlannedLine) -> LineOutcome:
        line = item.line
        payload = orjson.dumps(line.body)
        started_at, start = datetime.now(UTC), time.perf_counter()
        worker_url: str | None = None
        for attempt in range(self._retries + 1):
            try:
                async with workers.worker_for(
                    self._pool, line.model, expected_tokens=item.predicted_tokens
                ) as worker:
                    worker_url = worker.url
                    body = await self._client.post_json(worker.url, line.url, payload)
            except UpstreamError as exc:
                if attempt < self._retries:
                    log.info("line %d: %s; retrying", line.line, exc.message)
                    await asyncio.sleep(self._retry_backoff_s * 2**attempt)
                    continue
                return self._outcome(line, exc.status_code, exc.body(), started_at, start,
                                     worker_url)
            except EngineError as exc:  # the line's own fault (400) or an unknown model
                return self._outcome(line, exc.status_code, exc.body(), started_at, start,
                                     worker_url)
            return self._outcome(line, 200, orjson.loads(body), started_at, start, worker_url)
        raise AssertionError("unreachable")

    @staticmethod
    def _outcome(line: BatchLine, status: int, body: dict[str, Any], started_at: datetime,
                 start: float, worker: str | None) -> LineOutcome:
        return LineOutcome(line, status, body, started_at, (time.perf_counter() - start) * 1000,
                           worker)
