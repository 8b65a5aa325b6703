"""`stgrl rl`: the GSPO RL stage (a valid Ray job entrypoint)."""

from __future__ import annotations

import argparse

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "rl"
HELP = "GSPO RL with rollout workers, reward shards and learner ranks (Ray job entrypoint)"
DESCRIPTION = """\
Reinforcement learning with GSPO and the curriculum reward (adaptive temporal proximity + temporal
gating). Pools are sized by config: rollout.num_workers, reward.num_shards, learner.num_ranks, each
placed by its custom resource (rollout / reward / learner). run.mode sync|async, run.max_staleness.
Starts from --init-from (an HF checkpoint, e.g. <run-dir>/sft/hf) or model.path. Writes metrics.jsonl,
ledger.jsonl, checkpoints/ and the final HF checkpoint <run-dir>/rl/hf. --resume continues from the
latest checkpoint of the run directory.

  stgrl rl --config configs/demo.yaml --init-from runs/demo/sft/hf learner.lr=1e-4
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None, help="run directory (default: <run.out_dir>/<run.name>)")
    parser.add_argument("--init-from", default=None, help="HF checkpoint to start from (default: model.path)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.stages import run_rl_stage

    cfg = load_config(args.config, args.overrides)
    run_rl_stage(cfg, args.run_dir, init_from=args.init_from, resume=args.resume)
    return 0
