"""The control step against a real store: decisions recorded with their inputs, the
policy's memory rebuilt from them, faults (no history, store down, actuator failure),
the backtest's choice, and the exported metric."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import create_engine, select

from models import ForecastScore, RequestLog, ScalingDecision, WorkerLaunch, session_factory
from services.forecasting.control import (
    ActuatorFailed,
    chosen_forecaster,
    cold_start_s,
    measure,
    run_backtest,
    step,
    worker_capacity,
)
from services.forecasting.metrics import DesiredReplicasCollector

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


class FakeActuator:
    """Stands in for the fleet (the local and Kubernetes actuators have their own tests)."""

    def __init__(self, replicas: int, fail: int = 0) -> None:
        self.replicas, self.fail, self.calls = replicas, fail, []

    def current(self, model: str) -> int:
        return self.replicas

    def scale(self, model: str, desired: int) -> None:
        self.calls.append(desired)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("api down")
        self.replicas = desired


def traffic(engine, model: str, per_10s: list[int], *, end: datetime = NOW,
            tokens: int = 1000, latency_ms: float = 50.0, worker: str | None = None) -> None:
    """``per_10s[i]`` requests of ``tokens`` tokens in the i-th 10-s bin before ``end``
    (no worker named: the capacity stays the configured default)."""
    start = end - timedelta(seconds=10 * len(per_10s))
    rows = []
    for i, count in enumerate(per_10s):
        for j in range(count):
            rows.append(RequestLog(
                id=str(uuid.uuid4()), tenant="t", endpoint="chat", model_served=model,
                status_code=200, prompt_tokens=tokens - 10, completion_tokens=10,
                latency_ms=latency_ms, worker=worker,
                created_at=start + timedelta(seconds=10 * i + 10 * j / max(count, 1))))
    with session_factory(engine).begin() as session:
        session.add_all(rows)


def decisions(engine) -> list[ScalingDecision]:
    with session_factory(engine)() as session:
        return list(session.scalars(select(ScalingDecision).order_by(ScalingDecision.id)))


def test_no_history_decides_reactively_and_records_it(store, make_settings) -> None:
    settings = make_settings(scaling_worker_capacity_tokens_s=100.0)
    actuator = FakeActuator(2)
    decision = step(settings, store, "m", actuator, now=NOW)
    assert decision is not None and decision.predictive is None
    assert "no forecast" in decision.reason and decision.desired == 2
    [row] = decisions(store)
    assert row.model == "m" and row.desired_replicas == 2 and row.actuated  # nothing to do
    assert row.reason == decision.reason and row.inputs["capacity_tokens_s"] == 100.0


def test_rising_demand_scales_up_through_the_actuator(store, make_settings) -> None:
    settings = make_settings(scaling_worker_capacity_tokens_s=100.0, scaling_max_replicas=8)
    # 20 minutes of 1 request (1,000 tokens) per 10 s = 100 tok/s, then 5 per 10 s
    traffic(store, "m", [1] * 114 + [5] * 6)
    actuator = FakeActuator(1)
    decision = step(settings, store, "m", actuator, now=NOW)
    assert decision.predictive is not None and decision.predictive >= 2
    assert decision.desired > 1 and actuator.calls == [decision.desired]
    assert decision.inputs["forecaster"] == "last_value"  # no backtest has chosen yet
    assert decision.inputs["demand_tokens_s"] == pytest.approx(5 * 1000 / 10, rel=0.05)
    row = decisions(store)[-1]
    assert row.actuated and row.predictive_replicas == decision.predictive
    assert "next_bin_forecast" in row.inputs and "target" in row.inputs


def test_policy_knobs_come_from_the_settings(store, make_settings) -> None:
    # one burst of 40 requests (40,000 tokens in a 10-s bin = 4,000 tok/s) 3 minutes ago,
    # quiet since: with burst memory set the step still sizes for it, without it not
    history = [0] * 100 + [40] + [0] * 19
    traffic(store, "m", history)
    plain = make_settings(scaling_worker_capacity_tokens_s=1000.0, scaling_max_replicas=16)
    assert step(plain, store, "m", FakeActuator(1), now=NOW).desired <= 2
    remembering = make_settings(scaling_worker_capacity_tokens_s=1000.0,
                                scaling_max_replicas=16, scaling_burst_half_life_s=600.0,
                                scaling_safety_utilisation=1.0)
    decision = step(remembering, store, "m", FakeActuator(1), now=NOW)
    # 4,000 tok/s aged 190-200 s of a 600-s half-life: ~3,200 tok/s -> 4 workers
    assert decision.desired == 4 and "burst memory" in decision.reason
    with pytest.raises(ValueError):
        make_settings(scaling_safety_utilisation=1.5)


def test_memory_is_rebuilt_from_recorded_decisions(store, make_settings) -> None:
    settings = make_settings(scaling_worker_capacity_tokens_s=100.0, scaling_max_replicas=8)
    traffic(store, "m", [5] * 60, end=NOW)
    actuator = FakeActuator(1)
    first = step(settings, store, "m", actuator, now=NOW)
    assert first.desired >= 4
    # traffic stops; 30 s later the stabilisation window (5 minutes) still holds it...
    later = step(settings, store, "m", actuator, now=NOW + timedelta(seconds=30))
    assert later.desired == first.desired and "highest target" in later.reason
    # ...and once it has passed, scale-downs go one step cap at a time
    much_later = step(settings, store, "m", actuator,
                      now=NOW + timedelta(seconds=30 + 301))
    assert much_later.desired == first.desired - 2 and "step capped" in much_later.reason


def test_store_down_holds_and_fleet_unknown_does_nothing(make_settings, tmp_path) -> None:
    settings = make_settings()
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}")
    actuator = FakeActuator(3)
    decision = step(settings, broken, "m", actuator, now=NOW)
    assert decision.desired == 3 and decision.reason.startswith("hold: store unreadable")
    assert actuator.calls == []

    class Unknown(FakeActuator):
        def current(self, model: str) -> int:
            raise ConnectionError("api server down")

    unknown = Unknown(3)
    assert step(settings, broken, "m", unknown, now=NOW) is None and unknown.calls == []


def test_actuator_failure_is_recorded_and_raised_for_the_retry(store, make_settings) -> None:
    settings = make_settings(scaling_worker_capacity_tokens_s=100.0)
    traffic(store, "m", [10] * 60)
    actuator = FakeActuator(1, fail=1)
    with pytest.raises(ActuatorFailed):
        step(settings, store, "m", actuator, now=NOW)
    failed = decisions(store)[-1]
    assert not failed.actuated and "api down" in failed.actuator_error
    retried = step(settings, store, "m", actuator, now=NOW + timedelta(seconds=1))
    assert actuator.replicas == retried.desired > 1 and decisions(store)[-1].actuated


def test_rows_from_a_clock_running_ahead_count_once_a_minute_late(store) -> None:
    traffic(store, "m", [1] * 6, end=NOW)  # 6 requests in the minute before NOW
    traffic(store, "m", [3], end=NOW + timedelta(seconds=10))  # a gateway 10 s ahead
    assert measure(store, "m", NOW, 60).demand_tokens_s == pytest.approx(6 * 1000 / 60)
    later = measure(store, "m", NOW + timedelta(seconds=60), 60)
    assert later.demand_tokens_s == pytest.approx(3 * 1000 / 60)
    assert later.series.sum() == 9 * 1000  # every request in the series, each once


def test_capacity_and_cold_start_are_measured_from_the_store(store) -> None:
    assert worker_capacity(store, "m", 200.0, default=123.0) == 123.0
    # 12 busy minutes at 20 requests x 1,000 tokens per minute within the SLO
    traffic(store, "m", [0, 0, 0, 0, 0, 20] * 12, end=datetime.now(UTC), worker="http://w1")
    assert worker_capacity(store, "m", 200.0, default=123.0) == pytest.approx(20_000 / 60)
    assert worker_capacity(store, "m", 10.0, default=123.0) == 123.0  # all over a 10 ms SLO

    assert cold_start_s(store, "m", default=60.0, timeout_s=300.0) == 60.0
    with session_factory(store).begin() as session:
        after = [NOW + timedelta(seconds=s) for s in (30, 40, 5)]
        session.add_all([
            WorkerLaunch(model="m", url="u1", requested_at=NOW, healthy_at=after[0]),
            WorkerLaunch(model="m", url="u2", requested_at=NOW, healthy_at=after[1]),
            WorkerLaunch(model="m", url="u3", requested_at=NOW, failed_at=after[2]),
            WorkerLaunch(model="m", url="u4", requested_at=NOW),  # still starting: not counted
        ])
    # median of 30, 40 and the failed one's full 300 s timeout
    assert cold_start_s(store, "m", default=60.0, timeout_s=300.0) == 40.0


def test_backtest_stores_scores_and_chooses_the_forecaster(store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    traffic(store, "m", [3, 0, 1, 4, 0, 2] * 30, end=now)
    assert run_backtest(store, "other", now=now) == []  # no history: nothing to score
    rows = run_backtest(store, "m", now=now, origins=4)
    assert {r.forecaster for r in rows} >= {"last_value", "sarimax", "gradient_boosting"}
    assert {r.horizon_s for r in rows} == {10, 300}
    [chosen] = [r for r in rows if r.chosen]
    assert chosen.horizon_s == 300
    assert chosen.wape == min(r.wape for r in rows if r.horizon_s == 300 and r.wape is not None)
    assert chosen_forecaster(store, "m").name == chosen.forecaster
    with session_factory(store)() as session:
        assert session.query(ForecastScore).count() == len(rows)


def test_desired_replicas_metric(store, make_settings, tmp_path) -> None:
    settings = make_settings(scaling_worker_capacity_tokens_s=100.0)
    clock = [0.0]
    collector = DesiredReplicasCollector(store, ttl_s=10, clock=lambda: clock[0])
    registry = CollectorRegistry()
    registry.register(collector)
    assert b"optengine_desired_replicas{" not in generate_latest(registry)
    step(settings, store, "m", FakeActuator(2), now=NOW)
    step(settings, store, "n", FakeActuator(3), now=NOW)
    clock[0] = 11.0
    text = generate_latest(registry).decode()
    assert 'optengine_desired_replicas{model="m"} 2.0' in text
    assert 'optengine_desired_replicas{model="n"} 3.0' in text
    # a store that cannot be read exports nothing, never a zero
    collector.engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    clock[0] = 30.0
    assert "optengine_desired_replicas{" not in generate_latest(registry).decode()
