"""The uncertainty penalty (Coste et al. 2023): reward = score − λ·uncertainty, written once.

    lam = check_penalty(0.5)                                   # ValueError unless finite and >= 0
    rewards = penalise(scores, uncertainty, lam)               # raw units: score - 0.5 * spread
    rewards = penalise(normalized, uncertainty, lam, std)      # normalised units: z - 0.5 * spread / std

Why a penalty: where the bundle's ensemble of quality heads (`rlhf train-rm --quality-heads N`)
disagrees, the reward model is guessing, and a policy optimised against it drifts towards exactly those
answers; charging for the spread keeps it where the heads agree.

The unit rule: λ is in the units of the reward it is applied to. The uncertainty is served in raw score
units, so a raw reward is ``score − λ·u`` and a normalised one ``z − λ·u / std``; since
``(s − λu − mean) / std = z − λu / std``, one λ ranks answers identically either way, and any monotone
map of the penalised raw score (the [0, 1] reward, ``sigmoid((s − λu − mean) / std)``) does too.

Both sides use this module: the service's trainer routes (``?uncertainty_penalty=λ``, for trainers that
cannot post-process a reward: service/trainers.py) and the client-side adapters
(`integrations.reward_options`), so a reward is penalised the same way wherever it is computed.
"""

from __future__ import annotations

import math

import numpy as np


class NoUncertainty(ValueError):
    """A penalty was asked of scores that carry no uncertainty (a bundle without an ensemble). The
    caller words the error for its own user; penalising nothing would silently train the plain reward."""


def check_penalty(value: float, name: str = "uncertainty_penalty") -> float:
    """``value`` as λ; a ValueError naming ``name`` unless it is a finite number >= 0."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} must be a finite number >= 0 (the λ of score − λ·uncertainty), got {value!r}"
        )
    return float(value)


def penalise(
    values: np.ndarray, uncertainty: np.ndarray | None, lam: float, unit_std: float | None = None
) -> np.ndarray:
    """``values − lam · uncertainty`` [n] float64, the uncertainty divided by ``unit_std`` when the values
    are normalised scores (None: raw units). λ = 0 returns the values unchanged, with or without an
    uncertainty. NaN in ``values`` (an item not scored) stays NaN; a scored item without a finite
    uncertainty (``uncertainty`` None: none has one) raises `NoUncertainty`."""
    values = np.asarray(values, dtype=np.float64)
    if lam == 0:
        return values
    spread = np.full(values.shape, np.nan) if uncertainty is None else np.asarray(uncertainty, np.float64)
    if (np.isfinite(values) & ~np.isfinite(spread)).any():
        raise NoUncertainty("a scored item came without an uncertainty")
    if unit_std is not None:
        spread = spread / unit_std
    return values - lam * spread
