"""One pooled async HTTP client for every OpenAI-compatible upstream.

A single ``httpx.AsyncClient`` keeps connections alive per worker, so the hot path
pays no TCP or TLS handshake. Timeouts are split: connecting must be quick (a dead
worker is detected in seconds and the request retried elsewhere), reading may be long
(a 4k-token generation on a CPU worker takes minutes), and every read of a stream is
bounded by the same read timeout so a hung worker ends the stream instead of hanging it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from services.errors import (
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    upstream_errors,
)

_JSON_HEADERS = {"content-type": "application/json"}


class UpstreamClient:
    def __init__(
        self,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 300.0,
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=read_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30,
            ),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_models(self, worker: str, *, timeout_s: float = 5.0) -> list[str]:
        """Model ids a worker serves (its ``/v1/models``); raises on any failure."""
        with upstream_errors(worker):
            response = await self._http.get(f"{worker}/v1/models", timeout=timeout_s)
        if response.status_code != 200:
            raise UpstreamError(f"worker {worker} /v1/models answered {response.status_code}")
        try:
            data = orjson.loads(response.content)["data"]
            return [str(card["id"]) for card in data]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamError(f"worker {worker} sent a malformed model list") from exc

    async def post_json(self, worker: str, path: str, payload: bytes) -> bytes:
        """POST a JSON body and return the response body of a 200 answer."""
        with upstream_errors(worker):
            response = await self._http.post(
                f"{worker}{path}", content=payload, headers=_JSON_HEADERS
            )
        if response.status_code != 200:
            raise_for_upstream_status(worker, response.status_code, response.content)
        return response.content

    @asynccontextmanager
    async def stream_lines(
        self, worker: str, path: str, payload: bytes
    ) -> AsyncIterator[AsyncIterator[str]]:
        """Open a streaming POST; yields the response's lines once the status is 200.

        Errors before the first byte (connect, non-200) are raised on entry, so the
        caller can still retry on another worker; errors while reading are raised from
        the iterator, already mapped into the engine's hierarchy.
        """
        request = self._http.build_request(
            "POST", f"{worker}{path}", content=payload, headers=_JSON_HEADERS
        )
        with upstream_errors(worker):
            response = await self._http.send(request, stream=True)
        try:
            if response.status_code != 200:
                with upstream_errors(worker):
                    body = await response.aread()
                raise_for_upstream_status(worker, response.status_code, body)
            yield _mapped_lines(worker, response)
        finally:
            await response.aclose()


async def _mapped_lines(worker: str, response: httpx.Response) -> AsyncIterator[str]:
    with upstream_errors(worker):
        async for line in response.aiter_lines():
            yield line


def raise_for_upstream_status(worker: str, status: int, body: bytes) -> None:
    """Turn an upstream error answer into the engine's error, keeping its message.

    A 4xx is the client's fault (bad parameters the worker rejected, a prompt longer
    than the model's context) and goes back as a 400/404 with the worker's message; a
    5xx is the worker's fault and becomes a 502.
    """
    message = _error_message(body) or f"HTTP {status}"
    if status == 404:
        raise ModelNotFound(f"upstream {worker}: {message}")
    if 400 <= status < 500:
        raise InvalidRequest(message)
    raise UpstreamError(f"worker {worker} answered {status}: {message}")


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
