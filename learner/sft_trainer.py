"""The cold-start SFT loop (docs/design.md §5) over any learner with the LearnerGroup interface.

Data comes in through one small callable, ``train_batch(step) -> list[example]``: the data cursor is
the step itself, so a resumed run asks for exactly the batches an uninterrupted one would have
(examples as built by ``stgrl.rollout.video.prepare_sft_example`` or
:func:`stgrl.learner.sft.make_sft_example`). Held-out loss every ``eval_every`` steps and at the end;
checkpoints (``stgrl.learner.checkpoint``: DeepSpeed state, per-rank RNG, run state) every
``checkpoint_every`` steps and at the end; HF export (model + processor) at ``out_dir/hf`` for the RL
stage to load. ``stgrl sft`` (``stgrl.orchestration.stages``) is this loop with a real batch builder,
the metrics sink and the progress display fed through ``on_step``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec

from stgrl.learner.checkpoint import latest_tag, read_run_state
from stgrl.learner.config import SFTConfig

logger = logging.getLogger(__name__)

Example = dict[str, Any]

OnStep = Callable[[int, dict[str, float], "float | None"], None]
"""``on_step(done, metrics, eval_loss)``: called after each finished step (``done`` 1-based) with its
training metrics (the learner's plus ``step_time_s`` and ``data_time_s``) and the held-out loss when
that step evaluated (else None); before a fresh run's first step once as ``on_step(0, {}, loss)``
with the held-out loss of the starting weights. It runs before the step's checkpoint is written, so
a run killed in between redoes the step on resume (what the caller logged after the checkpoint's step
is the caller's to drop)."""


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


def checkpointed_step(out_dir: str | Path) -> int | None:
    """Finished steps of the newest complete SFT checkpoint under ``out_dir/checkpoints`` (None: none),
    read from its run state without loading anything: callers check a resume before starting ranks."""
    root = Path(out_dir) / "checkpoints"
    tag = latest_tag(root)
    if tag is None:
        return None
    return int(read_run_state(root / tag)["step"])


def run_sft(
    learner: SFTLearner,
    train_batch: Callable[[int], Sequence[Example]],
    eval_examples: Sequence[Example],
    cfg: SFTConfig,
    out_dir: str | Path,
    resume: bool = True,
    stop_after: int | None = None,
    on_step: OnStep | None = None,
) -> SFTResult:
    """Train ``cfg.steps`` SFT steps, resuming from ``out_dir/checkpoints`` when ``resume`` and it holds
    one (``resume=False`` starts from the learner's current weights whatever is on disk).

    ``stop_after``: end early after that many total steps (checkpointing there) — how tests and
    preemptions interrupt a run. ``eval_examples`` are held out (the caller takes ``cfg.eval_samples``).
    ``on_step``: see :data:`OnStep`.
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
        logger.info("SFT held-out loss before training: %.4f", evals[-1][1])
        if on_step is not None:
            on_step(0, {}, evals[-1][1])
    for step in range(start, end):
        t0 = time.perf_counter()
        batch = train_batch(step)
        t_data = time.perf_counter() - t0
        metrics = dict(learner.train_sft_batch(batch))
        metrics["step_time_s"] = time.perf_counter() - t0
        metrics["data_time_s"] = t_data
        done = step + 1
        eval_loss = None
        if eval_examples and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            eval_loss = learner.eval_sft_loss(eval_examples)
            evals.append((done, eval_loss))
            logger.info("SFT step %d: train loss %.4f, held-out loss %.4f", done, metrics["sft_loss"], eval_loss)
        if on_step is not None:
            on_step(done, dict(metrics), eval_loss)
        metrics["step"] = float(done)
        history.append(metrics)
        if checkpoint_due(done, cfg.checkpoint_every, end):
            learner.save_checkpoint(ckpt_root, {"step": done, "stage": "sft"})
    hf_dir = out / "hf"
    if end == cfg.steps:
        learner.export_hf(hf_dir)
    return SFTResult(history=history, eval_losses=evals, hf_dir=str(hf_dir), resumed_from=start)
