"""The torch.distributed rendezvous store, bound to the master address only.

Why: ``init_process_group(init_method="env://")`` makes rank 0 start a `TCPStore` that listens on
*every* interface, and the store has no authentication: anyone who can reach the port can read,
write and delete keys (shown from 127.0.0.1 by a stranger). We cannot add authentication to
torch's store, so we narrow who can reach it:

- rank 0 binds the listening socket itself to ``master_addr`` (the node address the ranks use:
  loopback on a single machine, the node IP on a cluster) and hands the bound socket to `TCPStore`
  (``master_listen_fd``), so nothing listens on other interfaces;
- the port is picked fresh per learner group and lives only as long as the group.

What remains (docs/reliability.md, known gaps): a process that can reach ``master_addr`` (any local
user on one machine, any pod in the cluster network) can still talk to the store while the group
runs. On Kubernetes a NetworkPolicy limiting the learner pods' ingress closes that.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket

import torch.distributed as dist

__all__ = ["bound_store"]


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: resolve it the way the other ranks will
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]


def bound_store(master_addr: str, master_port: int, rank: int, world_size: int,
                timeout_s: float = 300.0) -> dist.TCPStore:
    """Rank 0: a store server listening on ``master_addr:master_port`` only; other ranks: a client.

    The store waits at most ``timeout_s`` for its peers (torch's default is the same 300 s).
    """
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank != 0:
        return dist.TCPStore(master_addr, master_port, world_size, is_master=False, timeout=timeout)
    sock = socket.socket(_family(master_addr), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((master_addr, master_port))
        sock.listen(max(128, world_size))
    except OSError:
        sock.close()
        raise
    # The store owns the descriptor from here on (it closes it when it shuts down).
    return dist.TCPStore(master_addr, master_port, world_size, is_master=True, timeout=timeout,
                         wait_for_workers=False, master_listen_fd=sock.detach())
