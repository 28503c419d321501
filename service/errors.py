"""The service's error tree, and the one table that maps it to HTTP status codes.

    ServiceError
     ├── ValidationFailed     422  malformed input the schema could not catch
     ├── PayloadTooLarge      413  too many bytes, pairs, or characters in a field
     ├── Unauthorized         401  missing or wrong bearer token
     ├── Overloaded           429  queue full; carries retry_after (seconds)
     ├── NotReady             503  no model loaded yet / canary not passed
     ├── Draining             503  SIGTERM received: in-flight requests finish, new ones are refused
     ├── ReloadFailed         422  the requested bundle was refused; the old model keeps serving
     ├── InferenceFailed      500  onnxruntime failed or produced a non-finite score (never served)
     └── RoutingFailed        the framework's own refusal (404 no such route, 405 wrong method):
                              it keeps the status Starlette chose

Routes and middlewares raise these; :func:`error_response` is the one place that turns one into
an HTTP response (body ``{"error": {"type", "message"}}``, status from :data:`HTTP_STATUS`, headers).
Nothing else builds an error body or chooses a status code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from starlette.responses import JSONResponse


class ServiceError(Exception):
    """Base: `kind` is the stable machine-readable type in the error body, `reason` the metric label."""

    kind: str = "service_error"  # a class attribute; RoutingFailed sets it per instance
    reason: ClassVar[str | None] = None  # rlhf_rejected_total{reason}; None = not a rejection

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationFailed(ServiceError):
    kind = "validation_failed"
    reason = "invalid"


class PayloadTooLarge(ServiceError):
    kind = "payload_too_large"
    reason = "too_large"


class Unauthorized(ServiceError):
    kind = "unauthorized"
    reason = "unauthorized"


class Overloaded(ServiceError):
    kind = "overloaded"
    reason = "queue_full"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(ServiceError):
    kind = "not_ready"


class Draining(ServiceError):
    kind = "draining"
    reason = "draining"


class ReloadFailed(ServiceError):
    kind = "reload_failed"


class InferenceFailed(ServiceError):
    kind = "inference_failed"


class RoutingFailed(ServiceError):
    """Starlette's own HTTP error (no route, wrong method): `kind` and `status` come from it."""

    KINDS: ClassVar[dict[int, str]] = {404: "not_found", 405: "method_not_allowed"}

    def __init__(self, message: str, status: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = self.KINDS.get(status, "http_error")
        self.headers = dict(headers or {})


HTTP_STATUS: dict[type[ServiceError], int] = {
    ValidationFailed: 422,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    Overloaded: 429,
    NotReady: 503,
    Draining: 503,
    ReloadFailed: 422,
    InferenceFailed: 500,
    ServiceError: 500,
}


def status_of(error: ServiceError) -> int:
    """HTTP status of an error: the nearest class in the table (subclasses inherit their parent's)."""
    if isinstance(error, RoutingFailed):
        return error.status
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_headers(error: ServiceError) -> dict[str, str]:
    headers = dict(error.headers) if isinstance(error, RoutingFailed) else {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_body(kind: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": kind, "message": message}}


def error_response(error: ServiceError, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The HTTP response for `error`: its JSON body, its status, its headers (plus `extra_headers`)."""
    headers = {**error_headers(error), **(extra_headers or {})}
    return JSONResponse(error_body(error.kind, error.message), status_of(error), headers=headers)
