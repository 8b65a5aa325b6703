"""The stages as functions: SFT and RL (each also a Ray job entrypoint through the CLI).

Both validate everything they can before starting actors (config, model directory, datasets), so
bad input fails in seconds with a message that names the key or file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from stgrl.orchestration.config import Config
from stgrl.orchestration.stage_support import (
    check_model_path,
    load_split,
    make_sink,
    prepare_run_dir,
    resolve_run_dir,
    stage_log,
    stage_progress,
)

log = logging.getLogger(__name__)


def run_sft_stage(cfg: Config, run_dir: str | Path | None) -> Path:
    """Cold-start SFT; returns the exported HF checkpoint directory (<run-dir>/sft/hf)."""
    rd = prepare_run_dir(cfg, resolve_run_dir(cfg, str(run_dir) if run_dir else None), "sft")
    with stage_log(rd, "sft"):
        return _sft(cfg, rd)


def _sft(cfg: Config, rd: Path) -> Path:
    from stgrl.orchestration.ray_setup import init_ray
    from stgrl.orchestration.sft_loop import SFTDriver

    check_model_path(cfg, cfg.model.path)
    train, dataset_dir = load_split(cfg.data.train, "train", cfg.data.allow_media_outside_root)
    evals, _ = load_split(cfg.data.eval, "eval", cfg.data.allow_media_outside_root)
    init_ray(cfg)
    sink = make_sink(cfg, rd, "sft")
    driver = SFTDriver(cfg, rd, cfg.model.path, train, evals, dataset_dir)
    try:
        driver.start()
        with stage_progress("SFT", cfg.sft.steps, ("sft/sft_loss", "sft/eval_loss")) as progress:
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
                 resume: bool = False) -> Path:
    """GSPO RL; returns the final HF checkpoint directory (<run-dir>/rl/hf)."""
    rd = prepare_run_dir(cfg, resolve_run_dir(cfg, str(run_dir) if run_dir else None), "rl")
    with stage_log(rd, "rl"):
        return _rl(cfg, rd, init_from, resume)


def _rl(cfg: Config, rd: Path, init_from: str | None, resume: bool) -> Path:
    from stgrl.orchestration.ray_setup import init_ray
    from stgrl.orchestration.rl_loop import RLDriver

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
        with stage_progress(f"RL ({cfg.run.mode})", cfg.run.total_steps,
                            ("train/reward_mean", "rollout/tokens_per_s", "weights/version_lag")) as progress:
            driver.run(sink, progress)
    finally:
        driver.close()
        sink.close()
    return rd / "rl" / "hf"
