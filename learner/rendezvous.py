"""The torch.distributed rendezvous store: authenticated, bound to the master address only.

Why not torch's: ``init_process_group(init_method="env://")`` makes rank 0 start a `TCPStore` that
listens on *every* interface without authentication — and `TCPStore` answers ``list_keys`` — so
anyone who can reach the port can read, write and delete the group's keys (shown from 127.0.0.1 by
a stranger). Ours:

- a world of one uses an in-process `HashStore`: nothing listens at all;
- a larger world runs a `KVServer` (stgrl.transport.kv_store) in rank 0, bound to ``master_addr``
  only (the node address the ranks use: loopback on one machine, the node IP on a cluster), always
  CURVE-authenticated with the group's own key pair, which `start_learner_group` makes fresh and
  hands to the ranks as an actor argument (Ray's token-authenticated control plane, never disk);
- every rank, rank 0 included, talks to it through `AuthenticatedStore`, a `torch.distributed.Store`
  that gloo, NCCL and DeepSpeed use like any other store;
- the port is picked fresh per learner group and lives only as long as the group.

What remains (docs/reliability.md, known gaps): the collective backends' own connections between
ranks (gloo's pairs, NCCL's sockets) are, as in every torch.distributed deployment, not
authenticated; on Kubernetes a NetworkPolicy limiting the learner pods' ingress closes that.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch.distributed as dist

from stgrl.transport.config import TransportConfig
from stgrl.transport.kv_store import KVClient, KVServer
from stgrl.transport.security import CurveKeys

__all__ = ["AuthenticatedStore", "RendezvousError", "rendezvous_store"]


class RendezvousError(RuntimeError):
    """The group's store cannot be set up or reached; the message names the rank and the address."""


def _bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


class AuthenticatedStore(dist.Store):
    """`torch.distributed.Store` over a `KVClient`: blocking reads poll the server until the key is
    there or the store's timeout passes (torch sets the timeout; 300 s by default)."""

    def __init__(self, client: KVClient, timeout_s: float) -> None:
        super().__init__()
        self._client = client
        self._timeout_s = timeout_s

    def _limit(self, timeout: datetime.timedelta | None = None) -> float:
        if timeout is not None and timeout.total_seconds() > 0:
            return timeout.total_seconds()
        return self._timeout_s

    def set(self, key: str, value: Any) -> None:
        self._client.request("set", [key.encode()], value=_bytes(value))

    def get(self, key: str) -> bytes:
        self._client.wait_for([key.encode()], self._limit())
        value = self._client.request("get", [key.encode()]).value
        return b"" if value is None else value

    def add(self, key: str, amount: int) -> int:
        return self._client.request("add", [key.encode()], amount=int(amount)).number

    def check(self, keys: list[str]) -> bool:
        return bool(self._client.request("check", [k.encode() for k in keys]).number)

    def wait(self, keys: list[str], timeout: datetime.timedelta | None = None) -> None:
        self._client.wait_for([k.encode() for k in keys], self._limit(timeout))

    def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
        value = self._client.request("compare_set", [key.encode()], value=_bytes(desired),
                                     expected=_bytes(expected)).value
        return b"" if value is None else value

    def delete_key(self, key: str) -> bool:
        return bool(self._client.request("delete", [key.encode()]).number)

    def num_keys(self) -> int:
        return self._client.request("num_keys").number


def rendezvous_store(master_addr: str, master_port: int, rank: int, world_size: int,
                     keys: CurveKeys | None, timeout_s: float = 300.0) -> tuple[dist.Store, KVServer | None]:
    """The store this rank initialises torch.distributed with, and (rank 0 of a world > 1) the server
    that must live as long as the process group.

    World of one: an in-process `HashStore`. Larger: rank 0 serves on ``master_addr:master_port``;
    every rank needs the group's ``keys``."""
    if world_size == 1:
        return dist.HashStore(), None
    if keys is None:
        raise RendezvousError(f"learner rank {rank} of {world_size}: no rendezvous keys; the ranks of one group "
                              "must share the group's key pair (start_learner_group makes one)")
    cfg = TransportConfig(bind_host=master_addr, timeout_s=timeout_s)  # the store forces CURVE itself
    server = None
    if rank == 0:
        try:
            server = KVServer(cfg, keys, port=master_port)
        except Exception as e:
            raise RendezvousError(f"learner rank 0 could not serve its rendezvous store on "
                                  f"{master_addr}:{master_port}: {e}") from e
    address = f"tcp://{master_addr}:{master_port}"
    return AuthenticatedStore(KVClient(address, cfg, keys, timeout_s=timeout_s), timeout_s), server
