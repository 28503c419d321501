"""The inference engine behind a small protocol: `health()` and `run(batch) -> {output: float64 [b]}`.

The batcher only sees :class:`Backend`, so tests can wrap the real engine (e.g. to make it slow) and
another engine could replace onnxruntime without touching batching. :class:`OnnxBackend` is the real
one: an onnxruntime session with configurable intra-op threads, on the execution providers chosen at
start (`rlhf serve --provider`, service/providers.py; CPU unless asked). `session.run` releases the
GIL, which is why the batcher can run it in a worker thread while the event loop keeps accepting
requests. :class:`OnnxBackendFactory` is how the service opens every bundle (first load and reloads)
on those providers; `provider` names the one that really runs the graph.

One run yields every output the graph has (`score`, and `uncertainty` / `length_score` when the graph
was exported with an ensemble or a length head: service/bundle.py names them), so a spread costs no
second forward pass. A non-finite value in any output is an :class:`InferenceFailed`, never served.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from service.errors import InferenceFailed
from service.onnx_scoring import SCORE_OUTPUT, make_session, run_outputs
from service.providers import CPU_ONLY, ExecutionProviders

log = logging.getLogger(__name__)

OUTPUT_NAME = SCORE_OUTPUT
# onnxruntime's own exception classes (pybind11, they derive from Exception only)
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EPFail,
)


class BackendLoadError(Exception):
    """The graph cannot be loaded or does not have the inputs/outputs the manifest promises."""


class ProviderFallback(BackendLoadError):
    """onnxruntime opened the graph on another provider than the one asked for by name (`--provider
    cuda` on a node where CUDA cannot start)."""


class Backend(Protocol):
    input_names: list[str]
    output_names: list[str]  # `score` first, then the graph's other outputs in graph order

    def health(self) -> None:
        """Raise if the engine cannot serve (cheap; the canary is the real check)."""

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Padded int64 inputs [b, seq] -> {output name: float64 [b]} for every name in `output_names`,
        all finite, or raise InferenceFailed."""


class OnnxBackend:
    """One onnxruntime InferenceSession for one graph file, opened and run by `service.onnx_scoring`
    (the same session settings the export gate and `rlhf eval` use)."""

    def __init__(
        self,
        model_path: Path,
        input_names: Sequence[str],
        intra_op_threads: int = 0,
        providers: ExecutionProviders = CPU_ONLY,
    ) -> None:
        try:
            # 0 threads = one per core; no spinning: idle engine threads must not starve the event loop
            self.session = make_session(model_path, intra_op_threads, spin=False, providers=providers.names)
        except ORT_ERRORS as exc:
            raise BackendLoadError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self.provider = self.session.get_providers()[0]  # the one running the graph
        if self.provider != providers.names[0]:
            what = f"onnxruntime opened {model_path} on {self.provider}, not {providers.names[0]}"
            if providers.strict:
                raise ProviderFallback(
                    f"--provider {providers.choice}: {what}. The CUDA provider is installed but could "
                    "not start (no GPU visible, or its CUDA/cuDNN libraries missing: onnxruntime's own "
                    "log line above says which); serve with --provider auto or cpu to run on CPU"
                )
            log.warning("--provider %s: %s; serving on CPU", providers.choice, what)
        graph_inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(graph_inputs) != sorted(input_names):
            raise BackendLoadError(
                f"{model_path} takes inputs {graph_inputs} but the manifest lists {list(input_names)}"
            )
        if OUTPUT_NAME not in outputs:
            raise BackendLoadError(f"{model_path} has outputs {outputs}; expected one named {OUTPUT_NAME!r}")
        self.input_names = list(input_names)
        self.output_names = [OUTPUT_NAME, *(name for name in outputs if name != OUTPUT_NAME)]
        self.model_path = model_path

    def health(self) -> None:
        """Nothing to check: the session opened in __init__ stays open for the backend's life, and the
        canary (`service.model.run_canary`) scores real pairs right after."""

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch["input_ids"].shape[0]
        try:
            outputs = run_outputs(self.session, self.input_names, batch, self.output_names)
        except ORT_ERRORS as exc:
            raise InferenceFailed(f"onnxruntime failed on a batch of {rows}: {exc}") from exc
        except ValueError as exc:  # reshape: an output holds other than one value per row
            raise InferenceFailed(
                f"a graph output does not have one value per row (batch of {rows}): {exc}"
            ) from exc
        for name, values in outputs.items():
            if not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise InferenceFailed(
                    f"model produced {bad} non-finite {name} value(s) in a batch of {rows}; not served"
                )
        return outputs

    def score(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The `score` output alone, float64 [b] (the benchmarks time a plain forward pass with it)."""
        return self.run(batch)[OUTPUT_NAME]


class OnnxBackendFactory:
    """Opens every graph the service loads on the same providers (a `service.model.BackendFactory`),
    resolved once at start (`service.providers.resolve_providers`)."""

    def __init__(self, providers: ExecutionProviders) -> None:
        self.providers = providers

    def __call__(self, path: Path, input_names: Sequence[str], threads: int) -> OnnxBackend:
        return OnnxBackend(path, input_names, threads, self.providers)
