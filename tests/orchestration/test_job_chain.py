"""`stgrl run` chains Ray jobs: on a real local head (token auth on), a failing SFT job stops the
chain with its log shown and RL is never submitted."""

from __future__ import annotations

import logging

import pytest

from stgrl.orchestration.jobs import JobChainError, run_chain

pytestmark = pytest.mark.timeout(600)


def test_failed_sft_job_stops_the_chain(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data:\n  train: {tmp_path / 'missing' / 'train.jsonl'}\n"
                   f"model:\n  path: {tmp_path / 'no-model'}\nmetrics:\n  wandb: false\n")
    caplog.set_level(logging.INFO, logger="stgrl.orchestration.jobs")
    with pytest.raises(JobChainError, match="SFT job ended FAILED; RL not started"):
        run_chain(str(bad), [], tmp_path / "run", None, {"rollout": 1, "reward": 1, "learner": 1},
                  timeout_s=300)
    text = caplog.text
    assert "[stgrl-sft]" in text and "holds no HF checkpoint" in text  # the job's own error is shown
    assert "submitted Ray job stgrl-rl" not in text
    # the failed job's log tail reaches the console even in quiet mode (its raw lines are chatter)
    tails = [r for r in caplog.records if r.levelno == logging.ERROR and "job stgrl-sft ended FAILED; the last" in r.getMessage()]
    assert tails and "holds no HF checkpoint" in tails[0].getMessage()
