"""Typed access to the services built in the app's lifespan (kept on ``app.state``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.batch.serving import BatchServing
from services.caching import ResponseCache
from services.caching.semantic_store import SemanticSync
from services.execution import PrefixWarmer, UpstreamClient, WorkerPool
from services.gateway.auth import KeyRing, Principal
from services.gateway.serving import OpenAIServing
from services.gateway.stages.budget import BudgetStage
from services.gateway.stages.cache import CacheStage
from services.gateway.stages.experiments import ExperimentStage
from services.gateway.stages.ratelimit import RateLimitStage
from services.gateway.stages.routing import RoutingStage
from services.gateway.stages.tokens import TokenOptimizationStage
from services.orchestration import FlowRuns
from services.settings import Settings
from services.telemetry import GatewayMetrics, TelemetryWriter


@dataclass
class AppServices:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    client: UpstreamClient
    pool: WorkerPool
    keyring: KeyRing
    metrics: GatewayMetrics
    telemetry: TelemetryWriter
    serving: OpenAIServing
    batches: BatchServing
    flow_runs: FlowRuns
    cache: ResponseCache | None = None
    cache_stage: CacheStage | None = None
    semantic_sync: SemanticSync | None = None
    routing: RoutingStage | None = None
    budget: BudgetStage | None = None  # routing's, or in the pipeline itself
    warmer: PrefixWarmer | None = None
    tokens: TokenOptimizationStage | None = None
    experiments: ExperimentStage | None = None
    rate_limit: RateLimitStage | None = None


# Dependencies are async on purpose: FastAPI runs a plain ``def`` dependency in a thread
# pool, which costs a thread hop on every request for what is an attribute lookup.


async def get_services(request: Request) -> AppServices:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[AppServices, Depends(get_services)]


async def get_principal(
    services: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return services.keyring.authenticate(authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
