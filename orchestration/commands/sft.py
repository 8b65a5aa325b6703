"""`stgrl sft`: the cold-start SFT stage (a valid Ray job entrypoint)."""

from __future__ import annotations

import argparse

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "sft"
HELP = "cold-start SFT on the learner ranks (Ray job entrypoint); writes an HF checkpoint for RL"
DESCRIPTION = """\
Supervised cold start: prompt (labelled frames + question) -> target <think>{reasoning}</think>
<answer>{answer}</answer>, loss on target tokens only, held-out loss every sft.eval_every steps, HF
checkpoint at <run-dir>/sft/hf. Writes metrics_sft.jsonl, sft/summary.json and a resumable checkpoint
every sft.checkpoint_every steps and at the end (<run-dir>/sft/checkpoints). --resume continues from
the newest of them (bit-exact on CPU; the steps a killed run logged after it are redone and logged
once); without --resume a run starts afresh and replaces the run directory's previous SFT state.
Connects to RAY_ADDRESS when set (e.g. under `ray job submit`), otherwise starts a local Ray cluster.

  stgrl sft --config configs/demo.yaml sft.steps=200 sft.checkpoint_every=50
  stgrl sft --config configs/demo.yaml sft.steps=200 sft.checkpoint_every=50 --resume
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None, help="run directory (default: <run.out_dir>/<run.name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in <run-dir>/sft/checkpoints")


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.stages import run_sft_stage

    cfg = load_config(args.config, args.overrides)
    run_sft_stage(cfg, args.run_dir, resume=args.resume)
    return 0
