"""The gateway's shutdown: its services closed in an order that loses nothing, each step
on its own so that one failing (a Redis or store gone, a bug) does not skip the rest,
above all the telemetry flush that writes the last requests' rows."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from services.gateway.deps import AppServices

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], object]]  # a name for the log, and a call (maybe async)


def shutdown_steps(services: AppServices) -> list[Step]:
    """The steps in order: traffic sources stop first (batch launcher, prefix warming,
    worker probes); the cache stage writes its queued semantic-index entries before the
    semantic cache and the store close; telemetry flushes the request rows after every
    stage that may still record one; the HTTP client, Prefect client and store go last."""
    s = services
    steps: list[Step | None] = [
        ("batch launcher", s.batches.launcher.stop),
        ("prefix warmer", s.warmer.stop) if s.warmer is not None else None,
        ("worker pool", s.pool.stop),
        ("cache stage", s.cache_stage.aclose) if s.cache_stage is not None else None,
        ("semantic sync", s.semantic_sync.stop) if s.semantic_sync is not None else None,
        ("key ring", s.keyring.stop),
        ("response cache", s.cache.aclose) if s.cache is not None else None,
        ("routing", s.routing.aclose) if s.routing is not None else None,
        ("budgets", s.budget.aclose) if s.budget is not None else None,
        ("token optimization", s.tokens.aclose) if s.tokens is not None else None,
        ("experiments", s.experiments.aclose) if s.experiments is not None else None,
        ("rate limiter", s.rate_limit.limiter.aclose) if s.rate_limit is not None else None,
        ("telemetry", s.telemetry.stop),
        ("upstream client", s.client.aclose),
        ("flow runs client", s.flow_runs.close),
        ("metrics store", s.engine.dispose),
    ]
    return [step for step in steps if step is not None]


async def close_in_order(steps: list[Step]) -> list[str]:
    """Run each step in turn; one that raises is logged and the next still runs. Returns
    the names of the steps that failed."""
    failed = []
    for name, call in steps:
        try:
            result = call()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.warning("shutdown: closing the %s failed; going on", name, exc_info=True)
            failed.append(name)
    return failed
