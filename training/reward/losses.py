"""The pairwise (Bradley-Terry) reward loss and the metrics computed next to it.

    loss, metrics = pairwise_loss(r_chosen, r_rejected, margin=0.0, center_coef=0.01)

loss = -logsigmoid(r_c - r_r - margin).mean() + center_coef * mean((r_c + r_r)^2)

The centering term (TRL's ``center_rewards_coefficient``) pins the score scale near zero, which the
bundle's score mean/std and the service's normalised scores rely on. A pure function: no model, no
state, so it is tested against hand-computed values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: float | torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss and {"loss", "accuracy", "margin"} for rewards of shape [batch].

    ``margin`` may be a float or a per-pair tensor [batch]. Accuracy counts ties as wrong (a model
    that scores everything equal has accuracy 0, not 0.5); "margin" is mean(r_c - r_r).
    """
    assert r_chosen.shape == r_rejected.shape, f"shape mismatch {r_chosen.shape} vs {r_rejected.shape}"
    assert r_chosen.dim() == 1, f"expected rewards of shape [batch], got {tuple(r_chosen.shape)}"
    diff = r_chosen - r_rejected  # [batch]
    shifted = diff - margin if margin is not None else diff
    loss = -F.logsigmoid(shifted).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    with torch.no_grad():
        metrics = {
            "loss": float(loss.detach()),
            "accuracy": float((diff > 0).float().mean()),
            "margin": float(diff.mean()),
        }
    return loss, metrics
