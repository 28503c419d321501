"""Export a trained reward model to a verified bundle: ONNX fp32 + static int8, gated, with a manifest.

    rlhf export runs/rm --out bundles/rm-v1                  # fp32 + int8 when int8 passes the gate
    rlhf export runs/rm --out bundles/rm-v1 --no-int8        # fp32 only

    result = export_bundle("runs/rm", "bundles/rm-v1", ExportConfig(version="2"))

Steps: load RUN/final (model, tokenizer.json, reward_config.json, score_stats.json); re-create the
run's validation split (the evaluation pairs) and training split (the calibration pairs); export the
fp32 graph (opset 17, dynamic batch and sequence axes, output "score" [batch], plus "uncertainty" and
"length_score" when the model has those heads: onnx_graph.py); gate every output against PyTorch and
for batch independence (failure = no bundle); fit the score's linear trend on answer length over the
calibration pairs (length_correction.py: recorded as gate.length_trend, and as the manifest's
``length_correction``, which the service subtracts, with ``--length-correction``); quantise
statically to int8 and gate it (batch independence, accuracy at most ``max_int8_drop`` points below
fp32; failure = the bundle ships fp32 only and the manifest says why); write the manifest with every
file's sha256. Everything is
written into a temporary directory next to the target, verified with `load_bundle`, then renamed,
so a bundle directory is never half-written.

The fp32 and int8 scores of the gate come from `service.onnx_scoring` and the ids from
`service.encoding.PairEncoder`: the exact code path the service runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import MODEL_FILES, TOKENIZER_NAME, Manifest, load_bundle, utc_now, write_manifest
from service.encoding import EncodedPair, PairEncoder, TruncationPolicy, pad_batch
from service.onnx_scoring import length_sorted_batches, make_session, score_encoded
from training.reward.batching import encode_pairs
from training.reward.config import CONFIG_NAME, ConfigError, RewardConfig
from training.reward.data import DataError, PreferencePair, load_run_split
from training.reward.evaluate import pairwise_accuracy
from training.reward.export.config import ExportConfig
from training.reward.export.gate import (
    ExportError,
    RunDirError,
    batch_dependence,
    batch_independence_failure,
    check_batch_independence,
    check_output_parity,
    int8_accuracy_failure,
)
from training.reward.export.onnx_graph import export_onnx, torch_outputs
from training.reward.export.quantize import quantize_int8
from training.reward.heads import score_outputs
from training.reward.length_correction import answer_token_counts, fit_length_correction
from training.reward.model import accepted_input_names, layout_of, load_reward_model

log = logging.getLogger(__name__)
SCORE_STATS_NAME = "score_stats.json"


@dataclass
class ExportResult:
    bundle_dir: Path
    manifest: Manifest
    gate: dict[str, Any]  # the measured numbers, also in manifest["gate"]


def find_final_dir(run_dir: Path) -> Path:
    """RUN/final, or RUN itself when it is already a final directory."""
    for candidate in (run_dir / "final", run_dir):
        if (candidate / CONFIG_NAME).is_file() and (candidate / "config.json").is_file():
            return candidate
    raise RunDirError(
        f"{run_dir} is not a finished training run: expected {run_dir / 'final'} with config.json, "
        f"{CONFIG_NAME}, {TOKENIZER_NAME} and {SCORE_STATS_NAME} (written at the end of `rlhf train-rm`)"
    )


def read_score_stats(final_dir: Path) -> dict[str, float]:
    path = final_dir / SCORE_STATS_NAME
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        return {"mean": float(stats["mean"]), "std": float(stats["std"])}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path}: cannot read the train-set score mean/std ({exc})") from exc


def spread_sample(pairs: Sequence[PreferencePair], n: int) -> list[PreferencePair]:
    """``n`` pairs evenly spaced over ``pairs`` (all when n <= 0 or n >= len): deterministic, same mix."""
    if n <= 0 or n >= len(pairs):
        return list(pairs)
    return [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, n).round().astype(int)]


def export_bundle(
    run_dir: str | Path, out_dir: str | Path, config: ExportConfig | None = None
) -> ExportResult:
    """Export, gate and write a bundle at ``out_dir``; raise an ExportError naming the failed check."""
    config = config or ExportConfig()
    run, out = Path(run_dir), Path(out_dir)
    if out.exists() and not config.overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --overwrite")
    final = find_final_dir(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fields, gate = _build(run, final, tmp, config)
        write_manifest(tmp, {**fields, "gate": gate})
        load_bundle(tmp)  # verify before it becomes visible
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bundle = load_bundle(out)
    return ExportResult(out, bundle.manifest, gate)


@dataclass
class RunInputs:
    """What the export reads from a finished training run (RUN/final and the run's data split)."""

    train_config: RewardConfig
    stats: dict[str, float]  # the train-set score mean/std, for the manifest
    train_pairs: list[PreferencePair]  # calibration and extra fidelity pairs come from here
    val_pairs: list[PreferencePair]  # the evaluation pairs come from here
    encoder: PairEncoder  # the run's tokenizer with its truncation policy


def read_run(run: Path, final: Path) -> RunInputs:
    """Load what the export needs from the run; RunDirError names what is missing or unreadable."""
    if not (final / TOKENIZER_NAME).is_file():
        raise RunDirError(f"{final / TOKENIZER_NAME} is missing")
    stats = read_score_stats(final)
    try:
        train_config = RewardConfig.load(final / CONFIG_NAME)
        train_pairs, val_pairs = load_run_split(run)  # the run's own data, split as in training
    except (ConfigError, DataError) as exc:
        raise RunDirError(f"{run}: cannot re-create the run's data split: {exc}") from exc
    policy = TruncationPolicy(train_config.max_length, train_config.min_question_tokens)
    encoder = PairEncoder.from_file(final / TOKENIZER_NAME, policy)
    if not val_pairs:
        raise RunDirError(
            f"{run}: the run has no validation split (val_fraction 0); the gate needs evaluation pairs"
        )
    return RunInputs(train_config, stats, train_pairs, val_pairs, encoder)


def _build(run: Path, final: Path, tmp: Path, config: ExportConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the graphs and tokenizer into ``tmp``; return (manifest fields, gate numbers)."""
    started = time.perf_counter()
    inputs = read_run(run, final)
    eval_pairs = spread_sample(inputs.val_pairs, config.eval_pairs)
    chosen, rejected = encode_pairs(inputs.encoder, eval_pairs)
    encoded = [*chosen, *rejected]  # rows [0, n) chosen, [n, 2n) rejected
    pad = inputs.encoder.pad_token_id

    # -- fp32 graph, traced from the PyTorch model ---------------------------------------------------
    model = load_reward_model(str(final)).eval()
    input_names = accepted_input_names(model)
    shutil.copyfile(final / TOKENIZER_NAME, tmp / TOKENIZER_NAME)
    fp32_path = tmp / MODEL_FILES["fp32"]
    _export_fp32(model, input_names, pad_batch(sorted(encoded, key=len)[-2:], pad), fp32_path, config)

    # -- fp32 gate: parity with PyTorch and batch independence (hard failures) ----------------------
    session = make_session(fp32_path, config.threads)
    fp32 = _gate_fp32(session, model, input_names, encoded, pad, config)
    length_trend = _fit_length_trend(session, input_names, inputs, config)

    # -- int8: static quantisation, shipped only when it passes ---------------------------------------
    int8_info: dict[str, Any] = {"shipped": False, "reason": "disabled (--no-int8)", "method": None}
    attempts: list[dict[str, Any]] = []
    if config.int8:
        calibration, fidelity, fidelity_accuracy_fp32 = _int8_inputs(
            session, input_names, inputs, chosen, rejected, fp32.scores, config
        )
        del session  # only one graph's session in memory at a time
        int8_info, attempts = _quantize_and_gate(
            fp32_path, tmp / MODEL_FILES["int8"], calibration, input_names, inputs.encoder, encoded,
            fidelity, fidelity_accuracy_fp32, config,
        )  # fmt: skip

    # -- what the manifest records ------------------------------------------------------------------
    accuracy_int8 = attempts[-1]["accuracy"] if attempts else None
    fields = _manifest_fields(
        config, final, inputs, input_names, len(eval_pairs), fp32.accuracy, accuracy_int8, int8_info
    )
    fields |= {
        "heads": layout_of(model).manifest_entry(),
        "length_correction": length_trend if config.length_correction else None,
    }
    gate = {
        "max_abs_diff_onnx_torch": fp32.max_diff,
        "max_abs_diff_by_output": fp32.diff_by_output,
        "batch_diff_fp32": fp32.batch_diff,
        "batch_diff_int8": attempts[-1]["batch_diff"] if attempts else None,
        "int8_attempts": attempts,
        "length_trend": length_trend,
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    return fields, gate


def _export_fp32(
    model: Any, input_names: list[str], sample: dict[str, np.ndarray], path: Path, config: ExportConfig
) -> None:
    """Trace ``model`` on ``sample`` (the two longest evaluation sequences) into the fp32 graph at ``path``."""
    log.info(
        "exporting fp32 ONNX (opset %d, inputs %s, %s attention)",
        config.opset,
        ", ".join(input_names),
        config.attention,
    )
    try:
        export_onnx(model, input_names, sample, path, config.opset, config.attention)
    except (ValueError, ImportError) as exc:  # unknown choice, or the model lacks that implementation
        raise ExportError(f"cannot export with {config.attention!r} attention: {exc}") from exc


@dataclass
class Fp32Gate:
    """The fp32 graph's gate: what it measured, once it passed."""

    scores: np.ndarray  # [2n] fp32 scores of the evaluation pairs: chosen sides, then rejected sides
    max_diff: float  # max |ONNX - PyTorch| over every output
    diff_by_output: dict[str, float]  # the same per output (score, uncertainty, length_score)
    batch_diff: float  # max |alone - in a mixed batch|
    accuracy: float  # pairwise accuracy on the evaluation pairs


def _gate_fp32(
    session: Any,
    model: Any,
    input_names: list[str],
    encoded: list[EncodedPair],
    pad_token_id: int,
    config: ExportConfig,
) -> Fp32Gate:
    """Parity with PyTorch and batch independence of every graph output; raise ExportError (no
    bundle) when either fails."""
    graph_inputs = [i.name for i in session.get_inputs()]
    if graph_inputs != input_names:
        raise ExportError(f"exported graph takes inputs {graph_inputs}, expected {input_names}")
    n = len(encoded) // 2
    log.info("gate: scoring %d evaluation pairs with PyTorch and onnxruntime", n)
    reference = torch_outputs(model, input_names, encoded, pad_token_id, config.batch_size)
    values = score_outputs(session, input_names, encoded, pad_token_id, config.batch_size)
    diff_by_output = check_output_parity(reference, values, config.parity_tolerance)
    max_diff, fp32 = max(diff_by_output.values()), values["score"]
    batch_diff = check_batch_independence(
        "fp32", batch_dependence(session, input_names, encoded, pad_token_id), config.batch_tolerance
    )
    accuracy = pairwise_accuracy(fp32[:n], fp32[n:])
    log.info(
        "fp32: max |onnx - torch| %.2e, batch diff %.2e, accuracy %.2f%%",
        max_diff,
        batch_diff,
        100 * accuracy,
    )
    return Fp32Gate(fp32, max_diff, diff_by_output, batch_diff, accuracy)


def _fit_length_trend(
    session: Any, input_names: list[str], inputs: RunInputs, config: ExportConfig
) -> dict[str, Any] | None:
    """score ~ a + b * answer tokens, least squares over both answers of the calibration pairs
    (training pairs, scored by the fp32 graph), as the manifest's ``length_correction`` entry; None
    when their answers all have one length (no trend to fit)."""
    pairs = spread_sample(inputs.train_pairs, config.calibration_pairs)
    chosen, rejected = encode_pairs(inputs.encoder, pairs)
    encoded = [*chosen, *rejected]
    scores = score_encoded(session, input_names, encoded, inputs.encoder.pad_token_id, config.batch_size)
    try:
        fit = fit_length_correction(scores, answer_token_counts(encoded))
    except ValueError as exc:
        log.warning("no length correction: %s", exc)
        return None
    log.info(
        "length trend: slope %.3g per answer token, pearson %.2f on %d items",
        fit.slope,
        fit.pearson,
        fit.fitted_on,
    )
    return fit.to_dict()


def _int8_inputs(
    session: Any,
    input_names: list[str],
    inputs: RunInputs,
    chosen: list[EncodedPair],
    rejected: list[EncodedPair],
    fp32_scores: np.ndarray,
    config: ExportConfig,
) -> tuple[list[dict[str, np.ndarray]], FidelitySet, float]:
    """(calibration batches, fidelity set, fp32 accuracy on it): what every int8 recipe is judged on.

    Calibration uses training pairs; the fidelity set is the evaluation pairs plus training pairs not
    used for calibration, scored here by the fp32 ``session`` (the evaluation pairs already were).
    """
    encoder = inputs.encoder
    calibration_pairs = spread_sample(inputs.train_pairs, config.calibration_pairs)
    candidates = _uncalibrated(inputs.train_pairs, calibration_pairs)
    fidelity = _fidelity_set(chosen, rejected, encoder, candidates, config.fidelity_pairs)
    pad, size, n = encoder.pad_token_id, config.batch_size, len(chosen)
    extra_chosen = score_encoded(session, input_names, fidelity.extra_chosen, pad, size)
    extra_rejected = score_encoded(session, input_names, fidelity.extra_rejected, pad, size)
    fidelity_fp32 = np.concatenate([fp32_scores[:n], extra_chosen, fp32_scores[n:], extra_rejected])
    return (
        _calibration_batches(encoder, calibration_pairs),
        fidelity,
        pairwise_accuracy(*_halves(fidelity_fp32)),
    )


def _manifest_fields(
    config: ExportConfig,
    final: Path,
    inputs: RunInputs,
    input_names: list[str],
    eval_pairs: int,
    accuracy_fp32: float,
    accuracy_int8: float | None,
    int8_info: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's description of the bundle (all but ``gate`` and ``files``)."""
    train_config, policy = inputs.train_config, inputs.encoder.policy
    source = train_config.data or "embedded hh-rlhf-harmless-2000"
    return {
        "name": config.name or (final.parent if final.name == "final" else final).name,
        "version": config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "created": utc_now(),
        "base_model": train_config.base_model,
        "max_length": policy.max_length,
        "truncation": {"max_length": policy.max_length, "min_question_tokens": policy.min_question_tokens},
        "pad_token_id": inputs.encoder.pad_token_id,
        "input_names": input_names,
        "score": inputs.stats,
        "eval": {
            "dataset": f"{source}: validation split (val_fraction {train_config.val_fraction}, "
            f"seed {train_config.seed})",
            "pairs": eval_pairs,
            "accuracy_fp32": accuracy_fp32,
            "accuracy_int8": accuracy_int8,
        },
        "int8": int8_info,
        "training_config": train_config.to_dict(),
        "export_config": config.to_dict(),
    }


def _quantize_and_gate(
    fp32_path: Path,
    int8_path: Path,
    calibration: list[dict[str, np.ndarray]],
    input_names: list[str],
    encoder: PairEncoder,
    encoded: list[EncodedPair],
    fidelity: FidelitySet,
    fidelity_accuracy_fp32: float,
    config: ExportConfig,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Try ``config.recipes`` in order (fastest first); keep the first int8 graph that passes the gate.

    Returns the manifest's int8 entry and one record per attempt (also stored in the manifest, so
    the choice is visible). When none passes, ``int8_path`` is removed and the reason is the last one.
    """
    n, m = len(encoded) // 2, fidelity.pairs
    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlhf-ranges-") as cache:  # calibrate once per method
        for recipe in config.recipes:
            log.info("int8: %s (calibration: %d batches)", recipe.describe(), len(calibration))
            method = quantize_int8(fp32_path, int8_path, calibration, recipe, Path(cache))
            session = make_session(int8_path, config.threads)
            int8 = score_encoded(
                session, input_names, fidelity.encoded, encoder.pad_token_id, config.batch_size
            )
            accuracy = pairwise_accuracy(int8[:n], int8[m : m + n])  # the evaluation pairs come first
            fidelity_accuracy = pairwise_accuracy(*_halves(int8))
            batch_diff = batch_dependence(session, input_names, encoded, encoder.pad_token_id)
            del session
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


@dataclass
class FidelitySet:
    """Where int8 is compared with fp32: rows [0, pairs) chosen, [pairs, 2 pairs) rejected, the
    evaluation pairs first (so their accuracy is a slice), then the extra training pairs."""

    encoded: list[EncodedPair]
    pairs: int
    extra_chosen: list[EncodedPair]
    extra_rejected: list[EncodedPair]


def _fidelity_set(
    chosen: list[EncodedPair],
    rejected: list[EncodedPair],
    encoder: PairEncoder,
    candidates: Sequence[PreferencePair],
    total: int,
) -> FidelitySet:
    extra = spread_sample(candidates, total - len(chosen)) if total > len(chosen) else []
    extra_chosen, extra_rejected = encode_pairs(encoder, extra)
    all_chosen, all_rejected = [*chosen, *extra_chosen], [*rejected, *extra_rejected]
    return FidelitySet([*all_chosen, *all_rejected], len(all_chosen), extra_chosen, extra_rejected)


def _uncalibrated(
    train_pairs: Sequence[PreferencePair], calibration_pairs: Sequence[PreferencePair]
) -> list[PreferencePair]:
    """Training pairs the int8 ranges were not calibrated on."""
    used = {id(p) for p in calibration_pairs}
    return [p for p in train_pairs if id(p) not in used]


def _halves(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = len(scores) // 2
    return scores[:half], scores[half:]


def _calibration_batches(
    encoder: PairEncoder, pairs: Sequence[PreferencePair]
) -> list[dict[str, np.ndarray]]:
    """Both answers of each pair, length-sorted into batches of 8 so little padding enters the ranges."""
    chosen, rejected = encode_pairs(encoder, pairs)
    encoded = [*chosen, *rejected]
    return [
        pad_batch([encoded[i] for i in idx], encoder.pad_token_id)
        for idx in length_sorted_batches([len(e) for e in encoded], 8)
    ]


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
