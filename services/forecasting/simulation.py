"""A one-second fleet simulation for replaying a trace against a scaling policy.

The model (the benchmark's rules): each worker serves ``capacity_tokens_s`` tokens per
second (prompt plus output) once ready; a worker asked for becomes ready
``cold_start_s`` later and is paid for from the moment it is asked for; a stopped
worker is gone at once (starting ones are cancelled before ready ones are stopped).
Arrivals join one backlog served first come first served; a second counts as an SLO
violation whenever the backlog exceeds ``violation_backlog_s`` seconds of the ready
fleet's capacity (with no ready worker, any backlog).

Controllers are called every ``period_s`` with a ``FleetView`` and return the number of
workers wanted. ``hybrid_controller`` drives the shipped ``HybridPolicy`` exactly as the
``demand_forecasting`` flow does: a 10-s demand series, a forecaster refit each period,
the forecaster's recent error, measured demand and queue depth, and the recent bins for
the burst memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.forecasting.forecasters import Forecaster, ForecastError
from services.forecasting.policy import (
    Decision,
    ErrorTracker,
    HybridPolicy,
    PolicyConfig,
    ReactiveScaler,
    Signals,
)


@dataclass(frozen=True)
class FleetView:
    """What a controller may look at, at second ``now``: only the past."""

    now: int
    ready: int
    starting: int
    backlog_tokens: float
    tokens_per_s: np.ndarray  # arrivals, seconds 0 .. now-1
    requests_per_s: np.ndarray

    @property
    def active(self) -> int:
        return self.ready + self.starting


Controller = Callable[[FleetView], int]


@dataclass
class SimResult:
    replica_seconds: int = 0
    violation_seconds: int = 0
    max_replicas: int = 0
    replicas: list[int] = field(default_factory=list)
    violations: list[int] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def summary(self, start: int = 0, end: int | None = None) -> dict[str, int]:
        """Totals over seconds ``start`` to ``end`` (default: the whole run)."""
        replicas = self.replicas[start:end]
        end = len(self.replicas) if end is None else end
        return {"replica_seconds": int(sum(replicas)),
                "violation_seconds": sum(1 for at in self.violations if start <= at < end),
                "max_replicas": max(replicas, default=0)}


def per_second(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and requests arriving in each second from the first event's second on."""
    seconds = (events["timestamp"] - events["timestamp"].iloc[0]).dt.total_seconds()
    index = np.floor(seconds.to_numpy()).astype(int)
    tokens = np.bincount(index, weights=(events["prompt_tokens"] + events["output_tokens"])
                         .to_numpy(dtype=float))
    requests = np.bincount(index).astype(float)
    return tokens, requests


def simulate(
    tokens_per_s: np.ndarray,
    requests_per_s: np.ndarray,
    controller: Controller,
    *,
    capacity_tokens_s: float,
    period_s: int,
    initial: int,
    cold_start_s: int = 60,
    violation_backlog_s: float = 2.0,
) -> SimResult:
    result = SimResult()
    ready, starting = initial, []  # starting: seconds at which each becomes ready
    backlog = 0.0
    for now in range(len(tokens_per_s)):
        if now % period_s == 0:
            view = FleetView(now, ready, len(starting), backlog, tokens_per_s[:now],
                             requests_per_s[:now])
            want = max(0, int(controller(view)))
            if want > view.active:
                starting += [now + cold_start_s] * (want - view.active)
            elif want < view.active:
                cut = view.active - want
                cancel = min(cut, len(starting))
                starting = sorted(starting)[: len(starting) - cancel]
                ready -= cut - cancel
        came_up = sum(1 for at in starting if at <= now)
        if came_up:
            ready += came_up
            starting = [at for at in starting if at > now]
        backlog += tokens_per_s[now]
        backlog -= min(backlog, ready * capacity_tokens_s)
        if backlog > violation_backlog_s * ready * capacity_tokens_s:
            result.violation_seconds += 1
            result.violations.append(now)
        active = ready + len(starting)
        result.replica_seconds += active
        result.max_replicas = max(result.max_replicas, active)
        result.replicas.append(active)
    return result


def static_controller(replicas: int) -> Controller:
    return lambda view: replicas


def reactive_controller(config: PolicyConfig, capacity_tokens_s: float,
                        period_s: int) -> Controller:
    """KEDA-like: demand over the last period against ``target_utilisation``; scale
    down after ``scale_down_after_s`` under ``scale_down_utilisation``."""
    scaler = ReactiveScaler(config)

    def control(view: FleetView) -> int:
        if view.now == 0:
            return view.active
        demand = float(view.tokens_per_s[-period_s:].mean())
        want, _ = scaler.desired(view.now, view.active, capacity_tokens_s,
                                 Signals(demand_tokens_s=demand))
        return max(config.floor, min(config.max_replicas, want))

    return control


def hybrid_controller(
    model: str,
    config: PolicyConfig,
    forecaster: Forecaster,
    capacity_tokens_s: float,
    period_s: int,
    *,
    bin_s: int = 10,
    window_bins: int = 360,
    level: float = 0.9,
    decisions: list[Decision] | None = None,
) -> Controller:
    """The shipped ``HybridPolicy`` fed the way the control flow feeds it."""
    policy = HybridPolicy(model, config)
    tracker = ErrorTracker()
    scored = 0

    def control(view: FleetView) -> int:
        nonlocal scored
        complete = view.now // bin_s  # whole bins observed so far
        bins = np.add.reduceat(view.tokens_per_s[: complete * bin_s],
                               np.arange(0, complete * bin_s, bin_s)) if complete else \
            np.zeros(0)
        for key in range(scored, complete):
            tracker.observed(key, float(bins[key]))
        scored = complete
        demand = float(view.tokens_per_s[-period_s:].mean()) if view.now else None
        seen = view.requests_per_s.sum()
        per_request = view.tokens_per_s.sum() / seen if seen else None
        queue = view.backlog_tokens / per_request if per_request else None
        forecast = None
        name = None
        if complete >= 12:
            history = pd.Series(bins[-window_bins:], index=pd.date_range(
                "2000-01-01", periods=min(complete, window_bins), freq=f"{bin_s}s", tz="UTC"))
            try:
                forecast = forecaster.forecast(history, max(1, math.ceil(
                    (config.cold_start_s + config.lead_s) / bin_s)), level)
                name = forecaster.name
                tracker.predicted(complete, float(forecast.mean[0]))
            except ForecastError:
                forecast = None
        decision = policy.decide(
            float(view.now), view.active, capacity_tokens_s,
            Signals(demand_tokens_s=demand, queue_depth=queue), forecast, bin_s=bin_s,
            forecaster=name, recent_wape=tracker.wape(), recent=bins[-window_bins:])
        if decisions is not None:
            decisions.append(decision)
        return decision.desired

    return control
