"""Batched, loss-free writing of request events to the metrics store.

The hot path only calls ``submit()``: a non-blocking put on a bounded queue. A
background task drains the queue in batches and writes each batch with one bulk
``INSERT`` in a worker thread. Nothing is lost:

* store unreachable -> the batch is appended to a local JSONL spill file, and the
  store is retried every ``replay_interval_s``; once it answers, the spill file is
  replayed (inserts ignore ids already present, so a crash mid-replay never duplicates);
* queue full -> the event goes straight to the spill file (counted), never blocking
  the request for longer than one small file append;
* a row the store refuses for its content (a number out of its column's range) ->
  the batch is retried row by row and only that row is set aside, whole and with the
  store's error, in ``telemetry_quarantine`` (or a local file when even that fails).
  Spilling it instead would replay it forever and stop ``request_log`` for everyone;
  strings longer than their column are cut to fit before the insert, so they never
  get that far;
* the writer task itself never stays down: a supervisor restarts it, and ``/readyz``
  reports a writer that is not running;
* shutdown -> the queue is drained before the app exits (bounded: what the writer
  cannot write in time goes to the spill file).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, String, Table, insert, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from models import QuarantinedEvent, RequestLog, insert_ignoring_conflicts
from services.background import cancel_and_wait
from services.telemetry.events import RequestEvent
from services.telemetry.metrics import GatewayMetrics

log = logging.getLogger(__name__)

Pricer = Callable[[RequestEvent], None]
"""Fills ``cost_usd`` and ``baseline_cost_usd`` of an event in place."""

_REQUEST_LOG: Table = RequestLog.__table__  # type: ignore[assignment]
_QUARANTINE: Table = QuarantinedEvent.__table__  # type: ignore[assignment]
_STRING_LIMITS = {
    column.name: column.type.length
    for column in _REQUEST_LOG.columns
    if isinstance(column.type, String) and column.type.length
}


def insert_ignoring_duplicates(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Bulk insert into ``request_log``; rows whose id already exists are skipped."""
    if rows:
        with engine.begin() as conn:
            insert_ignoring_conflicts(conn, _REQUEST_LOG, [fit_to_columns(r) for r in rows],
                                      keys=["id"])


def fit_to_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Cut strings longer than their ``request_log`` column (PostgreSQL refuses them;
    SQLite would keep them and the two stores would disagree)."""
    for name, limit in _STRING_LIMITS.items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > limit:
            row[name] = value[:limit]
    return row


def _store_unavailable(exc: BaseException) -> bool:
    """Errors that say the store cannot take writes now (down, locked, out of
    connections), as opposed to refusing a row's content."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | PoolTimeout | ConnectionError | TimeoutError)


def _event_json(event: RequestEvent) -> bytes:
    """An event as one JSON line; the standard library's encoder takes integers beyond
    64 bits that orjson refuses (they then fail in the store and are quarantined)."""
    data = event.to_json_dict()
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, default=str).encode()


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
        self._stopping = False
        self._last_spill_at: float | None = None
        self.written = 0
        self.spilled = 0
        self.overflowed = 0
        self.quarantined = 0
        self.restarts = 0

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
        self._stopping = False
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")
        self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """Restart the writer if it ever ends while the app runs (``_run`` catches what
        it can; this covers the rest)."""
        if self._stopping or task.cancelled():
            return
        self.restarts += 1
        self._metrics.telemetry_writer_restarts.inc()
        log.error("telemetry writer ended unexpectedly; restarting it",
                  exc_info=task.exception())
        self._spawn()

    async def flush(self) -> None:
        """Wait until every submitted event is in the store or the spill file."""
        await self._queue.join()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drain the queue, then stop. Bounded: events the writer could not write within
        ``timeout_s`` go to the spill file, so shutdown never hangs and loses nothing."""
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.warning("telemetry writer did not drain in %.0f s; spilling the rest",
                        timeout_s)
        self._stopping = True
        await cancel_and_wait(self._task)
        self._task = None
        left = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        if left:
            self._prepare(left)
            self._spill(left)
        await asyncio.to_thread(self.replay_spill)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def store_up(self) -> bool:
        return self._store_up

    @property
    def pending_spill(self) -> bool:
        return self._spill_path.exists() or self._replaying_path.exists()

    @property
    def spill_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self._spill_path, self._replaying_path)
                   if p.exists())

    def spilled_within(self, seconds: float) -> bool:
        """Whether events went to the spill file in the last ``seconds``."""
        return self._last_spill_at is not None and (
            time.monotonic() - self._last_spill_at < seconds)

    # --- background work ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), self._replay_interval_s)
            except TimeoutError:
                if self.pending_spill:
                    try:
                        await asyncio.to_thread(self.replay_spill)
                    except Exception:  # the writer must outlive any replay failure
                        log.exception("replaying the telemetry spill file failed")
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
        unwritten = self._insert(batch)
        if unwritten:
            self._spill(unwritten)
            return
        self._mark_store_up()
        if self.pending_spill:
            self.replay_spill()

    def _insert(self, events: list[RequestEvent]) -> list[RequestEvent]:
        """Insert the events in one statement, else one by one to find those the store
        refuses for their content (quarantined). Returns the events not written because
        the store became unavailable (empty when all are in the store or quarantine)."""
        rows = [e.to_row() for e in events]
        try:
            insert_ignoring_duplicates(self._engine, rows)
            self._count_written(len(rows))
            return []
        except Exception as exc:
            if not self._refused_for_content(exc):
                self._mark_store_down(exc)
                return events
        for index, (event, row) in enumerate(zip(events, rows, strict=True)):
            try:
                insert_ignoring_duplicates(self._engine, [row])
                self._count_written(1)
            except Exception as exc:
                if not self._refused_for_content(exc):
                    self._mark_store_down(exc)
                    return events[index:]
                self._quarantine(event, exc)
        return []

    def _count_written(self, n: int) -> None:
        self.written += n
        self._metrics.telemetry_written.inc(n)

    def _refused_for_content(self, exc: BaseException) -> bool:
        """The store is up and refused what it was sent (asked, not guessed from the
        error's class: drivers report the same faults under different classes)."""
        if _store_unavailable(exc):
            return False
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    def _quarantine(self, event: RequestEvent, exc: BaseException) -> None:
        error = str(exc).split("\n[SQL:", 1)[0][:2000]  # the store's words, not the SQL
        log.error("telemetry event %s refused by the store, quarantined: %s",
                  event.id, error)
        row = {"event_id": str(event.id), "event": _event_json(event).decode(),
               "error": error}
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(_QUARANTINE), [row])
        except Exception:
            log.exception("could not store quarantined event %s; keeping it in %s",
                          event.id, self._quarantine_path)
            with self._spill_lock, self._quarantine_path.open("ab") as fh:
                fh.write(orjson.dumps(row) + b"\n")
        self.quarantined += 1
        self._metrics.telemetry_quarantined.inc()

    @property
    def _quarantine_path(self) -> Path:
        return self._spill_path.with_suffix(".quarantine.jsonl")

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
        data = b"".join(_event_json(e) + b"\n" for e in events)
        with self._spill_lock, self._spill_path.open("ab") as fh:
            fh.write(data)
        self._last_spill_at = time.monotonic()
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
            events = list(_read_spill(self._replaying_path))
            for start in range(0, len(events), self._batch_size):
                # a store that goes away leaves the file in place, to be replayed whole
                # later (ids already written are skipped)
                if self._insert(events[start : start + self._batch_size]):
                    return replayed
            self._replaying_path.unlink()
            self._mark_store_up()
            replayed += len(events)
            log.info("replayed %d spilled telemetry events", len(events))


def _read_spill(path: Path) -> Iterable[RequestEvent]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield RequestEvent.from_json_dict(orjson.loads(line))
            except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                # a torn last line from a crash mid-append; the rest is still good
                log.error("skipping unreadable spill line %d of %s", number, path)
