"""`rlhf export --fp16`: a tiny real run -> fp16 graph, gated against fp32 -> bundle -> served on CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from cli.main import app
from service.app import create_app
from service.bundle import MODEL_FILES, BundleError, load_bundle
from service.encoding import EncodedPair
from service.model import ModelLoadError, load_model
from service.onnx_scoring import make_session, score_encoded
from tests.service.conftest import LiveServer, settings_for
from training.reward.batching import encode_pairs
from training.reward.data import load_run_split
from training.reward.export import ExportConfig, export_bundle
from training.reward.export.fp16 import (
    KEEP_FP32_OPS,
    Fp16ConversionError,
    activation_peak,
    convert_to_fp16,
    export_fp16,
    fp16_parity_failure,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FP16 = MODEL_FILES["fp16"]


@pytest.fixture(scope="module")
def bundle_dir(run_dir: Path) -> Path:
    out = run_dir.parent / "bundles" / "tiny-fp16"
    export_bundle(run_dir, out, ExportConfig(version="1", fp16=True, int8=False))
    return out


def eval_sequences(run_dir: Path, bundle_dir: Path) -> list:
    _, val = load_run_split(run_dir)
    chosen, rejected = encode_pairs(load_bundle(bundle_dir).encoder(), val)
    return [*chosen, *rejected]


def test_the_bundle_ships_an_fp16_graph_that_passed_its_gate(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert m.precisions == ["fp32", "fp16"] and FP16 in m.files  # sha256-verified like every graph
    assert bundle.default_precision() == "fp32"  # on CPU fp16 is never the default
    assert bundle.default_precision("cuda") == "fp16"
    gate = m.model_extra["gate"]["fp16"]  # type: ignore[index]
    assert gate["shipped"] and gate["reason"].startswith("passed the gate")
    assert 0.0 < gate["max_diff_std"] <= gate["tolerance_std"] == 0.01  # fp16 rounds: never exactly 0
    assert gate["batch_diff"] <= 1e-4
    assert 0.0 < gate["activation_peak"] < 65504 and gate["activation_peak_tensor"]
    assert gate["keep_fp32_ops"] == list(KEEP_FP32_OPS)
    assert gate["accuracy"] == pytest.approx(gate["accuracy_fp32"], abs=0.1)
    assert m.export_config["fp16"] is True and m.export_config["fp16_tolerance"] == 0.01


def test_the_fp16_graph_keeps_the_io_types_and_softmax_in_fp32(bundle_dir: Path) -> None:
    fp32 = onnx.load(str(bundle_dir / MODEL_FILES["fp32"]))
    fp16 = onnx.shape_inference.infer_shapes(onnx.load(str(bundle_dir / FP16)))

    def io(model: onnx.ModelProto) -> list[tuple[str, int]]:
        values = [*model.graph.input, *model.graph.output]
        return [(v.name, v.type.tensor_type.elem_type) for v in values]

    assert io(fp16) == io(fp32)  # int64 ids in, float32 scores out: the service needs no change
    weights = {init.data_type for init in fp16.graph.initializer if len(init.dims) == 2}
    assert TensorProto.FLOAT16 in weights  # the MatMul weights did convert
    types = {v.name: v.type.tensor_type.elem_type for v in fp16.graph.value_info}
    softmax_inputs = [node.input[0] for node in fp16.graph.node if node.op_type == "Softmax"]
    assert softmax_inputs and {types[name] for name in softmax_inputs} == {TensorProto.FLOAT}


def test_it_is_served_on_cpu_within_the_tolerance_of_fp32(run_dir: Path, bundle_dir: Path) -> None:
    model = load_model(bundle_dir, "fp16", 1)  # the canary: finite, batch-independent
    assert model.precision == "fp16" and model.provider == "CPUExecutionProvider"
    bundle = model.bundle
    encoded = eval_sequences(run_dir, bundle_dir)
    names, pad = bundle.manifest.input_names, bundle.manifest.pad_token_id
    fp32 = score_encoded(make_session(bundle.model_path("fp32"), 1), names, encoded, pad)
    fp16 = score_encoded(make_session(bundle.model_path("fp16"), 1), names, encoded, pad)
    assert np.isfinite(fp16).all()
    assert np.max(np.abs(fp16 - fp32)) <= 0.01 * bundle.manifest.score.std


def test_the_service_serves_it_when_asked(bundle_dir: Path) -> None:
    pairs = [{"question": "How do I boil an egg?", "answer": "Simmer it for eight minutes."}] * 3
    with LiveServer(create_app(settings_for(bundle_dir, precision="fp16"))) as server:
        (summary,) = httpx.get(f"{server.url}/v1/models").json()["data"]
        scored = httpx.post(f"{server.url}/score", json={"pairs": pairs}).json()
    assert summary["precision"] == "fp16" and summary["precisions"] == ["fp32", "fp16"]
    assert len(set(scored["scores"])) == 1 and np.isfinite(scored["scores"]).all()


def test_a_graph_outside_the_tolerance_does_not_ship(bundle_dir: Path, run_dir: Path, tmp_path: Path) -> None:
    bundle = load_bundle(bundle_dir)
    fp32_path, out = bundle.model_path("fp32"), tmp_path / FP16
    session = make_session(fp32_path, 1)
    strict = ExportConfig(fp16_tolerance=0.0)  # fp16 always rounds something: nothing can pass
    info = export_fp16(
        session, fp32_path, out, bundle.manifest.input_names, eval_sequences(run_dir, bundle_dir),
        bundle.manifest.pad_token_id, bundle.manifest.score.std, strict,
    )  # fmt: skip
    assert not info["shipped"] and not out.exists()
    assert "differ from fp32 by up to" in info["reason"] and "tolerance 0" in info["reason"]


def test_an_unconvertible_graph_is_reported_not_raised(tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(Fp16ConversionError, match="cannot convert"):
        convert_to_fp16(junk, tmp_path / FP16)
    info = export_fp16(None, junk, tmp_path / FP16, [], [], 0, 1.0, ExportConfig())
    assert not info["shipped"] and "cannot convert" in info["reason"] and not (tmp_path / FP16).exists()


def overflowing_graph(path: Path) -> Path:
    """score = 300 * 300 * (sum of the masked ids): fine in fp32, beyond fp16's 65504 (inf) once
    converted, because Mul is not on the fp32 block list."""
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids", "axis"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "big"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "big"], ["score"]),
    ]
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask")
    ]
    graph = helper.make_graph(
        nodes, "overflow", ints, [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b"])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis"),
         numpy_helper.from_array(np.array(300.0, np.float32), "big")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_activation_beyond_fp16_does_not_ship(tmp_path: Path) -> None:
    """On a CPU onnxruntime runs this graph's fp16 Muls in fp32 (no fp16 kernels, casts dropped), so its
    output stays finite there: only the activation check sees what a GPU would turn into inf."""
    fp32_path = overflowing_graph(tmp_path / "model.onnx")
    rows = [EncodedPair(list(range(1, n + 1)), [0] * n, False, n) for n in (3, 5, 8, 13)]
    names = ["input_ids", "attention_mask"]
    info = export_fp16(
        make_session(fp32_path, 1), fp32_path, tmp_path / FP16, names, rows, 0, 1.0, ExportConfig()
    )
    assert not info["shipped"] and not (tmp_path / FP16).exists()
    assert info["reason"].startswith("an activation overflows fp16: 'score' reaches")
    # 300 * 300 * (1 + 2 + 3): the larger sums pass FILL and read as masking fills, which do not count
    assert info["activation_peak"] == 6 * 300 * 300 and info["activation_peak_tensor"] == "score"
    assert info["max_diff_std"] == 0.0  # the CPU's fp16 run agrees with fp32: it never rounded
    json.dumps(info, allow_nan=False)  # the manifest's gate record is standard JSON


def test_masking_fills_are_not_activations(tmp_path: Path) -> None:
    """filled = ids where the mask is 1, float32's minimum elsewhere (how HF masks scores)."""
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Where", ["keep", "ids", "lowest"], ["filled"]),
        helper.make_node("ReduceMax", ["filled"], ["score"], axes=[1], keepdims=0),
    ]
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask")
    ]
    lowest = numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest")
    out = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b"])]
    graph = helper.make_graph(nodes, "fill", ints, out, [lowest])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    rows = [
        EncodedPair([7, 9, 11], [0, 0, 0], False, 3),
        EncodedPair([5], [0], False, 1),
    ]  # padded in a batch
    assert activation_peak(path, ["input_ids", "attention_mask"], rows, 0, 8, 1) == ("ids", 11.0)


def test_parity_failure_names_overflow_and_distance() -> None:
    assert fp16_parity_failure({"score": 0.004, "uncertainty": 0.002}, 0.01) is None
    assert "non-finite score" in (fp16_parity_failure({"score": float("nan")}, 0.01) or "")
    far = fp16_parity_failure({"score": 0.001, "length_score": 0.5}, 0.01) or ""
    assert "'length_score' values differ" in far and "0.5 train-set score stds" in far


def test_a_bundle_without_fp16_refuses_it_and_says_why(tmp_path: Path) -> None:
    from tests.bundle_factory import make_tiny_bundle

    plain = load_bundle(make_tiny_bundle(tmp_path / "rm"))
    with pytest.raises(BundleError, match=r"has no fp16 graph \(exported without --fp16"):
        plain.model_path("fp16")
    with pytest.raises(ModelLoadError, match="no fp16 graph"):
        load_model(plain.path, "fp16", 1)


def test_rlhf_export_has_the_fp16_options() -> None:
    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--fp16" in result.output and "--fp16-tolerance" in result.output
    refused = CliRunner().invoke(app, ["export", "runs/none", "--out", "x", "--fp16-tolerance", "-1"])
    assert refused.exit_code != 0 and "fp16_tolerance" in refused.output.replace("-", "_")
