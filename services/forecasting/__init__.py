"""Demand forecasting and predictive autoscaling of workers.

Series of demand per model (``series``), forecasters with prediction intervals
(``forecasters``), a rolling-origin backtest that picks one per series and horizon
(``backtest``), the hybrid predictive-plus-reactive scaling policy (``policy``), the
fleet simulation the benchmark replays traces through (``simulation``).
"""

from services.forecasting.backtest import BacktestResult, Score, backtest, smape, wape
from services.forecasting.forecasters import (
    Ewma,
    Forecast,
    Forecaster,
    ForecastError,
    GradientBoosting,
    HoltEts,
    LastValue,
    MovingAverage,
    Sarimax,
    all_forecasters,
    by_name,
)
from services.forecasting.policy import (
    Decision,
    ErrorTracker,
    HybridPolicy,
    PolicyConfig,
    ReactiveScaler,
    Signals,
)
from services.forecasting.series import (
    TraceFormatError,
    demand_series,
    load_store_events,
    load_trace,
)

__all__ = [
    "BacktestResult",
    "Decision",
    "ErrorTracker",
    "Ewma",
    "Forecast",
    "ForecastError",
    "Forecaster",
    "GradientBoosting",
    "HoltEts",
    "HybridPolicy",
    "LastValue",
    "MovingAverage",
    "PolicyConfig",
    "ReactiveScaler",
    "Sarimax",
    "Score",
    "Signals",
    "TraceFormatError",
    "all_forecasters",
    "backtest",
    "by_name",
    "demand_series",
    "load_store_events",
    "load_trace",
    "smape",
    "wape",
]
