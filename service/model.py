"""A loaded, verified, canary-checked model: the unit the service swaps atomically on reload.

`load_model` does everything that can fail *before* a model may serve: verify the bundle (format
version and every sha256, in `service.bundle`), open the onnxruntime session, check that the graph has
exactly the outputs the manifest's `heads` promise, and run the canary: a short, an empty and a long
pair scored alone and together must give finite values in every output that agree within 1e-4 (no
output may depend on its batch-mates). A request captures the `LoadedModel` it was admitted under, so
a reload never changes the model of a request already in flight.

From graph outputs to served values (:meth:`LoadedModel.served`): the score gets the bundle's length
correction when the manifest has one and the setting leaves it on (before normalisation, so
`normalized` and the calibrated [0, 1] reward describe the corrected score); the uncertainty is served
as the graph gives it (the correction shifts every quality head by the same amount, so their spread
is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from service.backend import Backend, BackendLoadError, OnnxBackend
from service.bundle import (
    SCORE_OUTPUT,
    UNCERTAINTY_OUTPUT,
    Bundle,
    BundleError,
    LengthCorrectionInfo,
    Precision,
    PrecisionChoice,
    load_bundle,
)
from service.encoding import Encoder, pad_batch
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


@dataclass(frozen=True)
class Served:
    """What one engine run gives the requests: float64 [b] each, in batch order."""

    scores: np.ndarray  # length-corrected when the model applies a correction
    uncertainty: np.ndarray | None  # raw score units; None when the graph has no ensemble


@dataclass(frozen=True, eq=False)
class LoadedModel:
    bundle: Bundle
    precision: Precision
    backend: Backend
    encoder: Encoder
    apply_length_correction: bool = True  # the setting; only matters when the manifest has one

    @property
    def name(self) -> str:
        return self.bundle.manifest.name

    @property
    def version(self) -> str:
        return self.bundle.manifest.version

    @property
    def version_id(self) -> int:
        """A number that changes with the bundle, for logs that take numbers only (OpenRLHF's
        extra_logs): the first 24 bits of the manifest's sha256, exact even as a float32."""
        return int(self.bundle.sha256[:6], 16)

    @property
    def length_correction(self) -> LengthCorrectionInfo | None:
        """The correction applied to served scores: the manifest's, unless switched off."""
        return self.bundle.manifest.length_correction if self.apply_length_correction else None

    @property
    def has_uncertainty(self) -> bool:
        return UNCERTAINTY_OUTPUT in self.backend.output_names

    @property
    def provider(self) -> str | None:
        """The onnxruntime execution provider running the graph (`OnnxBackend.provider`); None for an
        engine that does not say (a test double)."""
        return getattr(self.backend, "provider", None)

    def served(self, outputs: dict[str, np.ndarray], answer_tokens: np.ndarray) -> Served:
        """Graph outputs of one run and each row's `EncodedPair.answer_tokens` → the served values."""
        scores = outputs[SCORE_OUTPUT]
        correction = self.length_correction
        if correction is not None:
            scores = scores - correction.slope * (answer_tokens.astype(np.float64) - correction.mean_length)
        return Served(scores, outputs.get(UNCERTAINTY_OUTPUT))

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """(score - train mean) / train std, with the statistics stored in the manifest."""
        stats = self.bundle.manifest.score
        return (scores - stats.mean) / stats.std

    def normalize_uncertainty(self, uncertainty: np.ndarray) -> np.ndarray:
        """A spread in raw score units → in units of the train-set score std (comparable across models)."""
        return uncertainty / self.bundle.manifest.score.std

    def calibrated(self, scores: np.ndarray) -> np.ndarray:
        """The reward in [0, 1]: sigmoid of the normalised score. 0.5 is a score at the train-set mean;
        one train std above it is 0.73. Monotone in the score, so it ranks answers exactly as the score
        does (tanh form: no overflow for any finite score)."""
        return 0.5 * (1.0 + np.tanh(self.normalize(scores) / 2.0))

    def summary(self) -> dict[str, object]:
        m = self.bundle.manifest
        correction = m.length_correction
        return {
            "id": m.name,
            "object": "model",
            "name": m.name,
            "version": m.version,
            "precision": self.precision,
            "precisions": m.precisions,
            "provider": self.provider,
            "sha256": self.bundle.sha256,
            "path": str(self.bundle.path),
            "base_model": m.base_model,
            "created": m.created,
            "max_length": m.max_length,
            "score": m.score.model_dump(),
            "eval": m.eval.model_dump(),
            "int8": m.int8.model_dump(),
            "outputs": list(self.backend.output_names),
            "heads": m.heads.model_dump() if m.heads else None,
            "length_correction": (
                {**correction.model_dump(), "applied": self.apply_length_correction} if correction else None
            ),
        }


def choose_precision(
    bundle: Bundle, requested: PrecisionChoice, device: Literal["cpu", "cuda"] = "cpu"
) -> Precision:
    return bundle.default_precision(device) if requested == "auto" else requested


def onnx_backend(path: Path, input_names: Sequence[str], threads: int) -> Backend:
    return OnnxBackend(path, input_names, threads)


def load_model(
    path: Path,
    precision: PrecisionChoice,
    threads: int,
    backend_factory: BackendFactory = onnx_backend,
    apply_length_correction: bool = True,
    device: Literal["cpu", "cuda"] = "cpu",
) -> LoadedModel:
    """Verify, open and canary-check a bundle (blocking: call it off the event loop). ``device``: where
    ``backend_factory`` runs the graph, which decides what precision ``auto`` picks."""
    try:
        bundle = load_bundle(path)
        chosen = choose_precision(bundle, precision, device)
        graph = bundle.model_path(chosen)
        encoder = bundle.encoder()
        backend = backend_factory(graph, bundle.manifest.input_names, threads)
    except (BundleError, BackendLoadError, OSError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc
    check_outputs(bundle, backend.output_names, graph)
    model = LoadedModel(bundle, chosen, backend, encoder, apply_length_correction)
    run_canary(model)
    return model


def check_outputs(bundle: Bundle, outputs: Sequence[str], graph: Path) -> None:
    """A manifest with `heads` must get exactly the outputs they promise; without `heads`, the graph's
    outputs are served as they are (an older bundle has `score` alone)."""
    if bundle.manifest.heads is None:
        return
    promised = bundle.manifest.output_names
    if sorted(outputs) != sorted(promised):
        raise ModelLoadError(
            f"{graph} has outputs {list(outputs)} but the manifest's heads "
            f"{bundle.manifest.heads.model_dump()} promise {promised}"
        )


def run_canary(model: LoadedModel) -> None:
    """Score the canary pairs alone and together; raise ModelLoadError if any output is off."""
    questions = [q for q, _ in CANARY_PAIRS]
    answers = [a for _, a in CANARY_PAIRS]
    encoded = model.encoder.encode(questions, answers)
    pad = model.encoder.pad_token_id
    try:
        model.backend.health()
        together = model.backend.run(pad_batch(encoded, pad))
        alone = [model.backend.run(pad_batch([e], pad)) for e in encoded]
    except InferenceFailed as exc:
        raise ModelLoadError(f"canary forward pass failed: {exc.message}") from exc
    for name in model.backend.output_names:
        single = np.array([run[name][0] for run in alone])
        gap = float(np.max(np.abs(together[name] - single)))
        if not gap <= BATCH_TOLERANCE:  # also catches NaN
            raise ModelLoadError(
                f"canary: a pair's {name} differs alone and in a batch (max gap {gap:.2e} > "
                f"{BATCH_TOLERANCE:.0e}); the graph is not batch-independent, rewards would not be "
                "reproducible"
            )
