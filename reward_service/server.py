"""The serving loop of one reward shard: a ROUTER socket in its own thread around `score_batch`.

No Ray here (the actor in `service.py` is a thin shell around this), so it runs in-process in tests
and benchmarks too. Concurrency: the socket is created, used and closed only by the serving thread;
other threads read `address`, `stats` and call `stop()`.
"""

from __future__ import annotations

import logging
import threading
import time

import msgspec
import zmq

from stgrl.reward_service import wire
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.metrics import ShardStats
from stgrl.reward_service.rewards import score_batch
from stgrl.reward_service.transport import DEFAULT_HOST, create_socket
from stgrl.reward_service.types import TASKS, KeyFrame, ScoringSample
from stgrl.transport.security import CurveKeys, CurveServer

log = logging.getLogger(__name__)

QUEUED_PER_CONNECTION = 16
"""Requests libzmq queues per client connection before it stops reading from it: with
`wire.MAX_MESSAGE_BYTES` that bounds a connection's queued bytes to 1 GiB (the client keeps at most
``max_in_flight_per_shard`` = 2 requests in flight per shard, so it never gets near)."""


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
    exporter) is called after each reply."""

    def __init__(self, shard_id: int, cfg: RewardConfig, host: str = DEFAULT_HOST, on_request=None,
                 keys: CurveKeys | None = None) -> None:
        self.shard_id = shard_id
        self.cfg = cfg
        self.stats = ShardStats()
        self._host = host
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
            raise RuntimeError(f"reward shard {self.shard_id} failed to bind: {self._error!r}")
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
        ctx = zmq.Context()
        curve = CurveServer(ctx, self._keys) if self._keys is not None else None
        try:
            sock, self._address = create_socket(ctx, zmq.ROUTER, bind_host=self._host, curve_server=curve,
                                                high_water_mark=QUEUED_PER_CONNECTION)
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            if curve is not None:
                curve.stop()
            ctx.term()
            return
        self._ready.set()
        log.info("reward shard %d serving on %s", self.shard_id, self._address)
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart(copy=True)
                t0 = time.perf_counter()
                reply, n_scored = self._handle_safely(frames[1:])
                if reply is None:
                    continue
                try:
                    sock.send_multipart([frames[0], *reply])
                    if n_scored and self._on_request is not None:
                        self._on_request(time.perf_counter() - t0, n_scored)
                except Exception:  # a failed reply or metrics export must not end the serving thread
                    self.stats.count_handler_error()
                    log.exception("reward shard %d: replying or exporting metrics failed", self.shard_id)
        finally:
            sock.close(0)
            if curve is not None:
                curve.stop()
            ctx.term()

    def _handle_safely(self, frames: list[bytes]) -> tuple[list[bytes] | None, int]:
        """`_handle`, but any exception becomes an error reply (or a drop) and is counted in
        ``stats.handler_errors``: one hostile or unlucky request must never end the serving thread,
        whose death would leave a live actor that Ray never restarts."""
        try:
            return self._handle(frames)
        except Exception as e:
            self.stats.count_handler_error()
            log.exception("reward shard %d: a request raised %s; replying with an error", self.shard_id,
                          type(e).__name__)
            rid = frames[1] if len(frames) == 3 else None
            if rid is None or wire.unpack_id(rid) is None:
                return None, 0
            message = f"shard {self.shard_id} could not handle the request: {type(e).__name__}"
            return [wire.STATUS_ERROR, rid, wire.encoder.encode(wire.ErrorReply(message=message))], 0

    def _handle(self, frames: list[bytes]) -> tuple[list[bytes] | None, int]:
        """One request -> (reply frames, number of samples scored). Frames are None when the request
        cannot even be answered by id."""
        if len(frames) != 3:
            log.warning("reward shard %d: dropped a message with %d frames", self.shard_id, len(frames))
            return None, 0
        kind, rid, body = frames
        if wire.unpack_id(rid) is None:
            log.warning("reward shard %d: dropped a message with a bad request id", self.shard_id)
            return None, 0
        if kind != wire.KIND_SCORE:
            return [wire.STATUS_ERROR, rid, wire.encoder.encode(wire.ErrorReply(message=f"unknown kind {kind!r}"))], 0
        t0 = time.perf_counter()
        try:
            req = wire.request_decoder.decode(body)
        except (msgspec.DecodeError, ValueError) as e:
            return [wire.STATUS_ERROR, rid, wire.encoder.encode(wire.ErrorReply(message=f"bad request: {e}"))], 0
        except RecursionError:  # e.g. 200k-deep nesting under a field the decoder skips
            return [wire.STATUS_ERROR, rid,
                    wire.encoder.encode(wire.ErrorReply(message="bad request: nested too deeply"))], 0
        scores = score_batch(req.samples, req.step, req.total_steps, self.cfg)
        handle_s = time.perf_counter() - t0
        self.stats.record(handle_s, scores)
        reply = wire.ScoreReply(shard=self.shard_id, scores=scores, handle_s=handle_s)
        return [wire.STATUS_OK, rid, wire.encoder.encode(reply)], len(scores)
