"""Errors of the policy trainer, one tree so the CLI catches at the right level.

PolicyTrainingError
 ├── PromptError            no usable prompts / malformed prompts file
 ├── TooManyFailedRewards   more than max_failed_fraction of a step's rewards could not be fetched
 ├── RewardModelChanged     the service started serving another reward-model version mid-run
 ├── UncertaintyUnavailable an uncertainty penalty was asked for, the served bundle has no uncertainty
 ├── GoldError              the gold bundle cannot be loaded or scored
 └── CheckpointError        resume asked for but the checkpoint is missing or does not match
"""

from __future__ import annotations


class PolicyTrainingError(RuntimeError):
    """Base class: the run cannot continue; the message says why and what to do."""


class PromptError(PolicyTrainingError, ValueError):
    """The prompt source is empty, malformed, or every prompt was filtered out."""


class TooManyFailedRewards(PolicyTrainingError):
    """The service failed (after retries) for too large a share of one step's answers."""


class RewardModelChanged(PolicyTrainingError):
    """The reward model's version differs from the one the run started with."""


class UncertaintyUnavailable(PolicyTrainingError):
    """--uncertainty-penalty > 0, but the service answers without a per-item uncertainty."""


class GoldError(PolicyTrainingError):
    """The gold reward bundle was refused (missing, corrupt, or its canary failed)."""


class CheckpointError(PolicyTrainingError):
    """A checkpoint cannot be resumed from (missing files or a different configuration)."""
