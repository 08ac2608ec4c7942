"""Files, batches and checkpointed results in the metrics store.

Everything a batch run needs to survive a crash lives here: a finished line is written
(with its priced ``request_log`` row) in the same transaction that refreshes the run's
heartbeat, both keyed so a second write of the same line is a no-op. So a run can be
killed at any moment and a new one picks up exactly the lines that are not in the store.
Every lookup takes the tenant: another tenant's file or batch does not exist (404).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Table, func, select, update
from sqlalchemy.orm import Session

from models import Batch, BatchResult, RequestLog, StoredFile, insert_ignoring_conflicts
from services.batch.lines import ENDPOINTS
from services.errors import InvalidRequest, NotFound

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
_RESULTS: Table = BatchResult.__table__  # type: ignore[assignment]
_REQUEST_LOG: Table = RequestLog.__table__  # type: ignore[assignment]
_WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite drops the zone


def parse_window(window: str) -> timedelta:
    """``24h`` (OpenAI's only value), or any ``<n>s|m|h|d`` up to 7 days."""
    match = _WINDOW.match(window)
    if not match:
        raise InvalidRequest("completion_window must look like '24h'", param="completion_window")
    seconds = int(match[1]) * _UNITS[match[2]]
    if seconds > 7 * 86400:
        raise InvalidRequest("completion_window may be at most 7 days", param="completion_window")
    return timedelta(seconds=seconds)


# --- files --------------------------------------------------------------------------


def new_file(*, tenant: str, filename: str, purpose: str, content: bytes) -> StoredFile:
    """A file row, not yet added to a session."""
    return StoredFile(id=f"file-{os.urandom(12).hex()}", tenant=tenant, purpose=purpose,
                      filename=filename, bytes=len(content), content=content, created_at=now())


def create_file(engine: Engine, *, tenant: str, filename: str, purpose: str,
                content: bytes) -> StoredFile:
    stored = new_file(tenant=tenant, filename=filename, purpose=purpose, content=content)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(stored)
    return stored


def get_file(engine: Engine, file_id: str, *, tenant: str) -> StoredFile:
    with Session(engine) as session:
        stored = session.get(StoredFile, file_id)
    if stored is None or stored.tenant != tenant:
        raise NotFound(f"No such file: '{file_id}'", param="file_id")
    return stored


def list_files(engine: Engine, *, tenant: str, limit: int = 100) -> list[StoredFile]:
    query = (select(StoredFile).where(StoredFile.tenant == tenant)
             .order_by(StoredFile.created_at.desc()).limit(limit))
    with Session(engine) as session:
        return list(session.scalars(query))


# --- batches ------------------------------------------------------------------------


def create_batch(engine: Engine, *, tenant: str, input_file_id: str, endpoint: str,
                 completion_window: str = "24h", metadata: dict[str, Any] | None = None) -> Batch:
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(sorted(ENDPOINTS))}",
                             param="endpoint")
    window = parse_window(completion_window)
    stored = get_file(engine, input_file_id, tenant=tenant)
    if stored.purpose != "batch":
        raise InvalidRequest(f"file {input_file_id} has purpose '{stored.purpose}', not 'batch'",
                             param="input_file_id")
    started = now()
    batch = Batch(id=f"batch_{os.urandom(12).hex()}", tenant=tenant, endpoint=endpoint,
                  input_file_id=input_file_id, completion_window=completion_window,
                  status="validating", batch_metadata=metadata, created_at=started,
                  expires_at=started + window, total=0, completed=0, failed=0, attempts=0)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add(batch)
    return batch


def get_batch(engine: Engine, batch_id: str, *, tenant: str | None = None) -> Batch:
    """The batch; ``tenant=None`` only for the flow, which runs on behalf of its owner."""
    with Session(engine) as session:
        batch = session.get(Batch, batch_id)
    if batch is None or (tenant is not None and batch.tenant != tenant):
        raise NotFound(f"No such batch: '{batch_id}'", param="batch_id")
    return batch


def list_batches(engine: Engine, *, tenant: str, limit: int = 20,
                 after: str | None = None) -> list[Batch]:
    query = select(Batch).where(Batch.tenant == tenant)
    if after is not None:
        query = query.where(Batch.created_at < get_batch(engine, after, tenant=tenant).created_at)
    query = query.order_by(Batch.created_at.desc()).limit(limit)
    with Session(engine) as session:
        return list(session.scalars(query))


def request_cancel(engine: Engine, batch_id: str, *, tenant: str) -> Batch:
    """Ask a batch to stop: the running flow stops starting lines and finalizes it."""
    batch = get_batch(engine, batch_id, tenant=tenant)
    if batch.status in TERMINAL:
        raise InvalidRequest(f"batch {batch_id} is already {batch.status}", param="batch_id")
    with engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == batch_id, Batch.status.in_(ACTIVE))
                     .values(status="cancelling", cancelling_at=now()))
    return get_batch(engine, batch_id, tenant=tenant)


def set_status(engine: Engine, batch_id: str, *, status: str, **values: Any) -> None:
    stamp = {f"{status}_at": now()} if hasattr(Batch, f"{status}_at") else {}
    with engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == batch_id)
                     .values(status=status, **stamp, **values))


def claim_run(engine: Engine, batch_id: str, *, stale_after_s: float) -> bool:
    """Take over an active batch whose run has not beaten for ``stale_after_s`` (or never
    started): one atomic update, so of two gateways sweeping at once only one wins."""
    started = now()
    stale = started - timedelta(seconds=stale_after_s)
    with engine.begin() as conn:
        claimed = conn.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status.in_(ACTIVE),
                   (Batch.heartbeat_at.is_(None)) | (Batch.heartbeat_at < stale))
            .values(heartbeat_at=started, attempts=Batch.attempts + 1)
        ).rowcount
    return bool(claimed)


def stale_batches(engine: Engine, *, stale_after_s: float) -> list[Batch]:
    stale = now() - timedelta(seconds=stale_after_s)
    query = select(Batch).where(
        Batch.status.in_(ACTIVE), (Batch.heartbeat_at.is_(None)) | (Batch.heartbeat_at < stale))
    with Session(engine) as session:
        return list(session.scalars(query))


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Control:
    """What a running flow learns at each checkpoint: should it stop, and why."""

    status: str
    expires_at: datetime

    @property
    def stop_reason(self) -> str | None:
        if self.status == "cancelling":
            return "cancelled"
        if _aware(self.expires_at) <= now():
            return "expired"
        return None


def checkpoint(engine: Engine, batch_id: str, *, results: list[dict[str, Any]],
               log_rows: list[dict[str, Any]]) -> Control:
    """Store finished lines and their request_log rows, refresh counts and heartbeat."""
    with engine.begin() as conn:
        insert_ignoring_conflicts(conn, _RESULTS, results, keys=["batch_id", "line"])
        insert_ignoring_conflicts(conn, _REQUEST_LOG, log_rows, keys=["id"])
        counts = dict(conn.execute(
            select(BatchResult.ok, func.count()).where(BatchResult.batch_id == batch_id)
            .group_by(BatchResult.ok)).all())
        conn.execute(update(Batch).where(Batch.id == batch_id).values(
            completed=counts.get(True, 0), failed=counts.get(False, 0), heartbeat_at=now()))
        status, expires_at = conn.execute(
            select(Batch.status, Batch.expires_at).where(Batch.id == batch_id)).one()
    return Control(status, expires_at)


def finished_lines(engine: Engine, batch_id: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id)))


def results_in_order(engine: Engine, batch_id: str) -> list[tuple[int, bool, str]]:
    query = (select(BatchResult.line, BatchResult.ok, BatchResult.record)
             .where(BatchResult.batch_id == batch_id).order_by(BatchResult.line))
    with engine.connect() as conn:
        return [(line, ok, record) for line, ok, record in conn.execute(query)]
