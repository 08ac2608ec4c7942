"""Shared helpers for the alert tests: request_log rows and a settable clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from models import RequestLog


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 12, 1, 9, 30, tzinfo=UTC))


def add_requests(store, at: datetime, count: int, *, tenant: str = "acme",
                 model: str = "gpt-4o-mini", hits: int = 0, status: int = 200,
                 latency_ms: float = 50.0, cost_usd: float = 0.001,
                 route_reason: str | None = None, api_key_id: str | None = None) -> None:
    """``count`` requests just before ``at``, the first ``hits`` answered from L1."""
    rows = [{
        "id": uuid.uuid4().hex, "created_at": at - timedelta(seconds=1 + i % 50),
        "tenant": tenant, "endpoint": "chat.completions", "status_code": status,
        "model_requested": model, "model_served": model,
        "cache_layer": "L1" if i < hits else "MISS", "latency_ms": latency_ms,
        "cost_usd": 0.0 if i < hits else cost_usd, "baseline_cost_usd": cost_usd,
        "route_reason": route_reason, "api_key_id": api_key_id,
    } for i in range(count)]
    with store.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), rows)
