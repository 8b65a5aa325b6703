"""The per-step metrics line is a pure function of what the step produced (issue 20 #5): checked by
hand on a two-group step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stgrl.orchestration.config import load_config
from stgrl.orchestration.step_metrics import StepTimes, step_metrics


def _group(version: int, tokens: list[int], generate_s: float) -> SimpleNamespace:
    return SimpleNamespace(policy_version=version, timings={"generate_s": generate_s},
                           completions=[SimpleNamespace(token_ids=[0] * n) for n in tokens])


def test_a_two_group_step_by_hand():
    cfg = load_config(None, ["run.total_steps=4"])
    groups = [_group(3, [2, 4], 1.0), _group(1, [6, 0], 3.0)]  # step 3: lags 0 and 2
    times = StepTimes(step_s=10.0, wait_rollout_s=2.0, train_s=5.0, sync_s=0.5, reward_latency_s=0.25)
    train = {"tokens": 100.0, "loss": 0.5, "time_forward_s": 1.5}
    m = step_metrics(cfg, 3, groups, [[1.0, 0.0], [0.5, 0.5]], {"reward/format": 0.75}, train, times,
                     live_workers=2, queue_depth=3)
    assert m["train/reward_mean"] == pytest.approx(0.5)
    # 12 tokens over 4 s of generate time spread over 2 live workers (2 s of pool wall time)
    assert m["rollout/tokens_per_s"] == pytest.approx(6.0)
    assert m["rollout/samples_per_s"] == pytest.approx(2.0)
    assert m["rollout/queue_depth"] == 3.0 and m["rollout/live_workers"] == 2.0
    assert m["reward/requests_per_s"] == pytest.approx(16.0) and m["reward/format"] == 0.75
    assert m["learner/tokens_per_s"] == pytest.approx(20.0) and m["learner/time_forward_s"] == 1.5
    assert m["weights/version_lag"] == pytest.approx(1.0) and m["weights/version_lag_max"] == 2.0
    assert m["pipeline/idle_ratio/learner"] == pytest.approx(0.5)
    assert m["pipeline/idle_ratio/rollout"] == pytest.approx(0.8)  # 4 s busy of 2 workers x 10 s
    assert m["pipeline/generate_max_s"] == 3.0 and m["rollout/generate_total_s"] == 4.0
    assert m["reward/sigma"] == pytest.approx(max(cfg.reward.sigma_min, 0.0))  # p = 1 at the last step
    assert "learner/time_backward_s" not in m  # only the timings the learner reported
