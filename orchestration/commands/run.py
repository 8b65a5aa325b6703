"""`stgrl run`: SFT as a Ray job, then (only if it SUCCEEDED) RL as a Ray job from its checkpoint."""

from __future__ import annotations

import argparse

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "run"
HELP = "submit SFT as a Ray job, wait for SUCCEEDED, then submit RL from its checkpoint"
DESCRIPTION = """\
The two-stage pipeline as chained Ray jobs. With RAY_ADDRESS or --address (the dashboard URL, e.g.
http://127.0.0.1:8265) the jobs go to that cluster; otherwise a local Ray head is started on
loopback with the pool resources and stopped at the end. A failed SFT stops the chain and its log is
shown. Each job has --job-timeout seconds.

  stgrl run --config configs/demo.yaml
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None, help="run directory (default: <run.out_dir>/<run.name>)")
    parser.add_argument("--address", default=None, help="Ray dashboard address to submit to (default: RAY_ADDRESS)")
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="seconds each job may take")


def run(args: argparse.Namespace) -> int:
    import time

    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.console_log import display_for_console
    from stgrl.orchestration.jobs import run_chain
    from stgrl.orchestration.progress import RunWatcher, follow
    from stgrl.orchestration.ray_setup import local_resources
    from stgrl.orchestration.stage_support import check_model_path, resolve_run_dir

    cfg = load_config(args.config, args.overrides)  # validate before submitting anything
    check_model_path(cfg, cfg.model.path)
    run_dir = resolve_run_dir(cfg, args.run_dir)
    # the jobs' consoles are log files: this process shows their progress from the run directory
    with display_for_console() as display, follow(RunWatcher(run_dir, since=time.time()), display):
        run_chain(args.config, args.overrides, run_dir, args.address, local_resources(cfg), args.job_timeout,
                  verbose=args.verbose)
    return 0
