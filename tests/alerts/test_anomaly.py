"""The anomaly detector on synthetic hourly series: a daily rhythm, quiet weekends, a
Monday 9:00 peak every week and Poisson noise, with anomalies planted by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.alerts.anomaly import detect_anomalies, hourly

START = pd.Timestamp("2026-10-05 00:00", tz="UTC")  # a Monday


def seasonal(weeks: int = 4, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    index = pd.date_range(START, periods=weeks * 168, freq="h")
    hour, weekday = index.hour.to_numpy(), index.day_of_week.to_numpy()
    rate = 100 + 60 * np.sin((hour - 6) / 24 * 2 * np.pi).clip(0)  # office hours
    rate = rate * np.where(weekday >= 5, 0.5, 1.0)  # quiet weekends
    rate = rate + np.where((weekday == 0) & (hour == 9), 250, 0)  # Monday 9:00
    return pd.Series(rng.poisson(rate).astype(float), index=index)


@pytest.mark.parametrize("seed", range(6))
def test_clean_seasonal_series_raise_nothing(seed: int) -> None:
    series = seasonal(seed=seed)
    assert detect_anomalies(series) == []
    mondays = series[(series.index.day_of_week == 0) & (series.index.hour == 9)]
    assert (mondays > 2 * series.median()).all()  # the peak is there, and not flagged


@pytest.mark.parametrize("seed", range(5))
def test_planted_anomalies_are_found_with_their_expected_range(seed: int) -> None:
    series = seasonal(seed=seed)
    spike = START + pd.Timedelta(days=16, hours=16)  # a Wednesday afternoon, x2.5
    outage = START + pd.Timedelta(days=20, hours=20)  # nothing at all
    slump = START + pd.Timedelta(days=25, hours=11)  # a Friday morning at 30%
    series[spike] *= 2.5
    series[outage] = 0
    series[slump] = round(series[slump] * 0.3)
    found = {a.at: a for a in detect_anomalies(series)}
    assert set(found) == {spike, outage, slump}
    assert found[spike].direction == "above" and found[spike].value > found[spike].high
    assert found[outage].direction == "below" and found[outage].value < found[outage].low
    assert found[slump].low <= found[slump].expected <= found[slump].high
    assert "robust sd above the expected" in found[spike].describe()


def test_since_reports_recent_hours_only() -> None:
    series = seasonal()
    old = START + pd.Timedelta(days=3, hours=12)
    new = series.index[-5]
    series[old] *= 3
    series[new] *= 3
    assert [a.at for a in detect_anomalies(series, since=series.index[-24])] == [new]


def test_a_week_of_history_has_no_weekly_rhythm_and_too_little_has_none() -> None:
    one_week = seasonal(weeks=1)
    monday_9 = START + pd.Timedelta(hours=9)
    # only the daily rhythm can be learnt: the Monday peak looks abnormal
    assert monday_9 in {a.at for a in detect_anomalies(one_week)}
    assert detect_anomalies(seasonal(weeks=1).iloc[:40]) == []


def test_missing_hours_count_as_zero() -> None:
    index = pd.DatetimeIndex([START, START + pd.Timedelta(hours=3, minutes=20)])
    grid = hourly(pd.Series([5.0, 7.0], index=index))
    assert grid.tolist() == [5.0, 0.0, 0.0, 7.0]


def test_a_fixed_rate_series_is_judged_with_at_least_poisson_noise() -> None:
    index = pd.date_range(START, periods=3 * 168, freq="h")
    steady = pd.Series(100.0, index=index)  # a job sending 100 requests every hour
    steady.iloc[-1] = 106  # well within chance for a count of 100
    assert detect_anomalies(steady, since=index[-1]) == []
    steady.iloc[-1] = 200
    [surge] = detect_anomalies(steady, since=index[-1])
    assert surge.score > 8
    costs = steady * 0.002  # the same traffic in dollars: same verdict with its unit
    assert [a.at for a in detect_anomalies(costs, since=index[-1], unit=0.002)] == [surge.at]
    costs.iloc[-1] = 106 * 0.002
    assert detect_anomalies(costs, since=index[-1], unit=0.002) == []
