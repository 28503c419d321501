"""Advantage estimators and the policy-gradient loss: the seed's variance problem, one function each.

Shapes: B = prompts x k answers (the k answers of a prompt are consecutive rows), T = answer tokens.
A baseline that does not depend on the answer it is subtracted from leaves the gradient unbiased,
so every estimator here is ``A_t = (R_t - b) [/ s]`` with a different b:

* ``reinforce``: b = 0, ``sum_t logprob(A_t|S_t) * R_t`` exactly as written (high variance).
* ``baseline``: b = a constant (batch mean of the rewards, or a moving average across steps:
  ``constant_baseline``; the trainer keeps b between steps).
* ``rloo``: b_i = mean reward of the *other* k-1 answers to the same prompt (leave-one-out).
* ``group_norm``: GRPO-style ``(R_t - group mean) / (group std + eps)``.

Rewards that could not be fetched are NaN: their rows are *masked out of the loss* (never scored as
0, which would teach the policy that whatever it said was bad) and excluded from every baseline.
"""

from __future__ import annotations

import torch

GROUP_STD_EPS = 1e-4  # as TRL's GRPO: keeps a zero-variance group from dividing by 0


def valid_rows(seq_rewards: torch.Tensor) -> torch.Tensor:
    """[B] -> [B] bool: the reward was fetched (finite)."""
    return torch.isfinite(seq_rewards)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask (any broadcastable shapes); 0 when the mask is empty."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def rloo_baselines(rewards: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out baselines over each group's valid answers.

    rewards, valid: [G, k] -> (baselines [G, k], usable [G, k]). An answer is usable when it is valid
    and at least one other answer in its group is valid too (otherwise it has no baseline).
    """
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n_valid = valid.sum(dim=1, keepdim=True)  # [G, 1]
    others = (n_valid - valid.long()).clamp(min=1)  # [G, k] valid answers other than this one
    baselines = (r.sum(dim=1, keepdim=True) - r) / others
    usable = valid & (n_valid >= 2)
    return baselines, usable


def group_stats(
    rewards: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std of each group's valid rewards. [G, k] -> ([G, 1], [G, 1], usable [G, k])."""
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(dim=1, keepdim=True).to(rewards.dtype)  # [G, 1]
    mean = r.sum(dim=1, keepdim=True) / n.clamp(min=1)
    sq = torch.where(valid, (rewards - mean) ** 2, torch.zeros_like(rewards)).sum(dim=1, keepdim=True)
    std = (sq / (n - 1).clamp(min=1)).sqrt()
    return mean, std, valid & (n >= 2)


def compute_advantages(
    estimator: str,
    returns: torch.Tensor,
    seq_rewards: torch.Tensor,
    k: int,
    baseline_value: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages [B, T] and the rows that may enter the loss [B] bool.

    returns: [B, T] discounted returns (rows of failed rewards may hold anything, they are unusable);
    seq_rewards: [B] sequence rewards, NaN where the service could not score; k: answers per prompt
    (B must be a multiple of k); baseline_value: the constant b of the ``baseline`` estimator.
    """
    assert returns.shape[0] == seq_rewards.shape[0], "one sequence reward per row"
    assert seq_rewards.shape[0] % k == 0, f"rows ({seq_rewards.shape[0]}) must be a multiple of k ({k})"
    valid = valid_rows(seq_rewards)  # [B]
    if estimator == "reinforce":
        return returns, valid
    if estimator == "baseline":
        if baseline_value is None:
            raise ValueError("estimator 'baseline' needs baseline_value")
        return returns - baseline_value, valid
    grouped = seq_rewards.view(-1, k)  # [G, k]
    grouped_valid = valid.view(-1, k)
    if estimator == "rloo":
        baselines, usable = rloo_baselines(grouped, grouped_valid)
        return returns - baselines.reshape(-1, 1), usable.reshape(-1)
    if estimator == "group_norm":
        mean, std, usable = group_stats(grouped, grouped_valid)
        mean_rows = mean.expand(-1, k).reshape(-1, 1)  # [B, 1]
        std_rows = std.expand(-1, k).reshape(-1, 1)
        return (returns - mean_rows) / (std_rows + GROUP_STD_EPS), usable.reshape(-1)
    raise ValueError(f"unknown estimator {estimator!r}; expected rloo, group_norm, baseline or reinforce")


def batch_mean_baseline(seq_rewards: torch.Tensor) -> float:
    """Mean of the fetched rewards of the batch (0 when none was fetched). [B] -> float."""
    valid = valid_rows(seq_rewards)
    return float(seq_rewards[valid].mean()) if valid.any() else 0.0


def moving_average_baseline(previous: float | None, seq_rewards: torch.Tensor, momentum: float) -> float:
    """``b <- m * b + (1 - m) * batch mean``; starts at the first batch mean."""
    current = batch_mean_baseline(seq_rewards)
    return current if previous is None else momentum * previous + (1.0 - momentum) * current


def constant_baseline(kind: str, previous: float | None, seq_rewards: torch.Tensor, momentum: float) -> float:
    """This step's b of the ``baseline`` estimator. seq_rewards: [B] -> float.

    ``batch_mean``: the mean fetched reward of this batch; ``moving_average``: ``b <- m * b + (1 - m) *
    batch mean`` across steps (``previous`` is the last step's b, None at the first step). The caller
    keeps b between steps (it is checkpointed), so a resumed run continues the same average.
    """
    if kind == "batch_mean":
        return batch_mean_baseline(seq_rewards)
    if kind == "moving_average":
        return moving_average_baseline(previous, seq_rewards, momentum)
    raise ValueError(f"unknown baseline {kind!r}; expected batch_mean or moving_average")


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit (population) std over the masked tokens. [B, T] -> [B, T]."""
    mean = masked_mean(adv, mask)
    var = masked_mean((adv - mean) ** 2, mask)
    return (adv - mean) / (var.sqrt() + eps) * mask.to(adv.dtype)


def policy_gradient_loss(
    logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    clip_eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss whose gradient is minus ``mean over answers of sum_t logprob(A_t|S_t) * A_t``.

    logp: [B, T] log-probs of the taken actions under the current policy (with grad); adv: [B, T]
    (no grad); mask: [B, T] bool (real tokens of usable rows). With old_logp and clip_eps this is
    PPO's clipped surrogate ``min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)``, rho = pi / pi_old, whose
    gradient equals the plain one while rho = 1. Returns (loss, fraction of tokens clipped).
    """
    m = mask.to(logp.dtype)
    n_rows = mask.any(dim=1).sum().clamp(min=1)
    adv = adv.detach()
    if old_logp is None or clip_eps is None:
        per_token = logp * adv
        clipped = torch.zeros((), dtype=logp.dtype)
    else:
        ratio = torch.exp(logp - old_logp.detach())
        unclipped = ratio * adv
        clipped_obj = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
        per_token = torch.minimum(unclipped, clipped_obj)
        clipped = masked_mean((clipped_obj < unclipped).to(logp.dtype), mask)
    loss = -(per_token * m).sum() / n_rows
    return loss, clipped.detach()
