"""Routing through the gateway: virtual names, explicit models, substitution, the
latency header, fallback, budgets and a bad config refused at startup."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select, update

from migrations import upgrade_to_head
from models import create_store_engine, session_factory
from models.tables import ApiKey, RouterVersion
from services.gateway.app import build_services
from services.gateway.auth import create_api_key, hash_key
from services.routing import ComplexityRouter
from services.routing.config import RoutingConfigError
from tests.routing.conftest import EASY, HARD, PRICES, logged_rows, post_chat, routing_config
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway import wait_for


def test_auto_sends_a_hard_prompt_to_the_strong_tier_and_an_easy_one_to_the_cheap(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    gateway = routed_gateway()
    hard, easy = post_chat(gateway, "auto", HARD), post_chat(gateway, "auto", EASY)
    assert hard.status_code == 200 and easy.status_code == 200
    assert hard.headers["x-route-model"] == "large"
    assert easy.headers["x-route-model"] == "small"
    assert hard.headers["x-route-reason"].startswith("auto: router")
    assert fake_workers.calls("large") == 1 and fake_workers.calls("small") == 1
    logged = logged_rows(gateway)
    assert [(r.model_requested, r.model_served) for r in logged] == [
        ("auto", "large"), ("auto", "small")
    ]
    assert all(r.route_reason and r.route_reason.startswith("auto: router") for r in logged)
    assert logged[0].cost_usd > logged[1].cost_usd > 0


def test_models_lists_the_virtual_names(routed_gateway) -> None:
    ids = [m["id"] for m in httpx.get(f"{routed_gateway().url}/v1/models").json()["data"]]
    assert ids[:3] == ["auto", "auto:cheap", "auto:quality"]
    assert {"small", "medium", "large"} <= set(ids)


def test_an_explicit_model_is_respected_unless_the_tenant_allows_substitution(
    routed_gateway,
) -> None:
    gateway = routed_gateway()
    response = post_chat(gateway, "large", EASY)
    assert response.headers["x-route-model"] == "large"
    assert response.headers["x-route-reason"] == "explicit"
    substituting = routed_gateway(substitution_tenants=["default", "*"])
    response = post_chat(substituting, "large", EASY)
    assert response.headers["x-route-model"] == "small"
    assert response.headers["x-route-reason"].startswith("substituted large")
    assert post_chat(substituting, "large", HARD).headers["x-route-model"] == "large"


def test_the_latency_header_moves_to_a_model_within_the_limit(routed_gateway) -> None:
    gateway = routed_gateway()
    response = post_chat(gateway, "auto", HARD, headers={"X-Max-Latency-Ms": "3000"})
    assert response.headers["x-route-model"] == "medium"  # large's SLO is 10 s
    bad = post_chat(gateway, "auto", HARD, headers={"X-Max-Latency-Ms": "soon"})
    assert bad.status_code == 400 and "X-Max-Latency-Ms" in bad.json()["error"]["message"]


def test_a_failing_upstream_falls_back_to_the_next_model_of_the_same_or_higher_tier(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].fail_status = 500
    gateway = routed_gateway()
    response = post_chat(gateway, "auto", EASY)
    assert response.status_code == 200, response.text
    assert response.headers["x-route-model"] == "medium"
    assert "fallback: small failed (upstream_error)" in response.headers["x-route-reason"]
    assert fake_workers.calls("small") >= 1 and fake_workers.calls("medium") == 1
    assert logged_rows(gateway)[-1].model_served == "medium"


def test_streaming_is_routed_and_settles_its_budget(routed_gateway) -> None:
    gateway = routed_gateway(budgets={"tenant:default": {"limit_usd": 1.0}})
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", timeout=30,
        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": HARD}]},
    ) as response:
        assert response.headers["x-route-model"] == "large"
        body = response.read().decode()
    assert body.rstrip().endswith("data: [DONE]")
    ledger = gateway.services.routing.ledger
    scopes = ledger.scopes("default", None)
    spent = gateway.run(ledger.fraction_spent(scopes))
    assert 0 < spent < 0.001  # the real cost of a few tokens, not the reservation


def test_over_budget_is_a_429_with_a_clear_message(routed_gateway) -> None:
    gateway = routed_gateway(budgets={"tenant:default": {"limit_usd": 0.001}})
    response = post_chat(gateway, "large", HARD)  # may cost up to 1024 x $30/Mtok
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
    assert "budget exceeded for tenant:default" in error["message"]


def test_a_key_budget_holds_the_key_not_its_tenant(
    fake_workers, make_settings, start_gateway
) -> None:
    """``key:<id>`` budgets (the id of a key in ``api_keys``) stop that key only."""
    database_url = make_settings().database_url
    upgrade_to_head(database_url)
    sessions = session_factory(create_store_engine(database_url))
    capped, free = (create_api_key(sessions, tenant="team-a") for _ in range(2))
    with sessions() as session:
        capped_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(capped)))
    gateway = start_gateway(make_settings(
        workers=[fake_workers.url], price_overrides=PRICES, cache_enabled=False,
        require_auth=True, routing=routing_config(
            budgets={f"key:{capped_id}": {"limit_usd": 0.001}}),
    ))
    gateway.services.keyring.load_from_store()  # what the refresh loop does every 10 s

    def post(key: str) -> httpx.Response:
        return post_chat(gateway, "large", HARD, headers={"authorization": f"Bearer {key}"})

    refused = post(capped)  # may cost up to 1024 x $30/Mtok
    assert refused.status_code == 429
    assert f"budget exceeded for key:{capped_id}" in refused.json()["error"]["message"]
    assert post(free).status_code == 200  # the same tenant, another key
    assert fake_workers.calls("large") == 1


def test_near_the_limit_auto_downgrades_to_the_cheapest_tier(routed_gateway) -> None:
    gateway = routed_gateway(
        budgets={"tenant:default": {"limit_usd": 1.0, "downgrade_at": 0.5}}
    )
    ledger = gateway.services.routing.ledger
    gateway.run(ledger.reserve(ledger.scopes("default", None), 0.6))
    response = post_chat(gateway, "auto", HARD)
    assert response.headers["x-route-model"] == "small"
    assert response.headers["x-route-reason"] == "budget near limit: cheapest tier"


def test_fifty_parallel_requests_at_the_limit_never_overspend(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    # each request reserves its maximum (prompt + 100 tokens on "large"); the budget
    # holds about ten such reservations while the calls are in flight
    fake_workers.models["large"].delay_s = 0.5
    per_request = (len(HARD) // 4 + 1) * 10e-6 + 100 * 30e-6
    gateway = routed_gateway(budgets={"tenant:default": {"limit_usd": per_request * 10.5}})

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(*(
                client.post(f"{gateway.url}/v1/chat/completions", json={
                    "model": "large", "max_tokens": 100,
                    "messages": [{"role": "user", "content": HARD}]})
                for _ in range(50)
            ))
        return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    logged = [r for r in logged_rows(gateway) if r.status_code == 200]
    assert sum(r.cost_usd for r in logged) <= per_request * 10.5


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        (routing_config(router_tiers=["fast_cheap", "turbo"]), "unknown tier 'turbo'"),
        ({"models": [{"name": "x", "tier": "mega", "context_window": 10}]},
         "model 'x' has unknown tier 'mega'"),
        ({"models": [{"name": "x", "tier": "balanced"}]}, "models.0.context_window: Field"),
        ({"models": [{"name": "x", "tier": "balanced", "context_window": 1, "colour": 1}]},
         "models.0.colour: Extra inputs are not permitted"),
        ({"models": [{"name": "gpt-9-ultra", "tier": "powerful", "upstream": "openai",
                      "context_window": 10}]}, "model 'gpt-9-ultra': no price"),
        ({"models": []}, "models: List should have at least 1 item"),
    ],
)
def test_a_malformed_routing_config_stops_the_start_with_a_clear_message(
    make_settings, routing, message
) -> None:
    with pytest.raises(RoutingConfigError, match="invalid routing config: .*" + message):
        build_services(make_settings(routing=routing))


def activate_router(database_url: str, version: str) -> None:
    """Store and activate a router that never asks for the strong tier (its thresholds
    are out of reach), as the retraining flow activates a better one."""
    shipped = ComplexityRouter.load()
    never_strong = {target: 1e9 for target in shipped.thresholds}
    router = ComplexityRouter(shipped.weights, shipped.bias, never_strong, never_strong,
                              version=version)
    engine = create_store_engine(database_url)
    with engine.begin() as connection:
        connection.execute(update(RouterVersion).values(active=False))
        connection.execute(RouterVersion.__table__.insert().values(
            version=version, model=router.to_bytes(), labels=300, metrics={},
            active=True, created_at=datetime.now(UTC), activated_at=datetime.now(UTC)))
    engine.dispose()


def test_the_gateway_routes_with_the_active_router_version(
    fake_workers, make_settings, start_gateway
) -> None:
    settings = make_settings(workers=[fake_workers.url], routing=routing_config(),
                             price_overrides=PRICES, cache_enabled=False)
    upgrade_to_head(settings.database_url)
    activate_router(settings.database_url, "v-retrained")
    gateway = start_gateway(settings)
    reply = post_chat(gateway, "auto", HARD)  # the shipped router sends it to "large"
    assert reply.headers["x-route-model"] == "small"
    assert reply.headers["x-route-reason"].endswith("< 1000000000.000")  # its threshold


def test_a_running_gateway_picks_up_a_newly_activated_router_version(
    fake_workers, make_settings, start_gateway
) -> None:
    settings = make_settings(workers=[fake_workers.url], routing=routing_config(),
                             price_overrides=PRICES, cache_enabled=False,
                             router_refresh_s=0.2)
    gateway = start_gateway(settings)
    assert post_chat(gateway, "auto", HARD).headers["x-route-model"] == "large"
    activate_router(settings.database_url, "v-next")
    assert wait_for(
        lambda: post_chat(gateway, "auto", HARD).headers["x-route-model"] == "small", 10)


def test_a_model_routing_does_not_know_is_still_held_to_the_budget(
    routed_gateway, fake_workers
) -> None:
    fake_workers.models["unlisted"] = fake_workers.models["large"]
    gateway = routed_gateway(budgets={"tenant:default": {"limit_usd": 0.0001}})
    gateway.run(gateway.services.pool.probe_all())
    ledger = gateway.services.routing.ledger
    gateway.run(ledger.reserve(ledger.scopes("default", None), 0.0001))  # spend it all
    response = post_chat(gateway, "unlisted", EASY)
    assert response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"


def test_a_stream_whose_upstream_fails_before_answering_falls_back(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    fake_workers.models["small"].fail_status = 503
    gateway = routed_gateway()
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", timeout=30,
        json={"model": "small", "stream": True, "messages": [{"role": "user", "content": EASY}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-route-model"] == "medium"
        body = response.read().decode()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(c["delta"].get("content") or "" for e in events[:-1]
                   for c in json.loads(e)["choices"])
    assert text == "The answer is B."
