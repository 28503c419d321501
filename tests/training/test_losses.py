from __future__ import annotations

import math

import pytest
import torch

from training.reward.losses import pairwise_loss


def _nll(d: float) -> float:
    return math.log1p(math.exp(-d))  # -log(sigmoid(d))


def test_plain_loss_matches_hand_computation() -> None:
    r_c = torch.tensor([2.0, 0.0, -1.0, 0.5])
    r_r = torch.tensor([1.0, 0.0, 1.0, 0.5])
    loss, metrics = pairwise_loss(r_c, r_r)
    expected = (_nll(1.0) + _nll(0.0) + _nll(-2.0) + _nll(0.0)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == 0.25  # the two ties count as wrong
    assert metrics["margin"] == pytest.approx((1.0 + 0.0 - 2.0 + 0.0) / 4)


def test_margin_and_centering_terms() -> None:
    r_c = torch.tensor([1.0, 3.0])
    r_r = torch.tensor([0.0, 1.0])
    loss, metrics = pairwise_loss(r_c, r_r, margin=0.5, center_coef=0.1)
    expected = (_nll(0.5) + _nll(1.5)) / 2 + 0.1 * ((1.0**2) + (4.0**2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == 1.0 and metrics["margin"] == pytest.approx(1.5)
    per_pair, _ = pairwise_loss(r_c, r_r, margin=torch.tensor([0.5, 0.0]))
    assert per_pair.item() == pytest.approx((_nll(0.5) + _nll(2.0)) / 2, rel=1e-6)


def test_gradient_pushes_chosen_up_and_metrics_are_detached() -> None:
    r_c = torch.zeros(3, requires_grad=True)
    r_r = torch.zeros(3, requires_grad=True)
    loss, metrics = pairwise_loss(r_c, r_r)
    loss.backward()
    assert r_c.grad is not None and r_r.grad is not None
    assert torch.allclose(r_c.grad, torch.full((3,), -0.5 / 3))  # d/dd -logsigmoid(d) at 0 = -1/2
    assert torch.allclose(r_r.grad, torch.full((3,), 0.5 / 3))
    assert all(isinstance(v, float) for v in metrics.values())


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(AssertionError, match="shape mismatch"):
        pairwise_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(AssertionError, match=r"shape \[batch\]"):
        pairwise_loss(torch.zeros(2, 1), torch.zeros(2, 1))
