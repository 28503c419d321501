"""The uncertainty-weighted reward (Coste et al. 2023): reward - lambda * uncertainty in the reward's own
units, hand-computed on known scores; the start-of-run refusal when the served bundle has no
uncertainty; and a real run against an ensemble bundle whose logged reward is the penalised proxy."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from service.app import create_app
from service.client import ScoreResult
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for
from tests.training.policy_helpers import make_tiny_policy_dir, tiny_config, write_prompts
from training.policy.config import ConfigError
from training.policy.errors import UncertaintyUnavailable
from training.policy.scoring import check_uncertainty_served, penalized_reward, score_answers
from training.policy.trainer import train
from training.runlog import read_jsonl


class _KnownScores:
    """A stand-in client: fixed raw scores, normalised with mean 1 / std 2, and fixed uncertainties."""

    def __init__(self, raw: list[float], uncertainty: list[float] | None) -> None:
        self.raw = np.array(raw)
        self.uncertainty = None if uncertainty is None else np.array(uncertainty)

    async def score(self, pairs: Sequence[tuple[str, str]]) -> ScoreResult:
        n = len(pairs)
        raw = self.raw[:n]
        spread = None if self.uncertainty is None else self.uncertainty[:n]
        return ScoreResult(raw, (raw - 1.0) / 2.0, np.zeros(n, bool), "1", "rm", 0, uncertainty=spread)

    async def models(self) -> dict[str, object]:
        return {"data": [{"name": "rm", "version": "1", "score": {"mean": 1.0, "std": 2.0}}]}


def test_penalty_is_subtracted_in_the_rewards_units() -> None:
    score = np.array([1.0, 0.5, -2.0])
    spread = np.array([0.2, 1.0, 0.0])
    assert np.allclose(penalized_reward(score, spread, 0.5), [0.9, 0.0, -2.0])
    assert penalized_reward(score, np.full(3, np.nan), 0.0) is score  # off: the plain objective
    assert np.isnan(
        penalized_reward(score, np.array([0.1, np.nan, 0.1]), 1.0)[1]
    )  # masked, never unpenalised


def test_normalised_reward_gets_the_normalised_uncertainty() -> None:
    client = _KnownScores([3.0, 1.0, -1.0], [0.4, 2.0, 1.0])  # normalised: 1, 0, -1; uncertainty / std 2
    scores = asyncio.run(score_answers(client, "q", ["a", "b", "c"], "normalized", 0.5, score_std=2.0))
    assert np.allclose(scores.uncertainty, [0.2, 1.0, 0.5])
    assert np.allclose(scores.rewards, [1.0 - 0.1, 0.0 - 0.5, -1.0 - 0.25])
    assert np.allclose(scores.normalized, [1.0, 0.0, -1.0]) and np.allclose(scores.raw, [3.0, 1.0, -1.0])
    raw = asyncio.run(score_answers(client, "q", ["a", "b", "c"], "raw", 0.5, score_std=2.0))
    assert np.allclose(raw.rewards, [3.0 - 0.2, 1.0 - 1.0, -1.0 - 0.5]) and raw.failed == 0


def test_a_penalty_without_served_uncertainty_is_refused_at_once() -> None:
    asyncio.run(check_uncertainty_served(_KnownScores([1.0], None), 0.0))  # no penalty: no question asked
    asyncio.run(check_uncertainty_served(_KnownScores([1.0], [0.3]), 0.5))
    for missing in (None, [math.nan]):
        with pytest.raises(UncertaintyUnavailable, match=r"--quality-heads N"):
            asyncio.run(check_uncertainty_served(_KnownScores([1.0], missing), 0.5))
    with pytest.raises(ConfigError, match="uncertainty_penalty"):
        tiny_config(Path("m"), Path("o"), Path("p"), uncertainty_penalty=-0.1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("penalty")
    return {
        "model": make_tiny_policy_dir(root / "model"),
        "prompts": write_prompts(root / "prompts.jsonl"),
        "plain": make_tiny_bundle(root / "plain", version="1"),
        "ensemble": make_tiny_bundle(
            root / "ens", version="2", quality_heads=3, score_mean=0.5, score_std=2.0
        ),
    }


@pytest.fixture(scope="module")
def ensemble_service(files: dict[str, Path]) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(files["ensemble"]))) as server:
        yield server


def test_penalised_run_logs_the_served_score_minus_lambda_uncertainty(
    files: dict[str, Path], ensemble_service: LiveServer, tmp_path: Path
) -> None:
    config = tiny_config(
        files["model"], tmp_path, files["prompts"], service_urls=[ensemble_service.url], steps=2,
        skip_eval=True, uncertainty_penalty=0.7,
    )  # fmt: skip
    train(config)
    for r in read_jsonl(tmp_path / "metrics.jsonl"):
        assert r["uncertainty_mean"] > 0  # three heads disagree on random weights
        assert r["reward_mean"] == pytest.approx(r["proxy_mean"] - 0.7 * r["uncertainty_mean"])


def test_penalised_run_against_a_plain_bundle_stops_before_loading_the_policy(
    files: dict[str, Path], tmp_path: Path
) -> None:
    with LiveServer(create_app(settings_for(files["plain"]))) as server:
        config = tiny_config(
            Path("/no/such/model"), tmp_path, files["prompts"], service_urls=[server.url],
            uncertainty_penalty=0.5,
        )  # fmt: skip
        with pytest.raises(UncertaintyUnavailable, match="tiny-rm 1 returns none"):
            train(config)
    assert not (tmp_path / "metrics.jsonl").exists()
