"""The reward payloads that cross the data plane: ground truth, completions to score, and scores.

Why here and not in `stgrl.reward_service`: the wire schema (`stgrl.transport.wire`) carries them in
trajectory groups and reward requests, and transport imports nothing above it. The reward service
re-exports them from `stgrl.reward_service.types`, its pure API. One definition, so the offline CLI,
the shards, the rollout workers and the trainer cannot drift apart. New fields only ever go at the
end (positional msgpack encoding of `array_like` Structs stays compatible).
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

__all__ = ["Box", "KeyFrame", "Score", "ScoringGroup", "ScoringSample", "completion_id"]

Box = list[float]
"""`[x1, y1, x2, y2]`."""


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


def completion_id(group_id: str, index: int) -> str:
    """The id of completion ``index`` of a group: unique per completion, stable across re-sends."""
    return f"{group_id}#{index}"


class ScoringGroup(Struct, kw_only=True):
    """The G completions of one prompt with their ground truth once (not G times).

    ``truth`` is the prompt's ground truth (its ``id`` and ``completion`` are ignored); completion
    ``i`` is scored as the sample ``completion_id(id, i)``. A group of G completions costs one copy
    of the key-item boxes on the wire instead of G.
    """

    id: str
    truth: ScoringSample
    completions: list[str]

    def samples(self) -> list[ScoringSample]:
        """One ScoringSample per completion, ids ``completion_id(id, i)`` (what the shard scores)."""
        return [msgspec.structs.replace(self.truth, id=completion_id(self.id, i), completion=text)
                for i, text in enumerate(self.completions)]
