"""The SFT driver (cold start, DESIGN 5): prepared examples -> learner ranks, held-out loss, HF export.

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
        self.learners: list[Any] = []
        self.skipped = 0

    def start(self) -> None:
        from transformers import AutoProcessor

        from stgrl.learner.actor import start_learner_group
        from stgrl.rollout.video import VideoCache

        self.processor = AutoProcessor.from_pretrained(self.model_path)
        self.cache = VideoCache(capacity=4096)
        self.learners = start_learner_group(self.cfg.sft.num_ranks, self.model_path, sft_learner_config(self.cfg),
                                            self.cfg.run.seed)

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

    def _call(self, method: str, examples: list[dict]) -> list[Any]:
        import ray

        from stgrl.learner.batch import SFTBatch, even_split

        shards = even_split(examples, len(self.learners))
        return ray.get([getattr(r, method).remote(SFTBatch(examples=s)) for r, s in zip(self.learners, shards)])

    def eval_loss(self) -> float:
        """Held-out target-token loss (mean over ranks' shards, weighted equally)."""
        examples = self._examples(self.eval_records)
        losses: list[float] = []
        for i in range(0, len(examples), self.cfg.sft.batch_size * len(self.learners)):
            chunk = examples[i: i + self.cfg.sft.batch_size * len(self.learners)]
            losses += [float(x) for x in self._call("eval_sft_loss", chunk)]
        return sum(losses) / max(1, len(losses))

    def run(self, sink: Any, progress: Any = None) -> dict[str, float]:
        cfg = self.cfg
        per_step = cfg.sft.batch_size * len(self.learners)
        first_eval = self.eval_loss()
        sink.log(0, {"sft/eval_loss": first_eval})
        log.info("SFT held-out loss before training: %.4f", first_eval)
        last: dict[str, float] = {}
        for step in range(cfg.sft.steps):
            t0 = time.perf_counter()
            records = prompts_for_step(self.train_records, step, per_step, cfg.run.seed)
            examples = self._examples(records)
            t_data = time.perf_counter() - t0
            results = self._call("train_sft_batch", examples)
            metrics = {f"sft/{k}": sum(r[k] for r in results) / len(results) for k in results[0]
                       if isinstance(results[0][k], (int, float))}
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
        import ray

        ray.get(self.learners[0].export_hf.remote(str(out_dir)))
        return out_dir

    def close(self) -> None:
        import ray

        for h in self.learners:
            try:
                ray.kill(h)
            except Exception:
                pass
