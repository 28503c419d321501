"""Every adapter's uncertainty penalty and length-disentangled guard (`integrations.reward_options`),
against real services: an ensemble bundle with a length head, a plain bundle, and a bundle with a
length correction served with and without it.

The reference is the service's own ``/score``: ``scores - lambda * uncertainty`` for a raw reward and
``normalized - lambda * uncertainty_normalized`` for a normalised one. TRL's functions run through TRL's
own ``GRPOTrainer._calculate_rewards`` (tests/integrations/test_trl.py); veRL's, OpenRLHF's and slime's
are called as those trainers call them (their loading paths are tested in their own files).
"""

from __future__ import annotations

import asyncio
import math
import types
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from integrations import openrlhf_reward, slime_reward, verl_reward
from integrations.reward_options import (
    LENGTH_ENV,
    PENALTY_ENV,
    RewardOptions,
    RewardSetupError,
    ServedModel,
    finite,
    served_model,
)
from integrations.trl_reward import AsyncServiceRewardFunction, ServiceRewardFunction
from service.client import RewardClient, RewardUnavailable, ScoreResult
from tests.bundle_factory import make_tiny_bundle
from tests.integrations.test_trl import COMPLETIONS, PAIRS, PROMPTS, calculate_rewards, trainer_with
from tests.service.conftest import LiveServer, live_servers, settings_for

MEAN, STD = 1.0, 2.0
LAMBDA = 0.7
TOLERANCE = 1e-4
CORRECTION = {"kind": "linear", "slope": 0.25, "intercept": 1.0, "unit": "answer_tokens",
              "mean_length": 3.0, "fitted_on": 400, "pearson": -0.6}  # fmt: skip
HH_PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    root = tmp_path_factory.mktemp("penalty")
    stats = {"score_mean": MEAN, "score_std": STD}
    # distinct versions: a trainer tells models apart by version
    make_tiny_bundle(root / "ensemble", version="ens", seed=3, quality_heads=4, length_head=True, **stats)
    make_tiny_bundle(root / "plain", version="plain", **stats)
    make_tiny_bundle(root / "corrected", version="lc", length_correction=CORRECTION, **stats)
    configs = {
        "ensemble": settings_for(root / "ensemble"),
        "plain": settings_for(root / "plain"),
        "corrected": settings_for(root / "corrected"),
        "uncorrected": settings_for(root / "corrected", length_correction=False),
    }
    with live_servers(configs) as live:
        yield live


def served(url: str, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """The service's own /score of ``pairs``, every per-item list as an array."""
    body = {"pairs": [{"question": q, "answer": a} for q, a in pairs]}
    response = httpx.post(f"{url}/score", json=body, timeout=30)
    assert response.status_code == 200, response.text
    got = response.json()
    keys = ("scores", "normalized", "uncertainty", "uncertainty_normalized")
    return {k: np.asarray(got[k], dtype=np.float64) for k in keys if got[k] is not None}


def penalised(reference: dict[str, np.ndarray], normalized: bool) -> list[float]:
    if normalized:
        return (reference["normalized"] - LAMBDA * reference["uncertainty_normalized"]).tolist()
    return (reference["scores"] - LAMBDA * reference["uncertainty"]).tolist()


def test_trl_functions_return_score_minus_lambda_uncertainty(
    servers: dict[str, LiveServer], trl_loop: Any
) -> None:
    url = servers["ensemble"].url
    reference = served(url, PAIRS)
    assert (reference["uncertainty"] > 0).all()  # the heads disagree: the penalty is not a no-op
    funcs = [
        AsyncServiceRewardFunction(url, name="raw_async", uncertainty_penalty=LAMBDA),
        AsyncServiceRewardFunction(url, name="norm_async", normalized=True, uncertainty_penalty=LAMBDA),
        ServiceRewardFunction(url, name="norm_sync", normalized=True, uncertainty_penalty=LAMBDA),
        ServiceRewardFunction(url, name="plain_sync"),
    ]
    metrics: dict[str, float] = {}
    try:
        rewards = calculate_rewards(trainer_with(funcs, trl_loop, metrics), PROMPTS, COMPLETIONS)
    finally:
        funcs[2].close()  # type: ignore[union-attr]
        funcs[3].close()  # type: ignore[union-attr]
    assert rewards[:, 0].tolist() == pytest.approx(penalised(reference, False), abs=TOLERANCE)
    assert rewards[:, 1].tolist() == pytest.approx(penalised(reference, True), abs=TOLERANCE)
    assert rewards[:, 2].tolist() == pytest.approx(penalised(reference, True), abs=TOLERANCE)
    assert rewards[:, 3].tolist() == pytest.approx(reference["scores"].tolist(), abs=TOLERANCE)
    assert metrics["raw_async/uncertainty"] == pytest.approx(
        float(reference["uncertainty"].mean()), abs=TOLERANCE
    )
    assert "plain_sync/uncertainty" not in metrics


def test_verl_compute_score_takes_the_penalty_as_a_reward_kwarg(servers: dict[str, LiveServer]) -> None:
    url = servers["ensemble"].url
    pair = (HH_PROMPT, " Mix flour and water.")
    reference = served(url, [pair])
    extra = {"prompt": [{"role": "user", "content": "How do I bake bread?"}]}
    kwargs: dict[str, Any] = {"service_url": url, "uncertainty_penalty": LAMBDA}
    blocking = verl_reward.compute_score("hh", "Mix flour and water.", None, extra, **kwargs)
    awaited = asyncio.run(
        verl_reward.compute_score_async("hh", "Mix flour and water.", None, extra, normalized=True, **kwargs)
    )
    assert blocking["score"] == pytest.approx(penalised(reference, False)[0], abs=TOLERANCE)
    assert awaited["score"] == pytest.approx(penalised(reference, True)[0], abs=TOLERANCE)
    assert blocking["uncertainty"] == pytest.approx(float(reference["uncertainty"][0]), abs=TOLERANCE)
    assert awaited["normalized"] == pytest.approx(float(reference["normalized"][0]), abs=TOLERANCE)
    plain = verl_reward.compute_score("hh", "Mix flour and water.", None, extra, service_url=url)
    assert "uncertainty" not in plain and plain["score"] == pytest.approx(
        float(reference["scores"][0]), abs=TOLERANCE
    )


def test_openrlhf_reward_file_reads_the_penalty_from_the_environment(
    servers: dict[str, LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = servers["ensemble"].url
    monkeypatch.setenv("RLHF_SERVICE_URL", url)
    monkeypatch.setenv(PENALTY_ENV, str(LAMBDA))
    query = HH_PROMPT + " Mix flour and water."
    out = openrlhf_reward.reward_func([query], [HH_PROMPT])
    reference = served(url, [(HH_PROMPT, " Mix flour and water.")])
    assert out["rewards"] == pytest.approx(penalised(reference, False), abs=TOLERANCE)
    # scores stay the reward model's own verdict in [0, 1]
    unit = 1 / (1 + math.exp(-float(reference["normalized"][0])))
    assert out["scores"] == pytest.approx([unit], abs=TOLERANCE)
    assert out["extra_logs"]["rm_uncertainty"] == pytest.approx(
        reference["uncertainty"].tolist(), abs=TOLERANCE
    )
    monkeypatch.delenv(PENALTY_ENV)
    unpenalised = openrlhf_reward.reward_func([query], [HH_PROMPT])
    assert unpenalised["rewards"] == pytest.approx(reference["scores"].tolist(), abs=TOLERANCE)
    assert "rm_uncertainty" not in unpenalised["extra_logs"]


def test_slime_reward_reads_the_penalty_from_the_environment(
    servers: dict[str, LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = servers["ensemble"].url
    monkeypatch.delenv("RLHF_SERVICE_URL", raising=False)
    monkeypatch.setenv(PENALTY_ENV, str(LAMBDA))
    monkeypatch.setenv("RLHF_REWARD", "normalized")
    args = types.SimpleNamespace(rm_url=url)
    group = [
        types.SimpleNamespace(prompt=HH_PROMPT, response=r, label=None) for r in (" Knead.", " Bake it.")
    ]
    rewards = asyncio.run(slime_reward.reward(args, group))
    reference = served(url, [(HH_PROMPT, " Knead."), (HH_PROMPT, " Bake it.")])
    assert rewards == pytest.approx(penalised(reference, True), abs=TOLERANCE)


def test_a_penalty_on_a_bundle_without_uncertainty_is_a_set_up_error(
    servers: dict[str, LiveServer], monkeypatch: pytest.MonkeyPatch, trl_loop: Any
) -> None:
    url = servers["plain"].url
    with pytest.raises(RewardSetupError, match="quality-heads"):
        calculate_rewards(
            trainer_with([AsyncServiceRewardFunction(url, uncertainty_penalty=0.1)], trl_loop, {}),
            PROMPTS[:1],
            COMPLETIONS[:1],
        )
    extra = {"question": HH_PROMPT}
    with pytest.raises(RewardSetupError, match="returns none"):
        verl_reward.compute_score("hh", "Mix.", None, extra, service_url=url, uncertainty_penalty=0.1)
    monkeypatch.setenv(PENALTY_ENV, "0.1")
    sample = types.SimpleNamespace(prompt=HH_PROMPT, response=" Mix.", label=None)
    with pytest.raises(RewardSetupError):
        asyncio.run(slime_reward.reward(types.SimpleNamespace(rm_url=url), sample))


@pytest.mark.parametrize(
    ("server", "disentangled"),
    [("ensemble", True), ("corrected", True), ("plain", False), ("uncorrected", False)],
)
def test_the_length_guard_accepts_only_a_length_disentangled_score(
    servers: dict[str, LiveServer], monkeypatch: pytest.MonkeyPatch, server: str, disentangled: bool
) -> None:
    """A length head, or a length correction the service applies; the same corrected bundle served with
    --no-length-correction is refused."""
    url = servers[server].url
    reference = served(url, [(HH_PROMPT, " Mix.")])
    function = ServiceRewardFunction(url, require_length_disentangled=True)
    monkeypatch.setenv("RLHF_SERVICE_URL", url)
    monkeypatch.setenv(LENGTH_ENV, "yes")
    try:
        if disentangled:
            assert function([HH_PROMPT], [" Mix."]) == pytest.approx(
                reference["scores"].tolist(), abs=TOLERANCE
            )
            assert openrlhf_reward.reward_func([HH_PROMPT + " Mix."], [HH_PROMPT])[
                "rewards"
            ] == pytest.approx(reference["scores"].tolist(), abs=TOLERANCE)
        else:
            with pytest.raises(RewardSetupError, match="length"):
                function([HH_PROMPT], [" Mix."])
            with pytest.raises(RewardSetupError, match="length"):
                openrlhf_reward.reward_func([HH_PROMPT + " Mix."], [HH_PROMPT])
    finally:
        function.close()


class CountingClient(RewardClient):
    """The real client, counting its /v1/models calls and able to pretend a reload happened."""

    def __init__(self, url: str, reloaded_to: str | None = None) -> None:
        super().__init__([url])
        self.calls, self.reloaded_to = 0, reloaded_to

    def models(self) -> dict[str, Any]:
        self.calls += 1
        body = super().models()
        if self.reloaded_to is not None:
            body["data"][0]["version"] = self.reloaded_to
        return body


def test_the_served_model_is_looked_up_once_per_client_and_version(servers: dict[str, LiveServer]) -> None:
    url = servers["ensemble"].url
    options = RewardOptions(normalized=True, uncertainty_penalty=LAMBDA)
    with CountingClient(url) as client:
        for _ in range(3):
            result = client.score([(HH_PROMPT, " Mix.")])
            model = served_model(client, result)
            assert isinstance(model, ServedModel) and model.score_std == STD and model.length_head
            assert np.isfinite(options.rewards(result, model)).all()
        assert client.calls == 1
    # a reload between the scores and the lookup: the reward is not made up with the new model's std
    with CountingClient(url, reloaded_to="other") as client:
        result = client.score([(HH_PROMPT, " Mix.")])
        assert served_model(client, result) is None and client.calls == 2
        rewards = options.rewards(result, None)
        assert np.isnan(rewards).all()
        with pytest.raises(RewardUnavailable, match="changed its model"):
            finite(rewards, result)


def test_options_and_their_environment_variables_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PENALTY_ENV, "0.25")
    monkeypatch.setenv(LENGTH_ENV, "1")
    assert RewardOptions.resolve() == RewardOptions(False, 0.25, True)
    assert RewardOptions.resolve(True, 0.0, False) == RewardOptions(True, 0.0, False)  # given beats env
    for bad in ("-1", "nan", "inf", "a lot"):
        monkeypatch.setenv(PENALTY_ENV, bad)
        with pytest.raises(ValueError, match=PENALTY_ENV):
            RewardOptions.resolve()
    monkeypatch.delenv(PENALTY_ENV)
    monkeypatch.setenv(LENGTH_ENV, "maybe")
    with pytest.raises(ValueError, match=LENGTH_ENV):
        RewardOptions.resolve()
    with pytest.raises(ValueError, match="finite"):
        RewardOptions(uncertainty_penalty=math.inf)
    # a failed item stays NaN (the adapter's "no reward"), never penalised into a number
    result = ScoreResult(
        np.array([1.0, np.nan]), np.array([0.0, np.nan]), np.zeros(2, bool), "v", "m", 1,
        uncertainty=np.array([0.5, np.nan]),
    )  # fmt: skip
    rewards = RewardOptions(uncertainty_penalty=2.0).rewards(result)
    assert rewards[0] == 0.0 and math.isnan(rewards[1])


def test_a_models_body_without_a_usable_std_is_refused() -> None:
    with pytest.raises(RewardUnavailable, match="usable model entry"):
        ServedModel.from_models_response({"data": [{"name": "m", "version": "1", "score": {"std": 0}}]})
    with pytest.raises(RewardUnavailable):
        ServedModel.from_models_response({"data": []})
