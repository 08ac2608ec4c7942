"""Worker registration shared through the metrics store's ``workers`` table.

A worker registered with one gateway replica (or by ``optengine worker``) is written
here; every replica's health loop reads the table, so all replicas route to the same
workers, and writes back what its probes saw.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Worker
from services.execution.pool import WorkerState


def register_worker(
    sessions: sessionmaker[Session],
    url: str,
    *,
    source: str = "registered",
    models: list[str] | None = None,
    pid: int | None = None,
    gpu_count: int = 0,
) -> None:
    url = url.rstrip("/").removesuffix("/v1")
    with sessions.begin() as session:
        row = session.scalar(select(Worker).where(Worker.url == url))
        if row is None:
            row = Worker(url=url)
            session.add(row)
        row.source = source
        row.models = models or []
        row.pid = pid
        row.gpu_count = gpu_count
        row.registered_at = datetime.now(UTC)
        row.deregistered_at = None


def deregister_worker(sessions: sessionmaker[Session], url: str) -> bool:
    url = url.rstrip("/").removesuffix("/v1")
    with sessions.begin() as session:
        row = session.scalar(select(Worker).where(Worker.url == url))
        if row is None or row.deregistered_at is not None:
            return False
        row.deregistered_at = datetime.now(UTC)
        row.healthy = False
        return True


def _sync(sessions: sessionmaker[Session], seen: list[WorkerState]) -> dict[str, str]:
    now = datetime.now(UTC)
    by_url = {w.url: w for w in seen}
    registered: dict[str, str] = {}
    with sessions.begin() as session:
        for row in session.scalars(select(Worker)):
            state = by_url.get(row.url)
            if row.deregistered_at is None:
                registered[row.url] = row.source
            if state is not None and state.last_probe_at is not None:
                row.healthy = state.healthy
                row.models = sorted(state.models)
                if state.healthy:
                    row.last_seen_at = now
    return registered


def store_sync(sessions: sessionmaker[Session]):  # type: ignore[no-untyped-def]
    """A ``StoreSync`` for ``WorkerPool`` that runs the blocking store work in a thread."""

    async def sync(seen: list[WorkerState]) -> dict[str, str]:
        return await asyncio.to_thread(_sync, sessions, seen)

    return sync
