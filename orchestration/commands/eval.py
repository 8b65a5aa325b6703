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
HELP = "evaluate a checkpoint on held-out data, or score predictions (V-STAR, grounding diagnostics)"
DESCRIPTION = """\
Evaluate model predictions.

  stgrl eval run --config configs/demo.yaml --model runs/demo/rl/hf -o runs/demo/eval/rl
  stgrl eval vstar --annotations eval_vstar.json --predictions preds.json -o metrics.json
  stgrl eval vstar --merged reference_results.json     # the reference evaluator's merged list
  stgrl eval grounding --predictions run/eval/predictions.jsonl [--swapped run/eval/swapped.jsonl]

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
    p.add_argument("--spatial-match", choices=("exact", "nearest"), default="exact",
                   help="per GT frame, use only the prediction at exactly its timestamp (default: the "
                        "reference evaluator's rule, comparable with published numbers) or the one at the "
                        "nearest predicted time however far (NOT comparable: inflates vIoU and AP)")


def _run_vstar(args: argparse.Namespace) -> int:
    import msgspec
    from rich.console import Console

    from stgrl.orchestration.evaluation import vstar
    from stgrl.orchestration.evaluation.judge import make_judge

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score's tokenizer notice
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


def _configure_grounding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", type=Path, required=True, help="predictions JSONL (docs/evaluation.md)")
    p.add_argument("--records", type=Path, help="dataset JSONL for lines that carry no record")
    p.add_argument("--swapped", type=Path, help="predictions JSONL of the same ids answered with another "
                   "sample's video (record = the question's own record): runs the swapped-video test")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-box baseline and the bootstrap")
    p.add_argument("-o", "--out", type=Path, help="write the report as JSON")


def _run_grounding(args: argparse.Namespace) -> int:
    import msgspec
    from rich.console import Console

    from stgrl.orchestration.evaluation import grounding
    from stgrl.orchestration.visualize.formats import read_predictions, read_records

    records = {str(r.get("id")): r for r in read_records(args.records)} if args.records else None
    own = grounding.samples_from_predictions([ln for _, ln in read_predictions(args.predictions)], records)
    if not own:
        log.error("no usable predictions in %s", args.predictions)
        return 2
    report = grounding.diagnose([(c, gt) for _, c, gt in own], seed=args.seed)
    console = Console()
    console.print(grounding.render_table(report))
    swap = None
    if args.swapped is not None:
        other = {i: (c, gt) for i, c, gt in
                 grounding.samples_from_predictions([ln for _, ln in read_predictions(args.swapped)], records)}
        pairs = [(grounding.score_sample(c, gt).mean_iou, grounding.score_sample(*other[i]).mean_iou)
                 for i, c, gt in own if i in other]
        if not pairs:
            log.error("no id of %s is in %s", args.swapped, args.predictions)
            return 2
        swap = grounding.swapped_video_test([a for a, _ in pairs], [b for _, b in pairs], seed=args.seed)
        console.print(grounding.describe_swap(swap))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"report": report, "swapped_video": swap}
        args.out.write_bytes(msgspec.json.format(msgspec.json.encode(payload), indent=2))
        log.info("wrote %s", args.out)
    return 0


def _configure_run(p: argparse.ArgumentParser) -> None:
    from stgrl.orchestration.commands.config import add_config_arguments

    add_config_arguments(p)
    p.add_argument("--model", required=True, help="HF checkpoint to evaluate (e.g. runs/demo/rl/hf)")
    p.add_argument("--data", default=None, help="held-out JSONL (default: data.eval of the config)")
    p.add_argument("--vstar", default=None,
                   help="V-STAR annotations of the same split (default: eval_vstar.json beside --data, if any)")
    p.add_argument("--max-samples", type=int, default=64, help="held-out samples to evaluate (default 64)")
    p.add_argument("--no-swap", action="store_true", help="skip the swapped-video test")
    p.add_argument("--sampled", type=int, default=0, metavar="K",
                   help="also score K samples per prompt at the rollout temperature (eval_sampled/*: the "
                        "expected reward RL maximises; greedy only sees the mode). Default 0: greedy only")
    p.add_argument("-o", "--out", default="eval_out", help="output directory (predictions.jsonl, metrics.json)")


def _run_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.console_log import capture_stdout
    from stgrl.orchestration.eval_run import evaluate_model
    from stgrl.orchestration.progress import track
    from stgrl.orchestration.stage_support import check_model_path, load_split

    cfg = load_config(args.config, args.overrides)
    check_model_path(cfg, args.model)
    data = args.data or cfg.data.eval
    records, dataset_dir = load_split(data, "eval")
    vstar = Path(args.vstar) if args.vstar else Path(data).parent / "eval_vstar.json"
    with track(None, "eval", "eval", min(args.max_samples, len(records))) as progress, capture_stdout():
        metrics = evaluate_model(cfg, args.model, records, dataset_dir, Path(args.out), max_samples=args.max_samples,
                                 swapped=not args.no_swap, vstar_annotations=vstar if vstar.is_file() else None,
                                 sampled=args.sampled, progress=progress)
    table = Table(title=f"held-out evaluation of {args.model}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    Console().print(table)
    log.info("predictions and metrics written to %s", args.out)
    return 0


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("run", "generate held-out answers (greedy) with a checkpoint and score them: rewards at the "
               "final curriculum σ, V-STAR, grounding vs baselines, swapped-video test", _configure_run, _run_run),
    Subcommand("vstar", "V-STAR metrics: Acc, tIoU/vIoU per chain, AP, R1, mAM, mLGM",
               _configure_vstar, _run_vstar),
    Subcommand("grounding", "claimed boxes/times vs mean-box, random-box and middle-of-video baselines; "
               "swapped-video test", _configure_grounding, _run_grounding),
]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND", required=True)
    for sc in SUBCOMMANDS:
        p = sub.add_parser(sc.name, help=sc.help, description=sc.help)
        sc.configure(p)
        p.set_defaults(_eval_run=sc.run)


def run(args: argparse.Namespace) -> int:
    return int(args._eval_run(args))
