"""Fixtures for training tests: a tiny random BERT with the real MiniLM tokenizer, and small data files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny_model_dir(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from training.reward.model import default_base_model, tokenizer_json_path

    tokenizer_json = tokenizer_json_path(default_base_model())
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    # the fast tokenizer plus the files AutoTokenizer reads (special tokens), for the TRL bench test
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tokenizer_json.parent / name).is_file():
            shutil.copyfile(tokenizer_json.parent / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT reward model dir (random weights) with the real MiniLM tokenizer.json."""
    return _tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny training run (`reward_helpers.make_tiny_run` on 64 embedded pairs), shared by the
    export tests; read it only: tests write their bundles beside it, under ``run_dir.parent / "bundles"``."""
    from tests.training.reward_helpers import make_tiny_base, make_tiny_run, write_pairs

    root = tmp_path_factory.mktemp("tiny-run")
    base = make_tiny_base(root / "base")
    return make_tiny_run(root / "run", base, write_pairs(root / "pairs.jsonl.gz", n=64))


def learnable_rows(n: int) -> list[dict[str, str]]:
    """Explicit question/chosen/rejected rows with an easy signal (polite vs rude answers)."""
    good = [
        "Sure, happy to help with that.",
        "Here is a careful, safe answer.",
        "Thanks for asking, here you go.",
    ]
    bad = ["No. Go away.", "That is stupid, figure it out.", "I hate this question."]
    rows = []
    for i in range(n):
        question = f"\n\nHuman: question number {i} about topic {i % 7}?\n\nAssistant:"
        rows.append(
            {"question": question, "chosen": good[i % 3] + f" ({i})", "rejected": bad[i % 3] + f" ({i})"}
        )
    return rows


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """64 learnable pairs as gzipped JSONL."""
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in learnable_rows(64):
            handle.write(json.dumps(row) + "\n")
    return path


def tiny_config(model_dir: Path, data: Path, **overrides: object):  # -> RewardConfig
    """A RewardConfig for the tiny model: short sequences, small batches, no periodic work."""
    from training.reward.config import RewardConfig

    values: dict[str, object] = {
        "base_model": str(model_dir),
        "data": str(data),
        "max_length": 48,
        "min_question_tokens": 8,
        "batch_size": 8,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "val_fraction": 0.25,
        "eval_every": 0,
        "checkpoint_every": 0,
        "max_steps": 6,
        "device": "cpu",
    }
    values.update(overrides)
    return RewardConfig(**values)  # type: ignore[arg-type]
