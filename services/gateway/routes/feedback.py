"""``POST /v1/feedback``: a rating of an answer, recorded as a routing label when it
says something about the cheap tier (``services.routing.feedback``)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request

from services.errors import NotFound
from services.gateway.deps import PrincipalDep, ServicesDep
from services.gateway.openapi import STORE_ERRORS, json_body
from services.gateway.routes.openai import parse_body, read_body
from services.routing.feedback import FeedbackRequest, FeedbackResult, record_feedback

router = APIRouter(prefix="/v1")

_BODY_LIMIT = 4 * 1024
_FLUSH_WAIT_S = 2.0  # a rating posted right after its answer: wait for the answer's log row


@router.post("/feedback", responses=STORE_ERRORS, openapi_extra=json_body(FeedbackRequest))
async def feedback(request: Request, services: ServicesDep,
                   principal: PrincipalDep) -> FeedbackResult:
    body = parse_body(FeedbackRequest, await read_body(request, _BODY_LIMIT))
    routing = services.routing.policy.config if services.routing is not None else None

    async def record() -> FeedbackResult:
        return await asyncio.to_thread(record_feedback, services.engine, routing, body,
                                       tenant=principal.tenant)

    try:
        return await record()
    except NotFound:
        # this replica may still hold the answer's event in its telemetry queue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(services.telemetry.flush(), _FLUSH_WAIT_S)
        return await record()
