"""Draw claimed evidence over decoded frames next to the ground truth.

Every shown frame carries its true time. Ground-truth boxes (green, with the object name) are drawn
on the shown frame nearest each key frame; each claim's boxes are drawn on the shown frame nearest
the *claimed* time, labelled with the claimed time, the IoU against the same object's ground truth at
the key frame nearest that time and the time error — orange when the box has IoU ≥ 0.5 and the time
is within 0.25 s of that key frame, red otherwise — so a wrong place or a wrong moment is visible at a
glance.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stgrl.orchestration.evaluation import grounding
from stgrl.orchestration.evaluation.geometry import answer_text, as_box, nearest_index

log = logging.getLogger(__name__)

GT_COLOR = (0, 220, 0)
CLAIM_GOOD_COLOR = (255, 150, 0)
CLAIM_BAD_COLOR = (235, 20, 20)
GOOD_IOU = 0.5
GOOD_DT = 0.25
"""A claim checks out when its box has IoU ≥ GOOD_IOU with the same object's truth at the nearest key
frame AND its time is within GOOD_DT s of that key frame (half the default 2 fps interval: the claim
points at the right frame). Stricter than the reward's 1 s gate on purpose — a right box at the wrong
moment is wrong evidence."""
MIN_CELL_WIDTH = 240
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Frames:
    """Decoded frames (H×W×3 uint8), their true times, and the native ``(W, H)``."""

    images: list[np.ndarray]
    times: list[float]
    size: tuple[int, int]


@dataclass
class ClaimMark:
    """One claim as drawn: boxes in shown-frame pixels plus its check against the ground truth."""

    name: str
    boxes: list[tuple[float, float, float, float]]
    time: float | None
    iou: float | None
    time_error: float | None


@dataclass
class FrameOverlay:
    """What is drawn on one shown frame."""

    gt: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)
    gt_times: list[float] = field(default_factory=list)
    claims: list[ClaimMark] = field(default_factory=list)


@dataclass
class GridLayout:
    """Where each frame landed in the grid PNG (so tests and tools can find a box's pixels)."""

    origins: list[tuple[int, int]]
    """Top-left pixel of each frame's image area (below its time header)."""
    scale: int


# ------------------------------------------------------------------------------------------ frames
def sample_indices(num_frames: int, native_fps: float, fps: float = 2.0, min_frames: int = 4,
                   max_frames: int = 16) -> list[int]:
    """Frame indices the rollout's sampler would show (docs/design.md §2.2): the one rule, reused."""
    from stgrl.rollout.video import sample_frame_indices

    return sample_frame_indices(num_frames, native_fps, fps, min_frames, max_frames)


def load_frames(path: str | Path, frame_times: Sequence[float] | None = None, fps: float = 2.0,
                min_frames: int = 4, max_frames: int = 16) -> Frames:
    """Decode the frames the model saw (``frame_times``) or a fresh sample at ``fps``.

    A still image (spatial task) is one frame at t = 0.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        img = np.asarray(Image.open(path).convert("RGB"))
        return Frames([img], [0.0], (img.shape[1], img.shape[0]))
    import decord

    vr = decord.VideoReader(str(path))
    n, native_fps = len(vr), float(vr.get_avg_fps())
    if frame_times:
        idx = [min(n - 1, max(0, round(t * native_fps))) for t in frame_times]
        times = [float(t) for t in frame_times]
    else:
        idx = sample_indices(n, native_fps, fps, min_frames, max_frames)
        times = [round(i / native_fps, 1) for i in idx]
    batch = vr.get_batch(idx).asnumpy()
    images = [np.ascontiguousarray(f) for f in batch]
    return Frames(images, times, (images[0].shape[1], images[0].shape[0]))


# ----------------------------------------------------------------------------------------- overlay
def plan_overlays(record: Mapping[str, Any], claims: Sequence[grounding.ClaimTuple], times: Sequence[float],
                  shown_size: tuple[int, int], model_size: tuple[float, float] | None = None) -> list[FrameOverlay]:
    """Assign ground-truth boxes and claims to shown frames (nearest in time) in shown-frame pixels.

    ``model_size`` is the ``(W, H)`` the model's pixel boxes refer to (default: the shown size).
    """
    sw, sh = shown_size
    mw, mh = model_size or shown_size
    overlays = [FrameOverlay() for _ in times]
    if not times:
        return overlays
    key_times = {str(kf["idx"]): float(kf["time"]) for kf in record.get("key_frames") or []}
    for idx, objects in (record.get("key_items") or {}).items():
        if idx not in key_times:
            continue
        ov = overlays[nearest_index(key_times[idx], times)]
        ov.gt_times.append(key_times[idx])
        for name, boxes in objects.items():
            for b in boxes:
                nb = as_box(b)
                if nb is not None:
                    ov.gt.append((name, (nb[0] * sw, nb[1] * sh, nb[2] * sw, nb[3] * sh)))
    gt = grounding.GroundTruth.from_record(record, (mw, mh))
    for claim in claims:
        name, boxes, t = claim
        check = grounding.score_sample([claim], gt)
        iou = check.mean_iou if boxes and check.n_unknown_objects == 0 and check.n_untimed_claims == 0 else None
        shown = [(b[0] * sw / mw, b[1] * sh / mh, b[2] * sw / mw, b[3] * sh / mh)
                 for b in (as_box(x) for x in boxes) if b is not None]
        at = nearest_index(t, times) if t is not None and math.isfinite(t) else 0
        overlays[at].claims.append(ClaimMark(name, shown, t, iou, check.time_errors[0] if check.time_errors else None))
    return overlays


# ------------------------------------------------------------------------------------------ drawing
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def claim_ok(iou: float | None, time_error: float | None) -> bool:
    """Right place (IoU ≥ GOOD_IOU) at the right moment (|Δt| ≤ GOOD_DT); see :data:`GOOD_DT`."""
    return iou is not None and time_error is not None and iou >= GOOD_IOU and time_error <= GOOD_DT + 1e-9


def claim_color(mark: ClaimMark) -> tuple[int, int, int]:
    """Orange for a claim that checks out (:func:`claim_ok`), red otherwise."""
    return CLAIM_GOOD_COLOR if claim_ok(mark.iou, mark.time_error) else CLAIM_BAD_COLOR


def claim_label(mark: ClaimMark) -> str:
    """``name @t s IoU x dt y s`` (``?`` where the ground truth has no such object). ASCII only: the
    font Pillow ships has no Δ or ≥ glyphs."""
    t = f"{mark.time:g}s" if mark.time is not None else "?s"
    iou = f"{mark.iou:.2f}" if mark.iou is not None else "?"
    dt = f" dt {mark.time_error:.1f}s" if mark.time_error is not None else ""
    return f"{mark.name} @{t} IoU {iou}{dt}"


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: tuple[int, int, int],
           font: Any, bounds: tuple[int, int]) -> None:
    x, y = xy
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(0, x), max(0, bounds[0] - w))
    y = min(max(0, y), max(0, bounds[1] - h))
    draw.rectangle((x, y, x + w, y + h), fill=(0, 0, 0))
    draw.text((x + 2 - left, y + 2 - top), text, fill=color, font=font)


def cell_scale(width: int) -> int:
    """Integer upscaling so small synthetic frames are readable (nearest-neighbour keeps pixels)."""
    return max(1, math.ceil(MIN_CELL_WIDTH / max(1, width)))


def draw_frame(image: np.ndarray, time: float, overlay: FrameOverlay, scale: int, font_size: int = 12) -> Image.Image:
    """One annotated frame: a time header, then the frame with GT and claim boxes."""
    font = _font(font_size)
    h, w = image.shape[:2]
    frame = Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST)
    header = font_size + 8
    cell = Image.new("RGB", (frame.width, frame.height + header), (20, 20, 20))
    cell.paste(frame, (0, header))
    draw = ImageDraw.Draw(cell)
    head = f"t = {time:g}s"
    if overlay.gt_times:
        head += "  key frame " + ", ".join(f"{t:g}s" for t in overlay.gt_times)
    draw.text((4, 3), head, fill=GT_COLOR if overlay.gt_times else (255, 255, 255), font=font)
    bounds = (cell.width, cell.height)
    for name, (x1, y1, x2, y2) in overlay.gt:
        box = (x1 * scale, header + y1 * scale, x2 * scale - 1, header + y2 * scale - 1)
        draw.rectangle(box, outline=GT_COLOR, width=2)
        _label(draw, (box[0], box[3] + 2), name, GT_COLOR, font, bounds)
    for mark in overlay.claims:
        color = claim_color(mark)
        for x1, y1, x2, y2 in mark.boxes:
            # inset by the GT line width so a perfect claim leaves the green box visible around it
            box = (x1 * scale + 2, header + y1 * scale + 2, x2 * scale - 3, header + y2 * scale - 3)
            if box[2] > box[0] and box[3] > box[1]:
                draw.rectangle(box, outline=color, width=2)
        if mark.boxes:
            x1, y1 = mark.boxes[0][0] * scale, header + mark.boxes[0][1] * scale
            _label(draw, (x1, y1 - font_size - 6), claim_label(mark), color, font, bounds)
        else:
            _label(draw, (2, header + 2), claim_label(mark) + " (no box)", color, font, bounds)
    return cell


def render_grid(cells: Sequence[Image.Image], title: Sequence[str], columns: int = 4,
                font_size: int = 13) -> tuple[Image.Image, list[tuple[int, int]]]:
    """Frames in a grid under a text title; returns the image and each cell's top-left pixel."""
    font = _font(font_size)
    pad = 6
    cols = max(1, min(columns, len(cells)))
    rows = math.ceil(len(cells) / cols) if cells else 0
    cw = max((c.width for c in cells), default=MIN_CELL_WIDTH)
    ch = max((c.height for c in cells), default=0)
    width = cols * cw + (cols + 1) * pad
    chars = max(20, int(width / (font_size * 0.6)))
    lines = [wrapped for line in title for wrapped in (textwrap.wrap(line, chars) or [""])]
    title_h = pad + len(lines) * (font_size + 4) + pad
    grid = Image.new("RGB", (width, title_h + rows * (ch + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (font_size + 4)), line, fill=(0, 0, 0), font=font)
    origins = []
    for i, cell in enumerate(cells):
        x = pad + (i % cols) * (cw + pad)
        y = title_h + (i // cols) * (ch + pad)
        grid.paste(cell, (x, y))
        origins.append((x, y))
    return grid, origins


@dataclass
class SampleView:
    """Everything needed to draw one sample."""

    record: Mapping[str, Any]
    completion: str
    frames: Frames
    model_size: tuple[float, float] | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def claims(self) -> list[grounding.ClaimTuple]:
        return grounding.claims_from_text(self.completion) if self.completion else []


def title_lines(view: SampleView) -> list[str]:
    """Header text of a sample's grid."""
    rec = view.record
    lines = [f"{rec.get('id', '?')}  [{rec.get('task', '')}]  Q: {rec.get('question', '')}",
             f"truth: {rec.get('answer', '')}" + (f"   span {rec['span']}" if rec.get("span") else "")]
    if view.completion:
        lines.append(f"model: {answer_text(view.completion)[:300]}")
    if view.scores:
        lines.append("scores: " + "  ".join(f"{k} {v:.2f}" for k, v in view.scores.items()))
    lines.append("green = ground truth (on the frame nearest its key frame); orange/red = claim on the frame "
                 f"nearest its claimed time (orange: IoU >= {GOOD_IOU} with the same object's truth and within "
                 f"{GOOD_DT}s of its key frame)")
    return lines


def render_sample(view: SampleView, columns: int = 4) -> tuple[Image.Image, list[Image.Image], GridLayout]:
    """The PNG grid, the GIF frames and the grid layout of one sample."""
    fr = view.frames
    overlays = plan_overlays(view.record, view.claims, fr.times, fr.size, view.model_size)
    scale = cell_scale(fr.size[0])
    cells = [draw_frame(img, t, ov, scale) for img, t, ov in zip(fr.images, fr.times, overlays)]
    grid, origins = render_grid(cells, title_lines(view), columns)
    header = cells[0].height - fr.size[1] * scale if cells else 0
    layout = GridLayout([(x, y + header) for x, y in origins], scale)
    return grid, cells, layout


def save_sample(view: SampleView, out_dir: str | Path, stem: str | None = None, gif: bool = True,
                columns: int = 4, gif_frame_ms: int = 600) -> tuple[Path, Path | None, GridLayout]:
    """Write ``<stem>.png`` (grid) and ``<stem>.gif`` (annotated frames in time order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or safe_stem(str(view.record.get("id", "sample")))
    grid, cells, layout = render_sample(view, columns)
    png = out / f"{stem}.png"
    grid.save(png, optimize=True)
    gif_path = None
    if gif and cells:
        gif_path = out / f"{stem}.gif"
        cells[0].save(gif_path, save_all=True, append_images=cells[1:], duration=gif_frame_ms, loop=0)
    return png, gif_path, layout


def safe_stem(text: str) -> str:
    """A file-name-safe version of a sample id."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")
    return keep[:120] or "sample"
