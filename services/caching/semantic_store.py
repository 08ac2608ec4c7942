"""The semantic index, persisted in the store and followed by every replica.

Each replica loads all live rows on start and then, every few seconds, the rows written
since (by any replica), so a question cached through one gateway is matched through all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from models import SemanticEntry
from services.background import cancel_and_wait, now_and_every
from services.caching.semantic import SemanticCache, SemanticRow

log = logging.getLogger(__name__)

_SKEW = timedelta(seconds=60)  # clock skew between replicas
_UPDATED = ("namespace", "context_hash", "text", "embedding", "embedding_model", "created_at",
            "expires_at")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SemanticStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save(self, row: SemanticRow) -> None:
        self.save_many([row])

    def save_many(self, rows: Sequence[SemanticRow]) -> None:
        """Upsert rows in one transaction (one executemany): the gateway batches the
        entries its misses index, since a transaction per entry cost about 1 ms of CPU."""
        if not rows:
            return
        if self._engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        statement = insert(SemanticEntry)
        statement = statement.on_conflict_do_update(
            index_elements=["digest"],
            set_={c: statement.excluded[c] for c in _UPDATED},
        )
        values = [{
            "digest": row.digest,
            "namespace": row.namespace,
            "context_hash": row.context_hash,
            "text": row.text,
            "embedding": row.embedding,
            "embedding_model": row.embedding_model,
            "created_at": datetime.fromtimestamp(row.created_at, UTC),
            "expires_at": (datetime.fromtimestamp(row.expires_at, UTC)
                           if row.expires_at is not None else None),
        } for row in {r.digest: r for r in rows}.values()]  # last write of a digest wins
        with self._engine.begin() as conn:
            conn.execute(statement, values)

    def rows_since(self, since: datetime | None) -> list[SemanticRow]:
        now = datetime.now(UTC)
        query = select(SemanticEntry).where(
            (SemanticEntry.expires_at.is_(None)) | (SemanticEntry.expires_at > now)
        )
        if since is not None:
            query = query.where(SemanticEntry.created_at >= since - _SKEW)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            SemanticRow(
                namespace=r.namespace, context_hash=r.context_hash, digest=r.digest,
                text=r.text, embedding=r.embedding,
                created_at=_aware(r.created_at).timestamp(),
                expires_at=_aware(r.expires_at).timestamp() if r.expires_at else None,
                embedding_model=r.embedding_model,
            )
            for r in rows
        ]


class SemanticSync:
    """Loads the persisted index on start and follows other replicas' writes."""

    def __init__(self, cache: SemanticCache, store: SemanticStore, *, interval_s: float = 5.0
                 ) -> None:
        self.cache = cache
        self.store = store
        self._interval_s = interval_s
        self._since: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    def sync_once(self) -> int:
        started = datetime.now(UTC)
        loaded = self.cache.load(self.store.rows_since(self._since))
        if self._since is None:
            log.info("semantic cache: %d entries loaded", loaded)
        self._since = started
        return loaded

    async def start(self) -> None:
        self._task = await now_and_every(
            self._interval_s, self.sync_once, name="semantic-sync",
            failure="could not sync the semantic index from the store",
        )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.cache.close()  # the embedding batcher's thread
