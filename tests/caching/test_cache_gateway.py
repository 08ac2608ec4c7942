"""The cache through the gateway, in front of a real vLLM worker."""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from models import RequestLog
from services.workers import free_port
from tests.support.redis import ThrowawayRedis

MODEL = "tiny-llama"
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a fact."}],
    "max_tokens": 8,
    "temperature": 0,
}


def post(gateway, body=CHAT, path="/v1/chat/completions", **headers) -> httpx.Response:
    response = httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response


def vllm_requests(worker) -> float:
    """Requests vLLM itself has finished, from its own Prometheus metrics."""
    text = httpx.get(f"{worker.base_url}/metrics").text
    return sum(
        float(v)
        for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)", text, re.MULTILINE)
    )


def test_second_identical_request_is_an_l1_hit_that_costs_nothing(vllm_gateway) -> None:
    first = post(vllm_gateway)
    second = post(vllm_gateway)
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT-L1"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert second.json()["id"] != first.json()["id"]
    vllm_gateway.flush_telemetry()
    with vllm_gateway.services.sessions() as session:
        rows = session.scalars(select(RequestLog).order_by(RequestLog.created_at)).all()
    assert [r.cache_layer for r in rows] == ["MISS", "L1"]
    assert rows[0].cost_usd > 0 and rows[1].cost_usd == 0
    assert rows[1].baseline_cost_usd == rows[0].baseline_cost_usd > 0  # what the hit saved
    assert rows[1].worker is None and rows[1].model_served == MODEL


def test_tenants_never_share_entries(vllm_worker, make_settings, start_gateway) -> None:
    gateway = start_gateway(
        make_settings(workers=[vllm_worker.base_url], api_keys=["key-a:tenant-a", "key-b:tenant-b"])
    )
    assert post(gateway, authorization="Bearer key-a").headers["x-cache"] == "MISS"
    assert post(gateway, authorization="Bearer key-a").headers["x-cache"] == "HIT-L1"
    assert post(gateway, authorization="Bearer key-b").headers["x-cache"] == "MISS"
    # a namespace header does not escape the tenant unless the namespace is shared
    assert (
        post(
            gateway, authorization="Bearer key-b", **{"x-cache-namespace": "tenant/tenant-a"}
        ).headers["x-cache"]
        == "MISS"
    )


def test_shared_namespace_only_by_explicit_config(vllm_worker, make_settings, start_gateway):
    gateway = start_gateway(
        make_settings(
            workers=[vllm_worker.base_url],
            api_keys=["key-a:tenant-a", "key-b:tenant-b"],
            cache_shared_namespaces=["public-faq"],
        )
    )
    shared = {"x-cache-namespace": "public-faq"}
    assert post(gateway, authorization="Bearer key-a", **shared).headers["x-cache"] == "MISS"
    assert post(gateway, authorization="Bearer key-b", **shared).headers["x-cache"] == "HIT-L1"


def test_sampled_requests_are_cached_only_on_opt_in(vllm_gateway) -> None:
    body = {**CHAT, "temperature": 0.8}
    assert post(vllm_gateway, body).headers["x-cache"] == "BYPASS"
    assert post(vllm_gateway, body).headers["x-cache"] == "BYPASS"
    no_temperature = {k: v for k, v in CHAT.items() if k != "temperature"}
    assert post(vllm_gateway, no_temperature).headers["x-cache"] == "BYPASS"
    optin = {"x-cache-sampled": "allow"}
    assert post(vllm_gateway, body, **optin).headers["x-cache"] == "MISS"
    assert post(vllm_gateway, body, **optin).headers["x-cache"] == "HIT-L1"


def test_cache_control_directives(vllm_gateway) -> None:
    assert post(vllm_gateway, **{"cache-control": "no-store"}).headers["x-cache"] == "BYPASS"
    assert post(vllm_gateway).headers["x-cache"] == "MISS"  # no-store stored nothing
    assert post(vllm_gateway, **{"cache-control": "no-cache"}).headers["x-cache"] == "MISS"
    time.sleep(1.1)
    hit = post(vllm_gateway, **{"cache-control": "max-age=60"})
    assert hit.headers["x-cache"] == "HIT-L1" and int(hit.headers["x-cache-age"]) >= 1
    assert post(vllm_gateway, **{"cache-control": "max-age=0"}).headers["x-cache"] == "MISS"
    bad = httpx.post(
        f"{vllm_gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={"cache-control": "max-age=soon"},
    )
    assert bad.status_code == 400 and "max-age" in bad.json()["error"]["message"]


def test_entries_expire(vllm_worker, make_settings, start_gateway) -> None:
    gateway = start_gateway(
        make_settings(workers=[vllm_worker.base_url], cache_l1_ttl_s=0.5, cache_l3_enabled=False)
    )
    assert post(gateway).headers["x-cache"] == "MISS"
    assert post(gateway).headers["x-cache"] == "HIT-L1"
    time.sleep(0.7)
    assert post(gateway).headers["x-cache"] == "MISS"


def test_stream_replay_equals_the_original(vllm_gateway) -> None:
    client = openai.OpenAI(base_url=f"{vllm_gateway.url}/v1", api_key="x")
    request = dict(
        model=MODEL,
        messages=CHAT["messages"],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )

    def run():
        raw = client.chat.completions.with_raw_response.create(**request)
        return raw.headers["x-cache"], list(raw.parse())

    live_status, live = run()
    replay_status, replay = run()
    assert (live_status, replay_status) == ("MISS", "HIT-L1")

    def text(chunks):
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(replay) == text(live) and text(live)
    assert replay[-1].usage == live[-1].usage and replay[-1].usage.completion_tokens == 24
    assert len([c for c in replay if c.choices]) > 3  # a real stream, not one chunk
    # a non-streaming request is served from the entry the stream left
    assert (
        post(vllm_gateway, {**CHAT, "max_tokens": 24, "ignore_eos": True}).headers["x-cache"]
        == "HIT-L1"
    )


def test_single_flight_makes_one_upstream_call(vllm_gateway, vllm_worker) -> None:
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": "single flight"}],
        "max_tokens": 32,
        "ignore_eos": True,
    }
    before = vllm_requests(vllm_worker)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: post(vllm_gateway, body), range(50)))
    assert vllm_requests(vllm_worker) - before == 1
    assert {r.json()["choices"][0]["message"]["content"] for r in replies} == {
        replies[0].json()["choices"][0]["message"]["content"]
    }
    statuses = sorted(r.headers["x-cache"] for r in replies)
    assert statuses.count("MISS") == 1 and statuses.count("HIT-L1") == 49


def test_shared_tiers_fill_l1_of_a_fresh_replica(vllm_worker, make_settings, start_gateway):
    redis_server = ThrowawayRedis(free_port()).start()
    try:
        settings = make_settings(workers=[vllm_worker.base_url], redis_url=redis_server.url)
        first = start_gateway(settings)
        assert post(first).headers["x-cache"] == "MISS"
        first.run(first.services.cache.drain())
        second = start_gateway(settings)  # same Redis and store, empty L1
        assert post(second).headers["x-cache"] == "HIT-L2"
        assert post(second).headers["x-cache"] == "HIT-L1"  # the L2 hit filled L1
        third = start_gateway(
            make_settings(workers=[vllm_worker.base_url], database_url=settings.database_url)
        )
        assert post(third).headers["x-cache"] == "HIT-L3"  # no Redis: the store's L3
    finally:
        redis_server.kill()


def test_redis_killed_mid_traffic_fails_no_request(vllm_worker, make_settings, start_gateway):
    redis_server = ThrowawayRedis(free_port()).start()
    gateway = start_gateway(
        make_settings(workers=[vllm_worker.base_url], redis_url=redis_server.url)
    )
    statuses = []
    for i in range(30):
        if i == 10:
            redis_server.kill()
        body = {**CHAT, "messages": [{"role": "user", "content": f"q{i % 15}"}], "max_tokens": 2}
        statuses.append(post(gateway, body).status_code)
    assert statuses == [200] * 30
    # the dead Redis was noticed and skipped: its breaker counted failures in a row and
    # opened (no success since the kill could have reset it)
    breaker = gateway.services.cache.tiers[1].breaker
    assert breaker.failures >= breaker.threshold and breaker.open_until > 0


def ask(gateway, text, key=None, system=None, **headers):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    if key:
        headers["authorization"] = f"Bearer {key}"
    response = post(gateway, {**CHAT, "messages": messages}, **headers)
    stages = gateway.services.serving._pipeline.stages
    cache_stage = next(s for s in stages if s.name == "cache")
    gateway.run(cache_stage.drain())  # indexing is async
    return response.headers["x-cache"]


def test_semantic_hits_stay_inside_tenant_and_context(
    vllm_worker, make_settings, start_gateway
) -> None:
    gateway = start_gateway(
        make_settings(
            workers=[vllm_worker.base_url],
            api_keys=["key-a:tenant-a", "key-b:tenant-b"],
            cache_semantic_tenants=["tenant-a", "tenant-b"],
        )
    )
    assert ask(gateway, "How do I reset my password?", "key-a") == "MISS"
    assert ask(gateway, "how do I reset my password", "key-a") == "HIT-SEMANTIC"
    assert ask(gateway, "how do I reset my password", "key-b") == "MISS"  # other tenant
    assert (
        ask(gateway, "how do I reset my password", "key-a", system="You are a pirate.") == "MISS"
    )  # other context
    assert (
        ask(gateway, "How do I reset my password?", "key-a", **{"x-cache-semantic": "off"})
        == "HIT-L1"
    )  # exact hits are unaffected
    assert ask(gateway, "Why can't I reset my password?", "key-a") == "MISS"


def test_a_tenant_may_trade_precision_for_recall(vllm_worker, make_settings, start_gateway
                                                ) -> None:
    gateway = start_gateway(make_settings(
        workers=[vllm_worker.base_url], api_keys=["key-a:tenant-a", "key-b:tenant-b"],
        cache_semantic_tenants=["*"], cache_semantic_verifier="features",
        cache_semantic_tenant_min_probability={"tenant-a": 0.6}))
    for key in ("key-a", "key-b"):
        assert ask(gateway, "How do I reset my password?", key) == "MISS"
    # the verifier gives this paraphrase about 0.86: under the calibrated 0.95, over 0.6
    reworded = "How can I reset the password of my account?"
    assert ask(gateway, reworded, "key-a") == "HIT-SEMANTIC"
    assert ask(gateway, reworded, "key-b") == "MISS"
    # about 0.49: under tenant-a's threshold too
    assert ask(gateway, "What should I do if I forgot my password?", "key-a") == "MISS"


@pytest.mark.parametrize("verifier", ["features", "cross-encoder", "cross-encoder-static"])
def test_semantic_guards_refuse_a_changed_number_negation_or_entity(
        verifier, vllm_worker, make_settings, start_gateway) -> None:
    """At a tenant threshold low enough to serve a loose paraphrase, a question that
    differs only in a number, a negation or a named entity is still answered upstream."""
    gateway = start_gateway(make_settings(
        workers=[vllm_worker.base_url], api_keys=["key-a:tenant-a"],
        cache_semantic_tenants=["*"], cache_semantic_verifier=verifier,
        cache_semantic_tenant_min_probability={"tenant-a": 0.3}))
    semantic = next(s for s in gateway.services.serving._pipeline.stages
                    if s.name == "cache")._semantic
    assert ask(gateway, "How can I lose weight quickly?", "key-a") == "MISS"
    assert ask(gateway, "How can I lose weight fast?", "key-a") == "HIT-SEMANTIC"
    for stored, changed in [
        ("How do I convert 15 miles to kilometres?", "How do I convert 25 miles to kilometres?"),
        ("Why is my phone not charging?", "Why is my phone charging?"),
        ("How do I get a visa for Canada?", "How do I get a visa for Australia?"),
    ]:
        assert ask(gateway, stored, "key-a") == "MISS"
        passes = semantic.dense_texts
        assert ask(gateway, changed, "key-a") == "MISS", changed
        assert semantic.dense_texts == passes, changed  # refused by a rule, no MiniLM pass
        assert ask(gateway, stored.lower().rstrip("?"), "key-a") == "HIT-SEMANTIC"
    if verifier == "cross-encoder-static":  # its hits and misses alike ran no MiniLM pass
        assert semantic.dense_texts == 0


def test_the_cross_encoder_serves_a_paraphrase_and_refuses_a_changed_question(
        vllm_worker, make_settings, start_gateway) -> None:
    gateway = start_gateway(
        make_settings(workers=[vllm_worker.base_url], cache_semantic_tenants=["*"],
                      cache_semantic_verifier="cross-encoder")
    )
    stage = next(s for s in gateway.services.serving._pipeline.stages if s.name == "cache")
    verifier = stage._semantic.verifier
    assert verifier.kind == "cross-encoder"
    assert ask(gateway, "What is the best way to learn Python?") == "MISS"
    scored = verifier.pairs_scored
    assert ask(gateway, "What is the best way to learn Python programming?") == "HIT-SEMANTIC"
    assert verifier.pairs_scored == scored + 1  # the model judged it, not a rule
    assert ask(gateway, "What is the best way to learn Python in 2 weeks?") == "MISS"  # number
    assert ask(gateway, "Why is it not the best way to learn Python?") == "MISS"  # negation
    # too long for the model's window: not looked up, not indexed, answered upstream
    long = " ".join(["Here is a long description of what I need to learn."] * 12)
    assert ask(gateway, long) == "MISS"
    assert ask(gateway, long.lower()) == "MISS"


def test_semantic_is_opt_in(vllm_gateway) -> None:
    on = {"x-cache-semantic": "on"}
    assert ask(vllm_gateway, "How do I reset my password?") == "MISS"
    assert ask(vllm_gateway, "how do I reset my password") == "MISS"  # tenant not opted in
    # only opted-in requests are indexed: an opted-in question is matched later
    assert ask(vllm_gateway, "How can I contact customer support?", **on) == "MISS"
    assert ask(vllm_gateway, "how can I contact customer support", **on) == "HIT-SEMANTIC"


def test_semantic_index_is_shared_by_replicas(vllm_worker, make_settings, start_gateway):
    settings = make_settings(workers=[vllm_worker.base_url], cache_semantic_tenants=["*"])
    first = start_gateway(settings)
    assert ask(first, "How do I reset my password?") == "MISS"
    second = start_gateway(settings)  # rebuilds its index from the store on start
    assert ask(second, "how do I reset my password") == "HIT-SEMANTIC"
