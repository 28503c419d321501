"""The export gate: the checks a graph must pass before it goes into a bundle.

    check_parity(torch_scores, onnx_scores, tolerance=1e-3)          # raises ParityError
    check_output_parity(torch_values, onnx_values, tolerance=1e-3)   # every output: {name: max diff}
    diff = batch_dependence(session, names, encoded, pad_id)         # max |alone - in a mixed batch|
                                                                     # over every output of the graph
    check_batch_independence("fp32", diff, tolerance=1e-4)           # raises BatchDependenceError

Why a gate: an exported graph that silently differs from the trained model, or whose score for a
pair depends on what it was batched with, still "works" and serves wrong rewards. The fp32 checks
are hard failures (nothing ships) and cover every output of the graph (score, and uncertainty /
length_score when the model has those heads); an int8 graph that fails its checks is left out of the bundle and
the manifest says why (see export.py).

Error tree::

    ExportError
     ├── RunDirError            the training run directory lacks something export needs
     ├── CheckpointError        `rlhf import-rm`: the checkpoint is not a one-label sequence classifier
     ├── ParityError            ONNX fp32 scores differ from PyTorch beyond the tolerance
     └── BatchDependenceError   a graph scores a pair differently alone and inside a batch
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.encoding import EncodedPair, pad_batch
from service.onnx_scoring import SCORE_OUTPUT, run_outputs
from training.reward.heads import output_names_of


class ExportError(Exception):
    """The bundle was not written; the message says which check failed and by how much."""


class RunDirError(ExportError):
    pass


class CheckpointError(ExportError):
    pass


class ParityError(ExportError):
    pass


class BatchDependenceError(ExportError):
    pass


def check_parity(
    torch_scores: np.ndarray, onnx_scores: np.ndarray, tolerance: float, output: str = "score"
) -> float:
    """Max |ONNX - PyTorch| over the same inputs; raise ParityError above ``tolerance``."""
    diff = np.abs(np.asarray(onnx_scores, dtype=np.float64) - np.asarray(torch_scores, dtype=np.float64))
    worst = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(worst) or worst > tolerance:
        i = int(np.nanargmax(diff)) if np.isfinite(diff).any() else 0
        what = "scores" if output == SCORE_OUTPUT else f"{output!r} values"
        raise ParityError(
            f"ONNX fp32 {what} differ from PyTorch by up to {worst:.3g} (> tolerance {tolerance:g}) on "
            f"{int((diff > tolerance).sum())} of {diff.size} sequences; worst: sequence {i}, "
            f"torch {float(torch_scores[i]):.6f} vs onnx {float(onnx_scores[i]):.6f}. "
            "The export does not reproduce the trained model."
        )
    return worst


def check_output_parity(
    torch_values: Mapping[str, np.ndarray], onnx_values: Mapping[str, np.ndarray], tolerance: float
) -> dict[str, float]:
    """check_parity on every output; {name: max |ONNX - PyTorch|}. The two must have the same outputs."""
    if list(torch_values) != list(onnx_values):
        raise ParityError(f"ONNX graph outputs {list(onnx_values)}, the PyTorch model {list(torch_values)}")
    return {
        name: check_parity(torch_values[name], onnx_values[name], tolerance, name) for name in torch_values
    }


def mixed_batch_probe(encoded: Sequence[EncodedPair], size: int = 32) -> list[int]:
    """Indices of up to ``size`` sequences spread over the whole length range, in shuffled order.

    Shortest and longest are both in, so the short ones are padded heavily inside the batch.
    """
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    if len(order) <= size:
        picked = order
    else:
        positions = np.linspace(0, len(order) - 1, size).round().astype(int)
        picked = [order[p] for p in dict.fromkeys(positions.tolist())]
    rng = np.random.default_rng(0)
    return [picked[i] for i in rng.permutation(len(picked))]


def probe_runs(encoded: Sequence[EncodedPair], size: int = 32) -> int:
    """Model runs of one batch-independence check: each probed sequence alone, then the batch."""
    return len(mixed_batch_probe(encoded, size)) + 1


def batch_dependence_per_output(
    session: Any,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    size: int = 32,
) -> dict[str, float]:
    """{output: max |value alone - value inside one mixed-length batch|} over a probe of ``size``
    sequences, for every output of the graph."""
    names = output_names_of(session)
    probe = mixed_batch_probe(encoded, size)
    together = run_outputs(session, input_names, pad_batch([encoded[i] for i in probe], pad_token_id), names)
    alone = [run_outputs(session, input_names, pad_batch([encoded[i]], pad_token_id), names) for i in probe]
    return {
        name: float(np.max(np.abs(together[name] - np.array([a[name][0] for a in alone])))) for name in names
    }


def batch_dependence(
    session: Any,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    size: int = 32,
) -> float:
    """The worst batch dependence over every output of the graph (see batch_dependence_per_output)."""
    per_output = batch_dependence_per_output(session, input_names, encoded, pad_token_id, size)
    return float(np.max(list(per_output.values())))  # np.max: a NaN anywhere is the answer


def batch_independence_failure(graph: str, diff: float, tolerance: float) -> str | None:
    """The failure message for ``graph`` when ``diff`` exceeds ``tolerance``, else None."""
    if np.isfinite(diff) and diff <= tolerance:
        return None
    return (
        f"{graph} graph is batch-dependent: a sequence scored alone and inside a mixed-length batch "
        f"differs by {diff:.3g} (> tolerance {tolerance:g}), so a reward would depend on its batch-mates"
    )


def check_batch_independence(graph: str, diff: float, tolerance: float) -> float:
    """Raise BatchDependenceError when ``graph`` failed the batch-independence check."""
    failure = batch_independence_failure(graph, diff, tolerance)
    if failure is not None:
        raise BatchDependenceError(failure)
    return diff


def int8_accuracy_failure(
    accuracy_fp32: float, accuracy_int8: float, max_drop_points: float, pairs: int | None = None
) -> str | None:
    """The reason int8 may not ship when it loses more than ``max_drop_points`` of accuracy, else None."""
    drop = 100.0 * (accuracy_fp32 - accuracy_int8)
    if drop <= max_drop_points + 1e-9:
        return None
    on = f" on {pairs} pairs" if pairs is not None else ""
    return (
        f"int8 pairwise accuracy {100 * accuracy_int8:.2f}% is {drop:.2f} points below fp32 "
        f"{100 * accuracy_fp32:.2f}%{on} (allowed: {max_drop_points:g})"
    )
