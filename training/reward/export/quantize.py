"""Static (calibrated, QDQ) int8 quantisation of the fp32 reward graph with onnxruntime.

    recipe = DEFAULT_RECIPES[0]                              # percentile, per-channel, MatMuls
    method = quantize_int8(fp32_path, int8_path, calibration_batches, recipe)

Why static: onnxruntime's *dynamic* quantisation computes activation scales over the whole batch at
run time, so a pair's score moves with its batch-mates and pair rankings flip between alone and in a
batch. Static quantisation fixes every activation scale at export time from calibration data, so
each row of a batch is computed with the same numbers whatever the other rows are: the graph is
batch-independent by construction, and the export gate checks it.

Why these recipes: percentile calibration (99.999) clips the rare outlier activations that make
MinMax ranges too wide; weights get per-channel scales; only MatMuls are quantised (nearly all of
the FLOPs), and the transformer layers' Gemms in a family that exports its linear layers as Gemm
(GPT-2's Conv1D: ``quantized_op_types``). The decisive setting is to leave MatMul *outputs* in
fp32: onnxruntime's QDQ quantiser by default also requantises every MatMul output, which adds a
second per-tensor rounding and Q/DQ passes (QLinearMatMul + DequantizeLinear), costing accuracy and
most of the speed. With fp32 outputs each MatMul becomes one MatMulIntegerToFloat (a layer Gemm one
QGemm), which stays within the gate's accuracy drop and is faster. Gemms outside the transformer
layers (BERT's pooler and classifier, RoBERTa's classification head), LayerNorms, Softmax and GELU
stay fp32. What each choice measured: README, "Export and int8" (`rlhf bench quant` re-measures
the speed-up). The export tries DEFAULT_RECIPES in order, fastest first, and ships the first graph
that passes the gate; the later ones keep the FFN output MatMuls (whose input, a GELU output with a
long tail, is the hardest tensor to quantise per tensor) in fp32, slower but safer. The manifest
records every attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from training.reward.export.progress import Progress

_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# a transformer layer's number in a node name: BERT/RoBERTa/DeBERTa-v2 `layer.N/`, Llama/Qwen2/ModernBERT
# `layers.N/`, GPT-2 `/h.N/` (its blocks are `transformer.h`)
_LAYER = re.compile(r"(?:layers?[./_]|[/.]h\.)(\d+)[./]")


@dataclass(frozen=True)
class QuantRecipe:
    """How the int8 graph is calibrated and which nodes stay fp32. Stored in the manifest."""

    # percentile clips the rare outlier activations that make MinMax ranges too wide
    calibration: str = "percentile"
    # the fraction of |activation| values kept inside the range; 99.999 keeps all but the outliers
    percentile: float = 99.999
    # one scale per output channel of each weight: MiniLM's channels differ widely in magnitude
    per_channel: bool = True
    # 7-bit ranges avoid u8*s8 overflow on CPUs without VNNI, at an accuracy cost; VNNI CPUs don't need it
    reduce_range: bool = False
    # MatMuls hold nearly all the FLOPs; quantising every op type added Q/DQ pairs and was slower.
    # With "MatMul", a graph whose transformer layers are Gemms (GPT-2) has those quantised too
    op_types: tuple[str, ...] = ("MatMul",)
    # False = MatMul outputs stay fp32, so onnxruntime fuses each into one MatMulIntegerToFloat; True
    # requantises every output (QLinearMatMul + Q/DQ pairs): a second rounding and extra passes
    quantize_outputs: bool = False
    # True = only MatMuls with a constant (weight) operand; the attention-score MatMuls (Q.K^T, P.V)
    # stay fp32: it barely moved the int8 scores' agreement with fp32, not worth their speed
    weight_matmuls_only: bool = False
    # node-name patterns (regex, searched) that stay fp32; () = none
    fp32_nodes: tuple[str, ...] = ()
    # encoder layers (negative = from the end) that fp32_nodes apply to (() = every layer); with
    # no fp32_nodes, these whole layers stay fp32
    fp32_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.calibration not in _METHODS:
            raise ValueError(f"calibration must be one of {sorted(_METHODS)}, got {self.calibration!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")

    def describe(self, op_types: Sequence[str] | None = None) -> str:
        """One line for the manifest's int8.method, e.g. 'static QDQ, percentile 99.999, per-channel'.

        ``op_types``: the op types quantised in a given graph (`quantized_op_types`); default the recipe's."""
        op_types = self.op_types if op_types is None else op_types
        parts = [
            "static QDQ",
            self.calibration + (f" {self.percentile}" if self.calibration == "percentile" else ""),
        ]
        parts.append("per-channel weights" if self.per_channel else "per-tensor weights")
        if not self.quantize_outputs:
            parts.append("fp32 outputs")
        parts.append("ops " + "+".join(op_types) + (" (weights only)" if self.weight_matmuls_only else ""))
        if self.fp32_nodes or self.fp32_layers:
            where = " in layers " + ",".join(str(i) for i in self.fp32_layers) if self.fp32_layers else ""
            every = "all " + " and ".join(f"{op}s" for op in op_types)  # "all MatMuls" for the default
            parts.append("fp32: " + (" | ".join(self.fp32_nodes) or every) + where)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def calibration_key(self, op_types: Sequence[str] | None = None) -> str:
        """File name of the activation ranges this recipe needs (shared by recipes that differ only in
        fp32 nodes); ``op_types`` as in `describe`: the ranges calibrated are those of the quantised ops."""
        op_types = self.op_types if op_types is None else op_types
        key = f"{self.calibration}-{self.percentile}-{'+'.join(op_types)}"
        return f"ranges-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


# Tried in order by the export until one passes the gate: fastest first; then the last layer's FFN
# output MatMul in fp32; then every FFN output MatMul in fp32 (slowest, most accurate). The FFN output
# projection by family: BERT/RoBERTa/DeBERTa-v2 `layer.N/output/dense`, Llama/Qwen2/Mistral
# `layers.N/mlp/down_proj`, ModernBERT `layers.N/mlp/Wo`. In a family it does not name (GPT-2's is
# `h.N/mlp/c_proj`, a Gemm quantised with the MatMuls) the three recipes are the same graph.
FFN_OUTPUT = r"(layer\.\d+/output/dense|layers\.\d+/mlp/(down_proj|Wo))/"
DEFAULT_RECIPES: tuple[QuantRecipe, ...] = (
    QuantRecipe(),
    QuantRecipe(fp32_nodes=(FFN_OUTPUT,), fp32_layers=(-1,)),
    QuantRecipe(fp32_nodes=(FFN_OUTPUT,)),
)


class BatchReader(CalibrationDataReader):
    """Feeds calibration batches one at a time (onnxruntime's strided mode) so that batches of
    different sequence lengths never have to be stacked, and memory stays at one batch's activations.
    Each batch handed out ticks ``bar`` (the calibration phase's progress)."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]], bar: tqdm | None = None) -> None:
        self._batches = list(batches)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)
        self._bar = bar

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        if batch is not None and self._bar is not None:
            self._bar.update(1)
        return batch

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self._batches[start_index:end_index])


def layer_gemms(model: onnx.ModelProto) -> list[str]:
    """Names of the Gemm nodes inside numbered transformer layers: the linear layers of a family that
    exports them as Gemm (GPT-2's Conv1D is ``addmm``). A Gemm outside the layers reads one pooled
    vector per row (BERT's pooler and classifier, RoBERTa's classification head): not in this list."""
    return [n.name for n in model.graph.node if n.op_type == "Gemm" and _LAYER.search(n.name)]


def quantized_op_types(model: onnx.ModelProto, recipe: QuantRecipe) -> tuple[str, ...]:
    """The op types the quantiser is given for ``model``: ``recipe.op_types``, plus "Gemm" when the
    recipe quantises MatMuls and the graph's transformer layers are Gemms.

    Why: a recipe that quantises MatMuls means "quantise the linear layers"; GPT-2's are Gemms and
    would otherwise stay fp32, the int8 graph little more than fp32 weights. A graph whose layers are
    MatMul (+ Add), as BERT/MiniLM, Llama, Qwen2 export them, gets exactly ``recipe.op_types``, so its
    quantisation (and the recipe's description and calibration key) is what it was."""
    ops = recipe.op_types
    if "MatMul" in ops and "Gemm" not in ops and layer_gemms(model):
        return (*ops, "Gemm")
    return ops


def fp32_node_names(model: onnx.ModelProto, recipe: QuantRecipe) -> list[str]:
    """Names of the nodes of the quantised op types (`quantized_op_types`) that the recipe keeps in fp32.

    The recipe's rules (``fp32_nodes``, ``fp32_layers``, ``weight_matmuls_only``) apply to a layer's
    Gemms as to its MatMuls. Gemms outside the transformer layers (a pooler, a classifier head) are
    always kept fp32, as they are in a graph whose layers are MatMuls (where Gemm is not quantised)."""
    candidates = [n for n in model.graph.node if n.op_type in quantized_op_types(model, recipe)]
    weights = {init.name for init in model.graph.initializer}
    weights |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    activation_matmuls = [  # no constant operand: attention's Q.K^T and P.V
        n.name
        for n in candidates
        if n.op_type in ("MatMul", "Gemm") and not any(i in weights for i in n.input)
    ]
    outside_layers = [n.name for n in candidates if n.op_type == "Gemm" and not _LAYER.search(n.name)]
    layers = sorted({int(m.group(1)) for n in candidates if (m := _LAYER.search(n.name))})
    chosen_layers = {layers[i] for i in recipe.fp32_layers if -len(layers) <= i < len(layers)}
    patterns = [re.compile(p) for p in recipe.fp32_nodes]
    names = []
    for node in candidates:
        match = _LAYER.search(node.name)
        in_layer = match is not None and int(match.group(1)) in chosen_layers
        if recipe.fp32_layers and not in_layer:
            continue
        if not patterns or any(p.search(node.name) for p in patterns):
            names.append(node.name)
    names = names if (patterns or recipe.fp32_layers) else []
    if recipe.weight_matmuls_only:  # onnxruntime's MatMulConstBOnly is ignored by the QDQ quantiser
        names += [name for name in activation_matmuls if name not in names]
    return names + [name for name in outside_layers if name not in names]


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration_batches: Sequence[dict[str, np.ndarray]],
    recipe: QuantRecipe,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> str:
    """Write the statically quantised graph to ``out_path``; return the recipe's description for this
    graph (naming the op types quantised in it).

    ``calibration_batches`` are padded model inputs (only the graph's inputs are read); use
    length-sorted batches so that few padding positions enter the activation statistics.
    ``cache_dir`` keeps the calibrated activation ranges, so recipes that differ only in which nodes
    stay fp32 calibrate once (calibration is most of the time a quantisation takes). ``progress``
    shows the calibration batches as a phase (not when the ranges come from the cache).
    """
    if not calibration_batches:
        raise ValueError("static quantisation needs at least one calibration batch")
    with tempfile.TemporaryDirectory(prefix="rlhf-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # constant folding + shape inference so the quantiser sees every tensor's type; BERT's
        # dynamic-shape mask arithmetic defeats symbolic shape inference, which is optional
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        graph_inputs = {i.name for i in model.graph.input}
        batches = [{k: v for k, v in b.items() if k in graph_inputs} for b in calibration_batches]
        op_types = quantized_op_types(model, recipe)
        excluded = fp32_node_names(model, recipe)
        gemms = {n.name for n in model.graph.node if n.op_type == "Gemm" and n.name not in excluded}
        if "Gemm" in op_types and _own_gemm_biases(model, gemms):
            onnx.save(model, str(prepared))
        cache = None if cache_dir is None else cache_dir / recipe.calibration_key(op_types)
        calibrating = cache is None or not cache.is_file()  # else the ranges come from the cache
        bar = (
            progress.phase("int8 calibration", len(batches))
            if progress is not None and calibrating
            else contextlib.nullcontext()
        )
        with bar as ticks, contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints per batch
            quantize_static(
                str(prepared),
                str(out_path),
                BatchReader(batches, ticks),
                quant_format=QuantFormat.QDQ,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=excluded,
                calibrate_method=_METHODS[recipe.calibration],
                extra_options={
                    "CalibStridedMinMax": 1,
                    "CalibPercentile": recipe.percentile,
                    "OpTypesToExcludeOutputQuantization": [] if recipe.quantize_outputs else list(op_types),
                },
                calibration_cache_path=cache,
            )
    return recipe.describe(op_types)


def _own_gemm_biases(model: onnx.ModelProto, gemms: set[str]) -> bool:
    """Give each Gemm in ``gemms`` its own copy of a bias initializer another node also reads; return
    whether any was copied.

    Why: the exporter and the pre-processing share initializers of equal values (a random model's zero
    biases, shared with its LayerNorms' zero biases), and onnxruntime's QDQ quantiser replaces a Gemm's
    bias by an int32 DequantizeLinear under the same name, so every other reader (a LayerNorm, meant to
    stay fp32) would read the bias rounded to that Gemm's scale. Gemms that share a bias only with
    each other, onnxruntime separates itself."""
    initializers = {init.name: init for init in model.graph.initializer}
    readers = Counter(name for node in model.graph.node for name in node.input)
    copied = False
    for node in model.graph.node:
        if node.name not in gemms or len(node.input) < 3:
            continue
        bias = node.input[2]
        if bias in initializers and readers[bias] > 1:
            own = onnx.TensorProto()
            own.CopyFrom(initializers[bias])
            own.name = f"{node.name}/bias"
            model.graph.initializer.append(own)
            readers[bias] -= 1
            node.input[2] = own.name
            copied = True
    return copied
