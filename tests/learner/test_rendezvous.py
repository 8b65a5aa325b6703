"""The learner's torch.distributed store listens on the master address only (issue 26 #5)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)

_RANK0 = r"""
import json, os, sys
import psutil, torch
from stgrl.learner.engine import WorldInfo, init_distributed
port = int(sys.argv[1])
init_distributed(WorldInfo(rank=0, world_size=1, master_addr="127.0.0.1", master_port=port))
t = torch.ones(2)
torch.distributed.all_reduce(t)
listening = sorted({c.laddr.ip for c in psutil.Process().net_connections("inet")
                    if c.status == psutil.CONN_LISTEN and c.laddr.port == port})
print(json.dumps({"listening": listening, "sum": t.tolist()}))
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rendezvous_store_listens_on_the_master_address_only():
    """torch's env:// store listens on every interface (``::`` / ``0.0.0.0``) and has no auth; ours is
    bound to the master address, and the process group still works over it."""
    port = _free_port()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _RANK0, str(port)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sum"] == [1.0, 1.0]
    assert result["listening"] == ["127.0.0.1"], f"store listens on {result['listening']}"


def test_a_store_client_of_the_bound_store_reads_what_rank_0_wrote():
    """Rank 0's bound store serves other ranks (here: a client in the same process)."""
    from stgrl.learner.rendezvous import bound_store

    port = _free_port()
    server = bound_store("127.0.0.1", port, rank=0, world_size=2, timeout_s=30)
    client = bound_store("127.0.0.1", port, rank=1, world_size=2, timeout_s=30)
    server.set("k", "v")
    assert client.get("k") == b"v"
    del client, server
