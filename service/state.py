"""Process-wide state of one app: the current model, readiness, draining, and hot reload.

The current model is one attribute; a reload builds the new `LoadedModel` completely (verify + canary,
in a worker thread) and then assigns it in one step on the event loop, so a request sees either the old
model or the new one, never a mix. Requests already admitted keep the model they captured.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from service.backend import OnnxBackendFactory
from service.batcher import Batcher
from service.bundle import PrecisionChoice as PrecisionChoice  # re-exported for the routes
from service.errors import Draining, NotReady, ReloadFailed
from service.metrics import ServiceMetrics
from service.model import BackendFactory, LoadedModel, ModelLoadError, load_model
from service.providers import resolve_providers
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def resolve_bundle_path(root: Path | None, requested: str) -> Path:
    """The bundle directory `requested` names, confined under `root` (no `..`, no symlink escape)."""
    if root is None:
        raise ReloadFailed(
            "reload is disabled: set RLHF_BUNDLE_ROOT (or RLHF_BUNDLE) to confine bundle paths"
        )
    if "\x00" in requested:
        raise ReloadFailed("bundle path contains a NUL byte")
    candidate = Path(requested)
    if ".." in candidate.parts:
        raise ReloadFailed(f"bundle path {requested!r} contains '..': paths must stay under {root}")
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ReloadFailed(
            f"bundle path {requested!r} resolves to {resolved}, outside the bundle root {root}"
        )
    return resolved


class ServiceState:
    def __init__(
        self,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # none given: every bundle opens on the providers of `--provider` (ProviderUnavailable if absent)
        self.providers = resolve_providers(settings.provider)
        self.backend_factory = backend_factory or OnnxBackendFactory(self.providers)
        self.batcher = Batcher(
            metrics,
            max_queue_pairs=settings.max_queue_pairs,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_pairs=settings.max_batch_pairs,
            subbatch_tokens=settings.subbatch_tokens,
            batch_wait_s=settings.batch_wait_ms / 1000.0,
            retry_after_s=settings.retry_after_seconds,
            max_padding_ratio=settings.max_padding_ratio,
        )
        self.model: LoadedModel | None = None
        self.load_error: str | None = None if settings.bundle else "no bundle configured (set RLHF_BUNDLE)"
        self.draining = False
        self.inflight = 0  # HTTP requests being handled (the drain waits for 0)
        self._reload_lock = asyncio.Lock()

    # ---- readiness ------------------------------------------------------------------------------------
    def current_model(self) -> LoadedModel:
        """The model new requests use; raises Draining / NotReady instead of queueing doomed work."""
        if self.draining:
            raise Draining("the service is draining (shutting down); send this request to another replica")
        if self.model is None:
            raise NotReady(f"no model is loaded yet: {self.load_error or 'loading'}")
        if not self.batcher.healthy:
            raise NotReady("the batcher stopped; the process must be restarted")
        return self.model

    @property
    def ready(self) -> bool:
        return not self.draining and self.model is not None and self.batcher.healthy

    def begin_drain(self) -> None:
        if not self.draining:
            log.info("draining: refusing new requests, %d in flight", self.inflight)
        self.draining = True
        self.metrics.ready.set(0)

    # ---- loading --------------------------------------------------------------------------------------
    async def load_initial(self) -> None:
        if self.settings.bundle is None:
            log.warning("no bundle configured: not ready until POST /admin/reload")
            return
        try:
            await self._swap(self.settings.bundle, self.settings.precision)
        except ModelLoadError as exc:
            self.load_error = f"bundle {self.settings.bundle} was refused: {exc}"
            log.error("%s", self.load_error)

    async def reload(
        self, requested: str, precision: PrecisionChoice | None
    ) -> tuple[LoadedModel, LoadedModel | None]:
        """Load `requested` (confined under the bundle root) and swap it in; the old model keeps serving
        if anything fails. Returns (new, previous)."""
        if self.draining:
            raise Draining("the service is draining; reload refused")
        try:
            path = resolve_bundle_path(self.settings.reload_root(), requested)
        except ReloadFailed:
            self.metrics.reloads.labels(result="failed").inc()
            raise
        async with self._reload_lock:
            previous = self.model
            try:
                new = await self._swap(path, precision or self.settings.precision)
            except ModelLoadError as exc:
                self.metrics.reloads.labels(result="failed").inc()
                kept = f"; still serving {previous.name} {previous.version}" if previous else ""
                raise ReloadFailed(f"bundle {path} was refused: {exc}{kept}") from exc
        self.metrics.reloads.labels(result="ok").inc()
        return new, previous

    async def _swap(self, path: Path, precision: PrecisionChoice) -> LoadedModel:
        settings = self.settings
        model = await asyncio.to_thread(
            load_model,
            path,
            precision,
            settings.intra_op_threads,
            self.backend_factory,
            settings.length_correction,
            self.providers.device,
        )
        self.model = model  # the atomic swap: one assignment on the event loop
        self.load_error = None
        self.metrics.set_model(model.name, model.version, model.bundle.sha256, model.precision)
        self.metrics.set_provider(model.provider, settings.provider)
        self.metrics.ready.set(0 if self.draining else 1)
        log.info(
            "serving %s %s (%s on %s) from %s",
            model.name,
            model.version,
            model.precision,
            model.provider,
            path,
        )
        return model
