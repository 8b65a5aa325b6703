"""Grounding diagnostics (issue 13): is the model's evidence better than guessing?

A model can score reward by copying names and times from the question while its boxes sit wherever
boxes usually are. These pure functions say how claimed boxes and times compare with the ground truth
*and* with baselines that never look at the video:

- **model**: mean IoU and centre error (normalized coordinates, so 0.1 = a tenth of the frame) of each
  claimed box against the ground-truth boxes of the *same object* at the key frame nearest the
  claimed time;
- **mean box**: the same claims with every box replaced by the dataset's mean ground-truth box;
- **random box**: the same claims with every box replaced by a seeded uniform random box;
- **time**: |claimed time − nearest key-frame time of that object|, against always claiming the middle
  of the video;
- **swapped-video test** (:func:`swapped_video_test`): paired scores of the model on its own video vs
  on another sample's video; a model that uses the pixels must do worse on the wrong video.

Claims are plain ``(name, boxes_in_pixels, time)`` tuples so any parser can feed them;
:func:`claims_from_text` uses the reward parser (``stgrl.reward_service.parser``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from stgrl.orchestration.evaluation.geometry import Box, as_box, box_iou, center_distance

ClaimTuple = tuple[str, Sequence[Sequence[float] | None], float | None]
"""``(object name, boxes [x1, y1, x2, y2] in pixels of the model's frame, time in seconds)``."""


class GroundTruth(msgspec.Struct, frozen=True):
    """One sample's spatial ground truth (docs/design.md §2.1) plus the frame size the claims' pixels refer to.

    ``key_items`` boxes are normalized; ``key_times`` maps ``str(idx)`` of each key frame to its time.
    """

    key_times: dict[str, float]
    key_items: dict[str, dict[str, list[list[float]]]]
    frame_size: tuple[float, float]
    duration: float | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], frame_size: Sequence[float],
                    duration: float | None = None) -> GroundTruth:
        """From a training/eval record (``key_frames``, ``key_items``; ``duration`` if it has one)."""
        times = {str(kf["idx"]): float(kf["time"]) for kf in record.get("key_frames") or []}
        dur = duration if duration is not None else record.get("duration")
        return cls(key_times=times, key_items=dict(record.get("key_items") or {}),
                   frame_size=(float(frame_size[0]), float(frame_size[1])),
                   duration=float(dur) if dur is not None else None)


class BoxStats(msgspec.Struct):
    """Mean IoU / centre error over scored boxes; None when nothing could be scored."""

    n_boxes: int
    iou: float | None
    center_error: float | None
    iou_ge_0_5: float | None


class GroundingReport(msgspec.Struct):
    """Model vs baselines over a set of samples."""

    n_samples: int
    n_claims: int
    n_samples_without_claims: int
    n_unknown_objects: int
    """Claims whose object name appears in no key frame of the sample (their boxes score IoU 0)."""
    n_invalid_boxes: int
    n_untimed_claims: int
    model: BoxStats
    mean_box: BoxStats
    random_box: BoxStats
    time_error: float | None
    middle_time_error: float | None
    mean_gt_box: list[float]


class SampleGrounding(msgspec.Struct):
    """Per-box IoUs and centre errors and per-claim time errors of one sample."""

    ious: list[float]
    center_errors: list[float]
    time_errors: list[float]
    n_unknown_objects: int = 0
    n_invalid_boxes: int = 0
    n_untimed_claims: int = 0

    @property
    def mean_iou(self) -> float:
        """Mean box IoU (0 with no claimed boxes: no evidence is no credit)."""
        return float(np.mean(self.ious)) if self.ious else 0.0


class PairedDiff(msgspec.Struct):
    """Swapped-video test: own-video score minus swapped-video score, with a bootstrap CI."""

    n: int
    mean_own: float
    mean_swapped: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_not_better: float
    """Fraction of bootstrap resamples whose mean difference is ≤ 0 (one-sided)."""


def _normalize_name(name: str) -> str:
    from stgrl.reward_service.text import normalize_object_name

    return normalize_object_name(name)


def claims_from_text(text: str) -> list[ClaimTuple]:
    """Claims of a completion via the reward parser, as tuples."""
    from stgrl.reward_service.parser import parse_completion

    return [(c.name, list(c.boxes), c.time) for c in parse_completion(text).claims]


def object_key_frames(gt: GroundTruth, name: str) -> list[tuple[float, list[Box]]]:
    """``[(time, boxes)]`` of the key frames in which the (normalized) object name has boxes."""
    want = _normalize_name(name)
    out = []
    for idx, objects in gt.key_items.items():
        if idx not in gt.key_times:
            continue
        boxes = [b for obj, bs in objects.items() if _normalize_name(obj) == want
                 for b in (as_box(x) for x in bs) if b is not None]
        if boxes:
            out.append((gt.key_times[idx], boxes))
    return sorted(out, key=lambda tb: tb[0])


def to_normalized(box: Sequence[float] | None, frame_size: Sequence[float]) -> Box | None:
    """A pixel box of a ``(W, H)`` frame in [0, 1] coordinates (None if invalid)."""
    b = as_box(box)
    if b is None or frame_size[0] <= 0 or frame_size[1] <= 0:
        return None
    w, h = frame_size
    return (b[0] / w, b[1] / h, b[2] / w, b[3] / h)


def score_sample(claims: Sequence[ClaimTuple], gt: GroundTruth,
                 replace_box: Any = None) -> SampleGrounding:
    """Score one sample's claims. ``replace_box(normalized_box) -> Box`` swaps every claimed box for a
    baseline's (used for the mean-box and random-box baselines; it sees only the claim's box)."""
    out = SampleGrounding(ious=[], center_errors=[], time_errors=[])
    for name, boxes, t in claims:
        frames = object_key_frames(gt, name)
        if not frames:
            out.n_unknown_objects += 1
            out.ious.extend(0.0 for _ in boxes)
            continue
        if t is None or not math.isfinite(t):
            out.n_untimed_claims += 1
            out.ious.extend(0.0 for _ in boxes)
            continue
        gt_t, gt_boxes = min(frames, key=lambda tb: abs(tb[0] - t))
        out.time_errors.append(abs(gt_t - t))
        for box in boxes:
            nb = to_normalized(box, gt.frame_size)
            if nb is None:
                out.n_invalid_boxes += 1
                out.ious.append(0.0)
                continue
            if replace_box is not None:
                nb = replace_box(nb)
            out.ious.append(max(box_iou(nb, g) for g in gt_boxes))
            out.center_errors.append(min(center_distance(nb, g) for g in gt_boxes))
    return out


def mean_gt_box(gts: Sequence[GroundTruth]) -> Box:
    """Coordinate-wise mean of every normalized ground-truth box in the set (the "always the usual
    place" predictor); the centred half-size box if there are none."""
    boxes = [b for gt in gts for objs in gt.key_items.values() for bs in objs.values()
             for b in (as_box(x) for x in bs) if b is not None]
    if not boxes:
        return (0.25, 0.25, 0.75, 0.75)
    m = np.mean(np.asarray(boxes, dtype=float), axis=0)
    return (float(m[0]), float(m[1]), float(m[2]), float(m[3]))


def random_box(rng: np.random.Generator) -> Box:
    """A uniform random box in the unit square: sorted uniform x pair and y pair."""
    x = np.sort(rng.uniform(0.0, 1.0, 2))
    y = np.sort(rng.uniform(0.0, 1.0, 2))
    return (float(x[0]), float(y[0]), float(x[1]), float(y[1]))


def middle_time_errors(claims: Sequence[ClaimTuple], gt: GroundTruth) -> list[float]:
    """Per timed claim of a known object: |duration/2 − nearest key-frame time of that object|."""
    if gt.duration is None:
        return []
    mid = gt.duration / 2.0
    errs = []
    for name, _boxes, t in claims:
        frames = object_key_frames(gt, name)
        if frames and t is not None and math.isfinite(t):
            errs.append(min(abs(ft - mid) for ft, _ in frames))
    return errs


def _stats(samples: Sequence[SampleGrounding]) -> BoxStats:
    ious = [i for s in samples for i in s.ious]
    ces = [c for s in samples for c in s.center_errors]
    return BoxStats(
        n_boxes=len(ious),
        iou=float(np.mean(ious)) if ious else None,
        center_error=float(np.mean(ces)) if ces else None,
        iou_ge_0_5=float(np.mean([i >= 0.5 for i in ious])) if ious else None,
    )


def diagnose(samples: Sequence[tuple[Sequence[ClaimTuple], GroundTruth]], seed: int = 0,
             mean_box: Box | None = None) -> GroundingReport:
    """Model vs mean-box, random-box and middle-of-video baselines over ``(claims, gt)`` samples.

    The baselines keep each claim's object and time and replace only its boxes (or its time), so the
    comparison isolates *where* (or *when*). ``mean_box`` defaults to the mean over these samples.
    """
    gts = [gt for _, gt in samples]
    mbox = mean_box if mean_box is not None else mean_gt_box(gts)
    rng = np.random.default_rng(seed)
    model = [score_sample(c, gt) for c, gt in samples]
    mean_b = [score_sample(c, gt, replace_box=lambda _b: mbox) for c, gt in samples]
    rand_b = [score_sample(c, gt, replace_box=lambda _b: random_box(rng)) for c, gt in samples]
    time_errs = [e for s in model for e in s.time_errors]
    mid_errs = [e for c, gt in samples for e in middle_time_errors(c, gt)]
    return GroundingReport(
        n_samples=len(samples),
        n_claims=sum(len(c) for c, _ in samples),
        n_samples_without_claims=sum(not c for c, _ in samples),
        n_unknown_objects=sum(s.n_unknown_objects for s in model),
        n_invalid_boxes=sum(s.n_invalid_boxes for s in model),
        n_untimed_claims=sum(s.n_untimed_claims for s in model),
        model=_stats(model),
        mean_box=_stats(mean_b),
        random_box=_stats(rand_b),
        time_error=float(np.mean(time_errs)) if time_errs else None,
        middle_time_error=float(np.mean(mid_errs)) if mid_errs else None,
        mean_gt_box=list(mbox),
    )


def swapped_video_test(own: Sequence[float], swapped: Sequence[float], n_boot: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> PairedDiff:
    """Paired bootstrap of ``mean(own − swapped)``.

    ``own[i]`` is sample i's score with its own video, ``swapped[i]`` the score of the same question
    and ground truth answered with another sample's video. A model that reads the pixels has a
    positive difference whose CI excludes 0; one that ignores them has a difference near 0.
    """
    a, b = np.asarray(own, dtype=float), np.asarray(swapped, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equally long, non-empty score lists (got {a.shape} and {b.shape})")
    d = a - b
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    return PairedDiff(
        n=int(d.size), mean_own=float(a.mean()), mean_swapped=float(b.mean()), mean_diff=float(d.mean()),
        ci_low=float(lo), ci_high=float(hi), confidence=confidence,
        p_not_better=float(np.mean(boots <= 0.0)),
    )


def samples_from_predictions(lines: Sequence[Any], records: Mapping[str, Mapping[str, Any]] | None = None
                             ) -> list[tuple[str, list[ClaimTuple], GroundTruth]]:
    """``(id, claims, ground truth)`` per predictions line (``visualize.formats.PredictionLine``).

    The record comes inline or from ``records`` by id; lines without a record or without
    ``frame_size`` (the claims' pixel space) are skipped with a warning. The video length for the
    middle-of-video baseline is the record's ``duration`` if it has one, else the shown frames' span
    plus one sampling step.
    """
    import logging

    log = logging.getLogger(__name__)
    out = []
    for line in lines:
        record = line.record or (records or {}).get(line.id)
        if record is None or not line.frame_size:
            log.warning("grounding: skipping %s (%s)", line.id, "no record" if record is None else "no frame_size")
            continue
        ft = list(line.frame_times)
        duration = record.get("duration")
        if duration is None and ft:
            duration = ft[-1] + ((ft[-1] - ft[-2]) if len(ft) > 1 else 0.0)
        gt = GroundTruth.from_record(record, line.frame_size, duration)
        out.append((line.id, claims_from_text(line.completion), gt))
    return out


def render_table(report: GroundingReport) -> Any:
    """A rich table: model vs baselines (IoU, IoU ≥ 0.5, centre error, time error)."""
    from rich.table import Table

    def f(v: float | None, pct: bool = False) -> str:
        return "-" if v is None else (f"{100 * v:.1f}" if pct else f"{v:.3f}")

    t = Table(title=f"grounding ({report.n_samples} samples, {report.n_claims} claims, "
                    f"{report.n_unknown_objects} unknown objects, {report.n_samples_without_claims} without claims)")
    for col in ("predictor", "boxes", "IoU %", "IoU≥.5 %", "centre err", "time err s"):
        t.add_column(col, justify="right" if col != "predictor" else "left")
    t.add_row("model", str(report.model.n_boxes), f(report.model.iou, True), f(report.model.iou_ge_0_5, True),
              f(report.model.center_error), f(report.time_error))
    for name, s in (("mean box", report.mean_box), ("random box", report.random_box)):
        t.add_row(name, str(s.n_boxes), f(s.iou, True), f(s.iou_ge_0_5, True), f(s.center_error), "")
    t.add_row("middle of video", "", "", "", "", f(report.middle_time_error))
    return t


def describe_swap(swap: PairedDiff) -> str:
    """One line for the swapped-video test."""
    verdict = "uses the video" if swap.ci_low > 0 else "NO evidence that it uses the video"
    return (f"swapped-video test (n={swap.n}): mean IoU own {100 * swap.mean_own:.1f}% vs swapped "
            f"{100 * swap.mean_swapped:.1f}%, difference {100 * swap.mean_diff:.1f} points, "
            f"{100 * swap.confidence:.0f}% CI [{100 * swap.ci_low:.1f}, {100 * swap.ci_high:.1f}] → {verdict}")
