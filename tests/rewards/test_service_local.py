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
from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ClientSocket, ServerSocket
from stgrl.transport.wire import Reject, RewardRequest, RewardResult, TrajectoryGroup, encode

CFG = RewardConfig(batch_size=8, deadline_s=0.3)
TCFG = wire.socket_config(TransportConfig())


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
        self.server = ServerSocket(TCFG, None)
        self.sock, self.address = self.server.sock, self.server.address
        self.received = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(20):
                self.sock.recv_multipart()
                self.received += 1
        self.server.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join()


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
    client = ClientSocket(server.address, TCFG, None)

    def ask(rid: int, *message) -> RewardResult | Reject:
        client.sock.send_multipart([wire.pack_id(rid), *message])
        assert client.sock.poll(10_000), "the shard did not answer"
        got, *reply = client.sock.recv_multipart()
        assert wire.unpack_id(got) == rid
        return wire.decode_reply(reply, TCFG)

    try:
        bad = ask(7, b"\x93garbage")
        assert isinstance(bad, Reject) and bad.reason.startswith("bad request: ")
        other = encode(TrajectoryGroup("g", "p", 0, 0, 1, [], samples_of(1)[0], [1, 1]))
        wrong_kind = ask(8, *other)  # a message of the shared schema this socket does not take
        assert isinstance(wrong_kind, Reject) and "message kind not taken here" in wrong_kind.reason
        ok = ask(9, *encode(RewardRequest(step=0, total_steps=1, samples=samples_of(2))))
        assert isinstance(ok, RewardResult) and len(ok.scores) == 2
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_groups_carry_the_truth_once_and_score_like_one_sample_per_completion(server, samples_of):
    """`score_groups`: one ScoringGroup per prompt (ground truth once) scores exactly as G
    ScoringSamples with ids `group_id#i` would; a re-sent group is scored once."""
    import msgspec

    from stgrl.reward_service.types import ScoringGroup

    truths = samples_of(6, seed=2)
    groups = [ScoringGroup(id=f"3/{t.id}", truth=msgspec.structs.replace(t, completion=""),
                           completions=[t.completion, t.completion + " extra", "<answer>A</answer>"])
              for t in truths]
    flat = [s for g in groups for s in g.samples()]
    assert [s.id for s in flat[:3]] == [f"3/{truths[0].id}#{i}" for i in range(3)]
    with RewardClient([server.address], CFG) as client:
        got = client.score_groups(groups + groups[:1], step=2, total_steps=10)
    want = score_batch(flat, 2, 10, CFG)
    assert got == want + want[:3]
    assert server.stats.samples == len(flat)  # the repeated group was not scored again
    one = encode(RewardRequest(step=2, total_steps=10, groups=groups))[0]
    many = encode(RewardRequest(step=2, total_steps=10, samples=flat))[0]
    assert len(one) < len(many)  # the key items and answer travel once per group


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
    srv = ShardServer(0, CFG, TransportConfig(curve="on"), keys=keys)  # CURVE even on loopback
    srv.start()
    samples = samples_of(10)
    try:
        with RewardClient([srv.address], CFG, keys=keys) as client:
            assert client.score(samples, 0, 10) == score_batch(samples, 0, 10, CFG)
        for wrong in (None, CurveKeys(*generate_keypair())):  # plaintext client; another run's keys
            with RewardClient([srv.address], CFG, keys=wrong, max_attempts=1) as client, \
                    pytest.raises(RewardServiceError, match="missed its deadline") as err:
                client.score(samples, 0, 10)
            if wrong is not None:  # the shared handshake watch names the refusal
                assert "refused the handshake" in str(err.value), str(err.value)
        assert srv.stats.samples == 10  # only the authenticated client's request was ever scored
    finally:
        srv.stop()


def test_binding_off_loopback_needs_keys():
    srv = ShardServer(0, CFG, TransportConfig(bind_host="0.0.0.0"))
    with pytest.raises(RuntimeError, match="failed to bind: CURVE is required for bind host '0.0.0.0'"):
        srv.start()


def test_the_reward_socket_shares_the_runs_transport_options_with_its_own_bounds():
    run = TransportConfig(bind_host="0.0.0.0", curve="on", heartbeat_s=0.5, max_frame_mib=1024, high_water_mark=64)
    got = wire.socket_config(run)
    assert (got.bind_host, got.curve, got.heartbeat_s) == ("0.0.0.0", "on", 0.5)
    assert got.max_frame_mib == wire.MAX_MESSAGE_MIB and got.high_water_mark == wire.QUEUED_PER_CONNECTION
    # the client's sockets are the shared endpoints: heartbeats and the size guard come with them
    with RewardClient(["tcp://127.0.0.1:9"], CFG, transport=run) as client:
        sock = client._links[0].sock
        assert (sock.heartbeat_ivl, sock.heartbeat_timeout) == (500, 1500)
        assert sock.maxmsgsize == 2 * (wire.MAX_MESSAGE_MIB << 20) + (1 << 20)
        assert sock.sndhwm == wire.QUEUED_PER_CONNECTION


class SlowShard:
    """A real ROUTER socket that scores correctly but answers each request `delay_s` late."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.server = ServerSocket(TCFG, None)
        self.sock, self.address = self.server.sock, self.server.address
        self.answered = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, rid, *message = self.sock.recv_multipart()
            req = wire.decode_request(message, TCFG)
            self._stop.wait(self.delay_s)
            scores = score_batch(req.samples, req.step, req.total_steps, CFG)
            reply = RewardResult(shard=9, scores=scores, handle_s=self.delay_s)
            try:
                self.sock.send_multipart([ident, *wire.frames(rid, reply)])
            except zmq.ZMQError:  # the client already left (ROUTER_MANDATORY says so)
                continue
            self.answered += 1
        self.server.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join()


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
