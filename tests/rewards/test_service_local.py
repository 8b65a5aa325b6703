"""Shard server + client over real ZeroMQ sockets, in-process (no Ray): ordering, dedup, deadlines."""

from __future__ import annotations

import threading

import pytest
import zmq

from stgrl.reward_service import wire
from stgrl.reward_service.client import RewardClient, RewardServiceError
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.metrics import ShardStats, percentile, prometheus_name
from stgrl.reward_service.rewards import score_batch
from stgrl.reward_service.server import ShardServer
from stgrl.reward_service.transport import create_socket

CFG = RewardConfig(batch_size=8, deadline_s=0.3)


@pytest.fixture
def server():
    srv = ShardServer(0, CFG)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.timeout(60)
def test_scores_match_the_pure_functions_in_order_and_dedup(server, samples_of):
    samples = samples_of(50)
    with RewardClient([server.address], CFG) as client:
        got = client.score(samples + samples[:5], step=3, total_steps=10)
    want = score_batch(samples, 3, 10, CFG)
    assert [s.id for s in got] == [s.id for s in samples + samples[:5]]
    assert got[:50] == want and got[50:] == want[:5]
    # each unique sample scored exactly once by the shard: the repeats were deduplicated client-side
    assert server.stats.samples == 50 and server.stats.requests == 7


@pytest.mark.timeout(60)
def test_the_step_travels_with_each_request(server, samples_of):
    s = samples_of(4)[:1]  # spatio_temporal
    with RewardClient([server.address], CFG) as client:
        early, late = client.score(s, 0, 20)[0], client.score(s, 19, 20)[0]
    assert early == score_batch(s, 0, 20, CFG)[0] and late == score_batch(s, 19, 20, CFG)[0]
    assert early.components["temporal_proximity"] != late.components["temporal_proximity"]


class BlackHole:
    """A real ROUTER socket that accepts requests and never answers (a hung shard)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock, self.address = create_socket(self.ctx, zmq.ROUTER, bind_host="127.0.0.1")
        self.received = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                self.sock.recv_multipart()
                self.received += 1
        self.sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.ctx.term()


@pytest.mark.timeout(60)
def test_a_hung_shard_is_retried_elsewhere_without_loss(server, samples_of):
    hole = BlackHole()
    samples = samples_of(64, seed=1)
    try:
        with RewardClient([hole.address, server.address], CFG) as client:
            got = client.score(samples, 1, 10)
            assert client.retries >= 1 and hole.received >= 1
    finally:
        hole.close()
    assert got == score_batch(samples, 1, 10, CFG)


@pytest.mark.timeout(60)
def test_only_hung_shards_raise_after_max_attempts(samples_of):
    hole = BlackHole()
    try:
        with RewardClient([hole.address], CFG, max_attempts=2) as client, pytest.raises(RewardServiceError):
            client.score(samples_of(3), 0, 10)
    finally:
        hole.close()


@pytest.mark.timeout(60)
def test_malformed_requests_get_error_replies_and_the_shard_keeps_serving(server, samples_of):
    ctx = zmq.Context()
    sock, _ = create_socket(ctx, zmq.DEALER, connect=server.address)
    try:
        sock.send_multipart([wire.KIND_SCORE, wire.pack_id(7), b"\x93garbage"])
        status, rid, body = sock.recv_multipart()
        assert status == wire.STATUS_ERROR and wire.unpack_id(rid) == 7
        assert "bad request" in wire.error_decoder.decode(body).message
        sock.send_multipart([b"\x09", wire.pack_id(8), b""])
        status, rid, body = sock.recv_multipart()
        assert status == wire.STATUS_ERROR and "unknown kind" in wire.error_decoder.decode(body).message
        req = wire.ScoreRequest(step=0, total_steps=1, samples=samples_of(2))
        sock.send_multipart([wire.KIND_SCORE, wire.pack_id(9), wire.encoder.encode(req)])
        status, rid, body = sock.recv_multipart()
        assert status == wire.STATUS_OK and len(wire.reply_decoder.decode(body).scores) == 2
    finally:
        sock.close(0)
        ctx.term()


def test_prometheus_names_and_stats(samples_of):
    assert prometheus_name("reward/latency_s") == "reward_latency_s"
    assert prometheus_name("reward/think_temporal_segment") == "reward_think_temporal_segment"
    assert prometheus_name("9/x-y") == "_9_x_y"
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    st = ShardStats()
    scores = score_batch(samples_of(8), 0, 10, CFG)
    st.record(0.002, scores[:4])
    st.record(0.004, scores[4:])
    snap = st.snapshot()
    assert snap["requests"] == 2 and snap["samples"] == 8 and snap["requests_per_s"] > 0
    assert snap["latency_s"]["p50"] == 0.002 and snap["latency_s"]["max"] == 0.004
    fmt = [s.components["format"] for s in scores]
    assert snap["components"]["format"] == pytest.approx(sum(fmt) / len(fmt))


@pytest.mark.timeout(60)
def test_curve_shard_serves_only_clients_with_the_run_keys(samples_of):
    from stgrl.transport.security import CurveKeys, generate_keypair

    keys = CurveKeys(*generate_keypair())
    srv = ShardServer(0, CFG, keys=keys)
    srv.start()
    samples = samples_of(10)
    try:
        with RewardClient([srv.address], CFG, keys=keys) as client:
            assert client.score(samples, 0, 10) == score_batch(samples, 0, 10, CFG)
        for wrong in (None, CurveKeys(*generate_keypair())):  # plaintext client; another run's keys
            with RewardClient([srv.address], CFG, keys=wrong, max_attempts=1) as client, \
                    pytest.raises(RewardServiceError):
                client.score(samples, 0, 10)
        assert srv.stats.samples == 10  # only the authenticated client's request was ever scored
    finally:
        srv.stop()


def test_binding_off_loopback_needs_keys():
    srv = ShardServer(0, CFG, host="0.0.0.0")
    with pytest.raises(RuntimeError, match="only with CURVE keys"):
        srv.start()


class SlowShard:
    """A real ROUTER socket that scores correctly but answers each request `delay_s` late."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.ctx = zmq.Context()
        self.sock, self.address = create_socket(self.ctx, zmq.ROUTER, bind_host="127.0.0.1")
        self.answered = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, _, rid, body = self.sock.recv_multipart()
            req = wire.request_decoder.decode(body)
            self._stop.wait(self.delay_s)
            scores = score_batch(req.samples, req.step, req.total_steps, CFG)
            reply = wire.ScoreReply(shard=9, scores=scores, handle_s=self.delay_s)
            self.sock.send_multipart([ident, wire.STATUS_OK, rid, wire.encoder.encode(reply)])
            self.answered += 1
        self.sock.close(0)

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.ctx.term()


@pytest.mark.timeout(60)
def test_late_answers_are_deduplicated_never_counted_twice(samples_of):
    """One shard answers after the deadline (its batches are re-sent to the other): whichever copy comes
    back first is used, the other is dropped, and every sample is returned exactly once."""
    late, ok = SlowShard(0.45), SlowShard(0.12)
    samples = samples_of(64, seed=3)  # 8 batches of 8: the call outlives the late shard's first answers
    try:
        with RewardClient([late.address, ok.address], CFG) as client:
            got = client.score(samples, 4, 10)
            assert client.retries >= 1 and client.duplicate_replies >= 1
    finally:
        late.close()
        ok.close()
    assert got == score_batch(samples, 4, 10, CFG)
    assert late.answered + ok.answered > 8  # some batches really were scored twice by the shards
