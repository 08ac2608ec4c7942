"""Claiming and sweeping runs: one claimant at a time, a bounded number of restarts."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from migrations import upgrade_to_head
from models import Batch, create_store_engine
from services.batch import BatchLauncher, store


@pytest.fixture
def setup(make_settings):
    settings = make_settings(batch_max_attempts=2, batch_stale_after_s=30)
    upgrade_to_head(settings.database_url)
    engine = create_store_engine(settings.database_url)
    stored = store.create_file(engine, tenant="t", filename="in.jsonl", purpose="batch",
                               content=b"{}\n")
    batch = store.create_batch(engine, tenant="t", input_file_id=stored.id,
                               endpoint="/v1/completions")
    yield settings, engine, batch.id
    engine.dispose()


def test_a_live_run_cannot_be_claimed_twice(setup) -> None:
    _, engine, batch_id = setup
    assert store.claim_run(engine, batch_id, stale_after_s=30)
    assert not store.claim_run(engine, batch_id, stale_after_s=30)
    assert store.get_batch(engine, batch_id).attempts == 1


def test_sweep_fails_a_batch_after_its_attempts(setup) -> None:
    settings, engine, batch_id = setup
    with engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == batch_id).values(attempts=2))
    assert BatchLauncher(settings, engine).sweep() == []
    batch = store.get_batch(engine, batch_id)
    assert batch.status == "failed" and batch.errors[0]["code"] == "too_many_attempts"
