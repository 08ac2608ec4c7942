"""The telemetry writer loses nothing: store outages spill to disk and are replayed."""

from __future__ import annotations

import time
import uuid

import openai
import pytest
from sqlalchemy import func, select

from migrations import upgrade_to_head
from models import RequestLog, create_store_engine
from services.telemetry import GatewayMetrics, RequestEvent, TelemetryWriter
from services.workers import free_port
from tests.support.postgres import ThrowawayPostgres


def event(**fields) -> RequestEvent:
    values = {
        "id": f"req-{uuid.uuid4().hex}",
        "tenant": "t",
        "endpoint": "completions",
        "status_code": 200,
    }
    values.update(fields)
    return RequestEvent(**values)


def count(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(RequestLog))


@pytest.fixture
def sqlite_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_to_head(url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


async def test_events_are_written_in_batches_and_priced(sqlite_engine, tmp_path) -> None:
    def pricer(e: RequestEvent) -> None:
        e.cost_usd, e.baseline_cost_usd = 0.001, 0.002

    writer = TelemetryWriter(
        sqlite_engine,
        spill_path=tmp_path / "spill.jsonl",
        metrics=GatewayMetrics(),
        pricer=pricer,
        batch_size=50,
    )
    await writer.start()
    for _ in range(120):
        writer.submit(event(prompt_tokens=3, completion_tokens=4))
    await writer.stop()
    assert count(sqlite_engine) == 120 and writer.written == 120
    with sqlite_engine.connect() as conn:
        assert conn.scalar(select(func.sum(RequestLog.baseline_cost_usd))) == pytest.approx(0.24)


async def test_full_queue_never_blocks_and_loses_nothing(sqlite_engine, tmp_path) -> None:
    metrics = GatewayMetrics()
    writer = TelemetryWriter(
        sqlite_engine, spill_path=tmp_path / "spill.jsonl", metrics=metrics, queue_size=10
    )
    for _ in range(25):  # the writer is not started: the queue fills after 10
        writer.submit(event())
    assert writer.overflowed == 15
    assert metrics.telemetry_overflow._value.get() == 15
    await writer.start()
    await writer.stop()
    assert count(sqlite_engine) == 25 and not writer.pending_spill


async def test_replay_skips_rows_already_written(sqlite_engine, tmp_path) -> None:
    spill = tmp_path / "spill.jsonl"
    writer = TelemetryWriter(sqlite_engine, spill_path=spill, metrics=GatewayMetrics())
    events = [event() for _ in range(5)]
    writer._spill(events)
    writer._spill(events[:2])  # a crash after insert but before the spill was removed
    with spill.open("ab") as fh:
        fh.write(b'{"id": "torn')  # a torn last line
    assert writer.replay_spill() == 7
    assert count(sqlite_engine) == 5 and not writer.pending_spill


@pytest.mark.vllm
def test_store_outage_during_traffic_loses_nothing(
    vllm_worker, make_settings, start_gateway
) -> None:
    """Postgres stops mid-traffic: every request still succeeds, and once the server is
    back every request has its row."""
    cluster = ThrowawayPostgres(free_port())
    cluster.start()
    try:
        url = cluster.url.replace("postgresql://", "postgresql+psycopg://")
        gateway = start_gateway(make_settings(workers=[vllm_worker.base_url], database_url=url))
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)

        def burst(n: int) -> None:
            for i in range(n):
                client.completions.create(model="tiny-llama", prompt=f"p{i}", max_tokens=2)

        burst(10)
        gateway.flush_telemetry()
        cluster.stop()
        burst(15)  # the store is down: these must still succeed
        gateway.flush_telemetry()
        assert gateway.services.telemetry.pending_spill
        assert not gateway.services.telemetry.store_up
        cluster.start()
        burst(5)
        engine = create_store_engine(url)
        try:
            for _ in range(100):
                gateway.flush_telemetry()
                if count(engine) == 30 and not gateway.services.telemetry.pending_spill:
                    break
                time.sleep(0.2)
            assert count(engine) == 30
            with engine.connect() as conn:
                ids = conn.scalars(select(RequestLog.id)).all()
            assert len(set(ids)) == 30
        finally:
            engine.dispose()
    finally:
        cluster.destroy()
