"""The "Anomalies" section of a cost report: hours of the period whose cost or request
count is outside the expected range, per tenant (the all-tenants report) or per model
(a tenant's report) and in total.

The same detector and series as the alert engine's anomaly rules (STL on the square root
of the hourly series, seasonal over the week, robust threshold: ``services.alerts.
anomaly``), read the same way (``hourly_frame``: rollups, plus the hours not rolled up
yet). Each hour of the period is judged against what the history before the period
predicts, so a busy Monday 9:00 that is busy every week is not listed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine

from services.alerts.anomaly import DEFAULT_THRESHOLD, Anomaly, detect_anomalies
from services.costs.reports.rollup import hourly_sums

MAX_ROWS = 20
COLUMNS = ["hour", "tenant", "model", "lever", "requests", "cost_usd"]
_METRICS = (("cost_usd", "cost (USD)"), ("requests", "requests"))


def hourly_frame(engine: Engine, start: datetime, end: datetime) -> pd.DataFrame:
    """Requests and cost (of the priced rows) per hour x tenant x model x lever, whole
    hours of ``[start, end)`` (``hourly_sums``): the series anomalies are judged on."""
    sums = hourly_sums(engine, start, end, by=("time", "tenant", "model", "lever"),
                       columns=("requests", "cost_usd"))
    frame = pd.DataFrame(sums.rows, columns=["time", *COLUMNS[1:]]).rename(
        columns={"time": "hour"})
    frame["hour"] = pd.to_datetime(frame["hour"], utc=True)
    return frame


def find_anomalies(engine: Engine, since: datetime, until: datetime, tenant: str | None, *,
                   history_days: int, threshold: float = DEFAULT_THRESHOLD
                   ) -> tuple[list[tuple[str, str, Anomaly]], list[str]]:
    """``(series, metric, anomaly)`` for every hour of ``[since, until)`` outside its
    range, largest first, and the series that had too little history to judge."""
    frame = hourly_frame(engine, since - timedelta(days=history_days), until)
    if tenant is not None:
        frame = frame[frame["tenant"] == tenant]
    if frame.empty:
        return [], []
    key = "model" if tenant is not None else "tenant"
    parts = [("total", frame), *((f"{key} {name or '(none)'}", part)
                                 for name, part in frame.groupby(key))]
    start = pd.Timestamp(since).tz_convert("UTC").floor("h")
    last = pd.Timestamp(until).tz_convert("UTC").ceil("h") - pd.Timedelta(hours=1)
    found, unjudged = [], []
    for name, part in parts:
        by_hour = part.groupby("hour")[["cost_usd", "requests"]].sum()
        grid = pd.date_range(by_hour.index.min(), last, freq="h")
        requests = float(by_hour["requests"].sum())
        if (grid < start).sum() < 48:
            unjudged.append(name)
            continue
        for column, metric in _METRICS:
            series = by_hour[column].reindex(grid, fill_value=0.0)
            unit = 1.0 if column == "requests" or not requests else float(
                by_hour["cost_usd"].sum() / requests)
            found += [(name, metric, a) for a in detect_anomalies(
                series, threshold=threshold, since=start, unit=unit)]
    return sorted(found, key=lambda f: -abs(f[2].score)), unjudged


def anomaly_section_rows(found: list[tuple[str, str, Anomaly]]) -> list[list[str]]:
    return [[name, metric, f"{a.at:%Y-%m-%d %H:00}", f"{a.value:.4g}", f"{a.expected:.4g}",
             f"{a.low:.4g} to {a.high:.4g}", f"{a.score:+.1f}"]
            for name, metric, a in found[:MAX_ROWS]]
