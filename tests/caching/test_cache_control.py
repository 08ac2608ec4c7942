"""Cache-Control through the gateway, as the README states it: ``no-cache`` skips reading
the cache but still writes the fresh answer; ``no-store`` does neither."""

from __future__ import annotations

import httpx
import pytest

from tests.support.fake_openai import Answer, FakeOpenAI

MODEL = "fake-model"


@pytest.fixture
def upstream():
    server = FakeOpenAI({MODEL: Answer("Paris.")}).start()
    yield server
    server.stop()


def ask(gateway, text: str, **headers: str) -> httpx.Response:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, timeout=30,
                          json={"model": MODEL, "temperature": 0,
                                "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text
    return response


def test_no_cache_skips_the_read_but_writes_the_answer(upstream, make_settings, start_gateway):
    gateway = start_gateway(make_settings(workers=[upstream.url]))
    ask(gateway, "capital of France?")
    refreshed = ask(gateway, "capital of France?", **{"cache-control": "no-cache"})
    assert refreshed.headers["x-cache"] != "HIT-L1" and upstream.calls(MODEL) == 2
    # the fresh answer was stored: a new question asked with no-cache is then a hit
    ask(gateway, "capital of Italy?", **{"cache-control": "no-cache"})
    again = ask(gateway, "capital of Italy?")
    assert again.headers["x-cache"].startswith("HIT") and upstream.calls(MODEL) == 3
    assert again.json()["choices"][0]["message"]["content"] == "Paris."


def test_no_store_neither_reads_nor_writes(upstream, make_settings, start_gateway):
    gateway = start_gateway(make_settings(workers=[upstream.url]))
    ask(gateway, "capital of Spain?", **{"cache-control": "no-store"})
    again = ask(gateway, "capital of Spain?")
    assert again.headers["x-cache"] == "MISS" and upstream.calls(MODEL) == 2
