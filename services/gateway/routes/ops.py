"""Operational endpoints: liveness, readiness (workers and store), Prometheus.

Their details (worker addresses, spill sizes, every metric) are for operators: public in
dev and test, and in production only with the admin key (``ops_details_public``
decides). Without it ``/readyz`` still answers its status code and ``{"status"}``, so
load balancers need no key; ``/metrics`` is a 401.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.errors import AuthenticationFailed
from services.gateway.deps import AppServices, ServicesDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _store_ok(services_engine) -> bool:  # type: ignore[no-untyped-def]
    try:
        with services_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _details_allowed(services: AppServices, authorization: str | None) -> bool:
    if services.settings.ops_details_shown:
        return True
    key = services.settings.admin_api_key
    token = (authorization or "").partition(" ")[2].strip()
    return bool(key) and hmac.compare_digest(token.encode(), key.encode())


AuthorizationHeader = Annotated[str | None, Header()]


@router.get("/readyz", responses={503: {"description": "not ready: no healthy worker, "
                                        "the store or the telemetry writer is down"}})
async def readyz(services: ServicesDep, response: Response,
                 authorization: AuthorizationHeader = None) -> dict[str, object]:
    try:
        store_ok = await asyncio.wait_for(asyncio.to_thread(_store_ok, services.engine), 5)
    except TimeoutError:
        store_ok = False
    workers = [w.summary() for w in services.pool.workers]
    workers_ok = any(w.healthy for w in services.pool.workers)
    telemetry = services.telemetry
    # events still going to the spill file while the store answers: writes are failing
    # for a reason the ping does not see
    interval_s = services.settings.telemetry_spill_replay_interval_s
    spill_growing = telemetry.spilled_within(2 * interval_s)
    telemetry_ok = telemetry.running and not (store_ok and spill_growing)
    ready = store_ok and workers_ok and telemetry_ok
    response.status_code = 200 if ready else 503
    if not _details_allowed(services, authorization):
        return {"status": "ready" if ready else "not ready"}
    return {
        "status": "ready" if ready else "not ready",
        "store": "ok" if store_ok else "unreachable",
        "telemetry": {
            "writer": "running" if telemetry.running else "down",
            "spill_growing": spill_growing,
            "spill_bytes": telemetry.spill_bytes,
            "quarantined": telemetry.quarantined,
            "writer_restarts": telemetry.restarts,
        },
        "telemetry_spill_pending": telemetry.pending_spill,
        "workers": workers,
    }


@router.get("/metrics")
async def metrics(services: ServicesDep, authorization: AuthorizationHeader = None) -> Response:
    if not _details_allowed(services, authorization):
        raise AuthenticationFailed("/metrics needs the admin API key (Bearer)")
    m = services.metrics
    for worker in services.pool.workers:
        m.worker_outstanding.labels(worker.url).set(worker.outstanding)
        m.worker_outstanding_tokens.labels(worker.url).set(worker.outstanding_tokens)
        m.worker_healthy.labels(worker.url).set(1 if worker.healthy else 0)
        m.worker_circuit_open.labels(worker.url).set(worker.breaker.state != "closed")
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
