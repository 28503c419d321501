"""Rewards from the scoring service: one group of answers -> one reward per answer, NaN on failure.

The trainer talks to the service only through this module and `service.client.AsyncRewardClient`
(retries, backoff, several URLs). Here: what the RM is asked (the raw hh question and the answer with
the leading space hh answers have), which number becomes the reward, and the two stop rules of the
run (too many failed rewards in a step; a different reward-model version).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.policy.errors import RewardModelChanged, TooManyFailedRewards


@dataclass(frozen=True)
class RewardModelInfo:
    """What /v1/models says about the served reward model."""

    name: str
    version: str
    score_mean: float
    score_std: float

    @classmethod
    def from_models_response(cls, body: dict[str, Any]) -> RewardModelInfo:
        """Parse ``{"data": [{"name", "version", "score": {"mean", "std"}}]}`` (the service's format)."""
        entries = body.get("data")
        entry = entries[0] if isinstance(entries, list) and entries else body
        try:
            score = entry["score"]
            return cls(str(entry["name"]), str(entry["version"]), float(score["mean"]), float(score["std"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"/v1/models answered without name/version/score mean+std: {body!r}") from err


@dataclass
class Scores:
    """Rewards of one batch of answers, in input order."""

    rewards: np.ndarray  # float64 [n]: the training reward (normalized or raw), NaN where not fetched
    raw: np.ndarray  # float64 [n]: raw RM scores, NaN likewise
    failed: int
    errors: list[str] = field(default_factory=list)
    model_version: str | None = None
    model_changed: bool = False
    seconds: float = 0.0  # wall time of the request(s)


def rm_answer(text: str) -> str:
    """hh answers follow "Assistant:" with a space; send ours the same way the RM saw them in training."""
    return " " + text.strip()


async def score_answers(client: Any, question: str, answers: Sequence[str], reward_key: str) -> Scores:
    """Score answers to one question with an AsyncRewardClient. Failures come back NaN, never 0."""
    start = time.perf_counter()
    result = await client.score([(question, rm_answer(a)) for a in answers])
    seconds = time.perf_counter() - start
    raw = np.asarray(result.scores, dtype=np.float64)
    rewards = raw if reward_key == "raw" else np.asarray(result.normalized, dtype=np.float64)
    failed = int((~np.isfinite(rewards)).sum())
    return Scores(
        rewards=rewards,
        raw=raw,
        failed=failed,
        errors=list(result.errors),
        model_version=result.model_version,
        model_changed=bool(result.model_changed),
        seconds=seconds,
    )


def merge_scores(parts: Sequence[Scores]) -> Scores:
    """Concatenate per-group scores in order (the step's view)."""
    versions = [p.model_version for p in parts if p.model_version is not None]
    return Scores(
        rewards=np.concatenate([p.rewards for p in parts]) if parts else np.zeros(0),
        raw=np.concatenate([p.raw for p in parts]) if parts else np.zeros(0),
        failed=sum(p.failed for p in parts),
        errors=[e for p in parts for e in p.errors],
        model_version=versions[-1] if versions else None,
        model_changed=any(p.model_changed for p in parts) or len(set(versions)) > 1,
        seconds=sum(p.seconds for p in parts),
    )


def check_failures(scores: Scores, max_failed_fraction: float, step: int) -> None:
    """Stop the run when too large a share of this step's rewards could not be fetched."""
    total = len(scores.rewards)
    if total and scores.failed / total > max_failed_fraction:
        first = scores.errors[0] if scores.errors else "no error message"
        raise TooManyFailedRewards(
            f"step {step}: {scores.failed} of {total} rewards could not be fetched from the scoring service "
            f"(> max_failed_fraction={max_failed_fraction}); first error: {first}. Check that the service "
            "is up (GET /readyz) and not overloaded, or raise --max-failed-fraction."
        )


def check_version(expected: str, scores: Scores, allow_change: bool, step: int) -> str:
    """Return the version now served; raise unless allowed when it is not the one the run started with."""
    seen = scores.model_version
    changed = scores.model_changed or (seen is not None and seen != expected)
    if changed and not allow_change:
        raise RewardModelChanged(
            f"step {step}: the reward model changed from version {expected} to {seen} mid-run; rewards "
            "before and after are not comparable. Restart against one version, or pass --allow-model-change."
        )
    return seen if seen is not None else expected
