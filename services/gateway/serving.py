"""Runs one OpenAI request through the pipeline and turns the reply into a response.

It owns the request's bookkeeping: timings, the telemetry event at the very end (after
the last byte of a stream, whatever way the stream ends), and the error record when
the pipeline raises. Routes only parse, call ``handle`` and return.

A client that hangs up before its answer is ready (``disconnected`` resolves) gets its
pipeline cancelled, which cancels the upstream call (vLLM aborts a request whose
connection closes), and is logged as status 499 ``client_closed`` with the time it
actually waited. Once a stream has started, the stream's own end does the same. A
request still running when shutdown's grace is over is cancelled and recorded as 503
``gateway_shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson
from fastapi import Response
from fastapi.responses import StreamingResponse

from services.caching import HIT_LAYERS
from services.errors import EngineError
from services.gateway.auth import Principal
from services.gateway.pipeline import Endpoint, Pipeline, Reply, RequestContext
from services.protocol import ChatCompletionRequest, CompletionRequest
from services.telemetry import RequestEvent, TelemetryWriter

log = logging.getLogger(__name__)

_SSE_DONE = b"data: [DONE]\n\n"
CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first
SHUTDOWN_CUT = 503  # recorded for a request the gateway's shutdown cancelled


class _ClientGone(Exception):
    """The client hung up before the pipeline answered."""


class OpenAIServing:
    def __init__(
        self, pipeline: Pipeline, telemetry: TelemetryWriter, *, store_prompts: bool = False
    ) -> None:
        self._pipeline = pipeline
        self._telemetry = telemetry
        self._store_prompts = store_prompts

    @property
    def stage_names(self) -> list[str]:
        return self._pipeline.names

    async def handle(
        self,
        endpoint: Endpoint,
        request: ChatCompletionRequest | CompletionRequest,
        principal: Principal,
        *,
        received_at: float,
        headers: Mapping[str, str] | None = None,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> Response:
        ctx = RequestContext(
            request_id=f"req-{os.urandom(16).hex()}",  # uuid4 costs ~3% of the CPU
            endpoint=endpoint,
            request=request,
            principal=principal,
            model_requested=request.model,
            received_at=received_at,
            request_headers=headers or {},
        )
        ctx.response_headers["x-request-id"] = ctx.request_id
        try:
            reply = await self._until_disconnected(ctx, disconnected)
        except _ClientGone:
            ctx.status_code, ctx.error_type = CLIENT_CLOSED, "client_closed"
            ctx.finished_at = time.perf_counter()
            self._record(ctx)
            return Response(status_code=CLIENT_CLOSED)  # nobody reads it
        except asyncio.CancelledError:  # shutdown cut it (past shutdown_grace_s)
            ctx.status_code, ctx.error_type = SHUTDOWN_CUT, "gateway_shutdown"
            ctx.finished_at = time.perf_counter()
            self._record(ctx)
            raise
        except EngineError as exc:
            ctx.status_code, ctx.error_type = exc.status_code, exc.error_type
            exc.headers.setdefault("x-request-id", ctx.request_id)
            self._record(ctx)
            raise
        except Exception:
            ctx.status_code, ctx.error_type = 500, "server_error"
            self._record(ctx)
            raise
        if reply.chunks is not None:
            return StreamingResponse(
                self._sse(ctx, reply.chunks),
                media_type="text/event-stream",
                headers={**ctx.response_headers, "cache-control": "no-cache"},
            )
        self._record(ctx)
        return Response(
            content=reply.body,
            status_code=reply.status_code,
            media_type="application/json",
            headers=ctx.response_headers,
        )

    async def _until_disconnected(
        self, ctx: RequestContext, disconnected: Callable[[], Awaitable[object]] | None
    ) -> Reply:
        """The pipeline's reply; cancelled, raising ``_ClientGone``, if the client hangs
        up first."""
        if disconnected is None:
            return await self._pipeline(ctx)
        work = asyncio.ensure_future(self._pipeline(ctx))
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this request itself was cancelled
            await _cancel(work, gone)
            raise
        if not work.done():
            await _cancel(work, gone)
            raise _ClientGone
        gone.cancel()
        return work.result()

    async def _sse(self, ctx: RequestContext, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield b"data: " + chunk + b"\n\n"
            yield _SSE_DONE
        finally:
            self._record(ctx)

    def _record(self, ctx: RequestContext) -> None:
        try:
            self._telemetry.submit(build_event(ctx, store_prompts=self._store_prompts))
        except Exception:  # telemetry must never fail a request
            log.exception("could not record request %s", ctx.request_id)


async def _cancel(*tasks: asyncio.Future[object]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


def build_event(ctx: RequestContext, *, store_prompts: bool) -> RequestEvent:
    finished = ctx.finished_at or time.perf_counter()
    latency_ms = (finished - ctx.received_at) * 1000
    upstream_ms = None
    if ctx.upstream_started_at is not None and ctx.upstream_finished_at is not None:
        upstream_ms = (ctx.upstream_finished_at - ctx.upstream_started_at) * 1000
    usage = ctx.usage
    ttft_ms = tpot_ms = None
    if ctx.first_token_at is not None:
        ttft_ms = (ctx.first_token_at - ctx.received_at) * 1000
        end = ctx.upstream_finished_at or finished
        if usage is not None and usage.completion_tokens > 1:
            tpot_ms = (end - ctx.first_token_at) * 1000 / (usage.completion_tokens - 1)
    prompt = _prompt_of(ctx)
    before, after = _optimization_counts(ctx)
    return RequestEvent(
        id=ctx.request_id,
        created_at=ctx.received_wall,
        tenant=ctx.principal.tenant,
        api_key_id=ctx.principal.key_id,
        endpoint=ctx.endpoint,
        stream=ctx.stream,
        model_requested=ctx.model_requested,
        model_served=ctx.model if ctx.worker or ctx.cache_layer in HIT_LAYERS else None,
        worker=ctx.worker,
        cache_layer=ctx.cache_layer,
        cache_age_s=ctx.cache_age_s,
        route_reason=ctx.route_reason,
        cascade_score=ctx.cascade_score,
        cascade_decision=ctx.cascade_decision,
        status_code=ctx.status_code,
        error_type=ctx.error_type,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        max_tokens=ctx.request_dict.get("max_tokens"),
        cached_tokens=usage.cached_tokens if usage else None,
        cache_write_tokens=usage.cache_write_tokens if usage else None,
        prompt_tokens_before_optimization=before,
        prompt_tokens_after_optimization=after,
        token_policy=str(ctx.token_policy) if ctx.token_policy is not None else None,
        token_stages=ctx.token_stages,
        ttft_ms=ttft_ms,
        tpot_ms=tpot_ms,
        latency_ms=latency_ms,
        upstream_ms=upstream_ms,
        gateway_overhead_ms=latency_ms - upstream_ms if upstream_ms is not None else None,
        prompt_hash=hashlib.sha256(prompt).hexdigest(),
        prompt_text=prompt.decode() if store_prompts else None,
        experiment_arms=ctx.experiment_arms,
    )


def _optimization_counts(ctx: RequestContext) -> tuple[int | None, int | None]:
    """Prompt tokens before and after token optimisation, anchored on the upstream's own
    count of what it was sent: the stage's counts are exact only when a vLLM worker
    counted both sides (a saving of 0 skips that call, and hosted models are counted
    with tiktoken, which leaves out the chat template). The saving stays the stage's."""
    before, after = ctx.prompt_tokens_before_optimization, ctx.prompt_tokens_after_optimization
    billed = ctx.usage.prompt_tokens if ctx.usage is not None else None
    if before is None or after is None:  # no token stage ran (off, a cache hit)
        return (billed if before is None else before), after
    if not billed:  # no usage came back: the stage's estimate is all there is
        return before, after
    return billed + (before - after), billed


def _prompt_of(ctx: RequestContext) -> bytes:
    request = ctx.request_dict
    if ctx.endpoint == "chat.completions":
        return orjson.dumps(request["messages"])
    return orjson.dumps(request["prompt"])
