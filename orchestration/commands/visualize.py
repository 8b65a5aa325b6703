"""``stgrl visualize``: draw a model's claimed boxes and times over the video next to the truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "visualize"
HELP = "draw claimed evidence over the frames (PNG grid, GIF) or browse a run (HTML)"
DESCRIPTION = """\
Draw the model's evidence next to the ground truth: each shown frame with its true time, ground-truth
boxes in green, claimed boxes in orange (IoU >= 0.5 with the same object's truth) or red, on the frame
nearest the claimed time.

One sample (PNG grid + animated GIF in --out):
  stgrl visualize --record data/shapes/eval.jsonl --index 3 --completion "<think>...</think><answer>...</answer>" --out viz/
  stgrl visualize --record data/shapes/eval.jsonl --index 3 --predictions run/eval/predictions.jsonl --out viz/

A whole run as one static page (images in <page>_img/ next to it):
  stgrl visualize --predictions run/eval/predictions.jsonl --html run/eval/evidence.html

The predictions format is described in docs/evaluation.md.
"""

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", type=Path, help="dataset JSONL (single-sample mode, with --index or --id)")
    parser.add_argument("--index", type=int, help="0-based record number in --record")
    parser.add_argument("--id", help="record id in --record (instead of --index)")
    parser.add_argument("--completion", help="model text to draw (single-sample mode)")
    parser.add_argument("--predictions", type=Path, help="predictions JSONL written by the evaluation")
    parser.add_argument("--records", type=Path, help="dataset JSONL to find records the predictions lack")
    parser.add_argument("--dataset-dir", type=Path, help="folder the records' video paths are relative to "
                        "(default: the dataset file's folder)")
    parser.add_argument("--frame-size", help="WxH the completion's pixel boxes refer to (default: the "
                        "prediction's frame_size, else the video's own size)")
    parser.add_argument("--out", type=Path, help="output folder for <id>.png and <id>.gif")
    parser.add_argument("--html", type=Path, help="write one HTML page for every sample in --predictions")
    parser.add_argument("--limit", type=int, help="at most this many samples on the HTML page")
    parser.add_argument("--no-gif", action="store_true", help="skip the animated GIF")


def _parse_size(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    w, _, h = text.lower().partition("x")
    return (float(w), float(h))


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.visualize import draw
    from stgrl.orchestration.visualize.formats import read_predictions, read_records
    from stgrl.orchestration.visualize.html import media_path, write_html

    if args.html is not None:
        if args.predictions is None:
            log.error("--html needs --predictions")
            return 2
        write_html(args.predictions, args.html, records=args.records or args.record,
                   dataset_dir=args.dataset_dir, limit=args.limit)
        return 0
    if args.record is None or args.out is None or (args.index is None and args.id is None):
        log.error("single-sample mode needs --record, --index (or --id) and --out; or use --predictions --html")
        return 2
    records = read_records(args.record)
    if args.id is not None:
        matches = [r for r in records if str(r.get("id")) == args.id]
        if not matches:
            log.error("no record with id %s in %s", args.id, args.record)
            return 2
        record = matches[0]
    elif not 0 <= args.index < len(records):
        log.error("--index %d out of range: %s has %d records", args.index, args.record, len(records))
        return 2
    else:
        record = records[args.index]
    completion, frame_times, model_size, scores = args.completion or "", None, _parse_size(args.frame_size), {}
    dataset_dir = args.dataset_dir or args.record.parent
    if args.predictions is not None and not args.completion:
        line = next((ln for _, ln in read_predictions(args.predictions) if ln.id == str(record.get("id"))), None)
        if line is None:
            log.error("no prediction for id %s in %s", record.get("id"), args.predictions)
            return 2
        completion, frame_times, scores = line.completion, line.frame_times or None, line.scores
        model_size = model_size or (tuple(line.frame_size) if line.frame_size else None)
        if line.dataset_dir and args.dataset_dir is None:
            dataset_dir = Path(line.dataset_dir)
    path = media_path(record, dataset_dir)
    if path is None or not path.exists():
        log.error("record %s: media not found (%s)", record.get("id"), path)
        return 2
    frames = draw.load_frames(path, frame_times)
    view = draw.SampleView(record, completion, frames, model_size, scores)
    png, gif, _ = draw.save_sample(view, args.out, gif=not args.no_gif)
    log.info("wrote %s%s", png, f" and {gif}" if gif else "")
    return 0
