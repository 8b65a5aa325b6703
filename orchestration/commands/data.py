"""`stgrl data …`: make and import datasets (synthetic shapes, STGR import, checks, contact sheet)."""

from __future__ import annotations

import argparse

NAME = "data"
HELP = "generate the synthetic shapes dataset, import STGR annotations, check a dataset"
DESCRIPTION = """\
Datasets in the record format of docs/design.md §2.1 (JSON lines; media paths relative to the file).

  stgrl data synth --out data/shapes --train 2000 --eval 200 --seed 0 --difficulty easy
      moving coloured shapes as real mp4 files, train.jsonl + held-out eval.jsonl (its own seed
      stream) for all four tasks, with SFT reasoning, and eval_vstar.json (V-STAR format).
      Frame sampling (data.fps, data.min_frames, data.max_frames) comes from --config, so key-frame
      times are times of frames the model is shown.
  stgrl data import-stgr STGR.json --out data/stgr/train.jsonl [--video-root DIR] [--image-root DIR]
      convert the public Open-o3 Video STGR annotations (task names mapped, visual QA boxes rescaled
      to the processor's resized size). Media roots outside the output folder need
      data.allow_media_outside_root: true to train on (and `data check --allow-media-outside-root`).
  stgrl data check data/shapes/train.jsonl [--allow-media-outside-root]
      validate every line and open every video; print what would be skipped and why (media paths
      must stay inside the file's folder unless allowed).
  stgrl data contact-sheet data/shapes --out docs/contact_sheet.png
      decoded frames of a few samples with their ground-truth boxes drawn.
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config whose `data` section sets frame sampling")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.fps=2")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("synth", help="generate the synthetic shapes dataset")
    p.add_argument("--out", default=None, help="output folder (default: folder of data.train)")
    p.add_argument("--train", type=int, default=None, help="train samples (default: data.synth_train)")
    p.add_argument("--eval", type=int, default=None, help="eval samples (default: data.synth_eval)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: data.synth_seed)")
    p.add_argument("--difficulty", choices=("easy", "medium", "hard"), default=None,
                   help="difficulty ladder rung (default: data.synth_difficulty)")
    p.add_argument("--workers", type=int, default=1, help="generator processes (same output for any number)")
    _config_args(p)
    p = sub.add_parser("import-stgr", help="convert Open-o3 Video STGR annotations to our JSONL")
    p.add_argument("input", help="STGR annotation file (JSON list or JSON lines)")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--video-root", default=None, help="folder the STGR video paths are relative to")
    p.add_argument("--image-root", default=None, help="folder the STGR image paths are relative to")
    _config_args(p)
    p = sub.add_parser("check", help="validate a dataset file and its media")
    p.add_argument("path", help="JSONL dataset file")
    p.add_argument("--allow-media-outside-root", action="store_true",
                   help="accept media paths leading outside the file's folder (data.allow_media_outside_root)")
    p.add_argument("--no-media", action="store_true", help="skip opening the media files")
    p = sub.add_parser("contact-sheet", help="draw decoded frames with ground-truth boxes")
    p.add_argument("datasets", nargs="+", help="dataset folders")
    p.add_argument("--out", default="docs/contact_sheet.png")
    p.add_argument("--per-dataset", type=int, default=4)
    p.add_argument("--split", default="eval")


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    log = logging.getLogger(__name__)
    if args.data_command == "check":
        from stgrl.rollout.data.reader import read_records

        _, report = read_records(args.path, check_media_files=not args.no_media,
                                 allow_media_outside_root=args.allow_media_outside_root)
        log.info("%s: %d read, %d kept, skipped %s", args.path, report.read, report.kept, report.counts or "none")
        return 0 if report.kept else 1
    if args.data_command == "contact-sheet":
        from stgrl.rollout.data.contact_sheet import make_contact_sheet

        make_contact_sheet([Path(d) for d in args.datasets], Path(args.out), args.per_dataset, args.split)
        return 0

    from stgrl.orchestration.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.data_command == "synth":
        from stgrl.rollout.data.synth import generate_dataset

        d = cfg.data
        out = Path(args.out) if args.out else Path(d.train).parent
        counts = generate_dataset(
            out,
            train=args.train if args.train is not None else d.synth_train,
            eval=args.eval if args.eval is not None else d.synth_eval,
            seed=args.seed if args.seed is not None else d.synth_seed,
            difficulty=args.difficulty or d.synth_difficulty,
            data_cfg=d,
            workers=args.workers,
        )
        log.info("dataset in %s: %s", out, counts)
        return 0
    from stgrl.rollout.data.stgr import import_stgr

    report = import_stgr(args.input, args.out, cfg.data, args.video_root, args.image_root)
    log.info("converted %s, skipped %s", report.converted, report.skipped or "none")
    return 0 if report.converted else 1
