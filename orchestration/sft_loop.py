"""The SFT driver (cold start, docs/design.md §5): prepared examples -> learner ranks, held-out loss, HF export.

The driver decodes each video once (LRU cache) and builds prompt + target examples with labels only
on the target; learner ranks (the same DeepSpeed engine code as RL) train on even shards. The
schedule of examples is a pure function of (seed, step), so a resumed run sees the same data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec

from stgrl.orchestration.config import Config
from stgrl.orchestration.prompt_source import prompts_for_step

log = logging.getLogger(__name__)


def sft_learner_config(cfg: Config):
    """The learner config SFT runs with: the RL learner's engine settings, SFT's optimiser values."""
    return msgspec.structs.replace(
        cfg.learner, lr=cfg.sft.lr, warmup_steps=cfg.sft.warmup_steps, num_ranks=cfg.sft.num_ranks,
        total_steps=max(1, cfg.sft.steps),
    )


class SFTDriver:
    """Owns the learner ranks of the SFT stage."""

    def __init__(self, cfg: Config, run_dir: Path, model_path: str, train_records: list[Any],
                 eval_records: list[Any], dataset_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.model_path = model_path
        self.train_records = train_records
        self.eval_records = eval_records[: cfg.sft.eval_samples]
        self.dataset_dir = Path(dataset_dir)
        self.learners: Any = None
        self.skipped = 0

    def start(self) -> None:
        from transformers import AutoProcessor

        from stgrl.learner.actor import start_learner_group
        from stgrl.rollout.video import VideoCache

        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.cache = VideoCache(capacity=4096)
        lcfg = sft_learner_config(self.cfg)
        self.learners = start_learner_group(self.cfg.sft.num_ranks, self.model_path, lcfg, self.cfg.run.seed,
                                            num_gpus_per_rank=lcfg.num_gpus_per_rank)

    def _examples(self, records: list[Any]) -> list[dict]:
        from stgrl.rollout.video import MediaError, prepare_sft_example

        out = []
        for r in records:
            try:
                out.append(prepare_sft_example(r, self.processor, self.cfg.data, self.dataset_dir, self.cache))
            except MediaError as e:
                self.skipped += 1
                log.warning("skipping record %s: %s", r.id, e)
        return out

    def eval_loss(self) -> float:
        """Held-out loss: mean over all target tokens of the held-out examples."""
        if not hasattr(self, "_eval_examples"):
            self._eval_examples = self._examples(self.eval_records)
        return float(self.learners.eval_sft_loss(self._eval_examples))

    def run(self, sink: Any, progress: Any = None) -> dict[str, float]:
        cfg = self.cfg
        per_step = cfg.sft.batch_size
        first_eval = self.eval_loss()
        sink.log(0, {"sft/eval_loss": first_eval})
        log.info("SFT held-out loss before training: %.4f", first_eval)
        last: dict[str, float] = {}
        for step in range(cfg.sft.steps):
            t0 = time.perf_counter()
            records = prompts_for_step(self.train_records, step, per_step, cfg.run.seed)
            examples = self._examples(records)
            t_data = time.perf_counter() - t0
            result = self.learners.train_sft_batch(examples)
            metrics = {f"sft/{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))}
            metrics["sft/step_time_s"] = time.perf_counter() - t0
            metrics["sft/data_time_s"] = t_data
            if cfg.sft.eval_every and (step + 1) % cfg.sft.eval_every == 0 or step + 1 == cfg.sft.steps:
                metrics["sft/eval_loss"] = self.eval_loss()
            sink.log(step + 1, metrics)
            last = metrics
            if progress is not None:
                progress(step, metrics)
        last["sft/eval_loss_before"] = first_eval
        return last

    def export(self, out_dir: Path) -> Path:
        self.learners.export_hf(out_dir)
        return out_dir

    def close(self) -> None:
        if self.learners is not None:
            self.learners.shutdown()
