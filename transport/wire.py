"""Every message that crosses a ZeroMQ socket, and the one way to encode and decode it (docs/design.md §6).

A message is a multipart ZeroMQ message::

    frame 0      msgpack header: [body, [TensorMeta, ...]]   (body = a tagged Struct below)
    frame 1..N   one raw frame per tensor, in header order (see `stgrl.transport.tensor_frames`)

Why this shape: the header is small and decoded with a decoder *typed for what the socket expects*,
so a wrong type, an unknown tag or an unknown field fails at the boundary with a `WireError`, not
deep inside the trainer; tensors never pass through msgpack (no copy, no pickle). Nothing received
is ever unpickled.

Compatibility: structs are ``array_like`` (positional). New fields only ever go at the end, with a
default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Annotated, Any, Generic, TypeVar, Union, get_type_hints

import msgspec
import torch

from stgrl.explain import find_invalid
from stgrl.transport.scoring import KeyFrame, Score, ScoringGroup, ScoringSample
from stgrl.transport.tensor_frames import FrameError, TensorMeta, tensor_from_frame, tensor_to_frame

__all__ = [
    "Ack",
    "BucketRequest",
    "Completion",
    "KeyFrame",
    "ManifestRequest",
    "Message",
    "NoVersion",
    "Reject",
    "RewardRequest",
    "RewardResult",
    "Score",
    "ScoringGroup",
    "ScoringSample",
    "TensorEntry",
    "TrajectoryGroup",
    "VersionReport",
    "WeightBucket",
    "WeightManifest",
    "WireError",
    "decode",
    "encode",
]


class WireError(ValueError):
    """A received message is malformed; the socket that got it keeps serving.

    ``body`` is the decoded header body when only the tensor frames were wrong (lets a receiver name
    the message it refuses), else None.
    """

    def __init__(self, reason: str, body: Any = None) -> None:
        super().__init__(reason)
        self.body = body


_STRUCT = {"array_like": True, "forbid_unknown_fields": True, "omit_defaults": True}


class _Msg(msgspec.Struct, tag_field="kind", **_STRUCT):
    """Base of every top-level message: tagged by ``kind`` so one socket can route several types."""


# --- trajectories -------------------------------------------------------------------------------


class Completion(msgspec.Struct, **_STRUCT):
    token_ids: list[int]
    behaviour_logprobs: list[float]
    """Log-prob of each token under the engine that sampled it (off-policy correction, docs/design.md §4)."""
    text: str
    finish_reason: str


class TrajectoryGroup(_Msg, tag="trajectory_group"):
    """G completions of one prompt; the prompt's model inputs travel as tensor frames beside it.

    ``group_id`` must be deterministic for (step, prompt), e.g. ``f"{step}/{prompt_id}"``: a
    regenerated group then de-duplicates against the original.
    """

    group_id: str
    prompt_id: str
    step: int
    """Training step the prompt belongs to."""
    policy_version: int
    prompt_len: int
    completions: list[Completion]
    sample: ScoringSample
    """Ground truth for the reward (``completion`` left empty: one sample serves all G completions;
    the reward client fills it per completion with ``msgspec.structs.replace``)."""
    frame_size: list[int]
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    rewards: list[float] | None = None
    reward_components: list[dict[str, float]] | None = None


# --- rewards ------------------------------------------------------------------------------------


class RewardRequest(_Msg, tag="reward_request"):
    """Score ``samples`` and every completion of ``groups`` at training ``step`` (the step travels
    with the request, never a global, so every shard applies the same proximity curriculum).

    A reward shard's socket carries it as ``[request_id, *encode(request)]`` (see
    `stgrl.reward_service.wire`): the id frame comes first so that even a header that fails to
    decode gets its error answered by id.
    """

    step: int
    total_steps: int
    samples: list[ScoringSample] = msgspec.field(default_factory=list)
    groups: list[ScoringGroup] = msgspec.field(default_factory=list)
    """Ground truth once per group; completion ``i`` of group ``g`` is scored as ``g.id#i``."""


class RewardResult(_Msg, tag="reward_result"):
    """Scores in request order (``samples`` first, then each group's completions), the shard that
    computed them and its handling time."""

    shard: int
    scores: list[Score]
    handle_s: float


# --- weights ------------------------------------------------------------------------------------


class TensorEntry(msgspec.Struct, **_STRUCT):
    """Where one tensor lives in a version's byte stream."""

    name: str
    dtype: str
    shape: list[int]
    offset: int
    nbytes: int


class ManifestRequest(_Msg, tag="manifest_request"):
    version: int | None = None
    """None: the latest version."""


class NoVersion(_Msg, tag="no_version"):
    """Answer to a request the publisher cannot serve (nothing published yet, version superseded)."""

    reason: str
    latest: int | None = None


class WeightManifest(_Msg, tag="weight_manifest"):
    """One weight version: a byte stream cut into fixed-size buckets, tensors at aligned offsets."""

    version: int
    total_nbytes: int
    bucket_nbytes: int
    tensors: list[TensorEntry]
    bucket_checksums: list[int]
    """xxh3-64 of each bucket."""
    checksum: int
    """xxh3-64 over the manifest's tensor table and bucket checksums."""
    shm_path: str | None = None
    """Same-host fast path: the snapshot's file in /dev/shm (see `stgrl.transport.shm_snapshot`)."""
    host: str | None = None
    """`shm_snapshot.host_id()` of the publisher; the fast path is tried only on the same host."""
    stream_ports: list[int] = []
    """Ports of the publisher's other serving sockets (same host as the one asked): a subscriber
    spreads its bucket requests over them. Ports only, so a manifest cannot send it elsewhere."""


class BucketRequest(_Msg, tag="bucket_request"):
    version: int
    index: int


class WeightBucket(_Msg, tag="weight_bucket"):
    """Header of one bucket; its bytes follow as the single tensor frame ``"data"`` (uint8)."""

    version: int
    index: int
    nbytes: int
    checksum: int


class VersionReport(_Msg, tag="version_report"):
    """A subscriber tells the publisher which version it now runs."""

    subscriber_id: Annotated[str, msgspec.Meta(max_length=128)]
    version: int


# --- acks -----------------------------------------------------------------------------------------


class Ack(_Msg, tag="ack"):
    ids: list[str]


class Reject(_Msg, tag="reject"):
    """The receiver refused a message; ``reason`` says why, ``ids`` which messages when known."""

    reason: str
    ids: list[str] = msgspec.field(default_factory=list)


Message = Union[
    TrajectoryGroup, RewardRequest, RewardResult, ManifestRequest, NoVersion, WeightManifest,
    BucketRequest, WeightBucket, VersionReport, Ack, Reject,
]
"""Any top-level message (decode with this when a socket serves several kinds)."""

T = TypeVar("T")


class _Envelope(msgspec.Struct, Generic[T], array_like=True, forbid_unknown_fields=True):
    body: T
    tensors: list[TensorMeta]


_ENCODER = msgspec.msgpack.Encoder()


@lru_cache(maxsize=64)
def _decoder(expected_type: Any) -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(_Envelope[expected_type])


def encode(msg: msgspec.Struct, tensors: Mapping[str, torch.Tensor] | None = None) -> list[bytes | memoryview]:
    """Frames for ``send_multipart(frames, copy=False)``: header, then one zero-copy view per tensor.

    The tensors must stay unmodified until the message is sent (the views alias them).
    """
    metas: list[TensorMeta] = []
    frames: list[bytes | memoryview] = [b""]
    for name, tensor in (tensors or {}).items():
        meta, view = tensor_to_frame(name, tensor)
        metas.append(meta)
        frames.append(view)
    frames[0] = _ENCODER.encode(_Envelope(msg, metas))
    return frames


def decode(
    frames: Sequence[Any],
    expected_type: Any,
    *,
    max_frame_bytes: int,
    max_tensors: int = 256,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Typed decode of ``frames`` (zmq.Frame, bytes or memoryview) into ``(msg, tensors)``.

    ``expected_type`` is one message class or a ``Union`` of them. Tensors alias the received frames
    (no copy). Raises `WireError` with the reason on any mismatch: wrong type or tag, unknown field,
    frame count differing from the header, duplicate names, bad dtype/shape, a frame over
    ``max_frame_bytes``.
    """
    if not frames:
        raise WireError("empty message")
    header = frames[0]
    header_buf = getattr(header, "buffer", None)
    header_buf = header_buf if header_buf is not None else memoryview(header)
    if header_buf.nbytes > max_frame_bytes:
        raise WireError(f"header frame of {header_buf.nbytes} bytes exceeds the limit of {max_frame_bytes}")
    try:
        env = _decoder(expected_type).decode(header_buf)
    except (msgspec.DecodeError, ValueError):  # ValueError: e.g. invalid UTF-8 in a str (fuzz-found)
        raise WireError(f"bad header (expected {_type_name(expected_type)}): "
                        f"{_explain_header(header_buf, expected_type)}") from None
    except RecursionError:  # nesting deeper than the interpreter's stack, e.g. under an ignored field
        raise WireError(f"bad header (expected {_type_name(expected_type)}): nested too deeply") from None
    if len(env.tensors) > max_tensors:
        raise WireError(f"{len(env.tensors)} tensors exceed the limit of {max_tensors}", env.body)
    if len(frames) != 1 + len(env.tensors):
        raise WireError(f"header lists {len(env.tensors)} tensors but {len(frames) - 1} tensor frames arrived",
                        env.body)
    tensors: dict[str, torch.Tensor] = {}
    for meta, frame in zip(env.tensors, frames[1:]):
        if meta.name in tensors:
            raise WireError(f"duplicate tensor name {meta.name!r}", env.body)
        try:
            tensors[meta.name] = tensor_from_frame(meta, frame, max_frame_bytes)
        except FrameError as err:
            raise WireError(str(err), env.body) from None
    return env.body, tensors


def _explain_header(header: memoryview, expected_type: Any) -> str:
    """Our words for a header the typed decoder refused: not msgpack, not ``[body, tensors]``, an
    unknown kind, a kind this socket does not take, or the field at fault. Never raises: whatever
    cannot be explained is "malformed"."""
    try:
        return _explain_header_unchecked(header, expected_type)
    except Exception:  # noqa: BLE001 - an explanation must not become a second failure (fuzz input)
        return "malformed header"


def _explain_header_unchecked(header: memoryview, expected_type: Any) -> str:
    try:
        raw = msgspec.msgpack.decode(header)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return "not a msgpack document"
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], list) and raw[0]):
        return "not a [body, tensors] pair"
    kind, *values = raw[0]
    expected = getattr(expected_type, "__args__", None) or (expected_type,)
    by_tag = {cls.__struct_config__.tag: cls for cls in expected}
    if kind not in by_tag:
        known = {cls.__struct_config__.tag for cls in _Msg.__subclasses__()}
        what = "unknown message kind" if kind not in known else "message kind not taken here"
        return f"{what} {kind!r} (this socket takes {', '.join(map(repr, by_tag))})"
    cls = by_tag[kind]
    fields = msgspec.structs.fields(cls)
    if len(values) > len(fields):
        return f"{kind!r} has {len(values)} fields, at most {len(fields)} are known"
    hints = get_type_hints(cls, include_extras=True)
    for f, value in zip(fields, values):
        found = find_invalid(value, hints[f.name], path=f.name)
        if found is not None:
            return f"{kind!r} field {found[0]}: {found[1]}"
    found = find_invalid(raw[1], list[TensorMeta], path="tensors")
    return f"{found[0]}: {found[1]}" if found else "a field fails its own check"


def _type_name(tp: Any) -> str:
    args = getattr(tp, "__args__", None)
    if args:
        return " | ".join(a.__name__ for a in args)
    return getattr(tp, "__name__", repr(tp))
