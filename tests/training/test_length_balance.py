"""Length-balanced pair weights: hand-computed weights, the balance they promise, and the training wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.reward.length_balance import length_balance_weights


def test_one_bin_weights_by_hand() -> None:
    # 3 pairs chosen longer, 1 chosen shorter, 1 tie: the bin's 4 unequal pairs get 2 per direction
    chosen = np.array([10, 20, 30, 5, 7])
    rejected = np.array([5, 10, 15, 50, 7])
    weights, report = length_balance_weights(chosen, rejected, bins=1)
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2.0, 1.0], rtol=1e-6)
    assert weights.dtype == np.float32
    assert (report.chosen_longer, report.chosen_shorter, report.equal, report.unbalanced_pairs) == (
        3,
        1,
        1,
        0,
    )
    assert report.min_weight == pytest.approx(2 / 3) and report.max_weight == pytest.approx(2.0)
    assert "chosen longer 3 / shorter 1 / equal 1" in report.format_text()


def test_weighted_label_is_independent_of_the_length_gap_in_every_bin() -> None:
    rng = np.random.default_rng(0)
    rejected = rng.integers(5, 300, size=2000)
    chosen = rng.integers(5, 300, size=2000)
    # a length-biased label: small gaps are a coin flip, large ones mostly "shorter wins" (hh-like)
    gap = np.log1p(chosen) - np.log1p(rejected)
    weights, report = length_balance_weights(chosen, rejected, bins=5)
    assert report.chosen_longer + report.chosen_shorter + report.equal == 2000
    assert weights.mean() == pytest.approx(1.0, abs=1e-6)
    size = np.abs(gap)
    edges = np.quantile(size[gap != 0], [0.2, 0.4, 0.6, 0.8])
    bin_of = np.searchsorted(edges, size, side="right")
    for b in range(5):
        longer = (bin_of == b) & (gap > 0)
        shorter = (bin_of == b) & (gap < 0)
        assert longer.any() and shorter.any()
        assert weights[longer].sum() == pytest.approx(weights[shorter].sum(), rel=1e-5), b


def test_a_bin_with_one_direction_keeps_weight_one_and_is_counted() -> None:
    # two bins: small gaps (both directions), large gaps (chosen always shorter: cannot be balanced)
    chosen = np.array([10, 11, 12, 10, 1, 1, 2, 3])
    rejected = np.array([11, 10, 11, 11, 100, 200, 150, 300])
    weights, report = length_balance_weights(chosen, rejected, bins=2)
    assert report.unbalanced_pairs == 4
    np.testing.assert_allclose(weights, np.ones(8), rtol=1e-6)  # the small bin is 2 + 2 already
    assert weights.mean() == pytest.approx(1.0, abs=1e-6)


def test_no_unequal_pairs_gives_ones() -> None:
    weights, report = length_balance_weights(np.array([4, 4]), np.array([4, 4]), bins=3)
    np.testing.assert_array_equal(weights, [1.0, 1.0])
    assert report.equal == 2


def test_training_applies_the_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same seed, same first batch: the first step's loss differs only through the weights."""
    from tests.training.reward_helpers import make_tiny_base, make_tiny_run, write_pairs
    from training.reward.config import ConfigError, RewardConfig

    base = make_tiny_base(tmp_path / "base")
    data = write_pairs(tmp_path / "pairs.jsonl.gz", n=48)

    def first_loss(bins: int) -> float:
        out = make_tiny_run(tmp_path / f"run-{bins}", base, data, steps=1, length_balance_bins=bins)
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        return float(first["loss"])

    plain, balanced = first_loss(0), first_loss(4)
    assert np.isfinite(balanced)
    assert balanced != pytest.approx(plain, rel=1e-6)
    assert "length balance: 4 bins" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="length_balance_bins"):
        RewardConfig(base_model="x", length_balance_bins=-1)
