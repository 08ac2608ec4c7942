"""The cascade (FrugalGPT): ask the cheap tier first, escalate when its answer is weak.

Used by the routing stage for non-streaming ``auto`` requests the router sent to the
cheap tier (streams cannot take an answer back once it is sent: they use the router
alone). The cheap call asks for token logprobs (dropped again from the answer when the
client did not ask for them) and, with self-consistency configured and a sampled
request, for extra samples. Its answer is scored (``services.routing.cascade``); below
the threshold the request goes to the strong tier, and the cheap attempt gets its own
``request_log`` row (its cost was real). A cascade is never started when the caller's
latency limit (``X-Max-Latency-Ms``) cannot hold both calls' SLOs, and never escalated
once the time left cannot hold the strong call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from services.errors import ModelNotFound, UpstreamError
from services.gateway.pipeline import Reply, RequestContext
from services.routing.cascade import AnswerScore, score_answer
from services.routing.config import CascadeConfig, ModelConfig, RoutingConfig
from services.routing.policy import Route

Apply = Callable[[RequestContext, ModelConfig, str], None]


class ServeFn(Protocol):
    """Serve ``ctx`` on ``model`` (budget held, upstream called)."""

    async def __call__(self, ctx: RequestContext, model: ModelConfig) -> Reply: ...


class FallbackFn(Protocol):
    """Serve ``ctx`` on the route's model, falling back along the route on failure."""

    async def __call__(self, ctx: RequestContext, route: Route, serve: ServeFn) -> Reply: ...


class CascadeRunner:
    def __init__(
        self,
        config: RoutingConfig,
        settings: CascadeConfig,
        *,
        apply: Apply,
        serve_with_fallback: FallbackFn,
        record: Callable[[RequestContext], None],
    ) -> None:
        self._config = config
        self._threshold = settings.threshold
        self._samples = settings.self_consistency
        self._apply = apply
        self._fallback = serve_with_fallback
        self._record = record

    async def __call__(
        self, ctx: RequestContext, route: Route, serve: ServeFn, max_latency_ms: float | None
    ) -> Reply:
        cheap, strong = route.model, route.strong
        assert strong is not None
        if max_latency_ms is not None and _slo(cheap) + _slo(strong) > max_latency_ms:
            route.reason += "; no cascade: latency limit"
            return await self._fallback(ctx, route, serve)
        original = ctx.request
        asked = ctx.request_dict
        ctx.request = original.model_copy(update=self._cheap_extras(ctx))
        ctx.request_changed()
        self._apply(ctx, cheap, f"{route.reason}; cascade: cheap attempt")
        reply: Reply | None = None
        verdict: AnswerScore | None = None
        try:
            reply = await serve(ctx, cheap)
            verdict = _score(ctx.endpoint, reply.body or b"{}")
        except (UpstreamError, ModelNotFound):
            pass  # the cheap tier failed: escalate
        finally:
            ctx.request = original
            ctx.request_changed()
        if reply is not None and verdict is not None:
            elapsed_ms = (time.perf_counter() - ctx.received_at) * 1000
            accepted = verdict.score >= self._threshold
            late = max_latency_ms is not None and elapsed_ms + _slo(strong) > max_latency_ms
            if accepted or late:
                why = "accepted" if accepted else "kept (no time to escalate)"
                self._apply(ctx, cheap, f"{route.reason}; cascade: {why}, {verdict.describe()}")
                return Reply(body=_as_asked(reply.body or b"{}", asked),
                             status_code=reply.status_code)
            attempt = dataclasses.replace(
                # request_log ids are 36 long: the parent's id, its tail replaced
                ctx, request_id=f"{ctx.request_id[:-6]}-cheap", response_headers={},
                finished_at=ctx.upstream_finished_at,
                route_reason=f"cascade: cheap attempt escalated, {verdict.describe()}"[:256],
            )
            self._record(attempt)
        why = verdict.describe() if verdict is not None else "cheap model failed"
        escalated = Route(
            strong,
            f"{route.reason}; cascade: escalated from {cheap.name}, {why}",
            [m for m in route.fallbacks
             if m is not strong and self._config.rank(m) >= self._config.rank(strong)],
        )
        return await self._fallback(ctx, escalated, serve)

    def _cheap_extras(self, ctx: RequestContext) -> dict[str, Any]:
        extras: dict[str, Any] = {}
        if not ctx.request_dict.get("logprobs"):
            extras["logprobs"] = True if ctx.endpoint == "chat.completions" else 1
        if self._samples and (ctx.request_dict.get("temperature") or 0) > 0:
            extras["n"] = (ctx.request_dict.get("n") or 1) + self._samples
        return extras


def _slo(model: ModelConfig) -> float:
    return model.latency_slo_ms or 0.0


def _score(endpoint: str, body: bytes) -> AnswerScore:
    data = orjson.loads(body)
    choices = data.get("choices") or [{}]
    first = choices[0]
    logprobs = first.get("logprobs") or {}
    if endpoint == "chat.completions":
        text = str((first.get("message") or {}).get("content") or "")
        tokens = [t.get("logprob") for t in logprobs.get("content") or []]
        samples = [str((c.get("message") or {}).get("content") or "") for c in choices[1:]]
    else:
        text = str(first.get("text") or "")
        tokens = list(logprobs.get("token_logprobs") or [])
        samples = [str(c.get("text") or "") for c in choices[1:]]
    values = [float(v) for v in tokens if isinstance(v, int | float)]
    return score_answer(text, finish_reason=first.get("finish_reason"),
                        token_logprobs=values or None, samples=samples)


def _as_asked(body: bytes, asked: dict[str, Any]) -> bytes:
    """The cheap answer as the client asked for it: no logprobs or extra samples added."""
    data = orjson.loads(body)
    choices = data.get("choices") or []
    data["choices"] = choices[: asked.get("n") or 1]
    if not asked.get("logprobs"):
        for choice in data["choices"]:
            choice.pop("logprobs", None)
    return orjson.dumps(data)
