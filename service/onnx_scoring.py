"""Run a reward graph in onnxruntime: the few lines the service, `rlhf eval` and the export gate share.

Why here: the scores a bundle is gated on at export time and the scores it serves must come from the
same session settings and the same batching, so that code lives once, torch-free, beside the bundle
and encoding contracts. Batches are length-sorted because padding is wasted work, and hh-rlhf
lengths vary widely (`rlhf bench quant` measures the gain: README "Measurements", "Export and int8").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

# the output names belong to the bundle contract; re-exported for the graph's readers
from service.bundle import LENGTH_OUTPUT as LENGTH_OUTPUT
from service.bundle import SCORE_OUTPUT as SCORE_OUTPUT
from service.bundle import UNCERTAINTY_OUTPUT as UNCERTAINTY_OUTPUT
from service.encoding import EncodedPair, pad_batch
from service.providers import CPU_PROVIDER


def make_session(
    path: str | Path,
    threads: int = 2,
    *,
    spin: bool = True,
    providers: Sequence[str] = (CPU_PROVIDER,),
) -> ort.InferenceSession:
    """Session with ``threads`` intra-op threads and one inter-op thread (the graphs are sequential).

    ``spin=False`` stops idle intra-op threads from busy-waiting between runs: the service turns it off
    so the cores go to HTTP and tokenisation between batches (same scores, numerics are unchanged).
    ``providers``: onnxruntime execution providers in preference order; CPU unless asked, so the
    export gate and `rlhf eval` measure the same thing on every machine (the service passes the
    providers of `rlhf serve --provider`: service/providers.py). The providers the session really
    got are ``session.get_providers()``: onnxruntime falls back to CPU when CUDA cannot start."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=list(providers))


def run_scores(
    session: ort.InferenceSession, input_names: Sequence[str], batch: dict[str, np.ndarray]
) -> np.ndarray:
    """One forward pass: the padded ``batch`` (from `pad_batch`) → scores [b] float64, in batch order."""
    return run_outputs(session, input_names, batch, [SCORE_OUTPUT])[SCORE_OUTPUT]


def run_outputs(
    session: ort.InferenceSession,
    input_names: Sequence[str],
    batch: dict[str, np.ndarray],
    output_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """One forward pass yielding every output in ``output_names``: {name: float64 [b]}, batch order.

    Raises ValueError when an output does not hold one value per row (e.g. [b, k] logits)."""
    feeds = {name: batch[name] for name in input_names}
    values = session.run(list(output_names), feeds)  # each [b] or [b, 1]
    rows = batch[input_names[0]].shape[0]
    return {
        name: np.asarray(value, dtype=np.float64).reshape(rows)
        for name, value in zip(output_names, values, strict=True)
    }


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (shortest first), so padding stays small."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def score_encoded(
    session: ort.InferenceSession,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int = 32,
) -> np.ndarray:
    """Scores [n] float64 for already-encoded pairs, in input order, run in length-sorted batches."""
    scores = np.empty(len(encoded), dtype=np.float64)
    for idx in length_sorted_batches([len(pair) for pair in encoded], batch_size):
        batch = pad_batch([encoded[i] for i in idx], pad_token_id)
        scores[idx] = run_scores(session, input_names, batch)
    return scores
