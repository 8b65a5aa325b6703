"""`stgrl train`: SFT, then RL from its checkpoint, in one Ray job (the KubeRay RayJob's entrypoint)."""

from __future__ import annotations

import argparse

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "train"
HELP = "SFT then RL from its checkpoint in one Ray job entrypoint (one RayJob gives both, in order)"
DESCRIPTION = """\
The two stages in one driver: `stgrl sft`, and only when it finished, `stgrl rl --init-from
<run-dir>/sft/hf` with the same config, overrides and run directory. It is the entrypoint of the
one RayJob k8s/rayjob-train.yaml, so `kubectl apply` of the manifests runs SFT then RL in order
(two RayJobs applied together would start together). A failed SFT fails the job; RL never starts.
`--skip-sft` starts RL from an SFT checkpoint already in the run directory (a rerun after an RL
failure). `--resume` continues both from the run directory's checkpoints: SFT from its newest one
(`stgrl sft --resume`; an SFT that had finished only re-exports), then RL from its own (`stgrl rl
--resume`). Connects to RAY_ADDRESS when set, otherwise starts a local Ray cluster.

  stgrl train --config configs/demo.yaml --run-dir runs/demo
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None, help="run directory (default: <run.out_dir>/<run.name>)")
    parser.add_argument("--skip-sft", action="store_true",
                        help="RL only, from the run directory's existing SFT checkpoint <run-dir>/sft/hf")
    parser.add_argument("--resume", action="store_true",
                        help="continue SFT, then RL, from the run directory's latest checkpoints")


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.stage_support import resolve_run_dir
    from stgrl.orchestration.stages import run_rl_stage, run_sft_stage

    cfg = load_config(args.config, args.overrides)  # both stages' config, validated before any work
    run_dir = resolve_run_dir(cfg, args.run_dir)
    sft = run_dir / "sft" / "hf" if args.skip_sft else run_sft_stage(cfg, run_dir, resume=args.resume)
    run_rl_stage(cfg, run_dir, init_from=str(sft), resume=args.resume)
    return 0
