"""The serving loop of one reward shard: a `ServerSocket` (ROUTER) in its own thread around `score_batch`.

No Ray here (the actor in `service.py` is a thin shell around this), so it runs in-process in tests
and benchmarks too. The socket is the shared transport's (`stgrl.transport.endpoints`): the run's
bind host, CURVE decision, heartbeats and size guard, with the reward socket's bounds
(`wire.socket_config`). Concurrency: the socket is created, used and closed only by the serving
thread; other threads read `address`, `stats` and call `stop()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stgrl.reward_service import wire
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.metrics import ShardStats
from stgrl.reward_service.rewards import score_batch
from stgrl.reward_service.types import TASKS, KeyFrame, ScoringSample
from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ServerSocket
from stgrl.transport.security import CurveKeys
from stgrl.transport.wire import Reject, RewardResult, WireError

log = logging.getLogger(__name__)


def warm_up_samples() -> list[ScoringSample]:
    """One small well-formed sample per task (free-form and multiple-choice answers)."""
    claim = "<obj>car</obj><box>[1,1,5,5]</box>at<t>1.0</t>s"
    return [ScoringSample(id=f"warm-up-{t}", task=t, frame_size=[10, 10], answer="a red car turning left",
                          options=["A. x"] if t == "temporal" else None, span=[0.0, 2.0],
                          completion=f"<think>{claim}</think><answer>red cars turned <t>0</t>s to <t>2</t>s</answer>",
                          key_frames=[KeyFrame(0, 1.0)], key_items={"0": {"car": [[0.1, 0.1, 0.5, 0.5]]}})
            for t in TASKS]


class ShardServer:
    """Serves scoring requests until `stop()`. `on_request(latency_s, n_samples)` (e.g. a metrics
    exporter) is called after each reply.

    ``transport`` is the run's data-plane options (default: loopback, CURVE `auto`); ``keys`` the
    run's CURVE key pair, required whenever ``transport`` makes the socket a CURVE server.
    """

    def __init__(self, shard_id: int, cfg: RewardConfig, transport: TransportConfig | None = None, *,
                 on_request: Callable[[float, int], Any] | None = None, keys: CurveKeys | None = None) -> None:
        self.shard_id = shard_id
        self.cfg = cfg
        self.transport = wire.socket_config(transport or TransportConfig())
        self.stats = ShardStats()
        self._keys = keys
        self._on_request = on_request
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._address: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name=f"reward-shard-{shard_id}", daemon=True)

    def start(self, timeout_s: float = 10.0) -> str:
        """Warm up, start the thread; return the bound endpoint once the socket is listening.

        Warm-up scores one sample of every task first, so lazy imports and scorer construction
        (~1 s for the stemmer on a busy machine) never eat into the first request's deadline."""
        score_batch(warm_up_samples(), 0, 1, self.cfg)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._address is None:
            raise RuntimeError(f"reward shard {self.shard_id} failed to bind: {self._error}")
        return self._address

    @property
    def address(self) -> str:
        assert self._address is not None, "call start() first"
        return self._address

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _serve(self) -> None:
        try:
            server = ServerSocket(self.transport, self._keys)
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._address = server.address
        self._ready.set()
        log.info("reward shard %d serving on %s%s", self.shard_id, self._address,
                 " (CURVE)" if server.curve else "")
        sock = server.sock
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                peer, *message = sock.recv_multipart(copy=True)
                t0 = time.perf_counter()
                reply, n_scored = self._handle_safely(message)
                if reply is None:
                    continue
                try:
                    sock.send_multipart([peer, *reply], copy=False)
                    if n_scored and self._on_request is not None:
                        self._on_request(time.perf_counter() - t0, n_scored)
                except Exception:  # a failed reply or metrics export must not end the serving thread
                    self.stats.count_handler_error()
                    log.exception("reward shard %d: replying or exporting metrics failed", self.shard_id)
        finally:
            server.close()

    def _handle_safely(self, message: list[bytes]) -> tuple[list | None, int]:
        """`_handle`, but any exception becomes an error reply (or a drop) and is counted in
        ``stats.handler_errors``: one hostile or unlucky request must never end the serving thread,
        whose death would leave a live actor that Ray never restarts."""
        try:
            return self._handle(message)
        except Exception as e:
            self.stats.count_handler_error()
            log.exception("reward shard %d: a request raised %s; replying with an error", self.shard_id,
                          type(e).__name__)
            if not message or wire.unpack_id(message[0]) is None:
                return None, 0
            reason = f"shard {self.shard_id} could not handle the request: {type(e).__name__}"
            return wire.frames(message[0], Reject(reason=reason)), 0

    def _handle(self, message: list[bytes]) -> tuple[list | None, int]:
        """One request ``[request_id, header]`` -> (reply frames, number of samples scored). Frames
        are None when the request cannot even be answered by id."""
        if not message or wire.unpack_id(message[0]) is None:
            log.warning("reward shard %d: dropped a message without a request id", self.shard_id)
            return None, 0
        rid = message[0]
        t0 = time.perf_counter()
        try:
            req = wire.decode_request(message[1:], self.transport)
        except WireError as e:
            return wire.frames(rid, Reject(reason=f"bad request: {e}")), 0
        samples = [*req.samples, *(s for g in req.groups for s in g.samples())]
        scores = score_batch(samples, req.step, req.total_steps, self.cfg)
        handle_s = time.perf_counter() - t0
        self.stats.record(handle_s, scores)
        reply = RewardResult(shard=self.shard_id, scores=scores, handle_s=handle_s)
        return wire.frames(rid, reply), len(scores)
