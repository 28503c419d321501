"""The warning-sign numbers of a reward model on held-out pairs: length bias and uncertainty quality.

    pearson(scores, answer_tokens)                     # does the score follow answer length?
    auroc(pair_uncertainty(u_chosen, u_rejected), wrong)  # does uncertainty flag the pairs it gets wrong?
    paired_gain(correct_a, correct_b)                  # is model A really more accurate than B here?

Why AUROC: the uncertainty is useful to an RL loop exactly when it is high where the score is
wrong. AUROC is the probability that a randomly picked wrongly-ranked pair has a higher uncertainty
than a randomly picked correctly-ranked one: 0.5 is no information, 1.0 a perfect flag. It is
reported beside the AUROC of the cheapest competitor, a small |margin| (a model is wrong more often
where it barely separates the two answers), so a weak uncertainty is visible as such.
Pure numpy, torch-free (`rlhf eval` uses it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two [n] arrays; None when undefined (fewer than 2 items or a constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    assert a.shape == b.shape and a.ndim == 1, f"expected two [n] arrays, got {a.shape} and {b.shape}"
    if a.size < 2:
        return None
    ac, bc = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((ac * ac).sum() * (bc * bc).sum()))
    return float((ac * bc).sum() / denominator) if denominator > 0 else None


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` [n] ranking ``positives`` [n] (bool) above the rest.

    The Mann-Whitney statistic with average ranks, so ties count one half; None when either class
    is empty."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    assert s.shape == pos.shape and s.ndim == 1, f"expected two [n] arrays, got {s.shape} and {pos.shape}"
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    start = 0
    for end in range(1, len(s) + 1):  # average rank (1-based) over each run of tied scores
        if end == len(s) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pair_uncertainty(uncertainty_chosen: np.ndarray, uncertainty_rejected: np.ndarray) -> np.ndarray:
    """One uncertainty per pair [n]: the mean of its two answers' spreads across the quality heads.

    The graph serves a spread per item, not per head, so the spread of the margin itself is not
    available at serving time; the mean of the two is what a trainer can compute from `/score`."""
    return (np.asarray(uncertainty_chosen, dtype=np.float64) + np.asarray(uncertainty_rejected)) / 2.0


def paired_gain(ours: Sequence[bool], theirs: Sequence[bool]) -> tuple[float, float]:
    """Accuracy gain in points and its standard error, paired over the same held-out pairs.

    Why paired: both models see the same 200-odd pairs, so the pairs both get right (or both wrong)
    carry no information about the difference; the unpaired error would overstate the noise.
    """
    if len(ours) != len(theirs):
        raise ValueError(f"paired comparison needs the same pairs, got {len(ours)} and {len(theirs)} results")
    diff = np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)
    if diff.size == 0:
        return 0.0, 0.0
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    return 100 * float(diff.mean()), 100 * se
