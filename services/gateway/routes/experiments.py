"""Admin API of experiments: config versions, experiments, manual promote / pause /
abort, the audit log and an on-demand analysis (what the ``experiments`` flow does
every minute). Changes are made as ``admin-api`` in the audit log."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from services import experiments
from services.gateway.deps import ServicesDep
from services.gateway.routes.admin import require_admin

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])
ACTOR = "admin-api"


class ConfigIn(BaseModel):
    name: str
    overrides: dict[str, Any]
    description: str | None = Field(default=None, max_length=512)


class ArmIn(BaseModel):
    name: str
    config: str
    weight: float | None = None


class Guard(BaseModel):
    metric: str
    tolerance: float = 0.0


class ExperimentIn(BaseModel):
    name: str
    arms: list[ArmIn]
    kind: Literal["ab", "canary"] = "ab"
    unit: Literal["tenant", "api_key", "header"] = "tenant"
    tenants: list[str] | None = None
    steps: list[float] | None = None
    step_seconds: float = 300.0
    min_samples: int = 200
    guardrails: list[Guard] | None = None
    alpha: float = 0.05
    start: bool = False


class ProposalIn(BaseModel):
    proposal: dict[str, Any] = Field(description="proposed settings, as optengine optimize "
                                                 "writes them")
    prefix: str = Field(min_length=1, max_length=40)
    steps: list[float] | None = None
    step_seconds: float = 300.0
    min_samples: int = 200
    start: bool = True


class ActionIn(BaseModel):
    reason: str = Field(default="", max_length=400)


@router.get("/configs")
async def list_configs(services: ServicesDep) -> list[dict[str, Any]]:
    return await asyncio.to_thread(experiments.list_configs, services.engine)


@router.post("/configs", status_code=201)
async def create_config(body: ConfigIn, services: ServicesDep) -> dict[str, Any]:
    return await asyncio.to_thread(experiments.create_config, services.engine, body.name,
                                   body.overrides, actor=ACTOR, description=body.description,
                                   worker_pools=services.settings.worker_pools)


@router.get("/experiments")
async def list_experiments(services: ServicesDep) -> list[dict[str, Any]]:
    return await asyncio.to_thread(experiments.list_experiments, services.engine)


@router.post("/experiments", status_code=201)
async def create_experiment(body: ExperimentIn, services: ServicesDep) -> dict[str, Any]:
    def create() -> dict[str, Any]:
        made = experiments.create_experiment(
            services.engine, body.name, [a.model_dump(exclude_none=True) for a in body.arms],
            actor=ACTOR, kind=body.kind, unit=body.unit, tenants=body.tenants,
            steps=body.steps, step_seconds=body.step_seconds, min_samples=body.min_samples,
            guardrails=[g.model_dump() for g in body.guardrails] if body.guardrails else None,
            alpha=body.alpha)
        if body.start:
            made = experiments.transition(services.engine, body.name, "start", actor=ACTOR)
        return made

    return await asyncio.to_thread(create)


@router.post("/experiments/proposals", status_code=201)
async def start_proposal(body: ProposalIn, services: ServicesDep) -> dict[str, Any]:
    """Proposed settings as canaries, one per part the gateway applies per request."""
    result = await asyncio.to_thread(
        experiments.start_proposal, services.engine, body.proposal, actor=ACTOR,
        prefix=body.prefix, steps=body.steps, step_seconds=body.step_seconds,
        min_samples=body.min_samples, start=body.start,
        worker_pools=services.settings.worker_pools)
    return asdict(result)


@router.get("/experiments/audit")
async def audit(services: ServicesDep, subject: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
    return await asyncio.to_thread(experiments.audit_log, services.engine, subject,
                                   max(1, min(limit, 1000)))


@router.post("/experiments/analyse")
async def analyse(services: ServicesDep) -> list[dict[str, Any]]:
    decisions = await asyncio.to_thread(experiments.run_once, services.engine)
    return [asdict(d) for d in decisions]


@router.get("/experiments/{name}")
async def show(name: str, services: ServicesDep) -> dict[str, Any]:
    return await asyncio.to_thread(experiments.describe, services.engine, name)


@router.post("/experiments/{name}/{action}")
async def act(name: str, action: Literal["start", "pause", "resume", "promote", "abort",
                                         "complete"],
              services: ServicesDep, body: ActionIn | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(experiments.transition, services.engine, name, action,
                                   actor=ACTOR, reason=body.reason if body else "")
