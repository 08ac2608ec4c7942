"""Routing stage: pick the model (``services.routing``), hold the budget, fall back.

For a routed request (a virtual name or a configured model) it asks the policy for a
model, sets the model and its upstream on the context and calls the rest of the pipeline
(token optimisation for that model, then dispatch, which sends to the worker pool or the
hosted API) through the budget stage (``BudgetStage.serve``: reserve the maximum cost on
the tenant's and key's budgets, settle with the real cost). An upstream failure before
the answer starts moves the request to the next model of the same or a higher tier.
Each attempt (fallback, cascade) calls the rest of the pipeline again, so each is
optimised for its own model.
The chosen model and the reason go into ``X-Route-Model`` / ``X-Route-Reason`` and the
request's log row. Non-streaming requests routed or substituted to the cheap tier may
be cascaded (``CascadeRunner``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.background import cancel_and_wait, now_and_every
from services.costs import PriceCatalog
from services.errors import InvalidRequest, ModelNotFound, UpstreamError, clipped
from services.execution import WorkerPool
from services.gateway.pipeline import Next, Reply, RequestContext
from services.gateway.stages.budget import BudgetStage, build_budget_stage, max_tokens
from services.gateway.stages.cascade import CascadeRunner, ServeFn
from services.routing.budgets import BudgetLedger
from services.routing.config import ModelConfig, RoutingConfig
from services.routing.judge import AnswerJudge
from services.routing.novelty import NoveltyDetector
from services.routing.policy import Route, RouteRequest, RoutingPolicy
from services.routing.router import SHIPPED_MODEL, ComplexityRouter
from services.routing.text import estimate_tokens, prompt_text
from services.settings import Settings
from services.tokens import PromptCounter

log = logging.getLogger(__name__)

MAX_LATENCY_HEADER = "x-max-latency-ms"


class RoutingStage:
    name = "routing"

    def __init__(
        self,
        policy: RoutingPolicy,
        budget: BudgetStage,
        *,
        cascade: CascadeRunner | None = None,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.cascade = cascade
        self._refresh: asyncio.Task[None] | None = None

    async def start(self, load_router: Callable[[], ComplexityRouter | None] | None = None,
                    refresh_s: float = 60.0) -> None:
        """Serve the store's active router version (the shipped one until there is one),
        unless the config names a router model file."""
        if load_router is None or self.policy.config.router_model is not None:
            return

        def refresh() -> None:
            router = load_router()
            if router is not None and router.version != self.policy.router.version:
                log.info("routing with router version %s", router.version)
                self.policy.router = router

        self._refresh = await now_and_every(refresh_s, refresh, name="router-refresh",
                                            failure="could not load the active router version")

    @property
    def ledger(self) -> BudgetLedger:
        return self.budget.ledger

    async def aclose(self) -> None:
        """Stop the router refresh (the budget stage's owner closes the ledger)."""
        await cancel_and_wait(self._refresh)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        if not self.policy.routes(ctx.model):  # a model routing does not know: budget only
            return await self.budget(ctx, call_next)
        scopes = self.budget.scopes(ctx)
        downgrade = False
        level = self.ledger.downgrade_at(scopes)
        if level is not None:
            downgrade = await self.ledger.fraction_spent(scopes) >= level
        max_latency = _max_latency(ctx)
        text = prompt_text(ctx.request_dict, ctx.endpoint)
        route = self.policy.choose(RouteRequest(
            model=ctx.model, tenant=ctx.principal.tenant, text=text,
            prompt_tokens=estimate_tokens(text), max_tokens=max_tokens(ctx.request_dict),
            max_latency_ms=max_latency, downgrade=downgrade,
            cascade=self.cascade is not None and not ctx.stream,
        ))

        async def serve(ctx: RequestContext, model: ModelConfig) -> Reply:
            return await self.budget.serve(ctx, model.priced_as, scopes, lambda: call_next(ctx))

        if self.cascade is not None and route.cheap and route.strong and not ctx.stream:
            return await self.cascade(ctx, route, serve, max_latency)
        return await self.serve_with_fallback(ctx, route, serve)

    async def serve_with_fallback(
        self, ctx: RequestContext, route: Route, serve: ServeFn
    ) -> Reply:
        attempts = [route.model, *route.fallbacks]
        reason = route.reason
        for i, model in enumerate(attempts):
            self.apply(ctx, model, reason)
            try:
                return await serve(ctx, model)
            except (UpstreamError, ModelNotFound) as exc:
                if i == len(attempts) - 1:
                    raise
                reason = f"{route.reason}; fallback: {model.name} failed ({exc.error_type})"
        raise AssertionError("unreachable")  # attempts is never empty

    @staticmethod
    def apply(ctx: RequestContext, model: ModelConfig, reason: str) -> None:
        ctx.model = model.wire_name
        ctx.upstream = model.upstream
        ctx.route_reason = reason[:256]
        ctx.worker = None
        ctx.usage = None
        ctx.response_headers["x-route-model"] = model.name
        ctx.response_headers["x-route-reason"] = reason.encode("ascii", "replace").decode()


def _max_latency(ctx: RequestContext) -> float | None:
    raw = ctx.request_headers.get(MAX_LATENCY_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(
            f"X-Max-Latency-Ms must be a number of milliseconds, got {clipped(raw)}",
            param=MAX_LATENCY_HEADER,
        ) from None
    return value if value > 0 else None


def build_routing_stage(
    settings: Settings, catalog: PriceCatalog, pool: WorkerPool,
    record: Callable[[RequestContext], None], counter: PromptCounter | None = None,
) -> tuple[RoutingStage | None, BudgetStage]:
    """The routing stage of ``settings.routing`` (None when routing is not configured)
    and the budget stage it serves through (in the pipeline itself without routing).

    ``record`` logs a request context (the cascade's cheap attempts); ``counter`` counts
    prompts in the serving model's tokens for budget reservations. Raises
    ``RoutingConfigError`` (the gateway does not start) for a malformed config.
    """
    if not settings.routing:
        return None, build_budget_stage(settings, catalog, counter=counter)
    config = RoutingConfig.parse(settings.routing, catalog)
    budget = build_budget_stage(settings, catalog, config.budgets,
                                default_max_tokens=config.default_max_tokens, counter=counter)
    router = ComplexityRouter.load(config.router_model or SHIPPED_MODEL)
    judge = AnswerJudge.load() if config.cascade.enabled else None

    def available(model: ModelConfig) -> bool:
        return model.upstream != "vllm" or model.wire_name in pool.models()

    stage = RoutingStage(
        RoutingPolicy(config, router, available, judge=judge,
                      novelty=NoveltyDetector.load() if config.defer_novel else None),
        budget,
    )
    if config.cascade.enabled:
        stage.cascade = CascadeRunner(
            config, config.cascade, apply=stage.apply,
            serve_with_fallback=stage.serve_with_fallback, record=record, judge=judge,
        )
    return stage, budget
