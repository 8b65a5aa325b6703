"""A learner rank's trajectory inbox: the groups (header + pixel tensors) it trains, straight from the
rollout workers over the trajectory channel, never through the driver.

A `TrajectoryReceiver` (at-least-once, acks, dedup by group id; CURVE per the transport config)
bound on the rank's host, drained by a background thread that owns the socket (ZeroMQ sockets are
single-threaded), so workers are acknowledged while the rank trains an earlier step. `take` hands the
training call the groups of one step, waiting for late ones, and says which group ids never came.

Bounds: only groups of steps not yet trained are held, at most ``max_groups`` of them (more are
counted and dropped, loudly); each message is bounded by the channel's own frame and tensor limits.
A group for an already trained step (a late re-send) is acknowledged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from stgrl.transport.config import TransportConfig
    from stgrl.transport.security import CurveKeys
    from stgrl.transport.wire import TrajectoryGroup

    Received = tuple[TrajectoryGroup, dict[str, torch.Tensor]]

log = logging.getLogger(__name__)


class InboxTimeout(TimeoutError):
    """Groups a training step needs did not reach this rank in time; the message names them."""


class TrajectoryInbox:
    """Receives this rank's trajectory groups in a background thread; `take` what a step needs."""

    def __init__(self, cfg: TransportConfig, keys: CurveKeys | None = None, *, max_groups: int = 1024, rank: int = 0) -> None:
        self.cfg = cfg
        self.max_groups = max_groups
        self.rank = rank
        self._lock = threading.Condition()
        self._held: dict[str, Received] = {}
        self._trained_through = -1  # groups of steps <= this are late re-sends
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.address = ""
        self.dropped_late = 0
        self.dropped_full = 0
        self.tensor_bytes = 0
        """Bytes of tensor frames received (what the driver no longer relays)."""
        self.taken = 0
        """Groups handed to training steps."""
        self._thread = threading.Thread(target=self._serve, args=(keys,), name=f"inbox-rank{rank}", daemon=True)
        self._thread.start()
        self._ready.wait(cfg.timeout_s)
        if self._error is not None:
            raise self._error
        if not self.address:
            raise TimeoutError(f"learner rank {rank}: trajectory inbox did not bind within {cfg.timeout_s:.0f}s")

    def _serve(self, keys: CurveKeys | None) -> None:
        from stgrl.transport.endpoints import TransportTimeout
        from stgrl.transport.trajectory_channel import TrajectoryReceiver

        try:
            receiver = TrajectoryReceiver(self.cfg, keys, auto_commit=True)
        except BaseException as err:  # reported by the constructor
            self._error = err
            self._ready.set()
            return
        self.address = receiver.address
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    group, tensors = receiver.recv(timeout=0.1)
                except TransportTimeout:
                    continue
                self._hold(group, tensors)
        except BaseException:
            log.exception("learner rank %d: trajectory inbox at %s stopped", self.rank, self.address)
        finally:
            receiver.close()

    def _hold(self, group: TrajectoryGroup, tensors: dict[str, torch.Tensor]) -> None:
        with self._lock:
            if group.step <= self._trained_through:
                self.dropped_late += 1
                return
            if len(self._held) >= self.max_groups:
                self.dropped_full += 1
                log.warning("learner rank %d: inbox full (%d groups held); dropped group %r", self.rank,
                            len(self._held), group.group_id[:80])
                return
            self._held.setdefault(group.group_id, (group, tensors))
            self.tensor_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
            self._lock.notify_all()

    def take(self, step: int, group_ids: Sequence[str], timeout_s: float) -> list[Received]:
        """The groups ``group_ids`` (in that order) with their tensors, waiting up to ``timeout_s``;
        then forget every group of ``step`` and earlier. `InboxTimeout` names the missing ids."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                missing = [g for g in group_ids if g not in self._held]
                if not missing:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise InboxTimeout(
                        f"learner rank {self.rank}: {len(missing)} trajectory group(s) of step {step} did not "
                        f"arrive at {self.address} within {timeout_s:.0f}s: {missing[:8]}")
                self._lock.wait(min(left, 0.5))
            out = [self._held[g] for g in group_ids]
            self.taken += len(out)
            self._trained_through = max(self._trained_through, step)
            for gid in [g for g, (grp, _) in self._held.items() if grp.step <= step]:
                del self._held[gid]
        return out

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def stats(self) -> dict[str, float]:
        """Counters for operators and tests: groups held, taken and dropped, tensor bytes received."""
        with self._lock:
            return {"held": float(len(self._held)), "taken": float(self.taken), "tensor_bytes": float(self.tensor_bytes),
                    "dropped_late": float(self.dropped_late), "dropped_full": float(self.dropped_full)}

    def close(self) -> None:
        """Stop the thread and release the port (idempotent)."""
        self._stop.set()
        self._thread.join(timeout=max(1.0, self.cfg.timeout_s))
