"""One policy-gradient step on a batch of groups: rewards -> returns -> advantages -> loss -> AdamW.

    stats = policy_update(policy, optimizer, groups, seq_rewards, config, baseline_value)

Reads top to bottom: reference log-probs (adapter off, for the KL penalty and the KL metric), per-token
rewards and discounted returns, advantages of the chosen estimator, then ``ppo_epochs`` passes of the
(optionally clipped) policy-gradient loss, accumulated group by group to bound memory, one clipped
AdamW step per pass. Rows whose reward could not be fetched are masked out, never scored as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.policy import estimators, returns
from training.policy.config import PolicyConfig
from training.policy.policy import Policy, action_logprobs
from training.policy.rollout import Group


@dataclass
class UpdateStats:
    loss: float
    kl: float  # NaN without a reference; else mean over usable answers of sum_t (logp - logp_ref): KL(pi || ref) estimate per answer
    kl_per_token: float
    entropy: float  # mean next-token entropy over the answers' tokens (nats)
    clip_fraction: float
    grad_norm: float
    usable: int  # answers that entered the loss
    adv_mean: float
    adv_std: float


def _pad_to(x: torch.Tensor, length: int, value: float | int = 0) -> torch.Tensor:
    """Right-pad the last dim of [k, T] to [k, length]."""
    return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)


@torch.no_grad()
def reference_logprobs(policy: Policy, groups: Sequence[Group], temperature: float) -> list[torch.Tensor]:
    """log pi_ref(A_t | S_t) for each group, [k, T] each."""
    out = []
    with policy.reference() as ref_model:
        for g in groups:
            logp, _ = action_logprobs(ref_model, g.prompt_ids, g.actions, g.mask, temperature)
            out.append(logp)
    return out


def policy_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    groups: Sequence[Group],
    seq_rewards: torch.Tensor,
    config: PolicyConfig,
    baseline_value: float | None = None,
    kl_coef: float | None = None,
) -> UpdateStats:
    """seq_rewards: [B] = [G * k] in group order, NaN where the service could not score.

    ``kl_coef``: this step's beta when an adaptive controller sets it (default ``config.kl_coef``).
    """
    beta = config.kl_coef if kl_coef is None else kl_coef
    k = groups[0].actions.shape[0]
    t_max = max(g.actions.shape[1] for g in groups)
    mask = torch.cat([_pad_to(g.mask, t_max, False) for g in groups])  # [B, T]
    old_logp = torch.cat([_pad_to(g.logprobs, t_max) for g in groups])  # [B, T]
    if policy.has_reference:
        ref_parts = reference_logprobs(policy, groups, config.temperature)
        ref_logp = torch.cat([_pad_to(x, t_max) for x in ref_parts])  # [B, T]
    else:  # full fine-tuning without KL penalty: no frozen copy was kept, KL is not measured
        ref_logp = old_logp

    # rewards -> returns -> advantages
    valid = estimators.valid_rows(seq_rewards)
    finite_rewards = torch.where(valid, seq_rewards, torch.zeros_like(seq_rewards))  # masked below
    tok_rewards = returns.token_rewards(finite_rewards, mask, old_logp, ref_logp, beta)
    rets = returns.discounted_returns(tok_rewards, mask, config.gamma)  # [B, T]
    adv, usable = estimators.compute_advantages(config.estimator, rets, seq_rewards, k, baseline_value)
    loss_mask = mask & usable.unsqueeze(1)  # [B, T]
    if config.normalize_advantages:
        adv = estimators.normalize_advantages(adv, loss_mask)
    kl_rows = returns.kl_per_token(old_logp, ref_logp, mask).sum(dim=1)  # [B]

    n_usable = int(usable.sum())
    adv_mean = estimators.masked_mean(adv, loss_mask)
    kl = float(kl_rows[usable].mean()) if n_usable else float(kl_rows.mean())
    kl_token = float(estimators.masked_mean(old_logp - ref_logp, mask))
    stats = UpdateStats(
        loss=0.0,
        kl=kl if policy.has_reference else math.nan,
        kl_per_token=kl_token if policy.has_reference else math.nan,
        entropy=0.0,
        clip_fraction=0.0,
        grad_norm=0.0,
        usable=n_usable,
        adv_mean=float(adv_mean),
        adv_std=float(estimators.masked_mean((adv - adv_mean) ** 2, loss_mask).sqrt()),
    )
    entropy_sum, entropy_tokens = 0.0, 0
    use_clip = config.ppo_epochs > 1
    for _epoch in range(config.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        total_loss, clip_sum = 0.0, 0.0
        for gi, g in enumerate(groups):
            rows = slice(gi * k, (gi + 1) * k)
            t_len = g.actions.shape[1]
            g_mask = loss_mask[rows, :t_len]
            logp, entropy = action_logprobs(
                policy.model, g.prompt_ids, g.actions, g.mask, config.temperature, with_entropy=True
            )
            assert entropy is not None
            if _epoch == 0:
                entropy_sum += (entropy * g.mask).sum().item()
                entropy_tokens += int(g.mask.sum())
            if not g_mask.any():
                continue
            loss, clipped = estimators.policy_gradient_loss(
                logp,
                adv[rows, :t_len],
                g_mask,
                old_logp=g.logprobs if use_clip else None,
                clip_eps=config.clip_eps if use_clip else None,
            )
            # policy_gradient_loss averages over this group's usable answers; reweight to the batch mean
            weight = int(g_mask.any(dim=1).sum()) / max(n_usable, 1)
            loss = loss * weight
            if config.entropy_coef:
                loss = loss - config.entropy_coef * estimators.masked_mean(entropy, g_mask) * weight
            loss.backward()
            total_loss += loss.item()
            clip_sum += float(clipped) * weight
        if n_usable == 0:
            break  # nothing to learn from: no step (and no fake zero-reward gradient)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), config.max_grad_norm)
        optimizer.step()
        stats.loss, stats.clip_fraction, stats.grad_norm = total_loss, clip_sum, float(grad_norm)
    optimizer.zero_grad(set_to_none=True)
    stats.entropy = entropy_sum / max(entropy_tokens, 1)
    return stats
