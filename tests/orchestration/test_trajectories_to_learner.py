"""Trajectories reach the learner ranks over ZeroMQ (issue 20 #2): in a 2-step RL run (real RLDriver,
2 learner ranks, 2 rollout workers, real Ray actors) every group's pixel tensors go from its worker to
its planned rank's inbox; the driver receives only text copies (no tensor bytes at all) and sends the
ranks group ids and rewards. Each rank trains its planned share, on the worker's exact model inputs
(the learner's old log-probs equal the workers' behaviour log-probs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config
from stgrl.orchestration.ledger import check_ledger

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    return tiny_workspace("trajectories", 8)


def test_pixels_go_to_the_learner_ranks_and_never_through_the_driver(ray_cluster, workspace, tmp_path):
    from stgrl.orchestration.rl_loop import RLDriver
    from stgrl.orchestration.stage_support import load_split, make_sink

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"model.path={workspace / 'model'}", f"data.train={workspace / 'data' / 'train.jsonl'}",
        "metrics.wandb=false", "run.mode=sync", "run.max_staleness=0", "run.total_steps=2",
        "rollout.num_workers=2", "rollout.prompts_per_step=4", "rollout.max_new_tokens=4",
        "reward.num_shards=1", "learner.num_ranks=2", "learner.num_minibatches=1"])
    train, dataset_dir = load_split(cfg.data.train, "train")
    run_dir = tmp_path / "run"
    sink = make_sink(cfg, run_dir, "rl")
    driver = RLDriver(cfg, run_dir, cfg.model.path, train, dataset_dir)
    steps: list[dict[str, float]] = []
    try:
        driver.start()
        driver.run(sink, lambda step, metrics: steps.append(metrics))
        ranks = driver.learners.inbox_stats()
    finally:
        driver.close()
        sink.close()
    entries = check_ledger(run_dir / "ledger.jsonl", expected_steps=2)
    assert all(sorted(e.trained) == sorted(e.assigned) for e in entries)
    # the driver got every group's text (it scored them and wrote the ledger) and not one tensor byte
    assert driver.pool.tensor_bytes == 0
    assert driver.receiver.stats.delivered == 8
    # each rank took its planned half of every step, with the tensors, from its own inbox
    assert [r["taken"] for r in ranks] == [4.0, 4.0], ranks
    assert all(r["tensor_bytes"] > 0 and r["dropped_full"] == 0 for r in ranks), ranks
    # trained on the exact inputs the workers sampled from: old log-probs match the behaviour ones
    assert all(abs(m["learner/logprob_gap"]) < 1e-3 for m in steps), [m["learner/logprob_gap"] for m in steps]
    assert all(m["learner/tokens_per_s"] > 0 for m in steps)
