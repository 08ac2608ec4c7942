"""The semantic index, persisted in the store and followed by every replica.

Each replica loads all live rows on start and then, every few seconds, the rows written
since (by any replica), so a question cached through one gateway is matched through all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from models import SemanticEntry
from services.background import cancel_and_wait, now_and_every
from services.caching.semantic import SemanticCache, SemanticRow

log = logging.getLogger(__name__)

_SKEW = timedelta(seconds=60)  # clock skew between replicas
_READ_CHUNK = 500  # digests per IN (...) when reading the rows a replica lacks
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

    def rows_since(self, since: datetime | None, *,
                   known: Callable[[str], bool] | None = None) -> list[SemanticRow]:
        """Live rows created since ``since`` (less the clock-skew margin), all of them when
        None. ``known`` says which digests the caller holds already: those rows are not
        read at all. A replica's own writes come back in every refresh for the margin's
        60 s (at 250 misses/s, 15,000 rows every 5 s), so the digests are read first and
        only the rows it lacks after."""
        now = datetime.now(UTC)
        live = (SemanticEntry.expires_at.is_(None)) | (SemanticEntry.expires_at > now)
        recent = live if since is None else live & (SemanticEntry.created_at >= since - _SKEW)
        with self._engine.connect() as conn:
            if known is None:
                rows = list(conn.execute(select(SemanticEntry).where(recent)).all())
            else:
                digests = conn.execute(select(SemanticEntry.digest).where(recent)).scalars()
                wanted = [d for d in digests if not known(d)]
                rows = []
                for start in range(0, len(wanted), _READ_CHUNK):
                    chunk = wanted[start : start + _READ_CHUNK]
                    rows += conn.execute(select(SemanticEntry).where(
                        SemanticEntry.digest.in_(chunk))).all()
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
        loaded = self.cache.load(self.store.rows_since(self._since, known=self.cache.holds))
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
