"""The policy run's curves: proxy and gold reward on one panel, then one panel per other metric.

Proxy and gold share a panel and a unit (each model's own train-score std) because over-optimisation
is a relation between the two (Gao et al. 2022): the proxy keeps rising while the gold flattens or
falls. Regenerated from metrics.jsonl, so the plot never disagrees with the log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# (key, label) of the lines of the first panel, in std units of their own reward model
REWARD_LINES = (
    ("proxy_mean", "proxy (served score)"),
    ("reward_mean", "optimised reward"),
    ("gold_mean", "gold"),
)
PANEL_KEYS = (
    "uncertainty_mean",
    "kl",
    "kl_coef",
    "entropy",
    "answer_length",
    "failed_rewards",
    "gen_seconds",
    "update_seconds",
    "scoring_share",
)


def plot_policy_curves(records: Sequence[Mapping[str, Any]], out_path: Path, title: str) -> Path:
    """Write the PNG (Agg backend): the reward panel, then every other key that has a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(key, label) for key, label in REWARD_LINES if _series(records, key)[0]]
    if _series(records, "reward_mean") == _series(records, "proxy_mean"):  # no penalty: one line
        lines = [(key, label) for key, label in lines if key != "reward_mean"]
    panels = [key for key in PANEL_KEYS if _series(records, key)[0]]
    count = 1 + len(panels)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.flat)
    for key, label in lines:
        xs, ys = _series(records, key)
        flat[0].plot(xs, ys, marker="." if len(xs) < 40 else None, linewidth=1.2, label=label)
    flat[0].set_title("reward (std of its own RM)", fontsize=10)
    if lines:
        flat[0].legend(fontsize=8)
    for ax, key in zip(flat[1:], panels, strict=False):
        xs, ys = _series(records, key)
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None, linewidth=1.2)
        ax.set_title(key, fontsize=10)
    for ax in flat[:count]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in flat[count:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records where ``key`` holds a finite number."""
    points = [(float(r["step"]), float(r[key])) for r in records if "step" in r and _finite(r.get(key))]
    return [x for x, _ in points], [y for _, y in points]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
