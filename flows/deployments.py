"""Every flow's deployment and schedule, in one place.

``optengine flows serve`` serves them all from one process (a Prefect runner); with a
Prefect server, the same deployments can be run by work-pool workers. Any deployment
can also be started on demand through Prefect's API (``run_deployment``) or with
``optengine flows run NAME``.
"""

from __future__ import annotations

from typing import Any

from flows.cache_optimization import cache_optimization
from flows.experiments import experiments
from flows.model_routing import model_routing
from flows.parallel_execution import parallel_execution
from flows.token_optimization import token_optimization

FLOWS: dict[str, Any] = {
    "cache_optimization": cache_optimization,
    "token_optimization": token_optimization,
    "model_routing": model_routing,
    "experiments": experiments,
}


def deployments() -> list[Any]:
    return [
        cache_optimization.to_deployment(name="every-5-minutes", interval=300),
        token_optimization.to_deployment(name="hourly-recent-traffic", interval=3600),
        model_routing.to_deployment(name="daily", interval=86400),
        experiments.to_deployment(name="every-minute", interval=60),
        # no schedule: started per batch (POST /v1/batches), with parameters={"batch_id": ...}
        parallel_execution.to_deployment(name="on-demand"),
    ]
