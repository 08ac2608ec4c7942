"""Admin API: start a flow's deployment run on the Prefect server and follow it.

``POST /admin/flows/{name}/runs`` creates a run of the flow's deployment with the
parameters given (over the deployment's defaults) and answers with the run's id at
once; a worker of the deployment's work pool runs it. ``GET /admin/flows/runs/{id}``
reads its state. A flow with no deployment is a 404, a Prefect server that is down or
not configured a 503 that says which server and what to do.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from services.gateway.deps import ServicesDep
from services.gateway.routes.admin import require_admin

router = APIRouter(prefix="/admin/flows", dependencies=[Depends(require_admin)])


class FlowRunIn(BaseModel):
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="flow parameters over the deployment's defaults"
    )
    deployment: str | None = Field(
        default=None, max_length=256,
        description="which of the flow's deployments (default: its only or first one)",
    )


@router.post("/{name}/runs", status_code=201)
async def start_flow_run(name: str, services: ServicesDep,
                         body: FlowRunIn | None = None) -> dict[str, Any]:
    body = body or FlowRunIn()
    run = await asyncio.to_thread(services.flow_runs.start, name, body.parameters,
                                  body.deployment)
    return run.summary()


@router.get("/runs/{run_id}")
async def get_flow_run(run_id: UUID, services: ServicesDep) -> dict[str, Any]:
    run = await asyncio.to_thread(services.flow_runs.get, str(run_id))
    return run.summary()
