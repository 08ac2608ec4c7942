"""The fleet's queue depth: requests waiting in the model's registered workers, read
from each worker's ``/metrics`` (real HTTP servers exporting vLLM's gauge), and the
control step's queue trigger fed from it."""

from __future__ import annotations

import pytest
from aiohttp import web

from models import session_factory
from services.execution import register_worker
from services.forecasting.control import step
from services.forecasting.queue import model_workers, queue_depth
from services.workers import free_port
from tests.forecasting.test_control import NOW, FakeActuator, traffic
from tests.support.aio_server import BackgroundServer


def vllm_metrics(waiting: dict[str, float]) -> str:
    lines = ["# TYPE vllm:num_requests_waiting gauge"]
    lines += [f'vllm:num_requests_waiting{{engine="{engine}",model_name="m"}} {value}'
              for engine, value in waiting.items()]
    return "\n".join([*lines, 'vllm:num_requests_running{engine="0",model_name="m"} 7.0', ""])


@pytest.fixture
def metrics_worker():
    """A worker whose /metrics reports what the test sets in ``state["waiting"]``."""
    servers = []

    def start(waiting: dict[str, float]) -> BackgroundServer:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=vllm_metrics(waiting))

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        servers.append(BackgroundServer(app, "vllm-metrics").start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_queue_depth_sums_the_models_workers_and_skips_silent_ones(store,
                                                                   metrics_worker) -> None:
    sessions = session_factory(store)
    busy, idle = metrics_worker({"0": 9.0, "1": 3.0}), metrics_worker({"0": 0.0})
    other = metrics_worker({"0": 50.0})
    register_worker(sessions, busy.url, models=["m"])
    register_worker(sessions, idle.url, models=["m", "n"])
    register_worker(sessions, other.url, models=["n"])
    register_worker(sessions, f"http://127.0.0.1:{free_port()}", models=["m"])  # down
    assert len(model_workers(store, "m")) == 3
    assert queue_depth(store, "m", timeout_s=1) == 12.0
    assert queue_depth(store, "nobody") is None  # no worker: not measured, not zero


def test_a_long_queue_scales_up_even_at_low_demand(store, make_settings,
                                                   metrics_worker) -> None:
    settings = make_settings(scaling_worker_capacity_tokens_s=1000.0)
    traffic(store, "m", [1] * 60)  # 100 tok/s: 10 % of one worker
    register_worker(session_factory(store), metrics_worker({"0": 15.0}).url, models=["m"])
    actuator = FakeActuator(1)
    decision = step(settings, store, "m", actuator, now=NOW)
    assert decision.inputs["queue_depth"] == 15.0
    assert decision.desired == 2 and "queue depth 15 > 10" in decision.reason
    assert actuator.calls == [2]
