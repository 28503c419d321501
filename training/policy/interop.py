"""Moved: the TRL reward function now lives in `integrations.trl_reward` with the other trainers' adapters.

Kept so that ``from training.policy.interop import ServiceRewardFunction`` keeps working.
"""

from integrations.trl_reward import (
    AsyncServiceRewardFunction,
    BlockingScorer,
    ServiceRewardFunction,
    completion_to_answer,
    prompt_to_question,
)

__all__ = [
    "AsyncServiceRewardFunction",
    "BlockingScorer",
    "ServiceRewardFunction",
    "completion_to_answer",
    "prompt_to_question",
]
