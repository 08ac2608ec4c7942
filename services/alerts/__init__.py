"""Alerts: rules over the store's and the workers' figures, with pending -> firing ->
resolved states, hysteresis, history in the store and notifications on each change.

The public surface: ``AlertEngine`` (one evaluation: ``await engine.evaluate()``, used
by the ``alerting`` flow), ``AlertConfigError`` (a rule naming an unknown tenant or
model), ``open_alerts`` (what ``GET /admin/alerts`` lists) and ``detect_anomalies``
(the seasonal anomaly detector, a pure function over an hourly pandas series).
Rules are configured in ``settings.alerts`` (services/settings.py).
"""

from services.alerts.anomaly import Anomaly, detect_anomalies
from services.alerts.engine import AlertConfigError, AlertEngine, EvaluationResult, RuleKinds
from services.alerts.store import open_alerts

__all__ = [
    "AlertConfigError",
    "AlertEngine",
    "Anomaly",
    "EvaluationResult",
    "RuleKinds",
    "detect_anomalies",
    "open_alerts",
]
