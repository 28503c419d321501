from __future__ import annotations

import math

import numpy as np
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


# -- multi-head losses (ODIN length head, ensemble of quality heads) -----------------------------------


def test_pearson_on_hand_computed_values() -> None:
    from training.reward.losses import pearson

    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(x, torch.tensor([1.0, 3.0, 2.0, 4.0])).item() == pytest.approx(0.8, abs=1e-6)  # 4/5
    assert pearson(x, 2 * x + 1).item() == pytest.approx(1.0, abs=1e-6)
    assert pearson(x, -x).item() == pytest.approx(-1.0, abs=1e-6)
    assert pearson(x, torch.ones(4)).item() == 0.0  # a constant has no correlation, and no NaN


def test_length_decorrelation_and_orthogonality_on_hand_computed_values() -> None:
    from training.reward.losses import length_decorrelation, orthogonality

    lengths = torch.tensor([1, 2, 3, 4])
    quality = torch.tensor([[1.0, 1.0], [2.0, 3.0], [3.0, 2.0], [4.0, 4.0]])  # rho 1.0 and 0.8
    length_score = torch.tensor([4.0, 3.0, 2.0, 1.0])  # rho -1: a falling length head counts fully
    term, metrics = length_decorrelation(quality, length_score, lengths)
    std = math.sqrt(1.25)  # population std of 1, 2, 3, 4: every column here is a permutation of it
    assert term.item() == pytest.approx((1.0 + 0.8) / 2 * std - 1.0 * std, abs=1e-6)
    assert metrics["rho_length"] == pytest.approx(-1.0, abs=1e-6)
    # a falling head is as good as a rising one for "either" and "falls", the worst case for "rises"
    quality_part = (1.0 + 0.8) / 2 * std
    for sign, expected in (("either", -std), ("falls", -std), ("rises", std)):
        signed, _ = length_decorrelation(quality, length_score, lengths, sign)
        assert signed.item() == pytest.approx(quality_part + expected, abs=1e-6), sign
    assert metrics["rho_quality"] == pytest.approx(0.9 * 5 / math.sqrt(5 * 4.5), abs=1e-6)  # mean column
    # each correlation counts in its head's score units, and its gradient has no component along
    # the scores: shrinking them is no way down
    small, _ = length_decorrelation(quality * 1e-3, length_score, lengths)
    assert small.item() == pytest.approx(1e-3 * (1.0 + 0.8) / 2 * std - 1.0 * std, abs=1e-6)
    q = quality.clone().requires_grad_(True)
    length_decorrelation(q, length_score, lengths)[0].backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    centred = quality - quality.mean(dim=0)
    assert (q.grad * centred).sum(dim=0).abs().max().item() < 1e-5
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert orthogonality(w, torch.tensor([0.0, 2.0])).item() == pytest.approx((0 + 0.5) / 2, abs=1e-6)
    assert orthogonality(w[:1], torch.tensor([0.0, -3.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_multi_head_loss_with_one_plain_head_is_the_pairwise_loss() -> None:
    from training.reward.losses import multi_head_loss

    logits = torch.tensor([[2.0], [0.0], [1.0], [0.5]])  # B = 2
    loss, metrics = multi_head_loss(logits, quality_heads=1, margin=0.1, center_coef=0.01)
    expected, plain = pairwise_loss(logits[:2, 0], logits[2:, 0], 0.1, 0.01)
    assert loss.item() == expected.item() and metrics == plain


def test_multi_head_loss_on_hand_computed_values() -> None:
    from training.reward.losses import multi_head_loss

    # rows: chosen 0, chosen 1, rejected 0, rejected 1; columns: quality 0, quality 1, length
    logits = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    lengths = torch.tensor([10.0, 20.0, 30.0, 40.0])
    weights = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # [pair, head]
    head_weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss, metrics = multi_head_loss(
        logits,
        lengths,
        quality_heads=2,
        length_head=True,
        pair_weights=weights,
        center_coef=0.1,
        length_coef=0.5,
        ortho_coef=2.0,
        head_weight=head_weight,
    )
    # ranked r_i = q_i + l: head 0 margins (1.5, -1.0), head 1 margins (0.5, 0.0)
    rank = ((1 * _nll(1.5) + 0 * _nll(-1.0)) / 2 + (2 * _nll(0.5) + 1 * _nll(0.0)) / 2) / 2
    center = (1.0 + 0.0 + 0.25 + 2.25) / 4 + (0.25 + 0.25) / 2  # every head's (r_c + r_r)^2, averaged
    q, length_col, L = logits.numpy()[:, :2], logits.numpy()[:, 2], lengths.numpy()
    within = [abs(np.corrcoef(q[:, i], L)[0, 1]) * q[:, i].std() for i in range(2)]
    length_term = float(np.mean(within)) - abs(np.corrcoef(length_col, L)[0, 1]) * length_col.std()
    ortho = 0.5  # cos^2 of both quality rows with the length row (1, 1): (1/sqrt 2)^2
    assert loss.item() == pytest.approx(rank + 0.1 * center + 0.5 * length_term + 2.0 * ortho, rel=1e-5)
    assert metrics["rank_loss"] == pytest.approx(rank, rel=1e-6)
    assert metrics["length_term"] == pytest.approx(length_term, rel=1e-5)
    assert metrics["ortho"] == pytest.approx(ortho, rel=1e-6)
    served = logits[:, :2].mean(dim=1)
    assert metrics["accuracy"] == 0.5 and metrics["margin"] == pytest.approx(
        float((served[:2] - served[2:]).mean())
    )


def test_decorrelate_only_adds_the_quality_term_to_one_plain_head() -> None:
    from training.reward.losses import multi_head_loss

    logits = torch.tensor([[1.0], [0.0], [0.0], [0.5]])  # one head; B = 2
    lengths = torch.tensor([10.0, 20.0, 30.0, 40.0])
    loss, metrics = multi_head_loss(logits, lengths, length_coef=0.5, decorrelate_only=True)
    q, L = logits.numpy()[:, 0], lengths.numpy()
    rho = np.corrcoef(q, L)[0, 1]
    term = abs(rho) * q.std()
    rank = (_nll(1.0) + _nll(-0.5)) / 2
    assert loss.item() == pytest.approx(rank + 0.5 * term, rel=1e-5)
    assert metrics["length_term"] == pytest.approx(term, rel=1e-5)
    assert metrics["rho_quality"] == pytest.approx(rho, rel=1e-5) and "rho_length" not in metrics
    plain, _ = multi_head_loss(logits, lengths, length_coef=0.5)
    assert plain.item() == pytest.approx(rank, rel=1e-6)  # without the flag a plain head has no length term
    with pytest.raises(AssertionError, match="without a length head"):
        multi_head_loss(torch.zeros(4, 2), lengths, length_head=True, decorrelate_only=True)


def test_multi_head_loss_gradients_reach_every_head_and_the_weights() -> None:
    from training.reward.losses import multi_head_loss

    torch.manual_seed(0)
    logits = torch.randn(8, 4, requires_grad=True)
    head_weight = torch.randn(4, 6, requires_grad=True)
    loss, _ = multi_head_loss(
        logits,
        torch.arange(8.0),
        quality_heads=3,
        length_head=True,
        pair_weights=torch.ones(4, 3),
        center_coef=0.01,
        length_coef=1.0,
        ortho_coef=1.0,
        head_weight=head_weight,
    )
    loss.backward()
    assert logits.grad is not None and head_weight.grad is not None
    assert bool((logits.grad.abs().sum(dim=0) > 0).all())  # every column gets a gradient
    assert bool((head_weight.grad.abs().sum(dim=1) > 0).all())  # every classifier row too
    with pytest.raises(AssertionError, match="columns"):
        multi_head_loss(logits.detach(), quality_heads=2)


def test_zero_bootstrap_weight_removes_a_pair_from_that_head_only() -> None:
    from training.reward.losses import multi_head_loss

    logits = torch.zeros(4, 2, requires_grad=True)  # B = 2, two quality heads
    loss, _ = multi_head_loss(logits, quality_heads=2, pair_weights=torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, 0] == 0 and logits.grad[0, 1] != 0  # pair 0 is out of head 0's bootstrap only
    assert logits.grad[1, 0] != 0


def test_minimising_the_length_term_moves_length_into_the_length_head() -> None:
    from training.reward.losses import length_decorrelation, pearson

    torch.manual_seed(0)
    lengths = torch.arange(1.0, 33.0)
    quality = (lengths / 30 + 0.3 * torch.randn(32)).unsqueeze(1).requires_grad_(True)  # starts length-biased
    length_score = torch.randn(32, requires_grad=True)
    optimizer = torch.optim.SGD([quality, length_score], lr=1.0)
    start = pearson(quality[:, 0].detach(), lengths).item()
    for _ in range(200):
        optimizer.zero_grad()
        term, _ = length_decorrelation(quality, length_score, lengths)
        term.backward()
        optimizer.step()
    assert start > 0.5
    assert abs(pearson(quality[:, 0].detach(), lengths).item()) < 0.2
    assert abs(pearson(length_score.detach(), lengths).item()) > 0.9
