"""The live watch: is the traffic still what the reward model was trained to judge?

A policy optimised against a reward model drifts to where the model is wrong (issue 13: the default
policy learned that short answers score high). The service sees every answer it scores, so it keeps a
count-bounded sliding window over the last `size` served items and compares it with the bundle's own
reference, the train-split score mean/std in the manifest (`Manifest.score`):

    drift                (window mean − reference mean) / reference std
    std ratio            window std / reference std            (collapse: every answer scores alike)
    length correlation   Pearson(score, answer length)          (the reward became a length proxy)
    truncated share      items cut by the truncation policy     (the model saw only part of them)
    uncertainty mean     mean per-item uncertainty / reference std, over the items that carry one

Answer length is counted in *characters of the answer as submitted* (Unicode code points), not in
tokens: it is what the policy controls, it means the same for every tokenizer and input format, and it
is not capped by truncation (the truncated share reports cutting separately).

Cost: running sums over a ring buffer, so an item costs O(1) whatever the window size. The sums are
recomputed from the buffer once per `size` items (amortised O(1)), which keeps float rounding from
accumulating over days of traffic. Statistics are population statistics (ddof 0), as the manifest's.

Below `min_items` items every statistic reads NaN, so a gauge says "not enough data" rather than a
noisy number and no alert can fire on a handful of requests; a Pearson coefficient with zero variance
on either side is NaN too (undefined, e.g. every answer has the same length). The window starts empty
when another model starts serving (`ScoreWatch.serving`): its reference is another distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

CONSTANT_SCORE_RTOL: Final = 1e-9  # a score spread below this (relative to the scores' size) is no spread


@dataclass(frozen=True)
class WindowStats:
    """Statistics of the items in a window; NaN where undefined (empty window, zero variance)."""

    items: int
    mean: float
    std: float
    length_correlation: float
    truncated_share: float
    uncertainty_items: int  # items that carried a finite uncertainty
    uncertainty_mean: float


class SlidingWindow:
    """The last `size` items (score, answer length, truncated, uncertainty) with running sums.

    >>> w = SlidingWindow(3)
    >>> w.add([1.0, 2.0, 3.0, 4.0], [10, 20, 30, 40], [False, False, True, True])
    >>> w.stats().mean, w.stats().truncated_share     # items 2.0, 3.0, 4.0 remain
    (3.0, 0.6666666666666666)
    """

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ValueError(f"a window needs at least 2 items, got size={size}")
        self.size = size
        self._score = np.zeros(size, dtype=np.float64)
        self._length = np.zeros(size, dtype=np.int64)
        self._truncated = np.zeros(size, dtype=bool)
        self._uncertainty = np.full(size, np.nan, dtype=np.float64)
        self.clear()

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        self._next = 0  # slot of the next item; the window fills slots 0.. before it wraps
        self._count = 0
        self._added_since_resync = 0
        self._shift = 0.0  # sums are over (score − shift): less cancellation in Σs² − (Σs)²/n
        self._s1 = self._s2 = self._sl = self._u1 = 0.0
        self._l1 = self._l2 = self._t = self._un = 0  # integers: exact, so zero length variance is exact

    def add(
        self,
        scores: ArrayLike,
        lengths: ArrayLike,
        truncated: ArrayLike,
        uncertainty: ArrayLike | None = None,
    ) -> None:
        """Append items in order (the oldest fall out); a non-finite score is skipped, a non-finite
        uncertainty counts as "none"."""
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        n = len(s)
        length = np.asarray(lengths, dtype=np.int64).reshape(-1)
        cut = np.asarray(truncated, dtype=bool).reshape(-1)
        unc = np.full(n, np.nan) if uncertainty is None else np.asarray(uncertainty, np.float64).reshape(-1)
        if not len(length) == len(cut) == len(unc) == n:
            raise ValueError(
                f"{n} scores but {len(length)} lengths, {len(cut)} truncated flags, {len(unc)} uncertainties"
            )
        keep = np.isfinite(s)
        if not keep.all():
            s, length, cut, unc = s[keep], length[keep], cut[keep], unc[keep]
        if len(s) > self.size:  # only the newest `size` items can stay
            s, length, cut, unc = s[-self.size :], length[-self.size :], cut[-self.size :], unc[-self.size :]
        k = len(s)
        if k == 0:
            return
        if self._count == 0:
            self._shift = float(s[0])
        slots = (self._next + np.arange(k)) % self.size
        free = self.size - self._count
        if k > free:  # the window is (or becomes) full: the oldest items are overwritten
            self._account(slots[free:], sign=-1)
        self._score[slots] = s
        self._length[slots] = length
        self._truncated[slots] = cut
        self._uncertainty[slots] = unc
        self._account(slots, sign=+1)
        self._count = min(self.size, self._count + k)
        self._next = int((self._next + k) % self.size)
        self._added_since_resync += k
        if self._added_since_resync >= self.size:
            self._resync()

    def _account(self, slots: np.ndarray, sign: int) -> None:
        """Add (sign +1) or remove (sign −1) the items in `slots` from the running sums."""
        s = self._score[slots] - self._shift
        length = self._length[slots]
        u = self._uncertainty[slots]
        has_u = np.isfinite(u)
        self._s1 += sign * float(s.sum())
        self._s2 += sign * float(s @ s)
        self._sl += sign * float(s @ length)
        self._l1 += sign * int(length.sum())
        self._l2 += sign * int((length * length).sum())
        self._t += sign * int(self._truncated[slots].sum())
        self._un += sign * int(has_u.sum())
        self._u1 += sign * float(u[has_u].sum())

    def _resync(self) -> None:
        """Recompute every sum from the buffer (O(size), once per `size` items), around the current mean."""
        filled = slice(0, self._count)
        self._shift = float(self._score[filled].mean())
        self._s1 = self._s2 = self._sl = self._u1 = 0.0
        self._l1 = self._l2 = self._t = self._un = 0
        self._account(np.arange(self._count), sign=+1)
        self._added_since_resync = 0

    def stats(self) -> WindowStats:
        """O(1): read the statistics off the running sums."""
        n = self._count
        if n == 0:
            nan = math.nan
            return WindowStats(0, nan, nan, nan, nan, 0, nan)
        centred = self._s1 / n
        mean = self._shift + centred
        var_s = max(self._s2 / n - centred * centred, 0.0)
        var_l_n2 = n * self._l2 - self._l1 * self._l1  # n² · var(length), exact
        std = math.sqrt(var_s)
        constant_score = std <= CONSTANT_SCORE_RTOL * max(1.0, abs(mean))
        if constant_score or var_l_n2 <= 0:
            correlation = math.nan
        else:
            cov = self._sl / n - centred * (self._l1 / n)
            correlation = max(-1.0, min(1.0, cov / (std * (math.sqrt(var_l_n2) / n))))
        uncertainty_mean = self._u1 / self._un if self._un else math.nan
        return WindowStats(n, mean, std, correlation, self._t / n, self._un, uncertainty_mean)


@dataclass(frozen=True)
class Reference:
    """The score distribution the model was trained on (the manifest's train-split mean and std)."""

    mean: float
    std: float


@dataclass(frozen=True)
class WatchReading:
    """What the gauges show: NaN below the minimum item count, or where a statistic is undefined."""

    items: int
    drift_std: float
    std_ratio: float
    length_correlation: float
    truncated_share: float
    uncertainty_mean: float  # in reference std units


class ScoreWatch:
    """A window bound to the model being served and to that model's reference distribution.

    `serving(key)` is called whenever a model starts serving (first load and every reload): the window
    empties, and from then on only items scored by that model count. Requests admitted before a reload
    finish on the old model; their items are left out rather than mixed into the new model's window.
    """

    def __init__(self, size: int = 1000, min_items: int = 200) -> None:
        if not 2 <= min_items <= size:
            raise ValueError(f"min_items must be in [2, size={size}], got {min_items}")
        self.window = SlidingWindow(size)
        self.min_items = min_items
        self._key: str | None = None
        self._reference: Reference | None = None

    def serving(self, key: str) -> None:
        """A model (identified by `key`) now serves: start an empty window for it."""
        self._key = key
        self._reference = None
        self.window.clear()

    def observe(
        self,
        key: str,
        reference: Reference,
        scores: ArrayLike,
        lengths: ArrayLike,
        truncated: ArrayLike,
        uncertainty: ArrayLike | None = None,
    ) -> bool:
        """Add items scored by model `key`; returns False (and ignores them) if another model serves.
        Without a prior `serving` call the first model observed is adopted."""
        if self._key is None:
            self._key = key
        if key != self._key:
            return False
        if self._reference is None:
            self._reference = reference
        self.window.add(scores, lengths, truncated, uncertainty)
        return True

    def reading(self) -> WatchReading:
        stats = self.window.stats()
        ref = self._reference
        nan = math.nan
        if ref is None or stats.items < self.min_items:
            return WatchReading(stats.items, nan, nan, nan, nan, nan)
        enough_uncertainty = stats.uncertainty_items >= self.min_items
        return WatchReading(
            items=stats.items,
            drift_std=(stats.mean - ref.mean) / ref.std,
            std_ratio=stats.std / ref.std,
            length_correlation=stats.length_correlation,
            truncated_share=stats.truncated_share,
            uncertainty_mean=stats.uncertainty_mean / ref.std if enough_uncertainty else nan,
        )
