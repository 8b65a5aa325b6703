"""The cold-start SFT loop (docs/design.md §5) over any learner with the LearnerGroup interface.

Data comes in through one small callable, ``train_batch(step) -> list[example]``: the data cursor is
the step itself, so a resumed run asks for exactly the batches an uninterrupted one would have
(examples as built by ``stgrl.rollout.video.prepare_sft_example`` or
:func:`stgrl.learner.sft.make_sft_example`). Held-out loss every ``eval_every`` steps and at the end;
checkpoints every ``checkpoint_every`` steps and at the end; HF export (model + processor) at
``out_dir/hf`` for the RL stage to load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from stgrl.learner.checkpoint import latest_tag
from stgrl.learner.config import SFTConfig

logger = logging.getLogger(__name__)

Example = dict[str, Any]


class SFTLearner(Protocol):
    """What the loop needs: :class:`~stgrl.learner.actor.LearnerGroup` and
    :class:`~stgrl.learner.worker.LocalLearner` both provide it."""

    def train_sft_batch(self, examples: Sequence[Example]) -> dict[str, float]: ...
    def eval_sft_loss(self, examples: Sequence[Example]) -> float: ...
    def save_checkpoint(self, root: str | Path, run_state: dict[str, Any]) -> str: ...
    def load_checkpoint(self, root: str | Path) -> dict[str, Any]: ...
    def export_hf(self, out_dir: str | Path) -> None: ...


class SFTResult(msgspec.Struct, kw_only=True):
    """Per-step training metrics, ``(step, held-out loss)`` pairs and where the HF export went."""

    history: list[dict[str, float]]
    eval_losses: list[tuple[int, float]]
    hf_dir: str
    resumed_from: int = 0


def checkpoint_due(step: int, every: int, total: int) -> bool:
    """Checkpoint after ``step`` (1-based count of finished steps)? Every ``every`` steps, and at the end."""
    return step == total or (every > 0 and step % every == 0)


def run_sft(
    learner: SFTLearner,
    train_batch: Callable[[int], Sequence[Example]],
    eval_examples: Sequence[Example],
    cfg: SFTConfig,
    out_dir: str | Path,
    checkpoint_every: int = 0,
    resume: bool = True,
    stop_after: int | None = None,
) -> SFTResult:
    """Train ``cfg.steps`` SFT steps, resuming from ``out_dir/checkpoints`` when it holds one.

    ``stop_after``: end early after that many total steps (checkpointing there) — how tests and
    preemptions interrupt a run. ``eval_examples`` are held out (the caller takes ``cfg.eval_samples``).
    """
    out = Path(out_dir)
    ckpt_root = out / "checkpoints"
    start = 0
    if resume and latest_tag(ckpt_root) is not None:
        state = learner.load_checkpoint(ckpt_root)
        start = int(state["step"])
        logger.info("SFT resumes at step %d from %s", start, ckpt_root)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    history: list[dict[str, float]] = []
    evals: list[tuple[int, float]] = []
    if start == 0 and eval_examples:
        evals.append((0, learner.eval_sft_loss(eval_examples)))
    for step in range(start, end):
        metrics = learner.train_sft_batch(train_batch(step))
        metrics["step"] = float(step + 1)
        history.append(metrics)
        done = step + 1
        if eval_examples and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            evals.append((done, learner.eval_sft_loss(eval_examples)))
            logger.info("SFT step %d: train loss %.4f, held-out loss %.4f", done, metrics["sft_loss"], evals[-1][1])
        if checkpoint_due(done, checkpoint_every, end):
            learner.save_checkpoint(ckpt_root, {"step": done, "stage": "sft"})
    hf_dir = out / "hf"
    if end == cfg.steps:
        learner.export_hf(hf_dir)
    return SFTResult(history=history, eval_losses=evals, hf_dir=str(hf_dir), resumed_from=start)
