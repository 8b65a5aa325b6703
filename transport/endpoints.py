"""Socket set-up shared by the channels: bind/connect with limits, CURVE and a handshake watch.

Why one place: every data-plane socket must get the same high-water marks, heartbeats, size guard and
security decision (`needs_curve`), and every wait must end in an error that names the peer and, when
the handshake failed, says so (a refused CURVE handshake is otherwise just silence).
"""

from __future__ import annotations

import logging

import zmq
from zmq.utils.monitor import parse_monitor_message

from stgrl.transport.advertise import advertised_host
from stgrl.transport.config import TransportConfig
from stgrl.transport.security import CurveKeys, CurveServer, apply_client, needs_curve

__all__ = ["ClientSocket", "PeerRefused", "ServerSocket", "TransportTimeout"]

log = logging.getLogger(__name__)



# ZeroMQ's handshake-failure events, in our words (the user sees these, not the library's names).
_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the peer rejected our CURVE credentials",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the two sides disagree on the security protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
}

class TransportTimeout(TimeoutError):
    """A wait on a peer ran out; the message names the peer and what was awaited."""


class PeerRefused(ConnectionError):
    """The peer refused our handshake (missing or wrong CURVE key)."""


def _common(sock: zmq.Socket, cfg: TransportConfig) -> None:
    hb_ms = int(cfg.heartbeat_s * 1000)
    sock.linger = 0
    sock.sndhwm = cfg.high_water_mark
    sock.rcvhwm = cfg.high_water_mark
    sock.heartbeat_ivl = hb_ms
    sock.heartbeat_timeout = 3 * hb_ms
    # libzmq hard guard far above our own per-frame check, so normal oversize frames reach `decode`
    # (clear error, socket keeps serving) while absurd ones cannot exhaust memory.
    sock.maxmsgsize = 2 * cfg.max_frame_bytes + (1 << 20)


class ServerSocket:
    """A bound socket (ROUTER by default) with its own context and, when needed, CURVE + ZAP.

    ``address`` is what clients connect to. ``port=0`` picks a free port; a fixed port lets a
    restarted server come back where its clients reconnect by themselves.
    """

    def __init__(
        self,
        cfg: TransportConfig,
        keys: CurveKeys | None,
        *,
        port: int = 0,
        sock_type: int = zmq.ROUTER,
        advertise_host: str | None = None,
        io_threads: int = 1,
    ) -> None:
        self.ctx = zmq.Context(io_threads=io_threads)
        self.curve = needs_curve(cfg.bind_host, cfg.curve)
        self._curve_server: CurveServer | None = None
        self.sock = self.ctx.socket(sock_type)
        try:
            _common(self.sock, cfg)
            if sock_type == zmq.ROUTER:
                self.sock.router_mandatory = True  # a reply to a vanished peer raises, not vanishes
            if self.curve:
                if keys is None:
                    raise ValueError(f"CURVE is required for bind host {cfg.bind_host!r} "
                                     f"(curve={cfg.curve}) but no keys were given")
                self._curve_server = CurveServer(self.ctx, keys)
                self._curve_server.apply(self.sock)
            base = f"tcp://{cfg.bind_host}"
            if port:
                self.sock.bind(f"{base}:{port}")
                self.port = port
            else:
                self.port = self.sock.bind_to_random_port(base)
        except Exception:
            self.close()
            raise
        host = advertise_host or advertised_host(cfg.bind_host)
        self.address = f"tcp://{host}:{self.port}"

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._curve_server is not None:
            self._curve_server.stop()
        self.ctx.term()


class ClientSocket:
    """A connected socket (DEALER by default) that can explain a silent peer.

    A handshake monitor records CURVE failures so that a timeout reads "refused our handshake" rather
    than plain silence. ``server_public=None`` means a plain (non-CURVE) connection.
    """

    def __init__(
        self,
        address: str,
        cfg: TransportConfig,
        keys: CurveKeys | None,
        *,
        server_public: bytes | None = None,
        sock_type: int = zmq.DEALER,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.address = address
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(sock_type)
        _common(self.sock, cfg)
        if server_public is not None:
            if keys is None:
                raise ValueError(f"connecting to CURVE server {address} needs the run's keys")
            apply_client(self.sock, server_public, keys)
        self._monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.handshake_failure: str | None = None
        self.handshake_ok = False
        self.sock.connect(address)

    def check_handshake(self) -> None:
        """Read pending monitor events; raise `PeerRefused` if the peer refused our handshake."""
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_ok, self.handshake_failure = True, None
            else:
                self.handshake_failure = _HANDSHAKE_FAILURES.get(kind, "the handshake failed")
        if self.handshake_failure and not self.handshake_ok:
            raise PeerRefused(f"{self.address} refused the handshake: {self.handshake_failure} "
                              f"(missing or wrong CURVE key?)")

    def timeout(self, what: str, seconds: float) -> TransportTimeout:
        """The error for a wait that ran out, naming the peer (and a refused handshake if any)."""
        try:
            self.check_handshake()
        except PeerRefused as err:
            return TransportTimeout(f"no {what} from {self.address} within {seconds:.1f}s: {err}")
        hint = "" if self.handshake_ok else " (never connected: peer down, wrong address or CURVE mismatch)"
        return TransportTimeout(f"no {what} from {self.address} within {seconds:.1f}s{hint}")

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()
