"""What a hostile but ordinary client can do to the gateway: unexpected errors keep the
connection usable, a store outage is a 503, a client that hangs up is logged as such and
its upstream call cancelled, huge headers are refused without being echoed, operator
details need the admin key, and error bodies name no internal address."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select

from models.tables import RequestLog
from services.settings import Settings
from services.workers import free_port
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway, wait_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI({"m": Answer()}).start()
    yield server
    server.stop()


@pytest.fixture
def gateway(fake: FakeOpenAI, make_settings: Callable[..., Settings],
            start_gateway: Callable[[Settings], RunningGateway]) -> RunningGateway:
    return start_gateway(make_settings(workers=[fake.url], cache_enabled=False))


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """One HTTP/1.1 request on an open connection; the whole response (Content-Length)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_an_unhandled_error_is_a_500_on_a_connection_that_stays_usable(
    gateway: RunningGateway,
) -> None:
    async def broken(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    gateway.services.serving._pipeline = broken  # type: ignore[assignment]
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    post = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        first = _exchange(sock, post)
        assert first.startswith(b"HTTP/1.1 500")
        assert b'"type":"server_error"' in first and b"a bug" not in first
        assert b"connection: close" not in first.lower()
        second = _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 200")


def test_a_store_that_is_down_is_a_503_for_files_batches_and_feedback(
    fake: FakeOpenAI, make_settings, start_gateway,
) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/gone"
    gateway = start_gateway(make_settings(workers=[fake.url], database_url=down,
                                          cache_enabled=False))
    calls = [
        httpx.get(f"{gateway.url}/v1/files", timeout=30),
        httpx.get(f"{gateway.url}/v1/batches", timeout=30),
        httpx.post(f"{gateway.url}/v1/files", timeout=30, data={"purpose": "batch"},
                   files={"file": ("a.jsonl", b'{"custom_id": "1"}\n')}),
        httpx.post(f"{gateway.url}/v1/feedback", timeout=30,
                   json={"request_id": "req-x", "rating": "good"}),
    ]
    for response in calls:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json()["error"]["code"] == "store_unavailable"
        assert response.headers["retry-after"]
    # inference does not need the store
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT,
                      timeout=30).status_code == 200


def test_a_client_that_hangs_up_is_a_499_with_its_real_wait_and_the_call_is_cancelled(
    gateway: RunningGateway, fake: FakeOpenAI,
) -> None:
    fake.models["m"].delay_s = 5.0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=0.5)
    assert wait_for(lambda: fake.abandoned == 1, timeout_s=15)  # the upstream call too
    assert wait_for(lambda: all(w.outstanding == 0 for w in gateway.services.pool.workers))
    gateway.flush_telemetry()
    with gateway.services.sessions() as session:
        row = session.scalars(select(RequestLog)).one()
    assert row.status_code == 499 and row.error_type == "client_closed"
    assert row.latency_ms < 5000  # when the client left, not when the upstream would answer


def test_huge_headers_are_a_431_and_header_values_are_not_echoed(
    gateway: RunningGateway,
) -> None:
    huge = "v" * 65_000
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30,
                          headers={"x-padding": huge})
    assert response.status_code == 431 and huge[:100] not in response.text
    assert response.json()["error"]["code"] == "headers_too_large"
    long = "z" * 20_000  # under the header limit: refused, echoed only in part
    for header in ("x-priority", "x-token-optimization"):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30,
                              headers={header: long})
        assert response.status_code == 400, response.text
        assert len(response.json()["error"]["message"]) < 300


def test_error_bodies_name_no_internal_address(gateway: RunningGateway,
                                               fake: FakeOpenAI) -> None:
    fake.models["m"].fail_status = 500
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 502
    assert "127.0.0.1" not in response.text and str(fake.url) not in response.text


def test_operator_details_need_the_admin_key_when_not_public(
    fake: FakeOpenAI, make_settings, start_gateway,
) -> None:
    gateway = start_gateway(make_settings(workers=[fake.url], ops_details_public=False,
                                          admin_api_key="adm-key"))
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    ready = httpx.get(f"{gateway.url}/readyz")
    assert set(ready.json()) == {"status"} and fake.url not in ready.text
    admin = {"authorization": "Bearer adm-key"}
    assert "optengine_" in httpx.get(f"{gateway.url}/metrics", headers=admin).text
    detailed = httpx.get(f"{gateway.url}/readyz", headers=admin).json()
    assert detailed["workers"][0]["url"] == fake.url
    assert detailed["status"] == ready.json()["status"]
