"""One RL step's metrics line, from what the step produced: pure, so the driver loop stays short and
every metric's formula is in one place (names: `stgrl.orchestration.metric_names`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec


class StepTimes(msgspec.Struct, kw_only=True):
    """Wall times of one driver step (seconds)."""

    step_s: float
    wait_rollout_s: float
    train_s: float
    sync_s: float
    reward_latency_s: float


def proximity_sigma(step: int, total_steps: int, sigma0: float, sigma_min: float) -> float:
    """σ(p) = max(σ_min, σ_0 (1 - p)), p = (step + 1) / total_steps (docs/design.md §3), for the report."""
    p = (step + 1) / max(1, total_steps)
    return max(sigma_min, sigma0 * (1.0 - p))


def pool_rate(amount: float, busy_s_total: float, live_workers: int) -> float:
    """Per-second rate of the rollout pool: `amount` (tokens, samples) over the pool's wall time, i.e.
    the summed generate time spread over the workers that are live now. Workers that died or left
    do not count: dividing by every worker ever started understates the rate of a pool that lost or
    replaced workers (an elastic pool's list keeps their slots)."""
    return amount / max(1e-9, busy_s_total / max(1, live_workers))


def step_metrics(cfg: Any, step: int, groups: Sequence[Any], rewards: Sequence[Sequence[float]],
                 components: dict[str, float], train: dict[str, float], times: StepTimes, *,
                 live_workers: int, queue_depth: int) -> dict[str, float]:
    """The metrics of `step`: ``groups`` are its trajectory groups (wire headers), ``rewards`` their
    per-completion totals, ``components`` the mean reward components, ``train`` the learner's combined
    summary. ``live_workers`` counts the workers that take work now (an elastic pool keeps dead
    workers' slots)."""
    total = cfg.run.total_steps
    n_tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
    gen_s = max((g.timings.get("generate_s", 0.0) for g in groups), default=0.0)
    gen_total = sum(g.timings.get("generate_s", 0.0) for g in groups)
    n_samples = sum(len(g.completions) for g in groups)
    all_rewards = [x for r in rewards for x in r]
    lag = [step - g.policy_version for g in groups]
    step_s, train_s = times.step_s, times.train_s
    return {
        "train/reward_mean": sum(all_rewards) / max(1, len(all_rewards)),
        "train/zero_std_groups": train.get("zero_std_groups", 0.0),
        "rollout/tokens_per_s": pool_rate(n_tokens, gen_total, live_workers),
        "rollout/samples_per_s": pool_rate(n_samples, gen_total, live_workers),
        "rollout/queue_depth": float(queue_depth),
        "rollout/live_workers": float(live_workers),
        "reward/requests_per_s": len(all_rewards) / max(1e-9, times.reward_latency_s),
        "reward/latency_s": times.reward_latency_s,
        "reward/sigma": proximity_sigma(step, total, cfg.reward.sigma0, cfg.reward.sigma_min),
        **components,
        "learner/step_time_s": train_s,
        "learner/tokens_per_s": train.get("tokens", 0.0) / max(1e-9, train_s),
        "learner/clip_fraction": train.get("clip_fraction", 0.0),
        "learner/is_weight": train.get("is_weight_mean", 1.0),
        "learner/loss": train.get("loss", math.nan),
        "learner/logprob_gap": train.get("behaviour_gap", math.nan),
        "learner/ratio_abs_dev_last": train.get("ratio_abs_dev_last", math.nan),
        "weights/sync_time_s": times.sync_s,
        "weights/version_lag": sum(lag) / max(1, len(lag)),
        "weights/version_lag_max": float(max(lag, default=0)),
        "pipeline/idle_ratio/learner": max(0.0, 1.0 - train_s / max(1e-9, step_s)),
        "pipeline/idle_ratio/rollout": max(0.0, 1.0 - min(1.0, gen_total / max(1e-9, step_s * max(1, live_workers)))),
        **{f"learner/{k}": train[k] for k in ("time_old_logprobs_s", "time_forward_s", "time_backward_s",
                                              "time_optimizer_s") if k in train},
        "rollout/generate_total_s": gen_total,
        "pipeline/step_time_s": step_s,
        "pipeline/wait_rollout_s": times.wait_rollout_s,
        "pipeline/generate_max_s": gen_s,
    }
