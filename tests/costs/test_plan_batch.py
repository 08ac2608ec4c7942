"""The planner's batch estimate, checked against what the batch path then saved: acme's
requests online on the baseline model, then the same requests through ``/v1/batches``
(run as flow processes on our self-hosted model, a fake worker here)."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta

import openai
import orjson
import pytest
from sqlalchemy import func, select

from models import RequestLog, create_store_engine
from services.costs import PriceCatalog
from services.costs.reports.planner import plan
from services.settings import ModelPrice
from tests.routing.conftest import post_chat
from tests.support.fake_openai import Answer, FakeOpenAI

pytestmark = pytest.mark.usefixtures("prefect_harness")

# the self-hosted model's output is dearer relative to the baseline than its input, so
# the batch path's cost/baseline ratio depends on each request's token mix
PRICES = {"base": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
          "llama": {"input_per_mtok": 0.1, "output_per_mtok": 0.5}}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
ACME = [f"Summarise in one line: {' '.join(WORDS[: 1 + i % 10] * (1 + i))}" for i in range(12)]
PROBE = [f"Classify this ticket: {' '.join(WORDS[i % 10:] * 3)}" for i in range(20)]


@pytest.fixture
def gateway(make_settings, start_gateway, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    worker = FakeOpenAI({name: Answer() for name in PRICES}).start()
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # runs use the harness
    # the batch runs read their settings from the environment
    monkeypatch.setenv("OPTENGINE_PRICE_OVERRIDES", json.dumps(PRICES))
    monkeypatch.setenv("OPTENGINE_BASELINE_MODEL", "base")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    yield start_gateway(make_settings(
        workers=[worker.url], price_overrides=PRICES, baseline_model="base",
        cache_enabled=False, database_url=url, api_keys=["ka:acme", "kp:probe"]))
    worker.stop()


def run_batch(gateway, key: str, prompts: list[str]) -> str:
    """The prompts as one batch on the self-hosted model; its id once completed."""
    api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    lines = [orjson.dumps({"custom_id": f"req-{i}", "method": "POST",
                           "url": "/v1/chat/completions",
                           "body": {"model": "llama", "temperature": 0, "max_tokens": 16,
                                    "messages": [{"role": "user", "content": text}]}})
             for i, text in enumerate(prompts)]
    upload = api.files.create(file=("in.jsonl", io.BytesIO(b"\n".join(lines) + b"\n")),
                              purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                               completion_window="24h")
    deadline = time.monotonic() + 240
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.5)
        batch = api.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == len(prompts)
    return batch.id


def spent(engine, tenant: str, *where) -> float:
    with engine.connect() as conn:
        return conn.scalar(select(func.sum(RequestLog.cost_usd)).where(
            RequestLog.tenant == tenant, *where))


def test_the_batch_estimate_is_what_the_batch_path_then_saves(gateway) -> None:
    catalog = PriceCatalog(overrides={n: ModelPrice(**p) for n, p in PRICES.items()},
                           baseline_model="base")
    since = datetime.now(UTC) - timedelta(minutes=1)
    for text in ACME:  # online, on the baseline model
        response = post_chat(gateway, "base", text, temperature=0, max_tokens=16,
                             headers={"Authorization": "Bearer ka"})
        assert response.status_code == 200, response.text
    gateway.flush_telemetry()
    run_batch(gateway, "kp", PROBE)  # another tenant's batch: the path's measured ratio
    until = datetime.now(UTC) + timedelta(minutes=1)
    engine = create_store_engine(gateway.settings.database_url)
    [batch] = [e for e in plan(engine, catalog, since, until) if e.lever == "batch"]
    assert batch.tenant == "acme"
    assert "12 non-streamed online requests" in batch.method
    assert "20 batch lines" in batch.method

    run_batch(gateway, "ka", ACME)  # the same requests through /v1/batches
    batched = spent(engine, "acme", RequestLog.route_reason.startswith("batch:"))
    online = spent(engine, "acme") - batched
    assert 0 < batched < online
    # the ratio was measured on the probe's shorter prompts, where the (relatively
    # dearer) output weighs more than on acme's: the estimate errs a little low
    assert online - batched == pytest.approx(batch.window_saving_usd, rel=0.05)
    engine.dispose()
