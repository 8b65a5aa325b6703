"""The stages as functions: SFT and RL (each also a Ray job entrypoint through the CLI).

Both validate everything they can before starting actors (config, model directory, datasets), so
bad input fails in seconds with a message that names the key or file.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import msgspec

from stgrl.orchestration.config import Config, ConfigError
from stgrl.orchestration.progress import ProgressDisplay, track
from stgrl.orchestration.stage_support import (
    check_model_path,
    load_split,
    make_sink,
    prepare_run_dir,
    resolve_run_dir,
    stage_log,
)

log = logging.getLogger(__name__)


def run_sft_stage(cfg: Config, run_dir: str | Path | None, display: ProgressDisplay | None = None,
                  resume: bool = False) -> Path:
    """Cold-start SFT; returns the exported HF checkpoint directory (<run-dir>/sft/hf). Progress goes
    to `display` (default: one on the console for this stage). `resume`: continue from the newest
    checkpoint under <run-dir>/sft/checkpoints (`sft.checkpoint_every`); without it a fresh run
    replaces whatever SFT state the run directory holds."""
    rd = resolve_run_dir(cfg, str(run_dir) if run_dir else None)
    start = _sft_start(cfg, rd, resume)
    rd = prepare_run_dir(cfg, rd, "sft")
    with stage_log(rd, "sft"):
        return _sft(cfg, rd, start, display)


def _sft_start(cfg: Config, rd: Path, resume: bool) -> int:
    """The step SFT starts from (0 without `resume`), checked before any work: a resume needs a
    complete SFT checkpoint of at most `sft.steps` steps."""
    from stgrl.learner.sft_trainer import checkpointed_step

    if not resume:
        return 0
    ckpts = rd / "sft" / "checkpoints"
    step = checkpointed_step(rd / "sft")
    if step is None:
        raise ConfigError(f"`stgrl sft --resume`: {ckpts} holds no complete SFT checkpoint to continue from; "
                          f"run without --resume to start SFT afresh (sft.checkpoint_every sets how often a run "
                          f"checkpoints)")
    if step > cfg.sft.steps:
        raise ConfigError(f"`stgrl sft --resume`: the checkpoint in {ckpts} is at step {step}, past "
                          f"sft.steps={cfg.sft.steps}; raise sft.steps or start afresh without --resume")
    return step


def _forget_previous_sft(rd: Path) -> None:
    """A fresh SFT replaces the run directory's previous one: its checkpoints and metrics go (so a
    later `--resume` can never continue a run this one replaced, nor a step be logged twice)."""
    ckpts = rd / "sft" / "checkpoints"
    if ckpts.exists():
        log.info("fresh SFT: removing the previous SFT checkpoints in %s", ckpts)
        shutil.rmtree(ckpts)
    (rd / "metrics_sft.jsonl").unlink(missing_ok=True)


class SFTBatches:
    """The batch builder `run_sft` asks for step by step: the step's records (a pure function of
    (run.seed, step), so a resumed run gets the same ones), each video decoded once per process (LRU),
    prompt + target examples with labels on the target only. A record whose media fails to decode is
    logged and skipped."""

    def __init__(self, cfg: Config, records: list[Any], dataset_dir: Path, processor: Any) -> None:
        from stgrl.rollout.video import VideoCache

        self.cfg = cfg
        self.records = records
        self.dataset_dir = dataset_dir
        self.processor = processor
        self.cache = VideoCache(capacity=4096)
        self.skipped = 0

    def examples(self, records: list[Any]) -> list[dict]:
        from stgrl.rollout.video import MediaError, prepare_sft_example

        out = []
        for r in records:
            try:
                out.append(prepare_sft_example(r, self.processor, self.cfg.data, self.dataset_dir, self.cache))
            except MediaError as e:
                self.skipped += 1
                log.warning("skipping record %s: %s", r.id, e)
        return out

    def __call__(self, step: int) -> list[dict]:
        from stgrl.orchestration.prompt_source import prompts_for_step

        return self.examples(prompts_for_step(self.records, step, self.cfg.sft.batch_size, self.cfg.run.seed))


def _sft(cfg: Config, rd: Path, start: int, display: ProgressDisplay | None) -> Path:
    from transformers import AutoProcessor

    from stgrl.learner.actor import start_learner_group
    from stgrl.learner.sft import learner_config_for_sft
    from stgrl.learner.sft_trainer import run_sft
    from stgrl.orchestration.metrics import drop_rows_after, read_metrics
    from stgrl.orchestration.ray_setup import init_ray

    t0 = time.time()

    check_model_path(cfg, cfg.model.path)
    train, dataset_dir = load_split(cfg.data.train, "train", cfg.data.allow_media_outside_root)
    evals, _ = load_split(cfg.data.eval, "eval", cfg.data.allow_media_outside_root)
    metrics_path = rd / "metrics_sft.jsonl"
    if start:
        drop_rows_after(metrics_path, start)  # the killed run's steps past its checkpoint are redone
        log.info("SFT resumes from its checkpoint at step %d of %d", start, cfg.sft.steps)
    else:
        _forget_previous_sft(rd)
    batches = SFTBatches(cfg, train, dataset_dir, AutoProcessor.from_pretrained(cfg.model.path))
    held_out = batches.examples(evals[: cfg.sft.eval_samples])
    init_ray(cfg)
    sink = make_sink(cfg, rd, "sft")
    lcfg = learner_config_for_sft(cfg.sft, cfg.learner)
    learners = None
    try:
        learners = start_learner_group(cfg.sft.num_ranks, cfg.model.path, lcfg, cfg.run.seed,
                                       num_gpus_per_rank=lcfg.num_gpus_per_rank)
        with track(display, "SFT", "sft", cfg.sft.steps, started=t0) as progress:

            def on_step(done: int, metrics: dict[str, float], eval_loss: float | None) -> None:
                row = {f"sft/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
                if eval_loss is not None:
                    row["sft/eval_loss"] = eval_loss
                sink.log(done, row)
                if done:
                    progress(done - 1, row)

            run_sft(learners, batches, held_out, cfg.sft, rd / "sft", resume=start > 0, on_step=on_step)
    finally:
        if learners is not None:
            learners.shutdown()
        sink.close()
    out = rd / "sft" / "hf"
    summary = sft_summary(read_metrics(metrics_path))
    (rd / "sft" / "summary.json").write_text(msgspec.json.encode(summary).decode())
    log.info("SFT done: held-out loss %.4f -> %.4f; checkpoint %s", summary.get("sft/eval_loss_before", float("nan")),
             summary.get("sft/eval_loss", float("nan")), out)
    return out


def sft_summary(rows: list[dict]) -> dict[str, float]:
    """`<run-dir>/sft/summary.json`: the last step's metrics and `sft/eval_loss_before` (the held-out
    loss of the starting weights, row 0), read back from metrics_sft.jsonl so a resumed run's summary
    covers the whole run."""
    last = {k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith("sft/")}
    before = next((r["sft/eval_loss"] for r in rows if r.get("step") == 0 and "sft/eval_loss" in r), None)
    if before is not None:
        last["sft/eval_loss_before"] = before
    return last


def run_rl_stage(cfg: Config, run_dir: str | Path | None, init_from: str | None = None,
                 resume: bool = False, display: ProgressDisplay | None = None) -> Path:
    """GSPO RL; returns the final HF checkpoint directory (<run-dir>/rl/hf)."""
    rd = prepare_run_dir(cfg, resolve_run_dir(cfg, str(run_dir) if run_dir else None), "rl")
    with stage_log(rd, "rl"):
        return _rl(cfg, rd, init_from, resume, display)


def rl_resumes(rd: Path, resume: bool) -> bool:
    """Whether RL in ``rd`` continues a checkpoint; a fresh run first drops the previous run's lines.

    `--resume` with no RL checkpoint (killed before its first one, or `stgrl train --resume` after an
    SFT that never reached RL) is a fresh run: appending to the old ledger and metrics would log steps
    twice."""
    from stgrl.learner.checkpoint import LATEST

    if resume and not (rd / "checkpoints" / LATEST).exists():
        log.info("`--resume`: no RL checkpoint in %s, so RL starts afresh", rd / "checkpoints",
                 extra={"console": True})
        resume = False
    if not resume:
        for stale in ("metrics.jsonl", "ledger.jsonl"):
            (rd / stale).unlink(missing_ok=True)
    return resume


def _rl(cfg: Config, rd: Path, init_from: str | None, resume: bool, display: ProgressDisplay | None) -> Path:
    from stgrl.orchestration.ray_setup import init_ray
    from stgrl.orchestration.rl_loop import RLDriver

    t0 = time.time()

    model_path = init_from or cfg.model.path
    check_model_path(cfg, model_path)
    train, dataset_dir = load_split(cfg.data.train, "train", cfg.data.allow_media_outside_root)
    resume = rl_resumes(rd, resume)
    init_ray(cfg)
    sink = make_sink(cfg, rd, "rl")
    driver = RLDriver(cfg, rd, model_path, train, dataset_dir, resume=resume)
    try:
        driver.start()
        with track(display, f"RL ({cfg.run.mode})", "rl", cfg.run.total_steps,
                   started=t0) as progress:
            driver.run(sink, progress)
    finally:
        driver.close()
        sink.close()
    return rd / "rl" / "hf"
