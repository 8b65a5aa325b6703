"""A picture to check the data by eye: decoded frames (the real decode path) of a few samples
with their ground-truth boxes drawn at the key frames.

    python -m stgrl.rollout.data.contact_sheet data/shapes-easy data/shapes-medium --out docs/contact_sheet.png
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stgrl.rollout.config import DataConfig
from stgrl.rollout.data.reader import read_records
from stgrl.rollout.data.records import Record
from stgrl.rollout.video import VideoCache, record_media

log = logging.getLogger(__name__)

BOX_COLOUR = (255, 255, 255)
PAD = 4
MAX_FRAMES = 6
CAPTION_W = 300


def _row(record: Record, dataset_dir: Path, cache: VideoCache, data_cfg: DataConfig) -> Image.Image:
    media = record_media(record, dataset_dir, data_cfg, cache)
    key_at = {round(k.time, 1): str(k.idx) for k in record.key_frames}
    tiles = []
    shown = list(zip(media.frames, media.times))
    # Key frames first (they carry the boxes), then the earliest others, shown in time order.
    order = sorted(range(len(shown)), key=lambda k: (round(shown[k][1], 1) not in key_at, k))
    for frame, t in [shown[k] for k in sorted(order[:MAX_FRAMES])]:
        im = Image.fromarray(np.asarray(frame))
        draw = ImageDraw.Draw(im)
        w, h = im.size
        key = key_at.get(round(t, 1))
        for name, boxes in (record.key_items.get(key, {}) if key is not None else {}).items():
            for b in boxes:
                draw.rectangle((b[0] * w, b[1] * h, b[2] * w - 1, b[3] * h - 1), outline=BOX_COLOUR, width=1)
                draw.text((b[0] * w + 1, max(0, b[1] * h - 10)), name, fill=BOX_COLOUR)
        draw.text((2, h - 11), f"{t:.1f}s" + (" key" if key is not None else ""), fill=(200, 200, 200))
        tiles.append(im)
    fh = max(t.size[1] for t in tiles)
    caption = f"[{record.task}] {record.question} {' '.join(record.options)} -> {record.answer}"
    lines = textwrap.wrap(caption, 48)[:6]
    row_h = max(fh, 12 * len(lines)) + 2 * PAD
    row = Image.new("RGB", (sum(t.size[0] + PAD for t in tiles) + PAD + CAPTION_W, row_h), (25, 25, 25))
    x = PAD
    for t in tiles:
        row.paste(t, (x, PAD))
        x += t.size[0] + PAD
    d = ImageDraw.Draw(row)
    for k, line in enumerate(lines):
        d.text((x + 2, PAD + 12 * k), line, fill=(230, 230, 230))
    return row


def make_contact_sheet(
    dataset_dirs: list[Path], out: Path, per_dir: int = 4, split: str = "eval", data_cfg: DataConfig | None = None
) -> Path:
    """One row per sample (the first `per_dir` records of each dataset's `split`, one per task)."""
    data_cfg = data_cfg or DataConfig()
    cache = VideoCache()
    rows = []
    for d in dataset_dirs:
        records, _ = read_records(d / f"{split}.jsonl")
        picked: list[Record] = []
        for task in ("spatio_temporal", "temporal", "spatial", "general"):
            picked += [r for r in records if r.task == task][:1]
        for r in picked[:per_dir]:
            rows.append(_row(r, d, cache, data_cfg))
    width = max(r.size[0] for r in rows)
    sheet = Image.new("RGB", (width, sum(r.size[1] for r in rows)), (25, 25, 25))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.size[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)
    log.info("wrote %s (%dx%d, %d rows)", out, sheet.size[0], sheet.size[1], len(rows))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+", type=Path, help="dataset folders (holding eval.jsonl)")
    p.add_argument("--out", type=Path, default=Path("docs/contact_sheet.png"))
    p.add_argument("--per-dataset", type=int, default=4)
    p.add_argument("--split", default="eval")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_contact_sheet(args.datasets, args.out, args.per_dataset, args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
