"""Flow ``token_optimization``: run the token stages over a dataset, a prompt-template
library or recent traffic, and report what each stage saves and what quality it keeps.

API-triggered with a ``source`` (a QA JSONL file with answers, or a JSON prompt file:
ShareGPT records or ``{"messages": [...]}`` templates); scheduled hourly over the last
day's stored prompts (``request_log.prompt_text``, present only with prompt storage on).
Writes a ``token_reports`` row, and marks recurring system prompts and templates as
cache-eligible in ``cacheable_prefixes`` for the caching layer; rows no run has marked
for ``cacheable_prefix_retention_days`` are dropped, so warming and the token stage
follow the traffic of now, not of last month.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.settings import load_settings
from services.tokens import Policy, text_counter
from services.tokens.evaluation import (
    Evaluation,
    Prefix,
    Sample,
    evaluate,
    forget_stale_prefixes,
    mark_cacheable,
    prompt_samples,
    qa_samples,
    static_prefixes,
    stored_samples,
    write_report,
)

STORE_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}
RECENT = "recent"


@task
def load_samples(source: str, limit: int, database_url: str, recent_hours: float
                 ) -> list[Sample]:
    if source == RECENT:
        engine = create_store_engine(database_url)
        try:
            since = datetime.now(UTC) - timedelta(hours=recent_hours)
            return stored_samples(engine, since, limit)
        finally:
            engine.dispose()
    path = Path(source)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return qa_samples(rows[:limit])
    return prompt_samples(json.loads(path.read_text())[:limit])


@task
def run_stages(samples: list[Sample], policy: str, encoding: str) -> Evaluation:
    return evaluate(samples, Policy.parse(policy, param="policy"), text_counter(encoding))


@task
def find_prefixes(samples: list[Sample], encoding: str, min_occurrences: int) -> list[Prefix]:
    return static_prefixes(samples, text_counter(encoding), min_occurrences=min_occurrences)


@task(**STORE_RETRIES)
def record(database_url: str, source: str, policy: str, encoding: str,
           evaluation: Evaluation, prefixes: list[Prefix], store_text: bool,
           retention_days: float) -> dict[str, Any]:
    engine = create_store_engine(database_url)
    try:
        report_id = write_report(engine, source=source, policy=Policy.parse(policy),
                                 encoding=encoding, evaluation=evaluation)
        marked = mark_cacheable(engine, prefixes, store_text=store_text)
        forgotten = forget_stale_prefixes(
            engine, datetime.now(UTC) - timedelta(days=retention_days))
    finally:
        engine.dispose()
    return {"report_id": report_id, "prefixes_marked": marked,
            "prefixes_forgotten": forgotten}


@flow(name="token_optimization")
def token_optimization(source: str = RECENT, policy: str = "lossless",
                       encoding: str = "cl100k_base", limit: int = 500,
                       recent_hours: float = 24.0, min_occurrences: int = 2) -> dict[str, Any]:
    settings = load_settings()
    logger = get_run_logger()
    Policy.parse(policy, param="policy")  # a bad policy fails before any work
    samples = load_samples(source, limit, settings.database_url, recent_hours)
    evaluation = run_stages(samples, policy, encoding)
    prefixes = find_prefixes(samples, encoding, min_occurrences)
    ids = record(settings.database_url, source, policy, encoding, evaluation, prefixes,
                 settings.store_prompts, settings.cacheable_prefix_retention_days)
    logger.info("tokens: %d samples, %d -> %d (%.1f%% fewer), quality %s, %d prefixes marked, "
                "%d stale ones forgotten",
                evaluation.samples, evaluation.tokens_before, evaluation.tokens_after,
                evaluation.reduction * 100,
                "n/a" if evaluation.quality is None else f"{evaluation.quality:.1%}",
                ids["prefixes_marked"], ids["prefixes_forgotten"])
    return {**ids, "samples": evaluation.samples, "reduction": evaluation.reduction,
            "quality": evaluation.quality, "stages": evaluation.stages}
