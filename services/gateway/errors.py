"""HTTP side of the error hierarchy: every failure leaves as an OpenAI error body.

``services.errors`` defines the tree; these handlers are the only place that turns it
(and FastAPI's own validation errors, and anything unexpected) into responses. No stack
trace ever reaches a client; unexpected errors are logged with one.

The metrics store going away (SQLAlchemy's connection-level errors) is a 503
``store_unavailable`` with Retry-After on every route that needs it (files, batches,
feedback), never a 500. Unexpected errors are answered by ``UnhandledErrors``, inside
Starlette's outermost middleware: that one sends its 500 and then re-raises, and
uvicorn closes a connection whose app raised, without a ``Connection: close`` header,
so a keep-alive client's next request on it would fail.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.errors import EngineError, StoreUnavailable, error_body

log = logging.getLogger(__name__)


def _response(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers,
                    media_type="application/json")


def _count_rejection(request: Request, status: int) -> None:
    """Requests refused before the pipeline (bad body, bad key) leave no request_log row
    (there is no model or tenant to file them under), so they are counted here."""
    services = getattr(request.app.state, "services", None)
    if services is not None:
        services.metrics.rejected.labels(request.url.path, str(status)).inc()


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    if not exc.headers.get("x-request-id"):
        _count_rejection(request, exc.status_code)
    return _response(exc.status_code, exc.body(), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = first.get("msg", "invalid request")
    _count_rejection(request, 400)
    return _response(400, error_body(message, "invalid_request_error", param=param))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = "not_found" if exc.status_code == 404 else None
    return _response(
        exc.status_code, error_body(str(exc.detail), kind, code=code), dict(exc.headers or {})
    )


async def _store_error(request: Request, exc: Exception) -> Response:
    log.warning("metrics store unavailable on %s %s: %s", request.method, request.url.path,
                type(exc).__name__)
    return await _engine_error(request, StoreUnavailable(
        "the metrics store is unavailable; retry shortly", retry_after_s=5))


class UnhandledErrors:
    """An unexpected exception becomes a 500 OpenAI error body on a connection that
    stays usable; one raised after the response started (a stream) still ends it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"),
                          exc_info=exc)
            response = _response(500, error_body("internal server error", "server_error"))
            await response(scope, receive, send)


class HeaderLimit:
    """Refuses a request whose headers together pass ``max_bytes`` with a 431 that
    names the limit, not the headers (uvicorn's httptools parser has no limit of its own;
    a value is never echoed back)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                response = _response(431, error_body(
                    f"request headers of {size} bytes exceed the {self.max_bytes}-byte limit",
                    "invalid_request_error", code="headers_too_large"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for error in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
        app.add_exception_handler(error, _store_error)
    app.add_middleware(UnhandledErrors)
