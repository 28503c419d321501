"""The fp16 graph for GPU serving (`rlhf export --fp16`): convert the fp32 graph, gate it, ship it or say why.

    info = export_fp16(fp32_session, fp32_path, fp16_path, input_names, encoded, pad_id, score_std, config)
    info["shipped"], info["reason"]           # also the manifest's gate.fp16

Why fp16: on a GPU the matrix units run fp16 several times faster than fp32 and the graph takes half
the memory; `rlhf serve --provider cuda` picks it for ``--precision auto`` (service/bundle.py). On a
CPU, onnxruntime has few fp16 kernels and casts around the rest, so the fp16 graph runs there but
slower than fp32: allowed (the gate below runs it on CPU), not a way to serve faster.

What stays fp32 (onnxruntime's `float16.convert_float_to_float16`, a documented op block list):
- the graph's inputs and outputs (``keep_io_types``): int64 ids in, float32 scores out, so the service
  feeds and reads the fp16 graph exactly as the others;
- Softmax: a padded row's softmax reduces over the padded length, so its summation order depends on
  the batch; in fp16 that rounding difference reaches the score and the graph is batch-dependent
  (the gate saw it on MiniLM), while fp32 absorbs it. It also keeps masked positions finite;
- normalisation (LayerNormalization, and the Pow / ReduceMean of an RMSNorm traced op by op): squares
  of activations in the hundreds overflow fp16's 65504.
The MatMuls, where nearly all the FLOPs are, run in fp16.

The gate, on the export's evaluation pairs (a failure leaves the fp16 graph out; fp32 still ships):
- no activation overflows: every tensor the fp16 graph holds in fp16 stays within fp16's 65504, read
  from the fp32 graph (each such tensor's max |value|, padding included, over the batch-independence
  probe: ``batch_probe`` sequences from the shortest to the longest). This is the
  check for a GPU: on a CPU onnxruntime has fp16 kernels for few ops and runs the others in fp32
  with casts around them, dropping back-to-back casts, so running the fp16 graph there rounds the
  weights but seldom the activations, and an overflow would not show in its outputs;
- every output of the fp16 graph finite, and within ``fp16_tolerance`` of fp32, in units of the
  train-set score std (the unit of the normalised score trainers read): fp16 keeps 11 significant
  bits, so its rounding moves a score by a small fraction of a std; more means a precision-sensitive
  op the block list missed;
- batch independence within ``batch_tolerance``, as for every shipped graph. On a GPU other kernels
  run, so the service's canary checks it again when it loads the graph there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from service.backend import ORT_ERRORS
from service.encoding import EncodedPair, pad_batch
from service.onnx_scoring import SCORE_OUTPUT, length_sorted_batches, make_session
from training.reward.evaluate import pairwise_accuracy
from training.reward.export.config import ExportConfig
from training.reward.export.gate import (
    batch_dependence,
    batch_independence_failure,
    mixed_batch_probe,
    probe_runs,
)
from training.reward.export.progress import Progress, TickingSession
from training.reward.heads import score_outputs

log = logging.getLogger(__name__)

# see the module docstring for why each stays fp32
KEEP_FP32_OPS: tuple[str, ...] = (
    "Softmax",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "Pow",
    "ReduceMean",
)

FP16_MAX = 65504.0  # the largest finite fp16 value
# entries this large are masking fills (a dtype's minimum, or -1e9, added to or written over masked
# scores), not activations: the converter clamps those constants to fp16's range and masked positions
# get zero weight either way; a real activation overflows well below it
FILL = 1e6


class Fp16ConversionError(Exception):
    """The fp32 graph could not be converted, or onnxruntime cannot open the converted graph."""


def convert_to_fp16(fp32_path: Path, fp16_path: Path) -> None:
    """Write the fp16 twin of the graph at ``fp32_path`` to ``fp16_path``, same inputs and outputs.

    Constants beyond fp16's range are clamped to it (a large negative attention-mask fill stays very
    negative, which is all a mask needs)."""
    try:
        model = onnx.load(str(fp32_path))
        converted = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *KEEP_FP32_OPS]
        )
        onnx.save(converted, str(fp16_path))
    except (DecodeError, ValueError, RuntimeError, onnx.checker.ValidationError, OSError) as exc:
        raise Fp16ConversionError(f"cannot convert {fp32_path} to fp16: {exc}") from exc


def activation_peak(
    fp32_path: Path,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int,
    threads: int,
    wrap: Callable[[Any], Any] = lambda session: session,
) -> tuple[str, float]:
    """(tensor, max |value|) of the fp32 graph's float tensors that the fp16 graph computes in fp16
    (outputs of the nodes off the block list, as the converter decides), over ``encoded``; entries
    beyond FILL are masking fills and do not count.

    The graph is run in fp32 with an Abs + ReduceMax appended to each such tensor, so only one
    number per tensor and batch leaves onnxruntime; ``wrap`` wraps its session (a progress bar)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path)))
    graph = model.graph
    floats = {
        v.name
        for v in [*graph.value_info, *graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    blocked = {*DEFAULT_OP_BLOCK_LIST, *KEEP_FP32_OPS}
    watched = list(
        dict.fromkeys(o for n in graph.node if n.op_type not in blocked for o in n.output if o in floats)
    )
    if not watched:
        return "", 0.0
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(v, np.float32), n)
            for n, v in (("fp16_fill", FILL), ("fp16_zero", 0.0))
        ]
    )
    for name in watched:
        size, real, kept = f"{name}/fp16_abs", f"{name}/fp16_real", f"{name}/fp16_kept"
        graph.node.extend(
            [
                helper.make_node("Abs", [name], [size]),
                helper.make_node("Less", [size, "fp16_fill"], [real]),
                helper.make_node("Where", [real, size, "fp16_zero"], [kept]),
                helper.make_node("ReduceMax", [kept], [f"{name}/fp16_peak"], keepdims=0),
            ]
        )
        graph.output.append(helper.make_tensor_value_info(f"{name}/fp16_peak", TensorProto.FLOAT, []))
    peaks_path = fp32_path.with_name(f".{fp32_path.stem}.peaks.onnx")
    try:
        onnx.save(model, str(peaks_path))
        session = wrap(make_session(peaks_path, threads))
        peaks = np.zeros(len(watched))
        for idx in length_sorted_batches([len(e) for e in encoded], batch_size):
            batch = pad_batch([encoded[i] for i in idx], pad_token_id)
            values = session.run(
                [f"{name}/fp16_peak" for name in watched], {n: batch[n] for n in input_names}
            )
            peaks = np.fmax(peaks, np.array([float(v) for v in values]))  # fmax: a NaN never hides a peak
    finally:
        peaks_path.unlink(missing_ok=True)
    worst = int(np.argmax(peaks))
    return watched[worst], float(peaks[worst])


def overflow_failure(tensor: str, peak: float) -> str | None:
    """The reason fp16 may not ship when an activation it holds in fp16 exceeds fp16's range, else None."""
    if peak <= FP16_MAX:
        return None
    return (
        f"an activation overflows fp16: {tensor!r} reaches |{peak:.4g}| on the evaluation sequences "
        f"(fp16 ends at {FP16_MAX:g}); on a GPU it would be inf"
    )


def fp16_parity_failure(diff_std: dict[str, float], tolerance: float) -> str | None:
    """The reason fp16 may not ship when an output is non-finite or moved more than ``tolerance``
    score stds from fp32, else None."""
    for name, diff in diff_std.items():
        if not np.isfinite(diff):
            return (
                f"fp16 graph gives non-finite {name} values where fp32 does not (an fp16 overflow: "
                "an op outside the fp32 block list exceeds 65504)"
            )
    name = max(diff_std, key=lambda n: diff_std[n])
    if diff_std[name] <= tolerance:
        return None
    what = "scores" if name == SCORE_OUTPUT else f"{name!r} values"
    return (
        f"fp16 {what} differ from fp32 by up to {diff_std[name]:.3g} train-set score stds "
        f"(> tolerance {tolerance:g})"
    )


def export_fp16(
    fp32_session: Any,
    fp32_path: Path,
    fp16_path: Path,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    score_std: float,
    config: ExportConfig,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert, gate, and keep ``fp16_path`` only when it passes; the manifest's gate.fp16 entry.

    ``encoded``: the evaluation sequences, chosen sides then rejected sides (rows [0, n) and [n, 2n)),
    scored by both graphs on CPU with the export's batch size and threads; ``progress`` shows a bar
    per phase."""
    progress = progress or Progress(enabled=False)
    info: dict[str, Any] = {"shipped": False, "keep_fp32_ops": list(KEEP_FP32_OPS)}
    try:
        convert_to_fp16(fp32_path, fp16_path)
        session = _open(fp16_path, config.threads)
    except Fp16ConversionError as exc:
        fp16_path.unlink(missing_ok=True)
        log.warning("fp16 NOT shipped: %s", exc)
        return info | {"reason": str(exc)}
    size, probe = config.batch_size, config.batch_probe
    runs = len(length_sorted_batches([len(e) for e in encoded], size))
    # the peaks cost several forward passes each: measured on the batch-independence probe, which
    # spans the evaluation pairs' lengths (the longest padded the most)
    probed = [encoded[i] for i in mixed_batch_probe(encoded, probe)]
    probe_batches = len(length_sorted_batches([len(e) for e in probed], size))
    with progress.phase("fp16 activation range", total=probe_batches) as bar:
        tensor, peak = activation_peak(
            fp32_path, input_names, probed, pad_token_id, size, config.threads, _ticking(bar)
        )
    with progress.phase("fp16 parity with fp32", total=2 * runs) as bar:
        reference = score_outputs(TickingSession(fp32_session, bar), input_names, encoded, pad_token_id, size)
        fp16 = TickingSession(session, bar)
        values = score_outputs(fp16, input_names, encoded, pad_token_id, size, names=list(reference))
    diff = {name: float(np.max(np.abs(values[name] - reference[name]))) for name in reference}
    diff_std = {name: value / score_std for name, value in diff.items()}
    with progress.phase("fp16 batch independence", total=probe_runs(encoded, probe)) as bar:
        batch_diff = batch_dependence(TickingSession(session, bar), input_names, encoded, pad_token_id, probe)
    del session
    info |= {
        "max_abs_diff_fp32": _worst(diff.values()),
        "max_diff_by_output": {name: _worst([value]) for name, value in diff.items()},
        "max_diff_std": _worst(diff_std.values()),
        "tolerance_std": config.fp16_tolerance,
        "activation_peak": peak,  # max |value| of a tensor held in fp16, over the probe sequences
        "activation_peak_tensor": tensor,
        "batch_diff": _worst([batch_diff]),
        "accuracy": _accuracy(values[SCORE_OUTPUT]),
        "accuracy_fp32": _accuracy(reference[SCORE_OUTPUT]),
    }
    reason = overflow_failure(tensor, peak) or fp16_parity_failure(diff_std, config.fp16_tolerance)
    reason = reason or batch_independence_failure("fp16", batch_diff, config.batch_tolerance)
    if reason is not None:
        fp16_path.unlink(missing_ok=True)
        log.warning("fp16 NOT shipped: %s", reason)
        return info | {"reason": reason}
    passed = f"max |fp16 - fp32| {info['max_diff_std']:.2g} score stds, batch diff {batch_diff:.2g}"
    log.info("fp16: %s: passed", passed)
    return info | {"shipped": True, "reason": f"passed the gate ({passed})"}


def _worst(values: Iterable[float]) -> float | None:
    """The largest value, or None (JSON null in the manifest) when any is not finite."""
    values = list(values)
    return max(values) if values and np.isfinite(values).all() else None


def _accuracy(scores: np.ndarray) -> float | None:
    """Pairwise accuracy of [chosen..., rejected...] scores; None without pairs or with a non-finite score."""
    n = len(scores) // 2
    return pairwise_accuracy(scores[:n], scores[n:]) if n and np.isfinite(scores).all() else None


def _ticking(bar: Any) -> Callable[[Any], Any]:
    """Wraps a session so each run ticks ``bar``."""
    return lambda session: TickingSession(session, bar)


def _open(path: Path, threads: int) -> Any:
    """A CPU session on the fp16 graph (the gate's), or Fp16ConversionError naming why not."""
    try:
        return make_session(path, threads)
    except ORT_ERRORS as exc:
        raise Fp16ConversionError(f"onnxruntime cannot open the fp16 graph: {exc}") from exc
