"""Checkpoint bookkeeping around DeepSpeed's own state: per-rank RNG, run state, the `latest` marker.

Layout under a checkpoint root::

    root/latest                 tag of the newest COMPLETE checkpoint (written last, atomically)
    root/<tag>/...              DeepSpeed engine + optimizer + scheduler state (every rank)
    root/<tag>/rng_rank<r>.pt   RNG states of rank r (DeepSpeed saves none; exact resume needs them)
    root/<tag>/run_state.json   orchestrator state: step, data cursor, curriculum, policy version
    root/<tag>/hf/              HF export (save_pretrained of model + processor)

Because `latest` moves only after every file exists, a crash mid-save resumes from the previous one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

LATEST = "latest"


def checkpoint_tag(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` optimizer/training steps."""
    return f"step_{step:08d}"


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA when present) generator states of this process."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(tag_dir: Path, rank: int) -> None:
    torch.save(capture_rng_state(), tag_dir / f"rng_rank{rank}.pt")


def load_rng(tag_dir: Path, rank: int) -> None:
    # our own file; numpy's state tuple needs the full unpickler
    restore_rng_state(torch.load(tag_dir / f"rng_rank{rank}.pt", weights_only=False))  # noqa: S614


def write_run_state(tag_dir: Path, run_state: dict[str, Any]) -> None:
    (tag_dir / "run_state.json").write_bytes(msgspec.json.encode(run_state))


def read_run_state(tag_dir: Path) -> dict[str, Any]:
    return msgspec.json.decode((tag_dir / "run_state.json").read_bytes())


def mark_latest(root: Path, tag: str) -> None:
    """Point ``root/latest`` at ``tag`` with an atomic rename."""
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(tag)
    os.replace(tmp, root / LATEST)


def latest_tag(root: Path) -> str | None:
    """Tag of the newest complete checkpoint under ``root``, or None when there is none."""
    marker = Path(root) / LATEST
    return marker.read_text().strip() if marker.exists() else None
