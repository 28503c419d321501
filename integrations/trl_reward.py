"""The scoring service as TRL reward functions, sync and async.

    from trl import GRPOConfig, GRPOTrainer
    from integrations.trl_reward import AsyncServiceRewardFunction

    reward = AsyncServiceRewardFunction("http://rm-0:8000,http://rm-1:8000")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], args=GRPOConfig(...), train_dataset=...)

TRL's ``GRPOTrainer._calculate_rewards`` calls each reward function as
``f(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
**dataset_columns)`` and names it by ``f.__name__`` in its logs. An async function (``async __call__``)
is awaited together with the other async reward functions on TRL's own event loop, so its requests
overlap theirs; within one call the async client sends ``chunk_size`` completions per request,
``max_concurrency`` requests at a time, spread over the URLs.

Prompts and completions are strings or chat messages (TRL's standard and conversational formats);
both go through `integrations.convert` to the input the served bundle reads (`integrations.served_format`):
the hh text a `pair` bundle was trained on, or for a `chat` bundle the conversation with its system
message and contents as written, rendered by the reward model's own chat template. A completion the
service could not score after the client's retries comes back as ``None``: TRL (>= 0.20, checked against
1.16) turns it into NaN, leaves it out of the group mean/std and gives it advantage 0, so a failure is
masked, never scored as 0. When TRL passes ``log_metric``, the number of such failures and of truncated
pairs per call are logged under ``<name>/failed`` and ``<name>/truncated``. A request the service
refuses as malformed (4xx other than 429) raises `service.client.RequestRejected`: a set-up error.

``uncertainty_penalty=lambda`` returns ``score - lambda * uncertainty`` (Coste et al. 2023; in the units
of the reward returned, raw or ``normalized``) and logs the mean uncertainty under ``<name>/uncertainty``;
``require_length_disentangled=True`` refuses a served score that is not length-disentangled. Both are
`integrations.reward_options`, which also says how to serve the length-disentangled score (None: the
``RLHF_UNCERTAINTY_PENALTY`` / ``RLHF_LENGTH_DISENTANGLED`` environment variables).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from integrations.clients import PerLoop, service_urls
from integrations.clients import api_key as key_or_env
from integrations.convert import Text, to_answer, to_item, to_question
from integrations.reward_options import RewardOptions, ServedModel
from integrations.served_format import Build, score_as_served, score_as_served_async
from service.client import AsyncRewardClient, RewardClient, ScoreItem, ScoreResult

log = logging.getLogger(__name__)

# the names the reward function used to have in training.policy.interop
prompt_to_question = to_question
completion_to_answer = to_answer


class BlockingScorer(Protocol):
    """What the sync function needs of its client: `service.client.RewardClient`, or a stand-in."""

    def score(self, pairs: Sequence[ScoreItem], *, raise_on_failure: bool = False) -> ScoreResult: ...

    def models(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class _RewardFunction:
    """What both faces share: the pairs of one call, and the rewards of its result."""

    def __init__(
        self,
        name: str,
        normalized: bool,
        uncertainty_penalty: float | None = None,
        require_length_disentangled: bool | None = None,
    ) -> None:
        self.__name__ = name  # TRL logs rewards under this name
        self.normalized = normalized  # (score - mean) / std of the RM's training scores instead of raw
        self.options = RewardOptions.resolve(normalized, uncertainty_penalty, require_length_disentangled)
        self.model_version: str | None = None

    @staticmethod
    def items(prompts: Sequence[Text], completions: Sequence[Text]) -> Build:
        """The items of one call, for the served bundle's input format (`integrations.served_format`)."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        samples = list(zip(prompts, completions, strict=True))
        return lambda input_format: [to_item(p, c, input_format) for p, c in samples]

    def rewards(
        self,
        result: ScoreResult,
        log_metric: Callable[[str, float], Any] | None,
        model: ServedModel | None = None,
    ) -> list[float | None]:
        if result.model_changed:
            log.warning("the reward model changed to version %s during training", result.model_version)
        self.model_version = result.model_version or self.model_version
        if result.failed:
            log.warning(
                "%d of %d rewards could not be fetched: %s",
                result.failed,
                len(result.scores),
                result.errors[:1],
            )
        if callable(log_metric):
            log_metric(f"{self.__name__}/failed", float(result.failed))
            log_metric(f"{self.__name__}/truncated", float(result.truncated.sum()))
        values = self.options.rewards(result, model)
        if callable(log_metric) and self.options.uncertainty_penalty > 0 and result.uncertainty is not None:
            spread = result.uncertainty[np.isfinite(result.uncertainty)]
            if spread.size:
                log_metric(f"{self.__name__}/uncertainty", float(spread.mean()))
        return [float(v) if math.isfinite(v) else None for v in values]


class ServiceRewardFunction(_RewardFunction):
    """Blocking ``(prompts, completions, **kwargs) -> list[float | None]`` on `service.client.RewardClient`."""

    def __init__(
        self,
        base_urls: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        normalized: bool = False,
        uncertainty_penalty: float | None = None,
        require_length_disentangled: bool | None = None,
        name: str = "reward_service",
        client: BlockingScorer | None = None,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(name, normalized, uncertainty_penalty, require_length_disentangled)
        if client is None:
            client = RewardClient(service_urls(base_urls), api_key=key_or_env(api_key), **client_kwargs)
        self.client = client

    def __call__(
        self, prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any
    ) -> list[float | None]:
        result, model = score_as_served(self.client, self.items(prompts, completions))
        return self.rewards(result, kwargs.get("log_metric"), model)

    def close(self) -> None:
        self.client.close()


class AsyncServiceRewardFunction(_RewardFunction):
    """Awaitable ``(prompts, completions, **kwargs) -> list[float | None]`` on `AsyncRewardClient`.

    One client per event loop (made on the first call in that loop): TRL awaits its reward functions on
    one loop of its own, and an asyncio connection pool cannot move between loops.
    """

    def __init__(
        self,
        base_urls: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        normalized: bool = False,
        uncertainty_penalty: float | None = None,
        require_length_disentangled: bool | None = None,
        name: str = "reward_service",
        **client_kwargs: Any,
    ) -> None:
        super().__init__(name, normalized, uncertainty_penalty, require_length_disentangled)
        urls, key = service_urls(base_urls), key_or_env(api_key)
        self._clients = PerLoop(lambda: AsyncRewardClient(urls, api_key=key, **client_kwargs))

    async def __call__(
        self, prompts: Sequence[Text], completions: Sequence[Text], **kwargs: Any
    ) -> list[float | None]:
        result, model = await score_as_served_async(self._clients.get(), self.items(prompts, completions))
        return self.rewards(result, kwargs.get("log_metric"), model)

    async def aclose(self) -> None:
        """Close this loop's client (others close with their loop)."""
        await self._clients.get().aclose()
