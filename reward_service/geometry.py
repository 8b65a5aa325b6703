"""Box and interval overlap, and the one-to-one box matching of the spatial reward (docs/design.md §3).

Pure Python on purpose: a claim has a handful of boxes, and numpy/scipy call overhead (~10 µs)
would dominate. Matching is exact: tiny problems (the common case) are solved by enumeration,
larger ones by `scipy.optimize.linear_sum_assignment`; `match_score_scipy` is the reference twin
the tests compare against.
"""

from __future__ import annotations

from itertools import permutations

Box = list[float]


def clamp_box(box: Box, width: float = 1.0, height: float = 1.0) -> Box:
    """Clip a box to the frame `[0, width] x [0, height]` (coordinates kept in their order)."""
    x1, y1, x2, y2 = box
    # min(max(v, 0.0), limit) as comparisons: max keeps v unless 0.0 > v, min keeps that unless
    # limit < it (the same result for every input, NaN and signed zeros included)
    x1 = 0.0 if 0.0 > x1 else x1
    y1 = 0.0 if 0.0 > y1 else y1
    x2 = 0.0 if 0.0 > x2 else x2
    y2 = 0.0 if 0.0 > y2 else y2
    return [width if width < x1 else x1, height if height < y1 else y1,
            width if width < x2 else x2, height if height < y2 else y2]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two `[x1, y1, x2, y2]` boxes; 0 when either has no area
    (inverted or degenerate boxes score 0 rather than being silently repaired)."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
        return 0.0
    # min(ax2, bx2) - max(ax1, bx1), written as comparisons (the same result, ties and signed zeros
    # included: min/max keep their first argument unless the second is strictly smaller/larger)
    iw = (bx2 if bx2 < ax2 else ax2) - (bx1 if bx1 > ax1 else ax1)
    ih = (by2 if by2 < ay2 else ay2) - (by1 if by1 > ay1 else ay1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0.0 else 0.0


def interval_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """IoU of two time intervals `[s, e]`; 0 when either is inverted or empty."""
    s1, e1 = a
    s2, e2 = b
    if e1 <= s1 or e2 <= s2:
        return 0.0
    inter = (e2 if e2 < e1 else e1) - (s2 if s2 > s1 else s1)  # min/max as comparisons, as in box_iou
    if inter <= 0.0:
        return 0.0
    return inter / ((e2 if e2 > e1 else e1) - (s2 if s2 < s1 else s1))


def _iou_matrix(pred: list[Box | None], gt: list[Box]) -> list[list[float]]:
    return [[0.0 if p is None else box_iou(p, g) for g in gt] for p in pred]


def _best_assignment_sum(m: list[list[float]]) -> float:
    """Maximum-weight one-to-one assignment of a small matrix (rows <= cols), by enumeration."""
    rows, cols = len(m), len(m[0])
    if rows == 1:
        return max(m[0])
    best = 0.0
    for perm in permutations(range(cols), rows):
        s = 0.0
        for r, c in enumerate(perm):
            s += m[r][c]
        if s > best:
            best = s
    return best


ENUMERATION_LIMIT = 4
"""Problems whose larger side is at most this are enumerated (<= 24 permutations)."""


def match_score(pred: list[Box | None], gt: list[Box]) -> float:
    """Optimal one-to-one IoU matching of predicted and ground-truth boxes, normalised by
    `max(#pred, #gt)`: unmatched (extra or missing) boxes cost. `None` predictions are malformed boxes
    that match nothing. Result in [0, 1]; 0 if either side is empty."""
    if not pred or not gt:
        return 0.0
    if len(pred) == 1 or len(gt) == 1:  # one side single: the optimum is the best pair
        best = max((box_iou(p, g) for p in pred if p is not None for g in gt), default=0.0)
        return best / max(len(pred), len(gt))
    m = _iou_matrix(pred, gt)
    if len(pred) > len(gt):
        m = [list(col) for col in zip(*m)]
    if max(len(pred), len(gt)) <= ENUMERATION_LIMIT:
        total = _best_assignment_sum(m)
    else:
        total = _scipy_sum(m)
    return total / max(len(pred), len(gt))


def _scipy_sum(m: list[list[float]]) -> float:
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    arr = np.asarray(m, dtype=np.float64)
    r, c = linear_sum_assignment(arr, maximize=True)
    return float(arr[r, c].sum())


def match_score_scipy(pred: list[Box | None], gt: list[Box]) -> float:
    """Reference twin of `match_score`: always the Hungarian solver."""
    if not pred or not gt:
        return 0.0
    return _scipy_sum(_iou_matrix(pred, gt)) / max(len(pred), len(gt))
