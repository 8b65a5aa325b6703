"""Trajectory groups from rollout workers to their consumer: at-least-once, de-duplicated (docs/design.md §6).

Topology: the consumer's `TrajectoryReceiver` binds a ROUTER; each rollout worker's
`TrajectorySender` connects a DEALER. Protocol:

- the sender keeps every group until it is acknowledged and re-sends it after
  ``cfg.resend_after_s``; at most ``cfg.high_water_mark`` groups are unacknowledged at once, so
  `TrajectorySender.send` blocks (up to ``cfg.timeout_s``) when the receiver falls behind;
- the receiver hands each ``group_id`` to the consumer once and drops re-sends of it;
- an ack goes out only when the consumer *commits* the id (`TrajectoryReceiver.commit`, or at once
  with ``auto_commit=True``). A receiver that dies before committing loses nothing: the senders
  re-send. A restarted receiver is told the ids its consumer already holds (``committed_ids`` or
  `commit`) and acks re-sends of them without delivering them again.

Concurrency: each object is used from one thread (ZeroMQ sockets are not thread-safe). A sender only
talks to the network inside `send`/`flush`/`poll`, so a worker should `flush` before going idle. A
receiver keeps its socket in a reading thread of its own, so that what it holds is bounded in bytes
across all connections (`transport.receive_budget_mib`), not per connection as libzmq bounds it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import zmq

from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ClientSocket, ServerSocket, TransportTimeout
from stgrl.transport.security import CurveKeys
from stgrl.transport.wire import Ack, Reject, TrajectoryGroup, WireError, decode, encode

__all__ = ["ReceiverStats", "TrajectoryReceiver", "TrajectorySender"]

log = logging.getLogger(__name__)

_ACK_TYPES = Ack | Reject


@dataclass
class _Pending:
    frames: list
    sent_at: float = 0.0  # 0: never made it onto the socket
    sends: int = 0


class TrajectorySender:
    """Connects to a receiver and delivers groups at least once (re-sending until acknowledged).

    ``server_public`` (the run's public key) turns CURVE on; pass it whenever the receiver uses CURVE.
    """

    def __init__(
        self,
        address: str,
        cfg: TransportConfig,
        keys: CurveKeys | None = None,
        *,
        server_public: bytes | None = None,
    ) -> None:
        self.cfg = cfg
        self._client = ClientSocket(address, cfg, keys, server_public=server_public)
        self._unacked: OrderedDict[str, _Pending] = OrderedDict()
        self.rejected: list[tuple[list[str], str]] = []
        """(ids, reason) of every Reject the receiver sent back."""
        self.resends = 0

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def pending(self) -> int:
        """Groups sent but not yet acknowledged."""
        return len(self._unacked)

    def send(
        self, group: TrajectoryGroup, tensors: Mapping[str, torch.Tensor] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue ``group`` (+ its tensors as frames) for delivery; blocks while the window is full.

        Re-sending a ``group_id`` that is still pending replaces nothing (the first copy wins). The
        tensors must not be modified afterwards: frames alias them until acknowledged.
        Raises `TransportTimeout` naming the receiver if no window opens within ``timeout``.
        """
        limit = self.cfg.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while len(self._unacked) >= self.cfg.high_water_mark:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._client.timeout(f"ack for {len(self._unacked)} pending groups", limit)
            self.poll(min(left, self.cfg.resend_after_s))
        if group.group_id in self._unacked:
            return
        self._unacked[group.group_id] = _Pending(encode(group, tensors))
        self._transmit(group.group_id)
        self.poll(0)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every group is acknowledged; `TransportTimeout` naming the receiver otherwise."""
        limit = self.cfg.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._unacked:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._client.timeout(f"ack for {len(self._unacked)} pending groups", limit)
            self.poll(min(left, self.cfg.resend_after_s / 2))

    def poll(self, wait_s: float = 0.0) -> None:
        """Process acks arriving within ``wait_s`` seconds, then re-send overdue groups."""
        sock = self._client.sock
        if sock.poll(int(wait_s * 1000), zmq.POLLIN):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_reply(frames)
        self._client.check_handshake()
        now = time.monotonic()
        for gid, pending in list(self._unacked.items()):
            if now - pending.sent_at >= self.cfg.resend_after_s:
                self._transmit(gid)

    def _on_reply(self, frames: list) -> None:
        try:
            msg, _ = decode(frames, _ACK_TYPES, max_frame_bytes=self.cfg.max_frame_bytes, max_tensors=0)
        except WireError as err:
            log.error("malformed reply from %s dropped: %s", self.address, err)
            return
        for gid in msg.ids:
            self._unacked.pop(gid, None)
        if isinstance(msg, Reject):
            log.error("receiver %s rejected %s: %s", self.address, msg.ids or "a message", msg.reason)
            self.rejected.append((list(msg.ids), msg.reason))

    def _transmit(self, gid: str) -> None:
        pending = self._unacked[gid]
        try:
            self._client.sock.send_multipart(pending.frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return  # socket queue full or no peer: retried on a later poll
        if pending.sends:
            self.resends += 1
            log.debug("re-sent group %s to %s (attempt %d)", gid, self.address, pending.sends + 1)
        pending.sends += 1
        pending.sent_at = time.monotonic()

    def close(self) -> None:
        """Close without waiting; unacknowledged groups are dropped (call `flush` first)."""
        if self._unacked:
            log.warning("closing sender to %s with %d unacknowledged groups", self.address, len(self._unacked))
        self._client.close()


@dataclass
class ReceiverStats:
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    """Last reasons (bounded)."""
    dropped_over_budget: int = 0
    """Messages dropped unanswered because `transport.receive_budget_mib` was full (senders re-send)."""


_PUMP_BATCH = 64
"""Messages the reading thread takes off the socket before it sends pending replies again."""
_DROP_WARNING_EVERY_S = 10.0


class TrajectoryReceiver:
    """Binds a ROUTER and hands each trajectory group to the consumer exactly once per id.

    ``committed_ids``: ids the consumer already holds (after a restart); re-sends of them are acked and
    dropped. ``auto_commit``: ack on delivery, for a consumer that dies together with this receiver and
    restarts from a checkpoint listing its ids.

    Memory: libzmq queues up to ``high_water_mark`` messages *per connection*, so a consumer busy
    training would let many connections pile up far more than any bound. A reading thread therefore
    owns the socket and keeps those queues drained into one inbox holding at most
    ``cfg.receive_budget_mib`` across all connections; a message that finds the inbox full is dropped
    without an answer (at-least-once: its sender re-sends it after ``resend_after_s``). Decoding, dedup
    and acks stay on the consumer's thread; its replies go out through the reading thread.
    """

    def __init__(
        self,
        cfg: TransportConfig,
        keys: CurveKeys | None = None,
        *,
        port: int = 0,
        advertise_host: str | None = None,
        committed_ids: Iterable[str] = (),
        auto_commit: bool = False,
    ) -> None:
        self.cfg = cfg
        self.auto_commit = auto_commit
        self._server = ServerSocket(cfg, keys, port=port, advertise_host=advertise_host)
        self._delivered: dict[str, bytes] = {}  # delivered, not committed: id -> sender routing id
        self._committed: OrderedDict[str, None] = OrderedDict()
        self._remember(committed_ids)
        self.stats = ReceiverStats()
        self._inbox: queue.SimpleQueue[tuple[bytes, list, int]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[bytes, Ack | Reject]] = queue.SimpleQueue()
        self._held = 0  # bytes of the messages in _inbox
        self._held_lock = threading.Lock()
        self._last_drop_warning = 0.0
        self._wake_rx = self._server.ctx.socket(zmq.PAIR)
        self._wake_rx.bind("inproc://wake")
        self._wake_tx = self._server.ctx.socket(zmq.PAIR)
        self._wake_tx.connect("inproc://wake")
        self._stop = threading.Event()
        self._pump_thread = threading.Thread(target=self._pump, name="trajectory-receiver", daemon=True)
        self._pump_thread.start()

    @property
    def address(self) -> str:
        return self._server.address

    @property
    def curve(self) -> bool:
        return self._server.curve

    @property
    def held_bytes(self) -> int:
        """Bytes read off the network and not yet taken by the consumer (≤ the receive budget)."""
        return self._held

    def recv(self, timeout: float | None = None) -> tuple[TrajectoryGroup, dict[str, torch.Tensor]]:
        """Next new group and its tensors (aliasing the received frames).

        Malformed messages and duplicates are handled (rejected / acked) and skipped while waiting.
        Raises `TransportTimeout` if no new group arrives within ``timeout`` (default cfg.timeout_s).
        """
        limit = self.cfg.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty
                identity, frames, size = self._inbox.get(timeout=left)
            except queue.Empty:
                raise TransportTimeout(f"no trajectory group from any sender at {self.address} "
                                       f"within {limit:.1f}s") from None
            with self._held_lock:
                self._held -= size
            got = self._accept(identity, frames)
            if got is not None:
                return got

    def commit(self, group_ids: Iterable[str]) -> None:
        """The consumer now holds these groups: acknowledge them and never deliver them again."""
        by_peer: dict[bytes, list[str]] = {}
        for gid in group_ids:
            peer = self._delivered.pop(gid, None)
            if peer is not None:
                by_peer.setdefault(peer, []).append(gid)
            self._remember((gid,))
        for peer, ids in by_peer.items():
            self._reply(peer, Ack(ids))

    def _accept(self, identity: bytes, frames: list) -> tuple[TrajectoryGroup, dict[str, torch.Tensor]] | None:
        try:
            group, tensors = decode(frames, TrajectoryGroup, max_frame_bytes=self.cfg.max_frame_bytes,
                                    max_tensors=self.cfg.max_tensors)
        except WireError as err:
            self._reject(identity, str(err), [err.body.group_id] if isinstance(err.body, TrajectoryGroup) else [])
            return None
        except Exception as err:  # a bug or a case `decode` missed must not end the consumer: report it
            log.exception("unexpected error decoding a message on %s", self.address)
            self._reject(identity, f"internal error decoding the message: {type(err).__name__}", [])
            return None
        gid = group.group_id
        if gid in self._committed:
            self.stats.duplicates += 1
            self._reply(identity, Ack([gid]))
            return None
        if gid in self._delivered:
            self.stats.duplicates += 1
            self._delivered[gid] = identity  # ack the newest connection of that sender
            return None
        self._delivered[gid] = identity
        self.stats.delivered += 1
        if self.auto_commit:
            self.commit((gid,))
        return group, tensors

    def _reject(self, identity: bytes, reason: str, ids: list[str]) -> None:
        self._count_rejection(reason)
        self._reply(identity, Reject(reason, ids))

    def _count_rejection(self, reason: str) -> None:
        self.stats.rejected += 1
        self.stats.rejections = (self.stats.rejections + [reason])[-16:]
        log.warning("rejected message on %s: %s", self.address, reason)

    def _remember(self, ids: Iterable[str]) -> None:
        for gid in ids:
            self._committed[gid] = None
            self._committed.move_to_end(gid)
        while len(self._committed) > self.cfg.dedup_window:
            self._committed.popitem(last=False)

    def _reply(self, identity: bytes, msg: Ack | Reject) -> None:
        """From the consumer's thread: hand the reply to the reading thread, which owns the socket."""
        self._outbox.put((identity, msg))
        try:
            self._wake_tx.send(b"", flags=zmq.NOBLOCK)
        except zmq.Again:  # a wake-up is already pending
            pass

    # --- the reading thread ----------------------------------------------------------------------

    def _pump(self) -> None:
        """Keep libzmq's per-connection queues drained into the bounded inbox; send queued replies."""
        sock = self._server.sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(500))
                if self._wake_rx in ready:
                    while self._wake_rx.poll(0):
                        self._wake_rx.recv()
                self._send_replies()
                if sock in ready:
                    for _ in range(_PUMP_BATCH):
                        try:
                            identity, *frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._admit(identity.bytes, frames)
            except Exception:  # the receiver must keep serving whatever one message did
                if self._stop.is_set():
                    return
                log.exception("trajectory receiver %s: error in its reading thread", self.address)
                time.sleep(0.05)

    def _admit(self, identity: bytes, frames: list) -> None:
        size = sum(len(f) for f in frames)
        budget = self.cfg.receive_budget_bytes
        if size > budget:
            reason = (f"message of {size / 2**20:.1f} MiB exceeds the receiver's whole budget "
                      f"(transport.receive_budget_mib = {self.cfg.receive_budget_mib})")
            self._count_rejection(reason)
            self._send_now(identity, Reject(reason, []))
            return
        with self._held_lock:
            if self._held + size > budget:
                self.stats.dropped_over_budget += 1
                over = True
            else:
                self._held += size
                over = False
        if over:
            now = time.monotonic()
            if now - self._last_drop_warning >= _DROP_WARNING_EVERY_S:
                self._last_drop_warning = now
                log.warning("trajectory receiver %s holds %.0f MiB not yet taken by its consumer (budget "
                            "transport.receive_budget_mib = %d): dropping new messages until it catches "
                            "up; their senders re-send them (%d dropped so far)", self.address,
                            self._held / 2**20, self.cfg.receive_budget_mib, self.stats.dropped_over_budget)
            return
        self._inbox.put((identity, frames, size))

    def _send_replies(self) -> None:
        while True:
            try:
                identity, msg = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send_now(identity, msg)

    def _send_now(self, identity: bytes, msg: Ack | Reject) -> None:
        try:
            self._server.sock.send_multipart([identity, *encode(msg)], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError) as err:  # peer gone or its queue full: it will re-send
            log.debug("could not reply to a sender on %s: %s", self.address, err)

    def close(self) -> None:
        """Stop the reading thread and release the port (replies not yet sent are dropped)."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._wake_tx.send(b"", flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self._pump_thread.join(timeout=10)
        self._wake_tx.close(linger=0)
        self._wake_rx.close(linger=0)
        self._server.close()
