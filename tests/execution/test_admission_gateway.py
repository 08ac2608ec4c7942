"""Admission control and draining through the gateway, against the real vLLM worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.support.gateway import RunningGateway, wait_for

MODEL = "tiny-llama"


def complete(gateway: RunningGateway, prompt: str, max_tokens: int = 24, **headers: str
             ) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True},
        headers=headers,
        timeout=120,
    )


class LongStream:
    """A long generation held open in a thread: it occupies one worker slot until the
    gateway has relayed its last token. The tiny model writes 150 to over 2,000 tokens a
    second on the same machine, so the default is as long as its context allows (2,048
    tokens), under a second at the fastest: a test's checks while it runs must be quick."""

    def __init__(self, gateway: RunningGateway, max_tokens: int = 2000) -> None:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
        self._stream = client.completions.create(
            model=MODEL, prompt="a long story", max_tokens=max_tokens, stream=True,
            extra_body={"ignore_eos": True},
        )
        self.chunks = 0
        self.completed = False
        self._cancelled = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for _ in self._stream:
                self.chunks += 1
            self.completed = True
        except openai.APIConnectionError:
            if not self._cancelled:
                raise

    def cancel(self) -> None:
        self._cancelled = True
        self._stream.close()
        self._thread.join(30)

    def join(self) -> None:
        self._thread.join(120)


@pytest.fixture
def capped_gateway(vllm_worker, make_settings, start_gateway) -> RunningGateway:
    return start_gateway(make_settings(
        workers=[vllm_worker.base_url], cache_enabled=False, max_in_flight_per_worker=2,
        admission_queue_timeout_s=60,
    ))


def test_cap_holds_under_a_burst(capped_gateway: RunningGateway, vllm_worker) -> None:
    worker = capped_gateway.services.pool.get(vllm_worker.base_url)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, worker.outstanding)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(8) as executor:
        replies = list(executor.map(lambda i: complete(capped_gateway, f"burst {i}", 48),
                                    range(8)))
    stop.set()
    watcher.join()
    assert [r.status_code for r in replies] == [200] * 8
    assert all(r.json()["usage"]["completion_tokens"] == 48 for r in replies)
    assert peak == 2  # the cap was reached and never passed
    metrics = httpx.get(f"{capped_gateway.url}/metrics").text
    waited = [line for line in metrics.splitlines()
              if line.startswith('optengine_admission_wait_seconds_count{priority="normal"}')]
    assert waited and float(waited[0].split()[-1]) >= 1  # some requests queued


def test_queue_timeout_is_503_overloaded_with_retry_after(
    vllm_worker, make_settings, start_gateway
) -> None:
    gateway = start_gateway(make_settings(
        workers=[vllm_worker.base_url], cache_enabled=False, max_in_flight_per_worker=1,
        admission_queue_timeout_s=0.2,  # well inside the long stream, even at its fastest
    ))
    holder = LongStream(gateway)
    try:
        assert wait_for(lambda: holder.chunks > 0)
        refused = complete(gateway, "no room")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "service_unavailable"
        bad = complete(gateway, "no room", **{"X-Priority": "urgent"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Priority"
    finally:
        holder.cancel()
    assert complete(gateway, "room again").status_code == 200  # the slot came back
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'optengine_admission_rejected_total{priority="normal",reason="queue_timeout"} 1.0' \
        in metrics


def test_drain_waits_for_in_flight_and_takes_nothing_new(
    vllm_worker, make_settings, start_gateway
) -> None:
    gateway = start_gateway(make_settings(workers=[vllm_worker.base_url], cache_enabled=False))
    holder = LongStream(gateway)  # long enough to outlast the checks below
    assert wait_for(lambda: holder.chunks > 0)
    with ThreadPoolExecutor(1) as executor:
        drain = executor.submit(
            httpx.post, f"{gateway.url}/admin/workers/drain",
            json={"url": vllm_worker.base_url, "timeout_s": 120}, timeout=130,
        )
        worker = gateway.services.pool.get(vllm_worker.base_url)
        assert wait_for(lambda: worker.draining)
        refused = complete(gateway, "while draining")
        assert refused.status_code == 503  # the only worker takes nothing new
        # more of the stream arrives, and all the while the drain waits for it
        seen = holder.chunks
        assert wait_for(lambda: holder.chunks >= seen + 20 or holder.completed)
        assert not holder.completed, "the stream should outlast these checks"
        assert not drain.done() and worker.outstanding == 1
        holder.join()
        answer = drain.result()
    assert answer.status_code == 200 and answer.json()["drained"] is True
    assert holder.completed  # the stream in flight ran to its end
    back = httpx.post(f"{gateway.url}/admin/workers", json={"url": vllm_worker.base_url})
    assert back.status_code == 201
    assert complete(gateway, "after the drain").status_code == 200
