"""A rollout worker that raises (its engine refuses a weight version) or cannot start its engine
fails the RL stage at once with an error naming the worker and the cause — real Ray actors, real
ZeroMQ channels, the real HF engine; only the learner is left out (the driver's pool is used as is)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stgrl.orchestration.config import load_config

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    return tiny_workspace("worker-errors", 4)


def _driver(root: Path, tmp_path: Path, model_path: Path):
    """An RLDriver with its weight and trajectory channels and one rollout worker, no learner."""
    from stgrl.orchestration.rl_loop import RLDriver
    from stgrl.orchestration.stage_support import load_split
    from stgrl.transport.trajectory_channel import TrajectoryReceiver
    from stgrl.transport.weight_channel import WeightPublisher

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"model.path={model_path}", f"data.train={root / 'data' / 'train.jsonl'}", "metrics.wandb=false",
        "rollout.num_workers=1", "rollout.prompts_per_step=2", "rollout.max_new_tokens=4",
        "transport.timeout_s=20"])
    train, dataset_dir = load_split(cfg.data.train, "train")
    driver = RLDriver(cfg, tmp_path / "run", str(model_path), train, dataset_dir)
    driver.keys = None  # loopback: no CURVE (what start() decides for a local run)
    driver.publisher = WeightPublisher(cfg.transport)
    driver.weights_address = driver.publisher.address
    driver.receiver = TrajectoryReceiver(cfg.transport, auto_commit=True)
    return driver


def _close(driver) -> None:
    driver.pool.kill()
    driver.publisher.close()
    driver.receiver.close()


def test_a_refused_weight_version_fails_the_step_naming_worker_and_cause(ray_cluster, workspace, tmp_path):
    from stgrl.orchestration.rl_loop import PipelineError

    driver = _driver(workspace, tmp_path, workspace / "model")
    try:
        # A version whose names the engine does not know: the worker's engine refuses it while it
        # syncs before generating (the RayTaskError the loop used to let through unexplained).
        driver.publisher.publish(0, {"model.bogus.weight": torch.zeros(3)})
        driver.pool.start(1)
        driver.pool.dispatch(0, driver._prompts(0))
        with pytest.raises(PipelineError, match=r"step 0: rollout worker 0 failed: KeyError: .*unknown weight names "
                                                r"\['model.bogus.weight'\]"):
            driver._collect(0)
    finally:
        _close(driver)


def test_an_engine_that_cannot_start_fails_the_step_naming_the_engine(ray_cluster, workspace, tmp_path):
    from stgrl.orchestration.rl_loop import PipelineError

    empty = tmp_path / "no-model"
    empty.mkdir()
    driver = _driver(workspace, tmp_path, empty)
    try:
        driver.publisher.publish(0, {"x": torch.zeros(1)})
        driver.pool.start(1)
        driver.pool.dispatch(0, driver._prompts(0))
        with pytest.raises(PipelineError, match=r"step 0: rollout worker 0 could not start its engine "
                                                r"\(rollout.engine=hf\)"):
            driver._collect(0)
    finally:
        _close(driver)
