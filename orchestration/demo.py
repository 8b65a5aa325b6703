"""`stgrl demo` / `make demo`: the whole pipeline on the embedded default, end to end.

init-model -> data synth -> held-out eval (untrained, beside the SFT job) -> SFT Ray job -> RL Ray
job -> held-out eval after SFT and after RL (side by side) -> report. Every step that already has its
output on disk (model, dataset) is reused, so a second run starts training at once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from stgrl.orchestration.config import Config

if TYPE_CHECKING:
    from stgrl.orchestration.progress import ProgressDisplay

log = logging.getLogger(__name__)


def ensure_model(cfg: Config, display: ProgressDisplay | None = None) -> None:
    """Build the embedded model and run its base pretraining when `model.path` holds no model yet
    (an interrupted pretraining is redone: the model is only marked pretrained at the end)."""
    from stgrl.rollout.base_pretrain import is_pretrained
    from stgrl.rollout.tiny_model import build_tiny_model

    path = Path(cfg.model.path)
    vision, captions = cfg.model.pretrain_vision_steps, cfg.model.pretrain_caption_steps
    if not (path / "config.json").is_file():
        log.info("building the embedded tiny model in %s", path)
        build_tiny_model(path, seed=cfg.model.init_seed)
        pretrain_embedded_model(path, vision, captions, cfg.model.init_seed, display)
    elif (path / "stgrl_tiny_model.json").is_file() and (vision or captions) and not is_pretrained(path):
        # an embedded model built before base pretraining existed; a user's own checkpoint (no
        # stgrl_tiny_model.json) is never touched
        log.warning("%s holds an embedded model without base pretraining (built by an older stgrl); "
                    "rebuild it with `stgrl init-model --force` to get a model that sees", path)


def pretrain_embedded_model(path: Path, vision_steps: int, caption_steps: int, seed: int,
                            display: ProgressDisplay | None = None) -> None:
    """Base pretraining with the progress display (skipped when already done, or when both step
    counts are 0)."""
    import msgspec

    from stgrl.orchestration.progress import track
    from stgrl.rollout.base_pretrain import BasePretrainSpec, is_pretrained, pretrain_model_dir

    if (vision_steps == 0 and caption_steps == 0) or is_pretrained(path):
        return
    base = BasePretrainSpec()
    spec = BasePretrainSpec(vision=msgspec.structs.replace(base.vision, steps=vision_steps, seed=seed),
                            captions=msgspec.structs.replace(base.captions, steps=caption_steps, seed=seed))
    offset = {"vision": 0, "captions": vision_steps}
    with track(display, "base pretraining", "pretrain", vision_steps + caption_steps) as bar:
        result = pretrain_model_dir(path, spec, lambda phase, i, n, m: bar(offset[phase] + i, m))
    log.debug("base pretraining done: %s", result["results"])


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


def prepare_model_and_data(cfg: Config, display: ProgressDisplay | None = None) -> None:
    """Model (build + base pretraining) and dataset (synthesis), side by side when both are missing:
    each is single-threaded, so on a 2-core laptop this saves the shorter of the two (minutes)."""
    from concurrent.futures import ProcessPoolExecutor

    need_data = not (Path(cfg.data.train).is_file() and Path(cfg.data.eval).is_file())
    if not need_data:
        ensure_model(cfg, display)
        return
    with ProcessPoolExecutor(1) as pool:
        data = pool.submit(ensure_data, cfg)
        ensure_model(cfg, display)
        data.result()


def _evaluate(cfg: Config, model: str, out_dir: Path, eval_samples: int, eval_sampled: int,
              verbose: bool = False) -> dict:
    """One held-out evaluation in a worker process (each single-threaded, so two run side by side).
    It logs into `<out_dir>/eval.log` and records its progress in `<out_dir>/progress.jsonl`, which
    the demo's display follows (two processes drawing on one terminal would garble it)."""
    from stgrl.orchestration.console_log import setup_worker_process
    from stgrl.orchestration.eval_run import evaluate_model
    from stgrl.orchestration.progress import NullDisplay, track
    from stgrl.orchestration.stage_support import load_split

    setup_worker_process(out_dir / "eval.log", verbose)
    evals, dataset_dir = load_split(cfg.data.eval, "eval")
    vstar = Path(cfg.data.eval).parent / "eval_vstar.json"
    with track(NullDisplay(), out_dir.name, "eval", min(eval_samples, len(evals)), record_to=out_dir / "progress.jsonl") as p:
        return evaluate_model(cfg, model, evals, dataset_dir, out_dir, max_samples=eval_samples,
                              vstar_annotations=vstar, sampled=eval_sampled, progress=p)


def run_demo(cfg: Config, config_path: str | None, overrides: list[str], run_dir: Path,
             eval_samples: int, use_jobs: bool, eval_sampled: int = 4, verbose: bool = False) -> Path:
    """The whole pipeline. Each evaluation is one single-threaded worker process, placed where it
    costs the least wall time: the untrained model's beside the SFT job (it needs only the base
    model, and takes well under the SFT's time), the after-SFT and after-RL ones side by side at the
    end (they would each leave a core idle alone).

    The console shows one progress display for every stage (the Ray jobs and the evaluation workers
    followed through the run directory's metrics files) and, last, the verdict (`verdict.py`), which
    also opens report.md. Everything else is in `<run-dir>/logs/` and `<run-dir>/eval/*/eval.log`."""
    from stgrl.orchestration.console_log import display_for_console
    from stgrl.orchestration.stage_support import stage_log

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    with display_for_console() as display, stage_log(run_dir, "demo"):
        return _demo(cfg, config_path, overrides, run_dir, eval_samples, use_jobs, eval_sampled, verbose, display)


def _demo(cfg: Config, config_path: str | None, overrides: list[str], run_dir: Path, eval_samples: int,
          use_jobs: bool, eval_sampled: int, verbose: bool, display: ProgressDisplay) -> Path:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from stgrl.orchestration.progress import RunWatcher, follow
    from stgrl.orchestration.report import write_report
    from stgrl.orchestration.verdict import demo_verdict

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    prepare_model_and_data(cfg, display)
    timings["model and data"] = time.perf_counter() - t0
    results: dict[str, dict] = {}
    phases = {"untrained": cfg.model.path, "after SFT": str(run_dir / "sft" / "hf"),
              "after RL": str(run_dir / "rl" / "hf")}
    eval_dirs = {phase: run_dir / "eval" / phase.replace(" ", "_") for phase in phases}
    watcher = RunWatcher(run_dir, since=time.time())

    def submit(pool: ProcessPoolExecutor, phase: str):
        # the untrained model's draws are max-length noise scoring ~0: greedy says as much, at a fifth
        # of the cost
        k = 0 if phase == "untrained" else eval_sampled
        log.info("held-out evaluation %s (%d samples, greedy%s)", phase if phase != "untrained" else
                 "of the untrained model", eval_samples, f" + {k} sampled each" if k else "")
        return pool.submit(_evaluate, cfg, phases[phase], eval_dirs[phase], eval_samples, k, verbose)

    # spawn: a forked child would inherit this process's Ray/torch state
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool, follow(watcher, display):
        untrained = submit(pool, "untrained")
        t_train = time.perf_counter()
        if use_jobs:
            from stgrl.orchestration.jobs import run_chain
            from stgrl.orchestration.ray_setup import local_resources

            run_chain(config_path, overrides, run_dir, None, local_resources(cfg), timeout_s=3600, verbose=verbose)
        else:
            from stgrl.orchestration.stages import run_rl_stage, run_sft_stage

            sft = run_sft_stage(cfg, run_dir, display=display)
            run_rl_stage(cfg, run_dir, init_from=str(sft), display=display)
        timings["SFT and RL"] = time.perf_counter() - t_train
        results["untrained"] = untrained.result()
        t_eval = time.perf_counter()
        after = {phase: submit(pool, phase) for phase in ("after SFT", "after RL")}
        results |= {phase: fut.result() for phase, fut in after.items()}
        timings["final evaluations"] = time.perf_counter() - t_eval
    minutes = (time.perf_counter() - t0) / 60
    timings = {"total": time.perf_counter() - t0, **timings}
    what_ran = [f"SFT {cfg.sft.steps} steps x {cfg.sft.batch_size} on {cfg.sft.num_ranks} rank(s); "
                f"RL {cfg.run.total_steps} {cfg.run.mode} GSPO steps of {cfg.rollout.prompts_per_step} prompts "
                f"x {cfg.rollout.group_size}",
                f"held-out evaluation of {eval_samples} samples: untrained, after SFT, after RL"
                + (f" (+ {eval_sampled} sampled draws each after training)" if eval_sampled else "")]
    report_path = run_dir / "report.md"
    verdict = demo_verdict(eval_dirs, timings, what_ran, report_path, temperature=cfg.rollout.temperature)
    report = write_report(run_dir, results, {"Timing": f"Whole demo: {minutes:.1f} minutes."}, verdict=verdict)
    display.close()
    log.info("%s", "\n".join(verdict))
    return report
