"""The last stage: send the request to a worker and relay its answer.

A connect failure is retried on another worker (nothing reached the first one, so the
retry cannot double-generate); any failure after that is the client's to see. Streams
always ask the worker for usage (``stream_options.include_usage``) so every request is
counted exactly; the usage chunk is dropped again when the client did not ask for it.
A worker that dies mid-stream ends the client's stream with an OpenAI error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import Any

import orjson
from pydantic import ValidationError

from services.caching.prefix import static_prefix_key
from services.errors import EngineError, UpstreamError, UpstreamUnavailable
from services.execution import UpstreamClient, WorkerPool, WorkerState
from services.gateway.pipeline import Next, Reply, RequestContext
from services.gateway.protocol import ChatCompletionResponse, CompletionResponse, Usage

_PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}
_RESPONSES = {"chat.completions": ChatCompletionResponse, "completions": CompletionResponse}


def upstream_payload(ctx: RequestContext) -> bytes:
    body = dict(ctx.upstream_request if ctx.upstream_request is not None
                else ctx.request_dict)
    body["model"] = ctx.model
    if ctx.stream:
        options = body.get("stream_options") or {}
        body["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(body)


class DispatchStage:
    name = "dispatch"

    def __init__(self, pool: WorkerPool, client: UpstreamClient, *, retries: int = 1) -> None:
        self._pool = pool
        self._client = client
        self._retries = retries

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        path = _PATHS[ctx.endpoint]
        payload = upstream_payload(ctx)
        if ctx.stream:
            return await self._stream(ctx, path, payload)
        return await self._unary(ctx, path, payload)

    def _candidates(self, ctx: RequestContext) -> Iterator[tuple[bool, WorkerState]]:
        """Workers to try in turn: (is this the last try, worker)."""
        tried: list[WorkerState] = []
        affinity = static_prefix_key(ctx.endpoint, ctx.model, ctx.request_dict)
        for attempt in range(self._retries + 1):
            worker = self._pool.choose(ctx.model, exclude=tried, affinity=affinity)
            tried.append(worker)
            yield attempt == self._retries, worker

    async def _unary(self, ctx: RequestContext, path: str, payload: bytes) -> Reply:
        for last, worker in self._candidates(ctx):
            ctx.worker = worker.url
            try:
                with self._pool.lease(worker):
                    ctx.upstream_started_at = time.perf_counter()
                    body = await self._client.post_json(worker.url, path, payload)
            except UpstreamUnavailable as exc:
                self._pool.mark_failed(worker, exc.message)
                if last:
                    raise
                continue
            finally:
                ctx.upstream_finished_at = time.perf_counter()
            try:
                response = _RESPONSES[ctx.endpoint].model_validate_json(body)
            except ValidationError as exc:
                raise UpstreamError(f"worker {worker.url} sent a malformed response") from exc
            ctx.usage = response.usage
            return Reply(body=body)
        raise AssertionError("unreachable")  # _candidates yields at least once

    async def _stream(self, ctx: RequestContext, path: str, payload: bytes) -> Reply:
        for last, worker in self._candidates(ctx):
            ctx.worker = worker.url
            resources = ExitStack()
            resources.enter_context(self._pool.lease(worker))
            opened = self._client.stream_lines(worker.url, path, payload)
            ctx.upstream_started_at = time.perf_counter()
            try:
                lines = await opened.__aenter__()
            except UpstreamUnavailable as exc:
                resources.close()
                self._pool.mark_failed(worker, exc.message)
                if last:
                    raise
                continue
            except BaseException:
                resources.close()
                raise
            return Reply(chunks=self._relay(ctx, worker, opened, lines, resources))
        raise AssertionError("unreachable")

    async def _relay(
        self,
        ctx: RequestContext,
        worker: WorkerState,
        opened: AbstractAsyncContextManager[Any],
        lines: AsyncIterator[str],
        resources: ExitStack,
    ) -> AsyncIterator[bytes]:
        wants_usage = ctx.request.wants_usage_in_stream
        done = False
        try:
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = _parse_chunk(worker, data)
                if "error" in chunk:  # the worker reported a failure in-band: pass it on
                    ctx.status_code = UpstreamError.status_code
                    ctx.error_type = UpstreamError.error_type
                    done = True
                    yield data.encode()
                    break
                choices = chunk.get("choices") or []
                if ctx.first_token_at is None and _has_output(choices):
                    ctx.first_token_at = time.perf_counter()
                usage = chunk.get("usage")
                if usage:
                    ctx.usage = Usage.model_validate(usage)
                    if not choices and not wants_usage:
                        continue
                yield data.encode()
            if not done:
                raise UpstreamError(f"worker {worker.url} ended the stream early")
        except EngineError as exc:
            ctx.status_code = exc.status_code
            ctx.error_type = exc.error_type
            self._pool.mark_failed(worker, exc.message)
            yield orjson.dumps(exc.body())
        finally:
            ctx.upstream_finished_at = time.perf_counter()
            if not done and ctx.error_type is None:
                ctx.status_code = 499  # the client went away before the end
                ctx.error_type = "client_closed"
            try:
                await opened.__aexit__(None, None, None)
            finally:
                resources.close()


def _parse_chunk(worker: WorkerState, data: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"worker {worker.url} sent a malformed stream chunk") from exc
    if not isinstance(chunk, dict):
        raise UpstreamError(f"worker {worker.url} sent a malformed stream chunk")
    return chunk


def _has_output(choices: list[dict[str, Any]]) -> bool:
    for choice in choices:
        delta = choice.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                return True
        elif choice.get("text"):
            return True
    return False
