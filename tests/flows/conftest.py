"""Flows read their store from settings: each test gets a migrated SQLite store that the
flow finds through ``OPTENGINE_DATABASE_URL``."""

from __future__ import annotations

import pytest

from migrations import upgrade_to_head
from models import create_store_engine


@pytest.fixture
def store(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    monkeypatch.setenv("OPTENGINE_DATABASE_URL", url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()
