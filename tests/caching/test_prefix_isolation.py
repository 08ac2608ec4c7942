"""Per-tenant prefix caches: with ``prefix_cache_per_tenant`` every request to a vLLM
worker carries a ``cache_salt`` derived from its tenant, so a tenant's cached prompt
blocks serve only that tenant (another cannot time them); without it they serve all.

Proved on the shared real worker with ``usage.prompt_tokens_details.cached_tokens``;
each test sends a system prompt no other test sent. Prefix warming follows the salts: a
prefix is warmed for each tenant that sent it, under that tenant's salt.
"""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from services.caching.prefix import prefix_cache_salt
from tests.execution.test_prefix_warming import MODEL, mark, unique_system, warm_count
from tests.support.gateway import wait_for


def cached_tokens(gateway, key: str, system: list[dict[str, Any]]) -> int:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[*system, {"role": "user", "content": "Which rule is first?"}],
        max_tokens=1, temperature=0)
    return answer.usage.prompt_tokens_details.cached_tokens


@pytest.fixture
def two_tenants(vllm_worker, make_settings, start_gateway):
    def start(**overrides: object):
        settings = {"workers": [vllm_worker.base_url], "cache_enabled": False,
                    "prefix_warm_enabled": False,
                    "api_keys": ["key-a:team-a", "key-b:team-b"], **overrides}
        return start_gateway(make_settings(**settings))
    return start


def test_a_tenants_cached_prefix_serves_only_that_tenant(two_tenants) -> None:
    gateway = two_tenants(prefix_cache_per_tenant=True, prefix_cache_salt_key="secret")
    system = unique_system()
    assert cached_tokens(gateway, "key-a", system) == 0
    assert cached_tokens(gateway, "key-a", system) > 0  # its own prefix, as before
    assert cached_tokens(gateway, "key-b", system) == 0  # not another tenant's
    assert cached_tokens(gateway, "key-b", system) > 0


def test_without_it_every_tenant_shares_the_prefix_cache(two_tenants) -> None:
    gateway = two_tenants()
    assert gateway.services.warmer is None  # turned off in the fixture, not by salting
    system = unique_system()
    assert cached_tokens(gateway, "key-a", system) == 0
    assert cached_tokens(gateway, "key-b", system) > 0  # what per-tenant salting closes


def test_replicas_with_the_same_key_share_a_tenants_prefixes(two_tenants) -> None:
    first = two_tenants(prefix_cache_per_tenant=True, prefix_cache_salt_key="shared")
    second = two_tenants(prefix_cache_per_tenant=True, prefix_cache_salt_key="shared")
    alone = two_tenants(prefix_cache_per_tenant=True)  # no key: a random one of its own
    system = unique_system()
    assert cached_tokens(first, "key-a", system) == 0
    assert cached_tokens(second, "key-a", system) > 0
    assert cached_tokens(alone, "key-a", system) == 0


def test_a_prefix_is_warmed_for_each_tenant_that_sent_it(two_tenants, store,
                                                        tmp_path) -> None:
    system = unique_system()
    mark(store, system, tenants=["team-a"])  # the flow saw only team-a send it
    gateway = two_tenants(prefix_cache_per_tenant=True, prefix_cache_salt_key="secret",
                          prefix_warm_enabled=True,
                          database_url=f"sqlite:///{tmp_path / 'store.db'}")
    assert wait_for(lambda: warm_count(gateway, "warmed") == 1, timeout_s=60)
    assert cached_tokens(gateway, "key-a", system) > 0  # warmed under team-a's salt
    assert cached_tokens(gateway, "key-b", system) == 0  # and for nobody else


def test_the_salt_is_the_tenants_and_valid_for_vllm() -> None:
    salt = prefix_cache_salt(b"k", "team-a")
    assert salt == prefix_cache_salt(b"k", "team-a")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", salt)  # no / @ \ NUL, at most 128 chars
    assert salt != prefix_cache_salt(b"k", "team-b") != prefix_cache_salt(b"other", "team-a")
    # a client's own salt narrows sharing within its tenant, never reaches another's
    assert prefix_cache_salt(b"k", "team-a", "x") != salt
    assert prefix_cache_salt(b"k", "team-a", "x") != prefix_cache_salt(b"k", "team-b", "x")
    assert prefix_cache_salt(b"k", "team-a", 3) == salt  # not a string: ignored
