"""What a reward request and its answer look like (docs/design.md §3, "Reward service contract").

These Structs are both the pure API (`score_sample`) and the wire schema of the sharded service:
one definition, so the offline CLI, the shards and the trainer cannot drift apart. New fields only
ever go at the end (positional msgpack encoding of `array_like` Structs stays compatible).
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

Box = list[float]
"""`[x1, y1, x2, y2]`."""

COMPONENTS: tuple[str, ...] = (
    "format",
    "answer_accuracy",
    "answer_tiou",
    "answer_viou",
    "think_temporal_segment",
    "temporal_proximity",
    "spatial_gated",
)
"""Every reward component name, in the order the design lists them."""

TASKS: tuple[str, ...] = ("spatio_temporal", "temporal", "spatial", "general")


class KeyFrame(Struct, frozen=True):
    """A ground-truth key frame: its index (key of `key_items`) and its true time in seconds."""

    idx: int
    time: float


class ScoringSample(Struct, kw_only=True):
    """One completion plus the ground truth its reward needs.

    `key_items` boxes are normalized `[x1, y1, x2, y2]` keyed by `str(key_frame.idx)` then object
    name; boxes written in the completion are absolute pixels of the resized frame, whose size is
    `frame_size = [W, H]`.
    """

    id: str
    task: str
    completion: str
    frame_size: list[float]
    answer: str = ""
    options: list[str] | None = None
    key_frames: list[KeyFrame] = msgspec.field(default_factory=list)
    key_items: dict[str, dict[str, list[Box]]] = msgspec.field(default_factory=dict)
    span: list[float] | None = None


class Score(Struct, kw_only=True):
    """The reward of one sample: weighted total and each component that applies to its task.

    `error` is set (and `total` is 0) when the sample itself is invalid, e.g. an unknown task.
    """

    id: str
    total: float
    components: dict[str, float] = msgspec.field(default_factory=dict)
    error: str | None = None
