"""The telemetry event: one per request, the same fields as a ``request_log`` row.

Built by the gateway when a request ends (after the last byte of a stream), priced
and written by the batched writer, off the hot path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class RequestEvent:
    id: str
    tenant: str
    endpoint: str
    status_code: int
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    api_key_id: str | None = None
    stream: bool = False
    model_requested: str | None = None
    model_served: str | None = None
    worker: str | None = None
    cache_layer: str | None = None
    cache_age_s: float | None = None
    route_reason: str | None = None
    cascade_score: float | None = None
    cascade_decision: str | None = None
    error_type: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    max_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    prompt_tokens_before_optimization: int | None = None
    prompt_tokens_after_optimization: int | None = None
    token_policy: str | None = None
    token_stages: dict[str, int] | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    latency_ms: float | None = None
    upstream_ms: float | None = None
    gateway_overhead_ms: float | None = None
    cost_usd: float | None = None
    baseline_cost_usd: float | None = None
    prompt_hash: str | None = None
    prompt_text: str | None = None
    experiment_arms: str | None = None

    def to_row(self) -> dict[str, Any]:
        # shallow on purpose: asdict() deep-copies, which cost ~6% of the gateway's CPU
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def to_json_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["created_at"] = self.created_at.isoformat()
        return row

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> RequestEvent:
        data = dict(data)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


_FIELD_NAMES = tuple(f.name for f in fields(RequestEvent))
