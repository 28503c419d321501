"""Every adapter against a `chat` bundle: it sends conversations (``{"messages": [...]}``), so the system
message and the contents as written reach the reward model's chat template; a `pair` bundle keeps
getting hh pairs, and a reload that changes the format changes what is sent.

The reference is the service's own ``/score`` of the conversations the adapters must send. The chat
bundle is the tiny graph with a ChatML template (tests/service/chat_bundles.py): a system message
and spaces are tokens it reads, so a pair (which has neither) would score differently, and the tests
check that it does.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from integrations import openrlhf_reward, slime_reward, verl_reward
from integrations.convert import to_pair
from integrations.reward_options import ServedModel
from integrations.scorefile import score_file
from integrations.served_format import UNKNOWN, score_as_served
from integrations.trl_reward import AsyncServiceRewardFunction, ServiceRewardFunction
from service.app import create_app
from service.client import RewardClient, RewardUnavailable, ScoreItem, ScoreResult
from tests.bundle_factory import make_tiny_bundle
from tests.integrations.test_trl import calculate_rewards, trainer_with
from tests.service.chat_bundles import make_chat_bundle
from tests.service.chat_helpers import CHATML, SPECIAL_TOKENS
from tests.service.conftest import LiveServer, settings_for

TOLERANCE = 1e-4
MEAN, STD = 1.0, 2.0
SYSTEM = {"role": "system", "content": "Answer like a baker."}
USER = {"role": "user", "content": "How do I bake bread?  "}  # trailing spaces: kept for a chat bundle
CHATML_PROMPT = (
    "<|im_start|>system\nAnswer like a baker.<|im_end|>\n<|im_start|>user\nHow do I bake bread?  <|im_end|>\n"
    "<|im_start|>assistant\n"
)
HH_PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"
ANSWER = "Mix flour and water."


def conversation(*turns: dict[str, str], answer: str = ANSWER) -> list[dict[str, str]]:
    return [*turns, {"role": "assistant", "content": answer}]


WITH_SYSTEM = conversation(SYSTEM, USER)  # what a system-prompted sample must be scored as


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat-adapters")
    make_chat_bundle(root / "chat", CHATML, SPECIAL_TOKENS, version="chat", score_mean=MEAN, score_std=STD)
    make_tiny_bundle(root / "pair", version="pair", score_mean=MEAN, score_std=STD)
    return root


@pytest.fixture(scope="module")
def chat_live(root: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings_for(root / "chat"))) as server:
        yield server


def scored(url: str, items: list[dict[str, Any]]) -> list[float]:
    """The service's own /score of items (pairs or {"messages"}): the reference."""
    response = httpx.post(f"{url}/score", json={"pairs": items}, timeout=30)
    assert response.status_code == 200, response.text
    return [float(s) for s in response.json()["scores"]]


def of_messages(url: str, *conversations: list[dict[str, str]]) -> list[float]:
    return scored(url, [{"messages": c} for c in conversations])


def of_pairs(url: str, *pairs: tuple[str, str]) -> list[float]:
    return scored(url, [{"question": q, "answer": a} for q, a in pairs])


def test_the_system_message_and_spaces_change_the_chat_bundles_score(chat_live: LiveServer) -> None:
    """Otherwise the tests below could not tell a conversation from the pair it would lose them in."""
    (full,) = of_messages(chat_live.url, WITH_SYSTEM)
    (as_pair,) = of_pairs(chat_live.url, to_pair([SYSTEM, USER], ANSWER))
    (unstripped,) = of_messages(
        chat_live.url, conversation({"role": "user", "content": "How do I bake bread?"})
    )
    assert abs(full - as_pair) > 1e-3 and abs(full - unstripped) > 1e-3


def test_trl_functions_send_conversations(chat_live: LiveServer, trl_loop: Any) -> None:
    prompts: list[Any] = [[SYSTEM, USER], CHATML_PROMPT, HH_PROMPT, "How do I bake bread?  "]
    completions: list[Any] = [
        [{"role": "assistant", "content": ANSWER}],
        ANSWER + "<|im_end|>",
        " " + ANSWER,
        ANSWER,
    ]
    expected = of_messages(
        chat_live.url,
        WITH_SYSTEM,
        WITH_SYSTEM,
        conversation({"role": "user", "content": "How do I bake bread?"}),  # hh text holds no spaces to keep
        conversation(USER),
    )
    funcs = [
        AsyncServiceRewardFunction(chat_live.url, name="chat_async"),
        ServiceRewardFunction(chat_live.url, name="chat_sync"),
    ]
    try:
        rewards = calculate_rewards(trainer_with(funcs, trl_loop, {}), prompts, completions)
    finally:
        funcs[1].close()  # type: ignore[union-attr]
    assert rewards[:, 0].tolist() == pytest.approx(expected, abs=TOLERANCE)
    assert rewards[:, 1].tolist() == pytest.approx(expected, abs=TOLERANCE)


def test_verl_compute_score_sends_the_conversation(chat_live: LiveServer) -> None:
    (expected,) = of_messages(chat_live.url, WITH_SYSTEM)
    extra = {"prompt": [SYSTEM, USER]}
    blocking = verl_reward.compute_score("chat", ANSWER, None, extra, service_url=chat_live.url)
    awaited = asyncio.run(
        verl_reward.compute_score_async(
            "chat", ANSWER, None, extra, service_url=chat_live.url, normalized=True
        )
    )
    assert blocking["score"] == pytest.approx(expected, abs=TOLERANCE)
    assert awaited["score"] == pytest.approx((expected - MEAN) / STD, abs=TOLERANCE)


def test_openrlhf_reward_file_scores_the_query_as_the_route_does(
    chat_live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter and ``/get_reward`` read the same templated query into the same conversation."""
    monkeypatch.setenv("RLHF_SERVICE_URL", chat_live.url)
    query = CHATML_PROMPT + ANSWER + "<|im_end|>"
    out = openrlhf_reward.reward_func([query], [CHATML_PROMPT])
    expected = of_messages(chat_live.url, WITH_SYSTEM)
    assert out["rewards"] == pytest.approx(expected, abs=TOLERANCE)
    route = httpx.post(
        f"{chat_live.url}/get_reward", json={"query": [query], "prompts": [CHATML_PROMPT]}
    ).json()
    assert out["rewards"] == pytest.approx(route["rewards"], abs=TOLERANCE)


def test_slime_reward_sends_each_samples_conversation(chat_live: LiveServer) -> None:
    args = types.SimpleNamespace(rm_url=chat_live.url)
    group = [
        types.SimpleNamespace(prompt=[SYSTEM, USER], response=ANSWER, label=None),
        types.SimpleNamespace(prompt=CHATML_PROMPT, response="Use an oven.<|im_end|>", label=None),
    ]
    rewards = asyncio.run(slime_reward.reward(args, group))
    expected = of_messages(chat_live.url, WITH_SYSTEM, conversation(SYSTEM, USER, answer="Use an oven."))
    assert rewards == pytest.approx(expected, abs=TOLERANCE)


def test_rlhf_score_rows_become_conversations(chat_live: LiveServer, tmp_path: Path) -> None:
    rows = [
        {"messages": WITH_SYSTEM},
        {"prompt": [SYSTEM, USER], "chosen": ANSWER, "rejected": "No."},
        {"question": HH_PROMPT, "answer": " " + ANSWER},  # a pair stays a pair: the service reads it
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with RewardClient(chat_live.url) as client:
        score_file(data, tmp_path / "out.jsonl", client)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    got = [out[0]["score"], out[1]["chosen"]["score"], out[1]["rejected"]["score"], out[2]["score"]]
    expected = [
        *of_messages(chat_live.url, WITH_SYSTEM, WITH_SYSTEM, conversation(SYSTEM, USER, answer="No.")),
        *of_pairs(chat_live.url, (HH_PROMPT, " " + ANSWER)),
    ]
    assert got == pytest.approx(expected, abs=TOLERANCE)


class Recording(RewardClient):
    """The real client, recording what each /score call sent and counting /v1/models lookups."""

    def __init__(self, url: str, models_fail: bool = False) -> None:
        super().__init__([url], max_retries=0)
        self.sent: list[list[ScoreItem]] = []
        self.lookups, self.models_fail = 0, models_fail

    def score(self, pairs: Any, *, raise_on_failure: bool = False) -> ScoreResult:
        self.sent.append(list(pairs))
        return super().score(pairs, raise_on_failure=raise_on_failure)

    def models(self) -> dict[str, Any]:
        self.lookups += 1
        if self.models_fail:
            raise RewardUnavailable("GET /v1/models failed: test")
        return super().models()


def build(fmt: str) -> list[ScoreItem]:
    return [{"messages": WITH_SYSTEM}] if fmt == "chat" else [to_pair([SYSTEM, USER], ANSWER)]


def test_a_reload_that_changes_the_format_changes_what_is_sent(root: Path, tmp_path: Path) -> None:
    bundles = tmp_path / "bundles"
    for name in ("pair", "chat"):
        shutil.copytree(root / name, bundles / name)
    with LiveServer(create_app(settings_for(bundles / "pair"))) as server, Recording(server.url) as client:
        result, model = score_as_served(client, build)
        assert isinstance(model, ServedModel) and model.input_format == "pair"
        assert result.scores.tolist() == pytest.approx(of_pairs(server.url, to_pair([SYSTEM, USER], ANSWER)))
        score_as_served(client, build)
        assert client.lookups == 1 and [type(s[0]) for s in client.sent] == [
            tuple,
            tuple,
        ]  # no lookup per call
        reload = httpx.post(f"{server.url}/admin/reload", json={"bundle": "chat"}, timeout=60)
        assert reload.status_code == 200, reload.text
        client.sent.clear()
        result, model = score_as_served(client, build)
        # sent as pairs (the format last seen), then again as the conversation the new model reads
        assert [type(s[0]) for s in client.sent] == [tuple, dict]
        assert model is not None and model.input_format == "chat" and model.version == "chat"
        assert result.scores.tolist() == pytest.approx(of_messages(server.url, WITH_SYSTEM), abs=TOLERANCE)
        client.sent.clear()
        score_as_served(client, build)
        assert [type(s[0]) for s in client.sent] == [dict] and client.lookups == 2


def test_scores_in_a_format_never_learnt_are_no_reward(chat_live: LiveServer) -> None:
    """/v1/models failing both before and after the scores: the pair a chat bundle would have read
    without its system message is not passed off as the reward (NaN, each adapter's own no-reward)."""
    with Recording(chat_live.url, models_fail=True) as client:
        result, model = score_as_served(client, build)
    assert model is None and np.isnan(result.scores).all() and result.failed == 1
    assert UNKNOWN in result.errors
