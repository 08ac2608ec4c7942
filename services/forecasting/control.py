"""One control-loop step per model, as the ``demand_forecasting`` flow runs it: read the
demand series and the measurements from the store, forecast, decide, actuate, record.

Flow runs are separate processes, so the policy's memory (scale-down cooldown, the
stabilisation window's targets, since when utilisation is low, the forecaster's recent
error) is rebuilt from the ``scaling_decisions`` rows of the last minutes; nothing lives
in a process that a restart would lose.

The reactive part also reads the fleet's queue depth: requests waiting in the model's
registered workers (``services.forecasting.queue``).

Faults: a model with no history gets no forecast and scales reactively; a store that
cannot be read yields a ``hold`` decision (the fleet stays as the actuator reports it; no
scale-down, never to zero, for want of data); an actuator error is recorded on the
decision and raised, so the flow's retry runs the step again (the actuator counts
workers it has already started, so a retry never starts one twice). Clock skew: rows a
gateway whose clock runs ahead stamped after this run's ``now`` are read by the next run
(counted once, late by the skew, never lost); decisions a flow run with a clock ahead
recorded look recent for longer, so their cooldown and stabilisation hold longer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models import ForecastScore, RequestLog, ScalingDecision, WorkerLaunch
from services.forecasting.backtest import backtest
from services.forecasting.forecasters import (
    Forecaster,
    ForecastError,
    LastValue,
    all_forecasters,
    by_name,
)
from services.forecasting.policy import Decision, HybridPolicy, PolicyConfig, Signals
from services.forecasting.queue import model_workers, queue_depth
from services.forecasting.series import demand_series, load_store_events

if TYPE_CHECKING:
    from services.settings import Settings

log = logging.getLogger(__name__)

BIN_S = 10
HISTORY_BINS = 360  # one hour of 10-s bins: what the forecasters are refit on
MIN_HISTORY_BINS = 12


class Actuator(Protocol):
    def current(self, model: str) -> int: ...

    def scale(self, model: str, desired: int) -> None: ...


@dataclass(frozen=True)
class Measured:
    """What the store says about one model right now."""

    series: pd.Series  # tokens per 10-s bin, up to now
    demand_tokens_s: float | None
    latency_p95_ms: float | None


def measure(engine: Engine, model: str, now: datetime, interval_s: float) -> Measured:
    since = now - timedelta(seconds=BIN_S * HISTORY_BINS)
    events = load_store_events(engine, model, since, now)
    if events.empty:
        return Measured(pd.Series(dtype=float), None, None)
    series = demand_series(events, f"{BIN_S}s", start=events["timestamp"].iloc[0],
                           end=now - timedelta(seconds=BIN_S))["tokens"]
    recent = events[events["timestamp"] >= now - timedelta(seconds=interval_s)]
    demand = float((recent["prompt_tokens"] + recent["output_tokens"]).sum()) / interval_s
    with engine.connect() as conn:
        latencies = conn.execute(
            select(RequestLog.latency_ms).where(
                RequestLog.model_served == model, RequestLog.latency_ms.is_not(None),
                RequestLog.created_at >= now - timedelta(seconds=max(interval_s, 60)))
        ).scalars().all()
    p95 = float(np.percentile(latencies, 95)) if latencies else None
    return Measured(series.astype(float), demand, p95)


def worker_capacity(engine: Engine, model: str, slo_ms: float, default: float,
                    *, days: int = 1, min_minutes: int = 10) -> float:
    """Tokens/s one worker served at the latency SLO, learned from ``request_log``: per
    worker and minute, tokens served / 60 where that minute's latency p95 met the SLO;
    the 90th percentile of those minutes. ``default`` until ``min_minutes`` such minutes
    exist (an idle worker's throughput says nothing about its capacity, so quiet minutes
    (< 10 requests) are left out)."""
    since = datetime.now(UTC) - timedelta(days=days)
    with engine.connect() as conn:
        rows = conn.execute(
            select(RequestLog.worker, RequestLog.created_at, RequestLog.prompt_tokens,
                   RequestLog.completion_tokens, RequestLog.latency_ms).where(
                RequestLog.model_served == model, RequestLog.worker.is_not(None),
                RequestLog.created_at >= since)
        ).all()
    if not rows:
        return default
    frame = pd.DataFrame(rows, columns=["worker", "at", "prompt", "output", "latency"])
    frame["minute"] = pd.to_datetime(frame["at"], utc=True).dt.floor("min")
    frame["tokens"] = frame["prompt"].fillna(0) + frame["output"].fillna(0)
    grouped = frame.groupby(["worker", "minute"]).agg(
        tokens=("tokens", "sum"), requests=("tokens", "size"),
        p95=("latency", lambda s: s.quantile(0.95)))
    good = grouped[(grouped["requests"] >= 10) & (grouped["p95"] <= slo_ms)]
    if len(good) < min_minutes:
        return default
    return float(np.percentile(good["tokens"] / 60.0, 90))


def cold_start_s(engine: Engine, model: str, default: float, timeout_s: float,
                 *, last: int = 20) -> float:
    """Median seconds from asking for a worker to its being healthy over the last
    launches; a launch that failed counts as the full startup timeout (it cost that long
    and was replaced)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(WorkerLaunch.requested_at, WorkerLaunch.healthy_at, WorkerLaunch.failed_at)
            .where(WorkerLaunch.model == model,
                   (WorkerLaunch.healthy_at.is_not(None)) | (WorkerLaunch.failed_at.is_not(None)))
            .order_by(WorkerLaunch.requested_at.desc()).limit(last)
        ).all()
    if not rows:
        return default
    waits = [(healthy - asked).total_seconds() if healthy is not None else timeout_s
             for asked, healthy, _failed in rows]
    return float(np.median(waits))


def chosen_forecaster(engine: Engine, model: str) -> Forecaster:
    """The forecaster the last backtest chose for this model (5-minute horizon), else
    last value, the one with no parameters to get wrong."""
    with engine.connect() as conn:
        name = conn.scalar(
            select(ForecastScore.forecaster).where(ForecastScore.model == model,
                                                   ForecastScore.chosen.is_(True))
            .order_by(ForecastScore.evaluated_at.desc()).limit(1))
    try:
        return by_name(name) if name else LastValue()
    except KeyError:
        return LastValue()


def restore(policy: HybridPolicy, engine: Engine, model: str, now: datetime,
            series: pd.Series) -> float | None:
    """Rebuild the policy's memory from recent decisions; return the forecaster's recent
    WAPE (its next-bin forecasts against the series)."""
    window = max(policy.config.stabilisation_s, policy.config.scale_down_after_s,
                 policy.config.cooldown_down_s) + 60
    with Session(engine) as session:
        rows = session.scalars(
            select(ScalingDecision).where(ScalingDecision.model == model,
                                          ScalingDecision.decided_at >= now - timedelta(
                                              seconds=window))
            .order_by(ScalingDecision.decided_at)
        ).all()
    epoch = now.timestamp()
    pairs = []
    for row in rows:
        at = _utc(row.decided_at).timestamp() - epoch
        inputs = row.inputs or {}
        if "target" in inputs:
            policy.targets.append((at, int(inputs["target"])))
        if row.desired_replicas < row.current_replicas:
            policy.last_down_at = at
        low = inputs.get("low_since")
        policy.reactive.low_since = None if low is None else float(low) - epoch
        bin_at, predicted = inputs.get("next_bin"), inputs.get("next_bin_forecast")
        if bin_at is not None and predicted is not None:
            stamp = pd.Timestamp(bin_at, tz="UTC")
            if stamp in series.index:
                pairs.append((float(series[stamp]), float(predicted)))
    actual = sum(a for a, _ in pairs)
    if len(pairs) < 5 or actual <= 0:
        return None
    return sum(abs(a - p) for a, p in pairs) / actual


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def decide(engine: Engine, model: str, current: int, config: PolicyConfig, *,
           interval_s: float, capacity_default: float, slo_ms: float,
           queue: float | None = None, now: datetime | None = None) -> Decision:
    """The decision for one model at ``now`` (``queue``: requests waiting in its fleet,
    None if not measured); a ``hold`` when the store cannot be read."""
    now = now or datetime.now(UTC)
    policy = HybridPolicy(model, config)
    try:
        measured = measure(engine, model, now, interval_s)
        capacity = worker_capacity(engine, model, slo_ms, capacity_default)
        forecaster = chosen_forecaster(engine, model)
        recent_wape = restore(policy, engine, model, now, measured.series)
    except SQLAlchemyError as exc:
        log.warning("store unreadable for %s, holding %d workers: %s", model, current, exc)
        return policy.hold(now.timestamp(), current, f"store unreadable ({type(exc).__name__})")
    forecast = None
    horizon = max(1, math.ceil((config.cold_start_s + config.lead_s) / BIN_S))
    if len(measured.series) >= MIN_HISTORY_BINS:
        try:
            forecast = forecaster.forecast(measured.series, horizon)
        except ForecastError as exc:
            log.info("%s could not forecast %s: %s", forecaster.name, model, exc)
    # the policy's clock is seconds relative to now (restore() used the same origin)
    decision = policy.decide(
        0.0, current, capacity,
        Signals(demand_tokens_s=measured.demand_tokens_s, queue_depth=queue,
                latency_p95_ms=measured.latency_p95_ms),
        forecast, bin_s=BIN_S, forecaster=forecaster.name if forecast else None,
        recent_wape=recent_wape, recent=measured.series.to_numpy())
    decision.at = now.timestamp()
    decision.inputs["target"] = policy.targets[-1][1] if policy.targets else decision.desired
    low = policy.reactive.low_since
    decision.inputs["low_since"] = None if low is None else low + now.timestamp()
    decision.inputs["cold_start_s"] = config.cold_start_s
    if forecast is not None and len(measured.series):
        next_bin = measured.series.index[-1] + pd.Timedelta(seconds=BIN_S)
        decision.inputs["next_bin"] = next_bin.isoformat()
        decision.inputs["next_bin_forecast"] = round(float(forecast.mean[0]), 3)
    return decision


def record(session: Session, decision: Decision, *, actuated: bool,
           error: str | None = None) -> None:
    session.add(ScalingDecision(
        decided_at=datetime.fromtimestamp(decision.at, UTC), model=decision.model,
        current_replicas=decision.current, desired_replicas=decision.desired,
        reactive_replicas=decision.reactive, predictive_replicas=decision.predictive,
        forecaster=decision.inputs.get("forecaster"), reason=decision.reason,
        inputs=decision.inputs, actuated=actuated, actuator_error=error))


def run_backtest(engine: Engine, model: str, *, hours: float = 24.0, origins: int = 60,
                 now: datetime | None = None) -> list[ForecastScore]:
    """Backtest every forecaster on the model's recent 10-s token series at 10 s and
    5 minutes, store the scores, and mark the best at 5 minutes as chosen."""
    now = now or datetime.now(UTC)
    events = load_store_events(engine, model, now - timedelta(hours=hours), now)
    if events.empty:
        return []
    series = demand_series(events, f"{BIN_S}s", end=now - timedelta(seconds=BIN_S))["tokens"]
    horizons = [1, 30]
    if len(series) < 60 + max(horizons):
        return []
    stride = max(1, (len(series) - 90) // origins)  # about that many, whatever the history
    result = backtest(series.iloc[-4 * HISTORY_BINS:].astype(float), all_forecasters(),
                      horizons, min_train=60, stride=stride)
    best = result.best(30)
    rows = [ForecastScore(
        evaluated_at=now, model=model, series=f"tokens_{BIN_S}s", forecaster=s.forecaster,
        horizon_s=s.horizon * BIN_S, wape=_finite(s.wape), smape=_finite(s.smape),
        coverage=_finite(s.coverage), origins=s.origins,
        chosen=best is not None and s.horizon == 30 and s.forecaster == best.forecaster)
        for s in result.scores]
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(rows)
    return rows


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def policy_config(settings: Settings, engine: Engine, model: str) -> PolicyConfig:
    """The policy's configuration from the settings, with the cold start measured from
    this model's launches when there are any."""
    try:
        cold = cold_start_s(engine, model, settings.scaling_cold_start_s,
                            settings.vllm_startup_timeout_s)
    except SQLAlchemyError:
        cold = settings.scaling_cold_start_s
    tuned = {name: value for name, value in (
        ("predictive_utilisation", settings.scaling_safety_utilisation),
        ("stabilisation_s", settings.scaling_stabilisation_s)) if value is not None}
    return PolicyConfig(min_replicas=settings.scaling_min_replicas,
                        max_replicas=settings.scaling_max_replicas,
                        scale_to_zero=settings.scaling_scale_to_zero,
                        latency_p95_up_ms=settings.scaling_latency_slo_ms, cold_start_s=cold,
                        burst_half_life_s=settings.scaling_burst_half_life_s, **tuned)


def build_actuator(settings: Settings, engine: Engine) -> Actuator | None:
    """The configured actuator; None when decisions are only recorded (and exported)."""
    from services.forecasting.actuators import KubernetesActuator, LocalActuator

    if not settings.scaling_enabled or settings.scaling_actuator == "none":
        return None
    if settings.scaling_actuator == "local":
        return LocalActuator(engine, settings.scaling_model_dirs)
    return KubernetesActuator(settings.scaling_k8s_deployments, settings.scaling_k8s_namespace)


def step(settings: Settings, engine: Engine, model: str, actuator: Actuator | None,
         *, now: datetime | None = None) -> Decision | None:
    """One model's control step: decide, act, record. Returns None when even the fleet's
    size is unknown (the actuator cannot be read): nothing is done then, which is the
    one safe thing to do. An actuator failure is recorded and raised for the retry."""
    try:
        current = actuator.current(model) if actuator is not None else \
            len(model_workers(engine, model))
    except Exception as exc:  # store or API server down: we do not know the fleet
        log.warning("cannot read the fleet of %s (%s): holding", model, exc)
        return None
    try:
        queue = queue_depth(engine, model)
    except SQLAlchemyError:
        queue = None  # the store is down: decide() holds the fleet anyway
    decision = decide(engine, model, current, policy_config(settings, engine, model),
                      interval_s=settings.scaling_interval_s,
                      capacity_default=settings.scaling_worker_capacity_tokens_s,
                      slo_ms=settings.scaling_latency_slo_ms, queue=queue, now=now)
    error = None
    if actuator is not None and decision.desired != current:
        try:
            actuator.scale(model, decision.desired)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    try:
        with Session(engine) as session, session.begin():
            record(session, decision, actuated=actuator is not None and error is None,
                   error=error)
    except SQLAlchemyError as exc:
        log.warning("could not record the decision for %s: %s", model, exc)
    if error is not None:
        raise ActuatorFailed(f"{model}: {error}")
    return decision


class ActuatorFailed(RuntimeError):
    """Raised after the failed decision was recorded, so the flow's retry runs again."""
