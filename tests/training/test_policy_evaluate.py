"""The evaluation's paired standard error of the gain, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from training.policy.evaluate import EvalResult, gain_standard_error


def _result(prompt_means: list[float]) -> EvalResult:
    finite = [m for m in prompt_means if math.isfinite(m)]
    return EvalResult(sum(finite) / len(finite), 0.0, len(finite), 0, 10.0, 0.5, prompt_means)


def test_standard_error_of_paired_prompt_differences() -> None:
    before = _result([0.0, 1.0, 2.0])
    after = _result([1.0, 3.0, 5.0])  # differences 1, 2, 3: sample std 1, over sqrt(3) prompts
    assert gain_standard_error(before, after) == pytest.approx(1 / math.sqrt(3))
    # a constant shift has no noise, whatever the spread of prompt difficulty
    assert gain_standard_error(before, _result([0.5, 1.5, 2.5])) == pytest.approx(0.0)


def test_prompts_not_scored_both_times_are_left_out() -> None:
    before = _result([0.0, math.nan, 0.0, 0.0])
    after = _result([1.0, 5.0, 3.0, math.nan])  # only prompts 0 and 2 pair up: differences 1, 3
    assert gain_standard_error(before, after) == pytest.approx(1.0)  # sample std sqrt(2), n = 2


def test_too_few_pairs_or_different_prompt_sets_give_nan() -> None:
    assert math.isnan(gain_standard_error(_result([0.0]), _result([1.0])))
    assert math.isnan(gain_standard_error(_result([0.0, 1.0]), _result([1.0, 2.0, 3.0])))
