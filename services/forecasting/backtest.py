"""Rolling-origin backtest: how well each forecaster did, per series and steps ahead.

From each origin (every ``stride`` bins after ``min_train``), every forecaster sees only
the bins before it (at most ``window`` of them, as in production) and forecasts
``max(horizons)`` steps; the point at each horizon is scored against what happened.

WAPE (sum of absolute errors over sum of actuals) is the primary score: on bursty traffic
most 10-s bins are empty, and sMAPE gives every empty bin that got a non-zero forecast
the maximum error of 2, so sMAPE alone rewards forecasting zero. Both are reported, with
the interval's coverage (share of actuals inside it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.forecasting.forecasters import Forecaster, ForecastError

log = logging.getLogger(__name__)


def wape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Sum |error| / sum |actual|; NaN when nothing happened at all."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    total = np.abs(actual).sum()
    return float(np.abs(actual - predicted).sum() / total) if total > 0 else float("nan")


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean of 2|a - p| / (|a| + |p|), in [0, 2]; a bin where both are 0 scores 0."""
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    if len(actual) == 0:
        return float("nan")
    denominator = np.abs(actual) + np.abs(predicted)
    safe = np.where(denominator > 0, denominator, 1.0)
    return float(np.mean(np.where(denominator > 0, 2 * np.abs(actual - predicted) / safe, 0.0)))


@dataclass
class Score:
    forecaster: str
    horizon: int
    wape: float
    smape: float
    coverage: float
    origins: int
    failures: int = 0

    def as_dict(self) -> dict[str, float | int | str]:
        return {"forecaster": self.forecaster, "horizon": self.horizon,
                "wape": _round(self.wape), "smape": _round(self.smape),
                "coverage": _round(self.coverage), "origins": self.origins,
                "failures": self.failures}


def _round(value: float) -> float:
    return round(value, 4) if np.isfinite(value) else float("nan")


@dataclass
class BacktestResult:
    scores: list[Score] = field(default_factory=list)

    def best(self, horizon: int) -> Score | None:
        """The forecaster with the lowest WAPE at ``horizon`` (ties: the simplest, which
        comes first in the list); None when none produced a finite score."""
        candidates = [s for s in self.scores if s.horizon == horizon and np.isfinite(s.wape)]
        return min(candidates, key=lambda s: s.wape) if candidates else None

    def table(self) -> list[dict[str, float | int | str]]:
        return [score.as_dict() for score in self.scores]


def backtest(
    series: pd.Series,
    forecasters: Sequence[Forecaster],
    horizons: Sequence[int],
    *,
    min_train: int = 60,
    window: int = 360,
    stride: int = 1,
    level: float = 0.9,
    max_origins: int | None = None,
) -> BacktestResult:
    """Score every forecaster at every horizon (in steps of the series' frequency)."""
    if not horizons or min(horizons) < 1:
        raise ValueError("horizons must be positive step counts")
    longest = max(horizons)
    origins = list(range(min_train, len(series) - longest + 1, stride))
    if max_origins is not None and len(origins) > max_origins:
        origins = origins[-max_origins:]
    values = np.asarray(series, dtype=float)
    result = BacktestResult()
    for forecaster in forecasters:
        points: dict[int, list[tuple[float, float, float, float]]] = {h: [] for h in horizons}
        failures = 0
        for origin in origins:
            history = series.iloc[max(0, origin - window):origin]
            try:
                path = forecaster.forecast(history, longest, level)
            except ForecastError as exc:
                failures += 1
                log.debug("%s failed at origin %d: %s", forecaster.name, origin, exc)
                continue
            for h in horizons:
                points[h].append((values[origin + h - 1], path.mean[h - 1],
                                  path.lower[h - 1], path.upper[h - 1]))
        for h in horizons:
            data = np.array(points[h]) if points[h] else np.zeros((0, 4))
            actual, mean, lower, upper = (data[:, i] for i in range(4))
            coverage = float(np.mean((actual >= lower) & (actual <= upper))) if len(data) \
                else float("nan")
            result.scores.append(Score(forecaster.name, h, wape(actual, mean),
                                       smape(actual, mean), coverage, len(data), failures))
    return result
