"""The scoring service as a reward function for other RL libraries.

TRL::

    from trl import GRPOTrainer
    from training.policy.interop import ServiceRewardFunction

    reward = ServiceRewardFunction("http://localhost:8000")
    trainer = GRPOTrainer(model=..., reward_funcs=reward, train_dataset=...)

TRL calls a reward function as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` and
reads ``f.__name__`` for its logs. Prompts and completions are strings (standard format) or chat
messages (conversational format); both are accepted. An answer the service could not score (after
the client's retries) is returned as ``None``: TRL (>= 0.20, checked in 1.16's
``GRPOTrainer._calculate_rewards``) turns None into NaN, leaves it out of the group mean/std and gives
that completion advantage 0, i.e. masked, never scored as 0.

The reward model was trained on hh-rlhf text (``"\\n\\nHuman: ...\\n\\nAssistant:"``), so prompts are
sent in that format: chat messages are rendered as hh turns, a plain string becomes one Human turn
(a string that already is an hh dialogue is sent unchanged).

OpenRLHF: point ``--remote_rm_url`` at ``http://host:8000/get_reward`` (see docs/openrlhf.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

from service.client import RewardClient, ScoreResult
from training.policy.prompts import messages_to_hh, prompt_from_text
from training.policy.scoring import rm_answer

log = logging.getLogger(__name__)


def prompt_to_question(prompt: str | Sequence[dict[str, str]]) -> str:
    """TRL prompt (string or chat messages) -> the hh question the reward model expects."""
    if isinstance(prompt, str):
        return prompt_from_text(prompt).question
    turns = [(str(m["role"]), str(m["content"])) for m in prompt]
    return messages_to_hh(turns)


def completion_to_answer(completion: str | Sequence[dict[str, str]]) -> str:
    """TRL completion (string or [{"role": "assistant", "content": ...}]) -> answer text."""
    if isinstance(completion, str):
        return rm_answer(completion)
    return rm_answer(
        "".join(str(m["content"]) for m in completion if m.get("role", "assistant") == "assistant")
    )


class BlockingScorer(Protocol):
    """What the reward function needs of its client: `service.client.RewardClient`, or a stand-in."""

    def score(self, pairs: Sequence[tuple[str, str]]) -> ScoreResult:
        """Scores in input order; NaN where an item could not be scored."""
        ...

    def close(self) -> None: ...


class ServiceRewardFunction:
    """Callable ``(prompts, completions, **kwargs) -> list[float | None]`` backed by the service."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        normalized: bool = False,
        name: str = "reward_service",
        client: BlockingScorer | None = None,
        **client_kwargs: Any,
    ) -> None:
        if client is None:
            client = RewardClient(base_urls, api_key=api_key, **client_kwargs)
        self.client = client
        self.normalized = normalized  # (score - mean) / std of the RM's training scores instead of raw
        self.__name__ = name  # TRL logs rewards under this name
        self.model_version: str | None = None

    def __call__(
        self,
        prompts: Sequence[str | Sequence[dict[str, str]]],
        completions: Sequence[str | Sequence[dict[str, str]]],
        **kwargs: Any,
    ) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = [
            (prompt_to_question(p), completion_to_answer(c))
            for p, c in zip(prompts, completions, strict=True)
        ]
        result = self.client.score(pairs)
        if result.model_changed:
            log.warning("the reward model changed to version %s during training", result.model_version)
        self.model_version = result.model_version or self.model_version
        if result.failed:
            log.warning(
                "%d of %d rewards could not be fetched: %s", result.failed, len(pairs), result.errors[:1]
            )
        values = result.normalized if self.normalized else result.scores
        return [float(v) if math.isfinite(v) else None for v in values]

    def close(self) -> None:
        self.client.close()
