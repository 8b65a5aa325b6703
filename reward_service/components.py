"""The reward components of docs/design.md §3, as pure functions of a parsed completion and its ground truth.

Every function returns a float in [0, 1] and never raises on any completion text; the ground truth
is trusted to be well-typed (the `ScoringSample` decoder checks it) but may be empty.
"""

from __future__ import annotations

import math

from stgrl.reward_service.geometry import clamp_box, interval_iou, match_score
from stgrl.reward_service.nearest import SCAN_BELOW, NearestTimes
from stgrl.reward_service.parser import (
    Claim,
    ParsedCompletion,
    parse_option_letter,
    parse_span_text,
    predicted_span,
)
from stgrl.reward_service.text import normalize_object_name, rouge_mean_f1
from stgrl.reward_service.types import Box, KeyFrame


def unit(x: float) -> float:
    """Clamp to [0, 1]; NaN (from bad ground truth) becomes 0."""
    if not x > 0.0:
        return 0.0
    return 1.0 if x > 1.0 else x


# ---------------------------------------------------------------------------------------- format
def format_reward(parsed: ParsedCompletion, claims_required: bool) -> float:
    """1.0: think then answer, each once, balanced (and >= 1 well-formed claim when required);
    0.5: well-formed but the required claims are missing; 0 otherwise."""
    if not parsed.well_formed:
        return 0.0
    if claims_required and not any(c.well_formed for c in parsed.claims):
        return 0.5
    return 1.0


# ------------------------------------------------------------------------------------- answers
def answer_accuracy(parsed: ParsedCompletion, truth: str, options: list[str] | None) -> float:
    """Multiple choice (options given): the predicted option letter equals the truth's (the first
    line of the truth, e.g. `"B\\n[3, 7]"` for temporal MCQ). Free form: mean ROUGE-1/2/L F1."""
    if parsed.answer is None:
        return 0.0
    if options:
        want = parse_option_letter(truth.split("\n", 1)[0])
        got = parse_option_letter(parsed.answer)
        return 1.0 if want is not None and got == want else 0.0
    return unit(rouge_mean_f1(truth.strip(), parsed.answer.strip()))


def truth_span(span: list[float] | None, truth_answer: str) -> tuple[float, float] | None:
    """The ground-truth span: `span` when given, else `[s, e]` written in the answer."""
    if span is not None and len(span) == 2:
        return float(span[0]), float(span[1])
    return parse_span_text(truth_answer)


def answer_tiou(parsed: ParsedCompletion, span: tuple[float, float] | None) -> float:
    """IoU of the answer's `<t>S</t>s to <t>E</t>s` with the ground-truth span (inverted: 0)."""
    pred = predicted_span(parsed)
    if pred is None or span is None:
        return 0.0
    return unit(interval_iou(pred, span))


def all_gt_boxes(key_items: dict[str, dict[str, list[Box]]]) -> list[Box]:
    return [b for objs in key_items.values() for boxes in objs.values() for b in boxes if len(b) == 4]


def answer_viou(parsed: ParsedCompletion, gt_boxes: list[Box], frame_size: list[float]) -> float:
    """Optimal one-to-one matching of the answer's boxes (pixels of the resized image) with the
    normalized ground-truth boxes, sum of matched IoUs / max(#pred, #gt), as for claims.

    **[fix]** "best IoU of any answer box" let an answer that lists a blind grid of boxes (2x2 to 5x5
    tilings, 54 boxes) score up to 0.58 without looking at the image; here each extra box costs, so
    that grid scores about 1/54 of its best box and one exact box still scores 1. A malformed box
    counts as a predicted box that matches nothing."""
    if not parsed.answer_boxes or not gt_boxes:
        return 0.0
    w, h = _frame(frame_size)
    pred = [None if b is None else clamp_box([b[0] / w, b[1] / h, b[2] / w, b[3] / h])
            for b in parsed.answer_boxes]
    return unit(match_score(pred, [clamp_box(g) for g in gt_boxes]))


# ------------------------------------------------------------------------------------- temporal
def think_temporal_segment(parsed: ParsedCompletion, span: tuple[float, float] | None) -> float:
    """Fraction of `<t>` mentions in the think that fall inside the span (malformed ones count as
    outside); 0 without mentions or span."""
    if span is None or not parsed.think_times:
        return 0.0
    s, e = span
    inside = sum(1 for t in parsed.think_times if t is not None and s <= t <= e)
    return inside / len(parsed.think_times)


def curriculum_sigma(step: int, total_steps: int, sigma0: float, sigma_min: float) -> float:
    """`sigma(p) = max(sigma_min, sigma0 * (1 - p))` with `p = (step + 1) / total_steps` in [0, 1]."""
    p = (step + 1) / max(total_steps, 1)
    p = min(max(p, 0.0), 1.0)
    return max(sigma_min, sigma0 * (1.0 - p))


def _nearest(t: float, key_frames: list[KeyFrame], index: NearestTimes | None = None) -> tuple[KeyFrame, float]:
    """The first key frame nearest to ``t`` and its distance; ``index`` (over the same key frames'
    times) answers in O(log n) for callers that ask for many times."""
    if index is not None:
        k, d = index.nearest(t)
        return key_frames[k], d
    best = key_frames[0]
    d = abs(t - best.time)
    for kf in key_frames[1:]:
        dk = abs(t - kf.time)
        if dk < d:
            best, d = kf, dk
    return best, d


def _index(key_frames: list[KeyFrame]) -> NearestTimes | None:
    """An O(log n) nearest-time index when there are enough key frames to be worth one."""
    return NearestTimes([kf.time for kf in key_frames]) if len(key_frames) >= SCAN_BELOW else None


def proximity(t: float | None, key_frames: list[KeyFrame], sigma: float,
              index: NearestTimes | None = None) -> float:
    """`exp(-d^2 / (2 sigma^2))`, `d` the distance to the nearest key frame; 0 for a malformed time."""
    if t is None or not key_frames:
        return 0.0
    _, d = _nearest(t, key_frames, index)
    return math.exp(-(d * d) / (2.0 * sigma * sigma))


def temporal_proximity(parsed: ParsedCompletion, key_frames: list[KeyFrame], sigma: float,
                       scope: str = "claims") -> float:
    """Mean proximity over the claims' times (`scope="claims"`) or over every `<t>X</t>s` mention in
    the think (`scope="all"`, the reference: a bare `<t>X</t>` without the `s` is not counted); 0 when
    there is nothing to average."""
    times = [c.time for c in parsed.claims] if scope == "claims" else parsed.think_second_times
    if not times or not key_frames:
        return 0.0
    index = _index(key_frames)
    return unit(sum(proximity(t, key_frames, sigma, index) for t in times) / len(times))


# -------------------------------------------------------------------------------------- spatial
def _frame(frame_size: list[float]) -> tuple[float, float]:
    if len(frame_size) != 2:
        return 1.0, 1.0
    w, h = float(frame_size[0]), float(frame_size[1])
    return (w if w > 0 and math.isfinite(w) else 1.0), (h if h > 0 and math.isfinite(h) else 1.0)


def _prepared_frame(objects: dict[str, list[Box]], object_match: str) -> list[tuple[str, list[Box]]]:
    """Ground truth of one key frame as `(normalized name, clamped boxes)`; `any` keeps objects apart
    too (the claim is scored against its best object)."""
    out: dict[str, list[Box]] = {}
    for name, boxes in objects.items():
        key = normalize_object_name(name) if object_match == "name" else name
        out.setdefault(key, []).extend(clamp_box(b) for b in boxes if len(b) == 4)
    return list(out.items())


def claim_score(claim: Claim, key_frames: list[KeyFrame], key_items: dict[str, dict[str, list[Box]]],
                frame_size: list[float], gate_delta_s: float | None, object_match: str,
                _prepared: dict | None = None) -> float:
    """Score of one claim: nearest key frame `k*`; if `gate_delta_s` is set and `|t - tau_k*| > delta`
    the gate is closed (0). Otherwise optimal one-to-one matching against the ground-truth boxes of the
    same object in `k*` (`object_match="name"`) or of the best-scoring object (`"any"`, reference).
    `_prepared` caches per-frame ground truth across the claims of one sample."""
    if claim.time is None or not key_frames:
        return 0.0
    cache = _prepared if _prepared is not None else {}
    if "nearest" not in cache:
        cache["nearest"] = _index(key_frames)
    kf, d = _nearest(claim.time, key_frames, cache["nearest"])
    if gate_delta_s is not None and d > gate_delta_s:
        return 0.0
    frame = cache.get(kf.idx)
    if frame is None:
        frame = cache[kf.idx] = _prepared_frame(key_items.get(str(kf.idx), {}), object_match)
    if not frame:
        return 0.0
    w, h = cache.get("wh") or cache.setdefault("wh", _frame(frame_size))
    pred = [None if b is None else clamp_box([b[0] / w, b[1] / h, b[2] / w, b[3] / h]) for b in claim.boxes]
    if object_match == "name":
        want = normalize_object_name(claim.name)
        for name, gt in frame:
            if name == want:
                return unit(match_score(pred, gt))
        return 0.0
    return unit(max(match_score(pred, gt) for _, gt in frame))


def spatial_reward(parsed: ParsedCompletion, key_frames: list[KeyFrame],
                   key_items: dict[str, dict[str, list[Box]]], frame_size: list[float],
                   gate_delta_s: float | None, object_match: str) -> float:
    """Mean claim score over all parsed claims (ungated claims count 0); 0 without claims.
    `gate_delta_s=None` is the ungated ("plain") ablation baseline."""
    claims = parsed.claims
    if not claims:
        return 0.0
    prepared: dict = {}
    total = sum(claim_score(c, key_frames, key_items, frame_size, gate_delta_s, object_match, prepared)
                for c in claims)
    return unit(total / len(claims))
