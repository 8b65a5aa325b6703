"""What every stage (SFT, RL, eval) does before and around its work: a run directory with the config
used and a log file, the datasets read (bad records counted and skipped), a metrics sink, and a
rich progress bar with step, reward/loss, throughput and ETA."""

from __future__ import annotations

import contextlib
import logging
import time
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
    a process that runs several stages must not keep writing into earlier stages' files)."""
    handler = logging.FileHandler(run_dir / "logs" / f"{stage}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
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


@contextlib.contextmanager
def stage_progress(title: str, total: int, keys: tuple[str, ...]) -> Iterator[Any]:
    """A rich progress bar; yields `update(step, metrics)` that advances it and shows `keys`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), transient=False) as progress:
        task = progress.add_task(title, total=total, info="")
        t0 = time.perf_counter()

        def update(step: int, metrics: dict[str, float]) -> None:
            parts = []
            for k in keys:
                v = metrics.get(k)
                if isinstance(v, (int, float)):
                    parts.append(f"{k.split('/')[-1]}={v:.3g}")
            parts.append(f"{(step + 1) / max(1e-9, time.perf_counter() - t0):.2f} step/s")
            progress.update(task, completed=step + 1, info=" ".join(parts))
            log.debug("%s step %d: %s", title, step, parts)

        yield update
