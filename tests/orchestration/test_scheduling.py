"""Pure pieces of the orchestrator: the prompt schedule, the ledger, the σ curriculum, the report."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stgrl.orchestration.ledger import Ledger, LedgerError, StepEntry, check_entry, check_ledger
from stgrl.orchestration.prompt_source import prompts_for_step
from stgrl.orchestration.rollout_pool import group_id
from stgrl.orchestration.step_metrics import proximity_sigma


@given(n=st.integers(1, 50), per_step=st.integers(1, 20), seed=st.integers(0, 5))
def test_schedule_covers_each_epoch_exactly_once(n, per_step, seed):
    records = list(range(n))
    steps = (3 * n + per_step - 1) // per_step
    seen = [r for s in range(steps) for r in prompts_for_step(records, s, per_step, seed)]
    for epoch in range(2):  # complete epochs are permutations
        assert sorted(seen[epoch * n:(epoch + 1) * n]) == records


def test_schedule_is_a_pure_function_of_step():
    records = list(range(17))
    a = [prompts_for_step(records, s, 5, seed=3) for s in range(10)]
    b = [prompts_for_step(records, s, 5, seed=3) for s in reversed(range(10))][::-1]
    assert a == b
    assert a != [prompts_for_step(records, s, 5, seed=4) for s in range(10)]
    with pytest.raises(ValueError, match="empty"):
        prompts_for_step([], 0, 5, 0)


def test_ledger_accepts_exactly_once_and_rejects_drops_and_duplicates(tmp_path):
    ok = StepEntry(step=0, assigned=["a", "b"], trained=["b", "a"], policy_versions=[0, 0])
    check_entry(ok)
    with pytest.raises(LedgerError, match="trained twice"):
        check_entry(StepEntry(step=0, assigned=["a", "b"], trained=["a", "a", "b"], policy_versions=[0, 0, 0]))
    with pytest.raises(LedgerError, match=r"never trained \['b'\]"):
        check_entry(StepEntry(step=0, assigned=["a", "b"], trained=["a"], policy_versions=[0]))
    led = Ledger(tmp_path / "ledger.jsonl")
    led.record(ok)
    led.record(StepEntry(step=1, assigned=["c"], trained=["c"], policy_versions=[1], requeued=["c"]))
    assert [e.step for e in check_ledger(tmp_path / "ledger.jsonl", expected_steps=2)] == [0, 1]
    with pytest.raises(LedgerError, match="expected steps"):
        check_ledger(tmp_path / "ledger.jsonl", expected_steps=3)
    led.record(ok)
    with pytest.raises(LedgerError, match="recorded twice"):
        check_ledger(tmp_path / "ledger.jsonl")


def test_sigma_curriculum_hand_computed():
    # σ(p) = max(σ_min, σ0 (1 - p)), p = (step + 1) / total
    assert proximity_sigma(0, 4, 4.0, 1.0) == pytest.approx(3.0)
    assert proximity_sigma(1, 4, 4.0, 1.0) == pytest.approx(2.0)
    assert proximity_sigma(3, 4, 4.0, 1.0) == 1.0
    assert group_id(3, "x") == "3/x"


def test_report_writes_plots_and_tables(tmp_path):
    from stgrl.orchestration.report import write_report

    rows = [{"step": s, "train/reward_mean": 0.1 * s, "reward/format": 0.5, "reward/sigma": 4 - s,
             "rollout/tokens_per_s": 100.0, "learner/tokens_per_s": 50.0, "weights/version_lag": 1.0,
             "pipeline/idle_ratio/rollout": 0.2, "pipeline/idle_ratio/learner": 0.4,
             "learner/logprob_gap": 1e-6} for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    report = write_report(tmp_path, {"after SFT": {"eval/reward_total": 1.0}, "after RL": {"eval/reward_total": 1.5}})
    text = report.read_text()
    assert "| eval/reward_total | 1.000 | 1.500 |" in text
    for png in ("reward.png", "sigma.png", "throughput.png", "idle.png", "version_lag.png", "logprob_gap.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
        assert f"plots/{png}" in text


def test_trailing_mean_by_hand_and_long_series_are_smoothed(tmp_path):
    from stgrl.orchestration.report import SMOOTH_MIN_POINTS, make_plots, trailing_mean

    assert trailing_mean([2.0, 4.0, 6.0, 8.0], 2) == [2.0, 3.0, 5.0, 7.0]
    assert trailing_mean([1.0, 3.0], 5) == [1.0, 2.0]
    assert trailing_mean([], 3) == []
    rows = [{"step": s, "train/reward_mean": float(s % 2)} for s in range(SMOOTH_MIN_POINTS)]
    (png,) = [p for p in make_plots(rows, tmp_path) if p.name == "reward.png"]
    assert png.stat().st_size > 1000


def test_vstar_prediction_from_one_completion():
    from stgrl.orchestration.eval_run import vstar_prediction

    text = ("<think><obj>red square</obj><box>[28,28,56,56]</box>at<t>0.5</t>s then "
            "<obj>red square</obj><box>[56,28,84,56]</box>at<t>1.5</t>s</think>\n<answer>B</answer>")
    p = vstar_prediction("eval-1", text, (112, 112))
    assert p["id"] == "eval-1" and p["answer_vqa"].strip() == "B"
    # the span is the one the answer states (none here), not [min, max] of the claim times
    assert p["answer_temporal"] == [] == p["answer_temporal_2"] and p["answer_temporal_pre"] == "B"
    assert p["answer_spatial"] == {"0.5": [[28.0, 28.0, 56.0, 56.0]], "1.5": [[56.0, 28.0, 84.0, 56.0]]}
    empty = vstar_prediction("eval-2", "no tags at all", (112, 112))
    assert empty["answer_temporal"] == [] and empty["answer_spatial"] == {}
