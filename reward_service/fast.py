"""The reward's hot path: the components of docs/design.md §3 computed per task, with the ground truth
prepared once per group.

`components.py` defines every component as its own small function of a parsed completion and the raw
ground truth; `rewards.score_components_reference` chains them. That is the readable definition and
the reference twin of this module: `tests/rewards/test_fast_path.py` checks both give the same
floats, bit for bit, on generated groups of realistic and malformed completions. What is faster here:

- **Ground truth once per group.** A GRPO/GSPO group's G completions share their prompt, so
  `score_batch` compares each sample's ground truth with the previous one's (identity first, then
  value) and reuses a `Truth`: the truth's option letter, its ROUGE profile, the temporal span, the
  frame size, the key-frame times, each key frame's objects with normalised names and clamped
  boxes, the clamped image boxes - none of it is recomputed per completion.
- **One function per task**, called with the completion and its blocks as plain spans
  (`parser.blocks`, whose one-pass `FORM` match also proves `well_formed` in the common case) and
  reading only the parts its components need through the parser's module functions - no
  `ParsedCompletion` object per sample; the nearest key frame of a claim is found once and shared by
  proximity and the gate; a claim on an object the key frame does not hold is dropped before its
  boxes are normalised.
- **No per-component dispatch**: no name loop, no `getattr` for weights, no dict rebuilt for the total.

Arithmetic is the same as in `components.py`/`geometry.py`, operation for operation (the same
divisions, the same `min`/`max` written as comparisons with the same tie and signed-zero behaviour,
sums over the same sequences in the same order), so results are identical, not merely close.
"""

from __future__ import annotations

import math
from math import exp

from stgrl.reward_service.components import (
    _frame,
    all_gt_boxes,
    curriculum_sigma,
    truth_span,
)
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.geometry import ENUMERATION_LIMIT, box_iou, clamp_box, interval_iou, match_score
from stgrl.reward_service.nearest import SCAN_BELOW, NearestTimes, nearest_plain
from stgrl.reward_service.parser import (
    _BOX_TAG,
    _MISSING,
    _NUMBERS,
    _T_TAG,
    MAX_ANSWER_SCAN_CHARS,
    RawClaim,
    blocks,
    claim_boxes,
    form_by_counts,
    parse_box,
    parse_claims,
    parse_number,
    parse_option_letter,
    parse_span_text,
    second_times_in,
    times_in,
)
from stgrl.reward_service.text import (
    RougeReference,
    normalize_object_name,
    rouge_mean_f1_ref,
    rouge_reference,
)
from stgrl.reward_service.types import TASKS, Box, ScoringSample

FrameTruth = dict[str, list[Box]] | list[list[Box]]
"""One key frame's ground truth: `{normalised name: clamped boxes}` (`object_match="name"`) or the
clamped box lists of its objects (`"any"`)."""


class Run:
    """What one `score_batch` call fixes for all its samples: options, weights, the curriculum sigma."""

    __slots__ = ("cfg", "w", "den", "gate", "object_match", "scope", "plain")

    def __init__(self, step: int, total_steps: int, cfg: RewardConfig) -> None:
        self.cfg = cfg
        self.w = cfg.weights
        """The weights by component name (`run.w.spatial_gated`): a name cannot pick the wrong slot."""
        sigma = curriculum_sigma(step, total_steps, cfg.sigma0, cfg.sigma_min)
        self.den = 2.0 * sigma * sigma
        """`2 sigma^2`, the denominator `components.proximity` computes per call."""
        self.plain = cfg.spatial_mode == "plain"
        self.gate = None if self.plain else cfg.gate_delta_s
        self.object_match = cfg.object_match
        self.scope = cfg.proximity_scope


class Truth:
    """The ground truth of one prompt, prepared for scoring its completions. Parts are built on
    first use (a group whose completions have no answer never builds the ROUGE profile)."""

    __slots__ = ("sample", "key", "task", "options", "_letter", "_rouge", "span", "_times", "_wh", "_frames", "_at",
                 "_all_boxes", "_image_boxes", "accuracy_of", "_nearest")

    def __init__(self, sample: ScoringSample) -> None:
        if sample.task not in TASKS:
            raise ValueError(f"unknown task {sample.task!r}; expected one of {', '.join(TASKS)}")
        self.sample = sample
        self.key = (sample.task, sample.answer, sample.options, sample.key_frames, sample.span, sample.frame_size)
        """What `same` compares (all but `key_items`, which needs its objects' order compared too)."""
        self.task = sample.task
        self.options = bool(sample.options)
        self._letter: str | None | bool = False  # False: not computed yet
        self._rouge: RougeReference | None = None
        self.span = truth_span(sample.span, sample.answer) if sample.task == "temporal" else None
        # read on first use only, where `components` reads them: a malformed part of the ground truth
        # fails the same samples, with the same error, as on the reference path
        self._times: list[float] | None = None
        self._wh: tuple[float, float] | None = None
        self._frames: dict[int, FrameTruth] = {}
        self._at: dict[int, FrameTruth] = {}
        self._all_boxes: list[Box] | None = None
        self._image_boxes: list[Box] | None = None
        self.accuracy_of: dict[str, float] = {}
        """`answer_accuracy` by answer text: the completions of a group often give the same answer."""
        self._nearest: NearestTimes | None = None

    def same(self, s: ScoringSample) -> bool:
        """Whether `s` has this ground truth, so that every prepared part applies to it as is.
        Identical objects (one group's samples built by one process) are recognised without looking
        inside; otherwise values are compared, and the objects of each key frame in order too (their
        order fixes the order in which boxes of objects with one normalised name are merged)."""
        # a tuple compares its items by identity first, then by value (`is` or `==`): one C-level call
        return ((s.task, s.answer, s.options, s.key_frames, s.span, s.frame_size) == self.key
                and (s.key_items is self.sample.key_items or _same_items(s.key_items, self.sample.key_items)))

    @property
    def times(self) -> list[float]:
        """The key frames' times, in order."""
        if self._times is None:
            self._times = [kf.time for kf in self.sample.key_frames]
        return self._times

    def nearest(self, t: float) -> tuple[int, float]:
        """(position, distance) of the key frame nearest to ``t`` (`nearest.NearestTimes`: O(log n))."""
        if self._nearest is None:
            self._nearest = NearestTimes(self.times)
        return self._nearest.nearest(t)

    @property
    def wh(self) -> tuple[float, float]:
        """The resized frame's (W, H) as `components._frame` reads it."""
        if self._wh is None:
            self._wh = _frame(self.sample.frame_size)
        return self._wh

    @property
    def letter(self) -> str | None:
        """The truth's option letter (from its first line)."""
        if self._letter is False:
            self._letter = parse_option_letter(self.sample.answer.split("\n", 1)[0])
        return self._letter

    @property
    def rouge(self) -> RougeReference:
        if self._rouge is None:
            self._rouge = rouge_reference(self.sample.answer.strip())
        return self._rouge

    def frame_at(self, k: int, object_match: str) -> FrameTruth:
        """`frame` of the k-th key frame (kept by position too: claims look frames up by position)."""
        got = self._at.get(k)
        if got is None:
            got = self._at[k] = self.frame(self.sample.key_frames[k].idx, object_match)
        return got

    def frame(self, idx: int, object_match: str) -> FrameTruth:
        """Key frame `idx`'s objects, as `components._prepared_frame` builds them."""
        got = self._frames.get(idx)
        if got is None:
            merged: dict[str, list[Box]] = {}
            for name, boxes in self.sample.key_items.get(str(idx), {}).items():
                key = normalize_object_name(name) if object_match == "name" else name
                merged.setdefault(key, []).extend(clamp_box(b) for b in boxes if len(b) == 4)
            got = self._frames[idx] = merged if object_match == "name" else list(merged.values())
        return got

    def all_boxes(self) -> list[Box]:
        """Every ground-truth box (the spatial task's `answer_viou`)."""
        if self._all_boxes is None:
            self._all_boxes = all_gt_boxes(self.sample.key_items)
        return self._all_boxes

    def image_boxes(self) -> list[Box]:
        """`all_boxes`, clamped (built when the first answer box needs them)."""
        if self._image_boxes is None:
            self._image_boxes = [clamp_box(g) for g in self.all_boxes()]
        return self._image_boxes


def _same_items(a: dict[str, dict[str, list[Box]]], b: dict[str, dict[str, list[Box]]]) -> bool:
    return a == b and all(list(objs) == list(b[k]) for k, objs in a.items())


# --------------------------------------------------------------------------------- components
# The scorers read the completion through `parser.blocks` (think/answer spans, and `well_formed` when
# the one-pass `FORM` match proves it) and the parser's module functions on those spans, with plain
# locals: no `ParsedCompletion` object, no properties. `ParsedCompletion` stays the reference's view.
Span = tuple[int, int] | None


def _accuracy(text: str, answer: Span, truth: Truth) -> float:
    """`components.answer_accuracy`, memoised per answer text within the group."""
    if answer is None:
        return 0.0
    ans = text[answer[0] : answer[1]]
    v = truth.accuracy_of.get(ans)
    if v is None:
        if truth.options:
            want = truth.letter
            v = 1.0 if want is not None and parse_option_letter(ans) == want else 0.0
        else:
            v = rouge_mean_f1_ref(truth.rouge, ans.strip())
            v = 0.0 if not v > 0.0 else (1.0 if v > 1.0 else v)
        truth.accuracy_of[ans] = v
    return v


def _claim_spatial(claim: RawClaim, frame: FrameTruth, truth: Truth, by_name: bool) -> float:
    """`components.claim_score` after the gate: matching in the claim's nearest key frame, whose
    ground truth `frame` is not empty. The claim's boxes are read only here, once its object is known
    to be in the frame."""
    w, h = truth._wh or truth.wh  # the property's slot read inline once built (hot)
    if by_name:
        gt = frame.get(normalize_object_name(claim[0]))  # type: ignore[union-attr]
        if gt is None:
            return 0.0
        candidates = (gt,)
    else:
        candidates = frame  # type: ignore[assignment]
    boxes = claim_boxes(claim)
    if len(boxes) == 1 and len(candidates) == 1 and len(candidates[0]) == 1:
        # the common one-box claim on a one-box object: _match's 1x1 case on the normalised, clamped
        # box, without building it (box_iou's operations, inlined)
        b = boxes[0]
        if b is None:
            return 0.0
        x1, y1, x2, y2 = b[0] / w, b[1] / h, b[2] / w, b[3] / h
        ax1 = 0.0 if x1 < 0.0 else (1.0 if x1 > 1.0 else x1)
        ay1 = 0.0 if y1 < 0.0 else (1.0 if y1 > 1.0 else y1)
        ax2 = 0.0 if x2 < 0.0 else (1.0 if x2 > 1.0 else x2)
        ay2 = 0.0 if y2 < 0.0 else (1.0 if y2 > 1.0 else y2)
        bx1, by1, bx2, by2 = candidates[0][0]
        if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
            return 0.0
        iw = (bx2 if bx2 < ax2 else ax2) - (bx1 if bx1 > ax1 else ax1)
        ih = (by2 if by2 < ay2 else ay2) - (by1 if by1 > ay1 else ay1)
        if iw <= 0.0 or ih <= 0.0:
            return 0.0
        inter = iw * ih
        union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
        v = inter / union if union > 0.0 else 0.0
        return 0.0 if not v > 0.0 else (1.0 if v > 1.0 else v)
    pred: list[Box | None] = []
    for b in boxes:
        if b is None:
            pred.append(None)
            continue
        # clamp_box([x1/w, y1/h, x2/w, y2/h]) with min/max unrolled (same results, signed zeros too)
        x1, y1, x2, y2 = b[0] / w, b[1] / h, b[2] / w, b[3] / h
        pred.append([0.0 if x1 < 0.0 else (1.0 if x1 > 1.0 else x1), 0.0 if y1 < 0.0 else (1.0 if y1 > 1.0 else y1),
                     0.0 if x2 < 0.0 else (1.0 if x2 > 1.0 else x2), 0.0 if y2 < 0.0 else (1.0 if y2 > 1.0 else y2)])
    best = None
    for gt in candidates:
        v = _match(pred, gt)
        if best is None or v > best:  # max() over the candidates, first maximum kept
            best = v
    return 0.0 if not best > 0.0 else (1.0 if best > 1.0 else best)  # type: ignore[operator]


def _match(pred: list[Box | None], gt: list[Box]) -> float:
    """`geometry.match_score` with its two most common shapes unrolled (same sums in the same order)."""
    n_pred, n_gt = len(pred), len(gt)
    if n_pred == 1 and n_gt == 1:  # the one pair's IoU (divided by 1)
        p = pred[0]
        return 0.0 if p is None else box_iou(p, gt[0])
    if n_pred == 2 and n_gt == 2:  # the better of the two permutations, as _best_assignment_sum sums them
        p0, p1 = pred
        g0, g1 = gt
        m00 = 0.0 if p0 is None else box_iou(p0, g0)
        m01 = 0.0 if p0 is None else box_iou(p0, g1)
        m10 = 0.0 if p1 is None else box_iou(p1, g0)
        m11 = 0.0 if p1 is None else box_iou(p1, g1)
        best = 0.0
        s = 0.0 + m00 + m11
        if s > best:
            best = s
        s = 0.0 + m01 + m10
        if s > best:
            best = s
        return best / 2
    if n_pred == 1 or n_gt == 1:  # one side single: match_score's best pair, max() as comparisons
        best = None
        for p in pred:
            if p is not None:
                for g in gt:
                    v = box_iou(p, g)
                    if best is None or v > best:
                        best = v
        return (0.0 if best is None else best) / (n_pred if n_pred > n_gt else n_gt)
    if (n_pred == 2 and 2 < n_gt <= ENUMERATION_LIMIT) or (n_gt == 2 and 2 < n_pred <= ENUMERATION_LIMIT):
        # two rows (the smaller side) against 3-4 columns: _best_assignment_sum's enumeration of the
        # column pairs, in `permutations` order, on the same (transposed when pred is larger) matrix
        if n_pred == 2:
            p0, p1 = pred
            r0 = [0.0 if p0 is None else box_iou(p0, g) for g in gt]
            r1 = [0.0 if p1 is None else box_iou(p1, g) for g in gt]
        else:
            g0, g1 = gt
            r0 = [0.0 if p is None else box_iou(p, g0) for p in pred]
            r1 = [0.0 if p is None else box_iou(p, g1) for p in pred]
        cols = len(r0)
        best = 0.0
        for c0 in range(cols):
            a = r0[c0]
            for c1 in range(cols):
                if c1 != c0:
                    s = 0.0 + a + r1[c1]
                    if s > best:
                        best = s
        return best / cols
    return match_score(pred, gt)


def _proximity_and_spatial(claims: list[RawClaim], text: str, think: Span, truth: Truth,
                           run: Run) -> tuple[float, float]:
    """`temporal_proximity` (0 in plain mode, where it is not a component) and `spatial_reward`,
    sharing each claim's nearest key frame."""
    has_frames = bool(truth.sample.key_frames)
    den, gate, plain = run.den, run.gate, run.plain
    prox: list[float] = []
    spat: list[float] = []
    if has_frames:
        times = truth.times
        n_times = len(times)
        t0 = times[0]
        at = truth._at  # truth.frame_at's memo, looked up inline (hot)
        om = run.object_match
        by_name = om == "name"
    for claim in claims:
        t = claim[2]
        if t is None or not has_frames:
            prox.append(0.0)
            spat.append(0.0)
            continue
        if n_times >= SCAN_BELOW:
            k, d = truth.nearest(t)  # many key frames: O(log n), not a scan per claim
        else:
            k = 0  # nearest_plain(t, times), inlined (hot)
            d = abs(t - t0)
            for i in range(1, n_times):
                di = abs(t - times[i])
                if di < d:
                    k, d = i, di
        if not plain:
            prox.append(exp(-(d * d) / den))
        if gate is not None and d > gate:
            spat.append(0.0)
            continue
        frame = at.get(k)
        if frame is None:
            frame = truth.frame_at(k, om)
        spat.append(_claim_spatial(claim, frame, truth, by_name) if frame else 0.0)
    if claims:
        s = sum(spat) / len(claims)
        spatial = 0.0 if not s > 0.0 else (1.0 if s > 1.0 else s)
    else:
        spatial = 0.0
    if plain:
        return 0.0, spatial
    if run.scope == "claims":
        if not prox or not has_frames:
            return 0.0, spatial
        p = sum(prox) / len(prox)
        return (0.0 if not p > 0.0 else (1.0 if p > 1.0 else p)), spatial
    think_times = second_times_in(text, think)  # `<t>X</t>s` mentions only, as `components`
    if not think_times or not has_frames:
        return 0.0, spatial
    return _mean_proximity(think_times, truth, den), spatial


def _mean_proximity(ts: list[float | None], truth: Truth, den: float) -> float:
    """Mean `exp(-d^2 / 2 sigma^2)` over `ts` (0 for a malformed time), clamped to [0, 1]."""
    out = []
    for t in ts:
        if t is None:
            out.append(0.0)
        else:
            d = (truth.nearest(t) if len(truth.times) >= SCAN_BELOW else nearest_plain(t, truth.times))[1]
            out.append(math.exp(-(d * d) / den))
    p = sum(out) / len(ts)
    return 0.0 if not p > 0.0 else (1.0 if p > 1.0 else p)


def _predicted_span(text: str, answer: Span) -> tuple[float, float] | None:
    """`parser.predicted_span` on the answer's span: the first two `<t>` times (only those two are
    read), else a `[S, E]` in the answer's first `MAX_ANSWER_SCAN_CHARS` (4,096) characters when it has no `<t>` at all."""
    if answer is None:
        return None
    c, d = answer
    found = _T_TAG.findall(text, c, d)
    if len(found) >= 2:
        get = _NUMBERS.get  # parse_number's memo, looked up inline (hot)
        s, e = get(found[0], _MISSING), get(found[1], _MISSING)
        if s is _MISSING:
            s = parse_number(found[0])
        if e is _MISSING:
            e = parse_number(found[1])
        return None if s is None or e is None else (s, e)
    if not found:
        return parse_span_text(text[c : d if d - c <= MAX_ANSWER_SCAN_CHARS else c + MAX_ANSWER_SCAN_CHARS])
    return None


# --------------------------------------------------------------------------------------- tasks
# Each task's scorer takes the completion, its blocks and `well_formed` as `parser.blocks` gives them
# (None: not decided yet), and returns its components (in the order `rewards.components_for` lists
# them) and their weighted total, summed in that order from 0 as `sum()` does (so the same float).
Scored = tuple[dict[str, float], float]


def score_spatio_temporal(text: str, think: Span, answer: Span, wf: bool | None, truth: Truth, run: Run) -> Scored:
    claims = [] if think is None else parse_claims(text, think[0], think[1])
    if wf is None:
        wf = form_by_counts(text, think, answer)
    if not wf:
        fmt = 0.0
    else:
        fmt = 0.5
        for claim in claims:
            if claim[2] is not None and None not in claim_boxes(claim):
                fmt = 1.0
                break
    acc = _accuracy(text, answer, truth)
    prox, spatial = _proximity_and_spatial(claims, text, think, truth, run)
    w = run.w
    if run.plain:
        return ({"format": fmt, "answer_accuracy": acc, "spatial_gated": spatial},
                0 + w.format * fmt + w.answer_accuracy * acc + w.spatial_gated * spatial)
    return ({"format": fmt, "answer_accuracy": acc, "temporal_proximity": prox, "spatial_gated": spatial},
            0 + w.format * fmt + w.answer_accuracy * acc + w.temporal_proximity * prox + w.spatial_gated * spatial)


def score_temporal(text: str, think: Span, answer: Span, wf: bool | None, truth: Truth, run: Run) -> Scored:
    span = truth.span
    pred = _predicted_span(text, answer)
    if pred is None or span is None:
        tiou = 0.0
    else:
        v = interval_iou(pred, span)
        tiou = 0.0 if not v > 0.0 else (1.0 if v > 1.0 else v)
    if span is None or think is None:
        segment = 0.0
    else:
        times = times_in(text, think)
        if not times:
            segment = 0.0
        else:
            s, e = span
            inside = 0
            for t in times:
                if t is not None and s <= t <= e:
                    inside += 1
            segment = inside / len(times)
    if wf is None:
        wf = form_by_counts(text, think, answer)
    fmt = 1.0 if wf else 0.0
    w = run.w
    if truth.options:
        acc = _accuracy(text, answer, truth)
        return ({"format": fmt, "answer_accuracy": acc, "answer_tiou": tiou, "think_temporal_segment": segment},
                0 + w.format * fmt + w.answer_accuracy * acc + w.answer_tiou * tiou + w.think_temporal_segment * segment)
    return ({"format": fmt, "answer_tiou": tiou, "think_temporal_segment": segment},
            0 + w.format * fmt + w.answer_tiou * tiou + w.think_temporal_segment * segment)


def score_spatial(text: str, think: Span, answer: Span, wf: bool | None, truth: Truth, run: Run) -> Scored:
    truth.all_boxes()
    viou = 0.0
    if answer is not None:
        found = _BOX_TAG.findall(text, answer[0], answer[1])
        gts = truth.image_boxes() if found else None
        if gts:
            # `components.answer_viou`: one-to-one matching of every answer box (malformed: None)
            w, h = truth.wh
            pred = [None if b is None else clamp_box([b[0] / w, b[1] / h, b[2] / w, b[3] / h])
                    for b in map(parse_box, found)]
            v = _match(pred, gts)
            viou = 0.0 if not v > 0.0 else (1.0 if v > 1.0 else v)
    if wf is None:
        wf = form_by_counts(text, think, answer)
    fmt = 1.0 if wf else 0.0
    w = run.w
    return {"format": fmt, "answer_viou": viou}, 0 + w.format * fmt + w.answer_viou * viou


def score_general(text: str, think: Span, answer: Span, wf: bool | None, truth: Truth, run: Run) -> Scored:
    if wf is None:
        wf = form_by_counts(text, think, answer)
    fmt = 1.0 if wf else 0.0
    acc = _accuracy(text, answer, truth)
    return {"format": fmt, "answer_accuracy": acc}, 0 + run.w.format * fmt + run.w.answer_accuracy * acc


BY_TASK = {"spatio_temporal": score_spatio_temporal, "temporal": score_temporal, "spatial": score_spatial,
           "general": score_general}


def components(sample: ScoringSample, truth: Truth, run: Run) -> dict[str, float]:
    """Every applicable component of `sample`, whose ground truth is `truth`."""
    text = sample.completion
    return BY_TASK[truth.task](text, *blocks(text), truth, run)[0]
