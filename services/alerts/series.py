"""Hourly cost and request series per tenant, model and lever, and the anomaly rules'
readings over them.

The series are read by ``hourly_totals`` alone (the cost package's ``hourly_frame``),
over the bounded history window (``anomaly_history_days``): from the ``cost_rollups``
table of the cost management flow for every hour it holds complete, and from
``request_log`` only for the hours whose rows it has not rolled up yet (the current hour,
a late replay's). An evaluation costs hours x series rows plus the newest requests, not
a scan of weeks of requests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine

from services.alerts.anomaly import detect_anomalies, hourly
from services.alerts.sources import Reading, threshold_for
from services.costs.reports.anomalies import hourly_frame
from services.settings import AlertRuleConfig


def hourly_totals(engine: Engine, *, start: datetime, end: datetime) -> pd.DataFrame:
    """Requests and cost per hour x tenant x model x lever, whole hours from ``start`` to
    ``end``: ``cost_rollups`` for the hours it has complete, ``request_log`` for the rest
    (``hourly_frame``, the cost reports' series: cost is that of the priced rows)."""
    return hourly_frame(engine, start, end)


_VALUE = {"cost_anomaly": "cost_usd", "request_anomaly": "requests"}


def _subject(rule: AlertRuleConfig, tenant: str, model: str) -> tuple[str, dict[str, str]]:
    if rule.group_by == "model":
        return f"tenant={tenant},model={model}", {"tenant": tenant, "model": model}
    if rule.group_by == "tenant":
        return f"tenant={tenant}", {"tenant": tenant}
    return "overall", {}


def anomaly_readings(
    rule: AlertRuleConfig, totals: pd.DataFrame, *, now: datetime
) -> dict[str, Reading]:
    """For each series with enough history, how far the last complete hour is outside
    its expected range (robust sd; 0 when inside), with the context a person needs:
    tenant, model, the lever whose traffic moved most, expected value and range."""
    column = _VALUE[rule.metric]
    last_hour = pd.Timestamp(now).floor("h") - pd.Timedelta(hours=1)
    frame = totals[totals["hour"] <= last_hour]
    if rule.tenants:
        frame = frame[frame["tenant"].isin(rule.tenants)]
    if rule.models:
        frame = frame[frame["model"].isin(rule.models)]
    keyed: dict[str, tuple[dict[str, str], list[pd.DataFrame]]] = {}
    for (tenant, model), part in frame.groupby(["tenant", "model"]):
        subject, labels = _subject(rule, str(tenant), str(model))
        keyed.setdefault(subject, (labels, []))[1].append(part)
    readings = {}
    for subject, (labels, parts) in sorted(keyed.items()):
        data = pd.concat(parts)
        by_hour = data.groupby("hour")[column].sum()
        series = hourly(by_hour).reindex(
            pd.date_range(by_hour.index.min(), last_hour, freq="h"), fill_value=0.0)
        if len(series) < 48:
            continue  # under two days: nothing to judge by
        threshold = threshold_for(rule, labels)
        requests = data["requests"].sum()
        unit = 1.0 if column == "requests" else float(data["cost_usd"].sum() / requests
                                                       if requests else 0.0)
        found = detect_anomalies(series, threshold=threshold, since=last_hour, unit=unit)
        context: dict[str, Any] = {**labels, "metric": column, "hour": last_hour.isoformat(),
                                   "value": float(series[last_hour])}
        if not found:
            readings[subject] = Reading(0.0, context)
            continue
        anomaly = found[-1]
        context.update(expected=anomaly.expected, low=anomaly.low, high=anomaly.high,
                       score=round(anomaly.score, 2), description=anomaly.describe(),
                       **_lever_moved_most(data, column, last_hour))
        readings[subject] = Reading(abs(anomaly.score), context)
    return readings


def _lever_moved_most(data: pd.DataFrame, column: str, hour: pd.Timestamp) -> dict[str, Any]:
    """The lever whose value at ``hour`` is furthest from its median at the same hour
    of the week in earlier weeks (0 where it had none)."""
    same_hour = data[(data["hour"].dt.day_of_week == hour.day_of_week)
                     & (data["hour"].dt.hour == hour.hour)]
    pivot = same_hour.pivot_table(index="hour", columns="lever", values=column,
                                  aggfunc="sum", fill_value=0.0)
    if hour not in pivot.index:
        pivot.loc[hour] = 0.0
    now_values = pivot.loc[hour]
    earlier = pivot[pivot.index < hour]
    typical = earlier.median() if len(earlier) else pd.Series(0.0, index=pivot.columns)
    moved = (now_values - typical).abs()
    lever = str(moved.idxmax())
    return {"lever": lever, "lever_value": float(now_values[lever]),
            "lever_typical": float(typical[lever])}

