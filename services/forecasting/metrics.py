"""``optengine_desired_replicas{model}``: the latest scaling decision per model, for KEDA's
Prometheus scaler or an HPA external metric to act on.

Exported by the gateway's ``/metrics`` (the one endpoint Prometheus already scrapes and
that runs all the time; a flow run lives for seconds and has no endpoint to scrape). A
collector reads the ``scaling_decisions`` table when scraped, cached for ``ttl_s`` so a
scrape storm costs one query; a store that cannot be read exports nothing rather than a
stale or zero value (an absent metric makes KEDA keep the current scale, a zero would
scale the fleet away).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from models import ScalingDecision

log = logging.getLogger(__name__)


def latest_decisions(engine: Engine) -> dict[str, int]:
    """Each model's latest desired replica count."""
    newest = (select(ScalingDecision.model, func.max(ScalingDecision.id).label("id"))
              .group_by(ScalingDecision.model).subquery())
    with engine.connect() as conn:
        rows = conn.execute(
            select(ScalingDecision.model, ScalingDecision.desired_replicas)
            .join(newest, ScalingDecision.id == newest.c.id)).all()
    return {model: desired for model, desired in rows}


class DesiredReplicasCollector(Collector):
    def __init__(self, engine: Engine, *, ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.clock = clock
        self._cached: dict[str, int] | None = None
        self._read_at = -float("inf")

    def _values(self) -> dict[str, int] | None:
        if self.clock() - self._read_at >= self.ttl_s:
            try:
                self._cached = latest_decisions(self.engine)
            except SQLAlchemyError as exc:
                log.warning("desired replicas unavailable: %s", exc)
                self._cached = None
            self._read_at = self.clock()
        return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("optengine_desired_replicas",
                                   "Workers the autoscaling policy wants per model",
                                   labels=["model"])
        for model, desired in sorted((self._values() or {}).items()):
            family.add_metric([model], desired)
        yield family

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # no query at registration time
