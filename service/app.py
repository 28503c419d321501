"""The app factory: `create_app(settings)` wires state, middlewares, routes and the error table.

    from service.app import create_app
    from service.settings import ServiceSettings
    app = create_app(ServiceSettings(bundle="bundles/rm-v1"))   # then: uvicorn.run(app)

Lifespan: start the batcher task, then load the bundle in the background (verify + canary) so
/healthz answers at once and /readyz turns 200 when the model can serve; on shutdown, drain and
stop the batcher. Every error the app meets (ours, FastAPI's validation, Starlette's 404/405) is
handled here and answered by `service.errors.error_response`, the one builder of error bodies.
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

from service import api
from service.errors import RoutingFailed, ServiceError, ValidationFailed, error_response
from service.limits import BodyLimitMiddleware
from service.metrics import ServiceMetrics
from service.middleware import RequestMetricsMiddleware
from service.model import BackendFactory
from service.settings import ServiceSettings
from service.state import ServiceState
from service.submit import CLIENT_CLOSED, ClientGone

log = logging.getLogger(__name__)


def create_app(
    settings: ServiceSettings | None = None, backend_factory: BackendFactory | None = None
) -> FastAPI:
    """Build one independent app (own metrics registry, own batcher). `backend_factory` lets tests wrap
    the onnxruntime backend (e.g. to make it slow); production uses the default (onnxruntime on the
    providers of `settings.provider`)."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics(settings.watch_window, settings.watch_min_items)
    state = ServiceState(settings, metrics, backend_factory)

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
    app.state.service = state  # read by `service.dependencies`, the routes' one way to the state
    api.register(app.router)  # on the app's own router: see `service.api.register`
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=state.metrics)
    known_paths = frozenset(p for r in app.routes if (p := getattr(r, "path", None)))
    # added last = outermost: sees every response
    app.add_middleware(RequestMetricsMiddleware, state=state, known_paths=known_paths)
    _install_error_handlers(app, state.metrics)
    return app


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Answer every error with `error_response`, counting refusals in rlhf_rejected_total{reason}."""

    def respond(error: ServiceError) -> JSONResponse:
        if error.reason is not None:
            metrics.rejected.labels(reason=error.reason).inc()
        return error_response(error)

    async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return respond(exc)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(_validation_failed(exc))

    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return respond(_from_starlette(request, exc))

    app.add_exception_handler(ServiceError, on_service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientGone, _on_client_gone)
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]


def _validation_failed(exc: RequestValidationError) -> ValidationFailed:
    """FastAPI's schema errors as one 422 message (the first five problems)."""
    problems = [
        f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()[:5]
    ]
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return ValidationFailed("invalid request: " + "; ".join(problems) + more)


def _from_starlette(request: Request, exc: HTTPException) -> ServiceError:
    """Starlette/FastAPI's own errors (404, 405, and 400 for a body that is not UTF-8 JSON) in our tree."""
    if exc.status_code == 400:  # FastAPI could not parse the body at all: malformed input, like bad JSON
        return ValidationFailed(f"invalid request body: {exc.detail} (send UTF-8 JSON)")
    return RoutingFailed(f"{exc.detail}: {request.method} {request.url.path}", exc.status_code, exc.headers)


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED)
