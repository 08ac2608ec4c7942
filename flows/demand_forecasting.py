"""Flow ``demand_forecasting``: every minute, for each model in
``scaling_models``: read its demand series and measurements from the store, forecast,
decide with the hybrid policy, actuate (local processes or Kubernetes, when
``scaling_enabled``), record the decision (``scaling_decisions``; the gateway exports
the latest as ``optengine_desired_replicas{model}``).

Thin around ``services.forecasting.control.step``; the step carries retries: a failed
actuation is recorded and raised, and the retry recounts the fleet, so no worker is
started twice. A store that is down yields a hold (the fleet is not touched).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models import create_store_engine
from services.forecasting.control import build_actuator, step
from services.settings import Settings, load_settings


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def scale_model(settings: Settings, model: str) -> dict[str, Any] | None:
    engine = create_store_engine(settings.database_url)
    try:
        decision = step(settings, engine, model, build_actuator(settings, engine))
    finally:
        engine.dispose()
    return None if decision is None else decision.as_dict()


@flow(name="demand_forecasting")
def demand_forecasting(models: list[str] | None = None) -> list[dict[str, Any] | None]:
    settings = load_settings()
    logger = get_run_logger()
    results = []
    for model in models or settings.scaling_models:
        decision = scale_model(settings, model)
        if decision is None:
            logger.warning("%s: fleet unknown, held", model)
        else:
            logger.info("%s: %d -> %d (%s)", model, decision["current"], decision["desired"],
                        decision["reason"])
        results.append(decision)
    return results
