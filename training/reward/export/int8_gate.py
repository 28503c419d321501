"""The int8 half of the export: calibrate, quantise, gate; ship the first recipe that passes, else fp32.

    judged = int8_inputs(fp32_session, names, encoder, chosen, rejected, fp32_scores, calibration_pairs,
                         calibration_pool, config, progress)
    int8_info, attempts = quantize_and_gate(fp32_path, int8_path, judged, names, encoder, encoded,
                                            config, progress)

Calibration uses the calibration pairs (a run's training split); each recipe's int8 graph is judged
against its own fp32 graph on the *fidelity set*: the evaluation pairs plus calibration-pool pairs the
ranges were not calibrated on, up to ``fidelity_pairs`` (README "Export gate": on the evaluation pairs
alone one point is a handful of pairs, so the gate would flip on noise). A recipe ships when its
graph is batch-independent and loses at most ``max_int8_drop`` accuracy points; when none passes, the
bundle ships fp32 only and the manifest records why (every attempt is recorded either way).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.encoding import EncodedPair, Encoder, pad_batch
from service.onnx_scoring import length_sorted_batches, make_session, score_encoded
from training.reward.batching import encode_pairs
from training.reward.data import PreferencePair
from training.reward.evaluate import pairwise_accuracy
from training.reward.export.config import ExportConfig
from training.reward.export.gate import (
    batch_dependence,
    batch_independence_failure,
    int8_accuracy_failure,
    probe_runs,
)
from training.reward.export.progress import Progress, TickingSession
from training.reward.export.quantize import quantize_int8

log = logging.getLogger(__name__)


def spread_sample(pairs: Sequence[PreferencePair], n: int) -> list[PreferencePair]:
    """``n`` pairs evenly spaced over ``pairs`` (all when n <= 0 or n >= len): deterministic, same mix."""
    if n <= 0 or n >= len(pairs):
        return list(pairs)
    return [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, n).round().astype(int)]


@dataclass
class FidelitySet:
    """Where int8 is compared with fp32: rows [0, pairs) chosen, [pairs, 2 pairs) rejected, the
    evaluation pairs first (so their accuracy is a slice), then the extra calibration-pool pairs."""

    encoded: list[EncodedPair]
    pairs: int
    extra_chosen: list[EncodedPair]
    extra_rejected: list[EncodedPair]


@dataclass
class Int8Inputs:
    """What every int8 recipe is judged on, prepared once with the fp32 graph."""

    calibration: list[dict[str, np.ndarray]]  # padded, length-sorted calibration batches
    fidelity: FidelitySet
    fidelity_accuracy_fp32: float  # the fp32 graph's pairwise accuracy on the fidelity set


def int8_inputs(
    session: Any,
    input_names: list[str],
    encoder: Encoder,
    chosen: list[EncodedPair],
    rejected: list[EncodedPair],
    fp32_scores: np.ndarray,
    calibration_pairs: Sequence[PreferencePair],
    calibration_pool: Sequence[PreferencePair],
    config: ExportConfig,
    progress: Progress,
) -> Int8Inputs:
    """Calibration batches, the fidelity set and the fp32 accuracy on it; the extra fidelity pairs are
    scored here by the fp32 ``session`` (the evaluation pairs, ``chosen``/``rejected``, already were:
    ``fp32_scores``)."""
    candidates = _uncalibrated(calibration_pool, calibration_pairs)
    fidelity = _fidelity_set(chosen, rejected, encoder, candidates, config.fidelity_pairs)
    pad, size, n = encoder.pad_token_id, config.batch_size, len(chosen)
    extra = len(fidelity.extra_chosen)
    with progress.phase("fp32 fidelity scores", 2 * -(-extra // size)) as bar:
        ticking = TickingSession(session, bar)
        extra_chosen = score_encoded(ticking, input_names, fidelity.extra_chosen, pad, size)
        extra_rejected = score_encoded(ticking, input_names, fidelity.extra_rejected, pad, size)
    fidelity_fp32 = np.concatenate([fp32_scores[:n], extra_chosen, fp32_scores[n:], extra_rejected])
    return Int8Inputs(
        _calibration_batches(encoder, calibration_pairs),
        fidelity,
        pairwise_accuracy(*_halves(fidelity_fp32)),
    )


def quantize_and_gate(
    fp32_path: Path,
    int8_path: Path,
    judged: Int8Inputs,
    input_names: list[str],
    encoder: Encoder,
    encoded: list[EncodedPair],
    config: ExportConfig,
    progress: Progress,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Try ``config.recipes`` in order (fastest first); keep the first int8 graph that passes the gate.

    ``encoded`` are the evaluation sequences (the batch-independence probe is drawn from them).
    Returns the manifest's int8 entry and one record per attempt (also stored in the manifest, so
    the choice is visible). When none passes, ``int8_path`` is removed and the reason is the last one.
    """
    fidelity, fidelity_accuracy_fp32 = judged.fidelity, judged.fidelity_accuracy_fp32
    n, m = len(encoded) // 2, fidelity.pairs
    pad, size = encoder.pad_token_id, config.batch_size
    runs = -(-len(fidelity.encoded) // size) + probe_runs(encoded, config.batch_probe)
    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlhf-ranges-") as cache:  # calibrate once per method
        for number, recipe in enumerate(config.recipes, start=1):
            log.info("int8: %s (calibration: %d batches)", recipe.describe(), len(judged.calibration))
            method = quantize_int8(fp32_path, int8_path, judged.calibration, recipe, Path(cache), progress)
            with progress.phase(f"int8 gate (recipe {number})", runs) as bar:
                session = TickingSession(make_session(int8_path, config.threads), bar)
                int8 = score_encoded(session, input_names, fidelity.encoded, pad, size)
                batch_diff = batch_dependence(session, input_names, encoded, pad, config.batch_probe)
                del session
            accuracy = pairwise_accuracy(int8[:n], int8[m : m + n])  # the evaluation pairs come first
            fidelity_accuracy = pairwise_accuracy(*_halves(int8))
            reason = batch_independence_failure("int8", batch_diff, config.batch_tolerance)
            reason = reason or int8_accuracy_failure(
                fidelity_accuracy_fp32, fidelity_accuracy, config.max_int8_drop, m
            )
            attempts.append(
                {
                    "method": method,
                    "accuracy": accuracy,
                    "fidelity_pairs": m,
                    "fidelity_accuracy_fp32": fidelity_accuracy_fp32,
                    "fidelity_accuracy_int8": fidelity_accuracy,
                    "batch_diff": batch_diff,
                    "failure": reason,
                }
            )
            log.info(
                "int8: accuracy %.2f%% on the evaluation pairs; %.2f%% vs fp32 %.2f%% on %d fidelity pairs; "
                "batch diff %.2e: %s",
                100 * accuracy,
                100 * fidelity_accuracy,
                100 * fidelity_accuracy_fp32,
                m,
                batch_diff,
                reason or "passed",
            )
            if reason is None:
                drop = 100 * (fidelity_accuracy_fp32 - fidelity_accuracy)
                return {
                    "shipped": True,
                    "reason": f"passed the gate (accuracy drop {drop:.2f} points on {m} pairs, "
                    f"attempt {len(attempts)})",
                    "method": method,
                }, attempts
    int8_path.unlink(missing_ok=True)
    tried = f" (all {len(attempts)} recipes failed; this was the last)" if len(attempts) > 1 else ""
    return {
        "shipped": False,
        "reason": f"{attempts[-1]['failure']}{tried}",
        "method": attempts[-1]["method"],
    }, attempts


def _fidelity_set(
    chosen: list[EncodedPair],
    rejected: list[EncodedPair],
    encoder: Encoder,
    candidates: Sequence[PreferencePair],
    total: int,
) -> FidelitySet:
    extra = spread_sample(candidates, total - len(chosen)) if total > len(chosen) else []
    extra_chosen, extra_rejected = encode_pairs(encoder, extra)
    all_chosen, all_rejected = [*chosen, *extra_chosen], [*rejected, *extra_rejected]
    return FidelitySet([*all_chosen, *all_rejected], len(all_chosen), extra_chosen, extra_rejected)


def _uncalibrated(
    pool: Sequence[PreferencePair], calibration_pairs: Sequence[PreferencePair]
) -> list[PreferencePair]:
    """Pool pairs the int8 ranges were not calibrated on."""
    used = {id(p) for p in calibration_pairs}
    return [p for p in pool if id(p) not in used]


def _halves(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = len(scores) // 2
    return scores[:half], scores[half:]


def _calibration_batches(encoder: Encoder, pairs: Sequence[PreferencePair]) -> list[dict[str, np.ndarray]]:
    """Both answers of each pair, length-sorted into batches of 8 so little padding enters the ranges."""
    chosen, rejected = encode_pairs(encoder, pairs)
    encoded = [*chosen, *rejected]
    return [
        pad_batch([encoded[i] for i in idx], encoder.pad_token_id)
        for idx in length_sorted_batches([len(e) for e in encoded], 8)
    ]
