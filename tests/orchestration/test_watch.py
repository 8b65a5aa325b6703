"""`stgrl watch RUN_DIR`: the progress display from the run directory alone, while a run writes it
and after it finished. The run's files are written the way the stages write them (the stage's
config via `prepare_run_dir`, metrics via the real `MetricsSink`), step by step from a thread, while
the real `stgrl watch` reads them in a subprocess with its stdout a pipe."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config
from stgrl.orchestration.metrics import MetricsSink
from stgrl.orchestration.stage_support import prepare_run_dir

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]


def _sink(run_dir: Path, stage: str) -> MetricsSink:
    return MetricsSink(run_dir, wandb_enabled=False, wandb_mode="disabled", wandb_project="x", wandb_run_name=None,
                       prometheus=False, stage=stage)


def write_run(run_dir: Path, sft_steps: int, rl_steps: int, pause_s: float) -> None:
    """SFT then RL, as their stages write the run directory."""
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"sft.steps={sft_steps}", f"run.total_steps={rl_steps}",
                                                       "run.mode=async"])
    prepare_run_dir(cfg, run_dir, "sft")
    sink = _sink(run_dir, "sft")
    sink.log(0, {"sft/eval_loss": 4.0})
    for step in range(sft_steps):
        time.sleep(pause_s)
        sink.log(step + 1, {"sft/sft_loss": 3.0 - step * 0.1, "sft/target_tokens": 400.0, "sft/step_time_s": 0.5})
    sink.close()
    time.sleep(pause_s)
    prepare_run_dir(cfg, run_dir, "rl")
    sink = _sink(run_dir, "rl")
    for step in range(rl_steps):
        time.sleep(pause_s)
        sink.log(step, {"train/reward_mean": 1.0 + 0.01 * step, "rollout/tokens_per_s": 250.0,
                        "weights/version_lag": 0.5}, policy_version=step + 1)
    sink.close()


def _watch(run_dir: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stgrl", "watch", str(run_dir), "--interval", "0.2",
                           "--print-every", "0", *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def test_watch_follows_a_run_while_it_writes_then_exits(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writer = threading.Thread(target=write_run, args=(run_dir, 6, 6, 0.6))
    writer.start()
    try:
        proc = _watch(run_dir)
    finally:
        writer.join()
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "\x1b" not in out
    sft = [int(m.group(1)) for m in re.finditer(r"SFT step (\d)/6 ", out)]
    rl = [int(m.group(1)) for m in re.finditer(r"RL \(async\) step (\d)/6 ", out)]
    # seen while it ran: several intermediate states, in order, each with an ETA until done
    assert len(set(sft)) >= 3 and sft == sorted(sft) and sft[-1] == 6, out
    assert len(set(rl)) >= 3 and rl == sorted(rl) and rl[-1] == 6, out
    assert re.search(r"RL \(async\) step [1-5]/6 .*\| reward 1\.0\d\d \| tok/s 250 \| lag 0\.50 \| elapsed \d+:\d\d "
                     r"\| ETA \d+:\d\d", out), out
    assert out.rstrip().splitlines()[-1].endswith("done")


def test_watch_after_the_run_prints_the_final_state_and_exits(tmp_path):
    run_dir = tmp_path / "run"
    write_run(run_dir, 3, 4, 0.0)
    t0 = time.monotonic()
    proc = _watch(run_dir, "--settle", "600")
    assert proc.returncode == 0, proc.stdout
    assert time.monotonic() - t0 < 60, "a finished run must not be waited on"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, lines  # one final line per stage, nothing else
    assert re.search(r"SFT step 3/3 \(100%\) \| loss 2\.9000 \| held-out loss 4\.0000 \| tok/s 800 .*\| done$", lines[0])
    assert re.search(r"RL \(async\) step 4/4 \(100%\) \| reward 1\.015 .*\| done$", lines[1])


def test_sft_only_run_ends_after_the_settle_time(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(REPO / "configs" / "demo.yaml", ["sft.steps=2"])
    prepare_run_dir(cfg, run_dir, "sft")
    sink = _sink(run_dir, "sft")
    for step in range(3):
        sink.log(step, {"sft/sft_loss": 1.0})
    sink.close()
    proc = _watch(run_dir, "--settle", "1")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("done"), proc.stdout


def test_watch_of_a_missing_directory_says_so(tmp_path):
    proc = _watch(tmp_path / "nope")
    assert proc.returncode == 2 and "run directory" in proc.stdout and "does not exist" in proc.stdout
