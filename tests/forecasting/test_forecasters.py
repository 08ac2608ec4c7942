"""Forecasters give non-negative paths with intervals; the backtest scores them with
WAPE and sMAPE and picks the one that fits the series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.forecasting import (
    ForecastError,
    GradientBoosting,
    HoltEts,
    LastValue,
    MovingAverage,
    Sarimax,
    all_forecasters,
    backtest,
    smape,
    wape,
)


def series(values) -> pd.Series:
    values = np.asarray(values, dtype=float)
    return pd.Series(values, index=pd.date_range("2026-01-01", periods=len(values), freq="10s",
                                                 tz="UTC"))


@pytest.mark.parametrize("forecaster", all_forecasters(), ids=lambda f: f.name)
def test_every_forecaster_gives_an_interval_around_a_non_negative_path(forecaster) -> None:
    rng = np.random.default_rng(1)
    history = series(np.maximum(0, 100 + 30 * np.sin(np.arange(200) / 8) + rng.normal(0, 10, 200)))
    path = forecaster.forecast(history, 30, level=0.9)
    assert len(path.mean) == len(path.lower) == len(path.upper) == 30
    assert (path.lower >= 0).all() and (path.lower <= path.mean + 1e-6).all()
    assert (path.mean <= path.upper + 1e-6).all() and (path.upper > path.lower).any()
    assert 20 < path.mean.mean() < 200


@pytest.mark.parametrize("forecaster", all_forecasters(), ids=lambda f: f.name)
def test_all_zero_history_forecasts_zero(forecaster) -> None:
    path = forecaster.forecast(series(np.zeros(100)), 5)
    assert (path.mean == 0).all() and (path.upper == 0).all()


def test_bad_input() -> None:
    with pytest.raises(ForecastError):
        HoltEts().forecast(series([1, 2, 3]), 5)
    with pytest.raises(ForecastError):
        GradientBoosting().forecast(series(np.arange(20)), 30)
    with pytest.raises(ForecastError):
        LastValue().forecast(series([1.0, np.nan]), 1)
    with pytest.raises(ValueError):
        LastValue().forecast(series([1.0]), 0)
    with pytest.raises(ValueError):
        LastValue().forecast(series([1.0]), 1, level=1.0)


def test_wape_and_smape() -> None:
    assert wape([10, 0, 10], [5, 5, 10]) == pytest.approx(0.5)
    assert np.isnan(wape([0, 0], [1, 1]))
    # an empty bin forecast as non-zero is the maximum sMAPE error; both zero is none
    assert smape([0, 0], [5, 0]) == pytest.approx(1.0)
    assert smape([10], [10]) == 0.0


def test_backtest_prefers_smoothing_on_noise_and_trend_models_on_a_trend() -> None:
    rng = np.random.default_rng(0)
    noisy = series(100 + rng.normal(0, 30, 200))
    result = backtest(noisy, [LastValue(), MovingAverage(window=12)], [1, 5], min_train=60,
                      stride=2)
    assert result.best(1).forecaster == "moving_average"
    scores = {(s.forecaster, s.horizon): s for s in result.scores}
    assert scores[("last_value", 5)].wape > scores[("moving_average", 5)].wape
    assert 0 < scores[("moving_average", 1)].coverage <= 1
    trend = series(np.arange(200) * 5.0 + rng.normal(0, 2, 200))
    result = backtest(trend, [MovingAverage(window=12), Sarimax(order=(1, 1, 0))], [5],
                      min_train=60, stride=10)
    assert result.best(5).forecaster == "sarimax"
    assert {"forecaster", "horizon", "wape", "smape", "coverage"} <= set(result.table()[0])
