"""Measured output throughput of self-hosted models, from the requests themselves.

A GPU-hour buys whatever tokens the worker produces while it is busy, so the per-token
price of a self-hosted model follows its measured throughput: completion tokens divided
by the time the model had at least one request in flight (the union of the requests'
intervals, so 64 overlapping requests count their shared second once). Measured over a
window of traffic, then handed to the price catalog; until a window is complete the
configured default stands.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.costs.catalog import PriceCatalog


@dataclass
class _Window:
    tokens: int = 0
    busy_s: float = 0.0
    busy_until: float = 0.0


class ThroughputMeter:
    def __init__(
        self,
        catalog: PriceCatalog,
        *,
        min_tokens: int = 2_000,
        min_busy_s: float = 5.0,
    ) -> None:
        self._catalog = catalog
        self._min_tokens = min_tokens
        self._min_busy_s = min_busy_s
        self._windows: dict[str, _Window] = {}
        self.measured: dict[str, float] = {}

    def observe(self, model: str, start_s: float, end_s: float, completion_tokens: int) -> None:
        """One finished request of a self-hosted model: its wall-clock interval and output."""
        if end_s <= start_s or completion_tokens <= 0:
            return
        window = self._windows.setdefault(model, _Window(busy_until=start_s))
        if start_s >= window.busy_until:
            window.busy_s += end_s - start_s
        elif end_s > window.busy_until:
            window.busy_s += end_s - window.busy_until
        window.busy_until = max(window.busy_until, end_s)
        window.tokens += completion_tokens
        if window.tokens >= self._min_tokens and window.busy_s >= self._min_busy_s:
            rate = window.tokens / window.busy_s
            self.measured[model] = rate
            self._catalog.register_self_hosted(model, output_tokens_per_second=rate)
            self._windows[model] = _Window(busy_until=window.busy_until)
