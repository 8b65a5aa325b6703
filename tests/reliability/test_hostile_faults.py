"""Faults from issue 26 that need Ray: a worker Ray restarted rejoins its pool, a stale
``ray_current_cluster`` file does not stop a local run, the reward shard survives hostile messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


def _pingable_actor(ray):
    @ray.remote(num_cpus=0, max_restarts=3, max_task_retries=0)
    class Pingable:
        """Stands in for a rollout worker: the driver's liveness ping is `version()`."""

        def pid(self) -> int:
            return os.getpid()

        def version(self, delay_s: float = 0.0) -> int:
            time.sleep(delay_s)
            return 0

    return Pingable


def test_a_worker_restarted_by_ray_rejoins_the_pool(ray_cluster, tmp_path):
    """Issue 26 #3: a ping in flight when the worker died fails with ActorUnavailableError ("The actor
    was restarted"); that is transient, so the driver pings again and the restarted worker rejoins,
    instead of "rollout worker 0 is gone for good"."""
    import ray
    from ray.exceptions import ActorUnavailableError

    from stgrl.orchestration.rollout_pool import RolloutPool

    pool = RolloutPool(load_config(None))
    worker = _pingable_actor(ray).remote()
    pid = ray.get(worker.pid.remote(), timeout=60)
    pool.workers = [worker]
    in_flight = worker.version.remote(5.0)
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorUnavailableError):  # what the driver's ping sees: transient, not death
        ray.get(in_flight, timeout=60)
    pool.suspect[0] = in_flight
    deadline = time.monotonic() + 60
    while 0 in pool.suspect and time.monotonic() < deadline:
        pool.check_suspects()
        time.sleep(0.2)
    assert 0 not in pool.removed, "a worker Ray restarted was dropped from the pool"
    assert pool.live() == [0]
    assert ray.get(worker.pid.remote(), timeout=60) != pid
    ray.kill(worker)


def _wait_until_dead(ray, actor, timeout_s: float = 60.0) -> None:
    from ray.exceptions import RayActorError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.pid.remote(), timeout=timeout_s)
        except RayActorError:
            return
        time.sleep(0.2)
    raise AssertionError(f"the killed actor still answered after {timeout_s:.0f}s")


def test_a_killed_actor_for_good_is_still_removed(ray_cluster, tmp_path):
    """The other side of the same rule: an actor that is dead for good (no restarts left) leaves."""
    import ray

    from stgrl.orchestration.rollout_pool import RolloutPool

    pool = RolloutPool(load_config(None))
    worker = _pingable_actor(ray).remote()
    ray.get(worker.pid.remote(), timeout=60)
    ray.kill(worker, no_restart=True)
    _wait_until_dead(ray, worker)  # `ray.kill` is asynchronous: a call right after it may still be served
    pool.workers = [worker]
    pool.suspect[0] = worker.version.remote()
    deadline = time.monotonic() + 60
    while 0 in pool.suspect and time.monotonic() < deadline:
        pool.check_suspects()
        time.sleep(0.2)
    assert pool.removed == {0} and pool.live() == []


_STALE_CLUSTER = r"""
import logging, os, sys
import ray
from stgrl.orchestration.config import load_config
from stgrl.orchestration.ray_setup import local_init_kwargs
logging.basicConfig(level=logging.WARNING)
ray.init(**local_init_kwargs(load_config(None)), _temp_dir=sys.argv[1])
print("resources", ray.cluster_resources().get("rollout"))
ray.shutdown()
"""


def test_a_stale_current_cluster_file_does_not_stop_a_local_run(tmp_path):
    """Issue 26 #13: a killed run leaves ``ray_current_cluster`` in Ray's temp dir; a later local run
    must start its own cluster instead of failing with "When connecting to an existing cluster,
    num_cpus and num_gpus must not be provided"."""
    base = Path(os.path.realpath("/tmp")) / f"stgrl-stale-{os.getpid()}"
    (base / "ray").mkdir(parents=True, exist_ok=True)
    (base / "home").mkdir(exist_ok=True)
    (base / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # a cluster long gone
    env = {**os.environ, "RAY_TMPDIR": str(base), "HOME": str(base / "home")}
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run([sys.executable, "-c", _STALE_CLUSTER, str(base / "ray")], env=env,
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "resources 3.0" in out.stdout
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
