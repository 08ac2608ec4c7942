"""The cascade (FrugalGPT): ask the cheap tier first, escalate when its answer is weak.

Used by the routing stage for non-streaming ``auto`` requests the router sent to the
cheap tier, and for explicit ones it substituted with it (escalated to the model asked
for; streams cannot take an answer back once it is sent: they use the router alone).
The cheap call asks for token logprobs (dropped again from the answer when the
client did not ask for them) and, with self-consistency configured and a sampled
request, for extra samples. Its answer is scored: the learned judge's P(correct)
(``services.routing.judge``: the answer's own arithmetic, contradictions, format against
the prompt, length, hedging, the router's score), scaled down by what its training data
could not teach it (low token confidence, truncation, refusals:
``services.routing.cascade``). Below the threshold (the judge's, calibrated for the
route's quality target, unless the config sets one) the request goes to the strong
tier, and the cheap attempt gets its own ``request_log`` row (its cost was real). The
score and the decision are recorded on the request's row (``cascade_score``,
``cascade_decision``) for the ``model_routing`` flow to learn from. A cascade is never
started when the caller's latency limit (``X-Max-Latency-Ms``) cannot hold both calls'
SLOs, and never escalated once the time left cannot hold the strong call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from services.errors import ModelNotFound, UpstreamError
from services.gateway.pipeline import Reply, RequestContext
from services.routing.cascade import NEUTRAL_CONFIDENCE, AnswerScore, score_answer
from services.routing.config import CascadeConfig, ModelConfig, RoutingConfig
from services.routing.judge import AnswerJudge
from services.routing.policy import Route
from services.routing.text import prompt_text

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
        judge: AnswerJudge | None = None,
    ) -> None:
        self._config = config
        self._threshold = settings.threshold
        self._judge = judge
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
            verdict = self._score(ctx, route, reply.body or b"{}")
        except (UpstreamError, ModelNotFound):
            pass  # the cheap tier failed: escalate
        finally:
            ctx.request = original
            ctx.request_changed()
        if reply is not None and verdict is not None:
            elapsed_ms = (time.perf_counter() - ctx.received_at) * 1000
            accepted = verdict.score >= self.threshold(route.target)
            late = max_latency_ms is not None and elapsed_ms + _slo(strong) > max_latency_ms
            ctx.cascade_score = verdict.score
            if accepted or late:
                why = "accepted" if accepted else "kept (no time to escalate)"
                ctx.cascade_decision = "accepted" if accepted else "kept_late"
                worker, usage = ctx.worker, ctx.usage  # apply() clears what the call set
                self._apply(ctx, cheap, f"{route.reason}; cascade: {why}, {verdict.describe()}")
                ctx.worker, ctx.usage = worker, usage  # the log row counts the kept answer
                return Reply(body=_as_asked(reply.body or b"{}", asked),
                             status_code=reply.status_code)
            attempt = dataclasses.replace(
                # request_log ids are 36 long: the parent's id, its tail replaced
                ctx, request_id=f"{ctx.request_id[:-6]}-cheap", response_headers={},
                finished_at=ctx.upstream_finished_at, cascade_decision="cheap_attempt",
                route_reason=f"cascade: cheap attempt escalated, {verdict.describe()}"[:256],
            )
            self._record(attempt)
        ctx.cascade_decision = "escalated" if verdict is not None else "cheap_failed"
        why = verdict.describe() if verdict is not None else "cheap model failed"
        escalated = Route(
            strong,
            f"{route.reason}; cascade: escalated from {cheap.name}, {why}",
            [m for m in route.fallbacks
             if m is not strong and self._config.rank(m) >= self._config.rank(strong)],
        )
        return await self._fallback(ctx, escalated, serve)

    def threshold(self, target: float) -> float:
        """The configured threshold, else the judge's for ``target`` (0.5 without one)."""
        if self._threshold is not None:
            return self._threshold
        return self._judge.threshold(target) if self._judge is not None else 0.5

    def _score(self, ctx: RequestContext, route: Route, body: bytes) -> AnswerScore:
        """The heuristic score (``score_answer``); with a judge, its P(correct) scaled by
        the heuristic's doubts (1 when it has none: no logprobs or confident ones, no
        penalty)."""
        answer, finish_reason, logprobs, samples = _answer(ctx.endpoint, body)
        heuristic = score_answer(answer, finish_reason=finish_reason,
                                 token_logprobs=logprobs, samples=samples)
        if self._judge is None:
            return heuristic
        verdict = self._judge.judge(
            prompt_text(ctx.request_dict, ctx.endpoint), answer, finish_reason=finish_reason,
            token_logprobs=logprobs, samples=samples, router_p_strong=route.p_strong)
        # low token confidence counts below the neutral level; the penalties (truncation,
        # refusal, hedging, disagreeing samples) count in full
        penalties = heuristic.score / heuristic.confidence if heuristic.confidence > 0 else 0.0
        doubt = min(1.0, heuristic.confidence / NEUTRAL_CONFIDENCE) * penalties
        return AnswerScore(score=verdict.score * doubt, confidence=heuristic.confidence,
                           reasons=tuple(dict.fromkeys((*verdict.reasons, *heuristic.reasons))),
                           judged=verdict.score)

    def _cheap_extras(self, ctx: RequestContext) -> dict[str, Any]:
        extras: dict[str, Any] = {}
        if not ctx.request_dict.get("logprobs"):
            extras["logprobs"] = True if ctx.endpoint == "chat.completions" else 1
        if self._samples and (ctx.request_dict.get("temperature") or 0) > 0:
            extras["n"] = (ctx.request_dict.get("n") or 1) + self._samples
        return extras


def _slo(model: ModelConfig) -> float:
    return model.latency_slo_ms or 0.0


def _answer(endpoint: str, body: bytes
            ) -> tuple[str, str | None, list[float] | None, list[str]]:
    """(answer text, finish reason, token logprobs, extra samples) of a reply body."""
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
    return text, first.get("finish_reason"), values or None, samples


def _as_asked(body: bytes, asked: dict[str, Any]) -> bytes:
    """The cheap answer as the client asked for it: no logprobs or extra samples added."""
    data = orjson.loads(body)
    choices = data.get("choices") or []
    data["choices"] = choices[: asked.get("n") or 1]
    if not asked.get("logprobs"):
        for choice in data["choices"]:
            choice.pop("logprobs", None)
    return orjson.dumps(data)
