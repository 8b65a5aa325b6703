"""Connecting a stage to Ray: an existing cluster when there is one, else a local one.

`RAY_ADDRESS` (set by `ray job submit` and by KubeRay for RayJobs) is respected. Without it a local
cluster is started with the pool resources (`rollout`, `reward`, `learner`) sized from the config so
actors are placed exactly as on a real cluster, the node address asked for on loopback and no
dashboard HTTP server. Ray 2.60 resolves a loopback node address to the host's reachable IP, so its
ports are protected by token auth (on by default), not by the bind (docs/reliability.md). Every actor
process gets one torch thread (two shared cores: more threads are slower).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stgrl.orchestration.config import Config

log = logging.getLogger(__name__)


def actor_env(cfg: Config) -> dict[str, str]:
    """Environment every actor of the job starts with.

    Nothing here depends on the driver's hardware: the driver often runs where no actor does (a
    KubeRay head has no GPU), and Ray merges this env into every actor of the job. DeepSpeed's
    accelerator (``DS_ACCELERATOR``) is chosen per learner rank from the learner's own resources
    (`stgrl.learner.actor.rank_env`), so a GPU rank never inherits the head's CPU view.
    """
    env = {
        "OMP_NUM_THREADS": str(cfg.run.torch_threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": cfg.metrics.wandb_mode,
    }
    for key in ("TORCH_EXTENSIONS_DIR", "MPLCONFIGDIR", "PYTHONPATH"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def local_resources(cfg: Config) -> dict[str, float]:
    """Custom pool resources of a local cluster: enough for the configured pools (+1 spare each, so a
    restarted actor can be placed before Ray reclaims the dead one's share)."""
    return {
        "rollout": float(cfg.rollout.num_workers + 1),
        "reward": float(cfg.reward.num_shards + 1),
        "learner": float(max(cfg.learner.num_ranks, cfg.sft.num_ranks) + 1),
    }


def init_ray(cfg: Config) -> bool:
    """Connect to `RAY_ADDRESS` or start a local cluster. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": actor_env(cfg)}
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to Ray cluster at %s", os.environ["RAY_ADDRESS"])
        # Inside a Ray job the job's runtime env already applies to every actor, and Ray refuses a
        # driver env that names any of its keys again: set only what this process's env lacks.
        env = {k: v for k, v in runtime_env["env_vars"].items() if k not in os.environ}
        # configure_logging=False: Ray's records reach our handlers (the stage's log file) instead of
        # a console handler of its own
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env}, log_to_driver=True,
                 configure_logging=False)
        return False
    log.info("starting a local Ray cluster (no RAY_ADDRESS)")
    ray.init(**local_init_kwargs(cfg), runtime_env=runtime_env)
    return True


def local_init_kwargs(cfg: Config) -> dict[str, Any]:
    """`ray.init` arguments of a local cluster: node address and dashboard host 127.0.0.1, no dashboard
    HTTP server. Token auth stays at Ray's default (on); nothing here turns it off.

    ``address="local"``: always a new cluster. Without it Ray follows a ``ray_current_cluster`` file
    in its temp dir, which a killed run leaves behind, and then refuses ``num_cpus``/``resources``
    ("When connecting to an existing cluster, num_cpus and num_gpus must not be provided")."""
    return {
        "address": "local",
        "num_cpus": max(8, os.cpu_count() or 2),
        "resources": local_resources(cfg),
        "_node_ip_address": "127.0.0.1",
        "dashboard_host": "127.0.0.1",
        "include_dashboard": False,
        "log_to_driver": True,
        "configure_logging": False,
    }
