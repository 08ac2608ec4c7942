"""End to end: a burst replayed through a real gateway, the control step deciding on what
the gateway recorded, and the local actuator starting and stopping worker processes
that register in the shared registry, so the gateway spreads the burst over them.

Twice: with stand-ins for ``optengine worker`` (an OpenAI-compatible fake upstream in
its own process, registering and draining itself the way the real worker does, and
exporting vLLM's ``vllm:num_requests_waiting``), and with real vLLM workers on the tiny
model (the session's worker first, a real ``optengine worker`` added). Time is
compressed the one way the store allows: the hour of quiet history before the burst is
written as rows, the burst goes through the gateway in real time, and the scale-down
step is asked at a clock ten minutes on."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select

from models import RequestLog, WorkerLaunch, session_factory
from services.execution import register_worker
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

FILLER = "x" * 3960  # ~995 prompt tokens to the fake worker (one per 4 characters)


def ask(gateway_url: str, model: str, n: int, filler: str = FILLER) -> int:
    reply = httpx.post(f"{gateway_url}/v1/chat/completions", timeout=60, json={
        "model": model, "max_tokens": 5,
        "messages": [{"role": "user", "content": f"request {n} " + filler}]})
    return reply.status_code


def test_a_burst_scales_up_before_its_peak_and_down_after(store, make_settings,
                                                          start_gateway, tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), url=str(store.url)))
    actuator = LocalActuator(store, {"m": tmp_path}, command=[sys.executable, str(script)],
                             log_dir=tmp_path / "logs")
    try:
        actuator.scale("m", 1)
        wait_for(lambda: len(model_workers(store, "m")) == 1)
        gateway = start_gateway(make_settings(database_url=str(store.url), cache_enabled=False,
                                              token_optimization_enabled=False))
        burst(store, make_settings, gateway, actuator, "m", model_workers(store, "m")[0],
              logs=tmp_path / "logs")
    finally:
        actuator.scale("m", 0)
        for _, pid in launched(store):
            wait_for(lambda pid=pid: not alive(pid))


def test_a_burst_on_the_tiny_model_adds_a_real_vllm_worker(store, make_settings,
                                                           start_gateway, vllm_worker,
                                                           tiny_model, tmp_path) -> None:
    """The same burst on real processes: the session's vLLM worker serves as the first
    worker (registered in this test's store and adopted as a launch, so the actuator
    counts it and, as the oldest, never stops it), the actuator starts a real
    ``optengine worker`` on the tiny model for the peak and stops it after."""
    model = vllm_worker.served_model_name
    first = vllm_worker.base_url.rstrip("/").removesuffix("/v1")
    register_worker(session_factory(store), first, models=[model])
    with session_factory(store).begin() as session:
        session.add(WorkerLaunch(model=model, url=first, pid=vllm_worker.pid))
    env = dict(os.environ, OPTENGINE_DATABASE_URL=str(store.url),
               OPTENGINE_VLLM_PYTHON=str(ROOT / ".venv-vllm" / "bin" / "python"),
               OPTENGINE_HEALTH_INTERVAL_S="0.5", OPTENGINE_VLLM_CPU_KVCACHE_GIB="1")
    actuator = LocalActuator(store, {model: tiny_model}, env=env, log_dir=tmp_path)
    try:
        assert actuator.current(model) == 1
        gateway = start_gateway(make_settings(database_url=str(store.url), cache_enabled=False,
                                              token_optimization_enabled=False))
        burst(store, make_settings, gateway, actuator, model, first, logs=tmp_path,
              filler="x " * 100)
    finally:
        actuator.scale(model, 1)  # the newest go; the session's worker stays
        added = [pid for url, pid in launched(store) if url != first]
        try:
            wait_for(lambda: not any(alive(pid) for pid in added), timeout=120)
        finally:
            for pid in filter(alive, added):  # one that ignored SIGTERM
                os.killpg(pid, signal.SIGKILL)


def burst(store, make_settings, gateway, actuator, model: str, first: str, *,
          logs: Path, filler: str = FILLER) -> None:
    """An hour of quiet, a ramp that the forecast scales up for, a peak the gateway
    spreads over the workers, and ten quiet minutes after which the added ones go.

    One worker's capacity is set from the ramp's measured tokens per request: the quiet
    (one request per 10 s) needs a tenth of a worker, the ramp (one request per second
    for three whole 10-s bins) 1.25, 1.8 at the policy's margin."""
    wait_for(lambda: any(w.healthy for w in gateway.services.pool.workers))
    time.sleep(10 - time.time() % 10)
    ramp_start = datetime.now(UTC).replace(microsecond=0)
    for n in range(30):
        assert ask(gateway.url, model, n, filler) == 200
        time.sleep(max(0.0, ramp_start.timestamp() + n + 1 - time.time()))
    gateway.flush_telemetry()
    with store.connect() as conn:
        per_request = conn.scalar(select(
            func.avg(RequestLog.prompt_tokens + RequestLog.completion_tokens)).where(
            RequestLog.created_at >= ramp_start))
    assert per_request, "the ramp's requests were not recorded"
    traffic(store, model, [1] * 360, end=ramp_start, tokens=round(per_request),
            latency_ms=50.0)
    # the latency trigger out of the way (a busy test machine is slow): the forecast
    # scales up, the queue trigger is measured but not hot
    settings = make_settings(
        database_url=str(store.url), scaling_worker_capacity_tokens_s=0.8 * per_request,
        scaling_max_replicas=3, scaling_latency_slo_ms=60_000.0)
    now = ramp_start + timedelta(seconds=30)  # the ramp's last bin just completed
    up = step(settings, store, model, actuator, now=now)
    assert up is not None and up.current == 1 and up.desired >= 2
    assert up.predictive == up.desired and up.reason.startswith("forecast upper"), up.reason
    assert up.inputs["queue_depth"] is not None and up.inputs["queue_depth"] <= 10
    # registered, or a worker gave up starting: stop waiting either way
    wait_for(lambda: len(model_workers(store, model)) == up.desired
             or actuator.current(model) < up.desired, timeout=300)
    assert len(model_workers(store, model)) == up.desired, "".join(
        p.read_text()[-3000:] for p in logs.glob("worker-*.log"))
    added = set(model_workers(store, model)) - {first}
    wait_for(lambda: sum(w.healthy for w in gateway.services.pool.workers) == up.desired)

    # the peak: 8 requests at a time; the gateway spreads them over the workers
    peak_start = datetime.now(UTC)
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda n: ask(gateway.url, model, n, filler),
                            range(100, 148))) == {200}
    gateway.flush_telemetry()
    with store.connect() as conn:
        served = set(conn.scalars(select(RequestLog.worker).where(
            RequestLog.created_at >= peak_start)))
    assert served == {first, *added}

    # ten quiet minutes later: back to one worker, the newest stopped and drained
    pids = dict(launched(store))
    down = step(settings, store, model, actuator,
                now=datetime.now(UTC) + timedelta(minutes=10))
    assert down is not None and (down.current, down.desired) == (up.desired, 1), down.reason
    wait_for(lambda: model_workers(store, model) == [first], timeout=120)
    wait_for(lambda: not any(alive(pids[url]) for url in added), timeout=120)
    wait_for(lambda: [w.url for w in gateway.services.pool.workers] == [first])
    assert ask(gateway.url, model, 999, filler) == 200


def launched(store) -> list[tuple[str, int]]:
    with store.connect() as conn:
        return [(url, pid) for url, pid in conn.execute(
            select(WorkerLaunch.url, WorkerLaunch.pid).where(WorkerLaunch.pid.is_not(None)))]
