"""The telemetry writer loses nothing: store outages spill to disk and are replayed."""

from __future__ import annotations

import asyncio
import time
import uuid

import openai
import pytest
from sqlalchemy import func, select

from migrations import upgrade_to_head
from models import QuarantinedEvent, RequestLog, create_store_engine
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


# --- one bad row must not stop the store for everyone ---------------------------------




def quarantined(engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(QuarantinedEvent.event_id, QuarantinedEvent.event, QuarantinedEvent.error))]


# a number no request_log column holds on either store (PostgreSQL refuses anything past
# 32 bits in an Integer column, SQLite anything past 64)
TOO_BIG = 10**20


async def test_a_row_the_store_refuses_is_quarantined_and_the_rest_written(
    any_store, tmp_path
) -> None:
    metrics = GatewayMetrics()
    writer = TelemetryWriter(any_store, spill_path=tmp_path / "spill.jsonl", metrics=metrics)
    await writer.start()
    good = [event() for _ in range(9)]
    bad = event(max_tokens=TOO_BIG)
    for e in good[:4] + [bad] + good[4:]:
        writer.submit(e)
    await writer.flush()
    assert count(any_store) == 9 and not writer.pending_spill and writer.store_up
    [(event_id, stored, error)] = quarantined(any_store)
    assert event_id == bad.id and str(TOO_BIG) in stored and error
    assert "INSERT" not in error  # the store's words, not the statement
    assert metrics.telemetry_quarantined._value.get() == 1
    # and the store keeps taking everyone's rows afterwards
    later = [event(tenant=f"other-{i}") for i in range(5)]
    for e in later:
        writer.submit(e)
    await writer.stop()
    assert count(any_store) == 14 and writer.quarantined == 1


async def test_strings_longer_than_their_column_are_cut_to_fit(any_store, tmp_path) -> None:
    writer = TelemetryWriter(any_store, spill_path=tmp_path / "spill.jsonl",
                             metrics=GatewayMetrics())
    await writer.start()
    long = event(model_requested="m" * 5000, worker="http://" + "w" * 5000,
                 token_policy="budget=" + "9" * 500)
    writer.submit(long)
    await writer.stop()
    with any_store.connect() as conn:
        model, worker, policy = conn.execute(
            select(RequestLog.model_requested, RequestLog.worker, RequestLog.token_policy)
        ).one()
    assert model == "m" * 256 and len(worker) == 512 and len(policy) == 64
    assert writer.quarantined == 0


async def test_a_bad_row_in_an_old_spill_file_no_longer_blocks_its_replay(
    any_store, tmp_path
) -> None:
    """Spill files written before the fix hold the bad row; a restart replays them."""
    spill = tmp_path / "spill.jsonl"
    writer = TelemetryWriter(any_store, spill_path=spill, metrics=GatewayMetrics())
    events = [event(), event(max_tokens=TOO_BIG), event()]
    writer._spill(events)
    assert writer.replay_spill() == 3
    assert not writer.pending_spill
    with any_store.connect() as conn:
        stored = set(conn.scalars(select(RequestLog.id)))
    assert {events[0].id, events[2].id} <= stored
    # the spill file's JSON reads the number back as a float: SQLite keeps it in the
    # row, PostgreSQL refuses it and the event is quarantined; either way it is kept
    if any_store.dialect.name == "postgresql":
        assert [q[0] for q in quarantined(any_store)] == [events[1].id]
    else:
        assert events[1].id in stored


async def test_the_writer_is_restarted_when_its_task_dies(sqlite_engine, tmp_path) -> None:
    metrics = GatewayMetrics()
    writer = TelemetryWriter(sqlite_engine, spill_path=tmp_path / "spill.jsonl",
                             metrics=metrics)
    failures = iter([OSError("disk full")])

    def broken_write(batch):  # the batch fails, and so does spilling it: the task ends
        raise RuntimeError("write failed")

    def broken_spill(events):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        TelemetryWriter._spill(writer, events)

    writer._write_batch = broken_write
    writer._spill = broken_spill
    await writer.start()
    first_task = writer._task
    writer.submit(event())
    await writer.flush()
    for _ in range(100):  # the supervisor runs as the dead task's callback
        if writer._task is not first_task:
            break
        await asyncio.sleep(0.01)
    assert writer.restarts == 1 and writer.running
    assert metrics.telemetry_writer_restarts._value.get() == 1
    del writer._write_batch  # healthy again: later events reach the store
    writer.submit(event())
    await writer.stop()
    assert count(sqlite_engine) == 1


async def test_stop_does_not_wait_forever_for_a_writer_that_cannot_drain(
    sqlite_engine, tmp_path
) -> None:
    """Shutdown with events queued and no writer running: they are spilled, then
    replayed into the store, and stop() returns."""
    writer = TelemetryWriter(sqlite_engine, spill_path=tmp_path / "spill.jsonl",
                             metrics=GatewayMetrics())
    for _ in range(3):
        writer.submit(event())  # never started: nothing drains the queue
    await asyncio.wait_for(writer.stop(timeout_s=0.2), 10)
    assert count(sqlite_engine) == 3 and not writer.pending_spill
