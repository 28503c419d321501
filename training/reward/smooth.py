"""SmoothQuant-style channel smoothing of selected MatMuls, before static int8 quantisation.

    model, count = smooth_matmuls(model, [r"layer\\.\\d+/output/dense/"], calibration_batches, alpha=0.5)

Why: int8 activations get one scale per tensor, so a few input channels with huge values (BERT's
FFN output MatMul reads a GELU output whose outlier channels are 10-100x the rest) force a coarse
scale on every channel. SmoothQuant (Xiao et al., 2023) moves that range into the weights, which are
quantised per channel anyway: X @ W == (X / s) @ (s * W) with one factor s_j per input channel,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha). The division becomes one elementwise Mul (fp32, cheap)
in front of the MatMul; the product is unchanged in exact arithmetic, so the fp32 graph keeps its
scores and only the quantisation error shrinks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def smooth_matmuls(
    model: onnx.ModelProto, patterns: Sequence[str], batches: Sequence[dict[str, np.ndarray]], alpha: float
) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose MatMuls matching ``patterns`` (with a weight initializer) are smoothed.

    ``batches`` are calibration inputs: the per-channel activation maxima come from running them.
    Returns (new model, number of MatMuls smoothed).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in model.graph.initializer}
    regexes = [re.compile(p) for p in patterns]
    targets = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and any(r.search(n.name) for r in regexes)
    ]
    if not targets:
        return model, 0
    act_max = _channel_max(model, [n.input[0] for n in targets], batches)
    for node in targets:
        weight = numpy_helper.to_array(inits[node.input[1]])  # [in, out]
        x_max = np.maximum(act_max[node.input[0]], 1e-5)
        w_max = np.maximum(np.abs(weight).max(axis=1), 1e-5)
        scale = (x_max**alpha / w_max ** (1.0 - alpha)).astype(np.float32)  # [in]
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        inv_name, smoothed = f"{node.name}/smooth_inv_scale", f"{node.input[0]}/smoothed"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inv_name))
        mul = helper.make_node("Mul", [node.input[0], inv_name], [smoothed], name=f"{node.name}/Smooth")
        node.input[0] = smoothed
        model.graph.node.insert(list(model.graph.node).index(node), mul)
    return model, len(targets)


def _channel_max(
    model: onnx.ModelProto, tensors: list[str], batches: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |value| per last-axis channel of each tensor over all calibration batches (real tokens only)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name for i in session.get_inputs()}
    result: dict[str, np.ndarray] = {}
    for batch in batches:
        outputs = session.run(tensors, {k: v for k, v in batch.items() if k in feeds})
        mask = batch["attention_mask"].astype(bool)  # [b, seq]: padding must not set the ranges
        for name, value in zip(tensors, outputs, strict=True):
            channel = np.abs(value[mask]).max(axis=0)  # [channels]
            result[name] = np.maximum(result[name], channel) if name in result else channel
    return result
