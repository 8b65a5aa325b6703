"""Import the public Open-o3 Video STGR annotations into our record format (docs/design.md §2.1).

STGR items carry `task`, `question`, `answer`, `video_path`/`image_path`, `key_frames`
[{idx, time, path}], `key_items` {str(idx): {object: [[x1,y1,x2,y2], …]}} (normalized),
`reasoning_process` and, for visual QA, `image_size` [W, H]. Task names map as:

| STGR | ours |
|---|---|
| temporal-spatial free-form QA | spatio_temporal (free-form answer; reasoning boxes normalized) |
| General video QA MCQ / Free-form | general |
| temporal QA | temporal, answer "[s, e]" → span |
| temporal QA (MCQ) | temporal with options, answer "X\\n[s, e]" |
| visual QA | spatial: boxes in original image pixels, rescaled to the processor's resized size |

Key frames are spliced into the sampled frames at their true times, as the reference does with its
key-frame images: a video record lists its key-frame times in `extra_frame_times`, and the video
sampler always shows the native frame nearest each of them (labelled with that frame's true time).
Without them the frame whose boxes are the ground truth may never be shown, while temporal gating and
proximity reward citing its time. The key-frame image files (`path`) themselves are not needed: the
frames are decoded from the video.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import msgspec

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.records import KeyFrame, Record, decode_record, encode_record
from stgrl.rollout.prompts import scale_boxes
from stgrl.rollout.video import resized_size

log = logging.getLogger(__name__)

TASK_MAP: dict[str, str] = {
    "temporal-spatial free-form QA": "spatio_temporal",
    "General video QA MCQ": "general",
    "General video QA Free-form": "general",
    "temporal QA": "temporal",
    "temporal QA (MCQ)": "temporal",
    "visual QA": "spatial",
}

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[\.\):]\s+(.+?)\s*$")
_SPAN = re.compile(r"\[\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\]")
_BOX = re.compile(r"<box>\s*\[([^\[\]<>]{0,200})\]\s*</box>")
_OBJ = re.compile(r"<obj>(.{1,200}?)</obj>")


class ImportReport(msgspec.Struct, kw_only=True):
    """Counts of an import: converted per our task name, skipped per reason (with messages)."""

    converted: dict[str, int] = msgspec.field(default_factory=dict)
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    messages: list[str] = msgspec.field(default_factory=list)

    def skip(self, n: int, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.messages.append(f"item {n}: {reason}: {message}")
        log.warning("STGR item %d skipped (%s): %s", n, reason, message)


def split_options(question: str) -> tuple[str, list[str]]:
    """Question text without its option lines, and the option lines (`A. text`)."""
    keep, opts = [], []
    for line in question.splitlines():
        m = _OPTION_LINE.match(line)
        if m:
            opts.append(f"{m.group(1)}. {m.group(2)}")
        else:
            keep.append(line)
    if len(opts) < 2:  # one "A. " line is prose, not a choice list
        return question.strip(), []
    return "\n".join(keep).strip(), opts


def parse_span(text: str) -> list[float]:
    m = _SPAN.search(text)
    if not m:
        raise ValueError(f"no [s, e] span in {text!r}")
    s, e = float(m.group(1)), float(m.group(2))
    return [round(s, 3), round(e, 3)]


def rescale_boxes(text: str, old: tuple[float, float], new: tuple[int, int]) -> str:
    """Boxes in `old` (W, H) pixels → `new` (W, H) pixels, in every `<box>[..]</box>`."""
    return scale_boxes(text, new[0] / old[0], new[1] / old[1])


def _clamp_box(b: list[float]) -> list[float]:
    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in b)
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _relocate(p: str | None, root: str | None, out_dir: Path) -> str | None:
    if p is None or root is None:
        return p
    return os.path.relpath(Path(root) / p, out_dir)


def key_frame_times(key_frames: list[KeyFrame]) -> list[float]:
    """The distinct key-frame times, in order: the frames the video sampler must always show."""
    return sorted({kf.time for kf in key_frames})


def convert_item(
    item: dict[str, Any],
    n: int,
    data_cfg: DataConfig,
    out_dir: Path,
    video_root: str | None = None,
    image_root: str | None = None,
) -> Record:
    """One STGR item → one `Record` (raises ValueError/KeyError/ValidationError on bad input)."""
    stgr_task = item["task"]
    if stgr_task not in TASK_MAP:
        raise KeyError(f"unknown task {stgr_task!r} (known: {sorted(TASK_MAP)})")
    task = TASK_MAP[stgr_task]
    question, options = split_options(str(item["question"]))
    if isinstance(item.get("options"), list) and item["options"]:
        options = [str(o) for o in item["options"]]
    answer = str(item["answer"]).strip()
    reasoning = str(item.get("reasoning_process") or "")
    key_frames = [KeyFrame(idx=int(k["idx"]), time=float(k["time"])) for k in item.get("key_frames") or []]
    key_items = {
        str(idx): {str(name): [_clamp_box(b) for b in boxes] for name, boxes in objs.items()}
        for idx, objs in (item.get("key_items") or {}).items()
    }
    span = None
    box_space = "pixels"
    if task == "temporal":
        span = parse_span(answer)
        if stgr_task == "temporal QA (MCQ)":
            letter = answer.split("\n", 1)[0].strip().strip("().[]")
            answer = f"{letter}\n[{span[0]}, {span[1]}]"
        else:
            answer = f"[{span[0]}, {span[1]}]"
    elif task == "spatio_temporal":
        box_space = "normalized"  # STGR writes these reasoning boxes as [0, 1] fractions
    elif task == "spatial":
        w, h = (float(v) for v in item["image_size"])
        new = resized_size(int(w), int(h), data_cfg)
        boxes = [[float(x) for x in m.group(1).split(",")] for m in _BOX.finditer(answer)]
        if not boxes:
            raise ValueError(f"visual QA answer has no <box>: {answer[:120]!r}")
        if not key_items:
            names = _OBJ.findall(answer) or ["object"]
            key_items = {"0": {names[0].strip(): [_clamp_box([b[0] / w, b[1] / h, b[2] / w, b[3] / h])
                                                  for b in boxes]}}
            key_frames = [KeyFrame(idx=0, time=0.0)]
        answer = rescale_boxes(answer, (w, h), new)
        reasoning = rescale_boxes(reasoning, (w, h), new)
    rec = Record(
        id=str(item.get("id") or f"stgr-{n:06d}"),
        task=task,  # type: ignore[arg-type]
        question=question,
        answer=answer,
        options=options,
        video_path=_relocate(item.get("video_path"), video_root, out_dir),
        image_path=_relocate(item.get("image_path"), image_root, out_dir) if task == "spatial" else None,
        key_frames=key_frames,
        key_items=key_items,
        span=span,
        reasoning=reasoning,
        box_space=box_space,  # type: ignore[arg-type]
        source=str(item.get("source") or "stgr"),
        extra_frame_times=key_frame_times(key_frames) if task != "spatial" else [],
    )
    return decode_record(encode_record(rec))  # run every validation rule of the reader


def load_items(path: Path) -> list[dict[str, Any]]:
    """A JSON list, or JSON lines."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def import_stgr(
    in_path: str | Path,
    out_path: str | Path,
    data_cfg: DataConfig | None = None,
    video_root: str | None = None,
    image_root: str | None = None,
) -> ImportReport:
    """Convert an STGR annotation file to our JSONL; bad items are reported, counted and skipped."""
    data_cfg = data_cfg or DataConfig()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = ImportReport()
    lines: list[bytes] = []
    for n, item in enumerate(load_items(Path(in_path))):
        try:
            rec = convert_item(item, n, data_cfg, out_path.parent, video_root, image_root)
        except KeyError as e:
            report.skip(n, "unknown_task" if "unknown task" in str(e) else "missing_field", str(e))
            continue
        except (ValueError, TypeError, msgspec.ValidationError) as e:
            report.skip(n, "invalid", str(e))
            continue
        report.converted[rec.task] = report.converted.get(rec.task, 0) + 1
        lines.append(encode_record(rec))
    out_path.write_bytes(b"".join(x + b"\n" for x in lines))
    log.info("imported %d STGR items into %s (skipped %s)", len(lines), out_path, report.skipped)
    outside = [r for r in (video_root, image_root)
               if r is not None and not Path(r).resolve().is_relative_to(out_path.parent.resolve())]
    if outside and lines:
        log.warning("media roots %s lie outside %s: train on this file with data.allow_media_outside_root: "
                    "true (media paths must otherwise stay inside the dataset folder)", outside, out_path.parent)
    return report
