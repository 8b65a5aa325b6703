"""CurveZMQ for the data plane (docs/design.md §6): encrypted, authenticated sockets off loopback.

One key pair per run, made by the orchestrator with `generate_keypair` and handed to actors as plain
bytes arguments through Ray. Every server socket uses it as its server key, every client uses it as
its client key, and a ZAP authenticator on the server admits only clients presenting the run's
public key. So a peer needs the run's *secret* key to talk: a client without the server key fails
the handshake, a client with its own key pair is refused by ZAP.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Literal

import msgspec
import zmq
import zmq.auth.thread

__all__ = [
    "CurveKeys",
    "CurveServer",
    "apply_client",
    "generate_keypair",
    "is_loopback",
    "needs_curve",
]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "stgrl"


class CurveKeys(msgspec.Struct, frozen=True):
    """The run's key pair (Z85-encoded, 40 bytes each). Pass it to actors as an argument."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never log the secret
        return f"CurveKeys(public={self.public!r}, secret=<hidden>)"


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh CURVE key pair ``(public, secret)``, Z85-encoded."""
    return zmq.curve_keypair()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs; any other name or address counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_curve(bind_host: str, mode: Literal["auto", "on", "off"]) -> bool:
    """Whether a socket bound to ``bind_host`` must use CURVE: `auto` means off loopback only."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode != "auto":
        raise ValueError(f"curve mode must be auto, on or off, not {mode!r}")
    return not is_loopback(bind_host)


class _RunKeyProvider:
    """ZAP credentials callback: only the run's public key may connect."""

    def __init__(self, allowed: bytes) -> None:
        self._allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key == self._allowed
        if not ok:
            log.warning("refused CURVE client with unknown public key %r (domain %s)", key, domain)
        return ok


class CurveServer:
    """ZAP authenticator for one context; `apply` turns a socket into an authenticated CURVE server.

    One authenticator thread per ``zmq.Context`` (libzmq asks the context's ZAP handler); `stop` it
    before terminating the context.
    """

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        self.keys = keys
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=_RunKeyProvider(keys.public))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server; call before ``bind``."""
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def stop(self) -> None:
        self._auth.stop()


def apply_client(sock: zmq.Socket, server_public: bytes, keys: CurveKeys) -> None:
    """Make ``sock`` a CURVE client of a server with ``server_public``; call before ``connect``."""
    sock.curve_serverkey = server_public
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret
