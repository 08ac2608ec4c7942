"""Flow ``experiments``: every minute, analyse the running experiments and advance,
hold or roll back their canaries (``services.experiments.run_once``); every look is
stored in ``experiment_results``, a rollback raises an alert. A store that cannot be
reached holds every step: nothing is promoted on missing data."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task

from models import create_store_engine
from services.experiments import run_once
from services.settings import load_settings


@task
def analyse_experiments(database_url: str) -> list[dict[str, Any]]:
    # no task retries: a look that failed is a held step, and the next minute looks again
    engine = create_store_engine(database_url)
    try:
        return [asdict(d) for d in run_once(engine)]
    finally:
        engine.dispose()


@flow(name="experiments")
def experiments(database_url: str | None = None) -> list[dict[str, Any]]:
    decisions = analyse_experiments(database_url or load_settings().database_url)
    logger = get_run_logger()
    for d in decisions:
        logger.info("%s: %s (%s)", d["experiment"], d["decision"], d["reason"])
    return decisions
