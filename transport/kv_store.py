"""A small key-value store served over an authenticated ZeroMQ socket: what torch.distributed's
rendezvous runs on in place of its own `TCPStore`.

Why not `TCPStore`: it has no authentication and even a call that lists every key, so anyone who
can reach its port (any local user on one machine, any pod in the cluster network) can read, write
and delete the rendezvous keys of a running learner group. This store is always a CURVE server (the
learner group's own key pair, sent to the ranks over Ray's authenticated control plane, never to
disk): a peer without the pair fails the handshake and never gets a byte read or written.

Protocol: one `KVRequest` → one `KVReply` (request id echoed), msgpack, typed decoders. Blocking
reads (`get`, `wait`) are the client's polling, so the server never holds a request and one
serving thread suffices. Bounded: key and value sizes, key count and total bytes; anything over a
bound, malformed or failing is answered with an error and the server keeps serving.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
import zmq

from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ClientSocket, PeerRefused, ServerSocket
from stgrl.transport.security import CurveKeys

__all__ = ["KVClient", "KVError", "KVServer", "MAX_KEY_BYTES", "MAX_KEYS", "MAX_VALUE_BYTES"]

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20
"""Rendezvous values are addresses and NCCL unique ids (hundreds of bytes); 1 MiB is generous."""
MAX_KEYS = 100_000
MAX_TOTAL_BYTES = 256 << 20
MAX_REQUEST_KEYS = 4096
_POLL_S = 0.005

Key = Annotated[bytes, msgspec.Meta(max_length=MAX_KEY_BYTES)]
Value = Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]


class KVError(RuntimeError):
    """The store refused a request (over a bound, malformed) or could not be reached in time."""


class KVRequest(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    rid: int
    op: Literal["set", "get", "add", "check", "compare_set", "delete", "num_keys"]
    keys: Annotated[list[Key], msgspec.Meta(max_length=MAX_REQUEST_KEYS)] = []
    value: Value = b""
    expected: Value = b""
    amount: int = 0


class KVReply(msgspec.Struct, array_like=True):
    rid: int
    ok: bool = True
    value: bytes | None = None
    number: int = 0
    error: str = ""


class _RequestId(msgspec.Struct, array_like=True):
    """Only the id of a request (later fields ignored): lets a refusal reach the right waiter."""

    rid: int


_REQUEST = msgspec.msgpack.Decoder(KVRequest)
_REQUEST_ID = msgspec.msgpack.Decoder(_RequestId)
_REPLY = msgspec.msgpack.Decoder(KVReply)
_ENCODER = msgspec.msgpack.Encoder()


def _forced_curve(cfg: TransportConfig) -> TransportConfig:
    """The store is always CURVE, whatever `transport.curve` says for the data plane."""
    return msgspec.structs.replace(cfg, curve="on")


class KVServer:
    """Serves the store on ``cfg.bind_host:port`` from one thread; only holders of ``keys`` connect."""

    def __init__(self, cfg: TransportConfig, keys: CurveKeys, port: int = 0) -> None:
        self._sock = ServerSocket(_forced_curve(cfg), keys, port=port)
        self.address = self._sock.address
        self.port = self._sock.port
        self._data: dict[bytes, bytes] = {}
        self._bytes = 0
        self.refused = 0
        """Requests answered with an error (malformed, over a bound): for tests and operators."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kv-store", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock = self._sock.sock
        while not self._stop.is_set():
            try:
                if not sock.poll(50):
                    continue
                frames = sock.recv_multipart(copy=True)
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise
            if len(frames) != 2:
                self.refused += 1
                continue  # not our protocol; nothing to answer to
            identity, body = frames
            reply = self._answer(body)
            try:
                sock.send_multipart([identity, _ENCODER.encode(reply)])
            except zmq.ZMQError:
                pass  # the peer left; its client times out or retries

    def _answer(self, body: bytes) -> KVReply:
        try:
            req = _REQUEST.decode(body)
        except msgspec.DecodeError as e:
            self.refused += 1
            try:
                rid = _REQUEST_ID.decode(body).rid
            except msgspec.DecodeError:
                rid = -1
            return KVReply(rid=rid, ok=False, error=f"malformed store request: {e}")
        try:
            return self._apply(req)
        except KVError as e:
            self.refused += 1
            return KVReply(rid=req.rid, ok=False, error=str(e))
        except Exception as e:  # a handler bug must not end the serving loop
            self.refused += 1
            log.warning("store request %s failed: %s: %s", req.op, type(e).__name__, e)
            return KVReply(rid=req.rid, ok=False, error=f"store request {req.op} failed: {type(e).__name__}")

    def _put(self, key: bytes, value: bytes) -> None:
        old = self._data.get(key)
        grow = len(value) + len(key) - (0 if old is None else len(old) + len(key))
        if old is None and len(self._data) >= MAX_KEYS:
            raise KVError(f"store holds {MAX_KEYS} keys already")
        if self._bytes + grow > MAX_TOTAL_BYTES:
            raise KVError(f"store would exceed {MAX_TOTAL_BYTES >> 20} MiB")
        self._data[key] = value
        self._bytes += grow

    def _apply(self, req: KVRequest) -> KVReply:
        op, data = req.op, self._data
        if op == "num_keys":
            return KVReply(rid=req.rid, number=len(data))
        if op == "check":
            return KVReply(rid=req.rid, number=int(all(k in data for k in req.keys)))
        if len(req.keys) != 1:
            raise KVError(f"store request {op} needs exactly one key, got {len(req.keys)}")
        key = req.keys[0]
        if op == "set":
            self._put(key, req.value)
            return KVReply(rid=req.rid)
        if op == "get":
            return KVReply(rid=req.rid, value=data.get(key))
        if op == "add":
            try:
                current = int(data.get(key, b"0"))
            except ValueError:
                raise KVError("store add on a key that does not hold an integer") from None
            new = current + req.amount
            self._put(key, str(new).encode())
            return KVReply(rid=req.rid, number=new)
        if op == "compare_set":
            current = data.get(key)
            # torch's semantics: an absent key matches an empty `expected`; the reply is the value now held
            if (current is None and req.expected == b"") or current == req.expected:
                self._put(key, req.value)
                return KVReply(rid=req.rid, value=req.value)
            return KVReply(rid=req.rid, value=req.expected if current is None else current)
        if op == "delete":
            old = data.pop(key, None)
            if old is not None:
                self._bytes -= len(old) + len(key)
            return KVReply(rid=req.rid, number=int(old is not None))
        raise KVError(f"unknown store request {op!r}")  # unreachable: the decoder checks `op`

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


class KVClient:
    """One connection to a `KVServer`; thread-safe (torch may call its store from several threads)."""

    def __init__(self, address: str, cfg: TransportConfig, keys: CurveKeys, timeout_s: float = 300.0) -> None:
        self._sock = ClientSocket(address, _forced_curve(cfg), keys, server_public=keys.public)
        self.address = address
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._rids = itertools.count()

    def request(self, op: str, keys: Sequence[bytes] = (), *, value: bytes = b"", expected: bytes = b"",
                amount: int = 0, timeout_s: float | None = None) -> KVReply:
        """Send one request and wait for its reply; raises `KVError` on a refusal or a timeout."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            rid = next(self._rids)
            msg = KVRequest(rid=rid, op=op, keys=list(keys), value=value, expected=expected, amount=amount)
            self._sock.sock.send(_ENCODER.encode(msg))
            deadline = time.monotonic() + limit
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KVError(str(self._sock.timeout(f"reply to store request {op}", limit)))
                if not self._sock.sock.poll(int(min(left, 0.5) * 1000) + 1):
                    try:
                        self._sock.check_handshake()
                    except PeerRefused as e:
                        raise KVError(f"the store refused us: {e}") from None
                    continue
                try:
                    reply = _REPLY.decode(self._sock.sock.recv())
                except msgspec.DecodeError as e:
                    raise KVError(f"malformed reply from the store at {self.address}: {e}") from None
                if reply.rid != rid:
                    continue  # a late reply to an earlier, timed-out request
                if not reply.ok:
                    raise KVError(f"store at {self.address} refused {op}: {reply.error}")
                return reply

    def wait_for(self, keys: list[bytes], timeout_s: float) -> None:
        """Poll until every key exists; `KVError` naming the missing keys after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.request("check", keys, timeout_s=max(0.1, deadline - time.monotonic())).number:
            if time.monotonic() > deadline:
                shown = ", ".join(k.decode(errors="replace") for k in keys[:3])
                raise KVError(f"store keys [{shown}] not set within {timeout_s:.0f}s "
                              "(a peer rank did not come up?)")
            time.sleep(_POLL_S)

    def close(self) -> None:
        self._sock.close()
