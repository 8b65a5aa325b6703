"""The ``stgrl`` command line.

Subcommands live in :mod:`stgrl.orchestration.commands`, one module each, listed in ``COMMANDS``
in the order ``--help`` shows them. A subcommand is added with the issue that implements it; there
are no placeholders.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Module names under stgrl.orchestration.commands, in --help order.
COMMANDS: tuple[str, ...] = (
    "init_model",
    "data",
    "config",
    "sft",
    "rl",
    "run",
    "train",
    "demo",
    "eval",
    "visualize",
    "ablate",
    "rewards",
    "watch",
)

DESCRIPTION = """\
stgrl trains video language models to show their evidence: while reasoning about a video the model
writes when (<t>5.0</t>s) and where (<obj>red car</obj><box>[x1,y1,x2,y2]</box>) it saw each thing,
and reinforcement learning (GSPO with a temporal-gating, adaptive-proximity curriculum reward)
rewards evidence that checks out.

Typical local run on the embedded default (tiny model, synthetic videos, no downloads, no GPU):
  stgrl init-model --out models/tiny
  stgrl data synth --out data/shapes
  stgrl run --config configs/demo.yaml

Config values can be overridden on any command that takes --config: key=value, e.g.
  stgrl rl --config configs/demo.yaml learner.lr=1e-4 rollout.num_workers=2
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stgrl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything live: debug logging, per-step and library messages, Ray actor "
                             "output (by default they go only to <run-dir>/logs/<stage>.log)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        mod = importlib.import_module(f"stgrl.orchestration.commands.{name}")
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def setup_logging(verbose: bool = False) -> None:
    """Console logging: quiet by default, everything with -v (stgrl.orchestration.console_log)."""
    from stgrl.orchestration.console_log import setup_console

    setup_console(verbose)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    setup_logging(args.verbose)
    from stgrl.orchestration.config import ConfigError
    from stgrl.orchestration.console_log import restore_streams

    ray_was_up = _ray_connected()
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        logging.getLogger("stgrl").error("config error: %s", e)
        return 2
    finally:
        if not ray_was_up and _ray_connected():
            # Ray's log thread would print its last actor lines onto the console once the streams
            # are back: disconnect (or stop the local cluster this command started) first
            import ray

            ray.shutdown()
        restore_streams()  # a traceback after this must reach the real stderr


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


if __name__ == "__main__":
    sys.exit(main())
