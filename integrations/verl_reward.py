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
or chat messages; it is converted with the solution by `integrations.convert` into the input the
served bundle reads (an hh pair, or for a `chat` bundle the conversation, system message included:
`integrations.served_format`). A missing prompt is a ValueError, because scoring an answer without its
question would be silently meaningless.

The result is ``{"score": reward, "normalized": ..., "truncated": ...}``: veRL uses ``score`` as the
reward and logs the other keys. When the service cannot score a sample after the client's retries,
the function raises `service.client.RewardUnavailable`: veRL has no "no reward" value (a reward is a
float) and its own reward-model path (``RewardLoopWorker._post_request``) also raises after its
retries, so the step fails rather than train on a made-up 0.

``uncertainty_penalty=lambda`` (``+reward.custom_reward_function.reward_kwargs.uncertainty_penalty=0.5``)
makes ``score`` the penalised reward ``score - lambda * uncertainty`` (in the units of ``score``, raw or
normalised) and adds the raw ``uncertainty`` to the logged keys; ``require_length_disentangled=true``
refuses a served score that is not length-disentangled. Both are `integrations.reward_options`, which
also says how to serve the length-disentangled score (unset: the ``RLHF_UNCERTAINTY_PENALTY`` /
``RLHF_LENGTH_DISENTANGLED`` environment variables).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from integrations.clients import shared_async_client, shared_client
from integrations.convert import InputFormat, Item, Text, to_item
from integrations.reward_options import RewardOptions, ServedModel, finite
from integrations.served_format import Build, score_as_served, score_as_served_async
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


def _sample(solution_str: str, extra_info: Mapping[str, Any] | None) -> Build:
    prompt = prompt_of(extra_info)

    def items(input_format: InputFormat) -> list[Item]:
        return [to_item(prompt, solution_str, input_format)]

    return items


def _reward(result: ScoreResult, model: ServedModel | None, options: RewardOptions) -> dict[str, Any]:
    reward = {
        "score": finite(options.rewards(result, model), result)[0],
        "normalized": float(result.normalized[0]),
        "truncated": bool(result.truncated[0]),
    }
    if options.uncertainty_penalty > 0 and result.uncertainty is not None:  # finite: rewards() checked
        reward["uncertainty"] = float(result.uncertainty[0])
    return reward


def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    service_url: str | None = None,
    api_key: str | None = None,
    normalized: bool = False,
    uncertainty_penalty: float | None = None,
    require_length_disentangled: bool | None = None,
    max_retries: int = 4,
    timeout: float = 30.0,
    **_: Any,  # veRL adds reward_router_address / reward_model_tokenizer when it runs its own RM
) -> dict[str, Any]:
    """Blocking: one sample's reward from the service (``score`` raw, or normalised with ``normalized``,
    minus ``uncertainty_penalty`` times its uncertainty)."""
    options = RewardOptions.resolve(normalized, uncertainty_penalty, require_length_disentangled)
    sample = _sample(solution_str, extra_info)
    client = shared_client(service_url, api_key, max_retries=max_retries, timeout=timeout)
    return _reward(*score_as_served(client, sample, raise_on_failure=True), options)


async def compute_score_async(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    service_url: str | None = None,
    api_key: str | None = None,
    normalized: bool = False,
    uncertainty_penalty: float | None = None,
    require_length_disentangled: bool | None = None,
    max_retries: int = 4,
    timeout: float = 30.0,
    **_: Any,
) -> dict[str, Any]:
    """Awaitable: as :func:`compute_score`, on the reward loop's event loop (requests overlap)."""
    options = RewardOptions.resolve(normalized, uncertainty_penalty, require_length_disentangled)
    sample = _sample(solution_str, extra_info)
    client = shared_async_client(service_url, api_key, max_retries=max_retries, timeout=timeout)
    return _reward(*await score_as_served_async(client, sample, raise_on_failure=True), options)
