"""The scoring service as veRL's custom reward function, sync and async.

    RLHF_SERVICE_URL=http://rm-0:8000,http://rm-1:8000 python -m verl.trainer.main_ppo \\
        reward.custom_reward_function.path=pkg://integrations.verl_reward \\
        reward.custom_reward_function.name=compute_score_async ...

veRL's reward loop (``verl/experimental/reward_loop/reward_manager/naive.py``, checked against 0.9.1)
calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)`` once
per sample, many samples at once: a coroutine function is awaited on the reward loop's event loop, a
plain one runs in its thread pool. ``reward.custom_reward_function.reward_kwargs`` are passed through,
so ``+reward.custom_reward_function.reward_kwargs.service_url=http://...`` (and ``api_key``,
``normalized=true``, ``max_retries``, ``timeout``) work instead of the environment (see
`integrations.clients`).

veRL does not pass the prompt to a reward function: the dataset must carry it in ``extra_info`` as
``"prompt"`` or ``"question"`` (veRL's own example preprocessing scripts store ``"question"``), a string
or chat messages; it is converted with the solution by `integrations.convert`. A missing prompt is
a ValueError, because scoring an answer without its question would be silently meaningless.

The result is ``{"score": reward, "normalized": ..., "truncated": ...}``: veRL uses ``score`` as the
reward and logs the other keys. When the service cannot score a sample after the client's retries,
the function raises `service.client.RewardUnavailable`: veRL has no "no reward" value (a reward is a
float) and its own reward-model path (``RewardLoopWorker._post_request``) also raises after its
retries, so the step fails rather than train on a made-up 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from integrations.clients import shared_async_client, shared_client
from integrations.convert import Text, to_pair
from service.client import ScoreResult

PROMPT_KEYS = ("prompt", "question")


def prompt_of(extra_info: Mapping[str, Any] | None) -> Text:
    """The prompt a veRL dataset row carries in ``extra_info``."""
    for key in PROMPT_KEYS:
        value = (extra_info or {}).get(key)
        if isinstance(value, str) or (isinstance(value, list | tuple) and value):
            return value
    raise ValueError(
        "the reward model needs the prompt: store it in each row's extra_info as 'prompt' or 'question' "
        f"(a string or chat messages); extra_info has {sorted(extra_info or {})}"
    )


def _reward(result: ScoreResult, normalized: bool) -> dict[str, Any]:
    return {
        "score": float(result.normalized[0] if normalized else result.scores[0]),
        "normalized": float(result.normalized[0]),
        "truncated": bool(result.truncated[0]),
    }


def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    service_url: str | None = None,
    api_key: str | None = None,
    normalized: bool = False,
    max_retries: int = 4,
    timeout: float = 30.0,
    **_: Any,  # veRL adds reward_router_address / reward_model_tokenizer when it runs its own RM
) -> dict[str, Any]:
    """Blocking: one sample's reward from the service (``score`` raw, or normalised with ``normalized``)."""
    pair = to_pair(prompt_of(extra_info), solution_str)
    result = shared_client(service_url, api_key, max_retries=max_retries, timeout=timeout).score(
        [pair], raise_on_failure=True
    )
    return _reward(result, normalized)


async def compute_score_async(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    service_url: str | None = None,
    api_key: str | None = None,
    normalized: bool = False,
    max_retries: int = 4,
    timeout: float = 30.0,
    **_: Any,
) -> dict[str, Any]:
    """Awaitable: as :func:`compute_score`, on the reward loop's event loop (requests overlap)."""
    pair = to_pair(prompt_of(extra_info), solution_str)
    result = await shared_async_client(service_url, api_key, max_retries=max_retries, timeout=timeout).score(
        [pair], raise_on_failure=True
    )
    return _reward(result, normalized)
