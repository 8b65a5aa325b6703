"""`stgrl watch RUN_DIR`: the progress display of a run, from its run directory's files."""

from __future__ import annotations

import argparse

NAME = "watch"
HELP = "follow a run from its run directory (the same progress display the run shows)"
DESCRIPTION = """\
Follow a run from its run directory alone, as a KubeRay user would from the shared volume: the same
progress display per stage (SFT, RL, held-out evaluations) as the run's own console, read from
config_<stage>.yaml, metrics_sft.jsonl, metrics.jsonl and eval/*/progress.jsonl. Works while the run
writes; once it has finished (report.md written, or RL done, or every stage done and nothing written
for --settle seconds) it prints the final state and exits.

  stgrl watch runs/demo
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run directory (e.g. runs/demo)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between reads (default: %(default)s)")
    parser.add_argument("--print-every", type=float, default=15.0,
                        help="without a terminal: seconds between a stage's progress lines (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="every stage done and nothing written for this long: the run is over "
                             "(default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, help="stop watching after this many seconds")
    parser.add_argument("--once", action="store_true", help="print the current state and exit")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from stgrl.orchestration.config import ConfigError
    from stgrl.orchestration.console_log import display_for_console
    from stgrl.orchestration.watch import watch_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory '{run_dir}' does not exist")
    if args.interval <= 0 or args.settle < 0 or args.print_every < 0:
        raise ConfigError("--interval must be > 0, --settle and --print-every >= 0")
    with display_for_console(args.print_every) as display:
        watch_run(run_dir, display, interval_s=args.interval, settle_s=args.settle, timeout_s=args.timeout,
                  once=args.once)
    return 0
