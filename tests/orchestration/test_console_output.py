"""What a person sees: a short `stgrl demo` run without a terminal (stdout and stderr a pipe, as in
CI or a KubeRay job's log), through the real path — a local Ray head, SFT and RL as chained Ray jobs,
evaluation worker processes — and the console checked line by line: progress lines with step and
ETA for every stage, no escape codes, none of the chatter that belongs in the log files, and the
verdict last."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]

NOISE = {
    "weight publish lines": re.compile(r"published weight version"),
    "weight-loading bars": re.compile(r"Loading weights|Writing model shards|it/s\]"),
    "wandb output": re.compile(r"wandb:"),
    "Ray actor prefixes": re.compile(r"\((LearnerRank|RolloutWorkerImpl|RewardShard)\w* pid="),
    "Ray job-manager lines": re.compile(r"job_manager\.py|Runtime env is setting up|Running entrypoint"),
    "library warnings": re.compile(r"FutureWarning|UserWarning|DeprecationWarning|generation flags"),
    "nested timestamps": re.compile(r"\d\d:\d\d:\d\d\D.*\d\d:\d\d:\d\d (INFO|WARNING)"),
    "Ray's own log lines": re.compile(r"worker\.py:\d+ --"),
}


@pytest.fixture(scope="module")
def workspace(tiny_workspace):
    return tiny_workspace("console", 12, 4)


def test_demo_console_is_progress_and_verdict_only(workspace, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        f"model.path={workspace / 'model'}", f"data.train={workspace / 'data' / 'train.jsonl'}",
        f"data.eval={workspace / 'data' / 'eval.jsonl'}", "model.pretrain_vision_steps=0",
        "model.pretrain_caption_steps=0", "sft.steps=3", "sft.batch_size=2", "sft.eval_every=0",
        "sft.eval_samples=2", "sft.num_ranks=1", "run.total_steps=3", "rollout.prompts_per_step=2",
        "rollout.num_workers=1", "reward.num_shards=1", "rollout.max_new_tokens=12", "metrics.wandb=true",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stgrl", "demo", "--config", str(REPO / "configs" / "demo.yaml"),
         "--run-dir", str(run_dir), "--eval-samples", "3", "--eval-sampled", "1", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=840, cwd=tmp_path)
    out = proc.stdout
    (tmp_path / "console.txt").write_text(out)  # for a person reading a failure
    assert proc.returncode == 0, out[-4000:]
    lines = out.splitlines()

    assert "\x1b" not in out, "escape codes on a console that is not a terminal"
    for what, pattern in NOISE.items():
        hits = [ln for ln in lines if pattern.search(ln)]
        assert not hits, f"{what} on the console: {hits[:3]}"

    # progress lines with step and ETA (or done) for every stage
    for stage, total in (("SFT", 3), (r"RL \(async\)", 3), ("eval untrained", 3), ("eval after SFT", 3),
                         ("eval after RL", 3)):
        mine = [ln for ln in lines if re.search(rf"\b{stage} step \d+/{total} ", ln)]
        assert mine, f"no progress line of {stage}:\n{out[-3000:]}"
        assert all(re.search(r"elapsed \d+:\d\d \| (ETA (\d+:\d\d|\?)|done)$", ln) for ln in mine), mine
        assert mine[-1].endswith("done"), f"{stage} never shown finished: {mine}"
    assert any("ETA" in ln for ln in lines)

    # the verdict is last: at most 12 lines, what ran, how long, before/after with intervals, the report
    start = max(i for i, ln in enumerate(lines) if "stgrl demo finished in" in ln)
    verdict = lines[start:]
    assert 4 <= len(verdict) <= 12, verdict
    text = "\n".join(verdict)
    assert "ran: SFT 3 steps" in text and "RL 3 async GSPO steps" in text
    assert re.search(r"held-out reward, greedy .*untrained -?\d\.\d{3}.* -> after SFT .* -> after RL", text)
    assert "RL - SFT on the same prompts: greedy" in text
    assert f"report: {run_dir / 'report.md'}" in text

    # the chatter is not lost: it is in the stages' log files
    sft_log = (run_dir / "logs" / "sft.log").read_text()
    assert "wandb:" in sft_log and "LearnerRank pid=" in sft_log
    assert "published weight version" in (run_dir / "logs" / "rl.log").read_text()
    assert (run_dir / "eval" / "after_RL" / "eval.log").is_file()

    # report.md opens with the same verdict, the full table further down
    report = (run_dir / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Held-out evaluation (full table)")
    body = [ln.split(" INFO ", 1)[-1] for ln in verdict]
    assert all(ln.strip() in report for ln in body[1:]), "report.md's verdict differs from the console's"
