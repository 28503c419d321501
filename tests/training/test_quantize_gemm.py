"""int8 of graphs whose linear layers are Gemm (GPT-2's Conv1D) next to graphs whose layers are MatMul
(MiniLM/BERT): the layers' Gemms are quantised like the MatMuls, a Gemm outside the layers (pooler,
classifier) stays fp32, and a MatMul graph is quantised exactly as before (`quantize.quantized_op_types`).

    pytest tests/training/test_quantize_gemm.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from service.app import create_app
from service.bundle import MODEL_FILES, load_bundle
from service.encoding import pad_batch
from service.onnx_scoring import make_session, run_scores, score_encoded
from tests.service.conftest import settings_for
from tests.training.decoder_helpers import smollm_tokenizer_dir
from tests.training.test_import_rm import PAIRS, SMALL, make_checkpoint
from training.reward.export.config import ImportConfig
from training.reward.export.import_rm import import_checkpoint
from training.reward.export.quantize import (
    DEFAULT_RECIPES,
    QuantRecipe,
    fp32_node_names,
    layer_gemms,
    quantize_int8,
    quantized_op_types,
)

LINEAR = ("MatMul", "Gemm")


def producers(graph: onnx.GraphProto) -> dict[str, str]:
    """tensor name -> op type of the node that writes it."""
    return {out: node.op_type for node in graph.node for out in node.output}


def quantised_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the MatMul/Gemm nodes of a QDQ graph that read a DequantizeLinear output (run in int8)."""
    made_by = producers(graph)
    return sorted(
        n.name
        for n in graph.node
        if n.op_type in LINEAR and any(made_by.get(i) == "DequantizeLinear" for i in n.input)
    )


def linear_nodes(graph: onnx.GraphProto, op_type: str) -> list[str]:
    return sorted(n.name for n in graph.node if n.op_type == op_type)


def random_batches(names: list[str], vocab: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    batches = []
    for length in range(3, 9):
        ids = rng.integers(5, vocab, size=(4, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[0, -2:] = 0  # a padded row
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        batches.append({k: v for k, v in batch.items() if k in names})
    return batches


# ---- a MiniLM-shaped graph (BERT: MatMul + Add layers, Gemm pooler and classifier) is unchanged ------------
@pytest.fixture(scope="module")
def bert_graph(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.reward.export.onnx_graph import export_onnx
    from training.reward.model import accepted_input_names, load_reward_model

    model = load_reward_model(str(tiny_model)).eval()
    names = accepted_input_names(model)
    path = tmp_path_factory.mktemp("bert-graph") / "fp32.onnx"
    export_onnx(model, names, random_batches(names, 1000)[0], path, opset=17)
    return path


def test_a_matmul_graph_quantises_its_matmuls_only_with_the_keys_it_always_had(
    bert_graph: Path, tmp_path: Path
) -> None:
    """The strings below are the manifest's int8.method and the ranges' cache key of MiniLM bundles
    written before Gemm layers were quantised: they must not move."""
    graph = onnx.load(str(bert_graph))
    assert layer_gemms(graph) == []  # its Gemms (pooler, classifier) are outside the layers
    assert linear_nodes(graph.graph, "Gemm") == ["/model/bert/pooler/dense/Gemm", "/model/classifier/Gemm"]
    names = [i.name for i in graph.graph.input]
    for number, recipe in enumerate(DEFAULT_RECIPES):
        assert quantized_op_types(graph, recipe) == ("MatMul",)
        out = tmp_path / f"int8-{number}.onnx"
        method = quantize_int8(bert_graph, out, random_batches(names, 1000), recipe)
        assert method == recipe.describe() and recipe.calibration_key() == "ranges-2e013dd171c55ae8.json"
        expected = sorted(set(linear_nodes(graph.graph, "MatMul")) - set(fp32_node_names(graph, recipe)))
        assert quantised_nodes(onnx.load(str(out)).graph) == expected  # every MatMul not kept fp32, no Gemm
    assert DEFAULT_RECIPES[0].describe() == (
        "static QDQ, percentile 99.999, per-channel weights, fp32 outputs, ops MatMul"
    )
    assert QuantRecipe(fp32_layers=(0,)).describe().endswith("fp32: all MatMuls in layers 0")


# ---- the rule on a graph built here: a layer Gemm, a head Gemm, a bias shared with an fp32 node ----------
def gemm_graph(path: Path) -> Path:
    """x [n, 8] -> layer Gemm (bias b) -> Add(b) -> Relu -> classifier Gemm -> [n, 1]; the layer Gemm's
    bias is the same initializer the fp32 Add reads, as the exporter shares equal tensors."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.full(8, 0.3, dtype=np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(8, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b"], ["h"], name="/model/transformer/h.0/mlp/c_fc/Gemm"),
        helper.make_node("Add", ["h", "b"], ["h2"], name="/model/transformer/h.0/Add"),
        helper.make_node("Relu", ["h2"], ["r"], name="/model/transformer/h.0/Relu"),
        helper.make_node("Gemm", ["r", "w2"], ["score"], name="/model/classifier/Gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_layer_gemms_are_quantised_and_a_head_gemm_and_shared_bias_stay_fp32(tmp_path: Path) -> None:
    fp32 = gemm_graph(tmp_path / "fp32.onnx")
    model = onnx.load(str(fp32))
    recipe = DEFAULT_RECIPES[0]
    assert layer_gemms(model) == ["/model/transformer/h.0/mlp/c_fc/Gemm"]
    assert quantized_op_types(model, recipe) == ("MatMul", "Gemm")
    assert fp32_node_names(model, recipe) == ["/model/classifier/Gemm"]
    # asked for Gemm explicitly, the head still stays fp32
    assert fp32_node_names(model, QuantRecipe(op_types=("MatMul", "Gemm"))) == ["/model/classifier/Gemm"]
    rng = np.random.default_rng(2)
    batches = [{"x": rng.normal(size=(4, 8)).astype(np.float32)} for _ in range(4)]
    out = tmp_path / "int8.onnx"
    assert "ops MatMul+Gemm" in quantize_int8(fp32, out, batches, recipe)
    graph = onnx.load(str(out)).graph
    assert quantised_nodes(graph) == ["/model/transformer/h.0/mlp/c_fc/Gemm"]
    made_by, initializers = producers(graph), {i.name: i for i in graph.initializer}
    add = next(n for n in graph.node if n.op_type == "Add")
    assert made_by.get(add.input[1]) is None, "the fp32 Add reads the Gemm's quantised bias"
    np.testing.assert_array_equal(
        numpy_helper.to_array(initializers[add.input[1]]), np.full(8, 0.3, np.float32)
    )
    x = batches[0]
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, x)[0]
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.abs(int8 - reference).max() < 0.05 * np.abs(reference).max()  # quantised, still the function


# ---- GPT-2 through `import-rm`: its Conv1D Gemms run in int8, the bundle serves -------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpt2-int8")


@pytest.fixture(scope="module")
def gpt2(root: Path) -> Path:
    return make_checkpoint(root / "gpt2", "gpt2", smollm_tokenizer_dir(root / "smollm-tokenizer"))


@pytest.fixture(scope="module")
def gpt2_bundle(gpt2: Path, root: Path) -> Path:
    """An int8 drop allowance of 100 points: the accuracy rule cannot refuse, so int8 ships exactly when
    the graph is batch-independent (the random tiny model is not the subject of the accuracy gate)."""
    config = ImportConfig(**SMALL)  # type: ignore[arg-type]
    return import_checkpoint(gpt2, root / "bundle", config).bundle_dir


def test_gpt2_int8_quantises_every_layer_gemm_and_fuses_them_into_integer_kernels(
    gpt2_bundle: Path, tmp_path: Path
) -> None:
    fp32 = onnx.load(str(gpt2_bundle / MODEL_FILES["fp32"])).graph
    gemms = linear_nodes(fp32, "Gemm")
    assert len(gemms) == 8 and all("/h." in name for name in gemms)  # c_attn, c_proj, c_fc, c_proj x 2 layers
    int8_path = gpt2_bundle / MODEL_FILES["int8"]
    graph = onnx.load(str(int8_path)).graph
    # the default recipe keeps nothing fp32: every Gemm and MatMul (attention, score head) runs in int8
    assert quantised_nodes(graph) == sorted([*gemms, *linear_nodes(fp32, "MatMul")])
    made_by = producers(graph)
    for node in (n for n in graph.node if n.op_type == "Gemm"):
        assert [made_by.get(i) for i in node.input[:3]] == ["DequantizeLinear"] * 3, node.name  # x, W, bias
    readers = {n.op_type for n in graph.node if any(made_by.get(i) == "DequantizeLinear" for i in n.input)}
    assert readers == set(LINEAR)  # LayerNorm, Add, ... read fp32 tensors only
    linear_outputs = {out for n in graph.node if n.op_type in LINEAR for out in n.output}
    assert not linear_outputs & {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    # onnxruntime runs them as integer kernels (the point: a Gemm fed by DequantizeLinear alone is fp32 math)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QGemm") == 8 and "Gemm" not in ops


def test_gpt2_int8_passed_its_gate_and_the_recipe_rules_reach_its_gemms(gpt2_bundle: Path) -> None:
    manifest = load_bundle(gpt2_bundle).manifest
    gate = manifest.model_extra["gate"]  # type: ignore[index]
    assert manifest.int8.shipped and manifest.precisions == ["fp32", "int8"]
    assert "ops MatMul+Gemm" in (manifest.int8.method or "")
    [attempt] = gate["int8_attempts"]
    assert attempt["failure"] is None and attempt["method"] == manifest.int8.method
    assert attempt["batch_diff"] <= 1e-4 and gate["batch_diff_int8"] <= 1e-4

    graph = onnx.load(str(gpt2_bundle / MODEL_FILES["fp32"]))
    layer0 = fp32_node_names(graph, QuantRecipe(fp32_layers=(0,)))
    assert len(layer0) == 6 and all("/h.0/" in name for name in layer0)  # 4 Gemms + 2 attention MatMuls
    assert sum(name.endswith("Gemm") for name in layer0) == 4
    c_proj = fp32_node_names(graph, QuantRecipe(fp32_nodes=(r"mlp/c_proj/",)))
    assert c_proj == [f"/model/transformer/h.{i}/mlp/c_proj/Gemm" for i in range(2)]
    attention = fp32_node_names(graph, QuantRecipe(weight_matmuls_only=True))
    assert len(attention) == 4 and all(name.endswith(("attn/MatMul", "attn/MatMul_1")) for name in attention)


def test_gpt2_int8_bundle_is_batch_independent_and_scores_through_the_service(gpt2_bundle: Path) -> None:
    bundle = load_bundle(gpt2_bundle)
    encoder, names = bundle.encoder(), bundle.manifest.input_names
    encoded = [encoder.encode_one(q, a) for q, a in PAIRS]
    session = make_session(bundle.model_path("int8"), threads=1)
    alone = np.array([run_scores(session, names, pad_batch([e], encoder.pad_token_id))[0] for e in encoded])
    mixed = run_scores(session, names, pad_batch(encoded, encoder.pad_token_id))
    reversed_ = run_scores(session, names, pad_batch(encoded[::-1], encoder.pad_token_id))[::-1]
    assert np.abs(alone - mixed).max() <= 1e-4 and np.abs(alone - reversed_).max() <= 1e-4
    fp32 = score_encoded(
        make_session(bundle.model_path("fp32"), threads=1), names, encoded, encoder.pad_token_id
    )
    assert np.abs(alone - fp32).max() > 0  # a different (quantised) graph
    assert np.std(fp32) > 1e-2  # the pairs really score differently

    items = [{"question": q, "answer": a} for q, a in PAIRS]
    with TestClient(create_app(settings_for(gpt2_bundle, precision="int8"))) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service did not become ready"
            time.sleep(0.02)
        response = client.post("/score", json={"pairs": items})
        assert response.status_code == 200, response.text
        one = client.post("/score", json={"pairs": items[1:2]}).json()["scores"][0]
    scores = np.array(response.json()["scores"])
    assert np.isfinite(scores).all()
    assert np.abs(scores - alone).max() <= 1e-4 and abs(one - alone[1]) <= 1e-4


def test_gpt2_int8_falls_back_to_fp32_with_the_reason_when_the_gate_refuses(gpt2: Path, root: Path) -> None:
    """A negative allowance makes the accuracy rule refuse every recipe: fp32 only, the reason recorded."""
    config = ImportConfig(**{**SMALL, "max_int8_drop": -100.0})  # type: ignore[arg-type]
    result = import_checkpoint(gpt2, root / "bundle-fallback", config)
    m, attempts = result.manifest, result.gate["int8_attempts"]
    assert not m.int8.shipped and m.precisions == ["fp32"]
    assert "points below fp32" in m.int8.reason and "all 3 recipes failed" in m.int8.reason
    assert not (result.bundle_dir / MODEL_FILES["int8"]).exists()
    assert len(attempts) == 3 and all("ops MatMul+Gemm" in a["method"] for a in attempts)
    assert all(a["batch_diff"] <= 1e-4 for a in attempts)
