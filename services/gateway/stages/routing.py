"""Routing stage: pick the model (``services.routing``), hold the budget, fall back.

For a routed request (a virtual name or a configured model) it asks the policy for a
model, reserves the request's maximum cost on the tenant's and key's budgets (429
``budget_exceeded`` when that would pass a limit), sets the model and its upstream on
the context and calls the rest of the pipeline (token optimisation for that model, then
dispatch, which sends to the worker pool or the hosted API), and settles the budget with
the real cost when the answer ends. An upstream failure before the answer starts moves
the request to the next model of the same or a higher tier. Each attempt (fallback,
cascade) calls the rest of the pipeline again, so each is optimised for its own model.
The chosen model and the reason go into ``X-Route-Model`` / ``X-Route-Reason`` and the
request's log row. Non-streaming ``auto`` requests routed to the cheap tier may be
cascaded (``CascadeRunner``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from services.background import cancel_and_wait, now_and_every
from services.costs import PriceCatalog, UnknownModelPrice
from services.errors import (
    EngineError,
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamTimeout,
    clipped,
)
from services.execution import WorkerPool
from services.gateway.pipeline import Next, Reply, RequestContext
from services.gateway.stages.cascade import CascadeRunner, ServeFn
from services.protocol import Usage
from services.routing.budgets import BudgetLedger, Reservation, Scope
from services.routing.config import ModelConfig, RoutingConfig
from services.routing.judge import AnswerJudge
from services.routing.novelty import NoveltyDetector
from services.routing.policy import Route, RouteRequest, RoutingPolicy
from services.routing.router import SHIPPED_MODEL, ComplexityRouter
from services.routing.text import estimate_tokens, prompt_text
from services.settings import Settings
from services.tokens import PromptCounter, generations

log = logging.getLogger(__name__)

MAX_LATENCY_HEADER = "x-max-latency-ms"


class RoutingStage:
    name = "routing"

    def __init__(
        self,
        policy: RoutingPolicy,
        ledger: BudgetLedger,
        catalog: PriceCatalog,
        *,
        cascade: CascadeRunner | None = None,
        default_max_tokens: int = 1024,
        counter: PromptCounter | None = None,
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self._catalog = catalog
        self._counter = counter or PromptCounter()
        self.cascade = cascade
        self._default_max_tokens = default_max_tokens
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

    async def aclose(self) -> None:
        await cancel_and_wait(self._refresh)
        await self.ledger.aclose()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        scopes = self.ledger.scopes(ctx.principal.tenant, ctx.principal.key_id)
        if not self.policy.routes(ctx.model):  # a model routing does not know: budget only
            if not scopes:
                return await call_next(ctx)
            return await self._serve_with_budget(ctx, ctx.model, scopes, lambda: call_next(ctx))
        downgrade = False
        level = self.ledger.downgrade_at(scopes)
        if level is not None:
            downgrade = await self.ledger.fraction_spent(scopes) >= level
        max_latency = _max_latency(ctx)
        text = prompt_text(ctx.request_dict, ctx.endpoint)
        route = self.policy.choose(RouteRequest(
            model=ctx.model, tenant=ctx.principal.tenant, text=text,
            prompt_tokens=estimate_tokens(text), max_tokens=_max_tokens(ctx.request_dict),
            max_latency_ms=max_latency, downgrade=downgrade,
            cascade=self.cascade is not None and not ctx.stream,
        ))

        async def serve(ctx: RequestContext, model: ModelConfig) -> Reply:
            return await self._serve_with_budget(
                ctx, model.priced_as, scopes, lambda: call_next(ctx)
            )

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

    async def _serve_with_budget(
        self, ctx: RequestContext, priced_as: str, scopes: Sequence[Scope],
        call: Callable[[], Awaitable[Reply]],
    ) -> Reply:
        """Reserve the request's most expensive outcome, call, settle with the real cost.

        The real cost is the upstream's usage. Without one the reservation stands when
        the upstream may have generated (the client left, a timeout, a stream cut
        short) and is released when it answered with an error or was never reached."""
        reservation = None
        if scopes:
            reservation = await self.ledger.reserve(scopes, await self._max_cost(ctx, priced_as))
        try:
            reply = await call()
        except EngineError as exc:
            if reservation is not None:
                kept = isinstance(exc, UpstreamTimeout) and ctx.upstream_started_at is not None
                await self.ledger.settle(reservation, reservation.amount if kept else None)
            raise
        except BaseException:
            if reservation is not None:
                await self.ledger.settle(reservation, self._spent(priced_as, ctx, reservation))
            raise
        if reservation is None:
            return reply
        if reply.chunks is not None:
            return Reply(chunks=self._settle_after(ctx, priced_as, reply.chunks, reservation),
                         status_code=reply.status_code)
        await self.ledger.settle(reservation, self._spent(priced_as, ctx, reservation))
        return reply

    async def _max_cost(self, ctx: RequestContext, priced_as: str) -> float:
        """The most the request can cost on the serving model: its prompt in that model's
        tokens (chat template included) and ``max_tokens`` for every sequence it asks
        for. A request without ``max_tokens`` is capped at ``default_max_tokens``
        upstream, so the reservation holds."""
        request = ctx.request_dict
        prompt = await self._counter.count(ctx.model, ctx.upstream, ctx.endpoint, request)
        most = _max_tokens(request)
        if most is None:
            most = self._default_max_tokens
            ctx.max_tokens_cap = most
        return self._cost(priced_as, prompt.tokens, most * generations(ctx.endpoint, request))

    def _spent(self, priced_as: str, ctx: RequestContext, reservation: Reservation) -> float:
        """The real cost when the upstream reported usage, else the reservation."""
        cost = self._usage_cost(priced_as, ctx.usage)
        return reservation.amount if cost is None else cost

    async def _settle_after(
        self, ctx: RequestContext, priced_as: str, chunks: AsyncIterator[bytes],
        reservation: Reservation,
    ) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await self.ledger.settle(reservation, self._spent(priced_as, ctx, reservation))

    def _cost(self, priced_as: str, prompt_tokens: int, completion_tokens: int,
              cached_tokens: int = 0, cache_write_tokens: int = 0) -> float:
        """USD at the model's price; 0 for a model with no price yet (a vLLM model before
        its workers are discovered), which then spends nothing against budgets."""
        try:
            return self._catalog.cost(priced_as, prompt_tokens, completion_tokens, cached_tokens,
                                      cache_write_tokens)
        except UnknownModelPrice:
            return 0.0

    def _usage_cost(self, priced_as: str, usage: Usage | None) -> float | None:
        if usage is None:
            return None
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        return self._cost(priced_as, usage.prompt_tokens, usage.completion_tokens, cached, written)


def _max_tokens(request: Mapping[str, Any]) -> int | None:
    value = request.get("max_completion_tokens") or request.get("max_tokens")
    return int(value) if isinstance(value, int) and value > 0 else None


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
) -> RoutingStage | None:
    """The routing stage of ``settings.routing``, or None when routing is not configured.

    ``record`` logs a request context (the cascade's cheap attempts); ``counter`` counts
    prompts in the serving model's tokens for budget reservations. Raises
    ``RoutingConfigError`` (the gateway does not start) for a malformed config.
    """
    if not settings.routing:
        return None
    config = RoutingConfig.parse(settings.routing, catalog)
    router = ComplexityRouter.load(config.router_model or SHIPPED_MODEL)
    judge = AnswerJudge.load() if config.cascade.enabled else None

    def available(model: ModelConfig) -> bool:
        return model.upstream != "vllm" or model.wire_name in pool.models()

    stage = RoutingStage(
        RoutingPolicy(config, router, available, judge=judge,
                      novelty=NoveltyDetector.load() if config.defer_novel else None),
        BudgetLedger(config.budgets, redis_url=settings.redis_url,
                     timeout_s=settings.budget_redis_timeout_s,
                     retry_after_s=settings.budget_unavailable_retry_after_s),
        catalog,
        default_max_tokens=config.default_max_tokens,
        counter=counter,
    )
    if config.cascade.enabled:
        stage.cascade = CascadeRunner(
            config, config.cascade, apply=stage.apply,
            serve_with_fallback=stage.serve_with_fallback, record=record, judge=judge,
        )
    return stage
