"""Helpers of the cluster-in-a-box tests: the harness (scripts/podbox.py), the manifest renderer of
tests/k8s, the rendered demo-cpu overlay and the shared volume's contents (README step 5)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
OVERLAY = "demo-cpu"


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


podbox = _load("stgrl_podbox", REPO / "scripts" / "podbox.py")
manifests = _load("stgrl_k8s_manifests", REPO / "tests" / "k8s" / "test_manifests.py")

# The shortened demo config copied to /data/configs/demo.yaml (the RayJob's --config): the demo's
# pools and modes, a few steps of each stage on tiny inputs. The RayJob's own entrypoint overrides
# (bind 0.0.0.0, elastic rollout) apply on top, unchanged.
RL_STEPS = 26  # enough steps for a pod to join (~60 s to load its workers), two pods to die, a query
TEST_CONFIG = [
    "metrics.wandb=false", "rollout.max_new_tokens=24", "rollout.prompts_per_step=4",
    "learner.num_minibatches=2", "sft.steps=3", "sft.batch_size=4", "sft.eval_every=0",
    "sft.eval_samples=4", f"run.total_steps={RL_STEPS}", "rollout.elastic_check_s=2",
]


def rendered_overlay() -> list[dict]:
    return manifests.rendered(OVERLAY)


def cluster_of(docs: list[dict]) -> dict:
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    return cluster


def train_job(docs: list[dict]) -> dict:
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    return job


def prepare_volume(data: Path) -> None:
    """README step 5 for demo-cpu: config, tiny model, synthetic data on the shared volume."""
    from stgrl.orchestration.config import config_to_yaml, load_config
    from stgrl.rollout.data.synth import generate_split
    from stgrl.rollout.tiny_model import build_tiny_model

    cfg = load_config(REPO / "configs" / "demo.yaml", TEST_CONFIG)
    (data / "configs").mkdir(parents=True)
    (data / "configs" / "demo.yaml").write_text(config_to_yaml(cfg))
    build_tiny_model(data / cfg.model.path, seed=0)
    train = data / cfg.data.train
    generate_split(train.parent, "train", 24, seed=0, difficulty="easy", data_cfg=cfg.data, progress=False)
    generate_split(train.parent, "eval", 8, seed=0, difficulty="easy", data_cfg=cfg.data, progress=False)
