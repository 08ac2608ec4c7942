"""Queue depth of one model's fleet, the reactive part's ``queue depth > 10`` trigger.

The workers serving the model come from the shared registry (``workers`` rows not
deregistered whose ``models`` name it); each vLLM worker reports the requests it holds
waiting for a batch slot as ``vllm:num_requests_waiting`` on its own ``/metrics``. The
fleet's queue depth is their sum. A worker that does not answer is left out (it takes no
requests either); when none answers there is no measurement (None), which the policy
treats as "queue not measured", never as an empty queue that would allow a scale-down.
"""

from __future__ import annotations

import logging

import httpx
from sqlalchemy import Engine, select

from models import Worker
from services.workers import vllm_metrics

log = logging.getLogger(__name__)

def model_workers(engine: Engine, model: str) -> list[str]:
    """URLs of the registered workers that serve ``model``."""
    with engine.connect() as conn:
        rows = conn.execute(select(Worker.url, Worker.models)
                            .where(Worker.deregistered_at.is_(None))).all()
    return sorted(url for url, models in rows if model in (models or []))


def queue_depth(engine: Engine, model: str, *, timeout_s: float = 2.0) -> float | None:
    """Requests waiting over the model's registered workers; None when no worker
    reported one."""
    readings = []
    with httpx.Client(timeout=timeout_s) as client:
        for url in model_workers(engine, model):
            try:
                response = client.get(f"{url}/metrics")
                response.raise_for_status()
            except httpx.HTTPError as exc:
                log.info("no queue depth from %s: %s", url, exc)
                continue
            waiting = vllm_metrics.total(response.text, vllm_metrics.WAITING)
            if waiting is not None:
                readings.append(waiting)
    return sum(readings) if readings else None
