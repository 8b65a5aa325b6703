"""The training record of docs/design.md §2.1 as a validated msgspec Struct.

One record is one question about one video (or one still image for `spatial`). Text fields and lists
have the maxima of `stgrl.rollout.data.limits` (a 100 KB question is refused here). Validation happens
at decode time (`decode_record`), so a malformed line fails at the file boundary with a message that
names the field, never deep inside a trainer.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from stgrl.explain import find_invalid
from stgrl.rollout.data import limits as L

Task = Literal["spatio_temporal", "temporal", "spatial", "general"]
TASKS: tuple[str, ...] = ("spatio_temporal", "temporal", "spatial", "general")

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
NormBox = Annotated[list[Unit], Meta(min_length=4, max_length=4)]
"""A normalized `[x1, y1, x2, y2]` box, every coordinate in [0, 1]."""


class KeyFrame(Struct, forbid_unknown_fields=True):
    """A frame that holds evidence: `idx` keys `key_items`, `time` is seconds into the video."""

    idx: Annotated[int, Meta(ge=0)]
    time: Annotated[float, Meta(ge=0.0)]


class Record(Struct, forbid_unknown_fields=True, kw_only=True):
    """One dataset sample (docs/design.md §2.1).

    `box_space` says in which coordinates the boxes written inside `reasoning` (and a spatial
    `answer`) are: ``"pixels"`` = pixels of the frame the model is shown after the processor's
    resize (the synthetic data is generated at that size), ``"normalized"`` = [0, 1] fractions
    (imported STGR reasoning, whose video size is unknown until decode); the SFT target builder
    converts normalized text boxes to resized pixels.
    """

    id: Annotated[str, Meta(max_length=L.MAX_ID_CHARS)]
    task: Task
    question: Annotated[str, Meta(max_length=L.MAX_TEXT_CHARS)]
    answer: Annotated[str, Meta(max_length=L.MAX_TEXT_CHARS)]
    options: Annotated[list[Annotated[str, Meta(max_length=L.MAX_TEXT_CHARS)]], Meta(max_length=L.MAX_OPTIONS)] = []
    video_path: Annotated[str, Meta(max_length=L.MAX_PATH_CHARS)] | None = None
    image_path: Annotated[str, Meta(max_length=L.MAX_PATH_CHARS)] | None = None
    key_frames: Annotated[list[KeyFrame], Meta(max_length=L.MAX_KEY_FRAMES)] = []
    key_items: dict[str, dict[str, list[NormBox]]] = {}
    span: Annotated[list[float], Meta(min_length=2, max_length=2)] | None = None
    reasoning: Annotated[str, Meta(max_length=L.MAX_REASONING_CHARS)] = ""
    box_space: Literal["pixels", "normalized"] = "pixels"
    source: str = ""
    extra_frame_times: list[Annotated[float, Meta(ge=0.0)]] = []
    """Times (s) of frames the video sampler always shows besides its fps grid, each at the native
    frame nearest to it (and labelled with that frame's true time). The STGR import lists the
    annotated key frames here, as the reference splices them into the sampled frames: without them
    the frame whose boxes are the ground truth may never be shown, yet the reward asks for its time."""

    def __post_init__(self) -> None:
        # Cross-field rules; msgspec turns the ValueError into a ValidationError with the message.
        if self.task == "spatial":
            if not (self.image_path or self.video_path):
                raise ValueError("a spatial record needs image_path (or video_path)")
        elif not self.video_path:
            raise ValueError(f"a {self.task} record needs video_path")
        idxs = {str(k.idx) for k in self.key_frames}
        for key, items in self.key_items.items():
            if key not in idxs:
                raise ValueError(f"key_items key {key!r} names no key frame (have {sorted(idxs)})")
            for name, boxes in items.items():
                for b in boxes:
                    if not (b[0] <= b[2] and b[1] <= b[3]):
                        raise ValueError(f"inverted box {b} for {name!r} in key frame {key}")
        if self.span is not None:
            s, e = self.span
            if not (math.isfinite(s) and math.isfinite(e)) or s < 0 or e < s:
                raise ValueError(f"span must be finite with 0 <= start <= end, got {self.span}")
        if self.task == "temporal" and self.span is None:
            raise ValueError("a temporal record needs span")

    @property
    def media_path(self) -> str:
        """The relative path of the video, or of the image for a spatial record."""
        path = self.video_path if self.task != "spatial" or not self.image_path else self.image_path
        assert path is not None
        return path


_DECODER = msgspec.json.Decoder(Record)
_ENCODER = msgspec.json.Encoder()


def decode_record(line: bytes | str) -> Record:
    """Parse and validate one JSON line; raises `msgspec.DecodeError`/`ValidationError`."""
    return _DECODER.decode(line)


class _OutOfRange(float):
    """A JSON number too large for a float (``1e999``): the decoder refuses it, so must we."""

    def __new__(cls, literal: str) -> _OutOfRange:
        obj = super().__new__(cls, math.inf)
        obj.literal = literal
        return obj


def _float_or_out_of_range(literal: str) -> float:
    value = float(literal)
    return value if math.isfinite(value) else _OutOfRange(literal)


def explain_invalid_record(line: bytes | str, err: msgspec.ValidationError) -> str:
    """Our words for a JSON line that parsed but is not a valid record: the field path and what it
    must be (``$.key_frames[0].time: must be a number >= 0.0, got -1.0``), or the cross-field rule of
    `Record.__post_init__` that it breaks."""
    try:
        found = find_invalid(json.loads(line, parse_float=_float_or_out_of_range), Record)
    except RecursionError:
        return "nested too deeply to read"
    except ValueError:
        found = None
    if found is not None:
        return f"{found[0]}: {found[1]}"
    return str(err).split(" - at `$`")[0]  # a __post_init__ rule: the message is its own ValueError's


def encode_record(record: Record) -> bytes:
    """One JSON line (no trailing newline), fields in declaration order: deterministic bytes."""
    return _ENCODER.encode(record)
