"""A shard bound to every interface (`transport.bind_host=0.0.0.0`, as in the RayJobs) advertises an
address a peer on another host can connect to, never the wildcard (issue 19: the driver connected
to `tcp://0.0.0.0:port`, i.e. its own pod, and every batch missed its deadline)."""

from __future__ import annotations

import socket

import pytest

from stgrl.reward_service.client import RewardClient
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.rewards import score_batch
from stgrl.reward_service.server import ShardServer
from stgrl.transport.advertise import advertised_host
from stgrl.transport.config import TransportConfig
from stgrl.transport.security import CurveKeys, generate_keypair

CFG = RewardConfig(batch_size=8, deadline_s=2.0)


@pytest.mark.timeout(60)
def test_wildcard_bound_shard_advertises_this_hosts_address(samples_of):
    keys = CurveKeys(*generate_keypair())
    srv = ShardServer(0, CFG, TransportConfig(bind_host="0.0.0.0"), keys=keys)
    srv.start()
    try:
        host = srv.address.removeprefix("tcp://").rsplit(":", 1)[0]
        assert host != "0.0.0.0", srv.address
        # Ray's node IP when this process is in Ray, else what the hostname names
        assert host == advertised_host("0.0.0.0")
        assert not host.startswith("127.") or socket.gethostbyname(socket.gethostname()).startswith("127.")
        samples = samples_of(6)
        with RewardClient([srv.address], CFG, keys=keys) as client:  # connects to what was advertised
            assert client.score(samples, 0, 10) == score_batch(samples, 0, 10, CFG)
    finally:
        srv.stop()


def test_specific_bind_address_is_its_own_advertised_address():
    assert advertised_host("127.0.0.1") == "127.0.0.1"
    assert advertised_host("10.1.2.3") == "10.1.2.3"
    for wildcard in ("0.0.0.0", "*"):
        assert advertised_host(wildcard) not in ("0.0.0.0", "*")
