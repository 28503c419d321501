"""The reward losses: pairwise (Bradley-Terry), and the multi-head loss of ODIN and the head ensemble.

    loss, metrics = pairwise_loss(r_chosen, r_rejected, margin=0.0, center_coef=0.01)
    loss, metrics = multi_head_loss(logits, lengths, quality_heads=5, length_head=True,
                                    pair_weights=w, center_coef=0.01, length_coef=1.0,
                                    ortho_coef=1.0, head_weight=classifier.weight)

pairwise: loss = -logsigmoid(r_c - r_r - margin).mean() + center_coef * mean((r_c + r_r)^2)

The centering term (TRL's ``center_rewards_coefficient``) pins the score scale near zero, which the
bundle's score mean/std and the service's normalised scores rely on.

multi-head (heads.py has the column layout; with one quality head and no length head it *is* the
pairwise loss, bit for bit). Each quality head q_i is ranked through r_i = q_i + l, where l is the
length head (0 without one), on its own bootstrap weights; then, with a length head (ODIN, Chen et
al. 2024, "Disentangled Reward Mitigates Hacking in RLHF"):

    + length_coef * (mean_i |rho(q_i, L)| sg(std q_i) - |rho(l, L)| sg(std l))
                     rho = Pearson within the batch, L = answer tokens of the 2B sequences,
                     sg = stop-gradient (detached)
    + ortho_coef * mean_i cos(w_i, w_l)^2                    the classifier rows of the heads

The ranking loss lets the sum use length as the data supports it; the length term pushes that signal
into l and out of every q_i (|rho(l, z)| = 1 also means l holds nothing *but* length); the
orthogonality term keeps their weight vectors apart, so the quality heads (the served score) cannot
read the length direction of the pooled features.

Changes to ODIN, each forced by a measured failure on the embedded data (README "Length bias"):

- |rho(l, L)| where ODIN maximises rho(l, L): ODIN's data prefer longer answers, so the ranking loss
  and a length head that rises with length pull the same way; in hh-rlhf's harmless pairs the
  chosen answer is more often the *shorter* one, and a head pushed to rise with length fought the
  ranking instead of absorbing it (the ranking loss did not fall). The length head may take
  either sign; which one it ends with is set by where it drifts early, not by the data (seeds of
  the same recipe on the same pairs end with both). ``sign`` "rises" and "falls" force one; neither
  helped (forcing "falls" bought accuracy with length, the plain model's trade: README
  "Rewards that resist hacking").
- The detached std factors: a Pearson correlation does not depend on its input's scale, so its
  gradient grows as 1/std of the head. Fresh heads score with a tiny spread, and there ODIN's term
  outweighed the ranking loss many times over: the model learned to decorrelate and hardly to rank.
  Weighting each correlation by its head's detached std keeps its gradient direction and puts its
  size on the scores' scale; at a fixed head scale it is ODIN's term times that scale.
- cos^2 where ODIN takes |cos| for the weights (see `orthogonality`).

What the batch-level correlation does not reach: batches are length-sorted (batching.py), so a
batch holds pairs of similar length, and its correlation cannot see whether long pairs as a whole
score below short ones. On held-out pairs that between-pair trend carries most of the remaining
correlation of score and length; the preference *between two answers to one question* (what a
policy compared against its own samples exploits) is what this term reduces. Attempts to reach the
between-pair trend too (correlating with lengths standardised over the training split, uncentred;
adding the batch means' product) cost several points of accuracy on 113 steps and were dropped.
Pure functions: no model, no state, so they are tested against hand-computed values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.reward.config import LENGTH_HEAD_SIGNS


def pairwise_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: float | torch.Tensor | None = None,
    center_coef: float = 0.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss and {"loss", "accuracy", "margin"} for rewards of shape [batch].

    ``margin`` may be a float or a per-pair tensor [batch]. ``weights`` [batch] scale each pair's
    term (a bootstrap count; the sum is still divided by the batch size). Accuracy counts ties as
    wrong (a model that scores everything equal has accuracy 0, not 0.5); "margin" is mean(r_c - r_r).
    """
    assert r_chosen.shape == r_rejected.shape, f"shape mismatch {r_chosen.shape} vs {r_rejected.shape}"
    assert r_chosen.dim() == 1, f"expected rewards of shape [batch], got {tuple(r_chosen.shape)}"
    diff = r_chosen - r_rejected  # [batch]
    shifted = diff - margin if margin is not None else diff
    if weights is None:
        loss = -F.logsigmoid(shifted).mean()
    else:
        assert weights.shape == diff.shape, f"weights {tuple(weights.shape)} vs rewards {tuple(diff.shape)}"
        loss = -(weights * F.logsigmoid(shifted)).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    with torch.no_grad():
        metrics = {
            "loss": float(loss.detach()),
            "accuracy": float((diff > 0).float().mean()),
            "margin": float(diff.mean()),
        }
    return loss, metrics


def pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pearson correlation of two [n] tensors, differentiable; 0 when either is constant."""
    assert x.shape == y.shape and x.dim() == 1, f"expected two [n] tensors, got {x.shape} and {y.shape}"
    xc, yc = x - x.mean(), y - y.mean()  # [n]
    return (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum() + eps)


def quality_decorrelation(
    quality: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean_i |rho(q_i, L)| sg(std q_i) for quality [n, M] and L [n]: ODIN's term on the quality heads.

    (sg = detached; the module docstring says why.) Metric "rho_quality" = rho(served score, L), the
    mean of the quality heads, signed."""
    assert quality.dim() == 2 and quality.shape[0] == lengths.shape[0], (
        f"expected quality [n, M] and lengths [n]; got {tuple(quality.shape)}, {tuple(lengths.shape)}"
    )
    L = lengths.to(quality.dtype)
    rho_heads = torch.stack([pearson(quality[:, i], L) for i in range(quality.shape[1])])  # [M]
    scale_heads = quality.detach().std(dim=0, unbiased=False)  # [M]
    with torch.no_grad():
        metrics = {"rho_quality": float(pearson(quality.mean(dim=1), L))}
    return (rho_heads.abs() * scale_heads).mean(), metrics


def length_decorrelation(
    quality: torch.Tensor, length_score: torch.Tensor, lengths: torch.Tensor, sign: str = "either"
) -> tuple[torch.Tensor, dict[str, float]]:
    """mean_i |rho(q_i, L)| sg(std q_i) - s(rho(l, L)) sg(std l): quality [n, M], length_score [n], L [n].

    s = |.| for ``sign`` "either" (the length head takes whichever sign it drifts to), the identity for
    "rises" (ODIN's: the head rises with length), the negation for "falls". (sg = detached; the module
    docstring says why.) Metrics: "rho_quality" = rho(served score, L) (the mean of the quality heads,
    signed) and "rho_length" = rho(l, L)."""
    assert sign in LENGTH_HEAD_SIGNS, f"sign must be one of {LENGTH_HEAD_SIGNS}, got {sign!r}"
    assert length_score.shape == lengths.shape, (
        f"expected length_score [n] and lengths [n]; got {tuple(length_score.shape)}, {tuple(lengths.shape)}"
    )
    quality_term, metrics = quality_decorrelation(quality, lengths)
    rho_length = pearson(length_score, lengths.to(quality.dtype))
    scale_length = length_score.detach().std(unbiased=False)
    metrics["rho_length"] = float(rho_length.detach())
    signed = {"either": rho_length.abs(), "rises": rho_length, "falls": -rho_length}[sign]
    return quality_term - signed * scale_length, metrics


def orthogonality(w_quality: torch.Tensor, w_length: torch.Tensor) -> torch.Tensor:
    """mean_i cos(w_quality[i], w_length)^2 for classifier rows w_quality [M, H] and w_length [H].

    Squared where ODIN takes |cos|: heads start nearly orthogonal (random rows in a wide space),
    and there the subgradient of |cos| keeps its full size, a scale-free 1/|w|, flipping sign every
    step. On the quality row it outweighed the ranking gradient many times over, so under Adam the
    row moved mostly by that noise and the quality head barely learned to rank (README "Length
    bias"). The square has the same minimum and a gradient that vanishes there."""
    assert w_quality.dim() == 2 and w_quality.shape[1] == w_length.shape[0], (
        f"expected w_quality [M, H] and w_length [H]; got {tuple(w_quality.shape)}, {tuple(w_length.shape)}"
    )
    cos = F.cosine_similarity(w_quality, w_length.unsqueeze(0).expand_as(w_quality), dim=1)  # [M]
    return (cos * cos).mean()


def multi_head_loss(
    logits: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    quality_heads: int = 1,
    length_head: bool = False,
    pair_weights: torch.Tensor | None = None,
    margin: float | torch.Tensor | None = None,
    center_coef: float = 0.0,
    length_coef: float = 0.0,
    ortho_coef: float = 0.0,
    head_weight: torch.Tensor | None = None,
    decorrelate_only: bool = False,
    length_head_sign: str = "either",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of logits [2B, M (+1)]: rows [0, B) chosen, [B, 2B) rejected (batching.py).

    ``lengths`` [2B] answer tokens (needed with a length head), ``pair_weights`` [B, M] bootstrap
    weights (None = 1), ``head_weight`` [M (+1), H] the classifier's weight (needed for ortho_coef).
    ``decorrelate_only`` (no length head) adds the quality heads' part of the length term alone.
    Metrics: "loss"; "accuracy" and "margin" of the served score (mean of the quality heads);
    "rank_loss"; with a length head "length_term", "rho_quality", "rho_length" and "ortho"; with
    ``decorrelate_only`` "length_term" and "rho_quality"."""
    M = quality_heads
    n, columns = logits.shape
    assert columns == M + int(length_head), f"logits have {columns} columns, expected {M + int(length_head)}"
    assert n % 2 == 0, f"expected 2B rows (chosen then rejected), got {n}"
    B = n // 2
    assert not (decorrelate_only and length_head), "decorrelate_only is the length term without a length head"
    one_plain_head = M == 1 and not length_head and not decorrelate_only and pair_weights is None
    if one_plain_head:  # exactly the pairwise loss
        return pairwise_loss(logits[:B, 0], logits[B:, 0], margin, center_coef)

    quality = logits[:, :M]  # [2B, M]
    length_score = logits[:, M] if length_head else None  # [2B]
    ranked = quality + length_score.unsqueeze(1) if length_score is not None else quality  # [2B, M]
    rank = torch.stack(
        [
            pairwise_loss(ranked[:B, i], ranked[B:, i], margin, 0.0, _column(pair_weights, i))[0]
            for i in range(M)
        ]
    ).mean()
    loss = rank
    if center_coef:
        pair_sums = logits[:B] + logits[B:]  # [B, columns]: every head is centred on its own
        center = (pair_sums[:, :M] ** 2).mean()
        if length_head:
            center = center + (pair_sums[:, M] ** 2).mean()
        loss = loss + center_coef * center
    served = quality.mean(dim=1)  # [2B]
    with torch.no_grad():
        diff = served[:B] - served[B:]
        metrics = {
            "rank_loss": float(rank.detach()),
            "accuracy": float((diff > 0).float().mean()),
            "margin": float(diff.mean()),
        }
    if length_score is not None:
        assert lengths is not None and lengths.shape == (n,), "a length head needs lengths [2B]"
        term, rho = length_decorrelation(quality, length_score, lengths, length_head_sign)
        metrics |= {"length_term": float(term.detach()), **rho}
        if length_coef:
            loss = loss + length_coef * term
        if ortho_coef:
            assert head_weight is not None, "ortho_coef needs the classifier weight [M + 1, H]"
            ortho = orthogonality(head_weight[:M], head_weight[M])
            loss = loss + ortho_coef * ortho
            metrics["ortho"] = float(ortho.detach())
    elif decorrelate_only:
        assert lengths is not None and lengths.shape == (n,), "the length term needs lengths [2B]"
        term, rho = quality_decorrelation(quality, lengths)
        metrics |= {"length_term": float(term.detach()), **rho}
        loss = loss + length_coef * term
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def _column(weights: torch.Tensor | None, i: int) -> torch.Tensor | None:
    return None if weights is None else weights[:, i]
