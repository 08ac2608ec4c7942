"""A gateway with three tiers of fake OpenAI-compatible workers (the answers are under
the test's control, which a random tiny model's are not)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from migrations import upgrade_to_head
from models import create_store_engine, session_factory
from models.tables import RequestLog
from services.gateway.auth import create_api_key
from services.settings import Settings
from services.workers import free_port
from tests.support.fake_openai import Answer, FakeOpenAI
from tests.support.gateway import RunningGateway
from tests.support.redis import ThrowawayRedis

HARD = (
    "Let p = (1, 2, 5, 4)(2, 3) in S_5 . Find the index of <p> in S_5.\n"
    "A. 8\nB. 2\nC. 24\nD. 120\nAnswer:"
)
# an easy prompt of the kind the router was trained on (MMLU's format): cheap, not novel
EASY = "Which of these is a primary color?\nA. Green\nB. Red\nC. Purple\nD. Orange\nAnswer:"
# a prompt unlike any the router was trained on: deferred to the cascade
NOVEL = "Translate 'good morning' into Spanish."
ORDER = {"order": {"id": 1234, "items": ["tea", "milk"], "status": "shipped",
                   "carrier": {"name": "DHL", "eta_days": 2}}}
# a prompt `X-Token-Optimization: lossless` shrinks: the JSON is sent minified
ORDER_QUESTION = "When does this order arrive?\n" + json.dumps(ORDER, indent=4)
ORDER_MINIFIED = "When does this order arrive?\n" + json.dumps(ORDER, separators=(",", ":"))
LOSSLESS = {"x-token-optimization": "lossless"}
PRICES = {
    "small": {"input_per_mtok": 0.1, "output_per_mtok": 0.1},
    "medium": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
    "large": {"input_per_mtok": 10.0, "output_per_mtok": 30.0},
}


def routing_config(**extra: Any) -> dict[str, Any]:
    return {
        "models": [
            {"name": "small", "tier": "fast_cheap", "context_window": 4096,
             "latency_slo_ms": 500},
            {"name": "medium", "tier": "balanced", "context_window": 8192,
             "latency_slo_ms": 2000},
            {"name": "large", "tier": "powerful", "context_window": 32768,
             "latency_slo_ms": 10000},
        ],
        **extra,
    }


def post_chat(gateway: RunningGateway, model: str, text: str, **extra: Any) -> httpx.Response:
    """POST one user message; ``headers=`` are request headers, other keywords body fields."""
    headers = extra.pop("headers", {})
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", headers=headers, timeout=30,
        json={"model": model, "messages": [{"role": "user", "content": text}], **extra},
    )


def logged_rows(gateway: RunningGateway) -> list[RequestLog]:
    gateway.flush_telemetry()
    with gateway.services.sessions() as session:
        return list(session.scalars(select(RequestLog).order_by(RequestLog.created_at)))


@pytest.fixture
def fake_workers() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI({name: Answer() for name in PRICES}).start()
    yield server
    server.stop()


@pytest.fixture
def budget_redis() -> Iterator[ThrowawayRedis]:
    """A Redis of the test's own, which it may kill and start again."""
    server = ThrowawayRedis(free_port()).start()
    yield server
    server.kill()


@pytest.fixture
def routed_gateway(
    fake_workers: FakeOpenAI,
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], RunningGateway],
) -> Callable[..., RunningGateway]:
    def start(**routing: Any) -> RunningGateway:
        settings = make_settings(
            workers=[fake_workers.url], routing=routing_config(**routing),
            price_overrides=PRICES, cache_enabled=False,
        )
        return start_gateway(settings)

    return start


MAX_TOKENS = 4
# the most one request may cost on "large": its prompt (the fake's count) and MAX_TOKENS
MOST = ((len(HARD) // 4 + 1) * PRICES["large"]["input_per_mtok"]
        + MAX_TOKENS * PRICES["large"]["output_per_mtok"]) / 1e6


@pytest.fixture
def keyed_gateway(fake_workers: FakeOpenAI, budget_redis: ThrowawayRedis, make_settings,
                  start_gateway) -> Callable[..., tuple[RunningGateway, dict[str, str]]]:
    """A gateway without routing, and keys of tenant team-a made in its store first:
    name -> (budget_usd, budget_period) or None for no limit. Overrides are settings
    (``database_url`` for another store)."""
    fake_workers.models["large"].text = "one two three four"  # every answer costs MOST

    def start(keys: dict[str, tuple[float, str] | None], **overrides: object
              ) -> tuple[RunningGateway, dict[str, str]]:
        settings = make_settings(workers=[fake_workers.url], price_overrides=PRICES,
                                 cache_enabled=False, require_auth=True,
                                 redis_url=budget_redis.url, **overrides)
        upgrade_to_head(settings.database_url)
        engine = create_store_engine(settings.database_url)
        try:
            sessions = session_factory(engine)
            made = {name: create_api_key(sessions, tenant="team-a", name=name,
                                         **({"budget_usd": limit[0], "budget_period": limit[1]}
                                            if limit else {}))
                    for name, limit in keys.items()}
        finally:
            engine.dispose()
        return start_gateway(settings), made

    return start


def post_with_key(gateway: RunningGateway, key: str) -> httpx.Response:
    """One request on "large" costing MOST, made with ``key``."""
    return post_chat(gateway, "large", HARD, max_tokens=MAX_TOKENS,
                     headers={"authorization": f"Bearer {key}"})
