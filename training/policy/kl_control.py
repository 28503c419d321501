"""Adaptive KL coefficient: keep the policy's KL to the reference near a target instead of guessing beta.

A fixed beta that holds KL at 5 nats for one reward model lets it run to 20 for another (rewards with
a larger spread pull harder). The proportional controller of Ziegler et al. (2019), also TRL's
``AdaptiveKLController``, moves beta a little each step in the direction that brings the measured KL
back to the target:

    e = clip(KL / target - 1, -0.2, 0.2)
    beta <- beta * (1 + rate * e)

The clip makes one noisy step unable to swing beta by more than ``rate * 20%``; with rate 0.1 beta can
still grow ~7x in 100 steps when the policy keeps pulling away.
"""

from __future__ import annotations

import math

ERROR_CLIP = 0.2


def adapted_kl_coef(kl_coef: float, measured_kl: float, target: float, rate: float) -> float:
    """Next step's beta. A step whose KL could not be measured (NaN) leaves beta unchanged."""
    if not math.isfinite(measured_kl):
        return kl_coef
    error = min(max(measured_kl / target - 1.0, -ERROR_CLIP), ERROR_CLIP)
    return kl_coef * (1.0 + rate * error)
