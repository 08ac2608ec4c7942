"""The steps of a batch run, each a plain function the Prefect flow wraps in a task.

``prepare`` reads the input file, records bad lines as errors and leaves out the lines
already finished (a resumed run); ``analyze`` predicts each line's output length and
orders the lines by length bin; ``execute`` dispatches them and checkpoints every
``CHECKPOINT_S`` (results, priced ``request_log`` rows and the heartbeat, in one
transaction), stopping early when the batch is cancelled or expires; ``finalize``
writes the output and error files in input order and the final status.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models import Batch, StoredFile, session_factory
from services.batch import store
from services.batch.dispatch import Dispatcher, LineOutcome, PlannedLine, plan
from services.batch.lines import BatchLine, LineError, parse_input
from services.batch.predictor import LengthPredictor
from services.batch.records import line_error_record, outcome_record, request_id
from services.costs import PriceCatalog, ThroughputMeter
from services.execution import UpstreamClient, WorkerPool, store_sync
from services.settings import Settings
from services.telemetry import RequestEvent, RequestPricer

log = logging.getLogger(__name__)

CHECKPOINT_S = 0.25
_FINAL_STATUS = {"done": "completed", "expired": "expired", "cancelled": "cancelled"}


@dataclass
class Prepared:
    batch_id: str
    tenant: str
    total: int
    remaining: list[BatchLine]


def prepare(engine: Engine, batch_id: str) -> Prepared | None:
    """The lines still to run, or None when the batch is already over."""
    batch = store.get_batch(engine, batch_id)
    if batch.status in store.TERMINAL:
        return None
    content = store.get_file(engine, batch.input_file_id, tenant=batch.tenant).content
    parsed = parse_input(content, endpoint=batch.endpoint)
    if parsed.total == 0:
        store.set_status(engine, batch_id, status="failed", errors=[
            {"code": "empty_file", "message": "the input file holds no requests", "line": None}])
        return None
    store.checkpoint(engine, batch_id, log_rows=[], results=[
        {"batch_id": batch_id, "line": e.line, "custom_id": e.custom_id, "ok": False,
         "record": line_error_record(batch_id, e)} for e in parsed.errors])
    if batch.status == "validating":
        store.set_status(engine, batch_id, status="in_progress", total=parsed.total)
    done = store.finished_lines(engine, batch_id)
    remaining = [line for line in parsed.lines if line.line not in done]
    log.info("batch %s: %d lines, %d finished, %d to run", batch_id, parsed.total,
             len(done), len(remaining))
    return Prepared(batch_id, batch.tenant, parsed.total, remaining)


def analyze(engine: Engine, lines: list[BatchLine]) -> list[PlannedLine]:
    # with ignore_eos a line's length is its max_tokens: nothing to learn for it
    unknown = {line.model for line in lines if not line.body.get("ignore_eos")}
    predictor = LengthPredictor.train(engine, unknown)
    return plan(lines, predictor.predict(lines))


class _Checkpointer:
    """Buffers finished lines and writes them to the store every ``CHECKPOINT_S``."""

    def __init__(self, engine: Engine, prepared: Prepared, pricer: RequestPricer) -> None:
        self._engine = engine
        self._prepared = prepared
        self._pricer = pricer
        self._pending: list[LineOutcome] = []
        self.stop_reason: str | None = None

    def add(self, outcome: LineOutcome) -> None:
        self._pending.append(outcome)

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        batch_id = self._prepared.batch_id
        results = [{"batch_id": batch_id, "line": o.line.line, "custom_id": o.line.custom_id,
                    "ok": o.ok, "record": outcome_record(batch_id, o)} for o in batch]
        rows = [self._log_row(o) for o in batch]
        try:
            control = await asyncio.to_thread(store.checkpoint, self._engine, batch_id,
                                              results=results, log_rows=rows)
        except BaseException:
            self._pending[:0] = batch  # kept for the next checkpoint, never dropped
            raise
        self.stop_reason = self.stop_reason or control.stop_reason

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            try:
                await self.flush()
            except Exception:  # the store may be away for a moment; lines wait in memory
                log.warning("batch checkpoint failed; will retry", exc_info=True)

    def _log_row(self, outcome: LineOutcome) -> dict[str, Any]:
        usage = (outcome.body.get("usage") or {}) if outcome.ok else {}
        details = usage.get("prompt_tokens_details") or {}
        body = outcome.line.body
        prompt = body.get("messages", body.get("prompt"))
        event = RequestEvent(
            id=request_id(self._prepared.batch_id, outcome.line.line),
            created_at=outcome.started_at,
            tenant=self._prepared.tenant,
            endpoint=outcome.line.endpoint,
            status_code=outcome.status_code,
            model_requested=outcome.line.model,
            model_served=outcome.line.model if outcome.worker else None,
            worker=outcome.worker,
            route_reason=f"batch:{self._prepared.batch_id}",
            error_type=None if outcome.ok else (outcome.body.get("error") or {}).get("type"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            max_tokens=body.get("max_tokens"),
            cached_tokens=details.get("cached_tokens"),
            latency_ms=outcome.latency_ms,
            upstream_ms=outcome.latency_ms,
            prompt_hash=hashlib.sha256(orjson.dumps(prompt)).hexdigest(),
        )
        try:
            self._pricer(event)
        except Exception:  # an unpriced model must not lose the line
            log.warning("could not price %s", event.model_served, exc_info=True)
        return event.to_row()


async def execute(settings: Settings, engine: Engine, prepared: Prepared,
                  planned: list[PlannedLine]) -> str:
    """Run the planned lines; returns why it ended: done, cancelled or expired."""
    catalog = PriceCatalog.from_settings(settings)
    client = UpstreamClient(connect_timeout_s=settings.upstream_connect_timeout_s,
                            read_timeout_s=settings.upstream_read_timeout_s,
                            max_connections=settings.upstream_max_connections)
    pool = WorkerPool(client, health_interval_s=settings.health_interval_s,
                      store_sync=store_sync(session_factory(engine)),
                      on_models=lambda models: [catalog.register_self_hosted(m) for m in models])
    checkpointer = _Checkpointer(engine, prepared, RequestPricer(catalog, ThroughputMeter(catalog)))
    await checkpointer.flush()  # heartbeat, and learn about a cancel or expiry before starting
    if checkpointer.stop_reason is None and planned:
        await pool.start(settings.workers)
        loop_task = asyncio.create_task(checkpointer.run(), name="batch-checkpoint")
        started = time.perf_counter()
        try:
            await Dispatcher(pool, client, per_worker=settings.batch_per_worker_in_flight).run(
                planned, checkpointer.add, stop=lambda: checkpointer.stop_reason is not None)
        finally:
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
            await pool.stop()
            await client.aclose()
        await checkpointer.flush()
        log.info("batch %s: %d lines in %.1f s", prepared.batch_id, len(planned),
                 time.perf_counter() - started)
    return checkpointer.stop_reason or "done"


def finalize(engine: Engine, batch_id: str, reason: str) -> Batch:
    """Write the output and error files (input order) and the final status, atomically."""
    batch = store.get_batch(engine, batch_id)
    if batch.status in store.TERMINAL:
        return batch
    results = store.results_in_order(engine, batch_id)
    output = [record for _, ok, record in results if ok]
    errors = [(line, record) for line, ok, record in results if not ok]
    unfinished = _unfinished(engine, batch, {line for line, _, _ in results}, reason)
    if reason == "done" and unfinished:  # never reached: dispatch records every line
        raise RuntimeError(f"batch {batch_id}: {len(unfinished)} lines have no result; "
                           "rerun the flow to resume them")
    errors = sorted(errors + unfinished)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        output_file = _result_file(batch, "output", output)
        error_file = _result_file(batch, "error", [r for _, r in errors]) if errors else None
        session.add_all([f for f in (output_file, error_file) if f is not None])
        session.flush()
        stored = session.get(Batch, batch_id)
        assert stored is not None
        stored.status = _FINAL_STATUS[reason]
        setattr(stored, f"{stored.status}_at", store.now())
        stored.output_file_id = output_file.id
        stored.error_file_id = error_file.id if error_file else None
    return store.get_batch(engine, batch_id)


def _unfinished(engine: Engine, batch: Batch, finished: set[int],
                reason: str) -> list[tuple[int, str]]:
    content = store.get_file(engine, batch.input_file_id, tenant=batch.tenant).content
    parsed = parse_input(content, endpoint=batch.endpoint)
    message = f"the batch was {reason} before this request ran"
    return [(line.line, line_error_record(batch.id, LineError(
        line.line, line.custom_id, f"batch_{reason}", message)))
        for line in parsed.lines if line.line not in finished]


def _result_file(batch: Batch, kind: str, records: list[str]) -> StoredFile:
    content = "".join(record + "\n" for record in records).encode()
    return store.new_file(tenant=batch.tenant, filename=f"{batch.id}_{kind}.jsonl",
                          purpose="batch_output", content=content)
