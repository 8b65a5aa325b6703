"""Box and span geometry shared by the V-STAR metrics, the grounding diagnostics and the visualizer.

Kept separate and tiny because every metric in this package reduces to these few functions; they
never raise on malformed input (NaN, inverted or degenerate boxes score 0) so one bad prediction
cannot stop an evaluation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

Box = tuple[float, float, float, float]

_MMSS = re.compile(r"(\d+):(\d{1,2}(?:\.\d+)?)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_T_TAG = re.compile(r"<t>\s*(-?\d+(?:\.\d+)?)\s*</t>")


def as_box(value: object) -> Box | None:
    """Four finite numbers as an ordered ``(x1, y1, x2, y2)`` box, or None.

    Corners are sorted so an inverted box still means the same region; anything that is not four
    finite numbers (strings, NaN, nested lists) is None rather than an exception.
    """
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def box_list(value: object) -> list[Box]:
    """A box or a list of boxes (the reference accepts both) as a list of valid boxes."""
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], (list, tuple)):
        single = as_box(value)
        return [single] if single is not None else []
    if isinstance(value, (list, tuple)):
        return [b for b in (as_box(v) for v in value) if b is not None]
    return []


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes; 0 for degenerate/invalid boxes."""
    ba, bb = as_box(a), as_box(b)
    if ba is None or bb is None:
        return 0.0
    iw = max(0.0, min(ba[2], bb[2]) - max(ba[0], bb[0]))
    ih = max(0.0, min(ba[3], bb[3]) - max(ba[1], bb[1]))
    inter = iw * ih
    union = (ba[2] - ba[0]) * (ba[3] - ba[1]) + (bb[2] - bb[0]) * (bb[3] - bb[1]) - inter
    return inter / union if union > 0 else 0.0


def best_iou(gt: Sequence[float], preds: Sequence[Sequence[float]]) -> float:
    """Best IoU of one ground-truth box against several predicted boxes (0 when there are none)."""
    return max((box_iou(gt, p) for p in preds), default=0.0)


def box_center(box: Sequence[float]) -> tuple[float, float]:
    """Centre point of a box."""
    return ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)


def center_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between box centres (in the boxes' own units)."""
    (ax, ay), (bx, by) = box_center(a), box_center(b)
    return math.hypot(ax - bx, ay - by)


def span_iou(gt: Sequence[float], pred: Sequence[float] | None) -> float:
    """Temporal IoU of two ``[start, end]`` spans; 0 for a missing or malformed prediction.

    Ends are ordered first: an inverted span ``[7, 3]`` means ``[3, 7]`` (the reference evaluator
    would instead produce a meaningless value for it).
    """
    if pred is None or not isinstance(pred, (list, tuple)) or len(pred) != 2 or len(gt) != 2:
        return 0.0
    try:
        p0, p1 = sorted(float(v) for v in pred)
        g0, g1 = sorted(float(v) for v in gt)
    except (TypeError, ValueError):
        return 0.0
    if not all(math.isfinite(v) for v in (p0, p1, g0, g1)):
        return 0.0
    inter = max(0.0, min(g1, p1) - max(g0, p0))
    union = max(g1, p1) - min(g0, p0)
    return inter / union if union > 0 else 0.0


def answer_text(text: str) -> str:
    """The content of the last ``<answer>…</answer>`` if there is one, else the whole text stripped."""
    found = _ANSWER.findall(text or "")
    return found[-1].strip() if found else (text or "").strip()


def parse_span_text(text: str | None) -> list[float]:
    """Two times parsed from free text, as the reference does for ``answer_temporal_pre``.

    Looks inside ``<answer>`` if present, converts ``mm:ss`` to seconds, then takes the first two
    ``<t>`` tags if there are at least two, else the numbers when there are exactly two. Anything
    else is ``[]`` (an unparseable answer scores tIoU 0).
    """
    if not text:
        return []
    body = answer_text(text)
    body = _MMSS.sub(lambda m: f"{int(m.group(1)) * 60 + float(m.group(2)):g}", body)
    tags = _T_TAG.findall(body)
    if len(tags) >= 2:
        return [float(tags[0]), float(tags[1])]
    nums = _NUMBER.findall(body)
    return [float(nums[0]), float(nums[1])] if len(nums) == 2 else []


def nearest_index(t: float, times: Sequence[float]) -> int:
    """Index of the time in ``times`` closest to ``t`` (first one on ties); -1 if ``times`` is empty."""
    if not times:
        return -1
    return min(range(len(times)), key=lambda i: (abs(times[i] - t), i))
