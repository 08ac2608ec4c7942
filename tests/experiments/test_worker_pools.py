"""A config version's worker pool: a real gateway with two upstream workers serving the
same model, one per pool (as two vLLM versions would be). The arm that names a pool is
served only by that pool's workers; the other arm by either. A pool the settings do not
define is refused when the version is written, and answered 503 if one reaches a request."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import RequestLog
from services.experiments import create_config, create_experiment, transition
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import wait_for


@pytest.fixture
def workers():
    old, new = (FakeOpenAI({"base": Answer("Hello.")}).start() for _ in range(2))
    yield old, new
    old.stop()
    new.stop()


def _chat(gateway, unit: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30,
                      headers={"x-experiment-unit": unit},
                      json={"model": "base", "max_tokens": 4,
                            "messages": [{"role": "user", "content": f"hi {unit}"}]})


def test_an_arm_naming_a_worker_pool_is_served_by_that_pool_only(
        workers, make_settings, start_gateway) -> None:
    old, new = workers
    gateway = start_gateway(make_settings(
        workers=[old.url, new.url], worker_pools={"vllm-old": [old.url], "vllm-new": [new.url]},
        experiments_refresh_s=0.2, cache_enabled=False))
    assert wait_for(lambda: len([w for w in gateway.services.pool.workers if w.healthy]) == 2,
                    30)
    admin = f"{gateway.url}/admin/configs"
    refused = httpx.post(admin, json={"name": "x", "overrides": {"worker_pool": "vllm-9"}})
    assert refused.status_code == 400, refused.text
    assert "no pool 'vllm-9'" in refused.json()["error"]["message"]
    for name, overrides in (("same", {}), ("upgrade", {"worker_pool": "vllm-new"})):
        assert httpx.post(admin, json={"name": name, "overrides": overrides}).status_code == 201
    engine = gateway.services.engine
    create_experiment(engine, "pools", [{"name": "a", "config": "same", "weight": 0.5},
                                        {"name": "b", "config": "upgrade", "weight": 0.5}],
                      actor="t", unit="header")
    transition(engine, "pools", "start", actor="t")
    assert wait_for(lambda: _chat(gateway, "probe").headers.get("x-experiment"), 10)

    arms = {}
    for i in range(60):
        reply = _chat(gateway, f"user-{i}")
        assert reply.status_code == 200, reply.text
        arms[reply.headers["x-request-id"]] = reply.headers["x-experiment"]
    gateway.flush_telemetry()
    with Session(engine) as s:
        served = dict(s.execute(select(RequestLog.id, RequestLog.worker).where(
            RequestLog.id.in_(list(arms)))).all())
    by_arm: dict[str, set[str]] = {}
    for request_id, arm in arms.items():
        by_arm.setdefault(arm, set()).add(served[request_id])
    assert by_arm["pools=b"] == {new.url}
    assert old.url in by_arm["pools=a"]  # the control arm is not fenced

    # the same change proposed as a canary through the admin API
    transition(engine, "pools", "abort", actor="t")
    proposals = f"{gateway.url}/admin/experiments/proposals"
    bad = httpx.post(proposals, json={"proposal": {"worker_pool": "vllm-9"}, "prefix": "up"})
    assert bad.status_code == 400 and "no pool 'vllm-9'" in bad.json()["error"]["message"]
    made = httpx.post(proposals, json={"proposal": {"worker_pool": "vllm-new",
                                                    "cache_enabled": True}, "prefix": "up"})
    assert made.status_code == 201, made.text
    (canary,) = made.json()["canaries"]
    assert (canary["name"], canary["status"]) == ("up-worker_pool", "running")
    assert list(made.json()["skipped"]) == ["cache_enabled"]


def test_a_pool_missing_from_the_settings_is_a_503_not_another_worker(
        workers, make_settings, start_gateway) -> None:
    old, _ = workers
    gateway = start_gateway(make_settings(workers=[old.url], experiments_refresh_s=0.2,
                                          cache_enabled=False))
    engine = gateway.services.engine
    # written without the gateway's settings to check against (another replica's)
    create_config(engine, "elsewhere", {"worker_pool": "vllm-new"}, actor="t")
    create_config(engine, "same", {}, actor="t")
    create_experiment(engine, "pools", [{"name": "a", "config": "same", "weight": 0.0},
                                        {"name": "b", "config": "elsewhere", "weight": 1.0}],
                      actor="t", unit="header")
    transition(engine, "pools", "start", actor="t")
    assert wait_for(lambda: _chat(gateway, "u").status_code == 503, 10)
    before = old.calls("base")  # answered before the gateway read the experiment
    reply = _chat(gateway, "u")
    assert "no worker pool 'vllm-new'" in reply.json()["error"]["message"]
    assert old.calls("base") == before
