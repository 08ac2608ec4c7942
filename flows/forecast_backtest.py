"""Flow ``forecast_backtest``: daily (and on demand), backtest every forecaster on each
scaled model's last day of 10-s demand at 10 s and 5 minutes (rolling origin, WAPE and
sMAPE), store the scores in ``forecast_scores`` and mark the best at 5 minutes, which
``demand_forecasting`` then uses for that model."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from models import create_store_engine
from services.forecasting.control import run_backtest
from services.settings import load_settings


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      cache_policy=NO_CACHE)
def backtest_model(database_url: str, model: str, hours: float) -> list[dict[str, Any]]:
    engine = create_store_engine(database_url)
    try:
        rows = run_backtest(engine, model, hours=hours)
    finally:
        engine.dispose()
    return [{"forecaster": r.forecaster, "horizon_s": r.horizon_s, "wape": r.wape,
             "smape": r.smape, "chosen": r.chosen} for r in rows]


@flow(name="forecast_backtest")
def forecast_backtest(models: list[str] | None = None,
                      hours: float = 24.0) -> dict[str, list[dict[str, Any]]]:
    settings = load_settings()
    logger = get_run_logger()
    out = {}
    for model in models or settings.scaling_models:
        scores = backtest_model(settings.database_url, model, hours)
        chosen = [s["forecaster"] for s in scores if s["chosen"]]
        logger.info("%s: %d scores, chosen %s", model, len(scores), chosen or "none (no history)")
        out[model] = scores
    return out
