"""Socket creation for the reward service, in one function so security (CurveZMQ, docs/design.md §6) is applied
at one place. Shards bind to loopback by default; binding anywhere else requires the run's CURVE keys
(`stgrl.transport.security`): the shard becomes an authenticated CURVE server and clients must present
the run's key pair."""

from __future__ import annotations

import logging

import zmq

from stgrl.reward_service.wire import MAX_MESSAGE_BYTES
from stgrl.transport.advertise import endpoint
from stgrl.transport.security import CurveKeys, CurveServer, apply_client, is_loopback

DEFAULT_HOST = "127.0.0.1"

log = logging.getLogger(__name__)


def create_socket(ctx: zmq.Context, socket_type: int, *, bind_host: str | None = None,
                  connect: str | None = None, high_water_mark: int = 1000,
                  curve_server: CurveServer | None = None, curve_keys: CurveKeys | None = None,
                  ) -> tuple[zmq.Socket, str]:
    """A socket that either binds to a random port on `bind_host` or connects to `connect`.

    Security: a bound socket with `curve_server` is a CURVE server (needed off loopback); a connecting
    socket with `curve_keys` is a CURVE client of a server using the same run keys.

    Returns the socket and its endpoint (`tcp://host:port`): for a wildcard bind (`0.0.0.0`) the host is
    this node's address (`stgrl.transport.advertise`), never the wildcard peers cannot connect to. Linger 0: a closing socket drops what it
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
        if curve_server is not None:
            curve_server.apply(sock)
        elif not is_loopback(bind_host):
            # an exposed plaintext socket would let anyone on the network feed or read rewards
            sock.close(0)
            raise ValueError(f"reward shard may bind to {bind_host!r} (not loopback) only with CURVE keys")
        port = sock.bind_to_random_port(f"tcp://{bind_host}")
        return sock, endpoint(bind_host, port)
    assert connect is not None
    if curve_keys is not None:
        apply_client(sock, curve_keys.public, curve_keys)
    sock.connect(connect)
    return sock, connect
