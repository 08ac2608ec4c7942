"""request_log rows for cost tests: every path a request can take, priced as the
telemetry writer prices them (baseline model "base": $1 / $2 per million tokens)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from models import RequestLog

HOSTED = "https://api.openai.example"
WORKER = "http://10.0.0.5:8000"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def row(created_at: datetime, **values) -> dict:
    base = {
        "id": str(uuid.uuid4()), "created_at": created_at, "tenant": "acme",
        "endpoint": "chat.completions", "status_code": 200,
    }
    optional = dict.fromkeys(_OPTIONAL)
    if "ingested_at" not in values:
        optional.pop("ingested_at")  # the store's clock stamps it
    return {**base, **optional, **values}


_OPTIONAL = (
    "cache_layer", "route_reason", "model_requested", "model_served", "worker", "cost_usd",
    "prompt_tokens", "prompt_tokens_before_optimization", "completion_tokens",
    "baseline_cost_usd", "error_type", "ingested_at", "api_key_id",
)


def usage(before: int, billed: int, completion: int) -> dict:
    return {"prompt_tokens": billed, "prompt_tokens_before_optimization": before,
            "completion_tokens": completion,
            "baseline_cost_usd": before * 1e-6 + completion * 2e-6}


def insert(engine, rows: list[dict]) -> None:
    with engine.begin() as conn:
        conn.execute(RequestLog.__table__.insert(), rows)


def every_path(at: datetime) -> list[dict]:
    return [
        row(at, cache_layer="L2", model_served="base", cost_usd=0.0, **usage(1000, 1000, 100)),
        row(at, cache_layer="SEMANTIC", model_served="base", cost_usd=0.0,
            **usage(500, 500, 50)),
        row(at, route_reason="batch:batch_1", model_served="llama-x", worker=WORKER,
            cost_usd=0.0001, **usage(1000, 1000, 100)),
        # routed to a cheaper hosted model, prompt optimised from 1000 to 600 tokens
        row(at, route_reason="router: p(strong)=0.1", model_requested="auto",
            model_served="cheap", worker=HOSTED, cost_usd=600 * 0.5e-6 + 100 * 1e-6,
            **usage(1000, 600, 100)),
        # the cheap attempt of an escalated cascade: its cost was real
        row(at, route_reason="cascade: cheap attempt escalated, score 0.2",
            model_served="cheap", worker=HOSTED, cost_usd=0.0001, **usage(1000, 1000, 100)),
        # self-hosted model that also has a hosted price
        row(at, model_served="llama-x", worker=WORKER, cost_usd=0.0002,
            **usage(1000, 1000, 100)),
        # self-hosted model without any hosted price, dearer than the baseline
        row(at, model_served="tiny", worker=WORKER, cost_usd=0.002, **usage(1000, 1000, 100)),
        # unpriced model: usage known, no price
        row(at, model_served="mystery", worker=HOSTED, cost_usd=None, **usage(300, 300, 30)),
        # failed before the upstream answered: no usage
        row(at, status_code=502, error_type="upstream_error"),
    ]

# price_overrides for settings (USD per million tokens); "base" is the baseline model
PRICES = {
    "base": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
    "cheap": {"input_per_mtok": 0.5, "output_per_mtok": 1.0},
    "llama-x": {"input_per_mtok": 0.3, "output_per_mtok": 0.6},
}
