"""The alert state machine with an injected clock: for:, hysteresis, no data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.alerts.state import AlertState, Condition, step

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LOW_HIT_RATE = Condition(below=0.60, above=None, hysteresis=0.05, for_s=600)


def run(values: list[float | None], condition: Condition = LOW_HIT_RATE,
        every: timedelta = timedelta(minutes=1)) -> list[tuple[int, str]]:
    """Feed one value per minute; return (minute, change) for every change."""
    state: AlertState | None = None
    changes = []
    for minute, value in enumerate(values):
        state, change = step(state, value, condition, T0 + minute * every,
                             rule="r", subject="overall")
        if change:
            changes.append((minute, change))
    return changes


def test_fires_only_after_holding_for_the_duration() -> None:
    assert run([0.5] * 15) == [(0, "pending"), (10, "firing")]


def test_a_value_hovering_at_the_threshold_fires_once_and_does_not_flap() -> None:
    hovering = [0.59, 0.61, 0.595, 0.62, 0.58, 0.605] * 10  # 60 minutes around 60%
    assert run(hovering) == [(0, "pending"), (10, "firing")]
    # and it resolves once, when the value is clearly back (60% + 5%)
    assert run(hovering + [0.66, 0.59, 0.7]) == [
        (0, "pending"), (10, "firing"), (60, "resolved"), (61, "pending"), (62, "cleared")]


def test_without_hysteresis_the_same_values_would_flap() -> None:
    no_band = Condition(below=0.60, above=None, hysteresis=0.0, for_s=0)
    changes = run([0.59, 0.61, 0.595, 0.62], condition=no_band)
    assert [c for _, c in changes] == ["firing", "resolved", "firing", "resolved"]


def test_a_short_dip_is_cleared_without_firing() -> None:
    assert run([0.5, 0.5, 0.7, 0.7] + [0.7] * 20) == [(0, "pending"), (2, "cleared")]


def test_above_thresholds_and_immediate_rules() -> None:
    budget = Condition(below=None, above=0.8, hysteresis=0.05, for_s=0)
    assert run([0.5, 0.81, 0.9, 0.77, 0.74], condition=budget) == [
        (1, "firing"), (4, "resolved")]


def test_no_data_keeps_a_firing_alert_and_clears_a_pending_one() -> None:
    assert run([0.5] * 11 + [None] * 30) == [(0, "pending"), (10, "firing")]
    assert run([0.5, 0.5, None]) == [(0, "pending"), (2, "cleared")]
