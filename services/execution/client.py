"""One pooled async HTTP client for every OpenAI-compatible upstream.

A single ``aiohttp.ClientSession`` keeps connections alive per worker, so the hot path
pays no TCP or TLS handshake. aiohttp rather than httpx: under load httpcore's pool walks
every pooled connection on every request (expiry, idle and socket checks), so the
gateway's throughput stayed flat from 1 to 64 concurrent requests; with aiohttp it scales
(4.1x the requests/s at concurrency 64, half the added latency at 1: see
docs/benchmarks.md, "Gateway overhead"). Timeouts are split: connecting must be quick (a
dead worker is detected in seconds and the request retried elsewhere), reading may be
long (a 4k-token generation on a CPU worker takes minutes), and every read of a stream is
bounded by the same read timeout, so a hung worker ends the stream instead of hanging it.

Idle pooled connections are dropped after ``keepalive_s``, which must stay below the
worker's own idle timeout (uvicorn, which vLLM runs on, closes after 5 s): otherwise the
gateway reuses a connection the worker is closing and the request fails with a
disconnect. Such a failure before any response header is still retried once on a
fresh connection, since the worker cannot have started on it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from services.errors import (
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamUnavailable,
    upstream_errors,
)

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}


class UpstreamClient:
    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 300.0,
        max_connections: int = 512,
        keepalive_s: float = 4.0,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def _http(self) -> aiohttp.ClientSession:
        # created on first use, inside the running event loop (aiohttp binds to it)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    # per upstream: workers added to the pool must not share one budget
                    limit=0, limit_per_host=self._max_connections,
                    keepalive_timeout=self._keepalive_s,
                    ttl_dns_cache=300,
                ),
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def list_models(self, worker: str, *, timeout_s: float = 5.0) -> list[str]:
        """Model ids a worker serves (its ``/v1/models``); raises on any failure."""
        content = await self.get(worker, "/v1/models", timeout_s=timeout_s)
        try:
            data = orjson.loads(content)["data"]
            return [str(card["id"]) for card in data]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamError(f"worker {worker} sent a malformed model list") from exc

    async def get(self, worker: str, path: str, *, timeout_s: float = 5.0) -> bytes:
        """The body of a 200 answer to a GET (``/v1/models``, ``/metrics``); raises on
        any failure."""
        with upstream_errors(worker):
            async with self._http.get(
                f"{worker}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                status, content = response.status, await response.read()
        if status != 200:
            raise UpstreamError(f"worker {worker} {path} answered {status}")
        return content

    async def post_json(
        self, worker: str, path: str, payload: bytes, *, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """POST a JSON body and return the response body of a 200 answer; ``headers``
        are added to the JSON content type (hosted APIs' keys and versions)."""
        response = await self._post(worker, path, payload, headers)
        try:
            with upstream_errors(worker):
                status, content = response.status, await response.read()
        finally:
            response.release()
        if status != 200:
            raise_for_upstream_status(worker, status, content)
        return content

    @asynccontextmanager
    async def stream_lines(
        self, worker: str, path: str, payload: bytes, *, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[str]]:
        """Open a streaming POST; yields the response's lines once the status is 200.

        Errors before the first byte (connect, non-200) are raised on entry, so the
        caller can still retry on another worker; errors while reading are raised from
        the iterator, already mapped into the engine's hierarchy.
        """
        response = await self._post(worker, path, payload, headers)
        try:
            if response.status != 200:
                with upstream_errors(worker):
                    body = await response.read()
                raise_for_upstream_status(worker, response.status, body)
            yield _mapped_lines(worker, response)
        finally:
            response.release()

    async def _post(
        self, worker: str, path: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """POST and return the response once its headers are in; a connection that
        turns out stale (closed by the worker while idle) is retried once."""
        all_headers = {**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS
        with upstream_errors(worker):
            try:
                return await self._http.post(
                    f"{worker}{path}", data=payload, headers=all_headers
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                log.info("worker %s dropped a pooled connection (%s); retrying once", worker,
                         type(exc).__name__)
            return await self._http.post(
                f"{worker}{path}", data=payload, headers=all_headers
            )


async def _mapped_lines(worker: str, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    with upstream_errors(worker):
        async for raw in response.content:
            yield raw.decode().rstrip("\r\n")


def raise_for_upstream_status(worker: str, status: int, body: bytes) -> None:
    """Turn an upstream error answer into the engine's error, keeping its message.

    A 4xx is the client's fault (bad parameters the worker rejected, a prompt longer
    than the model's context) and goes back as a 400/404 with the worker's message; a
    502/503 means the worker (or a proxy in front of it) cannot take requests now, which
    is safe to retry elsewhere; any other 5xx is the worker's fault and becomes a 502.
    401/403/429 say the upstream refused the gateway itself (a hosted API's key or rate
    limit): a 503 too, which routing's fallback may route around.
    """
    message = _error_message(body) or f"HTTP {status}"
    if status >= 500 or status in {401, 403, 429}:  # clients see no address: log it
        log.warning("upstream %s answered %s: %s", worker, status, message)
    if status in {401, 403, 429}:  # the upstream refused the gateway (its key, its load)
        raise UpstreamUnavailable(f"the upstream refused the gateway ({status})")
    if status == 404:
        raise ModelNotFound(f"upstream: {message}")
    if 400 <= status < 500:
        raise InvalidRequest(message)
    if status in (502, 503):
        raise UpstreamUnavailable(f"the upstream answered {status}: {message}")
    raise UpstreamError(f"the upstream answered {status}: {message}")


def _error_message(body: bytes) -> str | None:
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:2000]
        if isinstance(data.get("detail"), str):
            return data["detail"][:2000]
    return None


def parse_stream_event(source: str, data: str) -> dict[str, Any]:
    """The JSON object of one SSE ``data:`` line; anything else is the upstream's fault."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"{source} sent a malformed stream event") from exc
    if not isinstance(event, dict):
        raise UpstreamError(f"{source} sent a malformed stream event")
    return event
