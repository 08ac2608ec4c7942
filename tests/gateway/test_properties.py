"""Property tests (hypothesis) of what every request goes through before any upstream:
parsing, the body sent upstream and cache keys. Random tenants, prompts, numbers and
unicode: a bad request is a 400 (``InvalidRequest``), never another exception; what
parses can be sent and keyed; keys never cross tenants. A last property drives real
HTTP against a gateway with two tenants and a shared cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.caching.keys import cache_key, canonical_request
from services.errors import InvalidRequest
from services.gateway.auth import Principal
from services.gateway.pipeline import RequestContext
from services.gateway.routes.openai import parse_body
from services.gateway.stages.cache import CacheStage
from services.protocol import ChatCompletionRequest, CompletionRequest
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway

# numbers of every size (beyond 64 bits too), floats including nan/inf, and unicode
numbers = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True))
text = st.text(max_size=40)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)), max_leaves=12)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot"])
contents = st.one_of(text, st.none(), st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url"]), "text": text}), max_size=3), numbers)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}, optional={
    "name": text, "tool_calls": json_values}), max_size=4)
fields = st.fixed_dictionaries({}, optional={
    "model": st.one_of(text, numbers), "messages": st.one_of(messages, json_values),
    "prompt": st.one_of(text, st.lists(text, max_size=3), st.lists(numbers, max_size=3),
                        json_values),
    "max_tokens": numbers, "max_completion_tokens": numbers, "n": numbers, "seed": numbers,
    "temperature": numbers, "top_p": numbers, "logprobs": st.one_of(st.booleans(), numbers),
    "stream": st.one_of(st.booleans(), json_values), "stop": json_values,
    "stream_options": json_values, "tools": json_values, "top_k": numbers,
    "ignore_eos": json_values, "vendor_extra": json_values,
})
# stdlib json writes integers of any size (and NaN/Infinity, which JSON does not allow)
bodies = st.one_of(fields.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64),
                   json_values.map(lambda v: json.dumps(v).encode()))
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@settings(PROPERTY, max_examples=200)
@given(body=bodies)
def test_any_body_parses_or_is_a_400_and_what_parses_can_be_sent_and_keyed(body: bytes):
    for model in (ChatCompletionRequest, CompletionRequest):
        try:
            parsed = parse_body(model, body)
        except InvalidRequest as exc:
            assert exc.status_code == 400 and len(exc.message) < 2000
            continue
        ctx = RequestContext(request_id="req-x", endpoint="chat.completions"
                             if model is ChatCompletionRequest else "completions",
                             request=parsed, principal=Principal("t"),
                             model_requested=parsed.model)
        sent = orjson.dumps(ctx.upstream_body())  # what dispatch sends: never refused
        assert orjson.loads(sent)["model"] == parsed.model
        key = cache_key("tenant/t", ctx.endpoint, ctx.request_dict)
        assert key == cache_key("tenant/t", ctx.endpoint, dict(reversed(
            ctx.request_dict.items())))  # field order does not matter
        assert canonical_request(ctx.endpoint, ctx.request_dict)


tenants = st.text(min_size=1, max_size=12)
namespaces = st.one_of(st.none(), st.text(max_size=12))


def _namespace(stage: CacheStage, tenant: str, header: str | None) -> str:
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "q"}])
    headers = {"x-cache-namespace": header} if header is not None else {}
    ctx = RequestContext(request_id="r", endpoint="chat.completions", request=request,
                         principal=Principal(tenant), model_requested="m",
                         request_headers=headers)
    return stage.namespace(ctx)


@PROPERTY
@given(a=tenants, b=tenants, header_a=namespaces, header_b=namespaces)
def test_cache_namespaces_never_cross_tenants(a, b, header_a, header_b) -> None:
    stage = CacheStage(cache=None, shared_namespaces=frozenset({"faq"}))  # type: ignore[arg-type]
    ns_a, ns_b = _namespace(stage, a, header_a), _namespace(stage, b, header_b)
    shared = {header_a, header_b} & {"faq"}
    if a != b and not shared:
        assert ns_a != ns_b
        request = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        assert cache_key(ns_a, "chat.completions", request) != cache_key(
            ns_b, "chat.completions", request)


@pytest.fixture(scope="module")
def two_tenant_gateway(tmp_path_factory) -> Iterator[RunningGateway]:
    from services.settings import load_settings

    fake = FakeOpenAI({"m": Answer()}).start()
    settings = load_settings(env="test", data_dir=tmp_path_factory.mktemp("props"),
                             workers=[fake.url], api_keys=["sk-a:team-a", "sk-b:team-b"],
                             health_interval_s=0.5)
    gateway = RunningGateway(settings).start()
    yield gateway
    gateway.stop()
    fake.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prompt=st.text(min_size=1, max_size=200), tenant_first=st.booleans(),
       max_tokens=st.one_of(st.integers(1, 64), st.integers(1, 64), numbers))
def test_over_http_no_500_and_no_answer_crosses_tenants(
    two_tenant_gateway: RunningGateway, prompt: str, max_tokens: Any, tenant_first: bool
) -> None:
    body: dict[str, Any] = {"model": "m", "temperature": 0, "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": prompt}]}
    keys = ["sk-a", "sk-b"] if tenant_first else ["sk-b", "sk-a"]
    raw = json.dumps(body).encode()  # NaN and huge integers too
    with httpx.Client(base_url=two_tenant_gateway.url, timeout=30, headers={
            "content-type": "application/json"}) as client:
        first = client.post("/v1/chat/completions", content=raw,
                            headers={"authorization": f"Bearer {keys[0]}"})
        assert first.status_code < 500, first.text
        if first.status_code != 200:
            assert first.status_code == 400 and "error" in first.json()
            return
        marker = {"content": f"{prompt} #{keys[1]}"}  # unique to the second tenant
        other = client.post("/v1/chat/completions", headers={
            "authorization": f"Bearer {keys[1]}"}, json={**body, "messages": [
                {"role": "user", **marker}]})
        again = client.post("/v1/chat/completions", content=raw,
                            headers={"authorization": f"Bearer {keys[1]}"})
    assert other.status_code == 200 and again.status_code == 200
    # the second tenant never reads the first tenant's entry: its first sight of this
    # exact request is a miss unless it sent it in an earlier example itself
    seen = _SEEN.setdefault(keys[1], set())
    if prompt not in seen:
        assert again.headers["x-cache"] == "MISS", (prompt, again.headers["x-cache"])
    seen.add(prompt)


_SEEN: dict[str, set[str]] = {}
