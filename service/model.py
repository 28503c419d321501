"""A loaded, verified, canary-checked model: the unit the service swaps atomically on reload.

`load_model` does everything that can fail *before* a model may serve: verify the bundle (format
version and every sha256, in `service.bundle`), open the onnxruntime session, and run the canary:
a short, an empty and a long pair scored alone and together must give finite scores that agree within
1e-4 (a score must not depend on its batch-mates). A request captures the `LoadedModel` it was
admitted under, so a reload never changes the model of a request already in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from service.backend import Backend, BackendLoadError, OnnxBackend
from service.bundle import Bundle, BundleError, Precision, load_bundle
from service.encoding import PairEncoder, pad_batch
from service.errors import InferenceFailed

BackendFactory = Callable[[Path, Sequence[str], int], Backend]
BATCH_TOLERANCE = 1e-4
CANARY_PAIRS = [
    ("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake it hot."),
    ("", ""),
    ("Tell me about the sea. " * 40, "It is large, deep and salty. " * 40),
]


class ModelLoadError(Exception):
    """The bundle or graph was refused; the message says why (wraps BundleError / backend errors)."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    bundle: Bundle
    precision: Precision
    backend: Backend
    encoder: PairEncoder

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """(score - train mean) / train std, with the statistics stored in the manifest."""
        stats = self.bundle.manifest.score
        return (scores - stats.mean) / stats.std

    def summary(self) -> dict[str, object]:
        m = self.bundle.manifest
        return {
            "id": m.name,
            "object": "model",
            "name": m.name,
            "version": m.version,
            "precision": self.precision,
            "precisions": m.precisions,
            "sha256": self.bundle.sha256,
            "path": str(self.bundle.path),
            "base_model": m.base_model,
            "created": m.created,
            "max_length": m.max_length,
            "score": m.score.model_dump(),
            "eval": m.eval.model_dump(),
            "int8": m.int8.model_dump(),
        }


def choose_precision(bundle: Bundle, requested: Literal["auto", "fp32", "int8"]) -> Precision:
    return bundle.default_precision() if requested == "auto" else requested


def onnx_backend(path: Path, input_names: Sequence[str], threads: int) -> Backend:
    return OnnxBackend(path, input_names, threads)


def load_model(
    path: Path,
    precision: Literal["auto", "fp32", "int8"],
    threads: int,
    backend_factory: BackendFactory = onnx_backend,
) -> LoadedModel:
    """Verify, open and canary-check a bundle (blocking: call it off the event loop)."""
    try:
        bundle = load_bundle(path)
        chosen = choose_precision(bundle, precision)
        graph = bundle.model_path(chosen)
        encoder = bundle.encoder()
        backend = backend_factory(graph, bundle.manifest.input_names, threads)
    except (BundleError, BackendLoadError, OSError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc
    model = LoadedModel(bundle, chosen, backend, encoder)
    run_canary(model)
    return model


def run_canary(model: LoadedModel) -> None:
    """Score the canary pairs alone and together; raise ModelLoadError if anything is off."""
    questions = [q for q, _ in CANARY_PAIRS]
    answers = [a for _, a in CANARY_PAIRS]
    encoded = model.encoder.encode(questions, answers)
    try:
        model.backend.health()
        together = model.backend.score(pad_batch(encoded, model.encoder.pad_token_id))
        alone = np.array(
            [model.backend.score(pad_batch([e], model.encoder.pad_token_id))[0] for e in encoded]
        )
    except InferenceFailed as exc:
        raise ModelLoadError(f"canary forward pass failed: {exc.message}") from exc
    gap = float(np.max(np.abs(together - alone)))
    if gap > BATCH_TOLERANCE:
        raise ModelLoadError(
            f"canary: a pair scores differently alone and in a batch (max gap {gap:.2e} > "
            f"{BATCH_TOLERANCE:.0e}); the graph is not batch-independent, rewards would not be reproducible"
        )
