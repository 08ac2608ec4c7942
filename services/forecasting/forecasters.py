"""Forecasters of one demand series, each giving a path of point forecasts with a
prediction interval for every step ahead.

All share one call, ``forecast(history, horizon, level)``: ``history`` a pandas Series on
a regular DatetimeIndex (empty bins are zeros), ``horizon`` steps of that frequency,
``level`` the central coverage of the interval (0.9 gives the 5th and 95th percentiles).
They are refit on every call: a rolling-origin backtest and the every-minute control flow
both see a new history each time, and on a few hundred bins a refit costs milliseconds
to a fraction of a second.

Intervals: statsmodels' own for Holt/ETS and SARIMAX; quantile gradient boosting for
the boosted model; for the flat baselines (last value, moving average, EWMA), empirical
quantiles of the method's own in-sample errors at each step ahead, which on bursty
traffic (most bins empty, bursts ten times the mean) is far more honest than a normal
band. Every bound is clipped at zero: demand is never negative.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits


class ForecastError(RuntimeError):
    """A forecaster could not fit this history (too short, degenerate, did not converge)."""


@dataclass(frozen=True)
class Forecast:
    """Per step ahead: point forecast and interval bounds (arrays of length ``horizon``)."""

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float

    def __post_init__(self) -> None:
        if not (len(self.mean) == len(self.lower) == len(self.upper)):
            raise ValueError("mean, lower and upper must have the same length")


class Forecaster(Protocol):
    name: str

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast: ...


def _check(history: pd.Series, horizon: int, level: float, minimum: int) -> np.ndarray:
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray(history, dtype=float)
    if len(values) < minimum:
        raise ForecastError(f"needs at least {minimum} observations, got {len(values)}")
    if not np.isfinite(values).all():
        raise ForecastError("history holds NaN or infinite values")
    return values


def _flat_forecast(values: np.ndarray, levels: np.ndarray, horizon: int, level: float
                   ) -> Forecast:
    """A flat path at ``levels[-1]`` with empirical error quantiles per step ahead.

    ``levels[t]`` is the forecast the method would have made at ``t``; its errors
    ``values[t + h] - levels[t]`` over the history give the interval at step ``h``. With
    fewer than 5 such errors the whole history's spread is used instead.
    """
    point = float(levels[-1])
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    lower, upper = np.empty(horizon), np.empty(horizon)
    for step in range(1, horizon + 1):
        errors = values[step:] - levels[: max(0, len(values) - step)]
        if len(errors) < 5:
            errors = values - values.mean()
        lower[step - 1] = point + np.quantile(errors, lo_q)
        upper[step - 1] = point + np.quantile(errors, hi_q)
    mean = np.full(horizon, point)
    return Forecast(np.maximum(mean, 0), np.maximum(lower, 0), np.maximum(upper, 0), level)


@dataclass
class LastValue:
    """Tomorrow is today: the naive baseline every other model must beat."""

    name: str = "last_value"

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast:
        values = _check(history, horizon, level, 1)
        return _flat_forecast(values, values, horizon, level)


@dataclass
class MovingAverage:
    """Mean of the last ``window`` bins: smooths the bursts a last value chases."""

    window: int = 6
    name: str = "moving_average"

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast:
        values = _check(history, horizon, level, 1)
        levels = pd.Series(values).rolling(self.window, min_periods=1).mean().to_numpy()
        return _flat_forecast(values, levels, horizon, level)


@dataclass
class Ewma:
    """Exponentially weighted mean (``alpha`` the weight of the newest bin)."""

    alpha: float = 0.3
    name: str = "ewma"

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast:
        values = _check(history, horizon, level, 1)
        levels = pd.Series(values).ewm(alpha=self.alpha, adjust=False).mean().to_numpy()
        return _flat_forecast(values, levels, horizon, level)


@dataclass
class HoltEts:
    """Holt's additive damped trend as a statsmodels ETS state-space model, whose
    likelihood gives the prediction interval."""

    name: str = "holt_ets"

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        values = _check(history, horizon, level, 10)
        if np.ptp(values) == 0:  # a constant series: the state-space fit is degenerate
            return _flat_forecast(values, values, horizon, level)
        try:
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")
                fit = ETSModel(pd.Series(values), error="add", trend="add", damped_trend=True).fit(
                    disp=False, maxiter=50)
                frame = fit.get_prediction(start=len(values),
                                           end=len(values) + horizon - 1
                                           ).summary_frame(alpha=1 - level)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ForecastError(f"ETS fit failed: {exc}") from exc
        return _bounded(frame["mean"], frame["pi_lower"], frame["pi_upper"], level)


@dataclass
class Sarimax:
    """ARIMA(p, 0, q) with a constant, optionally seasonal, from statsmodels' SARIMAX;
    the interval is its forecast's confidence band."""

    order: tuple[int, int, int] = (2, 0, 1)
    seasonal_order: tuple[int, int, int, int] = (0, 0, 0, 0)
    name: str = "sarimax"

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        values = _check(history, horizon, level, 12)
        if np.ptp(values) == 0:
            return _flat_forecast(values, values, horizon, level)
        try:
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")
                fit = SARIMAX(values, order=self.order, seasonal_order=self.seasonal_order,
                              trend="c").fit(disp=False, maxiter=50)
                pred = fit.get_forecast(horizon)
                bounds = np.asarray(pred.conf_int(alpha=1 - level))
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ForecastError(f"SARIMAX fit failed: {exc}") from exc
        return _bounded(pred.predicted_mean, bounds[:, 0], bounds[:, 1], level)


def _bounded(mean: object, lower: object, upper: object, level: float) -> Forecast:
    mean_a, lower_a, upper_a = (np.maximum(np.asarray(a, dtype=float), 0)
                                for a in (mean, lower, upper))
    if not (np.isfinite(mean_a).all() and np.isfinite(upper_a).all()):
        raise ForecastError("the model forecast NaN or infinity")
    return Forecast(mean_a, lower_a, upper_a, level)


LAGS = 12
WINDOWS = (6, 30)


def lag_features(values: np.ndarray, index: pd.DatetimeIndex) -> np.ndarray:
    """Per bin: the last ``LAGS`` values, mean and max over ``WINDOWS``, minute of the
    hour and hour of the day (both as sine/cosine, so 59 sits next to 0)."""
    frame = pd.DataFrame({"y": values}, index=range(len(values)))
    columns = {f"lag{k}": frame["y"].shift(k - 1) for k in range(1, LAGS + 1)}
    for window in WINDOWS:
        rolling = frame["y"].rolling(window, min_periods=1)
        columns[f"mean{window}"] = rolling.mean()
        columns[f"max{window}"] = rolling.max()
    minute = np.asarray(index.minute + index.second / 60.0)
    hour = np.asarray(index.hour + minute / 60.0)
    columns["min_sin"] = pd.Series(np.sin(2 * np.pi * minute / 60))
    columns["min_cos"] = pd.Series(np.cos(2 * np.pi * minute / 60))
    columns["hour_sin"] = pd.Series(np.sin(2 * np.pi * hour / 24))
    columns["hour_cos"] = pd.Series(np.cos(2 * np.pi * hour / 24))
    return pd.DataFrame(columns).fillna(0.0).to_numpy()


@dataclass
class GradientBoosting:
    """Gradient-boosted trees on lag, rolling and calendar features, one pooled model over
    all steps ahead (the step is a feature) with quantile losses for the interval.

    Direct rather than recursive: a recursive tree model feeds its own smoothed guesses
    back and flattens every burst. Histogram boosting keeps a refit well under a second
    on a few thousand rows.
    """

    max_iter: int = 50
    name: str = "gradient_boosting"

    def forecast(self, history: pd.Series, horizon: int, level: float = 0.9) -> Forecast:
        values = _check(history, horizon, level, 2 * LAGS + horizon)
        if np.ptp(values) == 0:
            return _flat_forecast(values, values, horizon, level)
        index = pd.DatetimeIndex(history.index)
        features = lag_features(values, index)
        rows, targets = [], []
        origins = np.arange(LAGS, len(values) - 1)
        # a handful of steps teach the trees how error grows with the step; all steps
        # would multiply the training rows by the horizon for little gain
        steps = sorted({1, 2, 3, *np.linspace(1, horizon, 6).round().astype(int).tolist()})
        for step in (s for s in steps if s <= horizon):
            usable = origins[origins + step < len(values)]
            rows.append(np.column_stack([features[usable], np.full(len(usable), step)]))
            targets.append(values[usable + step])
        train_x, train_y = np.vstack(rows), np.concatenate(targets)
        query = np.column_stack([np.repeat(features[-1:], horizon, axis=0),
                                 np.arange(1, horizon + 1)])
        # imported before the limit is set: threadpoolctl limits only loaded libraries
        import sklearn.ensemble  # noqa: F401

        out: dict[str, np.ndarray] = {}
        with threadpool_limits(1):  # no OpenMP oversubscription on a shared 2-core box
            self._fit_predict(train_x, train_y, query, level, out)
        upper = np.maximum(out["upper"], out["mean"])
        lower = np.minimum(out["lower"], out["mean"])
        return _bounded(out["mean"], lower, upper, level)

    def _fit_predict(self, train_x: np.ndarray, train_y: np.ndarray, query: np.ndarray,
                     level: float, out: dict[str, np.ndarray]) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        for key, loss, quantile in (("mean", "squared_error", None),
                                    ("lower", "quantile", (1 - level) / 2),
                                    ("upper", "quantile", 1 - (1 - level) / 2)):
            options = {"quantile": quantile} if quantile is not None else {}
            model = HistGradientBoostingRegressor(loss=loss, max_iter=self.max_iter,
                                                  max_leaf_nodes=15, learning_rate=0.1,
                                                  random_state=0, **options)
            out[key] = model.fit(train_x, train_y).predict(query)


def all_forecasters() -> list[Forecaster]:
    """Every forecaster the backtest compares, with the defaults the policy uses."""
    return [LastValue(), MovingAverage(), Ewma(), HoltEts(), Sarimax(), GradientBoosting()]


def by_name(name: str) -> Forecaster:
    for forecaster in all_forecasters():
        if forecaster.name == name:
            return forecaster
    raise KeyError(f"unknown forecaster {name!r}")
