"""What each actor's environment is made of follows that actor's own resources, never what the driver
sees (issue 19): a driver on a GPU-less KubeRay head once put `DS_ACCELERATOR=cpu` into the job's
runtime env, Ray merged it into every actor, and GPU learner ranks trained on DeepSpeed's CPU
accelerator with gloo while their GPUs sat idle.

The session cluster's job env carries `DS_ACCELERATOR=cpu` (tests/conftest.py), exactly the leak a
GPU-less driver used to cause; each probe actor is started with the runtime env the learner group
asks Ray for, and reports the env it really got."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stgrl.learner.actor import rank_env
from stgrl.orchestration.config import load_config
from stgrl.orchestration.ray_setup import actor_env

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


def _probe_env(ray, env_vars: dict[str, str]) -> dict[str, str]:
    @ray.remote(num_cpus=0)
    def env_of_actor() -> dict[str, str]:
        return {k: os.environ.get(k, "") for k in ("DS_ACCELERATOR", "OMP_NUM_THREADS")}

    return ray.get(env_of_actor.options(runtime_env={"env_vars": env_vars}).remote(), timeout=120)


def test_gpu_learner_config_gets_cuda_on_a_machine_without_gpus(ray_cluster):
    import torch

    assert not torch.cuda.is_available(), "this test is about a driver that sees no GPU"
    cfg = load_config(REPO / "configs" / "demo.yaml", ["learner.num_gpus_per_rank=1"])
    # the job-level env the driver hands Ray says nothing about accelerators ...
    assert "DS_ACCELERATOR" not in actor_env(cfg)
    # ... and each GPU rank names its own, so a leaked job-level "cpu" cannot win
    env = rank_env(cfg.learner.num_gpus_per_rank, 1.0)
    assert env["DS_ACCELERATOR"] == "cuda"
    got = _probe_env(ray_cluster, env)
    assert got["DS_ACCELERATOR"] == "cuda", got


def test_cpu_learner_config_gets_cpu(ray_cluster):
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.learner.num_gpus_per_rank == 0
    got = _probe_env(ray_cluster, rank_env(cfg.learner.num_gpus_per_rank, 2.0))
    assert got == {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
