"""scripts/gpu_check.sh: syntax, and its dry run (the same phases on CPU, tiny shape) end to end —
engine step, in-place update from learner-named tensors, log-prob gap, one ZeRO-3 GSPO update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def test_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)


def test_dry_run_writes_every_number_of_the_table(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PY": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--work", str(tmp_path / "w"),
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu" and report["shape"] == "tiny"
    gen = report["generate"]
    assert (gen["prompts"], gen["group_size"], gen["frames"]) == (2, 2, 2)
    assert gen["generated_tokens"] > 0 and gen["tokens_per_s"] > 0 and gen["startup_s"] > 0
    # The update sent the checkpoint's own tensors under the learner's names: all of them, in place.
    assert gen["update_tensors"] > 10 and gen["update_s"] > 0
    # Samples taken after that update still match a teacher-forced pass on the checkpoint (fp32).
    gap = report["logprob_gap"]
    assert gap["tokens"] == gen["generated_tokens"] and gap["max_abs"] < 1e-3
    learner = report["learner"]
    assert learner["zero_stage"] == 3 and learner["backend"] == "gloo" and learner["step_s"] > 0
    assert learner["tokens"] > 0 and learner["grad_norm"] > 0
