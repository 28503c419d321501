"""Export a trained reward model to a verified bundle: ONNX fp32 + static int8, gated, with a manifest.

    rlhf export runs/rm --out bundles/rm-v1                  # fp32 + int8 when int8 passes the gate
    rlhf export runs/rm --out bundles/rm-v1 --no-int8        # fp32 only

    result = export_bundle("runs/rm", "bundles/rm-v1", ExportConfig(version="2"))

Steps: load RUN/final (model, tokenizer.json, reward_config.json, score_stats.json); re-create the
run's validation split (the evaluation pairs) and training split (the calibration pairs); export the
fp32 graph (opset 17, dynamic batch and sequence axes, output "score" [batch]); gate it against
PyTorch and for batch independence (failure = no bundle); quantise statically to int8 and gate it
(batch independence, accuracy at most ``max_int8_drop`` points below fp32; failure = the bundle ships
fp32 only and the manifest says why); write the manifest with every file's sha256. Everything is
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import MODEL_FILES, TOKENIZER_NAME, Manifest, load_bundle, utc_now, write_manifest
from service.encoding import EncodedPair, PairEncoder, TruncationPolicy, pad_batch
from service.onnx_scoring import length_sorted_batches, make_session, score_encoded
from training.reward.config import CONFIG_NAME, ConfigError, RewardConfig
from training.reward.data import DataError, PreferencePair, load_run_split
from training.reward.evaluate import encode_pair_sides, pairwise_accuracy
from training.reward.export.gate import (
    ExportError,
    RunDirError,
    batch_dependence,
    batch_independence_failure,
    check_batch_independence,
    check_parity,
    int8_accuracy_failure,
)
from training.reward.export.onnx_graph import export_onnx, torch_scores
from training.reward.export.quantize import DEFAULT_RECIPES, QuantRecipe, quantize_int8
from training.reward.model import accepted_input_names, load_reward_model

log = logging.getLogger(__name__)
SCORE_STATS_NAME = "score_stats.json"


@dataclass
class ExportConfig:
    """Knobs of `rlhf export`; saved into the manifest as ``export_config``."""

    name: str | None = None  # bundle name; None = the run directory's name
    version: str | None = None  # None = UTC time of the export, e.g. 20260101-120000
    # evaluation pairs from the run's validation split; 0 = all of it (200 for the default run)
    eval_pairs: int = 0
    # training-split pairs whose two answers calibrate int8 activation ranges; 128 pairs = 256 sequences
    calibration_pairs: int = 128
    int8: bool = True  # False = fp32-only bundle
    # int8 may lose at most this many points of pairwise accuracy against fp32 on the fidelity pairs
    max_int8_drop: float = 1.0
    # pairs on which int8 accuracy is compared with fp32: the evaluation pairs plus training pairs
    # not used for calibration, up to this many in all. Why more than the validation split: on 200
    # pairs one point is two pairs, so the gate would flip on noise (measured: the same graph recipe
    # read 1.5 points below fp32 on 200 pairs). The drop is a fidelity check of the quantised graph
    # against its own fp32 graph, so training pairs measure it as well as unseen ones. 0 = evaluation
    # pairs only.
    fidelity_pairs: int = 1000
    parity_tolerance: float = 1e-3  # max |ONNX fp32 - PyTorch| on the evaluation pairs
    batch_tolerance: float = 1e-4  # max |alone - in a mixed batch| for every shipped graph
    batch_size: int = 32  # sequences per onnxruntime run during the gate
    threads: int = 2  # onnxruntime intra-op threads
    opset: int = 17
    # transformers attention traced into both graphs: "eager" (plain MatMul/Softmax, int8 1.10-1.20x
    # faster than "sdpa", whose NaN guards cost 23% of the int8 graph; see onnx_export.py) | "sdpa" | "model"
    attention: str = "eager"
    overwrite: bool = False  # replace an existing bundle at the target (atomically)
    # int8 recipes tried in order until one passes (see quantize.DEFAULT_RECIPES)
    recipes: tuple[QuantRecipe, ...] = DEFAULT_RECIPES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recipes": [r.to_dict() for r in self.recipes]}


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


def _build(run: Path, final: Path, tmp: Path, config: ExportConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the graphs and tokenizer into ``tmp``; return (manifest fields, gate numbers)."""
    started = time.perf_counter()
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
    eval_pairs = spread_sample(val_pairs, config.eval_pairs)
    chosen, rejected = encode_pair_sides(encoder, eval_pairs)
    encoded = [*chosen, *rejected]  # rows [0, n) chosen, [n, 2n) rejected
    n = len(eval_pairs)

    model = load_reward_model(str(final)).eval()
    input_names = accepted_input_names(model)
    shutil.copyfile(final / TOKENIZER_NAME, tmp / TOKENIZER_NAME)
    fp32_path = tmp / MODEL_FILES["fp32"]
    sample = pad_batch(sorted(encoded, key=len)[-2:], encoder.pad_token_id)
    log.info(
        "exporting fp32 ONNX (opset %d, inputs %s, %s attention)",
        config.opset,
        ", ".join(input_names),
        config.attention,
    )
    try:
        export_onnx(model, input_names, sample, fp32_path, config.opset, config.attention)
    except (ValueError, ImportError) as exc:  # unknown choice, or the model lacks that implementation
        raise ExportError(f"cannot export with {config.attention!r} attention: {exc}") from exc

    # -- fp32 gate: parity with PyTorch and batch independence (hard failures) ----------------------
    session = make_session(fp32_path, config.threads)
    graph_inputs = [i.name for i in session.get_inputs()]
    if graph_inputs != input_names:
        raise ExportError(f"exported graph takes inputs {graph_inputs}, expected {input_names}")
    log.info("gate: scoring %d evaluation pairs with PyTorch and onnxruntime", n)
    reference = torch_scores(model, input_names, encoded, encoder.pad_token_id, config.batch_size)
    fp32 = score_encoded(session, input_names, encoded, encoder.pad_token_id, config.batch_size)
    max_diff = check_parity(reference, fp32, config.parity_tolerance)
    batch_fp32 = check_batch_independence(
        "fp32", batch_dependence(session, input_names, encoded, encoder.pad_token_id), config.batch_tolerance
    )
    accuracy_fp32 = pairwise_accuracy(fp32[:n], fp32[n:])
    log.info(
        "fp32: max |onnx - torch| %.2e, batch diff %.2e, accuracy %.2f%%",
        max_diff,
        batch_fp32,
        100 * accuracy_fp32,
    )

    # -- int8: static quantisation, shipped only when it passes ---------------------------------------
    int8_info: dict[str, Any] = {"shipped": False, "reason": "disabled (--no-int8)", "method": None}
    attempts: list[dict[str, Any]] = []
    if config.int8:
        calibration_pairs = spread_sample(train_pairs, config.calibration_pairs)
        calibration = _calibration_batches(encoder, calibration_pairs)
        fidelity = _fidelity_set(
            chosen, rejected, encoder, _uncalibrated(train_pairs, calibration_pairs), config.fidelity_pairs
        )
        pad, size = encoder.pad_token_id, config.batch_size
        extra_chosen = score_encoded(session, input_names, fidelity.extra_chosen, pad, size)
        extra_rejected = score_encoded(session, input_names, fidelity.extra_rejected, pad, size)
        fidelity_fp32 = np.concatenate([fp32[:n], extra_chosen, fp32[n:], extra_rejected])
        del session
        int8_info, attempts = _quantize_and_gate(
            fp32_path,
            tmp / MODEL_FILES["int8"],
            calibration,
            input_names,
            encoder,
            encoded,
            fidelity,
            pairwise_accuracy(*_halves(fidelity_fp32)),
            config,
        )
    accuracy_int8 = attempts[-1]["accuracy"] if attempts else None
    batch_int8 = attempts[-1]["batch_diff"] if attempts else None

    source = train_config.data or "embedded hh-rlhf-harmless-2000"
    fields: dict[str, Any] = {
        "name": config.name or (final.parent if final.name == "final" else final).name,
        "version": config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "created": utc_now(),
        "base_model": train_config.base_model,
        "max_length": policy.max_length,
        "truncation": {"max_length": policy.max_length, "min_question_tokens": policy.min_question_tokens},
        "pad_token_id": encoder.pad_token_id,
        "input_names": input_names,
        "score": stats,
        "eval": {
            "dataset": f"{source}: validation split (val_fraction {train_config.val_fraction}, "
            f"seed {train_config.seed})",
            "pairs": n,
            "accuracy_fp32": accuracy_fp32,
            "accuracy_int8": accuracy_int8,
        },
        "int8": int8_info,
        "training_config": train_config.to_dict(),
        "export_config": config.to_dict(),
    }
    gate = {
        "max_abs_diff_onnx_torch": max_diff,
        "batch_diff_fp32": batch_fp32,
        "batch_diff_int8": batch_int8,
        "int8_attempts": attempts,
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    return fields, gate


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
    extra_chosen, extra_rejected = encode_pair_sides(encoder, extra)
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
    chosen, rejected = encode_pair_sides(encoder, pairs)
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
