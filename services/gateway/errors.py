"""HTTP side of the error hierarchy: every failure leaves as an OpenAI error body.

``services.errors`` defines the tree; these handlers are the only place that turns it
(and FastAPI's own validation errors, and anything unexpected) into responses. No stack
trace ever reaches a client; unexpected errors are logged with one.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import EngineError, error_body

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


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(500, error_body("internal server error", "server_error"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
