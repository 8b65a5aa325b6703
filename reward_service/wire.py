"""Wire format of the reward service (ZeroMQ frames + msgspec msgpack), in one place.

Client (DEALER) → shard (ROUTER): `[kind, request_id, body]`; shard → client: `[status, request_id,
body]`. The first frame is one byte so a receiver routes before decoding (and an unknown kind gets a
clear error reply); the request id is its own 8-byte frame so even a body that fails to decode can be
answered by id. Bodies are decoded with typed decoders: a malformed message fails at the boundary.
Nothing is ever unpickled.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from stgrl.reward_service.types import Score, ScoringSample

KIND_SCORE = b"\x01"
STATUS_OK = b"\x00"
STATUS_ERROR = b"\x01"
MAX_MESSAGE_BYTES = 64 << 20
"""Larger messages are dropped by ZeroMQ on receipt (a batch of 32 completions is ~100 KB)."""


class ScoreRequest(Struct, array_like=True, gc=False, kw_only=True):
    """A batch to score. The training step travels with every request, so every shard applies the
    same proximity curriculum without shared state."""

    step: int
    total_steps: int
    samples: list[ScoringSample]


class ScoreReply(Struct, array_like=True, gc=False, kw_only=True):
    """Scores in request order, the shard that computed them and its handling time."""

    shard: int
    scores: list[Score]
    handle_s: float


class ErrorReply(Struct, array_like=True, gc=False, kw_only=True):
    message: str


encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(ScoreRequest)
reply_decoder = msgspec.msgpack.Decoder(ScoreReply)
error_decoder = msgspec.msgpack.Decoder(ErrorReply)


def pack_id(request_id: int) -> bytes:
    return request_id.to_bytes(8, "big")


def unpack_id(frame: bytes) -> int | None:
    """The request id of a frame, None if the frame is not 8 bytes."""
    return int.from_bytes(frame, "big") if len(frame) == 8 else None
