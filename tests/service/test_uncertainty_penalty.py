"""`service.uncertainty_penalty`: the one rule both the trainer routes and the adapters penalise by."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.uncertainty_penalty import NoUncertainty, check_penalty, penalise

SCORES = np.array([1.5, -0.5, 3.0])
SPREAD = np.array([0.2, 0.0, 1.0])
MEAN, STD = 1.0, 2.0


def test_a_raw_reward_is_score_minus_lambda_uncertainty() -> None:
    np.testing.assert_allclose(penalise(SCORES, SPREAD, 0.5), [1.4, -0.5, 2.5])


def test_one_lambda_ranks_raw_and_normalised_rewards_identically() -> None:
    """(s - λu - mean) / std = z - λu / std: the penalty is in the units of the reward it is applied to."""
    raw = penalise(SCORES, SPREAD, 0.7)
    normalised = penalise((SCORES - MEAN) / STD, SPREAD, 0.7, STD)
    np.testing.assert_allclose(normalised, (raw - MEAN) / STD)
    assert np.argsort(raw).tolist() == np.argsort(normalised).tolist()


def test_zero_changes_nothing_even_without_an_uncertainty() -> None:
    assert penalise(SCORES, None, 0.0).tolist() == SCORES.tolist()


def test_a_penalty_without_an_uncertainty_is_refused_not_skipped() -> None:
    with pytest.raises(NoUncertainty):
        penalise(SCORES, None, 0.1)
    with pytest.raises(NoUncertainty):
        penalise(SCORES, np.array([0.2, np.nan, 1.0]), 0.1)  # a scored item without its spread


def test_an_item_that_was_not_scored_stays_nan() -> None:
    got = penalise(np.array([1.0, np.nan]), np.array([0.5, np.nan]), 2.0)
    assert got[0] == 0.0 and math.isnan(got[1])
    assert math.isnan(penalise(np.array([np.nan]), None, 1.0)[0])  # nothing scored: nothing to refuse


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, -math.inf, "0.5", None])
def test_lambda_must_be_a_finite_number_at_least_zero(bad: object) -> None:
    with pytest.raises(ValueError, match="my_lambda must be a finite number >= 0"):
        check_penalty(bad, "my_lambda")  # type: ignore[arg-type]


def test_good_lambdas_pass_as_floats() -> None:
    assert check_penalty(0) == 0.0 and isinstance(check_penalty(0), float)
    assert check_penalty(2.5) == 2.5
