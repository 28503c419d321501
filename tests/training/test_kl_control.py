"""The adaptive KL coefficient against hand-computed values."""

from __future__ import annotations

import math

import pytest

from training.policy.config import PolicyConfig
from training.policy.kl_control import adapted_kl_coef


def test_beta_moves_towards_the_target_in_proportion_to_the_error() -> None:
    # KL 5.5 against target 5: error 0.1 -> beta * (1 + 0.1 * 0.1)
    assert adapted_kl_coef(0.05, 5.5, 5.0, 0.1) == pytest.approx(0.05 * 1.01)
    # KL 4 against 5: error -0.2 -> beta shrinks by 2%
    assert adapted_kl_coef(0.05, 4.0, 5.0, 0.1) == pytest.approx(0.05 * 0.98)
    assert adapted_kl_coef(0.05, 5.0, 5.0, 0.1) == pytest.approx(0.05)  # on target: unchanged


def test_one_wild_step_moves_beta_by_at_most_the_clipped_error() -> None:
    assert adapted_kl_coef(0.05, 500.0, 5.0, 0.1) == pytest.approx(0.05 * 1.02)  # error clipped to +0.2
    assert adapted_kl_coef(0.05, -3.0, 5.0, 0.1) == pytest.approx(0.05 * 0.98)  # k1 estimate can be < 0
    assert adapted_kl_coef(0.05, math.nan, 5.0, 0.1) == 0.05  # nothing measured: unchanged


def test_a_kl_target_needs_a_starting_beta() -> None:
    with pytest.raises(ValueError, match="kl_target needs"):
        PolicyConfig(kl_coef=0.0, kl_target=5.0)  # beta could never grow from 0
    with pytest.raises(ValueError, match="kl_target needs"):
        PolicyConfig(kl_coef=0.05, kl_target=0.0)
    with pytest.raises(ValueError, match="kl_adapt_rate"):
        PolicyConfig(kl_coef=0.05, kl_target=5.0, kl_adapt_rate=0.0)
