from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.conftest import tiny_config
from training.reward.config import RewardConfig
from training.reward.data import load_run_split
from training.reward.train import lr_at, step_seed, train
from training.runlog import read_jsonl


def test_lr_schedule_warmup_then_decay() -> None:
    config = RewardConfig(base_model="x", lr=1.0, warmup_ratio=0.2, decay="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(s, 10, config) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]  # linear warm-up over 2 steps
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] > 0.1
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))
    linear = RewardConfig(base_model="x", lr=1.0, warmup_ratio=0.0, decay="linear")
    assert [lr_at(s, 4, linear) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert step_seed(0, 1, 0) != step_seed(0, 2, 0) != step_seed(0, 1, 1)


def test_tiny_run_learns_and_writes_the_output_contract(
    tmp_path: Path, tiny_model: Path, pairs_file: Path
) -> None:
    out = tmp_path / "run"
    config = tiny_config(
        tiny_model, pairs_file, max_steps=14, eval_every=7, checkpoint_every=7, decay="constant"
    )
    result = train(config, out, progress=False)

    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "classifier.weight" in changed and any("encoder.layer.0" in k for k in changed)

    steps = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 15))
    first, last = sum(r["loss"] for r in steps[:4]) / 4, sum(r["loss"] for r in steps[-4:]) / 4
    assert last < first - 0.05, f"loss did not drop: {first:.3f} -> {last:.3f}"
    assert {"accuracy", "margin", "lr", "tokens_per_s", "step_time_s"} <= steps[0].keys()
    vals = [r for r in read_jsonl(out / "metrics.jsonl") if "val_accuracy" in r]
    assert [r["step"] for r in vals] == [7, 14]

    final = out / "final"
    assert {p.name for p in final.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "reward_config.json",
        "score_stats.json",
        "metrics.json",
    }
    saved = RewardConfig.load(final / "reward_config.json")
    assert saved == dataclasses.replace(config, input_format="pair")  # the run saves the format it resolved
    stats = json.loads((final / "score_stats.json").read_text())
    assert stats["pairs"] == 48 and stats["std"] > 0
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["val_pairs"] == 16 and metrics["val_accuracy"] == result.val_metrics["accuracy"]
    assert metrics["val_accuracy"] >= 0.75
    # the length bias is reported while training, as `rlhf eval` reports it; every chosen answer of the
    # learnable rows is the longer one, so the chosen-shorter and balanced accuracies are undefined: left out
    assert metrics["val_chosen_longer_accuracy"] == metrics["val_accuracy"]
    assert "val_chosen_shorter_accuracy" not in metrics and "val_length_balanced_accuracy" not in metrics
    assert -1.0 <= metrics["val_length_pearson"] <= 1.0
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "checkpoint" / "trainer_state.pt").is_file()
    train_split, val_split = load_run_split(out)
    assert len(train_split) == 48 and len(val_split) == 16


def test_disable_dropout_makes_training_mode_forward_deterministic(tiny_model: Path) -> None:
    from training.reward.model import load_reward_model
    from training.reward.train import disable_dropout

    model = load_reward_model(str(tiny_model))
    model.train()
    ids = torch.randint(1000, 2000, (4, 16))
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        disable_dropout(model)
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_the_final_line_shows_the_length_bias_beside_the_accuracy() -> None:
    from training.reward.outputs import describe_validation

    metrics = {
        "accuracy": 0.635,
        "pairs": 200.0,
        "chosen_longer_accuracy": 0.301,
        "chosen_shorter_accuracy": 0.925,
        "length_balanced_accuracy": 0.613,
        "length_pearson": -0.62,
    }
    assert describe_validation(metrics) == (
        "val accuracy 0.635 on 200 pairs (chosen longer 0.301 / shorter 0.925, length-balanced 0.613)"
        ", Pearson(score, answer tokens) -0.62"
    )
    assert describe_validation({"accuracy": 1.0, "pairs": 2.0}) == "val accuracy 1.000 on 2 pairs"


def test_the_length_term_options_reach_the_training_loss(
    tmp_path: Path, tiny_model: Path, pairs_file: Path
) -> None:
    """--decorrelate-length adds the quality head's length term to a plain head; --length-head-sign
    changes what the length head is pushed towards (the loss itself is tested in test_losses.py)."""
    decorrelated = tiny_config(
        tiny_model, pairs_file, max_steps=3, length_head=False, decorrelate_length=True
    )
    train(decorrelated, tmp_path / "decorrelated", progress=False)
    steps = [r for r in read_jsonl(tmp_path / "decorrelated" / "metrics.jsonl") if "loss" in r]
    assert all("length_term" in r and "rho_quality" in r and "rho_length" not in r for r in steps)
    plain = tiny_config(tiny_model, pairs_file, max_steps=1, length_head=False)
    train(plain, tmp_path / "plain", progress=False)
    first = next(r for r in read_jsonl(tmp_path / "plain" / "metrics.jsonl") if "loss" in r)
    assert "length_term" not in first

    weights = {}
    for sign in ("rises", "falls"):
        config = tiny_config(tiny_model, pairs_file, max_steps=2, length_head=True, length_head_sign=sign)
        train(config, tmp_path / sign, progress=False)
        weights[sign] = load_file(str(tmp_path / sign / "final" / "model.safetensors"))["classifier.weight"]
    assert not torch.equal(weights["rises"], weights["falls"])
