"""Transport options (docs/design.md §6). Pure msgspec: no ZeroMQ at import."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

PosFloat = Annotated[float, Meta(gt=0.0)]
Seconds = Annotated[float, Meta(gt=0.0, le=7 * 86400.0)]
"""A wait: ZeroMQ takes milliseconds as a C int/long, so 1e300 s overflowed at socket creation."""


class TransportConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """ZeroMQ data plane: sizes, timeouts and security."""

    bind_host: str = "127.0.0.1"
    """Interface the data-plane sockets bind to; a non-loopback address turns CURVE on (see `curve`)."""
    curve: Literal["auto", "on", "off"] = "auto"
    """`auto`: CurveZMQ whenever binding to a non-loopback address; `on`: always (tests); `off`: never."""
    weight_bucket_mib: Annotated[int, Meta(ge=1, le=65536)] = 256
    max_frame_mib: Annotated[int, Meta(ge=1, le=65536)] = 1024
    """Frames above this size are rejected on receipt."""
    high_water_mark: Annotated[int, Meta(ge=1, le=1_000_000)] = 64
    timeout_s: Seconds = 60.0
    """Every cross-actor wait gives up after this long with an error naming the peer."""
    resend_after_s: Seconds = 5.0
    """A trajectory group not acknowledged after this long is sent again (at-least-once)."""
    dedup_window: Annotated[int, Meta(ge=1, le=100_000_000)] = 1_000_000
    """How many delivered group ids a receiver remembers to drop duplicates."""
    max_tensors: Annotated[int, Meta(ge=0, le=4096)] = 256
    """Most tensor frames one message may carry; more is rejected before any frame is read."""
    weight_window: Annotated[int, Meta(ge=1, le=64)] = 2
    """Weight buckets requested ahead (in flight); each costs one bucket of transient memory."""
    weight_streams: Annotated[int, Meta(ge=1, le=16)] = 4
    """Serving sockets of one weight publisher, each with its own thread and ZeroMQ I/O thread;
    subscribers spread their bucket requests over all of them, so CURVE encryption and the copy into
    the socket are not one thread's work (docs/design.md §6)."""
    weight_shm: bool = True
    """Publisher keeps its snapshot in /dev/shm; subscribers on the same host copy from it instead of TCP."""
    receive_budget_mib: Annotated[int, Meta(ge=1, le=1 << 20)] = 2048
    """Bytes a trajectory receiver holds in messages read off the network but not yet taken by its
    consumer, across all connections together. Its own thread keeps libzmq's queues drained; a message
    arriving over the budget is dropped unanswered (the sender re-sends it later), one larger than the
    whole budget is rejected. This is what bounds the receiver's memory against many connections."""
    heartbeat_s: Annotated[float, Meta(ge=0.01, le=3600.0)] = 2.0
    """ZeroMQ heartbeat interval; a peer silent for 3 intervals is dropped and reconnected. ZeroMQ takes
    it in whole milliseconds as a C int (hence the bounds: 0 ms would turn heartbeats off)."""

    @property
    def bucket_bytes(self) -> int:
        return self.weight_bucket_mib << 20

    @property
    def max_frame_bytes(self) -> int:
        return self.max_frame_mib << 20

    @property
    def receive_budget_bytes(self) -> int:
        return self.receive_budget_mib << 20

    def __post_init__(self) -> None:
        if self.weight_bucket_mib > self.max_frame_mib:
            raise ValueError(
                f"weight_bucket_mib ({self.weight_bucket_mib}) must not exceed max_frame_mib "
                f"({self.max_frame_mib}): every bucket travels as one frame"
            )
        if self.receive_budget_mib < self.max_frame_mib:
            raise ValueError(
                f"receive_budget_mib ({self.receive_budget_mib}) must be at least max_frame_mib "
                f"({self.max_frame_mib}): a receiver must be able to hold one message of the largest frame"
            )
