"""slime: the exact request its remote reward model call builds, against a real service; and our
``--custom-rm-path`` function called both ways slime calls it.

slime is not on PyPI and its code is not copied here. Read at THUDM/slime commit
624b824a898ab0ec1fcb4d373004c7f3852bf515, ``slime/rollout/rm_hub/__init__.py``, ``remote_rm`` (with
``--rm-type remote_rm --rm-url URL``): one POST per sample to ``args.rm_url`` with aiohttp,
``json={"prompt": sample.prompt, "response": sample.response, "label": sample.label}``, on a shared
``ClientSession`` (``TCPConnector(limit=64)``, ``ClientTimeout(total=120)``); then
``resp.raise_for_status()`` and ``await resp.json()`` is the sample's reward (a number; a dict only
with ``--reward-key``). It retries up to 10 times with backoff and then re-raises: slime has no "no
reward" value, a failure fails the rollout. ``async_rm`` / ``batched_async_rm`` in the same file await
``--custom-rm-path`` functions as ``fn(args, sample)`` and ``fn(args, samples)``. ``Sample.prompt`` is
``str | list[dict[str, str]]`` (``slime/utils/types.py``): the rendered text with
``--apply-chat-template``, else what the dataset holds.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import aiohttp
import pytest

from integrations import slime_reward
from integrations.convert import to_pair
from service.client import RewardUnavailable
from tests.integrations.conftest import SCORE_MEAN, SCORE_STD, TOLERANCE, scores_of
from tests.service.conftest import LiveServer, dead_url

CHATML_PROMPT = "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
HH_PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"


async def post_like_slime(url: str, samples: list[dict[str, Any]]) -> list[Any]:
    """slime's request, built as its remote_rm builds it, for several samples at once (as its rollout does)."""
    connector = aiohttp.TCPConnector(limit=64, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one(sample: dict[str, Any]) -> Any:
            payload = {"prompt": sample["prompt"], "response": sample["response"], "label": sample["label"]}
            async with session.post(url, json=payload) as resp:
                resp.raise_for_status()
                return await resp.json()

        return await asyncio.gather(*(one(s) for s in samples))


def test_slime_remote_rm_request_gets_the_score_as_a_number(service: LiveServer) -> None:
    samples: list[dict[str, Any]] = [
        {"prompt": HH_PROMPT, "response": " Mix flour and water.", "label": None},
        {"prompt": CHATML_PROMPT, "response": "Mix flour and water.", "label": "42"},  # --apply-chat-template
    ]
    rewards = asyncio.run(post_like_slime(f"{service.url}/slime/reward", samples))
    assert all(type(r) is float for r in rewards)  # the bare JSON number slime uses as the reward
    # the route reads a rendered prompt back into its turns, as the adapters do (integrations.convert)
    expected = scores_of(service.url, [to_pair(s["prompt"], s["response"]) for s in samples])
    assert rewards == pytest.approx(expected, abs=TOLERANCE)


def test_a_request_the_service_cannot_score_raises_in_slime_never_a_zero(service: LiveServer) -> None:
    """A chat-messages prompt (slime without --apply-chat-template) is refused with a 4xx: slime's
    raise_for_status raises (and after its retries, re-raises), so no reward is made up."""
    messages = [{"role": "user", "content": "How do I bake bread?"}]
    with pytest.raises(aiohttp.ClientResponseError) as refused:
        asyncio.run(
            post_like_slime(
                f"{service.url}/slime/reward", [{"prompt": messages, "response": "x", "label": None}]
            )
        )
    assert 400 <= refused.value.status < 500


def sample(prompt: Any, response: str) -> Any:
    return types.SimpleNamespace(prompt=prompt, response=response, label=None, metadata={})


def test_custom_rm_function_single_and_batched(service: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLHF_SERVICE_URL", raising=False)
    args = types.SimpleNamespace(rm_url=service.url)  # slime's own --rm-url names the service
    messages = [{"role": "user", "content": "How do I bake bread?"}]
    group = [sample(messages, "Mix flour and water."), sample(CHATML_PROMPT, "Knead it.<|im_end|>")]
    expected = scores_of(service.url, [(HH_PROMPT, " Mix flour and water."), (HH_PROMPT, " Knead it.")])

    async def both() -> tuple[Any, Any]:
        return await slime_reward.reward(args, group[0]), await slime_reward.reward(args, group)

    one, many = asyncio.run(both())
    assert one == pytest.approx(expected[0], abs=TOLERANCE)
    assert many == pytest.approx(expected, abs=TOLERANCE)
    monkeypatch.setenv("RLHF_REWARD", "normalized")
    normalized = asyncio.run(slime_reward.reward(args, group))
    assert normalized == pytest.approx([(s - SCORE_MEAN) / SCORE_STD for s in expected], abs=TOLERANCE)


def test_custom_rm_function_failure_raises_never_a_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_SERVICE_URL", dead_url())
    monkeypatch.setattr(slime_reward, "shared_async_client", _no_retry(slime_reward.shared_async_client))
    with pytest.raises(RewardUnavailable):
        asyncio.run(slime_reward.reward(types.SimpleNamespace(), sample("Hi", "Hello")))


def _no_retry(make: Any) -> Any:
    return lambda urls: make(urls, max_retries=0, timeout=2.0)
