"""Token optimisation through the gateway in front of a real vLLM worker: savings in the
model's own tokens (the worker's /tokenize), recorded in request_log; the cache still
keys on the request as sent; a bad policy is a 400 even when the cache would answer."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from models import RequestLog
from services.caching.prefix import cacheable_prefix_hash
from services.tokens.evaluation import Prefix, mark_cacheable
from tests.support.gateway import wait_for

CONTEXT = ("Shipping   notes:     \n\n\n\n\n" + "Orders ship   within   2 days.     \n" * 3
           + "\n\n\n```\nkeep    this   code\n```\n")
BODY = {
    "model": "tiny-llama",
    "messages": [{"role": "system", "content": CONTEXT},
                 {"role": "user", "content": "When do orders ship?"}],
    "max_tokens": 4,
    "temperature": 0,
}


def post(gateway, policy: str | None, body: dict | None = None) -> httpx.Response:
    headers = {"x-token-optimization": policy} if policy else {}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body or BODY,
                      headers=headers, timeout=120)


def test_lossless_saves_model_tokens_and_records_them(vllm_gateway) -> None:
    first = post(vllm_gateway, "lossless")
    assert first.status_code == 200, first.text
    saved = int(first.headers["x-tokens-saved"])
    assert saved > 0 and first.headers["x-token-optimization"] == "lossless"

    hit = post(vllm_gateway, "lossless")
    assert hit.headers["x-cache"] == "HIT-L1"  # keyed on the request as the client sent it
    bad = post(vllm_gateway, "budget=lots")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Token-Optimization"

    vllm_gateway.flush_telemetry()
    with vllm_gateway.services.sessions() as session:
        row = session.scalars(select(RequestLog).where(RequestLog.cache_layer == "MISS")).one()
    assert row.token_policy == "lossless"
    assert row.prompt_tokens_before_optimization - row.prompt_tokens_after_optimization == saved
    # the worker's own count of what it was sent is what it billed
    assert row.prompt_tokens == row.prompt_tokens_after_optimization
    assert row.token_stages and row.token_stages.get("layout", 0) > 0


def test_streams_and_lossy_policies_reach_the_worker(vllm_gateway) -> None:
    body = {**BODY, "stream": True, "temperature": 0.7}
    with httpx.stream("POST", f"{vllm_gateway.url}/v1/chat/completions", json=body,
                      headers={"x-token-optimization": "ratio=2"}, timeout=120) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert int(response.headers["x-tokens-saved"]) > 0
    assert events[-1] == "data: [DONE]" and len(events) > 1
    vllm_gateway.flush_telemetry()
    with vllm_gateway.services.sessions() as session:
        row = session.scalars(select(RequestLog).where(RequestLog.stream.is_(True))).one()
    assert row.token_policy == "ratio=2"
    assert row.prompt_tokens == row.prompt_tokens_after_optimization
    assert row.prompt_tokens_after_optimization < row.prompt_tokens_before_optimization


def test_a_prefix_marked_cacheable_reaches_the_worker_as_written(
        vllm_worker, make_settings, start_gateway) -> None:
    gateway = start_gateway(make_settings(workers=[vllm_worker.base_url],
                                          token_marked_prefixes_refresh_s=0.2))
    tidied = post(gateway, "lossless")  # not marked yet: the system prompt is tidied
    assert int(tidied.headers["x-tokens-saved"]) > 0
    lead = BODY["messages"][:1]
    key = cacheable_prefix_hash(lead)
    mark_cacheable(gateway.services.engine,
                   [Prefix(key, "chat", 40, 5, CONTEXT, lead)], store_text=True)
    tokens = gateway.services.tokens
    assert tokens is not None and wait_for(lambda: key in tokens.marked_prefixes)

    kept = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, timeout=120,
                      headers={"x-token-optimization": "lossless",
                               "cache-control": "no-cache"})
    assert kept.status_code == 200, kept.text
    assert kept.headers["x-tokens-saved"] == "0"
    gateway.flush_telemetry()
    with gateway.services.sessions() as session:
        first = session.get(RequestLog, tidied.headers["x-request-id"])
        second = session.get(RequestLog, kept.headers["x-request-id"])
    assert first is not None and second is not None and second.token_policy == "lossless"
    # the worker was sent the request as written: its own count of the original prompt
    assert second.prompt_tokens == first.prompt_tokens_before_optimization
    # nothing saved: both counts are the worker's own (the stage skips /tokenize at 0)
    assert second.prompt_tokens_before_optimization == second.prompt_tokens
    assert second.prompt_tokens_after_optimization == second.prompt_tokens
    assert first.prompt_tokens < first.prompt_tokens_before_optimization
