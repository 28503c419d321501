"""Is a *member* ensemble's spread informative? Independently trained reward models on held-out pairs.

    python -m bench.member_spread runs/s5-odin runs/s6-member1 runs/s6-member2 --split-of runs/s5-odin

Why: the served uncertainty comes from quality heads on one backbone (`--quality-heads N`), the cheapest
ensemble and, per Eisenstein et al. (2023), the least diverse: its spread ranked this project's wrong
validation pairs at AUROC 0.41, below a small |margin| alone. Ensembles of separately fine-tuned
members disagree more; before exporting several backbones into one graph (N times the serving cost)
this measures whether their disagreement would flag the pairs the ensemble gets wrong.

Each member is a finished `rlhf train-rm` run scored in PyTorch (`training.reward.model.score_pairs`,
its own encoder) on the validation split of ``--split-of`` (members must not have trained on it: train
them on that run's training split, e.g. `--data <its train pairs> --seed k`). Scores are put in each
member's own train-score std units (`score_stats.json`) so members of different scales are comparable,
as the service normalises them. Reported: each member's accuracy, the ensemble mean's accuracy, AUROC
of the per-pair spread (mean of the two answers' std across members, the definition the service uses
for head ensembles) and of a small |mean margin| for the ensemble's wrong pairs, and the members'
pairwise score correlation (diversity). Prints one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from training.reward.diagnostics import auroc, pair_uncertainty, pearson


def member_scores(run: Path, questions: list[str], answers: list[str]) -> np.ndarray:
    """A run's final model's scores of (question, answer) items, in its train-score std units."""
    from training.reward.encoders import run_encoder
    from training.reward.model import load_reward_model, score_pairs

    final = run / "final"
    stats = json.loads((final / "score_stats.json").read_text(encoding="utf-8"))
    model = load_reward_model(str(final))
    raw = score_pairs(model, run_encoder(final), questions, answers)
    return (raw - float(stats["mean"])) / max(float(stats["std"]), 1e-12)


def spread_report(scores: np.ndarray, n_pairs: int, names: list[str]) -> dict[str, Any]:
    """Metrics of member scores [members, 2n] (chosen answers first) on n pairs."""
    chosen, rejected = scores[:, :n_pairs], scores[:, n_pairs:]
    mean_c, mean_r = chosen.mean(axis=0), rejected.mean(axis=0)
    wrong = ~(mean_c > mean_r)
    spread = pair_uncertainty(chosen.std(axis=0), rejected.std(axis=0))
    correlations = [
        pearson(scores[i], scores[j]) for i in range(len(names)) for j in range(i + 1, len(names))
    ]
    return {
        "members": names,
        "pairs": n_pairs,
        "member_accuracy": {n: float((chosen[i] > rejected[i]).mean()) for i, n in enumerate(names)},
        "ensemble_accuracy": float((~wrong).mean()),
        "spread_auroc": auroc(spread, wrong),
        "margin_auroc": auroc(-np.abs(mean_c - mean_r), wrong),
        "member_score_correlation": [c for c in correlations if c is not None],
    }


def member_spread_command(
    runs: Annotated[list[Path], typer.Argument(help="finished `rlhf train-rm` runs (two or more)")],
    split_of: Annotated[Path, typer.Option(help="run whose validation split is scored")],
) -> None:
    """How well the disagreement of separately trained reward models flags the pairs they get wrong."""
    from training.reward.evaluate import validation_split

    if len(runs) < 2:
        raise typer.BadParameter("an ensemble needs at least two runs", param_hint="RUNS")
    pairs = validation_split(split_of).pairs
    questions = [p.question for p in pairs] * 2
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scores = np.stack([member_scores(run, questions, answers) for run in runs])
    typer.echo(json.dumps(spread_report(scores, len(pairs), [str(r) for r in runs])))


if __name__ == "__main__":
    typer.run(member_spread_command)
