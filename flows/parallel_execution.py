"""Flow ``parallel_execution``: run one batch (``/v1/batches``) through the worker pool.

The spec's steps, one task each around ``services.batch``: analyze the requests
(check every line, predict output lengths from the metrics store's history), group them
into length bins, dispatch them continuously at a concurrency that keeps every worker's
batch full, merge the results in input order. Resumable: rerunning the flow on the same
batch skips the lines already checkpointed. ``python -m flows.parallel_execution ID``
runs it (that is how the gateway starts it).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.batch import Prepared, analyze, execute, finalize, prepare
from services.batch.dispatch import PlannedLine
from services.settings import Settings, load_settings

STORE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2),
                 "cache_policy": NO_CACHE}


@task(**STORE_RETRIES)
def read_batch(database_url: str, batch_id: str) -> Prepared | None:
    engine = create_store_engine(database_url)
    try:
        return prepare(engine, batch_id)
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE)
def analyze_requests(database_url: str, prepared: Prepared) -> list[PlannedLine]:
    engine = create_store_engine(database_url)
    try:
        return analyze(engine, prepared.remaining)
    finally:
        engine.dispose()


@task(cache_policy=NO_CACHE)
async def dispatch(settings: Settings, prepared: Prepared, planned: list[PlannedLine]) -> str:
    engine = create_store_engine(settings.database_url)
    try:
        return await execute(settings, engine, prepared, planned)
    finally:
        engine.dispose()


@task(**STORE_RETRIES)
def merge_results(database_url: str, batch_id: str, reason: str) -> dict[str, Any]:
    engine = create_store_engine(database_url)
    try:
        batch = finalize(engine, batch_id, reason)
    finally:
        engine.dispose()
    return {"batch_id": batch.id, "status": batch.status, "completed": batch.completed,
            "failed": batch.failed, "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id}


@flow(name="parallel_execution")
async def parallel_execution(batch_id: str) -> dict[str, Any] | None:
    settings = load_settings()
    logger = get_run_logger()
    prepared = read_batch(settings.database_url, batch_id)
    if prepared is None:
        logger.info("batch %s has nothing to run", batch_id)
        return None
    planned = analyze_requests(settings.database_url, prepared)
    reason = await dispatch(settings, prepared, planned)
    summary = merge_results(settings.database_url, batch_id, reason)
    logger.info("batch %s %s: %d completed, %d failed", batch_id, summary["status"],
                summary["completed"], summary["failed"])
    return summary


if __name__ == "__main__":
    from flows.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()
    asyncio.run(parallel_execution(sys.argv[1]))
