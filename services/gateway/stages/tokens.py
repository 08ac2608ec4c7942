"""Token optimisation in the request path: two small stages around the cache.

``TokenPolicyStage`` runs first: it resolves the request's policy (header
``X-Token-Optimization`` over the tenant's setting over the default) so a bad value is
a 400 even for a request the cache would have answered. ``TokenOptimizationStage`` runs
after the cache lookup (the cache key is the request as the client sent it) and routing
(it needs the serving model) and before dispatch, for vLLM and hosted models alike, once
per attempt (fallback, cascade): it rewrites a copy of the request for the serving
model's tokenizer and leaves the client's request untouched; ``off`` sends the request
byte for byte as received.

Cacheable prefixes stay as written: a request whose leading system/developer messages
are a prefix the ``token_optimization`` flow marked cacheable (``cacheable_prefixes``,
re-read every ``token_marked_prefixes_refresh_s``) sends them upstream untouched under
every policy. The upstream caches that prefix (vLLM's prefix cache, warmed when a worker
joins; a hosted provider's prompt cache), so rewriting it would save little, and it
would lose the cache hit for every request: query-aware extraction makes each request's
prefix different. The rest of the request is optimised as usual.

Counts: the optimiser measures every stage with tiktoken (the model's own encoding for
OpenAI-family models, ``cl100k_base`` as an estimate for others); the recorded before
and after counts come from the serving vLLM worker's ``/tokenize`` when it answers, so
``X-Tokens-Saved`` and ``request_log`` are in the model's own tokens.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import Any

from services.background import cancel_and_wait, now_and_every
from services.caching.prefix import cacheable_prefix_hash, leading_instructions
from services.gateway.pipeline import Next, Reply, RequestContext
from services.tokens import HEADER, OFF, Policy, TokenOptimizer, WorkerCount, counter_for_model

_THREAD_ABOVE_CHARS = 20_000  # bigger prompts are optimised off the event loop


class TokenPolicyStage:
    name = "token_policy"

    def __init__(self, default: str = "off", tenants: Mapping[str, str] | None = None
                 ) -> None:
        self._default = Policy.parse(default, param="token_optimization_default")
        self._tenants = {t: Policy.parse(p, param=f"token_optimization_tenants.{t}")
                         for t, p in (tenants or {}).items()}

    def resolve(self, ctx: RequestContext) -> Policy:
        header = ctx.request_headers.get(HEADER)
        if header is not None:
            return Policy.parse(header)
        return self._tenants.get(ctx.principal.tenant, self._default)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        ctx.token_policy = self.resolve(ctx)
        return await call_next(ctx)


class TokenOptimizationStage:
    name = "tokens"

    def __init__(self, optimizer: TokenOptimizer, worker_count: WorkerCount | None = None
                 ) -> None:
        self._optimizer = optimizer
        self._worker_count = worker_count
        self._counters: dict[str, Callable[[str], int]] = {}
        self.marked_prefixes: frozenset[str] = frozenset()
        self._refresh: asyncio.Task[None] | None = None

    async def start(self, load_marked: Callable[[], frozenset[str]], refresh_s: float
                    ) -> None:
        """Follow the prefixes the ``token_optimization`` flow marks cacheable: a request
        that opens with one sends it upstream as written, whatever the policy."""

        def refresh() -> None:
            self.marked_prefixes = load_marked()

        self._refresh = await now_and_every(refresh_s, refresh, name="marked-prefixes",
                                            failure="could not read cacheable_prefixes")

    async def aclose(self) -> None:
        await cancel_and_wait(self._refresh)

    def kept_leading(self, ctx: RequestContext) -> int:
        """How many leading messages are a marked cacheable prefix (0: none)."""
        if not self.marked_prefixes or ctx.endpoint != "chat.completions":
            return 0
        lead = leading_instructions(ctx.request_dict.get("messages"))
        return len(lead) if lead and cacheable_prefix_hash(lead) in self.marked_prefixes else 0

    async def counter(self, model: str) -> Callable[[str], int]:
        """The model's counter; the first one loads a vocabulary (~0.5 s), off the loop."""
        count = self._counters.get(model)
        if count is None:
            count, _exact = await asyncio.to_thread(counter_for_model, model)
            if len(self._counters) > 1024:  # model names come from clients
                self._counters.clear()
            self._counters[model] = count
        return count

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        policy = ctx.token_policy or OFF
        if policy.mode == "off":
            return await call_next(ctx)
        count = await self.counter(ctx.model)
        request = ctx.request_dict
        optimize = functools.partial(self._optimizer.optimize, ctx.endpoint, request, policy,
                                     count, keep_leading=self.kept_leading(ctx))
        if _size(request) > _THREAD_ABOVE_CHARS:
            result = await asyncio.to_thread(optimize)
        else:
            result = optimize()
        before, after = result.tokens_before, result.tokens_after
        # set on every attempt: a fallback or escalation must not send an earlier
        # attempt's rewrite (made for another model, or with the cascade's extras)
        ctx.upstream_request = result.request if result.saved > 0 else None
        if result.saved > 0:
            before, after = await self._model_counts(ctx, result.request, before, after)
        else:
            after = before
        ctx.prompt_tokens_before_optimization = before
        ctx.prompt_tokens_after_optimization = after
        ctx.token_stages = {s.stage: s.saved for s in result.stages if s.saved}
        ctx.response_headers["x-tokens-saved"] = str(max(0, before - after))
        ctx.response_headers["x-token-optimization"] = str(policy)
        return await call_next(ctx)

    async def _model_counts(self, ctx: RequestContext, optimized: dict[str, Any],
                            before: int, after: int) -> tuple[int, int]:
        """The serving vLLM model's own counts when its worker tells them, else the
        estimate (hosted models: tiktoken)."""
        if self._worker_count is None or ctx.upstream != "vllm":
            return before, after
        exact = await asyncio.gather(
            self._worker_count(ctx.model, ctx.endpoint, ctx.request_dict),
            self._worker_count(ctx.model, ctx.endpoint, optimized),
        )
        if exact[0] is None or exact[1] is None:
            return before, after
        return exact[0], exact[1]


def _size(request: dict[str, Any]) -> int:
    messages = request.get("messages")
    if isinstance(messages, list):
        return sum(len(str(m.get("content") or "")) for m in messages)
    return len(str(request.get("prompt") or ""))
