"""The stages as functions: SFT and RL (each also a Ray job entrypoint through the CLI).

Both validate everything they can before starting actors (config, model directory, datasets), so
bad input fails in seconds with a message that names the key or file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from stgrl.orchestration.config import Config
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


def run_sft_stage(cfg: Config, run_dir: str | Path | None, display: ProgressDisplay | None = None) -> Path:
    """Cold-start SFT; returns the exported HF checkpoint directory (<run-dir>/sft/hf). Progress goes
    to `display` (default: one on the console for this stage)."""
    rd = prepare_run_dir(cfg, resolve_run_dir(cfg, str(run_dir) if run_dir else None), "sft")
    with stage_log(rd, "sft"):
        return _sft(cfg, rd, display)


def _sft(cfg: Config, rd: Path, display: ProgressDisplay | None) -> Path:
    from stgrl.orchestration.ray_setup import init_ray
    from stgrl.orchestration.sft_loop import SFTDriver

    t0 = time.time()

    check_model_path(cfg, cfg.model.path)
    train, dataset_dir = load_split(cfg.data.train, "train", cfg.data.allow_media_outside_root)
    evals, _ = load_split(cfg.data.eval, "eval", cfg.data.allow_media_outside_root)
    init_ray(cfg)
    sink = make_sink(cfg, rd, "sft")
    driver = SFTDriver(cfg, rd, cfg.model.path, train, evals, dataset_dir)
    try:
        driver.start()
        with track(display, "SFT", "sft", cfg.sft.steps, started=t0) as progress:
            last = driver.run(sink, progress)
        out = driver.export(rd / "sft" / "hf")
    finally:
        driver.close()
        sink.close()
    (rd / "sft" / "summary.json").write_text(msgspec.json.encode(last).decode())
    log.info("SFT done: held-out loss %.4f -> %.4f; checkpoint %s", last.get("sft/eval_loss_before", float("nan")),
             last.get("sft/eval_loss", float("nan")), out)
    return out


def run_rl_stage(cfg: Config, run_dir: str | Path | None, init_from: str | None = None,
                 resume: bool = False, display: ProgressDisplay | None = None) -> Path:
    """GSPO RL; returns the final HF checkpoint directory (<run-dir>/rl/hf)."""
    rd = prepare_run_dir(cfg, resolve_run_dir(cfg, str(run_dir) if run_dir else None), "rl")
    with stage_log(rd, "rl"):
        return _rl(cfg, rd, init_from, resume, display)


def _rl(cfg: Config, rd: Path, init_from: str | None, resume: bool, display: ProgressDisplay | None) -> Path:
    from stgrl.orchestration.ray_setup import init_ray
    from stgrl.orchestration.rl_loop import RLDriver

    t0 = time.time()

    model_path = init_from or cfg.model.path
    check_model_path(cfg, model_path)
    train, dataset_dir = load_split(cfg.data.train, "train", cfg.data.allow_media_outside_root)
    if not resume:
        for stale in ("metrics.jsonl", "ledger.jsonl"):
            (rd / stale).unlink(missing_ok=True)
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
