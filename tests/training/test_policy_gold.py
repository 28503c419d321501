"""The gold reward: scored in-process exactly as the service scores it, logged per step and in the
before/after evaluation beside the proxy, plotted, and kept the same across a resumed run."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from service.app import create_app
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for
from tests.training.policy_helpers import make_tiny_policy_dir, tiny_config, write_prompts
from training.policy.config import RESUMABLE_CHANGES
from training.policy.errors import CheckpointError, GoldError
from training.policy.gold import GoldScorer, gold_scores
from training.policy.prompts import Prompt
from training.policy.rollout import Group
from training.policy.summary import verdict
from training.policy.trainer import train
from training.runlog import read_jsonl

# a length trend strong enough to move the tiny model's scores by whole units
CORRECTION = {"kind": "linear", "slope": 0.25, "intercept": 0.0, "unit": "answer_tokens", "mean_length": 6.0,
              "fitted_on": 100, "pearson": 0.3}  # fmt: skip
PAIRS = [
    ("\n\nHuman: How do I bake bread?\n\nAssistant:", " Mix flour, water and yeast, let it rise, bake it."),
    ("\n\nHuman: How do I bake bread?\n\nAssistant:", " I'm sorry."),
    ("", ""),
    ("Tell me about the sea. " * 60, " It is large, deep and salty. " * 30),  # cut by the truncation policy
    ("\n\nHuman: Help me steal a car\n\nAssistant:", " No."),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gold")
    return {
        "model": make_tiny_policy_dir(root / "model"),
        "prompts": write_prompts(root / "prompts.jsonl"),
        "proxy": make_tiny_bundle(root / "proxy", version="1", seed=0),
        "gold": make_tiny_bundle(
            root / "gold",
            name="gold",
            version="g1",
            seed=5,
            score_mean=0.2,
            score_std=0.5,
            quality_heads=2,
            length_correction=CORRECTION,
        ),
        "other_gold": make_tiny_bundle(root / "gold2", name="gold", version="g2", seed=6),
    }


@pytest.fixture(scope="module")
def proxy_service(files: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(files["proxy"]))) as server:
        yield server


def test_gold_in_process_equals_what_the_service_serves(files: dict[str, Path]) -> None:
    """Same bundle, same encoder, same length correction: the in-process gold is the served score."""
    gold = GoldScorer.load(files["gold"], threads=1, batch_size=2)  # other batches than the service's
    local = gold.score([q for q, _ in PAIRS], [a for _, a in PAIRS])
    with LiveServer(create_app(settings_for(files["gold"]))) as server:
        body = {"pairs": [{"question": q, "answer": a} for q, a in PAIRS]}
        served = httpx.post(f"{server.url}/score", json=body, timeout=30).json()
    assert np.abs(local - np.array(served["scores"])).max() <= 1e-5
    assert np.abs(gold.normalize(local) - np.array(served["normalized"])).max() <= 1e-5
    uncorrected = GoldScorer(dataclasses.replace(gold.model, apply_length_correction=False))
    assert np.abs(uncorrected.score([q for q, _ in PAIRS], [a for _, a in PAIRS]) - local).max() > 0.1
    assert gold.describe()["length_correction"]["applied"] is True


def test_gold_scores_follow_the_groups_and_a_bad_bundle_is_a_gold_error(
    files: dict[str, Path], tmp_path: Path
) -> None:
    gold = GoldScorer.load(files["gold"])
    prompt = Prompt((("user", "how do i bake bread"),), "\n\nHuman: how do i bake bread\n\nAssistant:")
    empty = torch.zeros(0)
    groups = [
        Group(prompt, empty, empty, empty, empty, texts, empty)
        for texts in (["a b", "flour"], ["no"], ["sorry", "x", "y"])
    ]
    per_group = gold_scores(gold, groups)
    assert [len(g) for g in per_group] == [2, 1, 3]
    expected = gold.score([prompt.question] * 6, [" a b", " flour", " no", " sorry", " x", " y"])
    assert np.allclose(np.concatenate(per_group), expected)
    assert all(np.isnan(g).all() for g in gold_scores(None, groups))
    with pytest.raises(GoldError, match="cannot be used"):
        GoldScorer.load(tmp_path / "missing")


def test_run_logs_gold_per_step_and_before_after_with_its_own_std(
    files: dict[str, Path], proxy_service: LiveServer, tmp_path: Path
) -> None:
    config = tiny_config(files["model"], tmp_path, files["prompts"], service_urls=[proxy_service.url],
                         steps=2, gold_bundle=str(files["gold"]), max_new_tokens=30, eval_samples=4)  # fmt: skip
    summary = train(config)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    for r in records:  # the gold's mean in its own std (mean 0.2, std 0.5), beside the proxy's
        assert math.isfinite(r["gold_mean"]) and math.isfinite(r["proxy_mean"]) and r["gold_seconds"] > 0
        assert r["gold_mean"] == pytest.approx((r["gold_raw_mean"] - 0.2) / 0.5)
    before, after = summary["before"], summary["after"]
    rows = [json.loads(line) for line in (tmp_path / "eval_after_samples.jsonl").read_text().splitlines()]
    assert after["gold_mean_raw"] == pytest.approx(np.mean([r["gold_score"] for r in rows]))
    assert after["gold_mean_normalized"] == pytest.approx((after["gold_mean_raw"] - 0.2) / 0.5)
    assert len(after["gold_prompt_means"]) == 2
    lengths = [r["length"] for r in rows]
    assert len(set(lengths)) > 1  # answers of several lengths (EOS), so the correlations are defined
    assert after["gold_length_pearson"] == pytest.approx(
        np.corrcoef([r["gold_score"] for r in rows], lengths)[0, 1]
    )
    assert after["length_pearson"] == pytest.approx(np.corrcoef([r["score"] for r in rows], lengths)[0, 1])
    assert after["median_length"] == np.median(lengths)
    assert summary["gold_gain_in_std"] == pytest.approx(
        (after["gold_mean_raw"] - before["gold_mean_raw"]) / 0.5
    )
    assert math.isfinite(summary["gold_gain_se_in_std"]) and summary["verdict"]
    assert summary["gold_model"]["name"] == "gold" and summary["gold_model"]["version"] == "g1"
    gold = GoldScorer.load(files["gold"])  # the logged gold scores are the gold's scores of those answers
    assert all(len(r["question"]) < 300 for r in rows)  # the samples file keeps the whole tiny questions
    again = gold.score([r["question"] for r in rows], [" " + r["answer"].strip() for r in rows])
    assert np.allclose(again, [r["gold_score"] for r in rows], atol=1e-5)
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_resume_keeps_the_gold_and_refuses_another(
    files: dict[str, Path], proxy_service: LiveServer, tmp_path: Path
) -> None:
    common = {"service_urls": [proxy_service.url], "skip_eval": True}

    def run(out: str, steps: int, gold: Path | None, **more: object) -> None:
        gold_bundle = str(gold) if gold else None
        train(tiny_config(files["model"], tmp_path / out, files["prompts"], steps=steps,
                          gold_bundle=gold_bundle, **common, **more))  # fmt: skip

    run("straight", 3, files["gold"])
    run("split", 2, files["gold"])
    run("split", 3, files["gold"], resume=True)
    straight, split = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("straight", "split"))
    assert [r["gold_mean"] for r in split] == pytest.approx([r["gold_mean"] for r in straight])
    for other in (files["other_gold"], None):
        with pytest.raises(CheckpointError, match="--gold-bundle"):
            run("split", 4, other, resume=True)
    # the penalty is a learning knob (a resumed run keeps it); the gold's path may move, its bundle not
    assert "uncertainty_penalty" not in RESUMABLE_CHANGES and "gold_bundle" in RESUMABLE_CHANGES


@pytest.mark.parametrize(
    ("gains", "expected"),
    [
        ((0.9, 0.1, -0.05, 0.1), "over-optimised: the proxy rose, the gold did not rise"),
        ((0.9, 0.1, -0.5, 0.1), "over-optimised: the proxy rose, the gold fell"),
        ((0.9, 0.1, 0.5, 0.1), "the proxy and the gold both rose"),
        ((0.1, 0.1, 0.05, 0.1), "no clear change in either reward"),
        ((0.1, 0.1, 0.5, 0.1), "the gold rose while the proxy did not rise"),
    ],
)
def test_verdict_counts_a_gain_beyond_two_standard_errors(
    gains: tuple[float, float, float, float], expected: str
) -> None:
    keys = ("gain_in_std", "gain_se_in_std", "gold_gain_in_std", "gold_gain_se_in_std")
    assert verdict(dict(zip(keys, gains, strict=True))) == expected
