"""`stgrl demo`: the main job on the embedded default (what `make demo` runs)."""

from __future__ import annotations

import argparse

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "demo"
HELP = "the whole pipeline on the embedded default: model, data, eval, SFT job, RL job, eval, report"
DESCRIPTION = """\
End to end on a laptop (no GPU, no downloads): build the tiny model and the synthetic shapes videos
if missing, evaluate the untrained model on the held-out split, run SFT and RL as chained Ray jobs
on a local cluster, evaluate after each, and write <run-dir>/report.md with plots.

The console shows a progress display per stage and ends with a short verdict (held-out reward
before/after with 95 % intervals); the details are in <run-dir>/logs/ (-v shows them live). Follow
it from another shell with `stgrl watch <run-dir>`.

  stgrl demo --config configs/demo.yaml
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None, help="run directory (default: <run.out_dir>/<run.name>)")
    parser.add_argument("--eval-samples", type=int, default=200,
                        help="held-out samples per evaluation (default: %(default)s, the whole held-out split of the demo)")
    parser.add_argument("--eval-sampled", type=int, default=4, metavar="K",
                        help="also score K samples per held-out prompt at the rollout temperature: "
                             "eval_sampled/*, the expected reward RL maximises (default: %(default)s; 0: greedy only)")
    parser.add_argument("--in-process", action="store_true",
                        help="run SFT and RL in this process instead of as chained Ray jobs")


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.demo import run_demo
    from stgrl.orchestration.stage_support import resolve_run_dir

    if args.eval_samples < 1 or args.eval_sampled < 0:
        from stgrl.orchestration.config import ConfigError

        raise ConfigError(f"--eval-samples must be >= 1 and --eval-sampled >= 0, got {args.eval_samples} "
                          f"and {args.eval_sampled}")
    cfg = load_config(args.config, args.overrides)
    run_demo(cfg, args.config, args.overrides, resolve_run_dir(cfg, args.run_dir), args.eval_samples,
             use_jobs=not args.in_process, eval_sampled=args.eval_sampled, verbose=args.verbose)
    return 0
