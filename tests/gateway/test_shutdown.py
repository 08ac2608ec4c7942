"""The gateway's shutdown closes its services in an order that loses nothing, and a step
that fails is logged without skipping the ones after it: the telemetry flush, which
writes the last requests' rows, runs whatever came before it."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from models import create_store_engine
from models.tables import RequestLog
from services.gateway.shutdown import close_in_order, shutdown_steps
from services.settings import load_settings
from services.workers import free_port
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway, wait_for


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI({"m": Answer("Closing time.")}).start()
    yield server
    server.stop()


def record_steps(gateway: RunningGateway, ran: list[str], failing: str) -> list[str]:
    """Wrap each of the gateway's shutdown steps to append its name to ``ran`` once it has
    run; the one named ``failing`` raises after running instead (a close that fails
    half-way). Returns the names, in the order planned."""
    steps = shutdown_steps(gateway.services)
    for name, call in steps:
        owner, method = call.__self__, call.__name__  # type: ignore[attr-defined]

        async def wrapped(name: str = name, call: Callable[[], object] = call) -> None:
            result = call()
            if inspect.isawaitable(result):
                await result
            if name == failing:
                raise RuntimeError(f"{name} is broken")
            ran.append(name)

        setattr(owner, method, wrapped)
    return [name for name, _ in steps]


def test_every_step_runs_in_order_though_one_fails_and_the_last_rows_are_written(
    upstream, make_settings, start_gateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start_gateway(make_settings(workers=[upstream.url],
                                          cache_semantic_tenants=["*"]))
    ran: list[str] = []
    planned = record_steps(gateway, ran, failing="response cache")
    for i in range(3):
        body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 8, "temperature": 0}
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
    gateway.stop()
    assert not gateway.running

    assert ran == [name for name in planned if name != "response cache"]
    # sources of traffic stop before anything they use; the cache stage's queued index
    # writes go out before the semantic cache and the store close; telemetry flushes
    # after every stage that may record a request; the store is disposed of last
    assert planned[0] == "batch launcher"
    assert planned.index("worker pool") < planned.index("cache stage")
    assert planned.index("cache stage") < planned.index("semantic sync")
    assert planned.index("cache stage") < planned.index("response cache")
    stages = ["cache stage", "response cache", "routing", "budgets", "token optimization",
              "experiments", "rate limiter"]
    assert all(planned.index(s) < planned.index("telemetry") for s in stages if s in planned)
    assert planned[-1] == "metrics store"

    failures = [r for r in caplog.records if r.name == "services.gateway.shutdown"]
    assert [r.getMessage() for r in failures] == [
        "shutdown: closing the response cache failed; going on"]
    assert "response cache is broken" in str(failures[0].exc_info[1])
    assert len(logged_requests(gateway.settings.database_url)) == 3


def test_close_in_order_reports_the_steps_that_failed() -> None:
    calls: list[str] = []

    async def closes() -> None:
        calls.append("async")

    def breaks() -> None:
        raise OSError("gone")

    steps = [("first", closes), ("second", breaks), ("third", lambda: calls.append("sync"))]
    assert asyncio.run(close_in_order(steps)) == ["second"]
    assert calls == ["async", "sync"]


def test_sigterm_cuts_a_request_past_the_grace_and_records_it(tmp_path: Path) -> None:
    """``optengine serve`` on SIGTERM gives requests in flight ``shutdown_grace_s``; one
    still waiting on its upstream then is cancelled and written to request_log as 503
    ``gateway_shutdown``, and the process exits (a hung upstream does not hold it)."""
    held = threading.Semaphore(0)
    upstream = FakeOpenAI({"m": Answer("too late", hold=held)}).start()
    port = free_port()
    env = {**os.environ, "OPTENGINE_ENV": "test", "OPTENGINE_DATA_DIR": str(tmp_path),
           "OPTENGINE_SHUTDOWN_GRACE_S": "1", "OPTENGINE_HEALTH_INTERVAL_S": "0.5"}
    log_path = tmp_path / "serve.log"  # a file, not a pipe: a full pipe would block it
    with log_path.open("wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--port", str(port),
             "--worker", upstream.url], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    replies: list[object] = []

    def ask() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "still there?"}],
                "max_tokens": 8}
        try:
            replies.append(httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60))
        except httpx.HTTPError as exc:  # the connection closes under it
            replies.append(exc)

    client = threading.Thread(target=ask)
    try:
        assert wait_for(lambda: ready(base), timeout_s=60), "the gateway did not get ready"
        client.start()
        assert wait_for(lambda: len(upstream.requests) == 1)  # held at the upstream
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=40)  # the grace, then the services close
        client.join(timeout=30)
    finally:
        if gateway.poll() is None:
            gateway.kill()
        held.release()
        upstream.stop()
    stderr = log_path.read_text()
    # uvicorn raises the signal again once it has shut down: the exit status says SIGTERM
    assert gateway.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
    [reply] = replies  # the client got no answer: the connection closed under it
    assert not isinstance(reply, httpx.Response) or reply.status_code >= 500, reply
    database_url = load_settings(env="test", data_dir=tmp_path).database_url
    assert logged_requests(database_url) == [(503, "gateway_shutdown")]


def logged_requests(database_url: str) -> list[tuple[int, str | None]]:
    """(status code, error type) of every request_log row."""
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(RequestLog.status_code, RequestLog.error_type)).all()
    finally:
        engine.dispose()
    return [(status, error) for status, error in rows]


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
