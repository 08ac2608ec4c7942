"""API fuzzing from the gateway's own OpenAPI schema (schemathesis): every operation,
random valid and invalid inputs, and the rule "no 5xx except the documented upstream
ones" (502/503/504 of the inference routes with an upstream error type, 503
store_unavailable of the store's routes, 503 of /readyz when not ready). The upstream is
a fake OpenAI server; the admin API, which registers workers, is behind a key here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from services.gateway import create_app
from services.settings import load_settings
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway

UPSTREAM_TYPES = {"upstream_error", "service_unavailable", "timeout"}

# the schema as the app serves it (built without starting the app)
schema = schemathesis.openapi.from_dict(
    create_app(load_settings(env="test")).openapi()
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[RunningGateway]:
    fake = FakeOpenAI({"m": Answer()}).start()
    gateway = RunningGateway(load_settings(
        env="test", data_dir=tmp_path_factory.mktemp("fuzz"), workers=[fake.url],
        admin_api_key="adm-fuzz", health_interval_s=0.5,
    )).start()
    yield gateway
    gateway.stop()
    fake.stop()


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_5xx_but_the_documented_ones(case, fuzzed: RunningGateway) -> None:
    if isinstance(case.body, dict) and len(repr(case.body)) % 2:
        case.body["model"] = "m"  # about half name the served model, to get past routing
    response = case.call(base_url=fuzzed.url, timeout=30)
    if response.status_code < 500:
        return
    documented = case.operation.definition.raw.get("responses", {})
    assert str(response.status_code) in documented, (case.method, case.path,
                                                     response.status_code, response.text)
    if case.path in ("/v1/chat/completions", "/v1/completions"):
        assert response.json()["error"]["type"] in UPSTREAM_TYPES, response.text
