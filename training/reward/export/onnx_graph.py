"""PyTorch -> ONNX: the fp32 graph of a reward model, and PyTorch scores to check it against.

    export_onnx(model, ["input_ids", "attention_mask", "token_type_ids"], sample_batch, path, opset=17)
    reference = torch_outputs(model, input_names, encoded, pad_token_id, batch_size=32)  # {name: [n]}

The graph takes the inputs in ``input_names`` order, each int64 [batch, sequence] with both axes
dynamic, and returns "score" [batch] (the scalar head's logit; with several quality heads their
mean), then "uncertainty" [batch] (std of the quality heads, only when there are several) and
"length_score" [batch] (only with a length head): the model's head layout decides (heads.py). A
plain one-head model exports exactly the graph it always did. The TorchScript-based
exporter (dynamo=False) is used: it handles the BERT family's attention-mask arithmetic with dynamic
shapes, and the export gate (export.py) proves the result matches PyTorch.

Why the graph is traced with transformers' *eager* attention (``attention="eager"``, the default)
whatever the model was trained with: the SDPA path (transformers' default) exports as
Softmax -> IsNaN -> Where(nan, 0, p) in every layer, guarding rows that are fully masked (which a
reward model never sees). Profiled in onnxruntime on the hh-rlhf length mix, those IsNaN + Where
passes over [batch, heads, seq, seq] were 23% of the int8 graph's time; the eager graph is plain
MatMul -> Mul -> Add(mask) -> Softmax -> MatMul, whose MatMuls the int8 quantiser turns into integer
kernels. Measured on the trained MiniLM head (384 hh-rlhf pairs, length-sorted batches of 32, graphs
timed interleaved in one run): int8 eager 1.17x the int8 SDPA graph at 1 thread (CPU time) and
1.10-1.20x at 2 threads on a loaded machine; fp32 eager 1.12x fp32 SDPA (int8 / fp32 still 1.86x);
scores within 1.1e-6 of PyTorch, batch-independent.
onnxruntime's transformer optimizer (fused MultiHeadAttention + SkipLayerNorm + EmbedLayerNorm) did
not help int8: its fused attention runs in fp32 and was slower than the quantised attention MatMuls
(1.08-1.11x over SDPA). Folding the 1/sqrt(d) scale into the query weights gained nothing measurable.
The switch is made on a copy, so the PyTorch reference of the gate is the model as trained.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from service.encoding import EncodedPair, pad_batch
from service.onnx_scoring import length_sorted_batches
from training.reward.model import head_outputs, layout_of
from training.reward.pooling import reward_logits


class HeadOutputs(torch.nn.Module):
    """The reward model with positional inputs (in ``input_names`` order) and the graph outputs of its
    head layout as a tuple of [batch] tensors: (score,) for a plain model, else (score, uncertainty?,
    length_score?)."""

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.layout = layout_of(model)  # type: ignore[arg-type]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.layout.output_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = reward_logits(self.model, **dict(zip(self.input_names, inputs, strict=True)))  # [b, K]
        return tuple(head_outputs(logits, self.layout).values())


# transformers attention implementations `export_onnx` accepts; "model" = whatever the model was loaded with
ATTENTION_CHOICES = ("eager", "sdpa", "model")


def export_onnx(
    model: torch.nn.Module,
    input_names: Sequence[str],
    sample: dict[str, np.ndarray],
    path: Path,
    opset: int,
    attention: str = "eager",
) -> None:
    """TorchScript-based export (dynamo=False) with dynamic batch and sequence axes.

    ``attention`` is the transformers attention implementation traced into the graph (see the module
    docstring for why "eager"); ``model`` itself is left unchanged."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}; got {attention!r}")
    source = model
    config = getattr(model, "config", None)
    if attention != "model" and getattr(config, "_attn_implementation", attention) != attention:
        source = copy.deepcopy(model)
        source.set_attn_implementation(attention)  # type: ignore[operator]
    wrapper = HeadOutputs(source, input_names).eval()
    outputs = list(wrapper.output_names)
    args = tuple(torch.from_numpy(sample[name]) for name in input_names)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=outputs,
            dynamic_axes={**axes, **{name: {0: "batch"} for name in outputs}},
        )
    model.eval()  # export restores the wrapper's mode; the model must stay in eval for the gate


@torch.no_grad()
def torch_outputs(
    model: torch.nn.Module,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int,
    bar: tqdm | None = None,
) -> dict[str, np.ndarray]:
    """PyTorch values of every graph output, {name: [n] float64}, over the same length-sorted padded
    batches onnxruntime sees; each batch ticks ``bar``."""
    wrapper = HeadOutputs(model, input_names).eval()
    values = {name: np.empty(len(encoded), dtype=np.float64) for name in wrapper.output_names}
    for idx in length_sorted_batches([len(e) for e in encoded], batch_size):
        batch = pad_batch([encoded[i] for i in idx], pad_token_id)
        outputs = wrapper(*(torch.from_numpy(batch[n]) for n in input_names))
        for name, value in zip(wrapper.output_names, outputs, strict=True):
            values[name][idx] = value.double().numpy()
        if bar is not None:
            bar.update(1)
    return values


def torch_scores(
    model: torch.nn.Module,
    input_names: Sequence[str],
    encoded: Sequence[EncodedPair],
    pad_token_id: int,
    batch_size: int,
) -> np.ndarray:
    """PyTorch served scores [n] (the "score" output) over the batches onnxruntime sees."""
    return torch_outputs(model, input_names, encoded, pad_token_id, batch_size)["score"]
