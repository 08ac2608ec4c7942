"""What the README promises when an upstream fails, through the gateway's public API:
a timeout is a 504, and a worker's 502/503 answer is retried on another worker."""

from __future__ import annotations

import httpx
import pytest

from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway

MODEL = "fake-model"


def chat(gateway: RunningGateway, text: str = "hello") -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": text}], "temperature": 0})


@pytest.fixture
def fakes():
    started: list[FakeOpenAI] = []

    def start(answer: Answer) -> FakeOpenAI:
        server = FakeOpenAI({MODEL: answer}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_an_upstream_that_does_not_answer_in_time_is_a_504(
    fakes, make_settings, start_gateway
) -> None:
    slow = fakes(Answer("late", delay_s=5))
    gateway = start_gateway(make_settings(workers=[slow.url], upstream_read_timeout_s=0.5,
                                          cache_enabled=False))
    response = chat(gateway)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "timeout"
    gateway.flush_telemetry()
    with gateway.services.engine.connect() as conn:
        assert conn.exec_driver_sql("select status_code from request_log").scalar() == 504


@pytest.mark.parametrize("status", [502, 503])
def test_a_worker_answering_502_or_503_is_retried_on_another(
    fakes, make_settings, start_gateway, status: int
) -> None:
    failing = fakes(Answer(fail_status=status))
    healthy = fakes(Answer("served by the other worker"))
    gateway = start_gateway(make_settings(workers=[failing.url, healthy.url],
                                          cache_enabled=False))
    pool = gateway.services.pool
    # the healthy worker looks busier, so the failing one is chosen first
    busy = pool.get(healthy.url)
    busy.outstanding_tokens = 10_000
    try:
        response = chat(gateway)
    finally:
        busy.outstanding_tokens = 0
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "served by the other worker"
    assert (failing.calls(MODEL), healthy.calls(MODEL)) == (1, 1)
    assert pool.get(failing.url).breaker.failures == 1
