"""Budget stage: hold a request's budgets (``services.routing.budgets``) around its call.

Before the upstream call it reserves the request's most expensive outcome (its prompt in
the serving model's own tokens plus ``max_tokens`` for every sequence it asks for) on
every budget that applies (the tenant's, the key's: a ``key:<id>`` routing entry or the
limit stored with the key by ``optengine keys create --budget-usd``), 429
``budget_exceeded`` when that would pass a limit, and settles with the real cost when the
answer ends. The routing stage calls ``serve`` for each model it tries; without routing
the stage stands in the pipeline itself, so a key's stored limit holds either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from services.costs import PriceCatalog, UnknownModelPrice
from services.errors import EngineError, UpstreamTimeout
from services.gateway.pipeline import Next, Reply, RequestContext
from services.protocol import Usage
from services.routing.budgets import BudgetLedger, Reservation, Scope
from services.settings import Settings
from services.tokens import PromptCounter, generations


class BudgetStage:
    name = "budget"

    def __init__(self, ledger: BudgetLedger, catalog: PriceCatalog, *,
                 default_max_tokens: int = 1024, counter: PromptCounter | None = None) -> None:
        self.ledger = ledger
        self._catalog = catalog
        self._counter = counter or PromptCounter()
        self.default_max_tokens = default_max_tokens

    async def aclose(self) -> None:
        await self.ledger.aclose()

    def scopes(self, ctx: RequestContext) -> list[Scope]:
        principal = ctx.principal
        return self.ledger.scopes(principal.tenant, principal.key_id, principal.budget)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        scopes = self.scopes(ctx)
        if not scopes:
            return await call_next(ctx)
        return await self.serve(ctx, ctx.model, scopes, lambda: call_next(ctx))

    async def serve(
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
        most = max_tokens(request)
        if most is None:
            most = self.default_max_tokens
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


def max_tokens(request: Mapping[str, Any]) -> int | None:
    value = request.get("max_completion_tokens") or request.get("max_tokens")
    return int(value) if isinstance(value, int) and value > 0 else None


def build_budget_stage(settings: Settings, catalog: PriceCatalog,
                       budgets: Mapping[str, Any] | None = None, *,
                       default_max_tokens: int = 1024,
                       counter: PromptCounter | None = None) -> BudgetStage:
    """The budget stage over ``budgets`` (the routing config's) and the keys' stored
    limits, counting in ``settings.redis_url`` (in-process without one)."""
    ledger = BudgetLedger(dict(budgets or {}), redis_url=settings.redis_url,
                          timeout_s=settings.budget_redis_timeout_s,
                          retry_after_s=settings.budget_unavailable_retry_after_s)
    return BudgetStage(ledger, catalog, default_max_tokens=default_max_tokens, counter=counter)
