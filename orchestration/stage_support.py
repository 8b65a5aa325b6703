"""What every stage (SFT, RL, eval) does before and around its work: a run directory with the config
used and a log file, the datasets read (bad records counted and skipped) and a metrics sink. The
progress display is `stgrl.orchestration.progress`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from stgrl.orchestration.config import Config, ConfigError, config_to_yaml

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: Config, run_dir: str | None) -> Path:
    """`--run-dir` if given, else `<run.out_dir>/<run.name>`."""
    return Path(run_dir) if run_dir else Path(cfg.run.out_dir) / cfg.run.name


def prepare_run_dir(cfg: Config, run_dir: Path, stage: str) -> Path:
    """Create the run directory and write the config used."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / f"config_{stage}.yaml").write_text(config_to_yaml(cfg))
    return run_dir


@contextlib.contextmanager
def stage_log(run_dir: Path, stage: str) -> Iterator[None]:
    """Tee every log record into `<run_dir>/logs/<stage>.log` while the stage runs (and only then:
    a process that runs several stages must not keep writing into earlier stages' files). In quiet
    mode the file also gets what the console does not: chatter, library messages, the stage's
    captured stdout/stderr (Ray's copies of actor output included; stgrl.orchestration.console_log)."""
    from stgrl.orchestration.console_log import capture_stdout

    handler = logging.FileHandler(run_dir / "logs" / f"{stage}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with capture_stdout():
            yield
    finally:
        root.removeHandler(handler)
        handler.close()


def check_model_path(cfg: Config, model_path: str) -> None:
    """Fail before any work when the model directory does not exist, with the command that builds it."""
    if not (Path(model_path) / "config.json").is_file():
        raise ConfigError(f"model.path '{model_path}' holds no HF checkpoint (config.json); build the embedded "
                          f"model with `stgrl init-model --out {model_path}` or point model.path at a checkpoint")


def load_split(path: str, what: str, allow_media_outside_root: bool = False) -> tuple[list[Any], Path]:
    """Read one JSONL split; bad lines, missing/corrupt media and media paths leading outside the
    split's folder (unless ``allow_media_outside_root``) are logged, counted and skipped."""
    from stgrl.rollout.data.reader import read_records

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.{what} '{path}' does not exist; generate the synthetic data with "
                          f"`stgrl data synth --out {p.parent}` or point data.{what} at a JSONL file")
    records, report = read_records(p, allow_media_outside_root=allow_media_outside_root)
    if report.num_skipped:
        log.warning("%s: kept %d record(s), skipped %d %s", p, report.kept, report.num_skipped, dict(report.counts))
    if not records:
        raise ConfigError(f"data.{what} '{path}': no valid record (skipped {dict(report.counts)})")
    return records, p.parent


def make_sink(cfg: Config, run_dir: Path, stage: str):
    from stgrl.orchestration.metrics import MetricsSink

    return MetricsSink(run_dir, wandb_enabled=cfg.metrics.wandb, wandb_mode=cfg.metrics.wandb_mode,
                       wandb_project=cfg.metrics.wandb_project, wandb_run_name=cfg.metrics.wandb_run_name,
                       prometheus=cfg.metrics.prometheus, config_dict=msgspec.to_builtins(cfg), stage=stage)
