"""A seeded SQLite store per test, and one seeded store for the browser session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from migrations import upgrade_to_head
from models import create_store_engine
from tests.dashboards.seed import Seeded, seed


@pytest.fixture
def seeded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[tuple[str, Engine, Seeded]]:
    """A migrated, seeded store that the dashboard finds through OPTENGINE_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    engine = create_store_engine(url)
    seeded = seed(engine)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", url)
    monkeypatch.delenv("OPTENGINE_DASHBOARD_DATABASE_URL", raising=False)
    yield url, engine, seeded
    engine.dispose()
