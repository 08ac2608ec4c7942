"""The shipped ``scaling-actuator-failed`` rule: a scaling decision the actuator could not
carry out (recorded by the control step) fires a critical alert delivered to a real
webhook receiver; it resolves once the actuator works again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.alerts import AlertEngine
from services.forecasting.control import ActuatorFailed, step
from tests.alerts.test_engine import delivery
from tests.forecasting.test_control import FakeActuator, traffic
from tests.support.receivers import webhook_receiver


async def test_a_failed_actuation_fires_and_a_working_one_resolves(make_settings, store,
                                                                   clock) -> None:
    with webhook_receiver() as receiver:
        settings = make_settings(database_url=str(store.url),
                                 scaling_worker_capacity_tokens_s=100.0,
                                 delivery=delivery(f"{receiver.url}/ok"))
        engine = AlertEngine(settings, store, clock=clock, gpu_reader=dict)
        traffic(store, "m", [10] * 60, end=clock.now)  # 1,000 tok/s: 10 workers' worth
        actuator = FakeActuator(1, fail=1)
        with pytest.raises(ActuatorFailed):
            step(settings, store, "m", actuator, now=clock.now - timedelta(seconds=30))
        fired = await engine.evaluate(kinds="metrics")
        assert [(c["rule"], c["subject"], c["change"]) for c in fired.changes] == [
            ("scaling-actuator-failed", "model=m", "firing")]
        # the retry goes through; once the failure is out of the window, it resolves
        step(settings, store, "m", actuator, now=clock.now - timedelta(seconds=20))
        assert actuator.replicas > 1
        clock.advance(minutes=settings.alerts.window_minutes)
        step(settings, store, "m", actuator, now=clock.now - timedelta(seconds=1))
        resolved = await engine.evaluate(kinds="metrics")
        assert [c["change"] for c in resolved.changes] == ["resolved"]
    texts = [body["text"] for body in receiver.posts("/ok")]
    assert texts[0].startswith("*FIRING: scaling-actuator-failed (model=m)*")
    assert "1 failed actuations" in texts[0] and "api down" in texts[0]
    assert texts[1].startswith("*RESOLVED: scaling-actuator-failed (model=m)*")
