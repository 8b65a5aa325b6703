"""Shared fixtures. One local Ray cluster per test session (Ray init costs ~4 s), with its state,
token and logs in a temp dir rather than the user's home; the tiny workspace the end-to-end tests
start from."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Every actor and test process: one torch thread (two shared cores), CPU DeepSpeed, no hub access.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster with the pool resources (`rollout`, `reward`, `learner`) the actors ask for.

    HOME is pointed into a temp dir while Ray starts so its auth token and state never touch ~/.ray.
    """
    import ray

    base = Path(tempfile.mkdtemp(prefix="stgrl-ray-", dir="/tmp"))  # short path: unix socket limit
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(base / "home")
    (base / "home").mkdir()
    os.environ["RAY_TMPDIR"] = str(base)
    ray.init(
        num_cpus=8,
        resources={"rollout": 8, "reward": 8, "learner": 8},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",  # keep all Ray traffic on loopback
        _temp_dir=str(base / "ray"),
        log_to_driver=True,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
                                  "TOKENIZERS_PARALLELISM": "false"}},
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        if old_home is not None:
            os.environ["HOME"] = old_home


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory):
    """Makes the embedded default in a fresh temp dir: the tiny model (``model/``) and synthetic easy
    splits of the demo config (``data/train.jsonl`` and, when asked, ``data/eval.jsonl``)."""

    def make(name: str, train: int, eval_: int = 0, *, seed: int = 0) -> Path:
        from stgrl.orchestration.config import load_config
        from stgrl.rollout.data.synth import generate_split
        from stgrl.rollout.tiny_model import build_tiny_model

        root = tmp_path_factory.mktemp(name)
        build_tiny_model(root / "model", seed=0)
        data_cfg = load_config(REPO_ROOT / "configs" / "demo.yaml").data
        for split, n in (("train", train), ("eval", eval_)):
            if n:
                generate_split(root / "data", split, n, seed=seed, difficulty="easy", data_cfg=data_cfg,
                               progress=False)
        return root

    return make
