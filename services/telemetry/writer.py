"""Batched, loss-free writing of request events to the metrics store.

The hot path only calls ``submit()``: a non-blocking put on a bounded queue. A
background task drains the queue in batches and writes each batch with one bulk
``INSERT`` in a worker thread. Nothing is lost:

* store unreachable -> the batch is appended to a local JSONL spill file, and the
  store is retried every ``replay_interval_s``; once it answers, the spill file is
  replayed (inserts ignore ids already present, so a crash mid-replay never duplicates);
* queue full -> the event goes straight to the spill file (counted), never blocking
  the request for longer than one small file append;
* shutdown -> the queue is drained before the app exits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from models import RequestLog, insert_ignoring_conflicts
from services.background import cancel_and_wait
from services.telemetry.events import RequestEvent
from services.telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)

Pricer = Callable[[RequestEvent], None]
"""Fills ``cost_usd`` and ``baseline_cost_usd`` of an event in place."""

_REQUEST_LOG: Table = RequestLog.__table__  # type: ignore[assignment]


def insert_ignoring_duplicates(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Bulk insert into ``request_log``; rows whose id already exists are skipped."""
    if rows:
        with engine.begin() as conn:
            insert_ignoring_conflicts(conn, _REQUEST_LOG, rows, keys=["id"])


class TelemetryWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        spill_path: Path,
        metrics: GatewayMetrics,
        pricer: Pricer | None = None,
        queue_size: int = 10_000,
        batch_size: int = 500,
        replay_interval_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._spill_path = spill_path
        self._replaying_path = spill_path.with_suffix(".replaying.jsonl")
        self._metrics = metrics
        self._pricer = pricer
        self._queue: asyncio.Queue[RequestEvent] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._replay_interval_s = replay_interval_s
        self._spill_lock = threading.Lock()
        self._store_up = True
        self._next_store_try = 0.0
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.spilled = 0
        self.overflowed = 0

    # --- hot path -------------------------------------------------------------------

    def submit(self, event: RequestEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed += 1
            self._metrics.telemetry_overflow.inc()
            self._prepare([event])
            self._spill([event])

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._spill_path.parent.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def flush(self) -> None:
        """Wait until every submitted event is in the store or the spill file."""
        await self._queue.join()

    async def stop(self) -> None:
        await self.flush()
        await cancel_and_wait(self._task)
        self._task = None
        await asyncio.to_thread(self.replay_spill)

    @property
    def store_up(self) -> bool:
        return self._store_up

    @property
    def pending_spill(self) -> bool:
        return self._spill_path.exists() or self._replaying_path.exists()

    # --- background work ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), self._replay_interval_s)
            except TimeoutError:
                if self.pending_spill:
                    await asyncio.to_thread(self.replay_spill)
                continue
            batch = [first]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._metrics.queue_depth.set(self._queue.qsize())
            try:
                await asyncio.to_thread(self._write_batch, batch)
            except Exception:  # never let the writer die: spill what could not be written
                log.exception("telemetry batch failed; spilling %d events", len(batch))
                self._spill(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _prepare(self, events: Iterable[RequestEvent]) -> None:
        for event in events:
            if self._pricer is not None and event.cost_usd is None:
                try:
                    self._pricer(event)
                except Exception:  # an unpriced model must not lose the event
                    log.warning("could not price %s", event.model_served, exc_info=True)
            self._metrics.observe(event)

    def _write_batch(self, batch: list[RequestEvent]) -> None:
        self._prepare(batch)
        if not self._store_up and time.monotonic() < self._next_store_try:
            self._spill(batch)
            return
        try:
            insert_ignoring_duplicates(self._engine, [e.to_row() for e in batch])
        except SQLAlchemyError as exc:
            self._mark_store_down(exc)
            self._spill(batch)
            return
        self._mark_store_up()
        self.written += len(batch)
        self._metrics.telemetry_written.inc(len(batch))
        if self.pending_spill:
            self.replay_spill()

    def _mark_store_down(self, exc: Exception) -> None:
        if self._store_up:
            log.warning("metrics store unreachable, spilling to %s: %s", self._spill_path, exc)
        self._store_up = False
        self._next_store_try = time.monotonic() + self._replay_interval_s
        self._metrics.store_up.set(0)

    def _mark_store_up(self) -> None:
        if not self._store_up:
            log.info("metrics store reachable again")
        self._store_up = True
        self._metrics.store_up.set(1)

    def _spill(self, events: list[RequestEvent]) -> None:
        data = b"".join(orjson.dumps(e.to_json_dict()) + b"\n" for e in events)
        with self._spill_lock, self._spill_path.open("ab") as fh:
            fh.write(data)
        self.spilled += len(events)
        self._metrics.telemetry_spilled.inc(len(events))

    def replay_spill(self) -> int:
        """Insert spilled events into the store; returns how many were replayed.

        The spill file is first renamed, so new spills go to a fresh file while the old
        one is replayed; the renamed file is removed only after its rows are committed.
        """
        replayed = 0
        while True:
            with self._spill_lock:
                if not self._replaying_path.exists():
                    if not self._spill_path.exists():
                        return replayed
                    self._spill_path.rename(self._replaying_path)
            rows = list(_read_spill(self._replaying_path))
            try:
                for start in range(0, len(rows), self._batch_size):
                    insert_ignoring_duplicates(self._engine, rows[start : start + self._batch_size])
            except SQLAlchemyError as exc:
                self._mark_store_down(exc)
                return replayed
            self._replaying_path.unlink()
            self._mark_store_up()
            replayed += len(rows)
            self.written += len(rows)
            self._metrics.telemetry_written.inc(len(rows))
            log.info("replayed %d spilled telemetry events", len(rows))


def _read_spill(path: Path) -> Iterable[dict[str, Any]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield RequestEvent.from_json_dict(orjson.loads(line)).to_row()
            except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                # a torn last line from a crash mid-append; the rest is still good
                log.error("skipping unreadable spill line %d of %s", number, path)
