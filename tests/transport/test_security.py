"""CURVE: when it is on, that the run's key pair admits its holders, and that everyone else is refused."""

from __future__ import annotations

import pytest
import torch

from stgrl.transport.endpoints import PeerRefused, ServerSocket, TransportTimeout
from stgrl.transport.security import CurveKeys, generate_keypair, is_loopback, needs_curve
from stgrl.transport.trajectory_channel import TrajectoryReceiver, TrajectorySender
from stgrl.transport.weight_channel import WeightPublisher, WeightSubscriber

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def keys() -> CurveKeys:
    return CurveKeys(*generate_keypair())


@pytest.mark.parametrize("host, mode, want", [
    ("127.0.0.1", "auto", False), ("localhost", "auto", False), ("::1", "auto", False),
    ("127.3.2.1", "auto", False), ("0.0.0.0", "auto", True), ("10.0.0.7", "auto", True),
    ("ray-head.svc", "auto", True), ("127.0.0.1", "on", True), ("10.0.0.7", "off", False),
])
def test_needs_curve(host, mode, want):
    assert needs_curve(host, mode) is want
    assert is_loopback(host) is (host in ("127.0.0.1", "localhost", "::1", "127.3.2.1"))


def test_keypairs_are_fresh_and_the_secret_never_prints():
    a, b = generate_keypair(), generate_keypair()
    assert a != b and all(len(k) == 40 for k in (*a, *b))
    assert a[1].decode() not in repr(CurveKeys(*a))


def test_binding_off_loopback_requires_keys(tx):
    with pytest.raises(ValueError, match="CURVE is required for bind host '0.0.0.0'"):
        ServerSocket(tx.small_cfg(bind_host="0.0.0.0"), None)


def test_auto_mode_turns_curve_on_off_loopback_and_refuses_a_plain_client(tx, keys):
    cfg = tx.small_cfg(bind_host="0.0.0.0", curve="auto")
    pub = WeightPublisher(cfg, keys, advertise_host="127.0.0.1")
    try:
        assert pub.curve
        pub.publish(1, {"w": torch.ones(4)})
        plain = WeightSubscriber(pub.address, cfg)
        try:
            with pytest.raises((PeerRefused, TransportTimeout), match="refused the handshake|never connected"):
                plain.poll_latest(1.0)
        finally:
            plain.close()
        good = WeightSubscriber(pub.address, cfg, keys, server_public=keys.public)
        try:
            assert good.poll_latest(5)[0] == 1
        finally:
            good.close()
    finally:
        pub.close()


def test_clients_without_the_server_key_or_with_a_foreign_key_are_refused(tx, keys):
    cfg = tx.small_cfg(curve="on")
    pub = WeightPublisher(cfg, keys)
    try:
        pub.publish(1, {"w": torch.arange(10.0)})
        foreign = CurveKeys(*generate_keypair())
        for name, sub in [
            ("no key", WeightSubscriber(pub.address, cfg, subscriber_id="intruder-a")),
            ("own key pair", WeightSubscriber(pub.address, cfg, foreign, server_public=keys.public,
                                              subscriber_id="intruder-b")),
            ("wrong server key", WeightSubscriber(pub.address, cfg, keys, server_public=foreign.public,
                                                  subscriber_id="intruder-c")),
        ]:
            try:
                with pytest.raises((PeerRefused, TransportTimeout), match=f"{pub.address}.*refused the handshake"):
                    sub.poll_latest(1.5)
                assert sub.current_version is None, name
            finally:
                sub.close()
        assert pub.subscriber_versions() == {}  # no intruder ever got as far as a report
        rx = TrajectoryReceiver(cfg, keys, auto_commit=True)
        intruder = TrajectorySender(rx.address, cfg, foreign, server_public=keys.public)
        try:
            intruder.send(tx.make_group(0))
            with pytest.raises(PeerRefused, match="rejected our CURVE credentials"):
                intruder.flush(2.0)
            with pytest.raises(TransportTimeout):
                rx.recv(0.3)
            assert rx.stats.delivered == 0 and rx.stats.rejected == 0  # refused before any message
        finally:
            intruder.close()
            rx.close()
    finally:
        pub.close()
