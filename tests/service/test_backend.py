"""The onnxruntime backend and the load-time checks: inputs, output shapes, non-finite scores, canary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.backend import BackendLoadError, OnnxBackend
from service.errors import InferenceFailed
from service.model import ModelLoadError, load_model
from tests.bundle_factory import INPUT_NAMES, make_tiny_bundle, tiny_graph

BATCH = {
    "input_ids": np.array([[101, 2000, 102, 0], [101, 2001, 2002, 102]], np.int64),
    "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int64),
    "token_type_ids": np.zeros((2, 4), np.int64),
}


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_scores_are_float64_of_batch_length_for_1d_and_2d_outputs(tmp_path: Path) -> None:
    flat = OnnxBackend(save(tiny_graph(0), tmp_path / "a.onnx"), INPUT_NAMES, 1).score(BATCH)
    column = OnnxBackend(save(tiny_graph(0, output_2d=True), tmp_path / "b.onnx"), INPUT_NAMES, 1).score(
        BATCH
    )
    assert flat.dtype == np.float64 and flat.shape == (2,)
    np.testing.assert_array_equal(flat, column)


def test_inputs_must_match_the_manifest(tmp_path: Path) -> None:
    with pytest.raises(BackendLoadError, match="takes inputs"):
        OnnxBackend(save(tiny_graph(0), tmp_path / "a.onnx"), ["input_ids", "attention_mask"], 1)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(BackendLoadError, match="cannot load"):
        OnnxBackend(tmp_path / "junk.onnx", INPUT_NAMES, 1)


def nan_graph() -> onnx.ModelProto:
    """score = ReduceSum(input_ids) * NaN: always non-finite."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in INPUT_NAMES]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "nan"], ["score"]),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(np.nan, np.float32), "nan")]  # fmt: skip
    out = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    graph = helper.make_graph(nodes, "nan", inputs, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_non_finite_scores_are_an_error_never_a_result(tmp_path: Path) -> None:
    backend = OnnxBackend(save(nan_graph(), tmp_path / "nan.onnx"), INPUT_NAMES, 1)
    with pytest.raises(InferenceFailed, match="non-finite"):
        backend.score(BATCH)


def batch_dependent_graph() -> onnx.ModelProto:
    """The tiny graph, then minus the batch mean: a score that depends on its batch-mates."""
    model = tiny_graph(0)
    graph = model.graph
    graph.node[-1].output[0] = "raw"
    graph.node.extend([
        helper.make_node("ReduceMean", ["raw"], ["batch_mean"], keepdims=1),
        helper.make_node("Sub", ["raw", "batch_mean"], ["score"]),
    ])  # fmt: skip
    return model


def test_canary_refuses_nan_and_batch_dependent_graphs(tmp_path: Path) -> None:
    for name, graph in [("nan", nan_graph()), ("mixing", batch_dependent_graph())]:
        bundle = make_tiny_bundle(tmp_path / name, with_int8=False)
        save(graph, bundle / "model.onnx")
        from service.bundle import read_manifest, write_manifest

        fields = read_manifest(bundle).model_dump(exclude={"format", "format_version", "files"})
        write_manifest(bundle, fields)
        with pytest.raises(ModelLoadError, match="non-finite" if name == "nan" else "batch-independent"):
            load_model(bundle, "auto", 1)


def test_load_model_picks_int8_by_default(tmp_path: Path) -> None:
    both = load_model(make_tiny_bundle(tmp_path / "both"), "auto", 1)
    only = load_model(make_tiny_bundle(tmp_path / "only", with_int8=False), "auto", 1)
    assert both.precision == "int8" and only.precision == "fp32"
    assert load_model(tmp_path / "both", "fp32", 1).precision == "fp32"
    with pytest.raises(ModelLoadError, match="no int8 graph"):
        load_model(tmp_path / "only", "int8", 1)
