"""Trajectory channel over real sockets and real Ray actors: delivery, acks, de-duplication,
rejection of malformed messages, back-pressure, and restarts of either side."""

from __future__ import annotations

import os
import socket
import time

import pytest
import ray
import torch
import xxhash
import zmq

from stgrl.transport.endpoints import TransportTimeout
from stgrl.transport.security import CurveKeys, generate_keypair
from stgrl.transport.trajectory_channel import TrajectoryReceiver, TrajectorySender
from stgrl.transport.wire import Reject, TrajectoryGroup, decode, encode

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def keys() -> CurveKeys:
    return CurveKeys(*generate_keypair())


def _digest(tensors: dict[str, torch.Tensor]) -> int:
    return xxhash.xxh3_64_intdigest(b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes()
                                             for t in tensors.values()))


def test_groups_arrive_once_and_are_acked_after_commit(tx, keys):
    cfg = tx.small_cfg(curve="on")
    rx = TrajectoryReceiver(cfg, keys)
    tx_ = TrajectorySender(rx.address, cfg, keys, server_public=keys.public)
    try:
        for i in range(6):
            tx_.send(tx.make_group(i), tx.make_tensors(i))
        got = []
        for _ in range(6):
            group, tensors = rx.recv(5)
            i = int(group.prompt_id[1:])
            assert group == tx.make_group(i)
            tx.assert_tensors_equal(tensors, tx.make_tensors(i))
            got.append(group.group_id)
        assert sorted(got) == sorted(tx.make_group(i).group_id for i in range(6))
        time.sleep(3 * cfg.resend_after_s)  # nothing committed yet: the sender re-sends ...
        tx_.poll(0)
        assert tx_.pending == 6 and tx_.resends >= 6
        with pytest.raises(TransportTimeout, match=f"no trajectory group from any sender at {rx.address}"):
            rx.recv(0.5)  # ... and the receiver drops every re-send of a delivered id
        assert rx.stats.duplicates >= 6 and rx.stats.delivered == 6
        rx.commit(got)
        tx_.flush(5)
        assert tx_.pending == 0
    finally:
        tx_.close()
        rx.close()


def test_malformed_messages_are_rejected_and_the_next_good_one_arrives(tx):
    cfg = tx.small_cfg(curve="off")
    rx = TrajectoryReceiver(cfg, None, auto_commit=True)
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(rx.address)
    good = TrajectorySender(rx.address, cfg)
    try:
        frames = [bytes(f) for f in encode(tx.make_group(7), tx.make_tensors(7))]
        raw.send_multipart([b"\xc1garbage"])                     # not msgpack
        raw.send_multipart(frames[:-1])                          # one tensor frame missing
        raw.send_multipart(encode(tx.make_group(8), {"big": torch.zeros(cfg.max_frame_bytes + 1,
                                                                         dtype=torch.uint8)}))
        raw.send_multipart(encode(Reject("wrong type")))         # valid message, wrong type
        deadline = time.monotonic() + 10
        while rx.stats.rejected < 4 and time.monotonic() < deadline:
            with pytest.raises(TransportTimeout):
                rx.recv(0.2)  # each bad message is refused; none is delivered
        assert rx.stats.rejected == 4
        good.send(tx.make_group(9), tx.make_tensors(9))
        group, tensors = rx.recv(5)
        assert group.group_id == tx.make_group(9).group_id
        tx.assert_tensors_equal(tensors, tx.make_tensors(9))
        assert rx.stats.rejected == 4 and rx.stats.delivered == 1
        replies = []
        while raw.poll(2000) and len(replies) < 4:
            replies.append(decode(raw.recv_multipart(), Reject, max_frame_bytes=1 << 20)[0])
        assert [r.ids for r in replies] == [[], ["0/p7"], ["0/p8"], []]
        assert "bad header" in replies[0].reason
        assert "header lists 4 tensors but 3" in replies[1].reason
        assert "exceeds the limit" in replies[2].reason
        assert "expected TrajectoryGroup" in replies[3].reason
        good.flush(5)
    finally:
        raw.close(0)
        good.close()
        rx.close()


def test_full_window_blocks_then_times_out_naming_the_receiver(tx):
    cfg = tx.small_cfg(curve="off", high_water_mark=2)
    rx = TrajectoryReceiver(cfg, None)  # never reads: no acks come back
    tx_ = TrajectorySender(rx.address, cfg)
    try:
        tx_.send(tx.make_group(0))
        tx_.send(tx.make_group(1))
        t0 = time.monotonic()
        with pytest.raises(TransportTimeout, match=f"no ack for 2 pending groups from {rx.address} within 0.8s"):
            tx_.send(tx.make_group(2), timeout=0.8)
        assert 0.7 < time.monotonic() - t0 < 3.0
        with pytest.raises(TransportTimeout, match=rx.address):
            tx_.flush(0.5)
    finally:
        tx_.close()
        rx.close()


def test_sender_to_nobody_times_out_with_a_clear_error(tx):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tx.small_cfg(curve="off")
    tx_ = TrajectorySender(f"tcp://127.0.0.1:{port}", cfg)
    try:
        tx_.send(tx.make_group(0))
        with pytest.raises(TransportTimeout, match=f"127.0.0.1:{port}.*never connected"):
            tx_.flush(0.5)
    finally:
        tx_.close()


# --- restarts, with real Ray actors ----------------------------------------------------------------


def _actors():
    @ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)
    class Receiver:
        """The receiving end inside an actor; its consumer is the test driver."""

        def __init__(self, cfg, keys, port):
            torch.set_num_threads(1)
            self.rx = TrajectoryReceiver(cfg, keys, port=port)

        def take(self, n, timeout):
            out = []
            try:
                while len(out) < n:
                    group, tensors = self.rx.recv(timeout)
                    out.append((group.group_id, group.prompt_id, _digest(tensors)))
            except TransportTimeout:
                pass
            return out

        def commit(self, ids):
            self.rx.commit(ids)

        def stats(self):
            return self.rx.stats

        def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0, max_restarts=1, max_task_retries=0)
    class Sender:
        def __init__(self, address, cfg, keys, make_group, make_tensors):
            torch.set_num_threads(1)
            self.tx = TrajectorySender(address, cfg, keys, server_public=keys.public)
            self.make_group, self.make_tensors = make_group, make_tensors

        def send_range(self, start, stop, delay=0.0):
            for i in range(start, stop):
                self.tx.send(self.make_group(i), self.make_tensors(i))
                time.sleep(delay)
            self.tx.flush()
            return self.tx.resends

        def pid(self):
            return os.getpid()

    return Receiver, Sender


def _when_back(call, limit_s: float = 60.0):
    """Retry an idempotent actor call while Ray restarts the actor."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return ray.get(call(), timeout=limit_s)
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receiver_killed_mid_stream_then_restarted_delivers_each_group_exactly_once(ray_cluster, tx, keys):
    tx.ship_by_value(__name__)
    Receiver, Sender = _actors()
    n = 40
    cfg = tx.small_cfg(curve="on", high_water_mark=8, timeout_s=60.0)
    port = _free_port()
    rx = Receiver.remote(cfg, keys, port)
    sender = Sender.remote(f"tcp://127.0.0.1:{port}", cfg, keys, tx.make_group, tx.make_tensors)
    done = sender.send_range.remote(0, n)
    consumed: dict[str, tuple[str, int]] = {}

    def take(commit: bool) -> int:
        batch = ray.get(rx.take.remote(5, 1.0), timeout=60)
        for gid, pid, digest in batch:
            assert gid not in consumed, f"{gid} delivered twice"
            consumed[gid] = (pid, digest)
        if commit and batch:
            ray.get(rx.commit.remote([b[0] for b in batch]), timeout=60)
        return len(batch)

    while len(consumed) < 15:
        take(commit=True)
    assert take(commit=False) > 0       # the consumer holds these, but no ack went out yet
    old_pid = ray.get(rx.pid.remote(), timeout=60)
    ray.kill(rx, no_restart=False)      # receiver dies mid-stream; Ray restarts it on the same port
    deadline = time.monotonic() + 60
    while _when_back(lambda: rx.pid.remote()) == old_pid:  # ray.kill is asynchronous
        assert time.monotonic() < deadline, "receiver actor was not restarted"
        time.sleep(0.1)
    _when_back(lambda: rx.commit.remote(list(consumed)))  # the consumer tells it what it holds
    deadline = time.monotonic() + 60
    while len(consumed) < n and time.monotonic() < deadline:
        take(commit=True)
    resends = ray.get(done, timeout=60)  # every group acknowledged
    assert take(commit=True) == 0        # and nothing more arrives
    assert sorted(consumed) == sorted(tx.make_group(i).group_id for i in range(n))
    for pid, digest in consumed.values():
        assert digest == _digest(tx.make_tensors(int(pid[1:])))
    stats = ray.get(rx.stats.remote(), timeout=60)
    assert stats.duplicates >= 1        # re-sends of groups the consumer already held were dropped
    assert resends >= 1
    ray.kill(sender)
    ray.kill(rx, no_restart=True)


def test_sender_killed_and_regenerating_everything_causes_no_duplicates(ray_cluster, tx, keys):
    tx.ship_by_value(__name__)
    _, Sender = _actors()
    n = 30
    cfg = tx.small_cfg(curve="on", timeout_s=60.0)
    rx = TrajectoryReceiver(cfg, keys, auto_commit=True)
    try:
        sender = Sender.remote(rx.address, cfg, keys, tx.make_group, tx.make_tensors)
        old_pid = ray.get(sender.pid.remote(), timeout=60)  # before it is busy sending
        first = sender.send_range.remote(0, n, 0.05)
        got: list[TrajectoryGroup] = []
        while len(got) < n // 3:
            got.append(rx.recv(30)[0])
        assert not ray.wait([first], timeout=0)[0]  # the sender is still mid-stream
        ray.kill(sender, no_restart=False)                  # dies mid-stream ...
        deadline = time.monotonic() + 60
        while _when_back(lambda: sender.pid.remote()) == old_pid:  # ray.kill is asynchronous
            assert time.monotonic() < deadline, "sender actor was not restarted"
            time.sleep(0.1)
        done = sender.send_range.remote(0, n)               # ... and regenerates every prompt
        while len(got) < n:
            got.append(rx.recv(30)[0])
        ray.get(done, timeout=60)
        with pytest.raises(TransportTimeout):
            rx.recv(0.5)
        ids = [g.group_id for g in got]
        assert len(set(ids)) == len(ids) == n
        assert rx.stats.duplicates >= n // 3
        ray.kill(sender, no_restart=True)
    finally:
        rx.close()
