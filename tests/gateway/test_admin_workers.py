"""Workers registered at run time are shared through the store by every replica."""

from __future__ import annotations

import httpx
import openai

from tests.support.gateway import RunningGateway, wait_for


def models(gateway: RunningGateway) -> list[str]:
    return [m["id"] for m in httpx.get(f"{gateway.url}/v1/models").json()["data"]]


def test_registration_reaches_every_replica_through_postgres(
    vllm_worker, postgres_url, make_settings, start_gateway
) -> None:
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    first = start_gateway(make_settings(database_url=url, admin_api_key="admin-secret"))
    second = start_gateway(make_settings(database_url=url, admin_api_key="admin-secret"))
    assert models(first) == models(second) == []

    refused = httpx.post(f"{first.url}/admin/workers", json={"url": vllm_worker.base_url})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"

    admin = {"authorization": "Bearer admin-secret"}
    added = httpx.post(
        f"{first.url}/admin/workers", json={"url": vllm_worker.base_url}, headers=admin
    )
    assert added.status_code == 201 and added.json()["models"] == ["tiny-llama"]
    assert models(first) == ["tiny-llama"]
    assert wait_for(lambda: models(second) == ["tiny-llama"]), "the other replica never saw it"
    reply = openai.OpenAI(base_url=f"{second.url}/v1", api_key="x").completions.create(
        model="tiny-llama", prompt="hi", max_tokens=2
    )
    assert reply.usage.completion_tokens >= 1

    removed = httpx.delete(
        f"{second.url}/admin/workers", params={"url": vllm_worker.base_url}, headers=admin
    )
    assert removed.status_code == 200
    assert wait_for(lambda: models(first) == []), "the removal never reached the first replica"


def test_admin_api_is_off_without_a_key_when_auth_is_required(make_settings, start_gateway):
    gateway = start_gateway(make_settings(api_keys=["k:t"]))
    response = httpx.get(f"{gateway.url}/admin/workers", headers={"authorization": "Bearer k"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"
