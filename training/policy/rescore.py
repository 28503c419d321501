"""Evaluation samples re-scored by a gold bundle, with the full questions the samples cut.

    rescored = rescore_samples([(run_config, samples), ...], GoldScorer.load("bundles/gold"))
    gold_reading(*rescored.samples[:2], gold.score_mean, gold.score_std).gain   # in gold std

The samples keep only the last ``QUESTION_TAIL`` characters of each question (`evaluate.py`), and the
earlier turns change a score, so re-scoring the tail would not reproduce what the gold says of the
answer in its dialogue. The full question is recovered from the run's prompt source, the one
`trainer.load_prompt_sets` drew from (its prompts file, or its reward run's held-out split), by that
tail; a question that cannot be recovered (the source is gone, or the tail ends two questions) is
scored on its tail, the same way before and after, and counted so the reader is told.

Each sample is asked what the run asked the proxy (`training.policy.scoring.rm_item`): the pair of
its question and answer, or, for a prompt given as chat messages, that conversation with the answer,
which the sample keeps (``messages``). Samples of runs that kept no messages get them back from the
prompt source by their full question when it names one chat prompt; a question shared by chat
prompts that differ (say, only in their system message) cannot say which, so it is asked as hh text,
without the system message, and counted so the reader is told.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.policy.errors import PromptError
from training.policy.evaluate import paired_standard_error
from training.policy.gold import GoldScorer
from training.policy.prompts import Prompt, load_prompts
from training.policy.report import Sample
from training.policy.scoring import rm_item
from training.reward.data import DataError

QUESTION_TAIL = 300  # characters of the question an evaluation sample keeps (evaluate.py)


@dataclass(frozen=True)
class GoldReading:
    """One run's held-out gold, in the gold's train-score std; NaN where undefined."""

    before: float
    after: float
    gain: float
    gain_se: float  # paired over prompts


@dataclass(frozen=True)
class Rescored:
    """Per (run config, samples) group: the samples with full questions and the gold's scores, the
    distinct questions left as tails, and the chat prompts asked as hh text (`restore_messages`)."""

    samples: list[list[Sample]]
    tails: list[int]
    unmatched_chats: list[int]


def rescore_samples(groups: Sequence[tuple[dict[str, Any], Sequence[Sample]]], gold: GoldScorer) -> Rescored:
    """Each (run config, samples) group with full questions, chat messages where they can be known,
    and ``gold_score`` from ``gold``. Each distinct (question, messages, answer) is scored once."""
    sources: dict[tuple[str, str], list[Prompt] | None] = {}
    restored, tails, unmatched = [], [], []
    for config, samples in groups:
        key = (str(config.get("prompts_file")), str(config.get("reward_run")))
        if key not in sources:
            sources[key] = prompt_source(config)
        source = sources[key]
        full, left = restore_questions(samples, None if source is None else [p.question for p in source])
        full, unknown = restore_messages(full, source)
        restored.append(full)
        tails.append(left)
        unmatched.append(unknown)
    asked = {_key(s): rm_item(_prompt_of(s), s.answer) for samples in restored for s in samples}
    scores = gold.score_items(list(asked.values())) if asked else np.zeros(0)
    scored = {key: float(value) for key, value in zip(asked, scores, strict=True)}
    judged = [
        [dataclasses.replace(s, gold_score=_finite_or_none(scored[_key(s)])) for s in samples]
        for samples in restored
    ]
    return Rescored(judged, tails, unmatched)


def _key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...] | None, str]:
    return sample.question, sample.messages, sample.answer


def _prompt_of(sample: Sample) -> Prompt | str:
    """The prompt the run scored the sample's answer to: its chat messages, or its question."""
    if sample.messages is None:
        return sample.question
    return Prompt(sample.messages, sample.question, from_chat=True)


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

    Returns them and the number of distinct questions left as tails (cut, and not uniquely found) of
    samples asked by their question (one that keeps its chat messages is asked by them, whole)."""
    full: dict[str, str | None] = {}
    for tail in {s.question for s in samples}:
        if len(tail) < QUESTION_TAIL:
            full[tail] = tail  # shorter than the cut: stored whole
        else:
            matches = {q for q in source or () if q.endswith(tail)}
            full[tail] = matches.pop() if len(matches) == 1 else None
    restored = [dataclasses.replace(s, question=full[s.question] or s.question) for s in samples]
    return restored, len({s.question for s in samples if s.messages is None and full[s.question] is None})


def restore_messages(samples: Sequence[Sample], source: Sequence[Prompt] | None) -> tuple[list[Sample], int]:
    """Samples saved without messages (runs written before samples kept them) get the chat messages
    of the prompt of ``source`` their full question names, when it names exactly one.

    Returns them and the number of distinct questions of chat prompts that could not be told apart
    (asked as hh text, without their system message)."""
    views: dict[str, set[tuple[tuple[str, str], ...] | None]] = {}
    for prompt in source or ():
        views.setdefault(prompt.question, set()).add(prompt.messages if prompt.from_chat else None)
    restored, unknown = [], set()
    for sample in samples:
        found = views.get(sample.question, set()) if sample.messages is None else set()
        if found - {None} and len(found) == 1:
            sample = dataclasses.replace(sample, messages=next(iter(found)))
        elif found - {None}:
            unknown.add(sample.question)
        restored.append(sample)
    return restored, len(unknown)


def prompt_source(config: dict[str, Any]) -> list[Prompt] | None:
    """The prompts a run drew its evaluation prompts from (`trainer.load_prompt_sets`); None if gone."""
    prompts_file, reward_run = config.get("prompts_file"), config.get("reward_run")
    try:
        return load_prompts(
            str(prompts_file) if prompts_file else None, str(reward_run) if reward_run else None
        )
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
