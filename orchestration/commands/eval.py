"""``stgrl eval``: evaluation subcommands.

Each subcommand is a ``(name, help, configure, run)`` entry in :data:`SUBCOMMANDS`; adding one (e.g.
``stgrl eval run``) means writing its two functions and appending a line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

NAME = "eval"
HELP = "evaluate predictions (V-STAR metrics)"
DESCRIPTION = """\
Evaluate model predictions.

  stgrl eval vstar --annotations eval_vstar.json --predictions preds.json -o metrics.json
  stgrl eval vstar --merged reference_results.json     # the reference evaluator's merged list

The predictions format is described in docs/evaluation.md.
"""

log = logging.getLogger(__name__)


class Subcommand(NamedTuple):
    """One ``stgrl eval <name>`` entry."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _configure_vstar(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--annotations", type=Path, help="V-STAR annotation list (JSON or JSONL)")
    src.add_argument("--merged", type=Path, help="the reference evaluator's merged JSON list")
    p.add_argument("--predictions", type=Path, help="predictions (JSON list, {id: answers} map, or JSONL)")
    p.add_argument("-o", "--out", type=Path, help="write the full report (metrics + per item) as JSON")
    p.add_argument("--judge", default="deterministic", help="answer judge (deterministic | exact)")
    p.add_argument("--spatial-match", choices=("nearest", "exact"), default="nearest",
                   help="per GT frame, use the prediction at the nearest time (default) or only at "
                        "exactly its timestamp (the reference evaluator's rule)")


def _run_vstar(args: argparse.Namespace) -> int:
    import msgspec
    from rich.console import Console

    from stgrl.orchestration.evaluation import vstar
    from stgrl.orchestration.evaluation.judge import make_judge

    if args.merged is not None:
        if args.predictions is not None:
            log.error("--merged already holds the predictions; drop --predictions")
            return 2
        raws = vstar.load_json_or_jsonl(args.merged)
        if not isinstance(raws, list):
            log.error("%s: expected a JSON list", args.merged)
            return 2
        items, preds = vstar.split_merged(raws)
    else:
        if args.predictions is None:
            log.error("--annotations needs --predictions")
            return 2
        items = vstar.load_annotations(args.annotations)
        preds = vstar.load_predictions(args.predictions)
    try:
        judge = make_judge(args.judge)
    except ValueError as e:
        log.error("%s", e)
        return 2
    report = vstar.evaluate(items, preds, judge=judge, spatial_match=args.spatial_match)
    console = Console()
    for table in vstar.render_tables(report):
        console.print(table)
    if report.missing_ids:
        console.print(f"missing predictions ({len(report.missing_ids)}): {', '.join(report.missing_ids[:20])}"
                      + (" …" if len(report.missing_ids) > 20 else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
        log.info("wrote %s", args.out)
    return 0


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("vstar", "V-STAR metrics: Acc, tIoU/vIoU per chain, AP, R1, mAM, mLGM",
               _configure_vstar, _run_vstar),
]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    for sc in SUBCOMMANDS:
        p = sub.add_parser(sc.name, help=sc.help, description=sc.help)
        sc.configure(p)
        p.set_defaults(_eval_run=sc.run)


def run(args: argparse.Namespace) -> int:
    return int(args._eval_run(args))
