"""Padded-token counts of a batch plan: what `rlhf bench train` compares between TRL and our loop.

    plain = padding_stats(random_batches(len(pairs), 16, seed=0), chosen_lengths, rejected_lengths)
    ours = padding_stats(length_grouped_batches(pair_lengths(c, r), 16, 0, 0), chosen_lengths, rejected_lengths)
    plain["padded_tokens"] / ours["padded_tokens"]   # how many more tokens the plain plan computes

Why here and not in `training.reward.batching`: the training loop never counts its padding, only the
benchmark does. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def random_batches(n: int, batch_size: int, seed: int, epoch: int = 0) -> list[list[int]]:
    """Plain shuffled batches (what a default DataLoader / TRL does): the benchmark's reference."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    return [order[k : k + batch_size] for k in range(0, n, batch_size)]


def padding_stats(
    batches: Sequence[Sequence[int]], lengths_chosen: Sequence[int], lengths_rejected: Sequence[int]
) -> dict[str, int]:
    """Token counts of one pass over ``batches``, both sides padded together to one width per batch."""
    real = padded = 0
    for batch in batches:
        seqs = [lengths_chosen[i] for i in batch] + [lengths_rejected[i] for i in batch]
        real += sum(seqs)
        padded += len(seqs) * max(seqs)
    return {"real_tokens": real, "padded_tokens": padded, "pad_tokens": padded - real}
