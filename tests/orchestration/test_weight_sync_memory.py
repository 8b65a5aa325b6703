"""Weights go from learner rank 0 straight to the rollout workers, never through the driver.

A randomly initialised Qwen2.5-VL-architecture model of >= 200M parameters (the embedded tiny
model's tokenizer, processor and vision tower, a 1024-wide 12-layer text model), a 2-step RL run with
the real RLDriver and real Ray actors (1 learner rank, 1 rollout worker): the driver process's peak
resident memory grows by far less than a quarter of the model's state, and the worker runs the
learner's weights bit for bit."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config

pytestmark = pytest.mark.timeout(600)

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
MIN_PARAMS = 200_000_000
BASE_GROWTH = 96 << 20
"""What the driver may grow by whatever the model size: trajectory groups, reward client, Ray bookkeeping."""


def _kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) << 10


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from stgrl.rollout.data.synth import generate_split
    from stgrl.rollout.tiny_model import TinyModelSpec, build_tiny_model

    root = tmp_path_factory.mktemp("weights200m")
    spec = TinyModelSpec(text_hidden=1024, text_layers=12, text_heads=16, text_kv_heads=4, text_intermediate=4608)
    build_tiny_model(root / "model", seed=0, spec=spec)
    cfg = load_config(REPO / "configs" / "demo.yaml")
    generate_split(root / "data", "train", 4, seed=0, difficulty="easy", data_cfg=cfg.data, progress=False)
    return root


def test_the_driver_never_holds_the_weights_and_workers_run_the_learners_bytes(ray_cluster, workspace, tmp_path):
    import json

    import ray

    from stgrl.orchestration.metrics import MetricsSink
    from stgrl.orchestration.rl_loop import RLDriver
    from stgrl.orchestration.stage_support import load_split

    params = json.loads((workspace / "model" / "stgrl_tiny_model.json").read_text())["parameters"]
    assert params >= MIN_PARAMS
    state_bytes = 4 * params  # fp32
    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"model.path={workspace / 'model'}", f"data.train={workspace / 'data' / 'train.jsonl'}",
        "metrics.wandb=false", "run.total_steps=2", "run.mode=sync", "run.max_staleness=0",
        "rollout.num_workers=1", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "reward.num_shards=1", "learner.num_minibatches=1", "transport.timeout_s=120",
    ])
    train, dataset_dir = load_split(cfg.data.train, "train")
    run_dir = tmp_path / "run"
    driver = RLDriver(cfg, run_dir, str(workspace / "model"), train, dataset_dir)
    sink = MetricsSink(run_dir, wandb_enabled=False, wandb_mode="offline", wandb_project="t", wandb_run_name=None,
                       prometheus=False)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS, from here on
    rss_before = _kib("VmRSS")
    try:
        driver.start()
        last = driver.run(sink)
        peak = _kib("VmHWM")
        worker = driver.workers[0]
        assert ray.get(worker.sync_weights.remote(120), timeout=300) == driver.version == 2
        on_worker = ray.get(worker.weights_checksum.remote(), timeout=300)
        on_learner = driver.learners.weights_checksum()
    finally:
        driver.close()
        sink.close()
    growth = peak - rss_before
    log.info("driver peak RSS grew by %.1f MiB over a run of a %.1f MiB model (%d parameters)", growth / 2**20,
             state_bytes / 2**20, params)
    # Through the driver it was the ray.get of the full state dict plus the publisher's snapshot:
    # twice the state. Now: addresses and timing dicts.
    assert growth < BASE_GROWTH + state_bytes // 8, (growth / 2**20, state_bytes / 2**20)
    assert last["weights/sync_time_s"] > 0
    assert on_worker.keys() == on_learner.keys() and len(on_learner) > 100
    assert on_worker == on_learner  # bit for bit
