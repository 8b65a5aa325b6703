"""`stgrl sft` SIGKILLed after a checkpoint and rerun with `--resume` (the SFT twin of
test_rl_faults.py's whole-run kill): it continues from the checkpoint, not from step 0,
metrics_sft.jsonl holds each step once, and the final weights equal an uninterrupted run's bit for bit.
`--resume` with no checkpoint, or one past `sft.steps`, fails at once in our words."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stgrl.learner.sft_trainer import checkpointed_step
from stgrl.orchestration.metrics import read_metrics

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 16, 4


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    return tiny_workspace("sft-resume", 12, 4)


def _args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["sft", "--config", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir),
            f"model.path={root / 'model'}", f"data.train={root / 'data' / 'train.jsonl'}",
            f"data.eval={root / 'data' / 'eval.jsonl'}", "metrics.wandb=false", f"sft.steps={STEPS}",
            "sft.batch_size=2", "sft.eval_every=6", "sft.eval_samples=2", "sft.num_ranks=1",
            f"sft.checkpoint_every={EVERY}", *extra]


def _sft(root: Path, run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stgrl", *_args(root, run_dir, *extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "sft" / "hf" / "model.safetensors"))


def _rows(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics_sft.jsonl") if (run_dir / "metrics_sft.jsonl").exists() else []


def test_killed_sft_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(ray_cluster, workspace,
                                                                                  tmp_path):
    import torch

    # the subprocesses join the test's Ray cluster: a SIGKILLed driver's actors are ended by Ray,
    # where a cluster of its own would outlive it
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    full, cut = tmp_path / "full", tmp_path / "cut"
    reference = _sft(workspace, full, env)

    p = _sft(workspace, cut, env)
    deadline = time.monotonic() + 240
    # kill once a checkpoint is on disk AND a later step is logged: the resume must drop that row
    while (ckpt := checkpointed_step(cut / "sft")) is None or max(r["step"] for r in _rows(cut)) <= ckpt:
        assert p.poll() is None, "the run ended before it could be interrupted:\n" + p.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    killed_at = time.time()
    assert p.returncode == -signal.SIGKILL
    ckpt = checkpointed_step(cut / "sft")
    logged = [r["step"] for r in _rows(cut)]
    assert 0 < ckpt < STEPS and max(logged) > ckpt, (ckpt, logged)

    p = _sft(workspace, cut, env, "--resume")
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
    assert f"SFT resumes from its checkpoint at step {ckpt} of {STEPS}" in out, out[-3000:]

    rows = _rows(cut)
    assert [r["step"] for r in rows] == list(range(STEPS + 1)), "each step logged exactly once"
    # steps up to the checkpoint are the killed run's rows, the rest were trained after the resume
    assert all((r["time"] < killed_at) == (r["step"] <= ckpt) for r in rows), [(r["step"], r["time"]) for r in rows]
    assert "sft/eval_loss" in rows[0] and "sft/eval_loss" in rows[-1]
    summary = json.loads((cut / "sft" / "summary.json").read_text())
    assert summary["sft/eval_loss_before"] == rows[0]["sft/eval_loss"]
    assert summary["sft/eval_loss"] == rows[-1]["sft/eval_loss"]

    out, _ = reference.communicate(timeout=240)
    assert reference.returncode == 0, out[-3000:]
    assert [r["sft/sft_loss"] for r in rows[1:]] == [r["sft/sft_loss"] for r in _rows(full)[1:]]
    want, got = _weights(full), _weights(cut)
    assert want.keys() == got.keys()
    differing = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differing, f"the resumed SFT's weights differ from the uninterrupted run's in {differing[:5]}"


def test_resume_without_a_usable_checkpoint_fails_in_our_words(workspace, tmp_path):
    from stgrl.orchestration.config import ConfigError, load_config
    from stgrl.orchestration.stages import run_sft_stage

    run_dir = tmp_path / "run"
    cfg = load_config(REPO / "configs" / "demo.yaml", _args(workspace, run_dir)[5:])
    with pytest.raises(ConfigError) as err:
        run_sft_stage(cfg, run_dir, resume=True)
    assert f"{run_dir / 'sft' / 'checkpoints'} holds no complete SFT checkpoint to continue from" in str(err.value)
    assert not run_dir.exists(), "a refused resume must not create the run directory"

    # a checkpoint past sft.steps (a longer run's) is refused too, before anything starts
    tag = run_dir / "sft" / "checkpoints" / "step_00000020"
    tag.mkdir(parents=True)
    (tag / "run_state.json").write_text(json.dumps({"step": 20, "stage": "sft"}))
    (run_dir / "sft" / "checkpoints" / "latest").write_text("step_00000020")
    with pytest.raises(ConfigError, match=f"is at step 20, past sft.steps={STEPS}"):
        run_sft_stage(cfg, run_dir, resume=True)
    assert not (run_dir / "config_sft.yaml").exists()


def test_rl_resume_without_an_rl_checkpoint_starts_afresh_and_drops_the_old_lines(tmp_path, caplog):
    """`stgrl rl --resume` (or `stgrl train --resume` after an SFT that never reached RL) with no RL
    checkpoint used to start fresh while appending to the previous run's ledger and metrics: each step
    then appeared twice. With a checkpoint, resume keeps them (the driver truncates after it)."""
    import logging

    from stgrl.orchestration.stages import rl_resumes

    old = '{"step": 0}\n{"step": 1}\n'
    for name in ("metrics.jsonl", "ledger.jsonl"):
        (tmp_path / name).write_text(old)
    with caplog.at_level(logging.INFO, logger="stgrl.orchestration.stages"):
        assert rl_resumes(tmp_path, resume=True) is False
    assert "no RL checkpoint" in caplog.text
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "ledger.jsonl").exists()

    (tmp_path / "checkpoints" / "latest").mkdir(parents=True)
    for name in ("metrics.jsonl", "ledger.jsonl"):
        (tmp_path / name).write_text(old)
    assert rl_resumes(tmp_path, resume=True) is True
    assert (tmp_path / "metrics.jsonl").read_text() == old
    assert rl_resumes(tmp_path, resume=False) is False
    assert not (tmp_path / "metrics.jsonl").exists()
