"""Evaluation samples re-scored by a gold bundle, with the full questions the samples cut.

    judged, tails = rescore_samples([(run_config, samples), ...], GoldScorer.load("bundles/gold"))
    gold_reading(judged[0], judged[1], gold.score_mean, gold.score_std).gain   # in gold std

The samples keep only the last ``QUESTION_TAIL`` characters of each question (`evaluate.py`), and the
earlier turns change a score, so re-scoring the tail would not reproduce what the gold says of the
answer in its dialogue. The full question is recovered from the run's prompt source, the one
`trainer.load_prompt_sets` drew from (its prompts file, or its reward run's held-out split), by that
tail; a question that cannot be recovered (the source is gone, or the tail ends two questions) is
scored on its tail, the same way before and after, and counted so the reader is told.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.policy.errors import PromptError
from training.policy.evaluate import paired_standard_error
from training.policy.gold import GoldScorer
from training.policy.prompts import heldout_questions, load_prompts_file
from training.policy.report import Sample
from training.policy.scoring import rm_answer
from training.reward.data import DataError

QUESTION_TAIL = 300  # characters of the question an evaluation sample keeps (evaluate.py)


@dataclass(frozen=True)
class GoldReading:
    """One run's held-out gold, in the gold's train-score std; NaN where undefined."""

    before: float
    after: float
    gain: float
    gain_se: float  # paired over prompts


def rescore_samples(
    groups: Sequence[tuple[dict[str, Any], Sequence[Sample]]], gold: GoldScorer
) -> tuple[list[list[Sample]], list[int]]:
    """Each (run config, samples) group with full questions and ``gold_score`` from ``gold``; and per
    group the number of questions left as tails. Each distinct (question, answer) is scored once."""
    sources: dict[tuple[str, str], list[str] | None] = {}
    restored, tails = [], []
    for config, samples in groups:
        key = (str(config.get("prompts_file")), str(config.get("reward_run")))
        if key not in sources:
            sources[key] = question_source(config)
        full, left = restore_questions(samples, sources[key])
        restored.append(full)
        tails.append(left)
    pairs = sorted({(s.question, s.answer) for samples in restored for s in samples})
    scores = gold.score([q for q, _ in pairs], [rm_answer(a) for _, a in pairs]) if pairs else np.zeros(0)
    scored = {pair: float(value) for pair, value in zip(pairs, scores, strict=True)}
    judged = [
        [dataclasses.replace(s, gold_score=_finite_or_none(scored[(s.question, s.answer)])) for s in samples]
        for samples in restored
    ]
    return judged, tails


def gold_reading(before: Sequence[Sample], after: Sequence[Sample], mean: float, std: float) -> GoldReading:
    """Gold means (over every finite sample) and their gain in gold std; s.e. paired per prompt."""
    b, a = _finite_gold(before), _finite_gold(after)
    mean_b = float(np.mean(b)) if b else math.nan
    mean_a = float(np.mean(a)) if a else math.nan
    per_b, per_a = _gold_prompt_means(before), _gold_prompt_means(after)
    prompts = sorted(set(per_b) | set(per_a))
    se = paired_standard_error(
        [per_b.get(p, math.nan) for p in prompts], [per_a.get(p, math.nan) for p in prompts]
    )
    return GoldReading((mean_b - mean) / std, (mean_a - mean) / std, (mean_a - mean_b) / std, se / std)


def restore_questions(samples: Sequence[Sample], source: Sequence[str] | None) -> tuple[list[Sample], int]:
    """Samples with their full question where the tail names exactly one question of ``source``.

    Returns them and the number of distinct questions left as tails (cut, and not uniquely found)."""
    full: dict[str, str | None] = {}
    for tail in {s.question for s in samples}:
        if len(tail) < QUESTION_TAIL:
            full[tail] = tail  # shorter than the cut: stored whole
        else:
            matches = {q for q in source or () if q.endswith(tail)}
            full[tail] = matches.pop() if len(matches) == 1 else None
    restored = [dataclasses.replace(s, question=full[s.question] or s.question) for s in samples]
    return restored, sum(value is None for value in full.values())


def question_source(config: dict[str, Any]) -> list[str] | None:
    """The full questions a run drew its evaluation prompts from (`trainer.load_prompt_sets`); None if gone."""
    try:
        if config.get("prompts_file"):
            return [p.question for p in load_prompts_file(Path(str(config["prompts_file"])))]
        reward_run = config.get("reward_run")
        return heldout_questions(Path(str(reward_run)) if reward_run else None)
    except (PromptError, DataError, OSError):
        return None


def _finite_gold(samples: Sequence[Sample]) -> list[float]:
    return [float(s.gold_score) for s in samples if s.gold_score is not None and math.isfinite(s.gold_score)]


def _gold_prompt_means(samples: Sequence[Sample]) -> dict[int, float]:
    """Mean finite gold score per prompt index (a prompt with none is left out: unpaired)."""
    per: dict[int, list[float]] = {}
    for s in samples:
        if s.gold_score is not None and math.isfinite(s.gold_score):
            per.setdefault(s.prompt, []).append(float(s.gold_score))
    return {prompt: float(np.mean(values)) for prompt, values in per.items()}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
