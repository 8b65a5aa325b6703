"""A learner rank's trajectory inbox (issue 20 #2): groups with their tensors arrive from senders while
the rank is busy, a step takes its groups in plan order, a missing group is named in the timeout, late
re-sends are dropped, the hold is bounded, and close releases the port."""

from __future__ import annotations

import socket
import time

import pytest

from stgrl.learner.inbox import InboxTimeout, TrajectoryInbox
from stgrl.transport.endpoints import PeerRefused
from stgrl.transport.trajectory_channel import TrajectorySender

pytestmark = pytest.mark.timeout(120)


def _port_is_free(address: str) -> bool:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def test_a_step_takes_its_groups_with_tensors_in_plan_order(tx):
    cfg = tx.small_cfg(curve="off")
    inbox = TrajectoryInbox(cfg, rank=1)
    sender = TrajectorySender(inbox.address, cfg)
    try:
        for i in (2, 1, 3):
            sender.send(tx.make_group(i, step=0), tx.make_tensors(i))
        sender.send(tx.make_group(1, step=0), tx.make_tensors(1))  # a re-send: de-duplicated
        sender.send(tx.make_group(9, step=1), tx.make_tensors(9))  # the next step's, generated ahead
        sender.flush()  # acknowledged without any `take`: the inbox thread receives on its own
        got = inbox.take(0, ["0/p1", "0/p3", "0/p2"], timeout_s=5)
        assert [g.group_id for g, _ in got] == ["0/p1", "0/p3", "0/p2"]
        for (_, tensors), i in zip(got, (1, 3, 2)):
            tx.assert_tensors_equal(tensors, tx.make_tensors(i))
        # step 0 forgotten, step 1 kept (its ack can reach the sender just before the inbox holds it)
        deadline = time.monotonic() + 5
        while inbox.held() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inbox.held() == 1
        sender.send(tx.make_group(4, step=0), tx.make_tensors(4))  # late: step 0 was trained
        sender.flush()
        deadline = time.monotonic() + 5
        while inbox.dropped_late < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inbox.dropped_late == 1 and inbox.held() == 1
        with pytest.raises(InboxTimeout, match=r"learner rank 1: 1 trajectory group\(s\) of step 1 did not arrive"
                                               r".*\['1/p7'\]"):
            inbox.take(1, ["1/p9", "1/p7"], timeout_s=0.5)
    finally:
        sender.close()
        inbox.close()
    assert _port_is_free(inbox.address)


def test_the_hold_is_bounded(tx):
    cfg = tx.small_cfg(curve="off")
    inbox = TrajectoryInbox(cfg, max_groups=2)
    sender = TrajectorySender(inbox.address, cfg)
    try:
        for i in range(4):
            sender.send(tx.make_group(i, step=5), tx.make_tensors(i))
        sender.flush()
        deadline = time.monotonic() + 5
        while inbox.dropped_full < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inbox.held() == 2 and inbox.dropped_full == 2
    finally:
        sender.close()
        inbox.close()


def test_curve_inbox_refuses_a_sender_without_the_key(tx):
    from stgrl.transport.security import CurveKeys, generate_keypair

    cfg = tx.small_cfg(curve="on")
    keys = CurveKeys(*generate_keypair())
    inbox = TrajectoryInbox(cfg, keys)
    stranger = TrajectorySender(inbox.address, cfg)  # no CURVE: the handshake never completes
    member = TrajectorySender(inbox.address, cfg, keys, server_public=keys.public)
    try:
        with pytest.raises(PeerRefused):  # the stranger is told, sooner or later
            stranger.send(tx.make_group(1, step=0), tx.make_tensors(1))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                stranger.poll(0.1)
        member.send(tx.make_group(2, step=0), tx.make_tensors(2))
        member.flush()
        with pytest.raises(InboxTimeout, match=r"\['0/p1'\]"):
            inbox.take(0, ["0/p2", "0/p1"], timeout_s=1.0)
        assert inbox.held() == 1
    finally:
        stranger.close()
        member.close()
        inbox.close()
