"""Length-balanced pair weights (Singhal et al. 2023, "A Long Way to Go"): length stops paying off.

    weights, report = length_balance_weights(chosen_tokens, rejected_tokens, bins=10)   # [n], mean 1

Why: in the embedded hh-rlhf pairs the chosen answer is more often the shorter one, and a reward
model picks that up first and far beyond what it is worth (README "Length bias" has the figures).
Reweighting the pairs so that,
within each bin of answer-length difference, the pairs whose chosen answer is longer weigh as much
as those whose chosen answer is shorter makes the label independent of the length difference in the
weighted data: any score that only reads length then earns nothing in expectation, at any size of
length gap. Singhal et al. balance by dropping pairs; weighting keeps every pair's content.

Bins are quantiles of |log(chosen tokens / rejected tokens)| (a 5-token gap means more between two
short answers than between two long ones), so each bin holds about the same number of pairs. Pairs
of equal length keep weight 1 (length says nothing there); a bin holding only one direction cannot
be balanced and keeps weight 1 too (the report counts them). Each bin keeps its total weight (half of it
per direction), so the weights have mean 1: the loss keeps its scale and a learning rate its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LengthBalance", "length_balance_weights"]


@dataclass(frozen=True)
class LengthBalance:
    """What the balancing did, for the run's log."""

    bins: int
    chosen_longer: int  # pairs whose chosen answer has more tokens
    chosen_shorter: int
    equal: int  # pairs of equal answer length (weight 1)
    unbalanced_pairs: int  # pairs in bins holding only one direction (weight 1)
    min_weight: float
    max_weight: float

    def format_text(self) -> str:
        return (
            f"length balance: {self.bins} bins of |log length ratio|, chosen longer {self.chosen_longer} / "
            f"shorter {self.chosen_shorter} / equal {self.equal} pairs; weights {self.min_weight:.2f}.."
            f"{self.max_weight:.2f} (mean 1), {self.unbalanced_pairs} pairs in one-direction bins unweighted"
        )


def length_balance_weights(
    chosen_tokens: np.ndarray, rejected_tokens: np.ndarray, bins: int
) -> tuple[np.ndarray, LengthBalance]:
    """Weight [n] float32 per pair (mean 1) making chosen-longer and chosen-shorter pairs weigh the
    same within each of ``bins`` quantile bins of the length gap; the report says what it did."""
    chosen = np.asarray(chosen_tokens, dtype=np.float64)
    rejected = np.asarray(rejected_tokens, dtype=np.float64)
    assert chosen.shape == rejected.shape and chosen.ndim == 1, (
        f"expected two [n] arrays, got {chosen.shape} and {rejected.shape}"
    )
    assert bins >= 1, f"bins must be >= 1, got {bins}"
    n = len(chosen)
    weights = np.ones(n, dtype=np.float64)
    gap = np.log1p(chosen) - np.log1p(rejected)  # > 0: the chosen answer is longer
    longer, shorter = gap > 0, gap < 0
    unequal = np.flatnonzero(longer | shorter)
    unbalanced = 0
    if len(unequal):
        size = np.abs(gap[unequal])
        edges = np.quantile(size, np.linspace(0.0, 1.0, bins + 1)[1:-1])
        bin_of = np.searchsorted(edges, size, side="right")  # [len(unequal)] in [0, bins)
        for b in range(bins):
            members = unequal[bin_of == b]
            n_longer = int(longer[members].sum())
            n_shorter = len(members) - n_longer
            if n_longer == 0 or n_shorter == 0:
                unbalanced += len(members)
                continue
            # each direction gets half the bin's weight
            weights[members[longer[members]]] = len(members) / (2 * n_longer)
            weights[members[shorter[members]]] = len(members) / (2 * n_shorter)
    report = LengthBalance(
        bins=bins,
        chosen_longer=int(longer.sum()),
        chosen_shorter=int(shorter.sum()),
        equal=int(n - longer.sum() - shorter.sum()),
        unbalanced_pairs=unbalanced,
        min_weight=float(weights.min()) if n else 1.0,
        max_weight=float(weights.max()) if n else 1.0,
    )
    return weights.astype(np.float32), report
