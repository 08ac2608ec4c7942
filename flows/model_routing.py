"""Flow ``model_routing``: retrain the complexity router from the store's own labels.

Daily (and on demand): collect the labels of the window (cascade outcomes in
``request_log``, feedback and A/B outcomes in ``routing_labels``), train a new router
with the shipped model's features and calibration, store it in ``router_versions`` and
make it the active version only when it beats the active one on those labels. Gateways
pick up the active version within a minute.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.routing import ComplexityRouter
from services.routing.retrain import load_active_router, retrain
from services.settings import load_settings

STORE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(**STORE_RETRIES)
def retrain_router(database_url: str, window_hours: float, min_labels: int) -> dict[str, Any]:
    engine = create_store_engine(database_url)
    try:
        current = load_active_router(engine) or ComplexityRouter.load()
        result = retrain(engine, since=datetime.now(UTC) - timedelta(hours=window_hours),
                         current=current, min_labels=min_labels)
    finally:
        engine.dispose()
    return dataclasses.asdict(result)


@flow(name="model_routing")
def model_routing(window_hours: float = 24 * 7, min_labels: int = 200) -> dict[str, Any]:
    settings = load_settings()
    result = retrain_router(settings.database_url, window_hours, min_labels)
    get_run_logger().info("router retraining: %s (%s) %s", result["status"], result["reason"],
                          result["version"] or "")
    return result
