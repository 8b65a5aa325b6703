"""`stgrl config`: validate a config (+ overrides) and print the resolved YAML."""

from __future__ import annotations

import argparse
import sys

NAME = "config"
HELP = "validate a config file plus key=value overrides and print the resolved config"
DESCRIPTION = """\
Load a YAML config (or the defaults), apply key=value overrides, validate everything (unknown keys,
wrong types, out-of-range values fail with the key name and the allowed values) and print the
resolved config as YAML. Every stage command validates the same way before starting any work.

  stgrl config --config configs/demo.yaml learner.lr=1e-4 rollout.num_workers=2
"""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE` + `key=value ...` pair shared by every command that takes a config."""
    parser.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. learner.lr=1e-4")


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.config import config_to_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(config_to_yaml(cfg))
    return 0
