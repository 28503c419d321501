"""OpenRLHF: its released agent executor's reward call, unmodified, against a real service.

The code under test is ``openrlhf/utils/agent.py`` from the openrlhf 0.11.2 wheel on PyPI
(``SingleTurnAgentExecutor``: it generates one sample, then asks ``--reward.remote_url`` for its reward,
one sample per request, 5 tries, 180 s timeout; a ``.py`` URL is imported and its ``reward_func``
called instead). It runs from the unpacked wheel (tests/integrations/released.py) with its real
``openrlhf/utils/logging_utils.py`` and aiohttp; nothing is stubbed in that module's imports. What it
gets from outside, as in a real run, is a tokenizer and a vLLM engine: here a character-level
tokenizer and an engine that answers with a fixed text (no model runs; the reward path is the same).
Its retry pause (``asyncio.sleep(1)`` between the 5 tries) is shortened in the failure test only.

The executor turns a reward it could not fetch into ``reward=None`` (then ``Experience.rewards=None``
in ``samples_generator.py``): OpenRLHF's own "no reward", which these tests require instead of a 0.
"""

from __future__ import annotations

import asyncio
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import integrations.openrlhf_reward
from tests.integrations.conftest import TOLERANCE, scores_of, unit
from tests.integrations.released import load_released, released_package
from tests.service.conftest import LiveServer, dead_url

VERSION = "0.11.2"


class CharTokenizer:
    """One token per character: prompt text -> ids -> the same text back (what decode must give)."""

    def __call__(
        self, text: str, add_special_tokens: bool, return_tensors: str
    ) -> dict[str, list[np.ndarray]]:
        return {"input_ids": [np.array([ord(c) for c in text])]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class Engine:
    """A vLLM engine that always answers ``text`` (the executor's only use of it: one generate call)."""

    text: str

    async def generate(self, prompt_ids: list[int], params: Any, multi_modal_data: Any = None) -> Any:
        output = types.SimpleNamespace(
            token_ids=[ord(c) for c in self.text], text=self.text, finish_reason="stop", logprobs=None
        )
        return types.SimpleNamespace(outputs=[output])


@dataclass
class SamplingParams:
    max_tokens: int | None = 64
    logprobs: int | None = None


@pytest.fixture(scope="module")
def openrlhf_root() -> Path:
    return released_package("openrlhf", VERSION)


@pytest.fixture
def agent(openrlhf_root: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    return load_released(openrlhf_root, "openrlhf.utils.agent", monkeypatch)


def run(agent: types.ModuleType, remote_url: str | list[str], prompt: str, response: str) -> dict[str, Any]:
    executor = agent.SingleTurnAgentExecutor(remote_url)
    work = executor.execute(prompt, "label", SamplingParams(), 512, CharTokenizer(), Engine(response))
    return asyncio.run(work)


HH_PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"
CHATML_PROMPT = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"


def test_get_reward_route_with_openrlhfs_own_call(service: LiveServer, agent: types.ModuleType) -> None:
    output = run(agent, f"{service.url}/get_reward", HH_PROMPT, " Mix flour and water.")
    (expected,) = scores_of(service.url, [(HH_PROMPT, " Mix flour and water.")])
    assert output["reward"] == pytest.approx([expected], abs=TOLERANCE)
    assert output["scores"] == pytest.approx([unit(expected)], abs=TOLERANCE)  # in [0, 1]: dynamic filtering
    logs = output["extra_logs"]
    assert logs["rm_truncated"] == [0.0]
    # samples_generator.py turns every extra_logs value into torch.tensor([value]): numbers only
    assert all(isinstance(v, int | float) for values in logs.values() for v in values)


def test_several_urls_as_openrlhf_splits_them(service: LiveServer, agent: types.ModuleType) -> None:
    """--reward.remote_url a,b: one sample goes to one of them, rotating; both are our service."""
    urls = [f"{service.url}/get_reward", f"{service.url}/get_reward"]
    (expected,) = scores_of(service.url, [(HH_PROMPT, " Yes.")])
    for _ in range(3):
        assert run(agent, urls, HH_PROMPT, " Yes.")["reward"] == pytest.approx([expected], abs=TOLERANCE)


def test_reward_func_file_converts_templated_text(
    service: LiveServer, agent: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--reward.remote_url integrations/openrlhf_reward.py: the chat-templated query becomes hh text."""
    monkeypatch.setenv("RLHF_SERVICE_URL", service.url)
    path = integrations.openrlhf_reward.__file__
    output = run(agent, path, CHATML_PROMPT, "Mix flour and water.<|im_end|>")
    (expected,) = scores_of(service.url, [(HH_PROMPT, " Mix flour and water.")])
    assert output["reward"] == pytest.approx([expected], abs=TOLERANCE)
    assert output["scores"] == pytest.approx([unit(expected)], abs=TOLERANCE)
    assert output["extra_logs"] == {"rm_truncated": [0.0]}


def _no_wait(agent: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor's 1 s pause between its 5 tries, made 0 (its asyncio, everything else unchanged)."""
    fast = types.ModuleType("asyncio")
    fast.__dict__.update(vars(asyncio))
    fast.sleep = lambda seconds, result=None: asyncio.sleep(0, result)  # type: ignore[attr-defined]
    monkeypatch.setattr(agent, "asyncio", fast)


@pytest.mark.parametrize("through", ["http", "reward_func"])
def test_a_failed_reward_is_openrlhfs_none_never_zero(
    agent: types.ModuleType, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    dead = dead_url()
    _no_wait(agent, monkeypatch)
    if through == "http":
        url = f"{dead}/get_reward"
    else:
        monkeypatch.setenv("RLHF_SERVICE_URL", dead)
        url = integrations.openrlhf_reward.__file__
        original = integrations.openrlhf_reward.shared_client
        monkeypatch.setattr(
            integrations.openrlhf_reward, "shared_client", lambda: original(max_retries=0, timeout=2.0)
        )
    output = run(agent, url, HH_PROMPT, " Mix flour.")
    assert output["reward"] is None and output["scores"] is None


def test_the_executor_is_the_released_one(agent: types.ModuleType, openrlhf_root: Path) -> None:
    """The module ran from the wheel's own file, and its HTTP call is the one described above."""
    path = Path(str(agent.__file__))
    assert path == openrlhf_root / "openrlhf" / "utils" / "agent.py"
    source = path.read_text()
    assert '"query": queries_list' in source and "try_max_times=5" in source and "total=180" in source
