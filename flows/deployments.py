"""Every flow's deployment and schedule, in one place.

``FLOWS`` names every flow; ``DEPLOYMENTS`` gives each one its deployment (name,
schedule, parameters). Two ways to run them:

- ``optengine flows serve`` serves them all from one process (a Prefect runner);
- ``optengine flows deploy`` registers them on a Prefect server from ``prefect.yaml``
  (written from this file by ``python -m flows.deployments``; a test fails when the two
  disagree or a flow has no deployment), run by a process work pool's workers.

Any deployment can also be started on demand through Prefect's API (the gateway's
``POST /admin/flows/{name}/runs``) or in this process with ``optengine flows run NAME``.
Adding a flow: one entry in ``FLOWS``, one in ``DEPLOYMENTS``, then regenerate the YAML.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flows.alerting import alerting
from flows.cache_optimization import cache_optimization
from flows.cost_management import cost_management
from flows.demand_forecasting import demand_forecasting
from flows.experiments import experiments
from flows.forecast_backtest import forecast_backtest
from flows.model_routing import model_routing
from flows.parallel_execution import parallel_execution
from flows.token_optimization import token_optimization

FLOWS: dict[str, Any] = {
    "cache_optimization": cache_optimization,
    "token_optimization": token_optimization,
    "model_routing": model_routing,
    "experiments": experiments,
    "parallel_execution": parallel_execution,
    "cost_management": cost_management,
    "demand_forecasting": demand_forecasting,
    "forecast_backtest": forecast_backtest,
    "alerting": alerting,
}

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"
WORK_POOL = "optengine-process"  # workers run flows as local processes (infra/ uses it too)


@dataclass(frozen=True)
class Deployment:
    flow: str  # a key of FLOWS (= the flow's name)
    name: str
    interval_s: int | None = None  # None (and no cron): runs only when started
    cron: str | None = None  # a UTC cron schedule instead of an interval
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    concurrency_limit: int | None = None  # runs of this deployment at once (None: any)


DEPLOYMENTS = [
    Deployment("cache_optimization", "every-5-minutes", 300,
               description="Cache hit ratios per tier against targets, purge, warm, TTLs"),
    Deployment("token_optimization", "hourly-recent-traffic", 3600,
               description="Token savings on recent prompts; marks cacheable prefixes"),
    Deployment("model_routing", "daily", 86400,
               description="Retrains the complexity router from labels and cascade outcomes"),
    Deployment("experiments", "every-minute", 60,
               description="Analyses running experiments; advances, holds or rolls back canaries"),
    # cost workflow (UTC): rollup at 5 past every hour; reports once their period closed
    Deployment("cost_management", "hourly-rollup", cron="5 * * * *",
               parameters={"mode": "hourly"},
               description="Rolls new request_log rows up into cost_rollups"),
    Deployment("cost_management", "daily-report", cron="20 0 * * *",
               parameters={"mode": "daily"},
               description="Yesterday's cost report per tenant and overall"),
    Deployment("cost_management", "weekly-summary", cron="40 0 * * 1",
               parameters={"mode": "weekly"}, description="Last week's cost summary"),
    Deployment("cost_management", "monthly-summary", cron="0 1 1 * *",
               parameters={"mode": "monthly"}, description="Last month's cost summary"),
    # metric rules every minute, anomaly rules hourly; one run at a time each, and the
    # two judge disjoint rules, so no two runs step the same alert
    Deployment("alerting", "metrics-every-minute", interval_s=60,
               parameters={"kinds": "metrics"}, concurrency_limit=1,
               description="Judges the metric alert rules; notifies state changes"),
    Deployment("alerting", "anomalies-hourly", interval_s=3600,
               parameters={"kinds": "anomalies"}, concurrency_limit=1,
               description="Judges the hourly anomaly rules (cost, requests)"),
    Deployment("parallel_execution", "on-demand",
               description="Runs one batch (POST /v1/batches starts it with batch_id)"),
    Deployment("demand_forecasting", "every-minute", 60,
               description="Forecasts demand per model, decides and actuates the worker count"),
    Deployment("forecast_backtest", "daily", 86400,
               description="Backtests the forecasters per model; picks one per model"),
]


def deployments() -> list[Any]:
    """Runner deployments for ``optengine flows serve``."""
    return [
        FLOWS[d.flow].to_deployment(name=d.name, interval=d.interval_s, cron=d.cron,
                                    parameters=d.parameters or None,
                                    description=d.description or None,
                                    concurrency_limit=d.concurrency_limit)
        for d in DEPLOYMENTS
    ]


def entrypoint(flow: Any) -> str:
    """``path/to/file.py:function`` relative to the project root, as Prefect loads it."""
    source = Path(inspect.getfile(flow.fn)).resolve().relative_to(ROOT)
    return f"{source.as_posix()}:{flow.fn.__name__}"


def prefect_yaml() -> dict[str, Any]:
    """The ``prefect.yaml`` these deployments make. No pull step: ``prefect deploy``
    run from the project root (as ``optengine flows deploy`` does) records that folder
    as the working directory of every run."""
    return {
        "name": "optengine",
        "prefect-version": "3.9.1",
        "deployments": [
            {
                "name": d.name,
                "entrypoint": entrypoint(FLOWS[d.flow]),
                "description": d.description,
                "parameters": dict(d.parameters),
                "schedules": _schedules(d),
                "work_pool": {"name": WORK_POOL},
                **({} if d.concurrency_limit is None
                   else {"concurrency_limit": d.concurrency_limit}),
            }
            for d in DEPLOYMENTS
        ],
    }


def _schedules(d: Deployment) -> list[dict[str, Any]]:
    if d.cron is not None:
        return [{"cron": d.cron, "timezone": "UTC"}]
    return [] if d.interval_s is None else [{"interval": d.interval_s}]


HEADER = ("# Written by `python -m flows.deployments` from flows/deployments.py: edit that\n"
          "# file and regenerate. `optengine flows deploy` registers these deployments.\n")


def render_prefect_yaml() -> str:
    return HEADER + yaml.safe_dump(prefect_yaml(), sort_keys=False)


if __name__ == "__main__":
    PREFECT_YAML.write_text(render_prefect_yaml())
