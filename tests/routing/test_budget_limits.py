"""Budgets that hold: reservations in the serving model's own prompt tokens times the
sequences a request asks for, exact settlement, and a Redis that goes away."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from services.tokens import PromptCount, PromptCounter, generations
from services.tokens.prompt import TEMPLATE_ALLOWANCE, byte_bound
from tests.routing.conftest import HARD, PRICES, post_chat
from tests.support.fake_openai import FakeOpenAI
from tests.support.redis import ThrowawayRedis

LARGE = PRICES["large"]
MAX_TOKENS = 4
ANSWER = "one two three four"  # exactly MAX_TOKENS words: every choice costs its maximum


def _cost(usage: dict[str, int]) -> float:
    return (usage["prompt_tokens"] * LARGE["input_per_mtok"]
            + usage["completion_tokens"] * LARGE["output_per_mtok"]) / 1e6


def _most(n: int) -> float:
    """One request's maximum cost: its prompt (the fake's count) and n x MAX_TOKENS."""
    return _cost({"prompt_tokens": len(HARD) // 4 + 1, "completion_tokens": n * MAX_TOKENS})


async def _one(client: httpx.AsyncClient, url: str, n: int, stream: bool
               ) -> tuple[int, dict[str, Any] | None]:
    body: dict[str, Any] = {"model": "large", "max_tokens": MAX_TOKENS, "n": n,
                            "messages": [{"role": "user", "content": HARD}]}
    if not stream:
        response = await client.post(f"{url}/v1/chat/completions", json=body)
        usage = response.json().get("usage") if response.status_code == 200 else None
        return response.status_code, usage
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    usage = None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return response.status_code, usage


@pytest.mark.parametrize(("n", "stream"), [(3, False), (2, True)])
def test_a_hundred_concurrent_requests_at_the_limit_spend_at_most_the_limit_plus_one(
    routed_gateway, fake_workers: FakeOpenAI, n: int, stream: bool
) -> None:
    fake_workers.models["large"].text = ANSWER
    fake_workers.models["large"].delay_s = 0.2  # all of them in flight together
    limit = _most(n) * 40.5
    gateway = routed_gateway(budgets={"tenant:default": {"limit_usd": limit,
                                                         "downgrade_at": None}})

    async def burst() -> list[tuple[int, dict[str, Any] | None]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=100)) as client:
            return await asyncio.gather(*(_one(client, gateway.url, n, stream)
                                          for _ in range(100)))

    results = asyncio.run(burst())
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429} and 429 in statuses
    spent = sum(_cost(usage) for status, usage in results if status == 200 and usage)
    assert all(usage for status, usage in results if status == 200)
    assert spent <= limit + _most(n)
    # reservations were the exact maximum, so the budget is used up to its last request
    assert statuses.count(200) == 40
    ledger = gateway.services.routing.ledger
    counted = gateway.run(ledger.fraction_spent(ledger.scopes("default", None))) * limit
    assert counted == pytest.approx(spent)  # settled exactly: no reservation left behind


def test_a_budgeted_request_without_max_tokens_is_capped_at_what_it_reserved(
    routed_gateway, fake_workers: FakeOpenAI
) -> None:
    gateway = routed_gateway(budgets={"tenant:default": {"limit_usd": 10.0}},
                             default_max_tokens=64)
    assert post_chat(gateway, "large", HARD).status_code == 200
    assert fake_workers.requests[-1]["body"]["max_tokens"] == 64
    unbudgeted = routed_gateway(default_max_tokens=64)
    assert post_chat(unbudgeted, "large", HARD, max_tokens=9).status_code == 200
    assert post_chat(unbudgeted, "large", HARD).status_code == 200
    assert "max_tokens" not in fake_workers.requests[-1]["body"]


async def test_prompt_counts_are_the_serving_models_own() -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hello there", "name": "ann"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    asked: list[tuple[str, str]] = []

    async def worker(model: str, endpoint: str, request: dict[str, Any]) -> int | None:
        asked.append((model, endpoint))
        return 17 if model == "served" else None

    counter = PromptCounter(worker)
    openai = await counter.count("gpt-4o-mini", "openai", "chat.completions", chat)
    plain = await counter.count("gpt-4o-mini", "openai", "chat.completions",
                                {"messages": chat["messages"][:1]})
    assert openai.exact and plain.exact
    # framing (3 a message, 3 for the reply), the name and the tool definitions count
    assert plain.tokens == 3 + 3 + 1 + 3  # "system", "Be brief." -> 1 + 3 tokens
    assert openai.tokens > plain.tokens + 10
    assert asked == []  # tiktoken is exact for OpenAI models: no worker asked
    served = await counter.count("served", "vllm", "chat.completions", chat)
    assert served == PromptCount(17, exact=True)
    unknown = await counter.count("gone", "vllm", "chat.completions", chat)
    claude = await counter.count("claude", "anthropic", "chat.completions", chat)
    assert not unknown.exact and unknown.tokens == byte_bound("chat.completions", chat)
    assert claude == unknown and claude.tokens > TEMPLATE_ALLOWANCE + len("Hello there")


@pytest.mark.parametrize(("endpoint", "request_", "expected"), [
    ("chat.completions", {"messages": []}, 1),
    ("chat.completions", {"n": 4}, 4),
    ("completions", {"prompt": "a", "n": 2, "best_of": 5}, 5),
    ("completions", {"prompt": ["a", "b", "c"], "n": 2}, 6),
    ("completions", {"prompt": [[1, 2], [3]]}, 2),
    ("completions", {"prompt": [1, 2, 3]}, 1),
])
def test_generations_count_every_sequence_a_request_asks_for(endpoint, request_, expected):
    assert generations(endpoint, request_) == expected


def test_redis_gone_is_a_503_for_budgeted_tenants_only_and_heals_when_it_returns(
    fake_workers: FakeOpenAI, budget_redis: ThrowawayRedis, make_settings, start_gateway,
) -> None:
    from tests.routing.conftest import routing_config

    settings = make_settings(
        workers=[fake_workers.url], price_overrides=PRICES, cache_enabled=False,
        redis_url=budget_redis.url, api_keys=["sk-a:team-a", "sk-b:team-b"],
        budget_redis_timeout_s=0.3, budget_unavailable_retry_after_s=7,
        routing=routing_config(budgets={"tenant:team-a": {"limit_usd": 100.0}}),
    )
    gateway = start_gateway(settings)

    def post(key: str) -> httpx.Response:
        return post_chat(gateway, "large", HARD, max_tokens=8,
                         headers={"authorization": f"Bearer {key}"})

    statuses: dict[str, list[int]] = {"sk-a": [], "sk-b": []}

    def traffic(rounds: int) -> None:
        for _ in range(rounds):
            for key in statuses:
                response = post(key)
                statuses[key].append(response.status_code)
                if response.status_code == 503:
                    error = response.json()["error"]
                    assert error["code"] == "budget_unavailable", error
                    assert response.headers["retry-after"] == "7"

    traffic(3)
    assert statuses == {"sk-a": [200] * 3, "sk-b": [200] * 3}
    budget_redis.kill()
    traffic(3)
    assert statuses["sk-a"][3:] == [503] * 3  # its budget cannot be checked: not spent blind
    assert statuses["sk-b"][3:] == [200] * 3  # no budget: served as before
    budget_redis.start()  # an empty Redis on the same port
    traffic(3)
    assert statuses["sk-a"][6:] == [200] * 3 and statuses["sk-b"][6:] == [200] * 3
    assert gateway.services.routing.ledger.pending_settlements == 0
