"""End to end: two real gateway replicas on one store, a fake upstream whose models
answer at different speeds, config versions choosing the model, canaries driven by the
controller (the experiments flow's function) through the admin API. A slower config is
rolled back and every replica drops it within seconds; a faster one reaches 100%."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import ConfigAudit, RequestLog
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import wait_for


@pytest.fixture
def upstream():
    server = FakeOpenAI({"base": Answer("Hello.", delay_s=0.04),
                         "slow": Answer("Hello.", delay_s=0.15),
                         "fast": Answer("Hello.", delay_s=0.005)}).start()
    yield server
    server.stop()


@pytest.fixture
def replicas(upstream, make_settings, start_gateway, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared-store.db'}"
    common = {"workers": [upstream.url], "database_url": url, "experiments_refresh_s": 0.2,
              "telemetry_batch_size": 50}
    first = start_gateway(make_settings(**common))
    second = start_gateway(make_settings(**common, data_dir=tmp_path / "replica-2"))
    for g in (first, second):
        assert wait_for(lambda g=g: "base" in g.services.pool.models(), 30)
    return first, second


def _chat(gateway, unit: str | None, i: int) -> httpx.Response:
    headers = {"x-experiment-unit": unit} if unit is not None else {}
    return httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "base", "max_tokens": 4,
                            "messages": [{"role": "user", "content": f"question {i}"}]})


def _drive(replicas, name: str, start: int, until: tuple[str, ...]) -> dict:
    """Send traffic in rounds of 80 requests (8 at a time, both replicas, one unit per
    request), then take one look, until the experiment's status is in ``until``."""
    admin = replicas[0].url + "/admin/experiments"
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(40):
            base = start + round_ * 80
            replies = list(pool.map(lambda i: _chat(replicas[i % 2], f"user-{i}", i),
                                    range(base, base + 80)))
            assert all(r.status_code == 200 for r in replies), replies[0].text
            for g in replicas:
                g.flush_telemetry()
            httpx.post(f"{admin}/analyse", timeout=30).raise_for_status()
            state = httpx.get(f"{admin}/{name}", timeout=30).json()
            if state["status"] in until:
                return state
    raise AssertionError(f"{name} did not reach {until}: {state}")


def test_slower_canary_rolls_back_and_faster_one_reaches_100_percent(upstream, replicas):
    first, second = replicas
    admin = first.url + "/admin"
    for name in ("base", "slow", "fast"):
        made = httpx.post(f"{admin}/configs", json={"name": name, "overrides": {"model": name}})
        assert made.status_code == 201, made.text
    refused = httpx.post(f"{admin}/configs", json={"name": "x", "overrides": {"workers": []}})
    assert refused.status_code == 400 and "unknown setting" in refused.json()["error"]["message"]
    canary = {"kind": "canary", "unit": "header", "steps": [0.25, 0.5, 1.0], "step_seconds": 0,
              "min_samples": 30, "start": True,
              "guardrails": [{"metric": "latency_ms"}, {"metric": "error_rate"}]}
    made = httpx.post(f"{admin}/experiments", json={
        **canary, "name": "slow-canary", "arms": [{"name": "control", "config": "base"},
                                                  {"name": "canary", "config": "slow"}]})
    assert made.status_code == 201, made.text

    # every replica applies it within its refresh; no unit header: not enrolled
    assert wait_for(lambda: all(_chat(g, "probe", 0).headers.get("x-experiment")
                                for g in replicas), 10)
    assert "x-experiment" not in _chat(first, None, 0).headers
    huge = _chat(first, "u" * 300, 0)
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "x-experiment-unit"
    # sticky: a unit sees one arm on both replicas
    arms = {_chat(g, "user-7", 7).headers["x-experiment"] for g in replicas for _ in range(2)}
    assert len(arms) == 1

    state = _drive(replicas, "slow-canary", 0, ("rolled_back", "promoted"))
    assert state["status"] == "rolled_back", state
    assert "latency_ms" in state["reason"]
    assert wait_for(lambda: not any(_chat(g, f"user-{i}", i).headers.get("x-experiment")
                                    for g in replicas for i in range(20)), 10)
    assert upstream.calls("slow") > 0

    made = httpx.post(f"{admin}/experiments", json={
        **canary, "name": "fast-canary", "arms": [{"name": "control", "config": "base"},
                                                  {"name": "canary", "config": "fast"}]})
    assert made.status_code == 201, made.text
    assert wait_for(lambda: all(_chat(g, "probe", 0).headers.get("x-experiment")
                                for g in replicas), 10)
    state = _drive(replicas, "fast-canary", 10_000, ("rolled_back", "promoted"))
    assert state["status"] == "promoted", state
    assert [a["weight"] for a in state["arms"]] == [0.0, 1.0]
    assert wait_for(lambda: all(
        _chat(g, f"user-{i}", i).headers.get("x-experiment") == "fast-canary=canary"
        for g in replicas for i in range(10)), 10)

    with Session(first.services.engine) as s:
        actions = [a for (a,) in s.execute(select(ConfigAudit.action).where(
            ConfigAudit.subject == "fast-canary").order_by(ConfigAudit.id))]
        arms_logged = set(s.scalars(select(RequestLog.experiment_arms).where(
            RequestLog.experiment_arms.is_not(None))))
        served = dict(s.execute(select(RequestLog.experiment_arms, RequestLog.model_served)
                                .where(RequestLog.experiment_arms == "slow-canary=canary")
                                .limit(1)).all())
    assert actions == ["experiment.create", "experiment.start", "experiment.advance",
                       "experiment.promote"]
    assert {"slow-canary=control", "slow-canary=canary", "fast-canary=canary"} <= arms_logged
    assert served == {"slow-canary=canary": "slow"}
