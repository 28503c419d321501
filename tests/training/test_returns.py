"""Per-token rewards and discounted returns against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from training.policy.returns import discounted_returns, kl_per_token, last_token_index, token_rewards

MASK = torch.tensor([[True, True, True, False], [True, True, True, True], [True, False, False, False]])


def test_sequence_reward_lands_on_the_last_real_token() -> None:
    rewards = token_rewards(torch.tensor([2.0, -1.0, 0.5]), MASK)
    expected = torch.tensor([[0, 0, 2.0, 0], [0, 0, 0, -1.0], [0.5, 0, 0, 0]])
    assert torch.equal(rewards, expected)
    assert last_token_index(MASK).tolist() == [2, 3, 0]


def test_kl_penalty_is_minus_beta_times_logratio_per_real_token() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    mask = torch.tensor([[True, True, True, False]])
    rewards = token_rewards(torch.tensor([1.0]), mask, logp, ref, kl_coef=0.1)
    # logp - ref = [0.5, -1.0, 0.0, (padding)]; r = -0.1 * that, +1 on token 2
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 1.0, 0.0]]))
    assert torch.allclose(kl_per_token(logp, ref, mask), torch.tensor([[0.5, -1.0, 0.0, 0.0]]))


def test_kl_penalty_needs_both_logprobs() -> None:
    with pytest.raises(ValueError, match="logp_ref"):
        token_rewards(torch.tensor([1.0]), MASK[:1], kl_coef=0.1)


def test_discounted_returns_hand_computed() -> None:
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 4.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = discounted_returns(rewards, mask, gamma=0.5)
    # row 0: padding reward 5 ignored. R2 = 2, R1 = 0 + 0.5*2 = 1, R0 = 1 + 0.5*1 = 1.5
    # row 1: R3 = 4, R2 = 2, R1 = 1, R0 = 0.5
    assert torch.allclose(got, torch.tensor([[1.5, 1.0, 2.0, 0.0], [0.5, 1.0, 2.0, 4.0]]))


def test_gamma_one_credits_every_token_with_the_sequence_reward() -> None:
    got = discounted_returns(token_rewards(torch.tensor([3.0, -1.0, 2.0]), MASK), MASK, gamma=1.0)
    assert torch.allclose(got, torch.tensor([[3.0, 3, 3, 0], [-1, -1, -1, -1], [2, 0, 0, 0]]))


def test_gamma_zero_keeps_only_the_immediate_reward() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert torch.equal(discounted_returns(rewards, mask, gamma=0.0), rewards)


def test_non_finite_reward_must_be_masked_first() -> None:
    with pytest.raises(AssertionError, match="mask failed rows"):
        token_rewards(torch.tensor([float("nan")]), MASK[:1])
