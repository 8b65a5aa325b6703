"""Transport options (DESIGN 6). Pure msgspec: no ZeroMQ at import."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

PosFloat = Annotated[float, Meta(gt=0.0)]


class TransportConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """ZeroMQ data plane: sizes, timeouts and security."""

    bind_host: str = "127.0.0.1"
    """Interface the data-plane sockets bind to; a non-loopback address turns CURVE on (see `curve`)."""
    curve: Literal["auto", "on", "off"] = "auto"
    """`auto`: CurveZMQ whenever binding to a non-loopback address; `on`: always (tests); `off`: never."""
    weight_bucket_mib: Annotated[int, Meta(ge=1, le=65536)] = 256
    max_frame_mib: Annotated[int, Meta(ge=1, le=65536)] = 1024
    """Frames above this size are rejected on receipt."""
    high_water_mark: Annotated[int, Meta(ge=1)] = 64
    timeout_s: PosFloat = 60.0
    """Every cross-actor wait gives up after this long with an error naming the peer."""
