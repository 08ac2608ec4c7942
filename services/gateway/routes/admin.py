"""Admin API: register, drain and remove workers at run time; list firing alerts.

Registrations go to the shared ``workers`` table and to this replica's pool at once;
other replicas pick them up on their next health sync. Draining is this replica's:
it stops sending the worker new requests and answers once those in flight have
finished (or the timeout passed); registering the worker again ends the drain.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, Field

from services.alerts import open_alerts
from services.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from services.execution import deregister_worker, register_worker
from services.gateway.deps import ServicesDep


async def require_admin(
    services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    key = services.settings.admin_api_key
    if not key:
        if services.settings.auth_required:
            raise PermissionDenied("the admin API is off: set OPTENGINE_ADMIN_API_KEY")
        return
    token = (authorization or "").partition(" ")[2].strip()
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise AuthenticationFailed("admin API key required")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class WorkerIn(BaseModel):
    url: str = Field(pattern=r"^https?://", description="OpenAI-compatible base URL")


class DrainIn(WorkerIn):
    timeout_s: float | None = Field(
        default=None, gt=0, description="longest wait for requests in flight; default setting"
    )


@router.get("/workers")
async def list_workers(services: ServicesDep) -> list[dict[str, object]]:
    return [w.summary() for w in services.pool.workers]


@router.post("/workers", status_code=201)
async def add_worker(body: WorkerIn, services: ServicesDep) -> dict[str, object]:
    worker = await services.pool.register(body.url)
    await asyncio.to_thread(
        register_worker, services.sessions, worker.url, models=sorted(worker.models)
    )
    return {"url": worker.url, "healthy": worker.healthy, "models": sorted(worker.models)}


@router.delete("/workers")
async def remove_worker(url: str, services: ServicesDep) -> dict[str, bool]:
    removed = services.pool.deregister(url)
    stored = await asyncio.to_thread(deregister_worker, services.sessions, url)
    if not (removed or stored):
        raise InvalidRequest(f"no worker registered at {url}", param="url")
    return {"removed": True}


@router.post("/workers/drain")
async def drain_worker(body: DrainIn, services: ServicesDep) -> dict[str, object]:
    timeout_s = body.timeout_s or services.settings.worker_drain_timeout_s
    worker = await services.pool.drain(body.url, timeout_s=timeout_s)
    return {**worker.summary(), "drained": worker.outstanding == 0}


@router.get("/alerts")
async def list_alerts(services: ServicesDep, pending: bool = False) -> list[dict[str, object]]:
    """Alerts firing now, newest first (``?pending=true`` adds those still pending);
    the ``alerting`` flow keeps them up to date."""
    states = ("firing", "pending") if pending else ("firing",)
    return await asyncio.to_thread(open_alerts, services.engine, states=states)
