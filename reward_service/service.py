"""The sharded reward service on Ray: `RewardShard` actors (CPU, custom resource `reward`) serving
`score_batch` over ZeroMQ, and `start_reward_service` to bring up S shards plus a `RewardClient`.

Ray owns placement, lifecycle and restarts (`max_restarts`); the scoring data never goes through
Ray, only over the shards' sockets, which are the shared transport's (`stgrl.transport.endpoints`,
framed as `wire.py` says). The actor is a thin shell around `ShardServer`.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from stgrl.reward_service.client import RewardClient, RewardServiceError
from stgrl.reward_service.config import RewardConfig
from stgrl.reward_service.metrics import RayMetricsExporter
from stgrl.reward_service.server import ShardServer
from stgrl.transport.config import TransportConfig
from stgrl.transport.security import CurveKeys, needs_curve

__all__ = ["RewardClient", "RewardServiceError", "RewardShard", "start_reward_service", "stop_reward_service"]

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1, resources={"reward": 1}, max_restarts=3)
class RewardShard:
    """One reward shard. Its socket serves from a background thread, so `stats()` and `address()`
    answer while it scores. After a restart it binds a new port: clients look `address()` up again."""

    def __init__(self, shard_id: int, cfg: RewardConfig, transport: TransportConfig | None = None,
                 export_metrics: bool = True, keys: CurveKeys | None = None):
        self._exporter = RayMetricsExporter(shard_id) if export_metrics else None
        self._server = ShardServer(shard_id, cfg, transport, on_request=self._export, keys=keys)
        self._server.start()

    def _export(self, latency_s: float, n_samples: int) -> None:
        if self._exporter is not None:
            self._exporter.export(self._server.stats, latency_s, n_samples)

    def address(self) -> str:
        """`tcp://host:port` of this shard's ROUTER socket."""
        return self._server.address

    def stats(self) -> dict:
        """Requests, samples, requests/s, latency p50/p99/max and per-component means (see metrics.py)."""
        return {"shard": self._server.shard_id, "address": self._server.address, **self._server.stats.snapshot()}

    def stop(self) -> None:
        self._server.stop()
        if self._exporter is not None:
            self._exporter.close()


def start_reward_service(num_shards: int, cfg: RewardConfig, *, num_cpus: float = 1.0,
                         transport: TransportConfig | None = None, start_timeout_s: float = 120.0,
                         keys: CurveKeys | None = None) -> tuple[list[Any], RewardClient]:
    """Start `num_shards` shard actors (each asks for one `reward` resource) and a client to them.

    Needs a running Ray (`ray.init` is the caller's job). Blocks until every shard listens.
    ``transport`` is the run's data-plane options (bind host, CURVE mode, heartbeats; default
    loopback): where it calls for CURVE (off loopback, or ``curve: on``) the shards are authenticated
    CURVE servers with the run's `keys` and the client presents the same keys.
    """
    transport = transport or TransportConfig()
    handles = [RewardShard.options(num_cpus=num_cpus).remote(i, cfg, transport, True, keys)
               for i in range(num_shards)]
    client_keys = keys if needs_curve(transport.bind_host, transport.curve) else None
    client = RewardClient(handles, cfg, transport=transport, lookup_timeout_s=start_timeout_s, keys=client_keys)
    # the addresses the shards advertise: on a multi-pod cluster each must be its pod's IP
    addresses = ray.get([h.address.remote() for h in handles], timeout=start_timeout_s)
    log.info("reward service up: %d shard(s) at %s", num_shards, ", ".join(addresses), extra={"console": True})
    return handles, client


def stop_reward_service(handles: list[Any], client: RewardClient | None = None) -> None:
    """Close the client and kill the shard actors (no restart)."""
    if client is not None:
        client.close()
    for h in handles:
        ray.kill(h)
