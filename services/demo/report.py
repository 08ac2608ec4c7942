"""The demo's closing table, read back from the metrics store (not from the client):
what the platform recorded is what the dashboard and the ROI report will use."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select

from models import RequestLog
from services.caching import HIT_LAYERS


@dataclass
class RunSummary:
    requests: int
    ok: int
    prompt_tokens: int
    completion_tokens: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    overhead_p50_ms: float | None
    output_tokens_per_s: float | None
    cost_usd: float
    baseline_cost_usd: float
    cache_hits: int = 0
    saved_by_cache_usd: float = 0.0

    def rows(self) -> list[tuple[str, str]]:
        def ms(value: float | None) -> str:
            return "n/a" if value is None else f"{value:,.1f} ms"

        return [
            ("requests (ok / recorded)", f"{self.ok} / {self.requests}"),
            ("prompt tokens", f"{self.prompt_tokens:,}"),
            ("completion tokens", f"{self.completion_tokens:,}"),
            ("TTFT p50 / p95", f"{ms(self.ttft_p50_ms)} / {ms(self.ttft_p95_ms)}"),
            ("latency p50 / p95", f"{ms(self.latency_p50_ms)} / {ms(self.latency_p95_ms)}"),
            ("gateway overhead p50", ms(self.overhead_p50_ms)),
            (
                "output throughput",
                "n/a" if self.output_tokens_per_s is None
                else f"{self.output_tokens_per_s:,.1f} tokens/s",
            ),
            ("answered from cache", f"{self.cache_hits} (saved ${self.saved_by_cache_usd:,.6f})"),
            ("cost (self-hosted)", f"${self.cost_usd:,.6f}"),
            ("baseline cost (hosted, no optimisation)", f"${self.baseline_cost_usd:,.6f}"),
        ]


def count_requests(engine: Engine, since: datetime) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(select(func.count()).where(RequestLog.created_at >= since)) or 0
        )


def summarize(engine: Engine, since: datetime) -> RunSummary:
    with engine.connect() as conn:
        rows = conn.execute(select(RequestLog).where(RequestLog.created_at >= since)).all()
    ok = [r for r in rows if r.status_code == 200]

    def pct(values: list[float], q: int) -> float | None:
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    latency = [r.latency_ms for r in ok if r.latency_ms is not None]
    overhead = [r.gateway_overhead_ms for r in ok if r.gateway_overhead_ms is not None]
    completion = sum(r.completion_tokens or 0 for r in ok)
    hits = [r for r in ok if r.cache_layer in HIT_LAYERS]
    throughput = None
    if ok:
        first = min(_epoch(r.created_at) for r in ok)
        last_end = max(_epoch(r.created_at) + (r.latency_ms or 0) / 1000 for r in ok)
        if last_end > first:
            throughput = completion / (last_end - first)
    return RunSummary(
        requests=len(rows),
        ok=len(ok),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in ok),
        completion_tokens=completion,
        ttft_p50_ms=pct(ttft, 50),
        ttft_p95_ms=pct(ttft, 95),
        latency_p50_ms=pct(latency, 50),
        latency_p95_ms=pct(latency, 95),
        overhead_p50_ms=pct(overhead, 50),
        output_tokens_per_s=throughput,
        cost_usd=sum(r.cost_usd or 0 for r in ok),
        baseline_cost_usd=sum(r.baseline_cost_usd or 0 for r in ok),
        cache_hits=len(hits),
        saved_by_cache_usd=sum(r.baseline_cost_usd or 0 for r in hits),
    )


def _epoch(value: datetime) -> float:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
