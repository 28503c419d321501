"""Held-out warning signs: Pearson with answer length and the AUROC of uncertainty, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.reward.diagnostics import auroc, pair_uncertainty, pearson


def test_pearson_by_hand_and_undefined_cases() -> None:
    assert pearson(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert pearson(np.array([1.0, 2.0]), np.array([3.0, 3.0])) is None  # constant: undefined
    assert pearson(np.array([1.0]), np.array([2.0])) is None


def test_auroc_by_hand() -> None:
    wrong = np.array([True, False, True, False])
    assert auroc(np.array([0.9, 0.1, 0.8, 0.2]), wrong) == 1.0  # every wrong pair above every right one
    assert auroc(np.array([0.1, 0.9, 0.2, 0.8]), wrong) == 0.0
    # 4 (wrong, right) comparisons: 0.5 > 0.4 yes, 0.5 > 0.6 no, 0.3 > 0.4 no, 0.3 > 0.6 no -> 1/4
    assert auroc(np.array([0.5, 0.4, 0.3, 0.6]), wrong) == 0.25
    assert auroc(np.array([1.0, 1.0, 1.0, 1.0]), wrong) == 0.5  # ties count one half
    assert auroc(np.array([1.0, 1.0, 2.0, 0.0]), wrong) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert auroc(np.array([1.0, 2.0]), np.array([True, True])) is None


def test_auroc_matches_the_pairwise_definition_on_random_data() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    expected = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auroc(scores, labels) == pytest.approx(expected)


def test_pair_uncertainty_is_the_mean_of_both_answers() -> None:
    assert pair_uncertainty(np.array([0.2, 1.0]), np.array([0.4, 0.0])).tolist() == pytest.approx([0.3, 0.5])


def test_evaluate_scores_reports_length_correlation_and_uncertainty_aurocs() -> None:
    from training.reward.data import PreferencePair
    from training.reward.evaluate import evaluate_scores

    pairs = [PreferencePair("q", f"chosen {i}", f"rejected {i}") for i in range(4)]
    chosen, rejected = np.array([1.0, 0.0, 2.0, 0.5]), np.array([0.0, 1.0, 1.0, 1.5])  # pairs 1, 3 wrong
    tokens = (np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8]))
    spread = (np.array([0.1, 0.9, 0.2, 0.3]), np.array([0.1, 0.7, 0.2, 0.1]))  # pair means .1 .8 .2 .2
    metrics = evaluate_scores(pairs, chosen, rejected, [False] * 4, tokens, spread)
    scores = np.concatenate([chosen, rejected])
    assert metrics["length_pearson"] == pytest.approx(np.corrcoef(scores, np.arange(1, 9))[0, 1])
    assert metrics["length_pearson_in_pairs"] is None  # every pair differs by 4 tokens: undefined
    # wrong pairs have uncertainty .8 and .2, right ones .1 and .2: (1 + 1 + 1 + 0.5) / 4
    assert metrics["uncertainty_auroc"] == pytest.approx(3.5 / 4)
    # |margin| 1, 1, 1, 1: every pair ties, no information
    assert metrics["margin_auroc"] == 0.5
    uneven = evaluate_scores(pairs, chosen, rejected, [False] * 4, (np.array([1, 2, 3, 9]), tokens[1]))
    margins, token_diffs = chosen - rejected, np.array([1, 2, 3, 9]) - tokens[1]
    assert uneven["length_pearson_in_pairs"] == pytest.approx(np.corrcoef(margins, token_diffs)[0, 1])
    plain = evaluate_scores(pairs, chosen, rejected, [False] * 4)
    assert plain["length_pearson"] is None and plain["uncertainty_auroc"] is None
