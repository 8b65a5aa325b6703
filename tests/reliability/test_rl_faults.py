"""Faults during a real RL run on the local Ray cluster (issue 12).

- a rollout worker SIGKILLed mid-generation: Ray restarts it, its undelivered prompts are re-queued,
  every prompt of every step is trained exactly once;
- a reward shard killed mid-run: the client retries on another shard, nothing lost or doubled;
- the whole run SIGKILLed and resumed with --resume: it continues from the last checkpoint, the ledger
  holds each step once, and (sync mode, deterministic) the final weights equal an uninterrupted run;
- one of two learner ranks SIGKILLed mid-step: the stage fails with an error naming the step and the
  rank, every pool is stopped (the surviving rank, stuck in a gloo collective, included) and the
  channels closed; resuming continues from the last checkpoint and ends equal to an uninterrupted run.

The sync runs use two learner ranks (ZeRO-2 over gloo): a sharded optimizer state is what a resume
must restore exactly, and a dead rank leaves a live peer inside a collective.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stgrl.orchestration.config import load_config
from stgrl.orchestration.ledger import check_ledger

pytestmark = pytest.mark.timeout(900)
REPO = Path(__file__).resolve().parents[2]
# Deterministic sync runs (interrupted, resumed, uninterrupted) share these overrides.
SYNC = ("run.mode=sync", "run.max_staleness=0", "run.total_steps=4", "learner.checkpoint_every=1",
        "rollout.max_new_tokens=16", "learner.num_ranks=2")


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    return tiny_workspace("faults", 24, seed=1)


def _overrides(root: Path, *extra: str) -> list[str]:
    return [f"model.path={root / 'model'}", f"data.train={root / 'data' / 'train.jsonl'}",
            f"data.eval={root / 'data' / 'train.jsonl'}", "metrics.wandb=false", "rollout.prompts_per_step=4",
            "rollout.num_workers=2", "reward.num_shards=2", "learner.num_minibatches=2", *extra]


def _run_driver(cfg, run_dir: Path, on_step, resume: bool = False):
    """Run the RL driver to the end (or its error); returns it, closed."""
    from stgrl.orchestration.rl_loop import RLDriver
    from stgrl.orchestration.stage_support import load_split, make_sink

    train, dataset_dir = load_split(cfg.data.train, "train")
    sink = make_sink(cfg, run_dir, "rl")
    driver = RLDriver(cfg, run_dir, cfg.model.path, train, dataset_dir, resume=resume)
    try:
        driver.start()
        driver.run(sink, lambda step, metrics: on_step(driver, step))
    finally:
        driver.close()
        sink.close()
    return driver


def test_killed_rollout_worker_and_reward_shard_lose_nothing(ray_cluster, workspace, tmp_path):
    import ray

    cfg = load_config(REPO / "configs" / "demo.yaml",
                      _overrides(workspace, "run.mode=async", "run.total_steps=4", "rollout.max_new_tokens=40"))
    killed: dict[str, bool] = {}

    def kill_worker_soon(driver) -> None:
        # The next step's generation is already running (async, one step ahead): kill during it.
        time.sleep(0.3)
        ray.kill(driver.workers[0], no_restart=False)
        killed["worker"] = True

    def on_step(driver, step: int) -> None:
        if step == 0:
            threading.Thread(target=kill_worker_soon, args=(driver,), daemon=True).start()
        if step == 1:
            ray.kill(driver.reward_handles[0], no_restart=False)
            killed["shard"] = True

    _run_driver(cfg, tmp_path, on_step)
    assert killed == {"worker": True, "shard": True}
    entries = check_ledger(tmp_path / "ledger.jsonl", expected_steps=4)
    assert all(sorted(e.trained) == sorted(e.assigned) for e in entries)
    assert sum(len(e.requeued) for e in entries) > 0, "the killed worker's prompts must have been re-queued"


def _rl_subprocess(run_dir: Path, overrides: list[str], resume: bool, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stgrl", "rl", "--config", str(REPO / "configs" / "demo.yaml"),
           "--run-dir", str(run_dir), *overrides]
    if resume:
        cmd.insert(4, "--resume")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "rl" / "hf" / "model.safetensors"))


def _assert_same_weights(reference: Path, run_dir: Path) -> None:
    import torch

    a, b = _final_weights(reference), _final_weights(run_dir)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"resumed run's weights differ from the uninterrupted run in {differing[:5]}"


def _ray_env(ray_cluster) -> dict[str, str]:
    return dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, workspace, tmp_path_factory) -> Path:
    """The reference: the deterministic sync run (`SYNC`) with `stgrl rl`, never interrupted."""
    full = tmp_path_factory.mktemp("uninterrupted")
    p = _rl_subprocess(full, _overrides(workspace, *SYNC), resume=False, env=_ray_env(ray_cluster))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    return full


def test_whole_run_killed_and_resumed_matches_uninterrupted(ray_cluster, workspace, uninterrupted, tmp_path):
    env = _ray_env(ray_cluster)
    ov = _overrides(workspace, *SYNC)

    cut = tmp_path / "cut"
    p = _rl_subprocess(cut, ov, resume=False, env=env)
    deadline = time.monotonic() + 600
    ledger = cut / "ledger.jsonl"
    while not (cut / "checkpoints" / "latest").exists() or not ledger.exists() \
            or len(ledger.read_text().splitlines()) < 2:
        assert p.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.0)  # let it get into the next step
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL

    p = _rl_subprocess(cut, ov, resume=True, env=env)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert "resumed from checkpoint" in out
    check_ledger(cut / "ledger.jsonl", expected_steps=4)
    _assert_same_weights(uninterrupted, cut)


def _main_thread_cpu_ticks(pid: int) -> int:
    """User + system clock ticks of a process's main thread, where a Ray actor runs its calls."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _kill_once_busy(pid: int, killed: dict[str, int]) -> None:
    """SIGKILL `pid` as soon as its main thread computes (≥ 3 ticks): it was idle when this started,
    between steps, so the first work it does is the next train call — the kill lands mid-step."""
    start = _main_thread_cpu_ticks(pid)
    deadline = time.monotonic() + 600
    while _main_thread_cpu_ticks(pid) - start < 3:
        if time.monotonic() > deadline:
            return
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    killed["pid"] = pid


def _process_ended(pid: int) -> bool:
    """Gone, or a zombie (reaped between opening /proc/<pid>/stat and reading it reads as ESRCH)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _port_is_free(address: str) -> bool:
    import socket

    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # lingering TIME_WAIT is not a listener
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def test_killed_learner_rank_fails_the_stage_cleanly_and_resume_matches_uninterrupted(
        ray_cluster, workspace, uninterrupted, tmp_path):
    import ray
    from ray.util.placement_group import placement_group_table

    from stgrl.orchestration.rl_loop import PipelineError

    kill_step = 2  # checkpoints after steps 0 and 1: the resume redoes steps 2 and 3
    cfg = load_config(REPO / "configs" / "demo.yaml", _overrides(workspace, *SYNC))
    seen: dict = {}
    killed: dict[str, int] = {}

    def on_step(driver, step: int) -> None:
        if step == kill_step - 1:  # every rank idle until step kill_step's train call
            seen.update(driver=driver, pids=list(driver.learners.pids), pg=driver.learners.placement_group)
            threading.Thread(target=_kill_once_busy, args=(seen["pids"][1], killed), daemon=True).start()

    with pytest.raises(PipelineError) as failure:
        _run_driver(cfg, tmp_path, on_step)
    message = str(failure.value)
    rank0, rank1 = seen["pids"]
    assert killed == {"pid": rank1}
    assert message.startswith(f"step {kill_step}: learner rank 1 of 2 died during train_rl_step"), message
    assert f"rank 1 (pid {rank1}) died" in message and f"rank 0 (pid {rank0})" in message, message
    assert "--resume" in message, message

    # Every pool stopped: both rank processes (rank 0 was left inside a gloo collective) end, the
    # rollout workers and reward shards are dead, the learner placement group is released, and the
    # trajectory channel (the driver's receiver, every rank's inbox) and the weight channel no longer
    # hold their ports.
    driver = seen["driver"]
    deadline = time.monotonic() + 120
    while not (_process_ended(rank0) and _process_ended(rank1)):
        assert time.monotonic() < deadline, f"learner rank processes {rank0}, {rank1} still running"
        time.sleep(0.1)
    for h in driver.workers:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.version.remote(), timeout=120)
    for h in driver.reward_handles:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.address.remote(), timeout=120)
    assert placement_group_table(seen["pg"])["state"] == "REMOVED"
    # the weight publisher lives in learner rank 0 now: its port is freed with the killed group
    assert _port_is_free(driver.receiver.address) and _port_is_free(driver.weights_address)
    assert len(driver.inbox_addresses) == 2 and all(_port_is_free(a) for a in driver.inbox_addresses)

    # Only the steps before the checkpointed kill are in the ledger, each trained exactly once.
    check_ledger(tmp_path / "ledger.jsonl", expected_steps=kill_step)

    resumed_steps: list[int] = []
    resumed = _run_driver(cfg, tmp_path, lambda driver, step: resumed_steps.append(step), resume=True)
    assert resumed_steps == [kill_step, 3], "the resume must continue after the last checkpoint"
    # the resumed run's close (a clean one) releases every port too
    ports = [resumed.receiver.address, resumed.weights_address, *resumed.inbox_addresses]
    assert len(ports) == 4 and all(_port_is_free(a) for a in ports), ports
    entries = check_ledger(tmp_path / "ledger.jsonl", expected_steps=4)
    assert all(sorted(e.trained) == sorted(e.assigned) for e in entries)
    _assert_same_weights(uninterrupted, tmp_path)
