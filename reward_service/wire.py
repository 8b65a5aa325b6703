"""The reward shard's socket, on the shared data plane: its framing, its bounds, and nothing else.

Client (DEALER) → shard (ROUTER): ``[request_id, *encode(RewardRequest)]``; shard → client:
``[request_id, *encode(RewardResult | Reject)]``. The schema, the typed decoder and its errors are
`stgrl.transport.wire`'s; the sockets are `stgrl.transport.endpoints`' (the same heartbeats, size
guard, CURVE decision and handshake watch as every other data-plane socket). The request id is its
own 8-byte frame, first, so that even a header that fails to decode can be answered by id. Nothing
is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from stgrl.transport import wire
from stgrl.transport.config import TransportConfig

__all__ = [
    "MAX_MESSAGE_MIB",
    "QUEUED_PER_CONNECTION",
    "REPLY_TYPES",
    "decode_reply",
    "decode_request",
    "frames",
    "pack_id",
    "socket_config",
    "unpack_id",
]

MAX_MESSAGE_MIB = 64
"""A reward message's header is refused above this (a batch of 32 completions is ~100 KB); libzmq's
own guard (`endpoints`) drops messages above twice that before they are read."""
QUEUED_PER_CONNECTION = 16
"""Messages libzmq queues per connection before it stops reading from it: with `MAX_MESSAGE_MIB`
that bounds a connection's queued bytes to ~2 GiB at the very worst (the client keeps at most
``max_in_flight_per_shard`` = 2 requests in flight per shard, so it never gets near)."""

REPLY_TYPES = wire.RewardResult | wire.Reject


def socket_config(cfg: TransportConfig) -> TransportConfig:
    """The run's transport options with the reward socket's own, tighter bounds.

    Everything else (bind host, CURVE mode, heartbeats) is the run's, so a shard is secured and
    watched exactly like the trajectory and weight sockets."""
    mib = min(cfg.max_frame_mib, MAX_MESSAGE_MIB)
    fields = msgspec.structs.asdict(cfg)
    fields.update(max_frame_mib=mib, weight_bucket_mib=min(cfg.weight_bucket_mib, mib),
                  high_water_mark=min(cfg.high_water_mark, QUEUED_PER_CONNECTION))
    return TransportConfig(**fields)


def pack_id(request_id: int) -> bytes:
    return request_id.to_bytes(8, "big")


def unpack_id(frame: Any) -> int | None:
    """The request id of a frame, None if the frame is not 8 bytes."""
    raw = bytes(getattr(frame, "buffer", frame))
    return int.from_bytes(raw, "big") if len(raw) == 8 else None


def frames(request_id: bytes, msg: msgspec.Struct) -> list[Any]:
    """``[request_id, *encode(msg)]``, ready for ``send_multipart``."""
    return [request_id, *wire.encode(msg)]


def decode_request(message: Sequence[Any], cfg: TransportConfig) -> wire.RewardRequest:
    """The request in ``message`` (the frames after the id); `wire.WireError` if malformed."""
    req, _ = wire.decode(message, wire.RewardRequest, max_frame_bytes=cfg.max_frame_bytes, max_tensors=0)
    return req


def decode_reply(message: Sequence[Any], cfg: TransportConfig) -> wire.RewardResult | wire.Reject:
    """The reply in ``message`` (the frames after the id); `wire.WireError` if malformed."""
    reply, _ = wire.decode(message, REPLY_TYPES, max_frame_bytes=cfg.max_frame_bytes, max_tensors=0)
    return reply
