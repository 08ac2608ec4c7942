"""The one exception hierarchy of the platform, and the OpenAI error body it maps to.

Capabilities raise these; the gateway turns each into an OpenAI-style JSON error with
the right status (one handler, registered with ``app.exception_handler``). Upstream
(aiohttp) failures are mapped into this tree at the boundary by ``upstream_errors()``.

    EngineError                      500 server_error
    ├── InvalidRequest               400 invalid_request_error
    │   └── PayloadTooLarge          413 invalid_request_error
    ├── AuthenticationFailed         401 authentication_error
    ├── PermissionDenied             403 permission_error
    ├── ModelNotFound                404 invalid_request_error (code model_not_found)
    ├── NotFound                     404 invalid_request_error (code not_found: a file, a batch)
    ├── Conflict                     409 invalid_request_error (code conflict: the object
    │                                    cannot serve this request, e.g. no stored prompt)
    ├── UnknownModelPrice            500 (services.costs: a model nobody priced)
    ├── RateLimited                  429 rate_limit_error (Retry-After when known)
    ├── Overloaded                   503 service_unavailable (code overloaded, Retry-After)
    ├── DependencyUnavailable        503 service_unavailable (Retry-After: a shared service
    │   │                                the answer needs is down)
    │   └── StoreUnavailable         503 (code store_unavailable: the metrics store)
    └── UpstreamError                502 upstream_error
        ├── UpstreamUnavailable      503 service_unavailable (no healthy worker, connect)
        └── UpstreamTimeout          504 timeout
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


class EngineError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


class InvalidRequest(EngineError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class AuthenticationFailed(EngineError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(EngineError):
    status_code = 403
    error_type = "permission_error"


class ModelNotFound(EngineError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class NotFound(EngineError):
    """An object (file, batch) that does not exist, or belongs to another tenant."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class Conflict(EngineError):
    """The object exists but its state cannot serve the request (a logged request with
    no stored prompt cannot become a routing label)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class RateLimited(EngineError):
    status_code = 429
    error_type = "rate_limit_error"


class Overloaded(EngineError):
    """Every worker for the model is at its in-flight cap and the queue wait ran out."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after_s)})


class DependencyUnavailable(EngineError):
    """A service the request needs (the metrics store, the budgets' Redis) is down: the
    client may retry after ``retry_after_s``; nothing was done."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after_s)})


class StoreUnavailable(DependencyUnavailable):
    default_code = "store_unavailable"


class UpstreamError(EngineError):
    status_code = 502
    error_type = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    error_type = "service_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "timeout"


def clipped(value: object, limit: int = 64) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters of it: a client's
    header or field may be huge and must not be echoed back whole."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@contextmanager
def upstream_errors(worker: str) -> Iterator[None]:
    """Map aiohttp failures talking to ``worker`` into this hierarchy.

    A failure to connect becomes ``UpstreamUnavailable`` (safe to retry elsewhere:
    nothing was sent), a read timeout ``UpstreamTimeout``, anything else on the wire
    (a worker that died mid-answer included) ``UpstreamError``.

    Messages reach clients, so they name no address: the worker and aiohttp's own
    message (which names the host) are logged instead.
    """
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        log.warning("cannot connect to worker %s: %s", worker, exc)
        raise UpstreamUnavailable(
            f"cannot connect to the upstream ({type(exc).__name__})") from exc
    except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
        log.warning("worker %s timed out: %s", worker, type(exc).__name__)
        raise UpstreamTimeout(f"the upstream timed out ({type(exc).__name__})") from exc
    except aiohttp.ClientError as exc:
        log.warning("worker %s failed: %s: %s", worker, type(exc).__name__, exc)
        raise UpstreamError(f"the upstream failed ({type(exc).__name__})") from exc
