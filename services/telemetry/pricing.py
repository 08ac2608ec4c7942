"""Pricing a request event as it is written: what it cost as served, and what it would
have cost with no optimisation (the baseline every saving is measured against)."""

from __future__ import annotations

from datetime import timedelta

from services.caching import HIT_LAYERS
from services.costs import PriceCatalog, ThroughputMeter, UnknownModelPrice
from services.telemetry.events import RequestEvent


class RequestPricer:
    def __init__(self, catalog: PriceCatalog, meter: ThroughputMeter | None = None) -> None:
        self._catalog = catalog
        self._meter = meter

    def __call__(self, event: RequestEvent) -> None:
        if event.prompt_tokens is None or event.completion_tokens is None:
            return  # no usage known (failed before the worker answered): stays unpriced
        if event.cache_layer in HIT_LAYERS:
            event.cost_usd = 0.0  # answered from cache: nothing was generated
        elif event.model_served:
            try:
                event.cost_usd = self._catalog.cost(
                    event.model_served,
                    event.prompt_tokens,
                    event.completion_tokens,
                    cached_tokens=event.cached_tokens or 0,
                    cache_write_tokens=event.cache_write_tokens or 0,
                )
            except UnknownModelPrice:
                pass  # stays NULL: unpriced, never a silent 0
            else:
                self._measure(event)
        event.baseline_cost_usd = self._catalog.baseline_cost(
            event.prompt_tokens_before_optimization or event.prompt_tokens,
            event.completion_tokens,
        )

    def _measure(self, event: RequestEvent) -> None:
        if self._meter is None or event.upstream_ms is None or event.model_served is None:
            return
        if self._catalog.price(event.model_served).source != "self_hosted":
            return
        start = event.created_at + timedelta(
            milliseconds=(event.latency_ms or 0) - event.upstream_ms
        )
        end = start + timedelta(milliseconds=event.upstream_ms)
        self._meter.observe(
            event.model_served, start.timestamp(), end.timestamp(), event.completion_tokens
        )
