"""Bad input and broken upstreams: every failure is an OpenAI error body with the right
status, and nothing hangs."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from services.workers import free_port
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.proxy import KillableProxy

MODEL = "tiny-llama"


def post(
    gateway: RunningGateway, body: bytes | str, path: str = "/v1/chat/completions", **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{path}",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def assert_openai_error(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and error["message"]
    assert "Traceback" not in response.text
    return error


@pytest.fixture
def dead_gateway(make_settings, start_gateway) -> RunningGateway:
    """A gateway whose only configured worker does not exist."""
    return start_gateway(make_settings(workers=[f"http://127.0.0.1:{free_port()}"]))


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ("{not json", None, "could not parse the JSON body"),
        ("", None, "body is empty"),
        ("[1, 2]", None, "must be a JSON object"),
        ('{"model": "m"}', "messages", "Field required"),
        ('{"model": "m", "messages": "hello"}', "messages", "valid array"),
        ('{"model": "m", "messages": []}', "messages", "at least 1"),
        (
            '{"model": "m", "messages": [{"role": "robot", "content": "x"}]}',
            "messages.0.role",
            "Input should be",
        ),
        (
            '{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
            "max_tokens",
            "valid integer",
        ),
        (
            '{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
            "temperature",
            "less than or equal",
        ),
        ('{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model", "string"),
    ],
)
def test_bad_bodies_are_400(dead_gateway, body, param, fragment) -> None:
    error = assert_openai_error(post(dead_gateway, body), 400, "invalid_request_error")
    assert error["param"] == param
    assert fragment in error["message"]


def test_body_over_the_limit_is_413(make_settings, start_gateway) -> None:
    gateway = start_gateway(make_settings(max_body_bytes=2048))
    big = '{"model": "m", "messages": [{"role": "user", "content": "' + "x" * 4096 + '"}]}'
    assert_openai_error(post(gateway, big), 413, "invalid_request_error")
    # also when the client streams the body without a Content-Length
    chunked = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=iter([big[:1000].encode(), big[1000:].encode()]),
    )
    assert_openai_error(chunked, 413, "invalid_request_error")


def test_unknown_model_is_404(vllm_gateway: RunningGateway) -> None:
    body = '{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}'
    error = assert_openai_error(post(vllm_gateway, body), 404, "invalid_request_error")
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{vllm_gateway.url}/v1", api_key="x").chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "x"}]
        )


def test_auth_required_when_keys_are_configured(vllm_worker, make_settings, start_gateway):
    gateway = start_gateway(
        make_settings(workers=[vllm_worker.base_url], api_keys=["sk-team-a:team-a"])
    )
    body = f'{{"model": "{MODEL}", "prompt": "hi", "max_tokens": 1}}'
    assert_openai_error(post(gateway, body, "/v1/completions"), 401, "authentication_error")
    wrong = post(gateway, body, "/v1/completions", authorization="Bearer sk-nope")
    assert_openai_error(wrong, 401, "authentication_error")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-nope").models.list()
    ok = post(gateway, body, "/v1/completions", authorization="Bearer sk-team-a")
    assert ok.status_code == 200
    gateway.flush_telemetry()
    with gateway.services.engine.connect() as conn:
        tenants = conn.exec_driver_sql("select tenant, api_key_id from request_log").all()
    assert [t[0] for t in tenants] == ["team-a"] and tenants[0][1].startswith("static:")


def test_keys_created_in_the_store_authenticate(vllm_worker, make_settings, start_gateway):
    from services.gateway.auth import create_api_key

    gateway = start_gateway(make_settings(workers=[vllm_worker.base_url], require_auth=True))
    key = create_api_key(gateway.services.sessions, tenant="team-b", budget_usd=5)
    gateway.services.keyring.load_from_store()  # what the refresh loop does every 10 s
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    assert client.models.list().data[0].id == MODEL


def test_no_healthy_worker_is_503(dead_gateway: RunningGateway) -> None:
    dead_gateway.services.pool.workers[0].models = frozenset({MODEL})  # known, but down
    body = f'{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "x"}}]}}'
    assert_openai_error(post(dead_gateway, body), 503, "service_unavailable")
    assert httpx.get(f"{dead_gateway.url}/readyz").status_code == 503


def test_connect_error_is_retried_on_another_worker(
    vllm_worker, make_settings, start_gateway
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = start_gateway(make_settings(workers=[vllm_worker.base_url, dead]))
    pool = gateway.services.pool
    # pretend the dead worker looked healthy and idle at its last probe, so it is chosen
    dead_state = pool.get(dead)
    dead_state.healthy, dead_state.models = True, frozenset({MODEL})
    live_state = pool.get(vllm_worker.base_url)
    live_state.outstanding_tokens = 10_000
    try:
        result = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x").completions.create(
            model=MODEL, prompt="retry", max_tokens=3
        )
    finally:
        live_state.outstanding_tokens = 0
    assert result.usage.completion_tokens >= 1
    # the failure counts toward the dead worker's circuit breaker
    assert dead_state.breaker.failures >= 1 and "connect" in dead_state.last_error


def test_upstream_rejection_is_passed_back_as_400(vllm_gateway: RunningGateway) -> None:
    body = f'{{"model": "{MODEL}", "prompt": "x", "max_tokens": 100000}}'
    error = assert_openai_error(
        post(vllm_gateway, body, "/v1/completions"), 400, "invalid_request_error"
    )
    assert "max" in error["message"].lower() or "context" in error["message"].lower()


def test_worker_killed_mid_stream_ends_the_stream_with_an_error(
    vllm_worker, make_settings, start_gateway
) -> None:
    proxy = KillableProxy(free_port(), vllm_worker.port).start()
    gateway = start_gateway(make_settings(workers=[proxy.url]))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0, timeout=60)
    stream = client.completions.create(
        model=MODEL,
        prompt="a long story",
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    received = []
    started = time.monotonic()
    with pytest.raises(openai.APIError) as failure:
        for chunk in stream:
            received.append(chunk)
            if len(received) == 3:
                # at once: the tiny model may write all 1,500 tokens in under a second,
                # and what the proxy has passed on before the kill still arrives
                proxy.kill()
    assert received, "the stream should have started before the worker died"
    assert time.monotonic() - started < 30  # ended promptly, no hang
    assert "upstream failed" in str(failure.value).lower()
    assert "127.0.0.1" not in str(failure.value)  # no internal address reaches the client
    gateway.flush_telemetry()
    with gateway.services.engine.connect() as conn:
        status, error = conn.exec_driver_sql(
            "select status_code, error_type from request_log"
        ).one()
    assert status == 502 and error == "upstream_error"


@pytest.fixture
def fake_worker():
    server = FakeOpenAI({"fake-model": Answer("Hello there.")}).start()
    yield server
    server.stop()


def test_values_the_store_cannot_hold_are_400_and_recording_goes_on(
    fake_worker, postgres_url, make_settings, start_gateway
) -> None:
    """Numbers and names that do not fit request_log's columns (or 64 bits) are refused
    at the edge, so no request can stop the store's writes for every tenant."""
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    gateway = start_gateway(make_settings(workers=[fake_worker.url], database_url=url))
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    hostile = [
        ({**chat, "max_tokens": 3_000_000_000}, "max_tokens"),
        ({**chat, "max_completion_tokens": 2**40}, "max_completion_tokens"),
        ({**chat, "seed": 2**70}, "seed"),
        ({**chat, "model": "m" * 300}, "model"),
        ({**chat, "vendor_field": 10**30}, None),
        ({**chat, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi", "weight": -(10**25)}]}]}, None),
    ]
    for body, param in hostile:
        response = post(gateway, json.dumps(body))
        error = assert_openai_error(response, 400, "invalid_request_error")
        assert error["param"] == param
        assert len(error["message"]) < 200  # says what is wrong without echoing the value
    ok = post(gateway, json.dumps({**chat, "max_tokens": 5}))
    assert ok.status_code == 200, ok.text
    gateway.flush_telemetry()
    with gateway.services.engine.connect() as conn:
        rows = conn.exec_driver_sql("select status_code, max_tokens from request_log").all()
    assert rows == [(200, 5)]
    ready = httpx.get(f"{gateway.url}/readyz").json()
    assert ready["telemetry"]["writer"] == "running"
    assert ready["telemetry"]["quarantined"] == 0 and not ready["telemetry"]["spill_growing"]
