"""The evaluation: the paired standard error of the gain against hand-computed values, and the
before/after evaluation itself on a tiny policy (prompt order, failed scores, batching)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.training.policy_helpers import make_tiny_policy_dir, tiny_config, write_prompts
from training.policy.evaluate import (
    EvalResult,
    evaluate,
    gain_standard_error,
    gold_gain_standard_error,
    pearson,
)
from training.policy.policy import Policy, load_policy
from training.policy.prompts import Prompt, load_prompts_file


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


class _LengthScorer:
    """Scores an answer by its word count; the question "is it safe ..." fails (NaN), like a lost request."""

    async def score(self, pairs: list[tuple[str, str]]) -> SimpleNamespace:
        scores = [math.nan if "Human: is it safe" in q else float(len(a.split())) for q, a in pairs]
        return SimpleNamespace(
            scores=scores,
            normalized=scores,
            errors=[],
            model_version="1",
            model_changed=False,
            uncertainty=None,
        )


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, list[Prompt]]:
    root = tmp_path_factory.mktemp("evaluate")
    prompts_path = write_prompts(root / "p.jsonl")
    policy = load_policy(tiny_config(make_tiny_policy_dir(root / "model"), root / "out", prompts_path))
    return policy, load_prompts_file(prompts_path)


@pytest.mark.parametrize("greedy", [True, False])
def test_evaluation_does_not_depend_on_how_many_prompts_are_decoded_together(
    tiny_policy: tuple[Policy, list[Prompt]], tmp_path: Path, greedy: bool
) -> None:
    policy, prompts = tiny_policy

    def run(batch_prompts: int, name: str) -> EvalResult:
        return asyncio.run(
            evaluate(
                policy, _LengthScorer(), prompts, samples=2, max_new_tokens=6, temperature=1.0, top_p=1.0,
                seed=3, score_mean=1.0, score_std=2.0, out_jsonl=tmp_path / name, greedy=greedy,
                batch_prompts=batch_prompts,
            )
        )  # fmt: skip

    one = run(1, "one.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    per_prompt = 1 if greedy else 2
    assert len(rows) == len(prompts) * per_prompt and len(one.prompt_means) == len(prompts)
    safe = [i for i, p in enumerate(prompts) if "Human: is it safe" in p.question]
    assert safe and all(math.isnan(one.prompt_means[i]) for i in safe)
    assert one.failed == len(safe) * per_prompt and one.scored == len(rows) - one.failed
    assert [r["question"] for r in rows[::per_prompt]] == [p.question for p in prompts]  # prompt order
    assert one.mean_normalized == pytest.approx((one.mean_raw - 1.0) / 2.0)
    if greedy:  # argmax answers are the same however the prompts are batched (left padding is masked)
        for batch_prompts in (5, 16):
            other = run(batch_prompts, f"b{batch_prompts}.jsonl")
            assert other.prompt_means == pytest.approx(one.prompt_means, nan_ok=True)
            assert (tmp_path / f"b{batch_prompts}.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    else:  # fixed seed: the same batching draws the same samples
        assert run(1, "again.jsonl").prompt_means == pytest.approx(one.prompt_means, nan_ok=True)


def test_pearson_against_hand_computed_values_and_undefined_cases() -> None:
    # x = 1, 2, 3, 4; y = 2, 4, 5, 9: centred (-1.5, -.5, .5, 1.5) and (-3, -1, 0, 4)
    expected = (4.5 + 0.5 + 0 + 6) / math.sqrt(5.0 * 26.0)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(expected)
    assert pearson([1, 2, 3, 4, 99], [2, 4, 5, 9, math.nan]) == pytest.approx(expected)  # NaN pairs dropped
    assert math.isnan(pearson([1, 2], [3, 4]))  # too few items
    assert math.isnan(pearson([5, 5, 5], [1, 2, 3]))  # a constant side


def test_gold_gain_is_paired_per_prompt_like_the_proxy() -> None:
    before, after = _result([0.0, 0.0, 0.0]), _result([0.0, 0.0, 0.0])
    before.gold_prompt_means, after.gold_prompt_means = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]  # diffs 1, 2, 3
    assert gold_gain_standard_error(before, after) == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(gold_gain_standard_error(_result([0.0]), _result([1.0])))  # no gold: no pairs


def test_results_are_strict_json_and_come_back_unchanged() -> None:
    result = _result([0.5, math.nan])
    result.gold_prompt_means = [1.0, math.nan]
    text = json.dumps(result.to_dict(), allow_nan=False)  # an undefined number is null, not NaN
    back = EvalResult.from_dict(json.loads(text))
    assert math.isnan(back.length_pearson) and math.isnan(back.gold_mean_raw)
    assert back.prompt_means[0] == 0.5 and math.isnan(back.prompt_means[1])
    assert back.gold_prompt_means[0] == 1.0 and math.isnan(back.gold_prompt_means[1])
    assert back.mean_raw == result.mean_raw and back.scored == result.scored
