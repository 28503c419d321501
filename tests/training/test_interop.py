"""Interop against the real service: a TRL GRPOTrainer reward function, and OpenRLHF's /get_reward payload."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from service.app import create_app
from service.client import RewardClient
from tests.bundle_factory import make_tiny_bundle
from tests.service.conftest import LiveServer, settings_for
from training.policy.interop import ServiceRewardFunction, completion_to_answer, prompt_to_question


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    bundle = make_tiny_bundle(
        tmp_path_factory.mktemp("interop") / "rm", version="7", score_mean=1.0, score_std=2.0
    )
    with LiveServer(create_app(settings_for(bundle))) as server:
        yield server


def _call_like_trl(func: ServiceRewardFunction, prompts: list, completions: list) -> list:
    """Exactly how TRL 1.x GRPOTrainer._calculate_rewards calls a plain-function reward."""
    reward_kwargs = {"ground_truth": ["x"] * len(prompts), "trainer_state": None, "log_extra": None,
                     "log_metric": None}  # fmt: skip
    return func(
        prompts=prompts, completions=completions, completion_ids=[[1, 2]] * len(prompts), **reward_kwargs
    )


def test_trl_reward_function_standard_and_conversational_formats(service: LiveServer) -> None:
    func = ServiceRewardFunction(service.url)
    try:
        assert func.__name__ == "reward_service"
        prompts = ["How do I bake bread?", "\n\nHuman: Is it safe?\n\nAssistant:"]
        completions = ["Mix flour and water.", "Yes, mostly."]
        standard = _call_like_trl(func, prompts, completions)
        conversational = _call_like_trl(
            func,
            [[{"role": "user", "content": "How do I bake bread?"}], [{"role": "user", "content": "Is it safe?"}]],
            [[{"role": "assistant", "content": "Mix flour and water."}], [{"role": "assistant", "content": "Yes, mostly."}]],
        )  # fmt: skip
        assert len(standard) == 2 and all(isinstance(r, float) for r in standard)
        assert conversational == pytest.approx(standard)  # same text, same hh rendering, same reward
        # the rewards are the service's raw scores of the hh-formatted pairs
        with RewardClient(service.url) as client:
            direct = client.score(
                [("\n\nHuman: How do I bake bread?\n\nAssistant:", " Mix flour and water."),
                 ("\n\nHuman: Is it safe?\n\nAssistant:", " Yes, mostly.")]
            )  # fmt: skip
        assert standard == pytest.approx(list(direct.scores))
        assert func.model_version == "7"
        normalized = ServiceRewardFunction(service.url, normalized=True)
        try:
            assert _call_like_trl(normalized, prompts, completions) == pytest.approx(
                [(s - 1.0) / 2.0 for s in standard]
            )
        finally:
            normalized.close()
    finally:
        func.close()


def test_unscorable_completions_come_back_as_none_not_zero() -> None:
    with socket.socket() as sock:  # a port nothing listens on: real connection refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    func = ServiceRewardFunction(dead, max_retries=0, timeout=2.0)
    try:
        assert _call_like_trl(func, ["a", "b"], ["c", "d"]) == [None, None]
    finally:
        func.close()
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        func(prompts=["a", "b"], completions=["c"])


def test_format_conversion_helpers() -> None:
    assert prompt_to_question("Hi") == "\n\nHuman: Hi\n\nAssistant:"
    system_and_user = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert prompt_to_question(system_and_user) == "\n\nHuman: Hi\n\nAssistant:"
    assert completion_to_answer([{"role": "assistant", "content": "Hello "}]) == " Hello"


def test_openrlhf_remote_rm_payload_against_the_real_service(service: LiveServer) -> None:
    """OpenRLHF posts {"query", "prompts", "labels"} to --remote_rm_url and reads "rewards"."""
    prompts = ["\n\nHuman: How do I bake bread?\n\nAssistant:", "\n\nHuman: Is it safe?\n\nAssistant:"]
    responses = [" Mix flour and water.", " Yes, mostly."]
    payload = {
        "query": [p + r for p, r in zip(prompts, responses, strict=True)],
        "prompts": prompts,
        "labels": ["", ""],
    }
    response = httpx.post(f"{service.url}/get_reward", json=payload, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["rewards"]) == 2 and all(0.0 < s < 1.0 for s in body["scores"])  # calibrated rewards
    with RewardClient(service.url) as client:
        direct = client.score(list(zip(prompts, responses, strict=True)))
    assert body["rewards"] == pytest.approx(list(direct.scores), abs=1e-5)
    assert response.headers["X-Model-Version"] == "7"
