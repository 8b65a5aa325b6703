"""Socket creation for the reward service, in one function so security (CurveZMQ, DESIGN 6) plugs in
at one place. Shards bind to loopback by default; binding elsewhere must come with CURVE."""

from __future__ import annotations

import logging

import zmq

from stgrl.reward_service.wire import MAX_MESSAGE_BYTES

DEFAULT_HOST = "127.0.0.1"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

log = logging.getLogger(__name__)


def create_socket(ctx: zmq.Context, socket_type: int, *, bind_host: str | None = None,
                  connect: str | None = None, high_water_mark: int = 1000) -> tuple[zmq.Socket, str]:
    """A socket that either binds to a random port on `bind_host` or connects to `connect`.

    Returns the socket and its endpoint (`tcp://host:port`). Linger 0: a closing socket drops what it
    could not send (the client retries by deadline anyway) instead of blocking shutdown; messages over
    `MAX_MESSAGE_BYTES` are refused on receipt.
    """
    if (bind_host is None) == (connect is None):
        raise ValueError("create_socket needs exactly one of bind_host or connect")
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.SNDHWM, high_water_mark)
    sock.setsockopt(zmq.RCVHWM, high_water_mark)
    if bind_host is not None:
        if bind_host not in LOOPBACK:
            # CurveZMQ is not wired into the reward service yet: an exposed plaintext socket would let
            # anyone on the network feed or read rewards, so refuse rather than warn (DESIGN 6).
            sock.close(0)
            raise ValueError(f"reward shard may only bind to loopback (CurveZMQ is not wired in yet), "
                             f"not {bind_host!r}")
        port = sock.bind_to_random_port(f"tcp://{bind_host}")
        return sock, f"tcp://{bind_host}:{port}"
    assert connect is not None
    sock.connect(connect)
    return sock, connect
