"""Sending a routed request to a hosted API (``services.execution.hosted``); called by
the dispatch stage for requests routing gave to an ``openai`` or ``anthropic`` model.

Fills the request context as the dispatch stage does for vLLM workers: timings, first
token, usage (always asked for in streams, dropped again when the client did not ask),
and a failure mid-stream ends the client's stream with an OpenAI error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import orjson

from services.errors import EngineError
from services.execution.client import UpstreamClient
from services.execution.hosted import AnthropicAPI, OpenAIAPI
from services.gateway.pipeline import Reply, RequestContext
from services.protocol import Usage
from services.settings import Settings

_PATHS = {"chat.completions": "/v1/chat/completions", "completions": "/v1/completions"}


class HostedAPI(Protocol):
    url: str

    async def complete(self, path: str, body: dict[str, Any]) -> bytes: ...

    def stream(
        self, path: str, body: dict[str, Any]
    ) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]: ...


class HostedBackend:
    def __init__(self, api: HostedAPI) -> None:
        self._api = api
        self.url = api.url

    async def complete(self, ctx: RequestContext) -> Reply:
        """Send ``ctx.upstream_body()`` (the optimised request when there is one)."""
        path = _PATHS[ctx.endpoint]
        body = ctx.upstream_body()
        ctx.worker = self.url
        ctx.upstream_started_at = time.perf_counter()
        if not ctx.stream:
            try:
                raw = await self._api.complete(path, body)
            finally:
                ctx.upstream_finished_at = time.perf_counter()
            usage = orjson.loads(raw).get("usage")
            ctx.usage = Usage.model_validate(usage) if usage else None
            return Reply(body=raw)
        opened = self._api.stream(path, body)
        events = await opened.__aenter__()
        return Reply(chunks=self._relay(ctx, opened, events))

    async def _relay(
        self, ctx: RequestContext, opened: AbstractAsyncContextManager[Any],
        events: AsyncIterator[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        wants_usage = ctx.request.wants_usage_in_stream
        done = False
        try:
            async for event in events:
                choices = event.get("choices") or []
                if ctx.first_token_at is None and any(
                    (c.get("delta") or {}).get("content") or c.get("text") for c in choices
                ):
                    ctx.first_token_at = time.perf_counter()
                if event.get("usage"):
                    ctx.usage = Usage.model_validate(event["usage"])
                    if not choices and not wants_usage:
                        continue
                yield orjson.dumps(event)
            done = True
        except EngineError as exc:
            ctx.status_code, ctx.error_type = exc.status_code, exc.error_type
            done = True
            yield orjson.dumps(exc.body())
        finally:
            ctx.upstream_finished_at = time.perf_counter()
            if not done and ctx.error_type is None:
                ctx.status_code, ctx.error_type = 499, "client_closed"
            await opened.__aexit__(None, None, None)


def hosted_backends(
    settings: Settings, client: UpstreamClient, *, default_max_tokens: int
) -> dict[str, HostedBackend]:
    """A backend per hosted provider whose API key is configured."""
    backends: dict[str, HostedBackend] = {}
    if settings.openai_api_key.get_secret_value():
        backends["openai"] = HostedBackend(OpenAIAPI(
            client, settings.openai_base_url, settings.openai_api_key.get_secret_value()
        ))
    if settings.anthropic_api_key.get_secret_value():
        backends["anthropic"] = HostedBackend(AnthropicAPI(
            client, settings.anthropic_base_url, settings.anthropic_api_key.get_secret_value(),
            default_max_tokens=default_max_tokens,
        ))
    return backends

