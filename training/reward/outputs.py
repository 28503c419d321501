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
from training.reward.evaluate import evaluate_scores
from training.reward.length_correction import answer_token_counts
from training.reward.losses import pairwise_loss
from training.reward.model import score_encoded
from training.runlog import plot_curves, read_jsonl

PLOT_KEYS = (
    "loss",
    "accuracy",
    "margin",
    "lr",
    "tokens_per_s",
    "val_accuracy",
    "val_length_balanced_accuracy",
    "val_length_pearson",
    "val_margin",
    "val_loss",
)


def validate(
    model: Any, encoder: Encoder, pairs: list[PreferencePair], config: RewardConfig, device: torch.device
) -> dict[str, float]:
    """Pairwise accuracy (ties wrong), mean margin and loss of the current model on ``pairs``, and its
    length bias (`rlhf eval`'s numbers): a run that learns "shorter is better" shows it while it trains,
    not after a policy has found it. Length metrics that are undefined on these pairs are left out."""
    if not pairs:
        return {}
    chosen, rejected = encode_pairs(encoder, pairs)  # text or conversational pairs, as training encodes
    r_c = score_encoded(model, chosen, encoder.pad_token_id, config.batch_size * 2, device)
    r_r = score_encoded(model, rejected, encoder.pad_token_id, config.batch_size * 2, device)
    _, metrics = pairwise_loss(torch.from_numpy(r_c), torch.from_numpy(r_r))
    tokens = (answer_token_counts(chosen), answer_token_counts(rejected))
    length = evaluate_scores(pairs, r_c, r_r, [False] * len(pairs), tokens)
    bias = {
        "length_balanced_accuracy": length["length_balanced_accuracy"],
        "chosen_longer_accuracy": length["chosen_longer"].accuracy,
        "chosen_shorter_accuracy": length["chosen_shorter"].accuracy,
        "length_pearson": length["length_pearson"],
    }
    return {**metrics, **{k: v for k, v in bias.items() if v is not None}, "pairs": len(pairs)}


def describe_validation(metrics: dict[str, float]) -> str:
    """The line `rlhf train-rm` ends with: accuracy, and beside it how much of it is answer length."""
    line = f"val accuracy {metrics['accuracy']:.3f} on {int(metrics['pairs'])} pairs"
    if "chosen_longer_accuracy" in metrics and "chosen_shorter_accuracy" in metrics:
        line += (
            f" (chosen longer {metrics['chosen_longer_accuracy']:.3f} / shorter "
            f"{metrics['chosen_shorter_accuracy']:.3f}, length-balanced {metrics['length_balanced_accuracy']:.3f})"
        )
    if "length_pearson" in metrics:
        line += f", Pearson(score, answer tokens) {metrics['length_pearson']:+.2f}"
    return line


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
