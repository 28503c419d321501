"""A tiny but real reward-model training run, for the export and evaluation tests.

    base = make_tiny_base(tmp / "base")                  # 2-layer BertConfig + the real MiniLM tokenizer
    run = make_tiny_run(tmp / "run", base, data)         # `train()` for a few steps -> run/final/

The model is random and small (hidden 32) so a run takes seconds, but everything else is the real
thing: the real tokenizer, the real training loop writing RUN/final, the real data loader.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

from training.reward.model import default_base_model

MAX_LENGTH = 64  # small, so many hh-rlhf pairs are truncated and the policy is exercised
MIN_QUESTION_TOKENS = 8


def make_tiny_base(path: Path, seed: int = 0) -> Path:
    """Save a random 2-layer BERT (MiniLM vocabulary) with MiniLM's tokenizer.json into ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,  # 10x BERT's: scores of a random tiny model spread enough to rank pairs
    )
    BertModel(config).save_pretrained(path)
    shutil.copyfile(Path(default_base_model()) / "tokenizer.json", path / "tokenizer.json")
    return path


def write_pairs(path: Path, n: int = 64, start: int = 0) -> Path:
    """``n`` embedded hh-rlhf pairs as explicit question/chosen/rejected JSONL (gz)."""
    from training.reward.data import load_pairs

    pairs = load_pairs().pairs[start : start + n]
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for p in pairs:
            handle.write(
                json.dumps({"question": p.question, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
            )
    return path


def make_tiny_run(path: Path, base: Path, data: Path, steps: int = 3, **overrides: Any) -> Path:
    """Train the tiny base a few steps with the real loop; return the run directory (with final/).
    ``overrides`` are RewardConfig fields (a recipe option under test)."""
    from training.reward.config import RewardConfig
    from training.reward.train import train

    config = RewardConfig(
        base_model=str(base),
        data=str(data),
        val_fraction=0.25,
        seed=0,
        max_length=MAX_LENGTH,
        min_question_tokens=MIN_QUESTION_TOKENS,
        batch_size=8,
        max_steps=steps,
        lr=1e-3,
        eval_every=0,
        checkpoint_every=0,
        device="cpu",
        **overrides,
    )
    train(config, path, progress=False)
    return path
