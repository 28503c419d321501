"""Rewards from the scoring service: one group of answers -> one reward per answer, NaN on failure.

The trainer talks to the service only through this module and a :class:`RewardScorer`, in practice
`service.client.AsyncRewardClient` (retries, backoff, several URLs). Here: what the RM is asked
(`rm_item`: the raw hh question and the answer with the leading space hh answers have, or, for a
prompt given as chat messages, the conversation the policy answered, system message included),
which number becomes the reward (the served score, minus ``lambda * uncertainty`` with an
uncertainty penalty), and the stop rules of the run (too many failed rewards in a step; a different
reward-model version; a penalty asked of a bundle that serves no uncertainty).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from integrations.convert import to_messages
from service.client import ScoreItem, ScoreResult
from training.policy.errors import RewardModelChanged, TooManyFailedRewards, UncertaintyUnavailable
from training.policy.prompts import Prompt


class RewardScorer(Protocol):
    """What the trainer needs of its reward client: `service.client.AsyncRewardClient`, or a stand-in."""

    async def score(self, pairs: Sequence[ScoreItem]) -> ScoreResult:
        """Scores of (question, answer) pairs and ``{"messages": [...]}`` items in input order; NaN
        where an item could not be scored."""
        ...

    async def models(self) -> dict[str, Any]:
        """The service's /v1/models body (name, version, score statistics of the model)."""
        ...


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
    """Rewards of one batch of answers, in input order; NaN where not fetched (never 0)."""

    rewards: np.ndarray  # float64 [n]: the training reward, served score - lambda * uncertainty
    raw: np.ndarray  # float64 [n]: raw RM scores
    normalized: np.ndarray  # float64 [n]: (raw - train mean) / train std, as the service normalises
    uncertainty: np.ndarray  # float64 [n]: in the reward's units (reward_key); NaN where none is served
    failed: int
    errors: list[str] = field(default_factory=list)
    model_version: str | None = None
    model_changed: bool = False
    seconds: float = 0.0  # wall time of the request(s)


def rm_answer(text: str) -> str:
    """hh answers follow "Assistant:" with a space; send ours the same way the RM saw them in training."""
    return " " + text.strip()


def rm_item(prompt: Prompt | str, answer: str) -> ScoreItem:
    """What the reward model is asked about one answer of the policy to ``prompt``.

    A prompt given as chat messages becomes the conversation the policy answered: its messages,
    system message included, then the answer as the assistant's (`integrations.convert.to_messages`,
    the conversion every trainer adapter uses). The service reads it the way its bundle was trained:
    a ``chat`` bundle through its chat template, a ``pair`` bundle as hh turns (which is the pair
    below when there is no system message). Any other prompt (hh text, a plain string, or a bare
    question string) stays the (question, answer) pair the RM was trained on, as before."""
    if isinstance(prompt, Prompt) and prompt.from_chat:
        return to_messages(prompt.chat(), answer)
    question = prompt.question if isinstance(prompt, Prompt) else prompt
    return (question, rm_answer(answer))


def penalized_reward(score: np.ndarray, uncertainty: np.ndarray, penalty: float) -> np.ndarray:
    """``score - penalty * uncertainty`` [n], both in the reward's units (Coste et al. 2023).

    With penalty 0 the score is returned as is (a bundle without uncertainty trains as before); with a
    penalty, an item whose uncertainty is missing gets NaN, so it is masked rather than unpenalised."""
    if penalty == 0:
        return score
    return score - penalty * uncertainty


async def score_answers(
    client: RewardScorer,
    prompt: Prompt | str,
    answers: Sequence[str],
    reward_key: str,
    uncertainty_penalty: float = 0.0,
    score_std: float = 1.0,
) -> Scores:
    """Score answers to one prompt (a bare string is an hh / plain question), each asked as `rm_item`
    says. Failures come back NaN, never 0.

    ``score_std``: the served model's train-score std (/v1/models), which puts the raw uncertainty in
    the units of the normalised reward exactly as the service normalises a score."""
    start = time.perf_counter()
    result = await client.score([rm_item(prompt, a) for a in answers])
    seconds = time.perf_counter() - start
    raw = np.asarray(result.scores, dtype=np.float64)
    normalized = np.asarray(result.normalized, dtype=np.float64)
    spread = _uncertainty(result)
    served, uncertainty = (raw, spread) if reward_key == "raw" else (normalized, spread / score_std)
    rewards = penalized_reward(served, uncertainty, uncertainty_penalty)
    failed = int((~np.isfinite(rewards)).sum())
    return Scores(
        rewards=rewards,
        raw=raw,
        normalized=normalized,
        uncertainty=uncertainty,
        failed=failed,
        errors=list(result.errors),
        model_version=result.model_version,
        model_changed=bool(result.model_changed),
        seconds=seconds,
    )


def _uncertainty(result: ScoreResult) -> np.ndarray:
    """The raw per-item uncertainty [n] float64, NaN where the service returned none."""
    if result.uncertainty is None:
        return np.full(len(result.scores), np.nan)
    return np.asarray(result.uncertainty, dtype=np.float64)


async def check_uncertainty_served(client: RewardScorer, penalty: float) -> None:
    """Before a penalised run: one probe pair must come back with a finite uncertainty.

    A plain bundle (one quality head) has none, and penalising nothing would silently train the plain
    objective, so the run stops at its start instead."""
    if penalty == 0:
        return
    result = await client.score([("How do I bake bread?", " Mix flour, water and yeast, then bake.")])
    if not np.isfinite(np.asarray(result.scores, dtype=np.float64)).all():
        raise UncertaintyUnavailable(
            f"the service could not score the uncertainty probe: {'; '.join(result.errors) or 'no message'}"
        )
    if not np.isfinite(_uncertainty(result)).all():
        raise UncertaintyUnavailable(
            f"--uncertainty-penalty {penalty} needs a per-item uncertainty, but the served reward model "
            f"{result.model_name} {result.model_version} returns none (a single quality head). Serve a "
            "bundle trained with `rlhf train-rm --quality-heads N` (N > 1), or drop the penalty."
        )


def merge_scores(parts: Sequence[Scores]) -> Scores:
    """Concatenate per-group scores in order (the step's view)."""
    versions = [p.model_version for p in parts if p.model_version is not None]
    return Scores(
        rewards=_concat([p.rewards for p in parts]),
        raw=_concat([p.raw for p in parts]),
        normalized=_concat([p.normalized for p in parts]),
        uncertainty=_concat([p.uncertainty for p in parts]),
        failed=sum(p.failed for p in parts),
        errors=[e for p in parts for e in p.errors],
        model_version=versions[-1] if versions else None,
        model_changed=any(p.model_changed for p in parts) or len(set(versions)) > 1,
        seconds=sum(p.seconds for p in parts),
    )


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0)


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
