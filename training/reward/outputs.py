"""What a training run leaves behind: validation metrics, score statistics, OUT/final/, curves.

Kept apart from the loop so `train.py` reads top to bottom; every function here runs on rank 0 only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.encoding import Encoder
from training.reward.batching import encode_pairs
from training.reward.config import CONFIG_NAME, RewardConfig
from training.reward.data import PreferencePair
from training.reward.losses import pairwise_loss
from training.reward.model import score_encoded
from training.runlog import plot_curves, read_jsonl

PLOT_KEYS = ("loss", "accuracy", "margin", "lr", "tokens_per_s", "val_accuracy", "val_margin", "val_loss")


def validate(
    model: Any, encoder: Encoder, pairs: list[PreferencePair], config: RewardConfig, device: torch.device
) -> dict[str, float]:
    """Pairwise accuracy (ties wrong), mean margin and loss of the current model on ``pairs``."""
    if not pairs:
        return {}
    chosen, rejected = encode_pairs(encoder, pairs)  # text or conversational pairs, as training encodes
    r_c = score_encoded(model, chosen, encoder.pad_token_id, config.batch_size * 2, device)
    r_r = score_encoded(model, rejected, encoder.pad_token_id, config.batch_size * 2, device)
    _, metrics = pairwise_loss(torch.from_numpy(r_c), torch.from_numpy(r_r))
    return {**metrics, "pairs": len(pairs)}


def score_stats(
    model: Any, encoder: Encoder, pairs: list[PreferencePair], config: RewardConfig, device: torch.device
) -> dict[str, float]:
    """Mean/std of the trained model's scores over the train split (both answers): the service's normaliser.

    A seeded sample of ``config.score_stats_pairs`` pairs when the split is larger.
    """
    if config.score_stats_pairs and len(pairs) > config.score_stats_pairs:
        keep = np.random.default_rng(config.seed).choice(len(pairs), config.score_stats_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(keep.tolist())]
    chosen, rejected = encode_pairs(encoder, pairs)
    scores = score_encoded(model, [*chosen, *rejected], encoder.pad_token_id, config.batch_size * 2, device)
    return {"mean": float(scores.mean()), "std": float(scores.std()), "pairs": len(pairs)}


@torch.no_grad()
def write_final(
    final_dir: Path,
    model: Any,
    config: RewardConfig,
    tokenizer_files: list[Path],
    stats: dict[str, float],
    summary: dict[str, Any],
) -> None:
    """OUT/final/, written to a temp dir and renamed so readers never see half a model."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for path in tokenizer_files:  # tokenizer.json and the chat template files (training.reward.encoders)
        shutil.copyfile(path, tmp / path.name)
    config.save(tmp / CONFIG_NAME)
    (tmp / "score_stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp.rename(final_dir)


def plot_run(out: Path) -> None:
    """OUT/curves.png from OUT/metrics.jsonl (regenerated whole, so it never disagrees with the log)."""
    plot_curves(read_jsonl(out / "metrics.jsonl"), PLOT_KEYS, out / "curves.png", "reward model training")
