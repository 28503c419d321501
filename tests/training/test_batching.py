from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.padding import padding_stats, random_batches
from service.encoding import PairEncoder, TruncationPolicy
from training.reward.batching import collate, encode_pairs, length_grouped_batches, pair_lengths
from training.reward.data import load_pairs


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> PairEncoder:
    return PairEncoder.from_file(tiny_model / "tokenizer.json", TruncationPolicy(64, 8))


def test_batches_cover_every_pair_once_and_are_deterministic() -> None:
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 300, size=103)]
    for group in (0, 2):
        batches = length_grouped_batches(lengths, 8, seed=1, epoch=0, group_batches=group)
        assert sorted(i for b in batches for i in b) == list(range(103))
        assert batches == length_grouped_batches(lengths, 8, seed=1, epoch=0, group_batches=group)
        assert batches != length_grouped_batches(lengths, 8, seed=1, epoch=1, group_batches=group)
        assert max(len(b) for b in batches) == 8


def test_length_grouping_pads_less_than_random_batches() -> None:
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 300, size=400)]
    grouped = padding_stats(length_grouped_batches(lengths, 16, 0, 0), lengths, lengths)
    shuffled = padding_stats(random_batches(400, 16, 0), lengths, lengths)
    assert grouped["real_tokens"] == shuffled["real_tokens"]
    assert grouped["pad_tokens"] * 5 < shuffled["pad_tokens"]


def test_training_batches_carry_exactly_the_serving_ids(encoder: PairEncoder) -> None:
    """Encoding parity: what the loop feeds the model == PairEncoder.encode, row for row."""
    pairs = load_pairs().pairs[:40]
    chosen, rejected = encode_pairs(encoder, pairs)
    batches = length_grouped_batches(pair_lengths(chosen, rejected), 8, seed=0, epoch=0)
    served_c = encoder.encode([p.question for p in pairs], [p.chosen for p in pairs])
    served_r = encoder.encode([p.question for p in pairs], [p.rejected for p in pairs])
    assert any(e.truncated for e in served_c)  # the parity covers the truncation policy too
    for indices in batches:
        batch = collate(chosen, rejected, indices, encoder.pad_token_id)
        assert batch["input_ids"].shape[0] == 2 * len(indices)
        for row, i in enumerate(list(indices) * 2):
            served = served_c[i] if row < len(indices) else served_r[i]
            n = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :n].tolist() == served.input_ids
            assert batch["token_type_ids"][row, :n].tolist() == served.token_type_ids
            assert (batch["input_ids"][row, n:] == encoder.pad_token_id).all()
