"""The scoring layer's pure parts: /v1/models parsing, stop rules, merging per-group results,
and the deterministic prompt schedule that lets a resumed run pick the same prompts."""

from __future__ import annotations

import numpy as np
import pytest

from training.policy.errors import RewardModelChanged, TooManyFailedRewards
from training.policy.prompts import Prompt
from training.policy.scoring import (
    RewardModelInfo,
    Scores,
    check_failures,
    check_version,
    merge_scores,
    rm_answer,
)
from training.policy.trainer import step_prompts

NAN = float("nan")


def _scores(values: list[float], version: str = "1", changed: bool = False) -> Scores:
    arr = np.array(values)
    errors = ["boom"] if np.isnan(arr).any() else []
    return Scores(
        arr, arr, arr, np.full_like(arr, np.nan), int(np.isnan(arr).sum()), errors, version, changed
    )


def test_models_response_parsing() -> None:
    body = {"object": "list", "data": [{"name": "rm", "version": "3", "score": {"mean": 0.1, "std": 2.5}}]}
    assert RewardModelInfo.from_models_response(body) == RewardModelInfo("rm", "3", 0.1, 2.5)
    with pytest.raises(ValueError, match="score mean"):
        RewardModelInfo.from_models_response({"data": [{"name": "rm", "version": "3"}]})


def test_failure_threshold_is_a_strict_fraction_of_the_step() -> None:
    check_failures(_scores([1.0, NAN, 2.0, 3.0]), max_failed_fraction=0.25, step=4)  # 1/4 is allowed
    with pytest.raises(TooManyFailedRewards, match=r"step 4: 2 of 4 rewards .* first error: boom"):
        check_failures(_scores([1.0, NAN, NAN, 3.0]), max_failed_fraction=0.25, step=4)


def test_version_rule() -> None:
    assert check_version("1", _scores([1.0]), allow_change=False, step=1) == "1"
    with pytest.raises(RewardModelChanged, match="from version 1 to 2"):
        check_version("1", _scores([1.0], version="2"), allow_change=False, step=2)
    with pytest.raises(RewardModelChanged):  # the client saw two versions within one batch
        check_version("1", _scores([1.0], version="1", changed=True), allow_change=False, step=2)
    assert check_version("1", _scores([1.0], version="2"), allow_change=True, step=2) == "2"


def test_merge_keeps_order_counts_failures_and_notices_mixed_versions() -> None:
    merged = merge_scores([_scores([1.0, NAN]), _scores([3.0, 4.0])])
    assert np.array_equal(merged.rewards[[0, 2, 3]], [1.0, 3.0, 4.0]) and np.isnan(merged.rewards[1])
    assert merged.failed == 1 and merged.errors == ["boom"] and not merged.model_changed
    assert merge_scores([_scores([1.0]), _scores([2.0], version="2")]).model_changed


def test_answers_are_sent_like_hh_answers() -> None:
    assert rm_answer("Hello there.\n") == " Hello there."


def test_prompt_schedule_covers_every_prompt_each_epoch_and_is_reproducible() -> None:
    prompts = [Prompt((("user", str(i)),), str(i)) for i in range(10)]
    first_epoch = [p for step in range(1, 6) for p in step_prompts(prompts, step, 2, seed=0)]
    assert sorted(p.question for p in first_epoch) == [str(i) for i in range(10)]
    assert step_prompts(prompts, 7, 2, seed=0) == step_prompts(prompts, 7, 2, seed=0)
    assert step_prompts(prompts, 1, 4, seed=0) != step_prompts(prompts, 1, 4, seed=1)
