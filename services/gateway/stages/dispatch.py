"""The last stage: send the request to its upstream and relay the answer.

This is the one place a request leaves the gateway: what it sends is
``ctx.upstream_body()`` (the token-optimised request when there is one). A request
routing gave to a hosted model (``ctx.upstream`` "openai" or "anthropic") goes to that
provider's adapter (``HostedBackend``); every other one to a vLLM worker of the pool.

The pool picks the worker and holds the request in its admission queue while every
worker is at its cap; this stage tells it what it needs for that: the estimated tokens
(for least-outstanding-tokens scheduling), the priority class (the tenant's, or a lower
one from ``X-Priority``) and the prefix-affinity key. A failure that means "this worker
cannot take requests" (connect error, a 502/503 answer) is retried on another worker:
nothing reached the client yet and nothing was generated, so the retry cannot double
anything. Any failure after that is the client's to see. Every outcome is reported to
the lease, which feeds the worker's circuit breaker.

With ``prefix_cache_per_tenant`` every request to a worker carries a ``cache_salt``
derived from its tenant, so vLLM shares prefix-cache blocks only within a tenant.

Streams always ask the worker for usage (``stream_options.include_usage``) so every
request is counted exactly; the usage chunk is dropped again when the client did not
ask for it. A worker that dies mid-stream ends the client's stream with an OpenAI error
event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from services.caching.prefix import prefix_cache_salt, static_prefix_key
from services.errors import EngineError, UpstreamError, UpstreamUnavailable
from services.execution import (
    DEFAULT_PRIORITY,
    Lease,
    PriorityClass,
    UpstreamClient,
    WorkerPool,
    WorkerState,
    estimate_tokens,
    parse_stream_event,
    request_priority,
)
from services.gateway.pipeline import Next, Reply, RequestContext
from services.gateway.stages.hosted import HostedBackend
from services.protocol import ChatCompletionResponse, CompletionResponse, Usage

_PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}
_RESPONSES = {"chat.completions": ChatCompletionResponse, "completions": CompletionResponse}

T = TypeVar("T")


def upstream_payload(ctx: RequestContext, salt_key: bytes | None = None) -> bytes:
    """The worker's request body; with ``salt_key``, its prefix cache is the tenant's."""
    body = ctx.upstream_body()
    if salt_key is not None:
        body["cache_salt"] = prefix_cache_salt(salt_key, ctx.principal.tenant,
                                               body.get("cache_salt"))
    return orjson.dumps(body)


def _settle(lease: Lease, exc: EngineError) -> None:
    """A 4xx is the request's fault (the worker answered fine); a 5xx is the worker's."""
    if exc.status_code >= 500:
        lease.failed(exc.message)
    else:
        lease.succeeded()


class DispatchStage:
    name = "dispatch"

    def __init__(
        self,
        pool: WorkerPool,
        client: UpstreamClient,
        *,
        retries: int = 1,
        tenant_priorities: Mapping[str, PriorityClass] | None = None,
        expected_output_tokens: int = 256,
        hosted: Mapping[str, HostedBackend] | None = None,
        prefix_salt_key: bytes | None = None,
        worker_pools: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._pool = pool
        self._worker_pools = {name: frozenset(urls) for name, urls in (worker_pools or {}).items()}
        self._salt_key = prefix_salt_key
        self._hosted = dict(hosted or {})
        self._client = client
        self._retries = retries
        self._tenant_priorities = dict(tenant_priorities or {})
        self._expected_output_tokens = expected_output_tokens

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        if ctx.upstream != "vllm":
            backend = self._hosted.get(ctx.upstream)
            if backend is None:
                raise UpstreamUnavailable(f"no {ctx.upstream} API key is configured")
            return await backend.complete(ctx)
        path = _PATHS[ctx.endpoint]
        payload = upstream_payload(ctx, self._salt_key)
        if ctx.stream:
            return await self._stream(ctx, path, payload)
        return await self._unary(ctx, path, payload)

    async def _on_some_worker(
        self, ctx: RequestContext, send: Callable[[WorkerState], Awaitable[T]]
    ) -> tuple[Lease, T]:
        """``send`` on a leased worker, retried on another one while it fails with
        ``UpstreamUnavailable``; returns the still-held lease with the result."""
        # load and prefix affinity are about what the worker gets: the rewritten request
        sent = ctx.sent_request
        tokens = estimate_tokens(sent, default_output_tokens=self._expected_output_tokens)
        priority = request_priority(
            self._tenant_priorities.get(ctx.principal.tenant, DEFAULT_PRIORITY),
            ctx.request_headers.get("x-priority"),
        )
        affinity = static_prefix_key(ctx.endpoint, ctx.model, sent)
        fenced = self._outside_pool(ctx)
        tried: list[WorkerState] = []
        failure: UpstreamUnavailable | None = None
        while True:
            try:
                lease = await self._pool.acquire(
                    ctx.model, tokens=tokens, priority=priority, exclude=[*fenced, *tried],
                    affinity=affinity,
                )
            except UpstreamUnavailable:
                if failure is not None:  # no other worker to retry on: the first error
                    raise failure from None
                raise
            tried.append(lease.worker)
            ctx.worker = lease.worker.url
            ctx.upstream_started_at = time.perf_counter()
            try:
                return lease, await send(lease.worker)
            except UpstreamUnavailable as exc:
                ctx.upstream_finished_at = time.perf_counter()
                lease.failed(exc.message)
                lease.release()
                if len(tried) > self._retries:
                    raise
                failure = exc
            except EngineError as exc:
                ctx.upstream_finished_at = time.perf_counter()
                _settle(lease, exc)
                lease.release()
                raise
            except BaseException:
                lease.release()
                raise

    def _outside_pool(self, ctx: RequestContext) -> list[WorkerState]:
        """The workers a request may not use: those outside the worker pool its
        experiment arm names (none without one)."""
        name = ctx.overrides.get("worker_pool") if ctx.overrides else None
        if name is None:
            return []
        urls = self._worker_pools.get(name)
        if urls is None:
            raise UpstreamUnavailable(f"no worker pool {name!r} is configured (settings "
                                      "worker_pools)")
        return [w for w in self._pool.workers if w.url not in urls]

    async def _unary(self, ctx: RequestContext, path: str, payload: bytes) -> Reply:
        async def send(worker: WorkerState) -> bytes:
            return await self._client.post_json(worker.url, path, payload)

        lease, body = await self._on_some_worker(ctx, send)
        ctx.upstream_finished_at = time.perf_counter()
        try:
            response = _RESPONSES[ctx.endpoint].model_validate_json(body)
        except ValidationError as exc:
            lease.failed("malformed response")
            raise UpstreamError("the worker sent a malformed response") from exc
        else:
            lease.succeeded()
        finally:
            lease.release()
        ctx.usage = response.usage
        return Reply(body=body)

    async def _stream(self, ctx: RequestContext, path: str, payload: bytes) -> Reply:
        async def send(
            worker: WorkerState,
        ) -> tuple[AbstractAsyncContextManager[Any], AsyncIterator[str]]:
            opened = self._client.stream_lines(worker.url, path, payload)
            return opened, await opened.__aenter__()

        lease, (opened, lines) = await self._on_some_worker(ctx, send)
        return Reply(chunks=self._relay(ctx, lease, opened, lines))

    async def _relay(
        self,
        ctx: RequestContext,
        lease: Lease,
        opened: AbstractAsyncContextManager[Any],
        lines: AsyncIterator[str],
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
                    lease.succeeded()
                    break
                chunk = parse_stream_event("the worker", data)
                if "error" in chunk:  # the worker reported a failure in-band: pass it on
                    ctx.status_code = UpstreamError.status_code
                    ctx.error_type = UpstreamError.error_type
                    done = True
                    lease.failed("error event in the stream")
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
                raise UpstreamError("the worker ended the stream early")
        except EngineError as exc:
            ctx.status_code = exc.status_code
            ctx.error_type = exc.error_type
            lease.failed(exc.message)
            yield orjson.dumps(exc.body())
        finally:
            ctx.upstream_finished_at = time.perf_counter()
            if not done and ctx.error_type is None:
                ctx.status_code = 499  # the client went away before the end
                ctx.error_type = "client_closed"
            try:
                await opened.__aexit__(None, None, None)
            finally:
                lease.release()


def _has_output(choices: list[dict[str, Any]]) -> bool:
    for choice in choices:
        delta = choice.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                return True
        elif choice.get("text"):
            return True
    return False
