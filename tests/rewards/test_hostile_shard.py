"""Hostile messages to a reward shard (issue 26 #2) and a structure-aware fuzz of its socket: every
message that carries a request id gets one of our replies, and the shard serves the next request."""

from __future__ import annotations

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
from stgrl.reward_service.transport import create_socket

pytestmark = pytest.mark.timeout(300)
CFG = RewardConfig(batch_size=8, deadline_s=0.3)
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
    ctx = zmq.Context()
    sock, _ = create_socket(ctx, zmq.DEALER, connect=srv.address)
    yield srv, sock
    sock.close(0)
    ctx.term()
    srv.stop()


def _ask(sock, frames, timeout_ms: int = 10_000):
    sock.send_multipart(frames)
    assert sock.poll(timeout_ms), "the shard did not answer"
    return sock.recv_multipart()


def _good(sock, samples, rid: int = 99) -> None:
    body = wire.encoder.encode(wire.ScoreRequest(step=0, total_steps=1, samples=samples))
    status, got, reply = _ask(sock, [wire.KIND_SCORE, wire.pack_id(rid), body])
    assert status == wire.STATUS_OK and wire.unpack_id(got) == rid
    assert len(wire.reply_decoder.decode(reply).scores) == len(samples)


def test_deeply_nested_requests_get_an_error_reply_and_the_shard_keeps_serving(shard, samples_of):
    """A 200k-deep value under an unknown key of a sample raised RecursionError in the serving thread,
    which died for good (the actor stayed alive, so Ray never restarted it); two such messages ended a
    run. Now each gets an error reply, and the shard answers the next request."""
    srv, sock = shard
    sample = msgspec.to_builtins(samples_of(1)[0])
    for rid, where in ((1, "unknown_key"), (2, "key_items")):
        body = pack([0, 1, [{**sample, where: deep(200_000)}]])
        assert len(body) > 190_000
        status, got, reply = _ask(sock, [wire.KIND_SCORE, wire.pack_id(rid), body])
        assert status == wire.STATUS_ERROR and wire.unpack_id(got) == rid
        message = wire.error_decoder.decode(reply).message
        assert message.startswith("bad request: ")
        if where == "unknown_key":  # skipped by the decoder, so only the depth can refuse it
            assert message == "bad request: nested too deeply"
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
    ctx = zmq.Context()
    sock, _ = create_socket(ctx, zmq.DEALER, connect=srv.address)
    try:
        _good(sock, samples_of(2), rid=1)
        _good(sock, samples_of(2), rid=2)
        deadline = time.monotonic() + 10  # the hook runs just after the reply went out
        while srv.stats.snapshot()["handler_errors"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [2, 2] and srv.stats.snapshot()["handler_errors"] == 2
    finally:
        sock.close(0)
        ctx.term()
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
def hostile_requests(draw, valid_body):
    body = valid_body
    if draw(st.integers(0, 3)) == 0:  # targeted: a sample (a dict) gets a field the decoder skips
        samples = list(body[2])
        i = draw(st.integers(0, len(samples) - 1))
        samples[i] = {**samples[i], draw(st.text(max_size=8)): draw(_value)}
        body = [body[0], body[1], samples]
    for _ in range(draw(st.integers(0, 3))):
        body = _mutate(body, draw)
    raw = draw(st.one_of(st.just(pack(body)), st.binary(max_size=64)))
    kind = draw(st.sampled_from([wire.KIND_SCORE, wire.KIND_SCORE, b"\x09", b"", b"\x01\x01"]))
    rid = draw(st.sampled_from([wire.pack_id(5), wire.pack_id(5), b"", b"\x00" * 7, b"\x00" * 9]))
    extra = draw(st.sampled_from([[], [], [b"x"]]))
    return [kind, rid, raw, *extra]


def test_fuzzed_requests_only_get_our_replies_and_the_shard_keeps_serving(shard, samples_of):
    srv, sock = shard
    samples = samples_of(4)
    valid = msgspec.to_builtins(wire.ScoreRequest(step=3, total_steps=10, samples=samples))
    answered = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(hostile_requests(valid))
    def check(frames):
        sock.send_multipart(frames)
        answerable = len(frames) == 3 and len(frames[1]) == 8
        if not answerable:
            return  # dropped by design: nothing to answer it by (checked by the good request below)
        assert sock.poll(20_000), f"no reply to {[f[:40] for f in frames]}"
        status, rid, body = sock.recv_multipart()
        assert rid == frames[1]
        if status == wire.STATUS_OK:
            wire.reply_decoder.decode(body)
        else:
            assert status == wire.STATUS_ERROR
            answered.append(wire.error_decoder.decode(body).message)

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

    ctx = zmq.Context()
    liar, liar_address = create_socket(ctx, zmq.ROUTER, bind_host="127.0.0.1")
    stop = threading.Event()

    def lie() -> None:
        while not stop.is_set():
            if liar.poll(50):
                peer, _kind, rid, _body = liar.recv_multipart()
                liar.send_multipart([peer, wire.STATUS_OK, rid, b"\xc1not msgpack"])

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
        liar.close(0)
        ctx.term()
        honest.stop()
