"""Per-request bookkeeping as a plain ASGI middleware (no BaseHTTPMiddleware: it would hide client
disconnects): request count/latency by route and status, in-flight count for the drain, and the
X-Model-Name / X-Model-Version headers on every response while a model is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Set

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.state import ServiceState


class RequestMetricsMiddleware:
    """`state`: the app's model, in-flight count and metrics; `known_paths`: the routes' paths, the
    only values a request refused before routing (e.g. 413 on bytes) may use as its route label, so
    random URLs cannot blow up the metric's cardinality."""

    def __init__(self, app: ASGIApp, state: ServiceState, known_paths: Set[str]) -> None:
        self.app = app
        self.state = state
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        status = 500  # if the app raises before responding, ServerErrorMiddleware answers 500
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                model = state.model
                if model is not None and "x-model-version" not in headers:
                    headers["X-Model-Name"] = model.name
                    headers["X-Model-Version"] = model.version
            await send(message)

        state.inflight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            state.inflight -= 1
            route = scope.get("route")
            label = getattr(route, "path", None) or self._known_path(scope)
            state.metrics.requests.labels(route=label, status=str(status)).inc()
            state.metrics.request_duration.labels(route=label).observe(time.perf_counter() - started)

    def _known_path(self, scope: Scope) -> str:
        """Label for a request refused before routing: its path if it is a route, else "unmatched"."""
        path = scope.get("path", "")
        return path if path in self.known_paths else "unmatched"
