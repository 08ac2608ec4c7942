"""The experiment stage applies an arm's overrides where later stages read them."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from services.caching import CacheMetrics, MemoryCache, ResponseCache
from services.errors import InvalidRequest
from services.experiments import LiveExperiment
from services.experiments.assignment import live_arms
from services.gateway.auth import Principal
from services.gateway.pipeline import Pipeline, Reply, RequestContext
from services.gateway.stages import CacheStage, TokenPolicyStage
from services.gateway.stages.experiments import ExperimentStage
from services.protocol import ChatCompletionRequest

OVERRIDES = {"token_optimization": "lossless", "cache_semantic": False,
             "cache_semantic_min_probability": 0.8, "model": "other-model",
             "max_latency_ms": 500.0, "cache_enabled": False}


class Capture:
    name = "capture"
    ctx: RequestContext | None = None

    async def __call__(self, ctx: RequestContext, call_next) -> Reply:
        self.ctx = ctx
        return Reply(body=b"{}")


def _ctx(tenant: str = "t1", headers: dict[str, str] | None = None) -> RequestContext:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return RequestContext(request_id="r", endpoint="chat.completions", request=request,
                          principal=Principal(tenant=tenant), model_requested="m",
                          request_headers=headers or {})


def _stage(unit: str = "tenant", tenants: frozenset[str] | None = None) -> ExperimentStage:
    stage = ExperimentStage(max_unit_chars=16)
    stage.live = [LiveExperiment("e1", unit, tenants, live_arms(
        [("a", "cfg-a", OVERRIDES, 1.0), ("b", "cfg-b", {}, 0.0)]))]
    return stage


def _run(stage: ExperimentStage, ctx: RequestContext) -> RequestContext:
    capture = Capture()
    asyncio.run(Pipeline([stage, TokenPolicyStage("budget=64"), capture])(ctx))
    assert capture.ctx is not None
    return capture.ctx


def test_overrides_reach_the_settings_later_stages_read() -> None:
    ctx = _run(_stage(), _ctx(headers={"x-token-optimization": "off", "X-Other": "1"}))
    assert ctx.experiment_arms == "e1=a"
    assert ctx.response_headers["x-experiment"] == "e1=a"
    assert str(ctx.token_policy) == "lossless"  # the arm wins over header and default
    assert ctx.request_headers["x-cache-semantic"] == "off"
    assert ctx.request_headers["cache-control"] == "no-store"
    assert ctx.request_headers["x-max-latency-ms"] == "500.0"
    assert ctx.request_headers["x-other"] == "1"
    assert ctx.model == "other-model" and ctx.model_requested == "m"
    cache = CacheStage(ResponseCache([MemoryCache(max_bytes=1 << 20, ttl_s=60,
                                                  max_entry_bytes=1 << 16)],
                                     CacheMetrics(CollectorRegistry())),
                       semantic_min_probability={"t1": 0.99})
    assert cache.min_probability(ctx) == 0.8
    assert cache.namespace(ctx).endswith("#arms=e1=a")
    assert cache.namespace(_ctx()) == "tenant/t1"


def test_requests_outside_the_experiment_are_untouched() -> None:
    ctx = _run(_stage(tenants=frozenset({"t2"})), _ctx("t1"))
    assert ctx.experiment_arms is None and str(ctx.token_policy) == "budget=64"
    ctx = _run(_stage(unit="header"), _ctx("t2"))  # no unit header: not enrolled
    assert ctx.experiment_arms is None and ctx.model == "m"


def test_a_huge_unit_header_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        _run(_stage(unit="header"), _ctx(headers={"x-experiment-unit": "u" * 17}))
    assert err.value.param == "x-experiment-unit"
    ctx = _run(_stage(unit="header"), _ctx(headers={"x-experiment-unit": "u" * 16}))
    assert ctx.experiment_arms == "e1=a"
    idle = ExperimentStage(max_unit_chars=16)  # refused with no live experiment too
    with pytest.raises(InvalidRequest):
        _run(idle, _ctx(headers={"x-experiment-unit": "u" * 17}))
