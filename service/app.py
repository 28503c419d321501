"""The app factory: `create_app(settings)` wires state, middlewares, routes and the error table.

    from service.app import create_app
    from service.settings import ServiceSettings
    app = create_app(ServiceSettings(bundle="bundles/rm-v1"))   # then: uvicorn.run(app)

Lifespan: start the batcher task, then load the bundle in the background (verify + canary) so
/healthz answers at once and /readyz turns 200 when the model can serve; on shutdown, drain and
stop the batcher. Errors become JSON `{"error": {"type", "message"}}` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.api import CLIENT_CLOSED, ClientGone, router
from service.errors import ServiceError, ValidationFailed, error_body, error_headers, status_of
from service.limits import BodyLimitMiddleware
from service.metrics import ServiceMetrics
from service.middleware import RequestMetricsMiddleware
from service.model import BackendFactory, onnx_backend
from service.settings import ServiceSettings
from service.state import ServiceState

log = logging.getLogger(__name__)


def create_app(
    settings: ServiceSettings | None = None, backend_factory: BackendFactory = onnx_backend
) -> FastAPI:
    """Build one independent app (own metrics registry, own batcher). `backend_factory` lets tests wrap
    the onnxruntime backend (e.g. to make it slow); production uses the default."""
    settings = settings or ServiceSettings()
    state = ServiceState(settings, ServiceMetrics(), backend_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        loader = asyncio.create_task(state.load_initial(), name="load-bundle")
        try:
            yield
        finally:
            state.begin_drain()
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            await state.batcher.close()

    app = FastAPI(
        title="RLHF reward scoring service",
        summary="Batched reward-model scores over onnxruntime",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = state
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware)  # added last = outermost: sees every response
    app.add_exception_handler(ServiceError, _on_service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _on_client_gone)
    app.add_exception_handler(HTTPException, _on_http_error)  # type: ignore[arg-type]
    return app


def error_response(request: Request, error: ServiceError) -> JSONResponse:
    """The one place a ServiceError becomes an HTTP response."""
    if error.reason is not None:
        request.app.state.service.metrics.rejected.labels(reason=error.reason).inc()
    return JSONResponse(error_body(error.kind, error.message), status_of(error), headers=error_headers(error))


async def _on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(request, exc)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()[:5]
    ]
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return error_response(request, ValidationFailed("invalid request: " + "; ".join(problems) + more))


async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette/FastAPI's own errors (404, 405, and 400 for a body that is not UTF-8 JSON) in our format."""
    if exc.status_code == 400:  # FastAPI could not parse the body at all: malformed input, like bad JSON
        return error_response(
            request, ValidationFailed(f"invalid request body: {exc.detail} (send UTF-8 JSON)")
        )
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return JSONResponse(error_body(kind, message), exc.status_code, headers=exc.headers)


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED)
