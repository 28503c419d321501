"""Per-token rewards and discounted returns: the sequence reward lands on the last token.

An answer of T tokens is T actions; the reward model scores only the finished answer, so the reward
of the last action is the score and every other action gets 0, plus (optionally) a per-token KL
penalty ``-beta * (logp - logp_ref)`` that keeps the policy near the frozen reference. Returns are the
textbook ``R_t = sum_k gamma^k r_{t+k}``. Pure functions over padded [B, T] tensors with a mask
(True for real tokens up to and including EOS, False for padding after it).
"""

from __future__ import annotations

import torch


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row. mask: [B, T] bool -> [B] long (0 for an empty row)."""
    lengths = mask.long().sum(dim=1)  # [B]
    return (lengths - 1).clamp(min=0)


def kl_per_token(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sampled-token KL estimate ``logp - logp_ref`` (k1), 0 on padding. All [B, T] -> [B, T]."""
    return (logp - logp_ref) * mask


def token_rewards(
    seq_rewards: torch.Tensor,
    mask: torch.Tensor,
    logp: torch.Tensor | None = None,
    logp_ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Per-token rewards [B, T]: the sequence reward on the last real token, minus beta * KL per token.

    seq_rewards: [B] (must be finite: mask failed rows before, see estimators.valid_rows);
    mask: [B, T] bool; logp / logp_ref: [B, T] log-probs of the taken actions under the policy and the
    reference (needed only when kl_coef > 0).
    """
    assert seq_rewards.dim() == 1 and mask.dim() == 2, "seq_rewards [B] and mask [B, T] expected"
    assert torch.isfinite(seq_rewards).all(), "non-finite sequence reward: mask failed rows first"
    mask_f = mask.to(seq_rewards.dtype)
    rewards = torch.zeros_like(mask_f)  # [B, T]
    rows = torch.arange(mask.shape[0])
    has_token = mask.any(dim=1)
    rewards[rows[has_token], last_token_index(mask)[has_token]] = seq_rewards[has_token]
    if kl_coef:
        if logp is None or logp_ref is None:
            raise ValueError("kl_coef > 0 needs logp and logp_ref")
        rewards = rewards - kl_coef * kl_per_token(logp, logp_ref, mask_f).to(rewards.dtype)
    return rewards * mask_f


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``R_t = sum_{k>=0} gamma^k r_{t+k}`` within each row, 0 on padding. rewards, mask: [B, T] -> [B, T]."""
    assert rewards.shape == mask.shape, f"rewards {tuple(rewards.shape)} vs mask {tuple(mask.shape)}"
    masked = rewards * mask.to(rewards.dtype)
    returns = torch.zeros_like(masked)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # [B]
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = masked[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask.to(rewards.dtype)
