"""The predictions JSON-lines format the evaluation runner writes and the visualizer reads.

One line per evaluated sample. The record travels inline (``record``) so a predictions file is
self-contained; a runner that prefers small files may leave it out and the visualizer looks the id up
in ``--records``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec


class PredictionLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One evaluated sample.

    - ``completion``: the model's full text (``<think>`` with claims, ``<answer>``).
    - ``frame_times``: the true time (s) of each frame the model was shown, in order.
    - ``frame_size``: ``(W, H)`` of those frames after the processor's resize — the pixel space of the
      boxes the model writes.
    - ``record``: the dataset record (docs/design.md §2.1) or None; ``dataset_dir``: the folder its relative
      ``video_path``/``image_path`` resolve against (default: the predictions file's folder).
    - ``scores``: optional per-component rewards or metrics, shown on the HTML card.
    """

    id: str
    task: str = ""
    completion: str
    frame_times: list[float] = []
    frame_size: tuple[int, int] | None = None
    record: dict[str, Any] | None = None
    dataset_dir: str | None = None
    scores: dict[str, float] = {}


_decoder = msgspec.json.Decoder(PredictionLine)


def read_predictions(path: str | Path) -> Iterator[tuple[int, PredictionLine]]:
    """``(line number, line)`` for each non-empty line; a malformed line raises with its number."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    yield n, _decoder.decode(raw)
                except msgspec.DecodeError as e:
                    raise ValueError(f"{path}:{n}: {e}") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Dataset records (JSON lines) as plain dicts, in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
