"""The token stages in the pipeline, without a worker: policy resolution, ``off`` leaves
the upstream request byte-identical, a rewrite goes upstream while the client's request
(cache key, prompt hash) stays as sent, and bad policies are a 400."""

from __future__ import annotations

import asyncio
import json

import httpx
import orjson
import pytest

from services.caching.prefix import cacheable_prefix_hash
from services.errors import InvalidRequest
from services.gateway.auth import Principal
from services.gateway.pipeline import Pipeline, Reply, RequestContext
from services.gateway.stages import TokenOptimizationStage, TokenPolicyStage
from services.gateway.stages.dispatch import upstream_payload
from services.protocol import ChatCompletionRequest
from services.tokens import TokenOptimizer

DOC = json.dumps({"items": [{"sku": f"A-{i}", "qty": i, "price": 2.5 * i} for i in range(12)]},
                 indent=4)
BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You   answer   from the data.\n\n\n\n" + DOC},
        {"role": "user", "content": "What is the price of   A-7?  "},
    ],
    "temperature": 0,
    "max_tokens": 8,
}


class Capture:
    """The last stage: keeps what dispatch would have sent."""

    name = "capture"

    def __init__(self) -> None:
        self.sent: bytes | None = None

    async def __call__(self, ctx: RequestContext, call_next) -> Reply:
        self.sent = upstream_payload(ctx)
        return Reply(body=b"{}")


def context(headers: dict[str, str] | None = None, tenant: str = "t") -> RequestContext:
    request = ChatCompletionRequest.model_validate(BODY)
    return RequestContext(request_id="r", endpoint="chat.completions", request=request,
                          principal=Principal(tenant=tenant), model_requested=request.model,
                          request_headers=headers or {})


def run(ctx: RequestContext, policy_stage: TokenPolicyStage) -> bytes:
    capture = Capture()
    pipeline = Pipeline([policy_stage, TokenOptimizationStage(TokenOptimizer()), capture])
    asyncio.run(pipeline(ctx))
    assert capture.sent is not None
    return capture.sent


def test_off_sends_the_request_byte_identical() -> None:
    ctx = context({"x-token-optimization": "off"})
    sent = run(ctx, TokenPolicyStage(default="lossless"))
    untouched = context()
    assert sent == upstream_payload(untouched)
    assert "x-tokens-saved" not in ctx.response_headers and ctx.upstream_request is None


def test_lossless_rewrites_what_goes_upstream_not_the_clients_request() -> None:
    ctx = context()
    sent = orjson.loads(run(ctx, TokenPolicyStage(default="lossless")))
    assert ctx.request_dict == ChatCompletionRequest.model_validate(BODY).model_dump(
        exclude_unset=True)  # cache keys and prompt hashes see the request as sent
    saved = int(ctx.response_headers["x-tokens-saved"])
    assert saved > 0 and saved == (ctx.prompt_tokens_before_optimization
                                   - ctx.prompt_tokens_after_optimization)
    system = sent["messages"][0]["content"]
    assert json.loads(system.split("\n\n", 1)[1]) != {} and "   " not in system
    assert sent["messages"][1]["content"] == "What is the price of A-7?  "  # edges kept
    assert ctx.token_stages and "json" in ctx.token_stages


def test_a_marked_cacheable_prefix_is_sent_as_written() -> None:
    stage = TokenOptimizationStage(TokenOptimizer())
    stage.marked_prefixes = frozenset({cacheable_prefix_hash(BODY["messages"][:1])})
    for policy in ("lossless", "ratio=4"):
        ctx, capture = context({"x-token-optimization": policy}), Capture()
        asyncio.run(Pipeline([TokenPolicyStage(), stage, capture])(ctx))
        assert capture.sent is not None
        sent = orjson.loads(capture.sent)
        assert sent["messages"][0] == BODY["messages"][0], policy  # byte for byte
        # the rest of the request is still optimised
        assert sent["messages"][1]["content"] == "What is the price of A-7?  ", policy
    other = context({"x-token-optimization": "lossless"})
    other.request_dict["messages"][0]["content"] += " "  # not the marked prefix
    assert stage.kept_leading(other) == 0


def test_tenant_policy_applies_and_the_header_wins() -> None:
    stage = TokenPolicyStage(default="off", tenants={"gold": "ratio=2"})
    assert str(stage.resolve(context(tenant="gold"))) == "ratio=2"
    assert str(stage.resolve(context(tenant="other"))) == "off"
    assert str(stage.resolve(context({"x-token-optimization": "budget=50"}, "gold"))) == (
        "budget=50")


@pytest.mark.parametrize("value", ["fast", "budget=", "budget=-3", "budget=1.5", "ratio=0.5",
                                   "ratio=nan", "ratio=x", "lossles"])
def test_bad_policy_values_are_invalid_requests(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        TokenPolicyStage().resolve(context({"x-token-optimization": value}))
    assert caught.value.status_code == 400 and caught.value.param == "X-Token-Optimization"


def test_bad_tenant_configuration_fails_at_startup() -> None:
    with pytest.raises(InvalidRequest):
        TokenPolicyStage(tenants={"t": "half"})


def test_bad_policy_is_a_400_from_the_gateway(make_settings, start_gateway) -> None:
    gateway = start_gateway(make_settings())
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY,
                          headers={"x-token-optimization": "ratio=zero"}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "X-Token-Optimization" and "ratio" in error["message"]


def test_lossy_answers_are_cached_apart_from_full_prompt_answers() -> None:
    from services.gateway.stages import CacheStage
    from services.tokens import Policy

    stage = CacheStage(cache=None)  # type: ignore[arg-type]  # namespace() needs no cache
    ctx = context()
    plain = stage.namespace(ctx)
    ctx.token_policy = Policy.parse("lossless")
    assert stage.namespace(ctx) == plain  # lossless keeps the meaning: same answers
    ctx.token_policy = Policy.parse("ratio=5")
    lossy = stage.namespace(ctx)
    ctx.token_policy = Policy.parse("ratio=10")
    assert len({plain, lossy, stage.namespace(ctx)}) == 3
