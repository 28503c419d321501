"""`rlhf export`: a tiny real run -> gated ONNX bundle -> `load_bundle` -> scores that match PyTorch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from cli.main import app
from service.bundle import MODEL_FILES, BundleError, load_bundle
from service.encoding import PairEncoder, TruncationPolicy, pad_batch
from service.onnx_scoring import make_session, run_scores, score_encoded
from tests.training.reward_helpers import (
    MAX_LENGTH,
    MIN_QUESTION_TOKENS,
)
from training.reward.batching import encode_pairs
from training.reward.data import load_run_split
from training.reward.export import ExportConfig, export_bundle
from training.reward.export import build as export_module
from training.reward.export.gate import (
    BatchDependenceError,
    ExportError,
    ParityError,
    RunDirError,
    check_parity,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def bundle_dir(run_dir: Path) -> Path:
    # the tiny random model is not the subject of the accuracy gate here: let int8 ship
    out = run_dir.parent / "bundles" / "tiny"
    export_bundle(run_dir, out, ExportConfig(version="7", max_int8_drop=100.0))
    return out


def val_sequences(run_dir: Path, encoder: PairEncoder) -> list:
    _, val = load_run_split(run_dir)
    chosen, rejected = encode_pairs(encoder, val)
    return [*chosen, *rejected]


def test_bundle_is_verified_and_its_manifest_describes_the_run(run_dir: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    stats = json.loads((run_dir / "final" / "score_stats.json").read_text())
    _, val = load_run_split(run_dir)
    assert (m.name, m.version) == ("run", "7")
    assert m.precisions == ["fp32", "int8"] and m.int8.shipped and "static QDQ" in (m.int8.method or "")
    assert m.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert (m.max_length, m.truncation.min_question_tokens) == (MAX_LENGTH, MIN_QUESTION_TOKENS)
    assert (m.score.mean, m.score.std) == (stats["mean"], stats["std"])
    assert m.eval.pairs == len(val) and "validation split" in m.eval.dataset
    assert 0.0 <= m.eval.accuracy_fp32 <= 1.0 and m.eval.accuracy_int8 is not None
    assert m.training_config["max_length"] == MAX_LENGTH
    assert m.export_config["max_int8_drop"] == 100.0
    assert len(gate_attempts := m.model_extra["gate"]["int8_attempts"]) == 1  # type: ignore[index]
    assert gate_attempts[0]["failure"] is None and gate_attempts[0]["method"] == m.int8.method
    # every training pair calibrated int8 here (128 >= the split), so fidelity = the validation pairs
    assert gate_attempts[0]["fidelity_pairs"] == len(val)
    assert gate_attempts[0]["fidelity_accuracy_int8"] == gate_attempts[0]["accuracy"] == m.eval.accuracy_int8
    gate = m.model_extra["gate"]  # type: ignore[index]
    assert gate["max_abs_diff_onnx_torch"] <= 1e-3
    assert gate["batch_diff_fp32"] <= 1e-4 and gate["batch_diff_int8"] <= 1e-4
    assert not [p.name for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_fp32_graph_has_dynamic_axes_and_matches_pytorch(run_dir: Path, bundle_dir: Path) -> None:
    import torch

    from training.reward.model import load_reward_model

    graph = onnx.load(str(bundle_dir / MODEL_FILES["fp32"]))
    for value in graph.graph.input:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], value.name
    # the default reward model has an ODIN length head: its score plus the diagnostic length output
    assert [o.name for o in graph.graph.output] == ["score", "length_score"]
    assert graph.opset_import[0].version == 17

    bundle = load_bundle(bundle_dir)
    encoder = bundle.encoder()
    encoded = val_sequences(run_dir, encoder)
    batch = pad_batch(encoded, encoder.pad_token_id)  # one mixed-length batch, unsorted
    onnx_scores = run_scores(make_session(bundle.model_path("fp32")), bundle.manifest.input_names, batch)
    model = load_reward_model(str(run_dir / "final")).eval()
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits[:, 0].double().numpy()
    assert np.abs(onnx_scores - logits).max() <= 1e-3
    assert np.std(logits) > 1e-3  # the model really ranks pairs, so the comparison means something


def test_int8_graph_is_quantised_and_batch_independent(run_dir: Path, bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    ops = {n.op_type for n in onnx.load(str(bundle.model_path("int8"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ, not dynamic (DynamicQuantizeLinear)
    assert "DynamicQuantizeLinear" not in ops
    encoder = bundle.encoder()
    encoded = val_sequences(run_dir, encoder)
    names = bundle.manifest.input_names
    session = make_session(bundle.model_path("int8"))
    alone = np.array([run_scores(session, names, pad_batch([e], encoder.pad_token_id))[0] for e in encoded])
    in_batch = run_scores(session, names, pad_batch(encoded, encoder.pad_token_id))
    reversed_batch = run_scores(session, names, pad_batch(encoded[::-1], encoder.pad_token_id))[::-1]
    assert np.abs(alone - in_batch).max() <= 1e-4
    assert np.abs(alone - reversed_batch).max() <= 1e-4
    fp32 = score_encoded(make_session(bundle.model_path("fp32")), names, encoded, encoder.pad_token_id)
    assert np.abs(alone - fp32).max() > 0  # really a different (quantised) graph


def test_export_and_service_and_training_encode_identically(run_dir: Path, bundle_dir: Path) -> None:
    from training.reward.config import RewardConfig
    from training.reward.model import tokenizer_json_path

    config = RewardConfig.load(run_dir / "final" / "reward_config.json")
    training_encoder = PairEncoder.from_file(
        tokenizer_json_path(config.base_model),
        TruncationPolicy(config.max_length, config.min_question_tokens),
    )
    _, val = load_run_split(run_dir)
    train_c, train_r = encode_pairs(training_encoder, val)  # the training loop's tokenizer (base model)
    export_encoder = PairEncoder.from_file(
        run_dir / "final" / "tokenizer.json", TruncationPolicy(config.max_length, config.min_question_tokens)
    )
    export_c, export_r = encode_pairs(export_encoder, val)  # the export gate's (the run's copy)
    serve_c, serve_r = encode_pairs(load_bundle(bundle_dir).encoder(), val)  # the bundle's, as served
    assert train_c == export_c == serve_c and train_r == export_r == serve_r
    assert any(e.truncated for e in train_c + train_r)  # the truncation policy is exercised


def test_failed_int8_gate_ships_fp32_only_with_the_reason(run_dir: Path) -> None:
    out = run_dir.parent / "bundles" / "fp32-only"
    result = export_bundle(run_dir, out, ExportConfig(max_int8_drop=-100.0, calibration_pairs=8))
    bundle = load_bundle(out)
    assert not (out / MODEL_FILES["int8"]).exists()
    assert bundle.manifest.precisions == ["fp32"] and bundle.default_precision() == "fp32"
    assert not result.manifest.int8.shipped
    assert (
        "points below fp32" in result.manifest.int8.reason and "allowed: -100" in result.manifest.int8.reason
    )
    assert "all 3 recipes failed" in result.manifest.int8.reason
    assert [a["failure"] is not None for a in result.gate["int8_attempts"]] == [True, True, True]
    # int8 is compared with fp32 on the validation pairs plus every training pair not calibrated on
    train, val = load_run_split(run_dir)
    fidelity_pairs = len(val) + len(train) - 8
    assert f"on {fidelity_pairs} pairs" in result.manifest.int8.reason
    for attempt in result.gate["int8_attempts"]:
        assert attempt["fidelity_pairs"] == fidelity_pairs
        assert 0.0 <= attempt["fidelity_accuracy_int8"] <= 1.0
        assert attempt["fidelity_accuracy_fp32"] == result.gate["int8_attempts"][0]["fidelity_accuracy_fp32"]
    assert result.manifest.eval.accuracy_int8 is not None
    with pytest.raises(BundleError, match="points below fp32"):
        bundle.model_path("int8")


def test_parity_failure_is_an_error_and_leaves_no_bundle(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_module.torch_outputs
    monkeypatch.setattr(
        export_module, "torch_outputs", lambda *a, **k: {n: v + 0.01 for n, v in real(*a, **k).items()}
    )
    out = run_dir.parent / "bundles" / "broken"
    with pytest.raises(ParityError, match=r"ONNX fp32 scores differ from PyTorch by up to 0\.01"):
        export_bundle(run_dir, out, ExportConfig(int8=False))
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".broken")]


def test_gate_checks_on_hand_made_numbers() -> None:
    assert check_parity(np.array([1.0, 2.0]), np.array([1.0005, 2.0]), 1e-3) == pytest.approx(5e-4)
    with pytest.raises(ParityError, match="1 of 2 sequences"):
        check_parity(np.array([1.0, 2.0]), np.array([1.0, 2.1]), 1e-3)
    with pytest.raises(ParityError):
        check_parity(np.array([1.0]), np.array([np.nan]), 1e-3)
    from training.reward.export.gate import check_batch_independence, int8_accuracy_failure

    with pytest.raises(BatchDependenceError, match="int8 graph is batch-dependent"):
        check_batch_independence("int8", 0.2, 1e-4)
    assert int8_accuracy_failure(0.70, 0.695, 1.0) is None
    assert "1.50 points below" in (int8_accuracy_failure(0.70, 0.685, 1.0) or "")


def test_existing_target_is_refused_unless_overwrite(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists; choose another --out or pass --overwrite"):
        export_bundle(run_dir, out, ExportConfig(int8=False))
    assert (out / "keep.txt").read_text() == "mine"


def test_not_a_run_directory_and_missing_data(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(RunDirError, match="is not a finished training run"):
        export_bundle(tmp_path, tmp_path / "out")
    moved = tmp_path / "moved"
    shutil.copytree(run_dir / "final", moved / "final")
    config = json.loads((moved / "final" / "reward_config.json").read_text())
    config["data"] = str(tmp_path / "gone.jsonl.gz")
    (moved / "final" / "reward_config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match=r"cannot re-create the run's data split: .*gone\.jsonl\.gz"):
        export_bundle(moved, tmp_path / "out")


def test_cli_export_no_int8_with_overwrite_then_eval(run_dir: Path) -> None:
    out = run_dir.parent / "bundles" / "cli"
    runner = CliRunner()
    for _ in range(2):  # the second run replaces the first atomically
        result = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--no-int8", "--overwrite"])
        assert result.exit_code == 0, result.output
    assert "int8 NOT shipped: disabled (--no-int8)" in result.output
    assert load_bundle(out).manifest.precisions == ["fp32"]
    refused = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--no-int8"])
    assert refused.exit_code == 1 and "already exists" in refused.output

    data = run_dir.parent / "pairs.jsonl.gz"
    result = runner.invoke(app, ["eval", "--bundle", str(out), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pairs"] == 64 and report["precision"] == "fp32" and report["truncated"] > 0


def test_every_export_option_has_help() -> None:
    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in (
        "--out",
        "--name",
        "--version",
        "--eval-pairs",
        "--calibration-pairs",
        "--no-int8",
        "--max-int8-drop",
        "--attention",
        "--overwrite",
    ):
        assert option in result.output


def test_recipes_select_the_documented_fp32_nodes(bundle_dir: Path) -> None:
    from training.reward.export.quantize import DEFAULT_RECIPES, QuantRecipe, fp32_node_names

    graph = onnx.load(str(bundle_dir / MODEL_FILES["fp32"]))
    assert fp32_node_names(graph, DEFAULT_RECIPES[0]) == []
    assert fp32_node_names(graph, DEFAULT_RECIPES[1]) == ["/model/bert/encoder/layer.1/output/dense/MatMul"]
    assert fp32_node_names(graph, DEFAULT_RECIPES[2]) == [
        f"/model/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(2)
    ]
    attention = fp32_node_names(graph, QuantRecipe(weight_matmuls_only=True))
    assert len(attention) == 4 and all("/attention/self/MatMul" in name for name in attention)
    whole_first_layer = fp32_node_names(graph, QuantRecipe(fp32_layers=(0,)))
    assert len(whole_first_layer) == 8 and all("layer.0/" in name for name in whole_first_layer)


def test_int8_matmul_outputs_stay_fp32(bundle_dir: Path) -> None:
    """Requantising MatMul outputs cost 3.5 accuracy points and most of the speed-up on MiniLM."""
    graph = onnx.load(str(bundle_dir / MODEL_FILES["int8"])).graph
    matmul_outputs = {out for n in graph.node if n.op_type == "MatMul" for out in n.output}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert matmul_outputs and not matmul_outputs & quantized


def test_graphs_trace_eager_attention_without_nan_guards(bundle_dir: Path) -> None:
    """SDPA's Softmax -> IsNaN -> Where guards were 23% of the int8 graph's time; the export traces eager."""
    assert load_bundle(bundle_dir).manifest.export_config["attention"] == "eager"
    for precision in ("fp32", "int8"):
        ops = {n.op_type for n in onnx.load(str(bundle_dir / MODEL_FILES[precision])).graph.node}
        assert "Softmax" in ops and "IsNaN" not in ops, precision


def test_export_attention_choice_keeps_scores_and_leaves_the_model_alone(
    run_dir: Path, tmp_path: Path
) -> None:
    import torch

    from training.reward.export.onnx_graph import export_onnx
    from training.reward.model import accepted_input_names, load_reward_model

    model = load_reward_model(str(run_dir / "final")).eval()
    trained_with = model.config._attn_implementation
    names = accepted_input_names(model)
    encoder = load_bundle_encoder(run_dir)
    encoded = val_sequences(run_dir, encoder)
    batch = pad_batch(encoded, encoder.pad_token_id)  # mixed lengths: padding is masked in every row
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(batch[k]) for k in names}).logits[:, 0].double().numpy()
    ops = {}
    for attention in ("eager", "sdpa"):
        path = tmp_path / f"{attention}.onnx"
        export_onnx(model, names, batch, path, opset=17, attention=attention)
        ops[attention] = {n.op_type for n in onnx.load(str(path)).graph.node}
        session = make_session(path)
        scores = run_scores(session, names, batch)
        assert np.abs(scores - reference).max() <= 1e-5, attention
        alone = [run_scores(session, names, pad_batch([e], encoder.pad_token_id))[0] for e in encoded]
        assert np.abs(np.array(alone) - scores).max() <= 1e-5, attention
    assert "IsNaN" in ops["sdpa"] and "IsNaN" not in ops["eager"]  # what the choice is about
    assert model.config._attn_implementation == trained_with  # the gate's reference is the trained model
    with pytest.raises(ValueError, match="attention must be one of"):
        export_onnx(model, names, batch, tmp_path / "bad.onnx", opset=17, attention="flash")


def test_cli_unknown_attention_is_a_clear_failure(run_dir: Path) -> None:
    out = run_dir.parent / "bundles" / "flash"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--attention", "flash"])
    assert result.exit_code == 1 and "cannot export with 'flash' attention" in result.output
    assert not out.exists()


def load_bundle_encoder(run_dir: Path) -> PairEncoder:
    from training.reward.config import RewardConfig

    config = RewardConfig.load(run_dir / "final" / "reward_config.json")
    policy = TruncationPolicy(config.max_length, config.min_question_tokens)
    return PairEncoder.from_file(run_dir / "final" / "tokenizer.json", policy)
