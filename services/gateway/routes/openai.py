"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from services.errors import InvalidRequest, PayloadTooLarge
from services.gateway.auth import Principal
from services.gateway.deps import AppServices, PrincipalDep, ServicesDep
from services.gateway.openapi import UPSTREAM_ERRORS, json_body
from services.gateway.pipeline import Endpoint
from services.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    describe_invalid,
)

router = APIRouter(prefix="/v1")

RequestModel = TypeVar("RequestModel", bound=BaseModel)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(model: type[RequestModel], body: bytes) -> RequestModel:
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        message, param = describe_invalid(exc)
        raise InvalidRequest(message, param=param) from None


async def _serve(
    endpoint: Endpoint,
    model: type[ChatCompletionRequest] | type[CompletionRequest],
    request: Request,
    services: AppServices,
    principal: Principal,
) -> Response:
    received_at = time.perf_counter()
    body = await read_body(request, services.settings.max_body_bytes)
    parsed = parse_body(model, body)

    async def disconnected() -> None:  # the body is read: the next message is the end
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return await services.serving.handle(
        endpoint, parsed, principal, received_at=received_at, headers=request.headers,
        disconnected=disconnected,
    )


@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest),
             responses=UPSTREAM_ERRORS)
async def chat_completions(
    request: Request, services: ServicesDep, principal: PrincipalDep
) -> Response:
    return await _serve("chat.completions", ChatCompletionRequest, request, services, principal)


@router.post("/completions", openapi_extra=json_body(CompletionRequest),
             responses=UPSTREAM_ERRORS)
async def completions(request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    return await _serve("completions", CompletionRequest, request, services, principal)


@router.get("/models")
async def list_models(services: ServicesDep, _principal: PrincipalDep) -> ModelList:
    models = services.pool.models()
    if services.routing is not None:  # virtual names and configured (hosted) models
        routed = services.routing.policy.names()
        models = routed + [m for m in models if m not in routed]
    policy = services.routing.policy if services.routing is not None else None
    return ModelList(data=[
        ModelCard(id=model, description=policy.describe(model) if policy else None)
        for model in models
    ])
