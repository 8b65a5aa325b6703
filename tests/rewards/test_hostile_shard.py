"""Hostile messages to a reward shard (issue 26 #2) and a structure-aware fuzz of its socket: every
message that carries a request id gets one of our replies, and the shard serves the next request."""

from __future__ import annotations

import contextlib
import re
import time

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stgrl.reward_service import wire
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.server import ShardServer
from stgrl.transport.config import TransportConfig
from stgrl.transport.endpoints import ClientSocket, ServerSocket
from stgrl.transport.wire import Reject, RewardRequest, RewardResult, encode

pytestmark = pytest.mark.timeout(300)
CFG = RewardConfig(batch_size=8, deadline_s=0.3)
TCFG = wire.socket_config(TransportConfig())
_DEEP = re.compile(rb"[\xa0-\xbf]\x00deep(\d+)\x00")


def deep(depth: int) -> str:
    """Placeholder that `pack` expands to ``depth`` nested lists (msgspec cannot encode those)."""
    return f"\x00deep{depth}\x00"


def pack(tree) -> bytes:
    return _DEEP.sub(lambda m: b"\x91" * int(m.group(1)) + b"\xc0", msgspec.msgpack.encode(tree))


@pytest.fixture
def shard():
    srv = ShardServer(0, CFG)
    srv.start()
    client = ClientSocket(srv.address, TCFG, None)
    yield srv, client.sock
    client.close()
    srv.stop()


def _header(tree) -> list:
    """The builtins of a request's header frame (``[body, tensors]``), for mutating."""
    return msgspec.msgpack.decode(encode(tree)[0])


def _ask(sock, frames, timeout_ms: int = 10_000):
    """Send ``frames``; the reply's (request id, decoded RewardResult | Reject)."""
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), "the shard did not answer"
    rid, *reply = sock.recv_multipart()
    return rid, wire.decode_reply(reply, TCFG)


def _good(sock, samples, rid: int = 99) -> None:
    got, reply = _ask(sock, wire.frames(wire.pack_id(rid), RewardRequest(step=0, total_steps=1, samples=samples)))
    assert wire.unpack_id(got) == rid and isinstance(reply, RewardResult)
    assert len(reply.scores) == len(samples)


def test_deeply_nested_requests_get_an_error_reply_and_the_shard_keeps_serving(shard, samples_of):
    """A 200k-deep value under an unknown key of a sample raised RecursionError in the serving thread,
    which died for good (the actor stayed alive, so Ray never restarted it); two such messages ended a
    run. Now each gets an error reply, and the shard answers the next request."""
    srv, sock = shard
    sample = msgspec.to_builtins(samples_of(1)[0])
    for rid, where in ((1, "unknown_key"), (2, "key_items")):
        body = pack([["reward_request", 0, 1, [{**sample, where: deep(200_000)}]], []])
        assert len(body) > 190_000
        got, reply = _ask(sock, [wire.pack_id(rid), body])
        assert isinstance(reply, Reject) and wire.unpack_id(got) == rid
        assert reply.reason.startswith("bad request: ")
        if where == "unknown_key":  # skipped by the decoder, so only the depth can refuse it
            assert reply.reason.endswith(": nested too deeply")
    _good(sock, samples_of(3))


def test_a_handler_that_raises_is_reported_and_the_shard_keeps_serving(samples_of):
    """Any exception after a request was read (here: the metrics hook) is logged and counted in
    ``handler_errors``; the serving thread goes on."""
    calls = []

    def failing_export(latency_s: float, n: int) -> None:
        calls.append(n)
        raise RuntimeError("metrics backend down")

    srv = ShardServer(0, CFG, on_request=failing_export)
    srv.start()
    client = ClientSocket(srv.address, TCFG, None)
    sock = client.sock
    try:
        _good(sock, samples_of(2), rid=1)
        _good(sock, samples_of(2), rid=2)
        deadline = time.monotonic() + 10  # the hook runs just after the reply went out
        while srv.stats.snapshot()["handler_errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [2, 2] and srv.stats.snapshot()["handler_errors"] == 2
    finally:
        client.close()
        srv.stop()


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.binary(max_size=20))
_tree = st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                   st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                     max_leaves=20)
_value = st.one_of(_tree, st.sampled_from([5_000, 200_000]).map(deep), st.integers(1, 3).map(lambda k: "x" * (k << 20)))


def _mutate(tree, draw):
    if not isinstance(tree, (list, dict)) or draw(st.integers(0, 3)) == 0:
        return draw(_value)
    if isinstance(tree, dict) and draw(st.integers(0, 2)) == 0:
        return {**tree, draw(st.text(max_size=8)): draw(_value)}
    keys = list(range(len(tree))) if isinstance(tree, list) else list(tree)
    if not keys:
        return draw(_value)
    k = draw(st.sampled_from(keys))
    out = list(tree) if isinstance(tree, list) else dict(tree)
    out[k] = _mutate(tree[k], draw)
    return out


@st.composite
def hostile_requests(draw, valid_header):
    """``[request_id, header, *extra]`` from a valid header (``[[kind, step, total, samples,
    groups], tensors]``) with mutations: a skipped field in a sample or a group's truth, any value
    anywhere, a wrong kind, raw bytes, a bad id, unexpected tensor frames."""
    header = valid_header
    if draw(st.integers(0, 3)) == 0:  # targeted: a sample (a dict) gets a field the decoder skips
        body = list(header[0])
        samples = list(body[3])
        i = draw(st.integers(0, len(samples) - 1))
        samples[i] = {**samples[i], draw(st.text(max_size=8)): draw(_value)}
        body[3] = samples
        header = [body, header[1]]
    if draw(st.integers(0, 5)) == 0:
        header = [[draw(st.sampled_from(["reject", "ack", "nope", ""])), *header[0][1:]], header[1]]
    for _ in range(draw(st.integers(0, 3))):
        header = _mutate(header, draw)
    raw = draw(st.one_of(st.just(pack(header)), st.binary(max_size=64)))
    rid = draw(st.sampled_from([wire.pack_id(5), wire.pack_id(5), b"", b"\x00" * 7, b"\x00" * 9]))
    extra = draw(st.sampled_from([[], [], [b"x"]]))
    return [rid, raw, *extra]


def test_fuzzed_requests_only_get_our_replies_and_the_shard_keeps_serving(shard, samples_of):
    from stgrl.reward_service.types import ScoringGroup

    srv, sock = shard
    samples = samples_of(4)
    group = ScoringGroup(id="3/g", truth=samples[0], completions=[s.completion for s in samples])
    valid = _header(RewardRequest(step=3, total_steps=10, samples=samples, groups=[group]))
    answered = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(hostile_requests(valid))
    def check(frames):
        sock.send_multipart(frames)
        if len(frames[0]) != 8:
            return  # dropped by design: nothing to answer it by (checked by the good request below)
        assert sock.poll(20_000), f"no reply to {[f[:40] for f in frames]}"
        rid, *message = sock.recv_multipart()
        assert rid == frames[0]
        reply = wire.decode_reply(message, TCFG)  # always one of our replies
        if isinstance(reply, Reject):
            answered.append(reply.reason)

    check()
    assert answered, "the fuzz never produced a bad request"
    assert srv._thread.is_alive()
    _good(sock, samples)
    assert srv.stats.snapshot()["handler_errors"] == 0  # every case was one we handle by name


def test_a_malformed_reply_is_retried_on_another_shard(samples_of):
    """The client decoded replies unguarded: a peer answering with garbage raised msgspec's own
    DecodeError out of `score`. Now that shard counts as failed and the batch goes elsewhere."""
    import threading

    from stgrl.reward_service.client import RewardClient
    from stgrl.reward_service.rewards import score_batch

    liar_server = ServerSocket(TCFG, None)
    liar, liar_address = liar_server.sock, liar_server.address
    stop = threading.Event()

    def lie() -> None:
        while not stop.is_set():
            if liar.poll(50):
                peer, rid, *_request = liar.recv_multipart()
                with contextlib.suppress(zmq.ZMQError):  # the client may have left already
                    liar.send_multipart([peer, rid, b"\xc1not msgpack"])

    thread = threading.Thread(target=lie, daemon=True)
    thread.start()
    honest = ShardServer(1, CFG)
    honest.start()
    samples = samples_of(20)
    try:
        with RewardClient([liar_address, honest.address], CFG, max_attempts=6) as client:
            got = client.score(samples, step=0, total_steps=1)
            assert client.retries >= 1
        assert got == score_batch(samples, 0, 1, CFG)
    finally:
        stop.set()
        thread.join(5)
        liar_server.close()
        honest.stop()
