"""Nearest key-frame time in O(log n): the temporal proximity and the spatial gate both ask, for every
claim, which key frame is nearest in time. A plain scan is O(frames) per claim, so ground truth with
many key frames and a completion with many claims scored in quadratic time (620 KB: 8.3 s).

`NearestTimes` sorts the times once and answers with two bisections and a range-minimum, giving
exactly what the plain scan (`nearest_plain`) gives — the first position whose distance is minimal,
including its handling of NaN and infinite times — which a parity test checks on adversarial times.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

__all__ = ["SCAN_BELOW", "NearestTimes", "nearest_plain"]

SCAN_BELOW = 32
"""Below this many key frames the plain scan is faster than the index (and is what runs)."""


def nearest_plain(t: float, times: Sequence[float]) -> tuple[int, float]:
    """(position, distance) of the first time nearest to ``t``: the reference, O(len(times))."""
    best = 0
    d = abs(t - times[0])
    for k in range(1, len(times)):
        dk = abs(t - times[k])
        if dk < d:
            best, d = k, dk
    return best, d


class NearestTimes:
    """Index over ``times`` (non-empty) answering `nearest` like `nearest_plain`, in O(log n)."""

    def __init__(self, times: Sequence[float]) -> None:
        self.times = list(times)
        vals: list[float] = []
        first: list[int] = []  # per distinct time: its first position
        for x, i in sorted((x, i) for i, x in enumerate(self.times) if x == x):  # NaN never wins
            if vals and vals[-1] == x:
                continue
            vals.append(x)
            first.append(i)
        self._vals = vals
        self._table = [first]  # sparse table of range minima over `first`
        span = 1
        while 2 * span <= len(first):
            prev = self._table[-1]
            self._table.append([min(prev[i], prev[i + span]) for i in range(len(first) - 2 * span + 1)])
            span *= 2

    def _min_position(self, lo: int, hi: int) -> int:
        """Smallest first-position among distinct times ``lo..hi`` (inclusive)."""
        level = (hi - lo + 1).bit_length() - 1
        row = self._table[level]
        return min(row[lo], row[hi - (1 << level) + 1])

    def nearest(self, t: float) -> tuple[int, float]:
        """(position, distance) of the first time nearest to ``t``, exactly as `nearest_plain`."""
        times = self.times
        d0 = abs(t - times[0])
        if d0 != d0 or not math.isfinite(t):
            # The scan never moves off position 0 when its first distance is NaN, or when t is
            # infinite (every other distance is inf or NaN, never smaller).
            return 0, d0
        vals = self._vals
        j = bisect_left(vals, t)  # vals[:j] < t <= vals[j:]
        d_left = t - vals[j - 1] if j > 0 else math.inf
        d_right = vals[j] - t if j < len(vals) else math.inf
        d = min(d_left, d_right)
        if d == math.inf and d0 == math.inf:
            return 0, d0  # nothing is nearer than the first time
        best = len(times)
        if j > 0 and d_left == d:
            # distances t - v shrink as v grows: those equal to d form the end of vals[:j]
            lo = bisect_left(vals, -d, 0, j, key=lambda v: -(t - v))
            best = min(best, self._min_position(lo, j - 1))
        if j < len(vals) and d_right == d:
            hi = bisect_right(vals, d, j, len(vals), key=lambda v: v - t)
            best = min(best, self._min_position(j, hi - 1))
        return best, d
