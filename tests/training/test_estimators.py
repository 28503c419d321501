"""Advantage estimators and the policy-gradient loss against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from training.policy.estimators import (
    batch_mean_baseline,
    compute_advantages,
    constant_baseline,
    moving_average_baseline,
    normalize_advantages,
    policy_gradient_loss,
    rloo_baselines,
)

NAN = float("nan")


def test_rloo_baseline_is_the_mean_of_the_other_answers() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    baselines, usable = rloo_baselines(rewards, torch.ones_like(rewards, dtype=torch.bool))
    # (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3
    assert torch.allclose(baselines, torch.tensor([[11 / 3, 10 / 3, 3.0, 2.0]]))
    assert usable.all()


def test_rloo_advantages_per_token_and_nan_excluded_from_baselines() -> None:
    seq = torch.tensor([1.0, NAN, 3.0, 5.0, 2.0, NAN])  # k = 3: groups [1, nan, 3], [5, 2, nan]
    returns = torch.where(torch.isfinite(seq), seq, torch.zeros(6)).unsqueeze(1).repeat(1, 2)  # gamma=1, T=2
    adv, usable = compute_advantages("rloo", returns, seq, k=3)
    assert usable.tolist() == [True, False, True, True, True, False]
    # group 0: valid 1 and 3 -> baselines 3 and 1; group 1: valid 5 and 2 -> baselines 2 and 5
    assert torch.allclose(adv[usable][:, 0], torch.tensor([1 - 3.0, 3 - 1.0, 5 - 2.0, 2 - 5.0]))
    assert torch.allclose(adv[:, 0][usable], adv[:, 1][usable])


def test_rloo_group_with_one_valid_answer_has_no_baseline() -> None:
    seq = torch.tensor([4.0, NAN])
    _, usable = compute_advantages("rloo", seq.nan_to_num().unsqueeze(1), seq, k=2)
    assert usable.tolist() == [False, False]


def test_group_norm_hand_computed() -> None:
    seq = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    adv, usable = compute_advantages("group_norm", seq.unsqueeze(1), seq, k=3)
    # group 0: mean 2, unbiased std 1 -> [-1, 0, 1] / (1 + 1e-4); group 1: std 0 -> 0
    expected = torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-4)
    assert torch.allclose(adv[:3, 0], expected, atol=1e-6)
    assert torch.allclose(adv[3:, 0], torch.zeros(3))
    assert usable.all()


def test_reinforce_is_exactly_the_returns_and_baseline_subtracts_a_constant() -> None:
    seq = torch.tensor([1.0, NAN, 3.0, 0.0])
    returns = torch.tensor([[1.0, 0.5], [0.0, 0.0], [3.0, 3.0], [0.0, 0.0]])
    adv, usable = compute_advantages("reinforce", returns, seq, k=2)
    assert torch.equal(adv, returns) and usable.tolist() == [True, False, True, True]
    b = batch_mean_baseline(seq)
    assert b == pytest.approx(4 / 3)  # NaN excluded, not counted as 0
    adv_b, _ = compute_advantages("baseline", returns, seq, k=2, baseline_value=b)
    assert torch.allclose(adv_b, returns - 4 / 3)
    assert moving_average_baseline(None, seq, 0.9) == pytest.approx(4 / 3)
    assert moving_average_baseline(2.0, seq, 0.9) == pytest.approx(0.9 * 2 + 0.1 * 4 / 3)
    with pytest.raises(ValueError, match="baseline_value"):
        compute_advantages("baseline", returns, seq, k=2)
    with pytest.raises(ValueError, match="unknown estimator"):
        compute_advantages("a2c", returns, seq, k=2)


def test_normalize_advantages_over_masked_tokens_only() -> None:
    adv = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    out = normalize_advantages(adv, mask)
    assert torch.allclose(out, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6)


def test_plain_loss_is_minus_mean_over_answers_of_sum_logp_times_advantage() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]], requires_grad=True)
    adv = torch.tensor([[2.0, 2.0], [-1.0, -1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, clipped = policy_gradient_loss(logp, adv, mask)
    # -( (-1*2 + -2*2) + (-0.5*-1) ) / 2 = -(-6 + 0.5) / 2 = 2.75
    assert loss.item() == pytest.approx(2.75)
    loss.backward()
    assert logp.grad is not None
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.0]]))
    assert float(clipped) == 0.0


def test_ppo_clip_hand_computed_and_no_gradient_when_clipped() -> None:
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.75, 0.55]])).requires_grad_(True)  # ratios 1.5, 1.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, clipped = policy_gradient_loss(new, adv, mask, old_logp=old, clip_eps=0.2)
    # token 0: min(1.5, 1.2) * 1 = 1.2 (clipped); token 1: min(-1.5, -1.2) = -1.5; token 2: 1.1
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 1.1), abs=1e-5)
    assert float(clipped) == pytest.approx(1 / 3)
    loss.backward()
    assert new.grad is not None
    assert new.grad[0, 0] == 0.0  # clipped: no push further
    assert float(new.grad[0, 1]) == pytest.approx(1.5, abs=1e-5)  # d(-rho*A)/dlogp = -rho*A = 1.5
    assert float(new.grad[0, 2]) == pytest.approx(-1.1, abs=1e-5)


def test_clipped_loss_gradient_equals_plain_gradient_at_ratio_one() -> None:
    logp = torch.tensor([[-1.0, -0.3]], requires_grad=True)
    adv = torch.tensor([[0.7, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    plain, _ = policy_gradient_loss(logp, adv, mask)
    (g_plain,) = torch.autograd.grad(plain, logp)
    ppo, _ = policy_gradient_loss(logp, adv, mask, old_logp=logp.detach(), clip_eps=0.2)
    (g_ppo,) = torch.autograd.grad(ppo, logp)
    assert torch.allclose(g_plain, g_ppo)


def test_constant_baseline_of_each_kind_by_hand() -> None:
    seq = torch.tensor([1.0, NAN, 3.0, 0.0])  # fetched rewards 1, 3, 0: mean 4/3
    assert constant_baseline("batch_mean", 2.0, seq, 0.9) == pytest.approx(4 / 3)  # previous ignored
    assert constant_baseline("moving_average", None, seq, 0.9) == pytest.approx(4 / 3)  # starts at the mean
    assert constant_baseline("moving_average", 2.0, seq, 0.9) == pytest.approx(0.9 * 2 + 0.1 * 4 / 3)
    assert constant_baseline("batch_mean", None, torch.tensor([NAN, NAN]), 0.9) == 0.0  # nothing fetched
    with pytest.raises(ValueError, match="unknown baseline"):
        constant_baseline("median", None, seq, 0.9)
