"""The learner's torch.distributed rendezvous store (issue 26 #5): bound to the master address only,
and a stranger who reaches it can neither read, write, delete nor list the group's keys.

torch's own `TCPStore` (what ``env://`` starts) failed all of that: it listens on every interface,
has no authentication and answers ``list_keys``."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time

import msgspec
import pytest
import zmq

from stgrl.transport.config import TransportConfig
from stgrl.transport.kv_store import MAX_VALUE_BYTES, KVClient, KVError, KVRequest, KVServer
from stgrl.transport.security import CurveKeys, generate_keypair

pytestmark = pytest.mark.timeout(300)

_RANK = r"""
import json, sys
import psutil, torch
from stgrl.learner.engine import WorldInfo, init_distributed
from stgrl.transport.security import CurveKeys
rank, port, public, secret = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4].encode()
kept = init_distributed(WorldInfo(rank=rank, world_size=2, master_addr="127.0.0.1", master_port=port,
                                  store_keys=CurveKeys(public, secret)))
server = kept[1]
t = torch.ones(2) * (rank + 1)
torch.distributed.all_reduce(t)
# a later group (DeepSpeed makes its own) rendezvouses over the same store
torch.distributed.all_reduce(t, group=torch.distributed.new_group([0, 1]))
listening = sorted({c.laddr.ip for c in psutil.Process().net_connections("inet")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port})
torch.distributed.barrier()
print(json.dumps({"rank": rank, "listening": listening, "sum": t.tolist(), "server": server is not None}))
sys.stdout.flush()
torch.distributed.barrier()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys() -> CurveKeys:
    return CurveKeys(*generate_keypair())


CFG = TransportConfig(bind_host="127.0.0.1", timeout_s=5.0)


def test_two_ranks_rendezvous_over_the_authenticated_store_bound_to_the_master_address():
    """A real world of two processes: gloo comes up over our store, rank 0 serves it on the master
    address only, and the collective works."""
    port, keys = _free_port(), _keys()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), str(port), keys.public.decode(),
                               keys.secret.decode()], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = {r["rank"]: r for r in (json.loads(o.strip().splitlines()[-1]) for o, _ in outs)}
    assert results[0]["sum"] == results[1]["sum"] == [6.0, 6.0]
    assert results[0]["server"] and not results[1]["server"]
    assert results[0]["listening"] == ["127.0.0.1"], f"store listens on {results[0]['listening']}"


def test_a_world_of_one_listens_nowhere():
    """One rank needs no rendezvous peer: an in-process store, no port at all."""
    from stgrl.learner.rendezvous import rendezvous_store

    store, server = rendezvous_store("127.0.0.1", _free_port(), 0, 1, None)
    assert server is None
    store.set("k", "v")
    assert store.get("k") == b"v"


def test_a_larger_world_without_the_group_keys_is_refused_in_our_words():
    from stgrl.learner.rendezvous import RendezvousError, rendezvous_store

    with pytest.raises(RendezvousError, match="no rendezvous keys"):
        rendezvous_store("127.0.0.1", _free_port(), 1, 2, None)


@pytest.fixture
def served():
    keys = _keys()
    server = KVServer(CFG, keys)
    client = KVClient(server.address, CFG, keys, timeout_s=5.0)
    client.request("set", [b"group/key"], value=b"group-value")
    yield server, client, keys
    client.close()
    server.close()


def test_a_stranger_without_the_key_pair_reads_writes_deletes_and_lists_nothing(served):
    """torch's own client, a plaintext ZeroMQ peer and a CURVE peer with another key pair all get
    nothing; the group's key is untouched."""
    import torch.distributed as dist

    server, client, _ = served
    # torch's TCPStore client (what the stranger used against TCPStore): never gets a store session
    with pytest.raises((RuntimeError, TimeoutError)):  # torch.distributed errors are RuntimeErrors
        stranger = dist.TCPStore("127.0.0.1", server.port, is_master=False,
                                 timeout=datetime.timedelta(seconds=3))
        stranger.list_keys()
    # a plaintext ZeroMQ peer speaking our protocol: the CURVE handshake fails, no reply ever comes
    ctx = zmq.Context()
    plain = ctx.socket(zmq.DEALER)
    plain.linger = 0
    plain.connect(server.address)
    for op, value in (("get", b""), ("set", b"stranger"), ("delete", b"")):
        plain.send(msgspec.msgpack.encode(KVRequest(rid=1, op=op, keys=[b"group/key"], value=value)))
    assert not plain.poll(1500), "a peer without CURVE keys got an answer"
    plain.close()
    ctx.term()
    # a CURVE peer with a key pair that is not the group's: refused at the handshake
    other = KVClient(server.address, CFG, _keys(), timeout_s=2.0)
    with pytest.raises(KVError, match="refused|never connected"):
        other.request("set", [b"group/key"], value=b"stranger")
    other.close()
    assert client.request("get", [b"group/key"]).value == b"group-value"
    assert client.request("num_keys").number == 1


def test_malformed_and_oversized_requests_get_errors_and_the_store_keeps_serving(served):
    server, client, keys = served
    sock = client._sock.sock
    for junk in (b"\xc1", msgspec.msgpack.encode([[[[[]]]]] * 3), b"\x91" * 200_000):
        sock.send(junk)
        assert sock.poll(5000), "no answer to a malformed request"
        reply = msgspec.msgpack.decode(sock.recv())
        assert reply[1] is False and "malformed store request" in reply[4]
    with pytest.raises(KVError, match="malformed store request"):
        client.request("set", [b"big"], value=b"x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(KVError, match="needs exactly one key"):
        client.request("get", [b"a", b"b"])
    client.request("set", [b"n"], value=b"not a number")
    with pytest.raises(KVError, match="does not hold an integer"):
        client.request("add", [b"n"], amount=1)
    assert server.refused >= 6
    assert client.request("get", [b"group/key"]).value == b"group-value"


def test_the_store_keeps_torch_semantics(served):
    """What gloo, NCCL and torch's barriers rely on: add, compare_set, wait, delete, num_keys."""
    from stgrl.learner.rendezvous import AuthenticatedStore

    _, client, _ = served
    store = AuthenticatedStore(client, timeout_s=2.0)
    assert store.add("c", 2) == 2 and store.add("c", 3) == 5
    assert store.compare_set("cs", "", "first") == b"first"  # absent key matches an empty expected
    assert store.compare_set("cs", "wrong", "second") == b"first"
    assert store.compare_set("cs", "first", "second") == b"second"
    assert store.check(["c", "cs"]) and not store.check(["c", "absent"])
    assert store.delete_key("c") and not store.delete_key("c")
    store.set("bytes", b"\x00\x01")
    assert store.get("bytes") == b"\x00\x01"
    assert store.num_keys() == 3  # group/key, cs, bytes
    t0 = time.monotonic()
    with pytest.raises(KVError, match=r"store keys \[late\] not set within 1s"):
        store.wait(["late"], datetime.timedelta(seconds=1))
    assert time.monotonic() - t0 < 5
