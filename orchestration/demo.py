"""`stgrl demo` / `make demo`: the whole pipeline on the embedded default, end to end.

init-model -> data synth -> held-out eval (untrained) -> SFT Ray job -> RL Ray job -> held-out
eval after SFT and after RL -> report. Every step that already has its output on disk (model,
dataset) is reused, so a second run starts training at once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from stgrl.orchestration.config import Config

log = logging.getLogger(__name__)


def ensure_model(cfg: Config) -> None:
    from stgrl.rollout.tiny_model import build_tiny_model

    if not (Path(cfg.model.path) / "config.json").is_file():
        log.info("building the embedded tiny model in %s", cfg.model.path)
        build_tiny_model(cfg.model.path, seed=cfg.model.init_seed)


def ensure_data(cfg: Config) -> None:
    from stgrl.rollout.data.synth import generate_split, write_vstar

    train, evalp = Path(cfg.data.train), Path(cfg.data.eval)
    if train.is_file() and evalp.is_file():
        return
    out = train.parent
    log.info("generating synthetic '%s' data in %s", cfg.data.synth_difficulty, out)
    generate_split(out, "train", cfg.data.synth_train, cfg.data.synth_seed, cfg.data.synth_difficulty, cfg.data)
    _, vstar = generate_split(out, "eval", cfg.data.synth_eval, cfg.data.synth_seed, cfg.data.synth_difficulty,
                              cfg.data)
    write_vstar(vstar, out / "eval_vstar.json")


def run_demo(cfg: Config, config_path: str | None, overrides: list[str], run_dir: Path,
             eval_samples: int, use_jobs: bool) -> Path:
    from stgrl.orchestration.eval_run import evaluate_model
    from stgrl.orchestration.report import write_report
    from stgrl.orchestration.stage_support import load_split

    t0 = time.perf_counter()
    ensure_model(cfg)
    ensure_data(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    evals, dataset_dir = load_split(cfg.data.eval, "eval")
    vstar = Path(cfg.data.eval).parent / "eval_vstar.json"
    results: dict[str, dict] = {}
    log.info("held-out evaluation of the untrained model")
    results["untrained"] = evaluate_model(cfg, cfg.model.path, evals, dataset_dir, run_dir / "eval" / "untrained",
                                          max_samples=eval_samples, vstar_annotations=vstar)
    if use_jobs:
        from stgrl.orchestration.jobs import run_chain
        from stgrl.orchestration.ray_setup import local_resources

        run_chain(config_path, overrides, run_dir, None, local_resources(cfg), timeout_s=3600)
    else:
        from stgrl.orchestration.stages import run_rl_stage, run_sft_stage

        sft = run_sft_stage(cfg, run_dir)
        run_rl_stage(cfg, run_dir, init_from=str(sft))
    for phase, path in (("after SFT", run_dir / "sft" / "hf"), ("after RL", run_dir / "rl" / "hf")):
        log.info("held-out evaluation %s", phase)
        results[phase] = evaluate_model(cfg, path, evals, dataset_dir, run_dir / "eval" / phase.replace(" ", "_"),
                                        max_samples=eval_samples, vstar_annotations=vstar)
    minutes = (time.perf_counter() - t0) / 60
    report = write_report(run_dir, results, {"Timing": f"Whole demo: {minutes:.1f} minutes."})
    log.info("demo finished in %.1f min; report: %s", minutes, report)
    return report
