"""Flow ``alerting``: every minute, judge every alert rule and notify the changes.

The metric rules read the last few minutes of ``request_log``, the budgets, the
workers' ``/metrics`` and ``nvidia-smi`` (``kinds="metrics"``); the anomaly rules
(hourly series, the seasonal detector) run once an hour (``kinds="anomalies"``). Each
deployment runs one at a time, and the two judge disjoint rules, so no two runs step
the same alert. State lives in the store
(``alerts``, ``alert_events``), so a run that died, or a new machine, resumes it. A
rule naming an unknown tenant or model is logged as an error and skipped; a dead
webhook costs at most the delivery deadline and its notification is retried by the
next runs.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.alerts import AlertEngine, RuleKinds
from services.settings import load_settings

STORE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(**STORE_RETRIES)
async def evaluate_rules(kinds: RuleKinds) -> dict[str, Any]:
    settings = load_settings()
    engine = create_store_engine(settings.database_url)
    try:
        result = await AlertEngine(settings, engine).evaluate(kinds=kinds)
    finally:
        engine.dispose()
    return {"judged": result.judged, "changes": result.changes,
            "notified": result.notified, "undelivered": result.undelivered,
            "errors": result.errors}


@flow(name="alerting")
async def alerting(kinds: RuleKinds = "all") -> dict[str, Any]:
    logger = get_run_logger()
    result = await evaluate_rules(kinds)
    for error in result["errors"]:
        logger.error("alerting: %s", error)
    logger.info("alerting: %d judged, %d changes, %d notified, %d undelivered",
                result["judged"], len(result["changes"]), result["notified"],
                result["undelivered"])
    return result
