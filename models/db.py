"""Engines and sessions for the metrics store.

SQLite is the embedded default: WAL journal and a busy timeout let the telemetry
writer thread and readers (CLI, dashboard, flows) share one file without "database is
locked" errors. Postgres needs nothing special beyond a pre-ping, so a restarted
server does not hand out dead connections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def create_store_engine(url: str, **kwargs: object) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def insert_ignoring_conflicts(
    conn: Connection, table: Table, rows: list[dict[str, Any]], *, keys: list[str]
) -> None:
    """Bulk insert; rows whose ``keys`` already exist are skipped (replays and resumed
    runs write the same rows again, never twice)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only Postgres and SQLite are supported stores
        raise RuntimeError(f"unsupported metrics store dialect {conn.dialect.name}")
    conn.execute(insert(table).on_conflict_do_nothing(index_elements=keys), rows)
