"""A whole `stgrl rl` job with `rollout.engine=vllm` in this venv: a local Ray cluster, the rollout
worker on vLLM (the embedded Qwen2.5-VL, frames as images), the reward service, one DeepSpeed learner
rank, two sync GSPO steps. The ledger shows every prompt trained, the weights went to vLLM in place
(policy version 2), and vLLM's behaviour log-probs match the learner's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lane import VL_KV_CACHE_BYTES

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]


def test_stgrl_rl_runs_with_the_vllm_engine(tmp_path):
    from stgrl.orchestration.config import load_config
    from stgrl.orchestration.ledger import check_ledger
    from stgrl.rollout.data.synth import generate_split
    from stgrl.rollout.tiny_model import build_tiny_model

    build_tiny_model(tmp_path / "model", seed=0)
    data_cfg = load_config(REPO / "configs" / "demo.yaml").data
    generate_split(tmp_path / "data", "train", 6, seed=0, difficulty="easy", data_cfg=data_cfg, progress=False)
    run_dir = tmp_path / "run"
    ray_tmp = Path(tempfile.mkdtemp(prefix="stgrl-lane-ray-", dir="/tmp"))  # short: unix socket path limit
    (ray_tmp / "home").mkdir()
    env = {**os.environ, "HOME": str(ray_tmp / "home"), "RAY_TMPDIR": str(ray_tmp), "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "stgrl", "rl", "--config", str(REPO / "configs" / "demo.yaml"),
           "--run-dir", str(run_dir),
           f"model.path={tmp_path / 'model'}", f"data.train={tmp_path / 'data' / 'train.jsonl'}",
           f"data.eval={tmp_path / 'data' / 'train.jsonl'}", "metrics.wandb=false", "metrics.prometheus=false",
           "rollout.engine=vllm", "rollout.num_workers=1", "rollout.prompts_per_step=2", "rollout.temperature=1.0",
           "rollout.max_new_tokens=16", "rollout.gpu_memory_utilization=0.05",
           f"rollout.vllm.kv_cache_bytes={VL_KV_CACHE_BYTES}", "rollout.vllm.max_model_len=1024",
           "reward.num_shards=1", "learner.num_ranks=1", "learner.num_minibatches=1",
           "run.mode=sync", "run.max_staleness=0", "run.total_steps=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    entries = check_ledger(run_dir / "ledger.jsonl", expected_steps=2)
    for e in entries:
        assert len(e.assigned) == 2 and sorted(e.trained) == sorted(e.assigned)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[-1]["policy_version"] == 2
    # Raw log-probs at T = 1 on fp32 weights: vLLM and the learner agree on the same pixels and tokens.
    assert all(r["learner/logprob_gap"] < 1e-3 for r in rows), [r["learner/logprob_gap"] for r in rows]
    assert all(r["rollout/tokens_per_s"] > 0 for r in rows)
    assert (run_dir / "rl" / "hf" / "model.safetensors").is_file()
