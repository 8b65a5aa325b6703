"""`stgrl ablate`: the curriculum ablation (full curriculum reward vs plain spatial IoU) end to end."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from stgrl.orchestration.commands.config import add_config_arguments

NAME = "ablate"
HELP = "curriculum ablation: RL with the full curriculum reward vs plain spatial IoU, same SFT start, data, steps, seeds"
DESCRIPTION = """\
Does the curriculum reward help? Two RL arms, identical except for the reward of spatio-temporal
samples (`reward.spatial_mode`):

  (a) curriculum  adaptive temporal proximity (σ annealed sigma0 -> sigma_min) + spatial IoU gated
                  on the claimed time being within reward.gate_delta_s of the nearest key frame
  (b) plain       no proximity term; spatial IoU against the key frame nearest the predicted time,
                  no gate

Both start from ONE SFT checkpoint (trained here once, or --sft-checkpoint, e.g. runs/demo/sft/hf
from `stgrl demo`) and run the same steps on the same data with the same seed(s). Each final model
is evaluated greedily on the held-out split with the SAME scoring (curriculum reward at the final σ,
both spatial-IoU definitions, V-STAR metrics), and so is the SFT start.

Writes into the run directory (default <run.out_dir>/<run.name>-ablation):
  sft/hf                       the shared start (unless --sft-checkpoint)
  <arm>-seed<S>/               each RL run (metrics.jsonl, ledger.jsonl, rl/hf, logs)
  eval/<arm>-seed<S>/, eval/start/   predictions, metrics.json, vstar.json
  ablation.json                every number (per seed, mean/std, per-step curves)
  ablation.md                  the table + the plot
  spatial_reward.png           per-step spatial reward each arm trained on, and the common components

  stgrl ablate --config configs/demo.yaml --sft-checkpoint runs/demo/sft/hf
  stgrl ablate --config configs/demo.yaml --seeds 0 1 2 --steps 40

--report-only rebuilds the outputs from an existing ablation directory (after a change to the
table or the plot) without training or evaluating anything.

Takes about (2 x seeds) RL stages + (1 + 2 x seeds) evaluations (+ one SFT without --sft-checkpoint);
on the embedded default with an existing SFT checkpoint that is about 10 minutes per seed on a
shared 2-core machine (docs/ablation.md: 29 minutes for seeds 0 1 2).
"""

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default=None,
                        help="ablation directory (default: <run.out_dir>/<run.name>-ablation)")
    parser.add_argument("--sft-checkpoint", default=None, metavar="PATH",
                        help="HF checkpoint both arms start from (default: run SFT once into <run-dir>/sft/hf)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="RL seeds; each arm runs once per seed (default: run.seed only)")
    parser.add_argument("--steps", type=int, default=None,
                        help="RL steps per run (default: run.total_steps); σ anneals over these steps")
    parser.add_argument("--eval-samples", type=int, default=64, help="held-out samples per evaluation")
    parser.add_argument("--report-only", action="store_true",
                        help="train and evaluate nothing: rebuild ablation.json/.md and the plot from the runs "
                             "and evaluations already in --run-dir (seeds: --seeds or every <arm>-seed<S> found)")


def run(args: argparse.Namespace) -> int:
    from stgrl.orchestration.config import ConfigError, load_config
    from stgrl.orchestration.stage_support import check_model_path

    overrides = list(args.overrides) + ([f"run.total_steps={args.steps}"] if args.steps is not None else [])
    cfg = load_config(args.config, overrides)
    seeds = list(args.seeds) if args.seeds else None
    if seeds is not None and len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds has duplicates: {seeds}")
    if args.eval_samples < 1:
        raise ConfigError(f"--eval-samples must be >= 1, got {args.eval_samples}")
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / f"{cfg.run.name}-ablation"
    if args.report_only:
        report_only(run_dir, seeds)
        return 0
    if args.sft_checkpoint is not None:
        check_model_path(cfg, args.sft_checkpoint)
    run_ablation(cfg, run_dir, args.sft_checkpoint, seeds or [cfg.run.seed], args.eval_samples,
                 provenance={"config": args.config, "overrides": overrides})
    return 0


def _summary(out: Path, reward: Any) -> dict[str, float]:
    """The ablation summary of one finished evaluation directory (metrics, V-STAR report, predictions)."""
    from stgrl.orchestration.ablation import eval_summary
    from stgrl.orchestration.config import ConfigError

    if not (out / "metrics.json").is_file() or not (out / "predictions.jsonl").is_file():
        raise ConfigError(f"no finished evaluation in {out} (metrics.json + predictions.jsonl)")
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((out / "vstar.json").read_text()) if (out / "vstar.json").is_file() else None
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return eval_summary(metrics, report, preds, reward)


def _evaluate(cfg: Any, model: Path, out: Path, evals: list, dataset_dir: Path, vstar: Path,
              eval_samples: int) -> dict[str, float]:
    """Held-out evaluation of one model with the common scoring; returns its ablation summary."""
    from stgrl.orchestration.ablation import eval_config
    from stgrl.orchestration.eval_run import evaluate_model

    ecfg = eval_config(cfg)
    evaluate_model(ecfg, model, evals, dataset_dir, out, max_samples=eval_samples, vstar_annotations=vstar)
    return _summary(out, ecfg.reward)


def run_ablation(cfg: Any, run_dir: Path, sft_checkpoint: str | None, seeds: list[int], eval_samples: int,
                 provenance: dict[str, Any] | None = None) -> Path:
    """SFT once (or reuse), RL per arm and seed, evaluate everything, write the outputs; returns
    `<run_dir>/ablation.md`. Each phase is announced with its number; stages show their own bars."""
    from rich.console import Console

    from stgrl.orchestration.ablation import ARMS, arm_config, arm_run_dir
    from stgrl.orchestration.demo import ensure_data, ensure_model
    from stgrl.orchestration.metrics import read_metrics
    from stgrl.orchestration.stage_support import load_split, stage_log
    from stgrl.orchestration.stages import run_rl_stage, run_sft_stage

    console = Console(stderr=True)
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    ensure_data(cfg)
    load_split(cfg.data.train, "train")  # fail on unusable data before any training
    evals, dataset_dir = load_split(cfg.data.eval, "eval")
    vstar = Path(cfg.data.eval).parent / "eval_vstar.json"

    phases: list[str] = [] if sft_checkpoint else ["SFT (shared start)"]
    phases.append("evaluate the SFT start")
    for seed in seeds:
        for arm in ARMS:
            phases += [f"RL {arm.name}, seed {seed}", f"evaluate {arm.name}, seed {seed}"]
    phases.append("table and plot")
    done = 0

    def phase(title: str) -> None:
        nonlocal done
        done += 1
        elapsed = (time.perf_counter() - t0) / 60
        console.rule(f"[bold]ablation {done}/{len(phases)}[/bold]: {title}  [dim]({elapsed:.1f} min so far)[/dim]")

    console.print(f"[bold]curriculum ablation[/bold] -> {run_dir}: {cfg.run.total_steps} RL steps, "
                  f"seeds {seeds}, {len(phases)} phases")
    with stage_log(run_dir, "ablate"):
        if sft_checkpoint is None:
            phase(phases[0])
            ensure_model(cfg)
            start = run_sft_stage(cfg, run_dir)
        else:
            start = Path(sft_checkpoint)
        log.info("both arms start from %s", start)
        phase("evaluate the SFT start")
        start_summary = _evaluate(cfg, start, run_dir / "eval" / "start", evals, dataset_dir, vstar, eval_samples)

        per_seed: dict[str, dict[int, dict[str, float]]] = {a.name: {} for a in ARMS}
        rows: dict[str, dict[int, list[dict]]] = {a.name: {} for a in ARMS}
        for seed in seeds:
            for arm in ARMS:
                rd = arm_run_dir(run_dir, arm, seed)
                phase(f"RL {arm.name}, seed {seed}")
                final = run_rl_stage(arm_config(cfg, arm, seed), rd, init_from=str(start))
                rows[arm.name][seed] = read_metrics(rd / "metrics.jsonl")
                phase(f"evaluate {arm.name}, seed {seed}")
                per_seed[arm.name][seed] = _evaluate(cfg, final, run_dir / "eval" / rd.name, evals, dataset_dir,
                                                     vstar, eval_samples)
        phase("table and plot")
        md = write_outputs(run_dir, cfg, str(start), seeds, eval_samples, start_summary, per_seed, rows,
                           (time.perf_counter() - t0) / 60, provenance or {}, console)
    return md


def report_only(run_dir: Path, seeds: list[int] | None) -> Path:
    """Rebuild the outputs from the runs and evaluations already in `run_dir` (nothing is trained)."""
    import re

    from rich.console import Console

    from stgrl.orchestration.ablation import ARMS, arm_run_dir, eval_config
    from stgrl.orchestration.config import ConfigError, load_config
    from stgrl.orchestration.metrics import read_metrics

    run_dir = Path(run_dir)
    if seeds is None:
        found = [{int(m.group(1)) for p in run_dir.glob(f"{a.name}-seed*")
                  if (m := re.fullmatch(rf"{a.name}-seed(\d+)", p.name))} for a in ARMS]
        seeds = sorted(set.intersection(*found)) if found else []
    if not seeds:
        raise ConfigError(f"{run_dir} holds no <arm>-seed<S> run of every arm; run `stgrl ablate` first")
    first = arm_run_dir(run_dir, ARMS[0], seeds[0])
    cfg = load_config(first / "config_rl.yaml")  # the config the runs used, not today's file
    reward = eval_config(cfg).reward
    prev = json.loads((run_dir / "ablation.json").read_text()) if (run_dir / "ablation.json").is_file() else {}
    rows: dict[str, dict[int, list[dict]]] = {a.name: {} for a in ARMS}
    per_seed: dict[str, dict[int, dict[str, float]]] = {a.name: {} for a in ARMS}
    for arm in ARMS:
        for seed in seeds:
            rd = arm_run_dir(run_dir, arm, seed)
            if not (rd / "metrics.jsonl").is_file():
                raise ConfigError(f"{rd} has no metrics.jsonl: that RL run did not happen or did not finish")
            rows[arm.name][seed] = read_metrics(rd / "metrics.jsonl")
            per_seed[arm.name][seed] = _summary(run_dir / "eval" / rd.name, reward)
    start_summary = _summary(run_dir / "eval" / "start", reward)
    provenance = {k: prev[k] for k in ("config", "overrides") if k in prev}
    return write_outputs(run_dir, cfg, prev.get("sft_checkpoint", "?"), seeds,
                         int(prev.get("eval_samples", start_summary.get("eval/samples", 0))), start_summary,
                         per_seed, rows, float(prev.get("minutes", float("nan"))), provenance, Console(stderr=True))


def write_outputs(run_dir: Path, cfg: Any, start: str, seeds: list[int], eval_samples: int,
                  start_summary: dict[str, float], per_seed: dict[str, dict[int, dict[str, float]]],
                  rows: dict[str, dict[int, list[dict]]], minutes: float, provenance: dict[str, Any],
                  console: Any) -> Path:
    """ablation.json (every number), spatial_reward.png and ablation.md (table + plot); prints the table."""
    import msgspec

    from stgrl.orchestration.ablation import (
        ARMS,
        aggregate,
        arm_run_dir,
        build_table,
        curves,
        plot_spatial_reward,
    )

    labels = {a.name: a.label for a in ARMS}
    stats = {a: aggregate(list(by_seed.values())) for a, by_seed in per_seed.items()}
    arm_curves = curves(rows)
    table = build_table(stats, start_summary, labels)
    plot = plot_spatial_reward(arm_curves, run_dir / "spatial_reward.png")
    result = {
        **provenance,
        "steps": cfg.run.total_steps, "seeds": seeds, "sft_checkpoint": start,
        "eval_samples": eval_samples, "data": {"train": cfg.data.train, "eval": cfg.data.eval},
        "minutes": minutes, "start": start_summary,
        "arms": {a.name: {"label": a.label, "spatial_mode": a.spatial_mode,
                          "runs": {str(s): {"run_dir": str(arm_run_dir(run_dir, a, s)), "eval": per_seed[a.name][s]}
                                   for s in seeds},
                          "stats": msgspec.to_builtins(stats[a.name])} for a in ARMS},
        "curves": msgspec.to_builtins(arm_curves),
    }
    (run_dir / "ablation.json").write_text(json.dumps(result, indent=2))
    md = run_dir / "ablation.md"
    md.write_text(
        f"# Curriculum ablation: {run_dir.name}\n\n"
        f"Start: `{start}`. RL steps per run: {cfg.run.total_steps}; seeds {seeds}; "
        f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} samples per step; "
        f"data `{cfg.data.train}`. Held-out: up to {eval_samples} samples of `{cfg.data.eval}`, greedy, "
        f"every model scored the same way (curriculum reward at the final σ, both spatial-IoU "
        f"definitions, V-STAR). {minutes:.1f} minutes.\n\n"
        f"{table}\n![spatial reward per step]({plot.name})\n"
    )
    _print_table(console, stats, start_summary, labels)
    log.info("ablation outputs written: %s", md)
    return md


def _print_table(console: Any, stats: dict, start: dict[str, float], labels: dict[str, str]) -> None:
    from rich.table import Table

    from stgrl.orchestration.ablation import TABLE_ROWS

    table = Table(title="held-out results (final models)")
    table.add_column("metric")
    table.add_column("SFT start", justify="right")
    for arm in stats:
        table.add_column(labels.get(arm, arm), justify="right")
    for key, label in TABLE_ROWS:
        cells = [f"{stats[a][key].mean:.3f}" if key in stats[a] else "–" for a in stats]
        v = start.get(key)
        table.add_row(label, f"{v:.3f}" if isinstance(v, (int, float)) else "–", *cells)
    console.print(table)
