"""Export a reward model to a verified bundle: ONNX fp32 + static int8, gated, with a manifest.

    rlhf export runs/rm --out bundles/rm-v1                  # a training run; int8 when it passes the gate
    rlhf export runs/rm --out bundles/rm-v1 --no-int8        # fp32 only
    rlhf import-rm CHECKPOINT --out bundles/rm               # a checkpoint brought as is (import_rm.py)

    result = export_bundle("runs/rm", "bundles/rm-v1", ExportConfig(version="2"))
    result = export_model(source, "bundles/rm", config)      # any ExportSource

One export path: :func:`export_model` takes an :class:`ExportSource` (a model directory, its encoder,
the pairs the gate evaluates on, the pairs that calibrate int8, and what the manifest says about where
the model came from). `export_bundle` (a training run: RUN/final, its validation split for the gate,
its training split for calibration) and `import_rm.import_checkpoint` only build that source.

Steps: export the fp32 graph (opset 17, dynamic batch and sequence axes, output "score" [batch], plus
"uncertainty" and "length_score" when the model has those heads: onnx_graph.py; a decoder's score is
read at each row's last real token: pooling.py); gate every output against PyTorch and for batch
independence (failure = no bundle); score the calibration pairs with the fp32 graph and fit the
score's linear trend on answer length (length_correction.py: recorded as gate.length_trend, and as the
manifest's ``length_correction``, which the service subtracts, with ``--length-correction``); a
source without a training run's score mean/std gets them from those scores too; quantise statically
to int8 and gate it (int8_gate.py: batch independence, accuracy at most ``max_int8_drop`` points
below fp32; failure = the bundle ships fp32 only and the manifest says why); write the manifest with
every file's sha256. Everything is written into a temporary directory next to the target, verified
with `load_bundle`, then renamed, so a bundle directory is never half-written. Each phase shows a
progress bar counting its model runs (progress.py), and its wall time goes into gate.phase_seconds.

The fp32 and int8 scores of the gate come from `service.onnx_scoring` and the ids from the source's
encoder (`training.reward.encoders`: pair or chat): the exact code path the service runs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import MODEL_FILES, TOKENIZER_NAME, Manifest, load_bundle, utc_now, write_manifest
from service.encoding import EncodedPair, Encoder, pad_batch
from service.onnx_scoring import make_session, score_encoded
from training.reward.batching import encode_pairs
from training.reward.config import CONFIG_NAME, ConfigError, RewardConfig
from training.reward.data import DataError, PreferencePair, load_run_split
from training.reward.encoders import encoder_manifest_fields, run_encoder, write_encoder_files
from training.reward.evaluate import pairwise_accuracy
from training.reward.export.config import ExportConfig
from training.reward.export.fp16 import export_fp16
from training.reward.export.gate import (
    ExportError,
    RunDirError,
    batch_dependence,
    check_batch_independence,
    check_output_parity,
    probe_runs,
)
from training.reward.export.int8_gate import int8_inputs, quantize_and_gate, spread_sample
from training.reward.export.onnx_graph import export_onnx, torch_outputs
from training.reward.export.progress import Progress, TickingSession
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


@dataclass
class ExportSource:
    """What an export reads, whoever made the model: a training run or a checkpoint brought as is."""

    model_dir: Path  # a saved sequence classifier (config.json, weights), with its tokenizer files
    encoder: Encoder  # pair or chat, with the bundle's pad id (training.reward.encoders)
    eval_pool: list[PreferencePair]  # the gate's evaluation pairs are spread over these
    calibration_pool: list[PreferencePair]  # int8 calibration, the length trend, extra fidelity pairs
    name: str  # the bundle's name unless the config gives one
    base_model: str  # the manifest's base_model
    eval_dataset: str  # the manifest's eval.dataset: where the evaluation pairs come from
    training_config: dict[str, Any] = field(default_factory=dict)  # a run's RewardConfig; {} for an import
    # the train-set score mean/std the service normalises with; None = measured by the fp32 graph on
    # the calibration pairs (a checkpoint has no training set to measure them on)
    score_stats: dict[str, float] | None = None
    model: Any = None  # the PyTorch model when the caller loaded it already; None = load model_dir
    tokenizer_dir: Path | None = None  # where tokenizer.json (+ chat template) are; None = model_dir


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


def export_bundle(
    run_dir: str | Path,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export, gate and write a training run's bundle at ``out_dir``; raise an ExportError naming the
    failed check."""
    config = config or ExportConfig()
    check_target(Path(out_dir), config)
    return export_model(run_source(Path(run_dir)), out_dir, config, progress)


def run_source(run: Path) -> ExportSource:
    """A finished training run as an export source; RunDirError names what is missing or unreadable."""
    final = find_final_dir(run)
    if not (final / TOKENIZER_NAME).is_file():
        raise RunDirError(f"{final / TOKENIZER_NAME} is missing")
    stats = read_score_stats(final)
    try:
        train_config = RewardConfig.load(final / CONFIG_NAME)
        train_pairs, val_pairs = load_run_split(run)  # the run's own data, split as in training
    except (ConfigError, DataError) as exc:
        raise RunDirError(f"{run}: cannot re-create the run's data split: {exc}") from exc
    try:
        encoder = run_encoder(final)
    except ValueError as exc:  # EncoderSourceError, ConfigError, an invalid truncation policy
        raise RunDirError(f"{final}: cannot build the run's encoder: {exc}") from exc
    if not val_pairs:
        raise RunDirError(
            f"{run}: the run has no validation split (val_fraction 0); the gate needs evaluation pairs"
        )
    data = train_config.data or "embedded hh-rlhf-harmless-2000"
    return ExportSource(
        model_dir=final,
        encoder=encoder,
        eval_pool=val_pairs,
        calibration_pool=train_pairs,
        name=(final.parent if final.name == "final" else final).name,
        base_model=train_config.base_model,
        eval_dataset=f"{data}: validation split (val_fraction {train_config.val_fraction}, "
        f"seed {train_config.seed})",
        training_config=train_config.to_dict(),
        score_stats=stats,
    )


def check_target(out: Path, config: ExportConfig) -> None:
    """Refuse an existing ``out`` unless ``config.overwrite``: checked before any slow work."""
    if out.exists() and not config.overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --overwrite")


def export_model(
    source: ExportSource,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export, gate and write ``source`` as a bundle at ``out_dir``; raise an ExportError naming the
    failed check. ``progress`` None = bars when stderr is a terminal."""
    config = config or ExportConfig()
    out = Path(out_dir)
    check_target(out, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fields, gate = _build(source, tmp, config, progress or Progress())
        write_manifest(tmp, {**fields, "gate": gate})
        load_bundle(tmp)  # verify before it becomes visible
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bundle = load_bundle(out)
    return ExportResult(out, bundle.manifest, gate)


def _build(
    source: ExportSource, tmp: Path, config: ExportConfig, progress: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the graphs and encoder files into ``tmp``; return (manifest fields, gate numbers)."""
    started = time.perf_counter()
    encoder = source.encoder
    eval_pairs = spread_sample(source.eval_pool, config.eval_pairs)
    chosen, rejected = encode_pairs(encoder, eval_pairs)
    encoded = [*chosen, *rejected]  # rows [0, n) chosen, [n, 2n) rejected
    pad = encoder.pad_token_id

    # -- fp32 graph, traced from the PyTorch model ---------------------------------------------------
    model = (source.model if source.model is not None else load_reward_model(str(source.model_dir))).eval()
    input_names = accepted_input_names(model)
    write_encoder_files(source.tokenizer_dir or source.model_dir, encoder, tmp)  # + chat_template.jinja
    fp32_path = tmp / MODEL_FILES["fp32"]
    _export_fp32(model, input_names, pad_batch(sorted(encoded, key=len)[-2:], pad), fp32_path, config)

    # -- fp32 gate: parity with PyTorch and batch independence (hard failures) ----------------------
    session = make_session(fp32_path, config.threads)
    fp32 = _gate_fp32(session, model, input_names, encoded, pad, config, progress)
    calibration_pairs = spread_sample(source.calibration_pool, config.calibration_pairs)
    calibrated = _score_calibration_pairs(session, input_names, encoder, calibration_pairs, config, progress)
    length_trend = _fit_length_trend(*calibrated)
    stats = source.score_stats or _measured_score_stats(calibrated[0])

    # -- fp16 for GPU serving (--fp16): shipped only when it passes its gate (fp16.py) ---------------
    fp16_path = tmp / MODEL_FILES["fp16"]
    fp16 = (
        export_fp16(session, fp32_path, fp16_path, input_names, encoded, pad, stats["std"], config, progress)
        if config.fp16
        else None
    )

    # -- int8: static quantisation, shipped only when it passes ---------------------------------------
    int8_info: dict[str, Any] = {"shipped": False, "reason": "disabled (--no-int8)", "method": None}
    attempts: list[dict[str, Any]] = []
    if config.int8:
        judged = int8_inputs(
            session, input_names, encoder, chosen, rejected, fp32.scores, calibration_pairs,
            source.calibration_pool, config, progress,
        )  # fmt: skip
        del session  # only one graph's session in memory at a time
        int8_info, attempts = quantize_and_gate(
            fp32_path, tmp / MODEL_FILES["int8"], judged, input_names, encoder, encoded, config, progress
        )

    # -- what the manifest records ------------------------------------------------------------------
    accuracy_int8 = attempts[-1]["accuracy"] if attempts else None
    fields = _manifest_fields(
        config, source, input_names, len(eval_pairs), fp32.accuracy, accuracy_int8, int8_info, stats
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
        "fp16": fp16,  # None: not asked for (--fp16)
        "length_trend": length_trend,
        "score_stats_measured": source.score_stats is None,
        "phase_seconds": dict(progress.seconds),
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


def runs_of(items: int, batch_size: int) -> int:
    """Model runs to score ``items`` sequences in batches of ``batch_size`` (a progress bar's total)."""
    return -(-items // batch_size)


def _gate_fp32(
    session: Any,
    model: Any,
    input_names: list[str],
    encoded: list[EncodedPair],
    pad_token_id: int,
    config: ExportConfig,
    progress: Progress,
) -> Fp32Gate:
    """Parity with PyTorch and batch independence of every graph output; raise ExportError (no
    bundle) when either fails."""
    graph_inputs = [i.name for i in session.get_inputs()]
    if graph_inputs != input_names:
        raise ExportError(f"exported graph takes inputs {graph_inputs}, expected {input_names}")
    n = len(encoded) // 2
    log.info("gate: scoring %d evaluation pairs with PyTorch and onnxruntime", n)
    with progress.phase("fp32 parity", 2 * runs_of(len(encoded), config.batch_size)) as bar:
        reference = torch_outputs(model, input_names, encoded, pad_token_id, config.batch_size, bar)
        ticking = TickingSession(session, bar)
        values = score_outputs(ticking, input_names, encoded, pad_token_id, config.batch_size)
    diff_by_output = check_output_parity(reference, values, config.parity_tolerance)
    max_diff, fp32 = max(diff_by_output.values()), values["score"]
    with progress.phase("fp32 batch independence", probe_runs(encoded, config.batch_probe)) as bar:
        dependence = batch_dependence(
            TickingSession(session, bar), input_names, encoded, pad_token_id, config.batch_probe
        )
    batch_diff = check_batch_independence("fp32", dependence, config.batch_tolerance)
    accuracy = pairwise_accuracy(fp32[:n], fp32[n:])
    log.info(
        "fp32: max |onnx - torch| %.2e, batch diff %.2e, accuracy %.2f%%",
        max_diff,
        batch_diff,
        100 * accuracy,
    )
    return Fp32Gate(fp32, max_diff, diff_by_output, batch_diff, accuracy)


def _score_calibration_pairs(
    session: Any,
    input_names: list[str],
    encoder: Encoder,
    pairs: list[PreferencePair],
    config: ExportConfig,
    progress: Progress,
) -> tuple[np.ndarray, list[EncodedPair]]:
    """(fp32 scores, encodings) of both answers of the calibration pairs: the length trend's and, for
    a source without a training run, the score normaliser's data."""
    chosen, rejected = encode_pairs(encoder, pairs)
    encoded = [*chosen, *rejected]
    with progress.phase("fp32 calibration-pair scores", runs_of(len(encoded), config.batch_size)) as bar:
        scores = score_encoded(
            TickingSession(session, bar), input_names, encoded, encoder.pad_token_id, config.batch_size
        )
    return scores, encoded


def _fit_length_trend(scores: np.ndarray, encoded: list[EncodedPair]) -> dict[str, Any] | None:
    """score ~ a + b * answer tokens, least squares over both answers of the calibration pairs, as
    the manifest's ``length_correction`` entry; None when their answers all have one length (no
    trend to fit)."""
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


def _measured_score_stats(scores: np.ndarray) -> dict[str, float]:
    """Mean/std of the fp32 graph's scores of the calibration answers: the normaliser of a bundle
    whose model came without a training set. A constant or non-finite score is refused."""
    if scores.size < 2 or not np.isfinite(scores).all() or float(scores.std()) <= 0.0:
        raise ExportError(
            f"the model's scores of the {scores.size} calibration answers are constant or not finite "
            f"(std {float(scores.std()) if scores.size else float('nan'):.3g}): no score scale to serve; "
            "give more or other pairs (--data, --calibration-pairs)"
        )
    return {"mean": float(scores.mean()), "std": float(scores.std())}


def _manifest_fields(
    config: ExportConfig,
    source: ExportSource,
    input_names: list[str],
    eval_pairs: int,
    accuracy_fp32: float,
    accuracy_int8: float | None,
    int8_info: dict[str, Any],
    stats: dict[str, float],
) -> dict[str, Any]:
    """The manifest's description of the bundle (all but ``gate`` and ``files``)."""
    return {
        "name": config.name or source.name,
        "version": config.version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "created": utc_now(),
        "base_model": source.base_model,
        **encoder_manifest_fields(source.encoder),  # input_format, truncation, pad id, chat template
        "input_names": input_names,
        "score": stats,
        "eval": {
            "dataset": source.eval_dataset,
            "pairs": eval_pairs,
            "accuracy_fp32": accuracy_fp32,
            "accuracy_int8": accuracy_int8,
        },
        "int8": int8_info,
        "training_config": source.training_config,
        "export_config": config.to_dict(),
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
