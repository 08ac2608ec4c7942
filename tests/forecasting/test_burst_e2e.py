"""End to end: a burst replayed through a real gateway, the control step deciding on what
the gateway recorded, and the local actuator starting and stopping worker processes
that register in the shared registry, so the gateway spreads the burst over them.

The workers are stand-ins for ``optengine worker`` (an OpenAI-compatible fake upstream
in its own process, registering and draining itself the way the real worker does, and
exporting vLLM's ``vllm:num_requests_waiting``); scaling decisions do not depend on
what the model says. Time is compressed the one way the store allows: the hour of quiet
history before the burst is written as rows, the burst goes through the gateway in real
time, and the scale-down step is asked at a clock ten minutes on. The latency trigger
is set out of the way (a busy test machine is slow), so what scales up is the forecast,
and the queue trigger is measured but not hot."""

from __future__ import annotations

import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import select

from models import RequestLog, WorkerLaunch
from services.forecasting.actuators import LocalActuator
from services.forecasting.control import step
from services.forecasting.queue import model_workers
from tests.forecasting.test_control import traffic
from tests.forecasting.test_local_actuator import alive, wait_for

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import argparse, asyncio, signal, sys
    sys.path.insert(0, {root!r})
    from aiohttp import web
    from models import create_store_engine, session_factory
    from services.execution import deregister_worker, register_worker
    from tests.support.fake_openai import Answer, FakeOpenAI
    parser = argparse.ArgumentParser()
    parser.add_argument("--model"); parser.add_argument("--port", type=int)
    parser.add_argument("--served-model-name")
    args = parser.parse_args()
    fake = FakeOpenAI(models={{args.served_model_name: Answer("one two three four five",
                                                               delay_s=0.05)}})
    SLOTS, inflight = 2, 0

    @web.middleware
    async def count(request, handler):
        global inflight
        if request.path != "/v1/chat/completions":
            return await handler(request)
        inflight += 1
        try:
            return await handler(request)
        finally:
            inflight -= 1

    async def metrics(request):
        return web.Response(text="vllm:num_requests_waiting{{engine=\\"0\\"}} "
                                 f"{{max(0, inflight - SLOTS)}}.0\\n")

    async def main():
        app = web.Application(middlewares=[count])
        app.router.add_get("/v1/models", fake._models)
        app.router.add_post("/v1/chat/completions", fake._chat)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        sessions = session_factory(create_store_engine({url!r}))
        url = f"http://127.0.0.1:{{args.port}}"
        register_worker(sessions, url, source="launched", models=[args.served_model_name])
        await stop.wait()
        deregister_worker(sessions, url)
        while inflight:  # drain what is in flight, then stop
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())
''')

TOKENS = 1000  # per request: ~995 prompt tokens (one per 4 characters) + 5 output


def ask(gateway_url: str, n: int) -> int:
    reply = httpx.post(f"{gateway_url}/v1/chat/completions", timeout=30, json={
        "model": "m", "max_tokens": 5,
        "messages": [{"role": "user", "content": f"request {n} " + "x" * 3960}]})
    return reply.status_code


def test_a_burst_scales_up_before_its_peak_and_down_after(store, make_settings,
                                                          start_gateway, tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), url=str(store.url)))
    settings = make_settings(
        database_url=str(store.url), cache_enabled=False, token_optimization_enabled=False,
        scaling_worker_capacity_tokens_s=800.0, scaling_max_replicas=3,
        scaling_latency_slo_ms=60_000.0)
    actuator = LocalActuator(store, {"m": tmp_path}, command=[sys.executable, str(script)],
                             log_dir=tmp_path / "logs")
    try:
        actuator.scale("m", 1)
        wait_for(lambda: len(model_workers(store, "m")) == 1)
        first = model_workers(store, "m")[0]
        gateway = start_gateway(settings)
        wait_for(lambda: any(w.healthy for w in gateway.services.pool.workers))

        # an hour of quiet (one request per 10 s: 100 tok/s), then the burst's ramp: one
        # request per second (1,000 tok/s: 1.3 workers, 1.8 at the policy's margin) for
        # three whole 10-s bins
        time.sleep(10 - time.time() % 10)
        ramp_start = datetime.now(UTC).replace(microsecond=0)
        traffic(store, "m", [1] * 360, end=ramp_start, tokens=TOKENS, latency_ms=50.0)
        for n in range(30):
            assert ask(gateway.url, n) == 200
            time.sleep(max(0.0, ramp_start.timestamp() + n + 1 - time.time()))
        gateway.flush_telemetry()
        now = ramp_start + timedelta(seconds=30)  # the ramp's last bin just completed
        up = step(settings, store, "m", actuator, now=now)
        assert up is not None and up.current == 1 and up.desired >= 2
        assert up.predictive == up.desired and up.reason.startswith("forecast upper"), up.reason
        assert up.inputs["queue_depth"] is not None and up.inputs["queue_depth"] <= 10
        wait_for(lambda: len(model_workers(store, "m")) == up.desired)
        added = set(model_workers(store, "m")) - {first}
        wait_for(lambda: sum(w.healthy for w in gateway.services.pool.workers) == up.desired)

        # the peak: 8 requests at a time; the gateway spreads them over the workers
        peak_start = datetime.now(UTC)
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda n: ask(gateway.url, n), range(100, 148))) == {200}
        gateway.flush_telemetry()
        with store.connect() as conn:
            served = set(conn.scalars(select(RequestLog.worker).where(
                RequestLog.created_at >= peak_start)))
        assert served == {first, *added}

        # ten quiet minutes later: back to one worker, the newest stopped and drained
        pids = dict(launched(store))
        down = step(settings, store, "m", actuator,
                    now=datetime.now(UTC) + timedelta(minutes=10))
        assert down is not None and (down.current, down.desired) == (up.desired, 1), down.reason
        wait_for(lambda: model_workers(store, "m") == [first])
        wait_for(lambda: not any(alive(pids[url]) for url in added))
        wait_for(lambda: [w.url for w in gateway.services.pool.workers] == [first])
        assert ask(gateway.url, 999) == 200
    finally:
        actuator.scale("m", 0)
        for _, pid in launched(store):
            wait_for(lambda pid=pid: not alive(pid))


def launched(store) -> list[tuple[str, int]]:
    with store.connect() as conn:
        return [(url, pid) for url, pid in conn.execute(
            select(WorkerLaunch.url, WorkerLaunch.pid).where(WorkerLaunch.pid.is_not(None)))]
