"""Run the app under uvicorn with a graceful SIGTERM drain (one process: the batcher is per process;
scale out with replicas).

On the first SIGTERM the app turns unready (new requests and /readyz get 503, so a load balancer stops
sending) while in-flight requests finish; uvicorn stops once none are left or after `drain_seconds`.
A second SIGTERM, or SIGINT (Ctrl-C), falls back to uvicorn's own shutdown.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.backend import BackendLoadError, OnnxBackend, ProviderFallback
from service.bundle import BundleError, load_bundle
from service.model import choose_precision
from service.providers import ProviderUnavailable, resolve_providers
from service.settings import ServiceSettings
from service.state import ServiceState

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServiceState, drain_seconds: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_seconds = drain_seconds
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.drain_seconds
            self.state.begin_drain()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.state.inflight == 0:
                log.info("drained: no request in flight, shutting down")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning("drain timeout: %d request(s) in flight, shutting down", self.state.inflight)
                self.should_exit = True
        return await super().on_tick(counter)


def preflight(settings: ServiceSettings) -> None:
    """Fail fast before serving: raise `service.bundle.BundleError` if the configured bundle is unusable,
    `service.providers.ProviderUnavailable` if the execution provider asked for cannot run here.

    It verifies the bundle (format version, every sha256) the way the app will and checks it has the
    precision asked for, so a process that cannot serve exits with the reason (a crash-looping pod
    shows it) instead of answering 503 with the reason in a log line. `--provider cuda` without
    onnxruntime-gpu is refused before anything else; with it, the graph is opened once here, because
    only a session tells whether CUDA really starts (onnxruntime falls back to CPU when it does not).
    No bundle configured is fine: the app starts unready until a reload.
    """
    providers = resolve_providers(settings.provider)
    if settings.bundle is None:
        return
    bundle = load_bundle(settings.bundle)
    graph = bundle.model_path(choose_precision(bundle, settings.precision, providers.device))
    if providers.strict:
        try:
            OnnxBackend(graph, bundle.manifest.input_names, 1, providers)
        except ProviderFallback as exc:
            raise ProviderUnavailable(str(exc)) from exc
        except BackendLoadError as exc:
            raise BundleError(str(exc)) from exc


def build_server(settings: ServiceSettings, app: FastAPI | None = None) -> DrainingServer:
    app = app or create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        lifespan="on",
    )
    return DrainingServer(config, app.state.service, settings.drain_seconds)


def serve(settings: ServiceSettings) -> None:
    """Blocking: configure logging and run until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    build_server(settings).run()
