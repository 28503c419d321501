"""Before/after evaluation: mean reward of fixed-seed samples on held-out prompts.

The same seed before and after training means the two numbers differ because the policy changed,
not because the dice did. The gain is also reported in units of the RM's score std (from the
manifest via /v1/models), the unit the targets are stated in. Samples are written as JSONL so a
person can read what the policy actually says.

With the default RM and policy the score depends mostly on the question (prompt means spread
widely) and much less on the sampled answer around its prompt's mean. The same prompts before and
after cancel the first part, so the gain is measured per prompt: per-prompt means are kept and
``gain_standard_error`` pairs them before/after. A greedy pass (one deterministic answer per
prompt, no sampling noise) can run next to the sampled one.

With a gold reward (`training.policy.gold`) every sample is also scored by it, so the gold gain is
paired the same way, and each scorer's Pearson correlation with answer length is kept: a gain that
is mostly length shows as a strong correlation (Gao et al. 2022; Singhal et al. 2023).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.policy.gold import GoldScorer, gold_scores
from training.policy.prompts import Prompt
from training.policy.scoring import score_answers

if TYPE_CHECKING:  # torch only where `evaluate` samples: EvalResult and the statistics stay torch-free
    from training.policy.policy import Policy

EVAL_SEED_OFFSET = 1000  # the evaluation's stream never coincides with the training stream


@dataclass
class EvalResult:
    mean_raw: float  # mean raw RM score over the scored samples
    mean_normalized: float
    scored: int
    failed: int
    mean_length: float  # answer tokens
    eos_fraction: float = math.nan  # share of answers that ended with EOS (the rest hit max_new_tokens)
    prompt_means: list[float] = field(default_factory=list)  # mean raw score per prompt (NaN: none scored)
    median_length: float = math.nan  # answer tokens
    length_pearson: float = math.nan  # Pearson(raw score, answer tokens) over the scored samples
    # the gold reward, when the run has one (NaN / empty otherwise)
    gold_mean_raw: float = math.nan
    gold_mean_normalized: float = math.nan  # by the gold's own train mean / std
    gold_prompt_means: list[float] = field(default_factory=list)
    gold_length_pearson: float = math.nan  # the gold's own Pearson(score, answer tokens)

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON: an undefined number (NaN) becomes null, in lists too."""
        return {name: _json_number(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalResult:
        """The inverse of :meth:`to_dict` (null back to NaN); keys it does not know are refused."""

        def number(value: Any) -> Any:
            if isinstance(value, list):
                return [math.nan if v is None else v for v in value]
            return math.nan if value is None else value

        return cls(**{name: number(value) for name, value in values.items()})


def paired_standard_error(before: Sequence[float], after: Sequence[float]) -> float:
    """Standard error of the mean of ``after - before`` over the prompts finite in both (NaN if < 2).

    Prompt difficulty cancels in the pairs, so this is the noise of the sampling alone; lists of
    different lengths are different prompt sets and do not pair (NaN)."""
    a = np.asarray(after, dtype=np.float64)
    b = np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        return math.nan
    d = (a - b)[np.isfinite(a - b)]
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size >= 2 else math.nan


def gain_standard_error(before: EvalResult, after: EvalResult) -> float:
    """Standard error of ``after.mean_raw - before.mean_raw`` from the per-prompt paired differences."""
    return paired_standard_error(before.prompt_means, after.prompt_means)


def gold_gain_standard_error(before: EvalResult, after: EvalResult) -> float:
    """Standard error of the gold gain, paired per prompt like the proxy's."""
    return paired_standard_error(before.gold_prompt_means, after.gold_prompt_means)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation over the items finite in both; NaN with < 3 items or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return math.nan
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


async def evaluate(
    policy: Policy,
    client: Any,
    prompts: Sequence[Prompt],
    samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    score_mean: float,
    score_std: float,
    out_jsonl: Path | None = None,
    threads: int = 0,
    greedy: bool = False,
    batch_prompts: int = 16,
    gold: GoldScorer | None = None,
) -> EvalResult:
    """Sample ``samples`` answers per prompt with a fixed seed (the global RNG is restored after).

    ``greedy``: one deterministic (argmax) answer per prompt instead; ``samples``, temperature and
    top_p are then ignored. ``batch_prompts`` prompts are decoded together (``sample_groups``); the
    samples depend on it, so before and after must use the same value to be paired. ``gold``: every
    sample is also scored by the gold reward (in a worker thread, after the service's scores).
    """
    import torch

    from training.policy.rollout import sample_groups

    raw_all: list[np.ndarray] = []
    gold_all: list[np.ndarray] = []
    lengths: list[int] = []
    finished: list[bool] = []
    rows = []
    per_prompt = 1 if greedy else samples
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + EVAL_SEED_OFFSET)
        for start in range(0, len(prompts), batch_prompts):
            chunk = prompts[start : start + batch_prompts]
            groups = sample_groups(
                policy, chunk, per_prompt, max_new_tokens, temperature, top_p, greedy, threads
            )
            chunk_scores = await asyncio.gather(
                *(score_answers(client, g.prompt, g.texts, "raw") for g in groups)
            )
            chunk_gold = await asyncio.to_thread(gold_scores, gold, groups)
            scored = zip(groups, chunk_scores, chunk_gold, strict=True)
            for offset, (group, scores, gold_raw) in enumerate(scored):
                raw_all.append(scores.raw)
                gold_all.append(gold_raw)
                lengths.extend(int(n) for n in group.lengths)
                finished.extend(bool(f) for f in group.finished)
                answers = zip(group.texts, group.lengths, scores.raw, gold_raw, strict=True)
                for text, n, score, gold_score in answers:
                    rows.append(
                        {
                            "prompt": start + offset,
                            "question": group.prompt.question[-300:],
                            **_messages_field(group.prompt),
                            "answer": text,
                            "length": int(n),
                            "score": _json_number(float(score)),
                            **({"gold_score": _json_number(float(gold_score))} if gold is not None else {}),
                        }
                    )
    if out_jsonl is not None:
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
        out_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    raw = np.concatenate(raw_all) if raw_all else np.zeros(0)
    ok = np.isfinite(raw)
    mean_raw = float(raw[ok].mean()) if ok.any() else math.nan
    result = EvalResult(
        mean_raw=mean_raw,
        mean_normalized=(mean_raw - score_mean) / score_std,
        scored=int(ok.sum()),
        failed=int((~ok).sum()),
        mean_length=float(np.mean(lengths)) if lengths else 0.0,
        eos_fraction=float(np.mean(finished)) if finished else math.nan,
        prompt_means=_prompt_means(raw_all),
        median_length=float(np.median(lengths)) if lengths else math.nan,
        length_pearson=pearson(raw, lengths),
    )
    if gold is not None:
        gold_raw = np.concatenate(gold_all) if gold_all else np.zeros(0)
        result.gold_mean_raw = float(np.nanmean(gold_raw)) if np.isfinite(gold_raw).any() else math.nan
        result.gold_mean_normalized = float(gold.normalize(np.array([result.gold_mean_raw]))[0])
        result.gold_prompt_means = _prompt_means(gold_all)
        result.gold_length_pearson = pearson(gold_raw, lengths)
    return result


def _messages_field(prompt: Prompt) -> dict[str, Any]:
    """A chat prompt's whole conversation, which its question (hh text, cut) cannot hold: re-scoring a
    sample later (`rescore.py`) asks the reward model what it was asked here. Other prompts: nothing,
    so their rows stay as they were."""
    return {"messages": prompt.chat()} if prompt.from_chat else {}


def _prompt_means(per_prompt: Sequence[np.ndarray]) -> list[float]:
    """Mean of each prompt's finite scores; NaN for a prompt with none."""
    return [float(r[np.isfinite(r)].mean()) if np.isfinite(r).any() else math.nan for r in per_prompt]


def _json_number(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
