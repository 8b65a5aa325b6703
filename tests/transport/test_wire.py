"""Every wire message round-trips over a real socket; tensors arrive bit-exact and without a copy;
malformed headers and frames fail with `WireError`, never anything else."""

from __future__ import annotations

import math

import msgspec
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stgrl.transport import wire
from stgrl.transport.tensor_frames import FRAME_STATS, TensorMeta
from stgrl.transport.wire import Message, WireError, decode, encode

pytestmark = pytest.mark.timeout(60)
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def pair():
    """A connected PUSH/PULL pair over loopback TCP (real sockets, real frames)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def _over_socket(pair, frames):
    push, pull = pair
    push.send_multipart(frames, copy=False)
    assert pull.poll(5000), "message did not arrive"
    return pull.recv_multipart(copy=False)


def _all_messages(tx) -> list[tuple[msgspec.Struct, dict[str, torch.Tensor]]]:
    group = tx.make_group(1)
    scored = msgspec.structs.replace(group, rewards=[0.5, 1.0, 0.0],
                                     reward_components=[{"format": 1.0}, {"format": 0.5}, {}])
    score = wire.Score(id="s1", total=1.5, components={"format": 1.0, "temporal_proximity": 0.5})
    entry = wire.TensorEntry("lm_head.weight", "bfloat16", [4, 8], 0, 64)
    return [
        (group, tx.make_tensors(1)),
        (scored, {}),
        (wire.RewardRequest(3, 100, [msgspec.structs.replace(group.sample, completion="<think/>")]), {}),
        (wire.RewardRequest(3, 100, groups=[wire.ScoringGroup(id="3/p1", truth=group.sample,
                                                              completions=["<think/>", "<answer>A</answer>"])]), {}),
        (wire.RewardResult(0, [score], 0.01), {}),
        (wire.ManifestRequest(), {}),
        (wire.ManifestRequest(7), {}),
        (wire.NoVersion("nothing yet", None), {}),
        (wire.WeightManifest(7, 64, 256, [entry], [123], 456), {}),
        (wire.BucketRequest(7, 0), {}),
        (wire.WeightBucket(7, 0, 64, 123), {"0": torch.arange(64, dtype=torch.uint8)}),
        (wire.VersionReport("w0", 7), {}),
        (wire.Ack(["a", "b"]), {}),
        (wire.Reject("bad", ["a"]), {}),
    ]


def test_every_message_type_round_trips_over_a_socket(pair, tx):
    messages = _all_messages(tx)
    kinds = {type(m) for m, _ in messages}
    assert kinds == set(Message.__args__), "a message type has no round-trip case"
    for msg, tensors in messages:
        for expected in (type(msg), Message):  # decoded as its own type and via the tagged union
            got, got_tensors = decode(_over_socket(pair, encode(msg, tensors)), expected, max_frame_bytes=LIMIT)
            assert type(got) is type(msg)
            assert got == msg
            tx.assert_tensors_equal(got_tensors, tensors)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64,
                                   torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool])
def test_tensors_bit_exact_every_dtype(pair, tx, dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, 7, generator=g) * 100
    tensors = {
        "t": base.to(dtype) if dtype is not torch.bool else base > 0,
        "strided": base.to(dtype)[:, ::2].transpose(0, 1) if dtype is not torch.bool else (base > 0)[:, ::2],
        "scalar": torch.tensor(3, dtype=dtype) if dtype is not torch.bool else torch.tensor(True),
        "empty": torch.empty(0, 4, dtype=dtype),
    }
    if dtype.is_floating_point:  # NaN payloads and signed zero must survive too
        tensors["special"] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")]).to(dtype)
    got, got_tensors = decode(_over_socket(pair, encode(wire.Ack([]), tensors)), wire.Ack, max_frame_bytes=LIMIT)
    want = {k: v.contiguous() for k, v in tensors.items()}
    tx.assert_tensors_equal(got_tensors, want)


def test_received_tensor_aliases_the_frame(pair):
    """Zero copy on receipt: the tensor's memory *is* the zmq frame's memory."""
    t = torch.arange(256 * 1024, dtype=torch.float32)  # 1 MiB: libzmq gives it its own aligned buffer
    frames = _over_socket(pair, encode(wire.Ack([]), {"x": t}))
    before = FRAME_STATS.aliased
    _, got = decode(frames, wire.Ack, max_frame_bytes=2 * LIMIT)
    assert FRAME_STATS.aliased == before + 1
    frame_view = torch.frombuffer(frames[1].buffer, dtype=torch.uint8)
    assert got["x"].data_ptr() == frame_view.data_ptr()
    frame_view[:4] = 0xFF  # writing the frame changes the tensor: same memory
    assert math.isnan(got["x"][0].item())
    assert torch.equal(got["x"][1:], t[1:])


def test_sent_frame_aliases_the_tensor():
    """Zero copy on send: the frame handed to zmq is a view of the tensor's storage."""
    t = torch.arange(1000, dtype=torch.int64)
    frames = encode(wire.Ack([]), {"x": t})
    view = frames[1]
    assert isinstance(view, memoryview)
    assert torch.frombuffer(view, dtype=torch.uint8).data_ptr() == t.data_ptr()


def _frames(tx):
    return [bytes(f) for f in encode(tx.make_group(0), tx.make_tensors(0))]


@pytest.mark.parametrize("mutate, match", [
    (lambda f: f[:-1], "header lists 4 tensors but 3 tensor frames"),
    (lambda f: f + [b"extra"], "header lists 4 tensors but 5 tensor frames"),
    (lambda f: [f[0]] + [f[1][:-1]] + f[2:], "input_ids.*frame has 87 bytes, header says 88"),
    (lambda f: [b"\x93\x01\x02\x03"] + f[1:], "bad header"),
    (lambda f: [b"not msgpack at all"] + f[1:], "bad header"),
    (lambda f: [], "empty message"),
])
def test_malformed_messages_raise_wire_error(tx, mutate, match):
    with pytest.raises(WireError, match=match):
        decode(mutate(_frames(tx)), wire.TrajectoryGroup, max_frame_bytes=LIMIT)


def test_wrong_type_unknown_tag_unknown_field_and_bad_dtype(tx):
    ack = encode(wire.Ack(["x"]))
    with pytest.raises(WireError, match="expected TrajectoryGroup"):
        decode(ack, wire.TrajectoryGroup, max_frame_bytes=LIMIT)
    enc = msgspec.msgpack.Encoder()
    with pytest.raises(WireError, match="unknown message kind 'no_such_kind'"):
        decode([enc.encode([["no_such_kind", ["x"]], []])], Message, max_frame_bytes=LIMIT)
    with pytest.raises(WireError, match="'ack' has 2 fields, at most 1 are known"):  # an extra positional field
        decode([enc.encode([["ack", ["x"], "surprise"], []])], wire.Ack, max_frame_bytes=LIMIT)
    with pytest.raises(WireError, match=r"'ack' field ids\[0\]: must be a string, got 1"):
        decode([enc.encode([["ack", [1]], []])], wire.Ack, max_frame_bytes=LIMIT)
    meta = TensorMeta("x", "complex64", [1], 8)
    with pytest.raises(WireError, match="unknown dtype 'complex64'"):
        decode([enc.encode([["ack", []], [meta]]), bytes(8)], wire.Ack, max_frame_bytes=LIMIT)
    twice = TensorMeta("x", "uint8", [1], 1)
    with pytest.raises(WireError, match="duplicate tensor name 'x'"):
        decode([enc.encode([["ack", []], [twice, twice]]), b"a", b"b"], wire.Ack, max_frame_bytes=LIMIT)
    lying = TensorMeta("x", "float32", [2], 4)
    with pytest.raises(WireError, match="header says 4 bytes but shape"):
        decode([enc.encode([["ack", []], [lying]]), bytes(4)], wire.Ack, max_frame_bytes=LIMIT)


def test_frame_above_the_limit_is_rejected():
    big = torch.zeros(LIMIT + 1, dtype=torch.uint8)
    with pytest.raises(WireError, match=f"exceeds the limit of {LIMIT}"):
        decode(encode(wire.Ack([]), {"big": big}), wire.Ack, max_frame_bytes=LIMIT)
    with pytest.raises(WireError, match="tensors exceed the limit of 2"):
        decode(encode(wire.Ack([]), {str(i): torch.zeros(1) for i in range(3)}), wire.Ack,
               max_frame_bytes=LIMIT, max_tensors=2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=200), extra=st.lists(st.binary(max_size=64), max_size=3))
def test_fuzzed_bytes_only_ever_raise_wire_error(header, extra):
    try:
        decode([header, *extra], Message, max_frame_bytes=LIMIT)
    except WireError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_mutations_of_a_valid_message_only_raise_wire_error(tx, data):
    frames = _frames(tx)
    header = bytearray(frames[0])
    for _ in range(data.draw(st.integers(1, 4))):
        header[data.draw(st.integers(0, len(header) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode([bytes(header), *frames[1:]], wire.TrajectoryGroup, max_frame_bytes=LIMIT)
    except WireError:
        pass
