"""The held-out gains of a run, and the one-line verdict of proxy against gold.

    summary |= gains(before, after, proxy_std, gold_std)    # gain_in_std, gain_se_in_std, gold_..., verdict

Gains are in each reward model's own train-score std (the targets' unit) with the paired standard
error of `evaluate.paired_standard_error`. The verdict reads them as Gao et al. (2022) do: a proxy
that rises while the gold does not is over-optimised. A gain counts when it is more than two
standard errors from zero; below that the run cannot tell it from sampling noise.
"""

from __future__ import annotations

import math
from typing import Any

from training.policy.evaluate import EvalResult, gain_standard_error, gold_gain_standard_error

SIGNIFICANT_SE = 2.0  # a gain is read as a change when it is more than this many standard errors from 0


def gains(
    before: EvalResult, after: EvalResult, score_std: float, gold_std: float | None = None
) -> dict[str, Any]:
    """The proxy's gain (raw and in its std) with its s.e.; with ``gold_std``, the gold's and the verdict."""
    out: dict[str, Any] = {
        "gain_raw": after.mean_raw - before.mean_raw,
        "gain_in_std": (after.mean_raw - before.mean_raw) / score_std,
        "gain_se_in_std": gain_standard_error(before, after) / score_std,
    }
    if gold_std is not None:
        out["gold_gain_in_std"] = (after.gold_mean_raw - before.gold_mean_raw) / gold_std
        out["gold_gain_se_in_std"] = gold_gain_standard_error(before, after) / gold_std
        out["verdict"] = verdict(out)
    return out


def _direction(gain: float | None, se: float | None) -> int:
    """+1 / -1 for a gain beyond SIGNIFICANT_SE standard errors, else 0 (also when undefined)."""
    if gain is None or se is None or not (math.isfinite(gain) and math.isfinite(se)):
        return 0
    return int(gain > SIGNIFICANT_SE * se) - int(gain < -SIGNIFICANT_SE * se)


def verdict(summary: dict[str, Any]) -> str:
    """One line on proxy vs gold, from ``gain_in_std``, ``gold_gain_in_std`` and their s.e."""
    proxy = _direction(summary.get("gain_in_std"), summary.get("gain_se_in_std"))
    gold = _direction(summary.get("gold_gain_in_std"), summary.get("gold_gain_se_in_std"))
    if proxy > 0 and gold <= 0:
        return "over-optimised: the proxy rose, the gold " + ("fell" if gold < 0 else "did not rise")
    if proxy > 0:
        return "the proxy and the gold both rose"
    if gold != 0:
        return "the gold " + ("rose" if gold > 0 else "fell") + " while the proxy did not rise"
    return "no clear change in either reward"
