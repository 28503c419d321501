"""Reward heads: the column layout, the bootstrap, save/load, and the multi-output ONNX graph + gate."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from service.bundle import HeadsInfo
from service.encoding import PairEncoder, TruncationPolicy, pad_batch
from service.onnx_scoring import make_session, score_encoded
from tests.training.reward_helpers import MAX_LENGTH, MIN_QUESTION_TOKENS, make_tiny_base
from training.reward.data import load_pairs
from training.reward.heads import (
    HeadLayout,
    HeadLayoutError,
    bootstrap_weights,
    output_names_of,
    score_outputs,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_layout_columns_and_outputs() -> None:
    assert HeadLayout().is_plain and HeadLayout().output_names == ("score",)
    odin = HeadLayout(1, True)
    assert (odin.num_labels, odin.length_column, odin.output_names) == (2, 1, ("score", "length_score"))
    both = HeadLayout(5, True)
    assert (both.num_labels, both.length_column) == (6, 5)
    assert both.output_names == ("score", "uncertainty", "length_score")
    assert HeadLayout(3).output_names == ("score", "uncertainty") and HeadLayout(3).length_column is None
    assert HeadLayout.from_dict(both.to_dict()) == both
    assert HeadsInfo(**both.manifest_entry()) == HeadsInfo(quality=5, length=True)  # what the service reads
    with pytest.raises(HeadLayoutError):
        HeadLayout(0)


def test_layout_of_a_config() -> None:
    from types import SimpleNamespace

    stored = {"quality_heads": 5, "length_head": True}
    assert HeadLayout.of_config(SimpleNamespace(num_labels=6, reward_heads=stored)) == HeadLayout(5, True)
    with pytest.raises(HeadLayoutError, match="num_labels=1"):
        HeadLayout.of_config(SimpleNamespace(num_labels=1, reward_heads=stored))
    assert HeadLayout.of_config(SimpleNamespace(num_labels=1)) == HeadLayout()


def test_bootstrap_weights_are_seeded_poisson_per_head() -> None:
    w = bootstrap_weights(4000, 5, seed=0)
    assert w.shape == (4000, 5) and w.dtype == np.float32
    assert np.array_equal(w, bootstrap_weights(4000, 5, seed=0))
    assert not np.array_equal(w, bootstrap_weights(4000, 5, seed=1))
    assert abs(w.mean() - 1.0) < 0.03 and abs(w.var() - 1.0) < 0.06  # Poisson(1): mean = variance = 1
    assert 0.34 < (w == 0).mean() < 0.40  # e^-1 of the pairs are out of each head's resample
    assert not np.array_equal(w[:, 0], w[:, 1])  # every head its own resample
    assert np.array_equal(bootstrap_weights(7, 1, seed=3), np.ones((7, 1), np.float32))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_base(tmp_path_factory.mktemp("heads") / "base")


@pytest.fixture(scope="module")
def encoded(base_dir: Path) -> list:
    encoder = PairEncoder.from_file(
        base_dir / "tokenizer.json", TruncationPolicy(MAX_LENGTH, MIN_QUESTION_TOKENS)
    )
    pairs = load_pairs().pairs[:24]
    return encoder.encode(
        [p.question for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]
    )


def test_layout_is_saved_with_the_model_and_outputs_follow_it(
    base_dir: Path, tmp_path: Path, encoded: list
) -> None:
    import torch

    from training.reward.model import head_outputs, layout_of, load_reward_model

    layout = HeadLayout(3, True)
    torch.manual_seed(0)
    model = load_reward_model(str(base_dir), layout).eval()
    assert model.config.num_labels == 4 and layout_of(model) == layout
    model.save_pretrained(tmp_path / "m")
    again = load_reward_model(str(tmp_path / "m")).eval()  # no layout given: read from config.json
    assert layout_of(again) == layout
    assert layout_of(load_reward_model(str(base_dir))) == HeadLayout()  # a base model: one head

    batch = pad_batch(encoded[:6], 0)
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits  # [6, 4]
        assert torch.equal(logits, again(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits)
    out = head_outputs(logits, layout)
    assert list(out) == ["score", "uncertainty", "length_score"]
    q = logits[:, :3].numpy()
    assert np.allclose(out["score"].numpy(), q.mean(axis=1), atol=1e-6)
    assert np.allclose(out["uncertainty"].numpy(), q.std(axis=1), atol=1e-6)  # population std, as numpy
    assert torch.equal(out["length_score"], logits[:, 3])
    assert float(out["uncertainty"].min()) > 0  # random rows disagree


@pytest.mark.parametrize("layout", [HeadLayout(), HeadLayout(1, True), HeadLayout(4, True), HeadLayout(3)])
def test_graph_outputs_match_pytorch_and_pass_the_gate_in_fp32_and_int8(
    layout: HeadLayout, base_dir: Path, tmp_path: Path, encoded: list
) -> None:
    import torch

    from training.reward.export.gate import (
        batch_dependence_per_output,
        check_output_parity,
    )
    from training.reward.export.onnx_graph import export_onnx, torch_outputs
    from training.reward.export.quantize import DEFAULT_RECIPES, quantize_int8
    from training.reward.model import accepted_input_names, load_reward_model

    torch.manual_seed(1)
    model = load_reward_model(str(base_dir), layout).eval()
    names = accepted_input_names(model)
    fp32_path = tmp_path / "model.onnx"
    export_onnx(model, names, pad_batch(encoded[:2], 0), fp32_path, opset=17)
    session = make_session(fp32_path)
    assert output_names_of(session) == list(layout.output_names)

    reference = torch_outputs(model, names, encoded, 0, batch_size=8)
    onnx_values = score_outputs(session, names, encoded, 0, batch_size=8)
    diffs = check_output_parity(reference, onnx_values, tolerance=1e-4)
    assert set(diffs) == set(layout.output_names)
    assert np.array_equal(onnx_values["score"], score_encoded(session, names, encoded, 0, 8))  # service path
    assert max(batch_dependence_per_output(session, names, encoded, 0).values()) <= 1e-4
    if layout.quality_heads > 1:
        assert onnx_values["uncertainty"].min() > 0

    int8_path = tmp_path / "model.int8.onnx"
    batches = [pad_batch(encoded[i : i + 8], 0) for i in range(0, len(encoded), 8)]
    quantize_int8(fp32_path, int8_path, batches, DEFAULT_RECIPES[0])
    int8 = make_session(int8_path)
    assert output_names_of(int8) == list(layout.output_names)
    assert max(batch_dependence_per_output(int8, names, encoded, 0).values()) <= 1e-4
    int8_values = score_outputs(int8, names, encoded, 0, batch_size=8)
    for name in layout.output_names:
        assert np.corrcoef(int8_values[name], onnx_values[name])[0, 1] > 0.9, name


def test_parity_gate_names_the_output_that_differs() -> None:
    from training.reward.export.gate import ParityError, check_output_parity

    ref = {"score": np.zeros(3), "uncertainty": np.ones(3)}
    assert check_output_parity(ref, {"score": np.zeros(3), "uncertainty": np.ones(3) + 1e-5}, 1e-3) == {
        "score": 0.0,
        "uncertainty": pytest.approx(1e-5),
    }
    with pytest.raises(ParityError, match="'uncertainty'"):
        check_output_parity(ref, {"score": np.zeros(3), "uncertainty": np.ones(3) + 0.1}, 1e-3)
    with pytest.raises(ParityError, match="outputs"):
        check_output_parity(ref, {"score": np.zeros(3)}, 1e-3)


def test_head_weight_is_the_classifier_of_the_layout(base_dir: Path) -> None:
    from training.reward.model import head_weight, load_reward_model

    model = load_reward_model(str(base_dir), HeadLayout(2, True))
    weight = head_weight(model)
    assert weight is model.classifier.weight and tuple(weight.shape) == (3, model.config.hidden_size)


def test_config_refuses_bad_head_settings() -> None:
    from training.reward.config import ConfigError, RewardConfig

    with pytest.raises(ConfigError, match="quality_heads"):
        RewardConfig(base_model="x", quality_heads=0)
    with pytest.raises(ConfigError, match="length_coef"):
        RewardConfig(base_model="x", length_coef=-1.0)


# -- end to end: train with heads -> export -> gate (fp32 + int8) -> eval -------------------------------


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory: pytest.TempPathFactory, base_dir: Path) -> Path:
    from tests.training.reward_helpers import write_pairs
    from training.reward.config import RewardConfig
    from training.reward.train import train

    root = tmp_path_factory.mktemp("heads-run")
    config = RewardConfig(
        base_model=str(base_dir),
        data=str(write_pairs(root / "pairs.jsonl.gz", n=64)),
        val_fraction=0.25,
        max_length=MAX_LENGTH,
        min_question_tokens=MIN_QUESTION_TOKENS,
        batch_size=8,
        max_steps=4,
        lr=1e-3,
        eval_every=0,
        checkpoint_every=0,
        device="cpu",
        quality_heads=3,
        length_head=True,
    )
    train(config, root / "run", progress=False)
    return root / "run"


def test_training_with_heads_logs_their_terms_and_saves_the_layout(heads_run: Path, base_dir: Path) -> None:
    import json

    import torch

    from training.reward.model import layout_of, load_reward_model

    records = [json.loads(line) for line in (heads_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "rank_loss" in r]
    assert len(steps) == 4
    for key in ("loss", "accuracy", "margin", "length_term", "rho_quality", "rho_length", "ortho"):
        assert all(np.isfinite(r[key]) for r in steps), key
    model = load_reward_model(str(heads_run / "final"))
    assert layout_of(model) == HeadLayout(3, True)
    base = load_reward_model(str(base_dir))
    trained = dict(model.named_parameters())
    changed = [n for n, p in base.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert any("encoder" in n for n in changed)  # the backbone learned, not only the heads


def test_heads_bundle_passes_the_gate_and_eval_reports_the_warning_signs(heads_run: Path) -> None:
    import torch

    from service.bundle import load_bundle
    from training.reward.data import load_run_split
    from training.reward.evaluate import evaluate_bundle
    from training.reward.export import ExportConfig, export_bundle
    from training.reward.model import head_outputs, layout_of, load_reward_model

    out = heads_run.parent / "bundle"
    result = export_bundle(
        heads_run, out, ExportConfig(version="1", max_int8_drop=100.0, length_correction=True)
    )
    manifest = load_bundle(out).manifest
    assert manifest.precisions == ["fp32", "int8"]
    assert manifest.heads is not None and (manifest.heads.quality, manifest.heads.length) == (3, True)
    assert manifest.output_names == ["score", "uncertainty", "length_score"]
    assert set(result.gate["max_abs_diff_by_output"]) == {"score", "uncertainty", "length_score"}
    assert result.gate["batch_diff_fp32"] <= 1e-4 and result.gate["batch_diff_int8"] <= 1e-4
    assert manifest.length_correction is not None
    assert manifest.length_correction.model_dump() == result.gate["length_trend"]

    # the ONNX outputs are the PyTorch heads' outputs on the same batch
    bundle = load_bundle(out)
    encoder = bundle.encoder()
    _, val = load_run_split(heads_run)
    encoded = encoder.encode([p.question for p in val], [p.chosen for p in val])
    batch = pad_batch(encoded, encoder.pad_token_id)
    onnx_values = score_outputs(make_session(bundle.model_path("fp32")), manifest.input_names, encoded, 0)
    model = load_reward_model(str(heads_run / "final")).eval()
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
    for name, value in head_outputs(logits, layout_of(model)).items():
        assert np.abs(onnx_values[name] - value.double().numpy()).max() <= 1e-4, name

    report = evaluate_bundle(out, heads_run.parent / "pairs.jsonl.gz", "int8", batch_size=8)
    assert report.uncertainty_auroc is not None and report.margin_auroc is not None
    assert report.length_pearson is not None and report.length_head_pearson is not None
    assert report.uncorrected is not None  # the manifest's correction was applied, the raw numbers kept
    text = report.format_text()
    assert "uncertainty AUROC" in text and "length head Pearson" in text and "before: accuracy" in text
