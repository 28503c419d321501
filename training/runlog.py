"""Per-step metrics as JSONL and their curves as PNG: shared by every long-running job.

JSONL because it is appendable (a resumed run continues the same file), greppable, and loads in one
line of pandas. Plots are regenerated from the JSONL, so they never disagree with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class JsonlLogger:
    """Append one JSON object per line; truncate lines past ``keep_until_step`` on resume."""

    def __init__(self, path: Path, keep_until_step: int | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and path.exists():
            kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= keep_until_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        elif keep_until_step is None and path.exists():
            path.unlink()

    def log(self, record: Mapping[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def plot_curves(
    records: Iterable[Mapping[str, Any]],
    keys: Sequence[str],
    out_path: Path,
    title: str,
    x_key: str = "step",
) -> Path:
    """One subplot per key (only keys that have values); saved as PNG with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(records)
    present = [k for k in keys if any(_finite(r.get(k)) for r in rows)]
    if not present:
        raise ValueError(f"none of {list(keys)} has a value in the records to plot")
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present, strict=False):
        points = [(r[x_key], r[key]) for r in rows if _finite(r.get(key)) and x_key in r]
        xs, ys = zip(*points, strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="." if len(xs) < 40 else None, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
