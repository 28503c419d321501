"""Before/after evaluation: mean reward of fixed-seed samples on held-out prompts.

The same seed before and after training means the two numbers differ because the policy changed,
not because the dice did. The gain is also reported in units of the RM's score std (from the
manifest via /v1/models), the unit the targets are stated in. Samples are written as JSONL so a
person can read what the policy actually says.

Measured with the default RM and policy (48 prompts x 4 samples): the score depends mostly on the
question (prompt means spread by 0.59 RM std) and much less on the sampled answer (0.27 std around its
prompt's mean). The same prompts before and after cancel the first part, so the gain is measured
per prompt: per-prompt means are kept and ``gain_standard_error`` pairs them before/after. A greedy
pass (one deterministic answer per prompt, no sampling noise) can run next to the sampled one.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.policy.policy import Policy
from training.policy.prompts import Prompt
from training.policy.rollout import sample_groups
from training.policy.scoring import score_answers

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_raw": self.mean_raw,
            "mean_normalized": self.mean_normalized,
            "scored": self.scored,
            "failed": self.failed,
            "mean_length": self.mean_length,
            "eos_fraction": self.eos_fraction,
            "prompt_means": self.prompt_means,
        }


def gain_standard_error(before: EvalResult, after: EvalResult) -> float:
    """Standard error of ``after.mean_raw - before.mean_raw`` from the per-prompt paired differences.

    Prompt difficulty cancels in the pairs, so this is the noise of the sampling alone (NaN with fewer
    than 2 prompts scored both times).
    """
    a = np.asarray(after.prompt_means, dtype=np.float64)
    b = np.asarray(before.prompt_means, dtype=np.float64)
    if a.shape != b.shape:
        return math.nan
    d = (a - b)[np.isfinite(a - b)]
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size >= 2 else math.nan


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
) -> EvalResult:
    """Sample ``samples`` answers per prompt with a fixed seed (the global RNG is restored after).

    ``greedy``: one deterministic (argmax) answer per prompt instead; ``samples``, temperature and
    top_p are then ignored. ``batch_prompts`` prompts are decoded together (``sample_groups``); the
    samples depend on it, so before and after must use the same value to be paired.
    """
    raw_all: list[np.ndarray] = []
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
                *(score_answers(client, g.prompt.question, g.texts, "raw") for g in groups)
            )
            for group, scores in zip(groups, chunk_scores, strict=True):
                raw_all.append(scores.raw)
                lengths.extend(int(n) for n in group.lengths)
                finished.extend(bool(f) for f in group.finished)
                for text, score in zip(group.texts, scores.raw, strict=True):
                    rows.append(
                        {
                            "question": group.prompt.question[-300:],
                            "answer": text,
                            "score": _finite_or_none(score),
                        }
                    )
    raw = np.concatenate(raw_all) if raw_all else np.zeros(0)
    ok = np.isfinite(raw)
    if out_jsonl is not None:
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
        out_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    mean_raw = float(raw[ok].mean()) if ok.any() else math.nan
    mean_length = float(np.mean(lengths)) if lengths else 0.0
    normalized = (mean_raw - score_mean) / score_std
    prompt_means = [float(r[np.isfinite(r)].mean()) if np.isfinite(r).any() else math.nan for r in raw_all]
    eos = float(np.mean(finished)) if finished else math.nan
    return EvalResult(mean_raw, normalized, int(ok.sum()), int((~ok).sum()), mean_length, eos, prompt_means)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
