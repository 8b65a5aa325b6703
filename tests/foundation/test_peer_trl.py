"""benchmarks/peer_trl.py without TRL: its settings are checked before any work, and the numbers it
reports (steady-state rate, time to a reward, equal-steps / equal-wall picks) are computed as the
docs describe. The run itself needs the TRL venv (`make bench-trl`) and ~20 minutes, so it is not here."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("stgrl_bench_peer_trl", REPO / "benchmarks" / "peer_trl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _module()


def _args(*argv: str):
    args = bench.build_parser().parse_args(list(argv))
    bench.apply_smoke(args)
    return args


def test_defaults_and_smoke_are_valid_without_the_trl_venv():
    args = _args("--systems", "sync", "async")
    bench.validate(args)
    assert (args.wall_s, args.trl_threads, args.eval_sampled) == (120.0, [1, 2], 4)
    smoke = _args("--smoke", "--systems", "sync")
    bench.validate(smoke)
    assert smoke.wall_s < args.wall_s and smoke.eval_samples < args.eval_samples and smoke.trl_threads == [1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--wall-s", "0"], "--wall-s must be > 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
    (["--total-steps", "3", "--warmup", "2"], "--total-steps must leave at least 2 timed steps"),
    (["--eval-sampled", "0"], "the held-out reward compared is the sampled one"),
    (["--trl-threads", "0"], "--trl-threads must all be >= 1"),
    (["--trl-nice", "20"], "--trl-nice must be 0..19"),
    (["--checkpoint-every", "4", "--curve-every", "6"], "--curve-every must be a multiple of --checkpoint-every 4"),
    (["--set", "rollout.engine=vllm"], "rollout.engine must be 'hf'"),
    (["--set", "learner.num_minibatches=2"], "num_minibatches=2"),
])
def test_bad_settings_fail_before_any_work_with_our_message(argv, message):
    with pytest.raises(bench.BenchError, match=message):
        bench.validate(_args("--systems", "sync", *argv))


def test_trl_needs_its_venv_and_says_how_to_build_it(tmp_path):
    with pytest.raises(bench.BenchError, match="make trl-venv"):
        bench.validate(_args("--trl-python", str(tmp_path / "none" / "python")))


def test_an_unknown_config_key_is_the_projects_config_error():
    from stgrl.orchestration.config import ConfigError

    with pytest.raises(ConfigError, match="no_such_key"):
        bench.validate(_args("--systems", "sync", "--set", "rollout.no_such_key=1"))


def test_the_wall_clock_exports_on_schedule_and_at_the_budget_and_leaves_exports_out(tmp_path):
    clock = bench.WallClock(tmp_path, wall_s=3600.0, every=2, total=5)
    exported = []
    for step in range(4):
        assert not clock.step_end(step, exported.append)
    assert [p.name for p in exported] == ["step-2", "step-4"]
    assert clock.step_end(4, exported.append)  # the step cap ends the run and exports
    assert [c["steps"] for c in clock.checkpoints] == [2, 4, 5]
    slow = bench.WallClock(tmp_path, wall_s=0.0, every=100, total=100)
    assert slow.step_end(0, lambda p: None)  # budget spent: stop, with a final checkpoint
    assert slow.checkpoints[0]["steps"] == 1


def test_steady_rate_leaves_out_the_warm_up_and_time_to_finds_the_first_point():
    steps = [{"step": i, "end_s": t} for i, t in enumerate([10.0, 12.0, 14.0, 16.0, 18.0])]
    assert bench.steady_rate(steps, warmup=2) == pytest.approx(3 / 6)
    assert math.isnan(bench.steady_rate(steps[:2], warmup=2))
    assert bench.time_to([(0.0, 1.0), (30.0, 1.2), (60.0, 1.1)], 1.15) == 30.0
    assert bench.time_to([(0.0, 1.0)], 1.5) is None
    spiky = [{"step": i, "end_s": t} for i, t in enumerate([1.0, 2.0, 3.0, 4.0, 14.0, 15.0])]
    assert bench.median_rate(spiky, warmup=1) == pytest.approx(1.0)  # one 10 s spike from other load


def test_cpu_per_step_reads_the_sampled_series_over_the_timed_steps():
    run = {"steps": [{"step": i, "end_s": t, "end_unix_s": 100.0 + t} for i, t in enumerate([2.0, 4.0, 6.0, 8.0])],
           "cpu_series": [(100.0, 0.0), (110.0, 30.0)]}  # 3 CPU s per wall second
    assert bench.cpu_per_step(run, warmup=1) == pytest.approx(3.0 * 6.0 / 3)
    assert math.isnan(bench.cpu_per_step({**run, "cpu_series": []}, warmup=1))


def test_summary_picks_equal_steps_equal_wall_and_a_target_every_system_reached():
    def run(name, n_ckpt_steps):
        ckpts = [{"steps": s, "wall_s": 10.0 * s, "path": f"{name}/{s}"} for s in n_ckpt_steps]
        ckpts[-1]["wall_s"] = 100.0
        return {"steps": [{"step": i, "end_s": 10.0 * (i + 1)} for i in range(n_ckpt_steps[-1])],
                "checkpoints": ckpts, "startup_s": 1.0, "peak_rss_bytes": 2e9, "peak_pss_bytes": 1e9,
                "peak_processes": 3, "every": 4}

    runs = {"fast": run("fast", [4, 8, 10]), "slow": run("slow", [4, 6])}
    rewards = {"fast/4": 1.1, "fast/8": 1.3, "fast/10": 1.4, "slow/4": 1.1, "slow/6": 1.2}
    evals = {k: {"eval_sampled/reward_total": v, "eval/reward_total": v} for k, v in rewards.items()}
    assert bench.to_evaluate(runs, curve_every=100) == ["fast/4", "fast/10", "slow/4", "slow/6"]  # equal steps + last
    assert bench.to_evaluate(runs, curve_every=8) == ["fast/4", "fast/8", "fast/10", "slow/4", "slow/6"]
    del evals["fast/8"]
    summary = bench.summarize(runs, evals, start_reward=1.0, warmup=1, target=None)
    assert summary["equal_steps"] == 4  # the last multiple of --checkpoint-every both reached
    fast, slow = summary["systems"]["fast"], summary["systems"]["slow"]
    assert (fast["reward_equal_steps"], slow["reward_equal_steps"]) == (1.1, 1.1)
    assert (fast["reward_equal_wall"], slow["reward_equal_wall"]) == (1.4, 1.2)
    assert summary["target"] == pytest.approx(1.2)  # halfway from the start (1.0) to the best final (1.4)
    assert (fast["time_to_target_s"], slow["time_to_target_s"]) == (100.0, 100.0)
    higher = bench.summarize(runs, evals, start_reward=1.0, warmup=1, target=1.3)
    assert (higher["systems"]["fast"]["time_to_target_s"], higher["systems"]["slow"]["time_to_target_s"]) == (100.0, None)
    assert "| fast | 10 |" in bench.markdown_table(summary, "slow")
