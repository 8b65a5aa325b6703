"""The curriculum ablation's pure parts on hand-made metrics, and the `stgrl ablate` command line.

No Ray here: a real ablation (SFT start + two RL stages + three evaluations) took 104 s with one RL
step per arm on the 2-core machine, over the 90 s budget for a test, so the end-to-end run is the
documented one (docs/ablation.md), and the stages it calls are covered by test_end_to_end.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stgrl.orchestration.ablation import (
    ARMS,
    TRAINED_SPATIAL_KEY,
    Stat,
    aggregate,
    arm_config,
    arm_run_dir,
    build_table,
    curves,
    eval_config,
    eval_summary,
    plot_spatial_reward,
    rescore_spatial,
    step_curve,
)
from stgrl.orchestration.config import load_config
from stgrl.reward_service.config import RewardConfig

REPO = Path(__file__).resolve().parents[2]


def _rows(values: list[float | None], key: str = TRAINED_SPATIAL_KEY) -> list[dict]:
    return [{"step": i, key: v, "reward/format": 1.0} for i, v in enumerate(values)]


# ------------------------------------------------------------------------------------ configs
def test_arms_differ_only_in_spatial_mode_and_seed():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    a, b = (arm_config(cfg, arm, seed=7) for arm in ARMS)
    assert (a.reward.spatial_mode, b.reward.spatial_mode) == ("gated", "plain")
    assert a.run.seed == b.run.seed == 7
    # everything else is the base config: same data, steps, learner, rollout, reward weights
    import msgspec

    for arm_cfg in (a, b):
        d = msgspec.to_builtins(arm_cfg)
        base = msgspec.to_builtins(cfg)
        d["run"]["seed"] = base["run"]["seed"]
        d["reward"]["spatial_mode"] = base["reward"]["spatial_mode"]
        assert d == base
    assert eval_config(b).reward.spatial_mode == "gated"
    assert arm_run_dir(Path("/r"), ARMS[1], 2) == Path("/r/plain-seed2")


# ------------------------------------------------------------------------------------ curves
def test_step_curve_mean_band_and_missing_values():
    by_seed = {0: _rows([0.0, 0.2, None]), 1: _rows([0.4, 0.6, None]), 2: _rows([0.2])}
    c = step_curve(by_seed, TRAINED_SPATIAL_KEY)
    # step 2 has only nulls (NaN logged as null): left out, not plotted as 0
    assert c.steps == [0, 1]
    assert c.mean == pytest.approx([0.2, 0.4])
    assert c.low == pytest.approx([0.0, 0.2]) and c.high == pytest.approx([0.4, 0.6])
    assert c.n_seeds == 3


def test_curves_per_arm_omit_keys_without_data():
    out = curves({"curriculum": {0: _rows([0.1, 0.3])}, "plain": {0: _rows([0.5, 0.5])}})
    assert set(out) == {"curriculum", "plain"}
    assert set(out["plain"]) == {TRAINED_SPATIAL_KEY, "reward/format"}  # no answer_accuracy logged
    assert out["curriculum"][TRAINED_SPATIAL_KEY].mean == pytest.approx([0.1, 0.3])


def test_plot_written_with_both_arms(tmp_path):
    out = curves({"curriculum": {0: _rows([0.1, 0.3]), 1: _rows([0.2, 0.1])}, "plain": {0: _rows([0.5, 0.4])}})
    path = plot_spatial_reward(out, tmp_path / "p" / "spatial_reward.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ table
def test_aggregate_mean_and_sample_std():
    stats = aggregate([{"m": 0.1, "x": float("nan")}, {"m": 0.3}, {"m": 0.5, "only": 2.0}])
    assert stats["m"].mean == pytest.approx(0.3)
    assert stats["m"].std == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert stats["m"].n == 3
    assert stats["only"] == Stat(mean=2.0, std=0.0, n=1)
    assert "x" not in stats  # no finite value


def test_table_columns_rows_and_difference():
    arms = {
        "curriculum": aggregate([{"vstar/mam": 0.1, "vstar/m_viou": 0.2}, {"vstar/mam": 0.3, "vstar/m_viou": 0.2}]),
        "plain": aggregate([{"vstar/mam": 0.05, "vstar/m_viou": 0.4}, {"vstar/mam": 0.15, "vstar/m_viou": 0.4}]),
    }
    table = build_table(arms, start={"vstar/mam": 0.12, "vstar/m_viou": 0.0}, labels={"plain": "(b) plain"})
    lines = table.strip().splitlines()
    assert lines[0] == "| held-out metric | SFT start | curriculum | (b) plain | plain − curriculum |"
    viou = next(line for line in lines if line.startswith("| V-STAR m_vIoU"))
    mam = next(line for line in lines if line.startswith("| V-STAR mAM"))
    assert viou.endswith("| 0.000 | 0.200 ± 0.000 | 0.400 ± 0.000 | +0.200 |")
    assert mam.endswith(f"| 0.120 | 0.200 ± {math.sqrt(0.02):.3f} | 0.100 ± {math.sqrt(0.005):.3f} | -0.100 |")
    assert len(lines) == 4  # header, rule, the two metrics present; rows without data are left out


def test_table_single_seed_has_no_std_and_missing_cells_dash():
    table = build_table({"curriculum": aggregate([{"vstar/acc": 0.5}]), "plain": aggregate([{}])})
    row = next(line for line in table.splitlines() if "Acc" in line)
    assert row == "| V-STAR Acc | 0.500 | – | – |"


# ------------------------------------------------------------------------------------ held-out
def _prediction(claim_time: float, name: str = "red car") -> dict:
    """A spatio-temporal held-out prediction: one key frame at 2.0 s with the red car at the left
    quarter of a 100 x 100 frame; the completion draws exactly that box at `claim_time`, calling it `name`."""
    completion = (f"<think><obj>{name}</obj><box>[0,0,25,100]</box>at<t>{claim_time}</t>s</think>"
                  "<answer>red car</answer>")
    record = {"id": "s1", "task": "spatio_temporal", "question": "q", "answer": "red car",
              "key_frames": [{"idx": 0, "time": 2.0}], "key_items": {"0": {"red car": [[0.0, 0.0, 0.25, 1.0]]}}}
    return {"id": "s1", "task": "spatio_temporal", "completion": completion, "frame_size": [100, 100],
            "record": record}


def test_rescore_spatial_gated_vs_plain():
    reward = RewardConfig(gate_delta_s=1.0)
    one = pytest.approx(1.0)
    # inside the 1 s gate: every definition sees the perfect box
    assert rescore_spatial(_prediction(2.5), reward) == {"gated": one, "plain": one, "gated_any_name": one,
                                                          "plain_any_name": one}
    # 1.5 s away: the gate is closed (0); plain still scores the IoU at the nearest key frame
    assert rescore_spatial(_prediction(3.5), reward) == {"gated": 0.0, "plain": one, "gated_any_name": 0.0,
                                                          "plain_any_name": one}
    # the right box called by the wrong name: 0 with name matching (the arms' reward), 1 ignoring names
    assert rescore_spatial(_prediction(2.5, "blue square"), reward) == {
        "gated": 0.0, "plain": 0.0, "gated_any_name": one, "plain_any_name": one}
    other = dict(_prediction(2.0), task="temporal")
    assert rescore_spatial(other, reward) is None


def test_eval_summary_reads_vstar_chains_and_rescores():
    report = {"overall": {"acc": 0.5, "mam": 0.25, "mlgm": 0.3,
                          "chains": [{"viou": 0.2, "tiou": 0.1, "am": 0.2}, {"viou": 0.4, "tiou": 0.3, "am": 0.3}]}}
    preds = [_prediction(2.5), _prediction(3.5), dict(_prediction(2.0), task="general")]
    s = eval_summary({"eval/reward_total": 1.5}, report, preds, RewardConfig())
    assert s["eval/reward_total"] == 1.5
    assert s["vstar/m_viou"] == pytest.approx(0.3) and s["vstar/m_tiou"] == pytest.approx(0.2)
    assert s["vstar/chain2/viou"] == 0.4 and s["vstar/mam"] == 0.25 and s["vstar/acc"] == 0.5
    assert s["spatial/gated"] == pytest.approx(0.5) and s["spatial/plain"] == pytest.approx(1.0)
    assert s["spatial/plain_any_name"] == pytest.approx(1.0) and s["spatial/n_samples"] == 2.0
    no_vstar = eval_summary({}, None, [], RewardConfig())
    assert "vstar/mam" not in no_vstar and "spatial/gated" not in no_vstar


# ------------------------------------------------------------------------------------ CLI
def _stgrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400"}  # rich must not wrap the error message across lines
    return subprocess.run([sys.executable, "-m", "stgrl", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_help_explains_the_arms():
    r = _stgrl("ablate", "--help", cwd=REPO)
    assert r.returncode == 0
    for needle in ("--sft-checkpoint", "--seeds", "--steps", "plain", "curriculum", "ablation.json",
                   "spatial_reward.png"):
        assert needle in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--config", "no-such.yaml"], "config file not found"),
    (["--config", str(REPO / "configs" / "demo.yaml"), "reward.spatial_mode=fuzzy"], "reward.spatial_mode"),
    (["--config", str(REPO / "configs" / "demo.yaml"), "--steps", "0"], "run.total_steps"),
    (["--config", str(REPO / "configs" / "demo.yaml"), "--seeds", "1", "1"], "duplicates"),
    (["--config", str(REPO / "configs" / "demo.yaml"), "--sft-checkpoint", "no-such-dir"], "no-such-dir"),
])
def test_bad_input_fails_before_any_work(tmp_path, args, message):
    r = _stgrl("ablate", *args, "--run-dir", str(tmp_path / "abl"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "config error" in r.stderr and message in r.stderr
    assert not (tmp_path / "abl").exists()  # nothing started: no run directory
    assert not (tmp_path / "data").exists()  # and no synthetic data generated


def _fake_ablation(root: Path) -> None:
    """An ablation directory as `stgrl ablate` leaves it, with hand-made metrics and evaluations."""
    import json

    from stgrl.orchestration.config import config_to_yaml

    cfg = load_config(REPO / "configs" / "demo.yaml", ["run.total_steps=2"])
    evals = {"start": 0.5, "curriculum-seed0": 0.25, "plain-seed0": 0.75}
    for name, mam in evals.items():
        out = root / "eval" / name
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"eval/samples": 2.0, "vstar/mam": mam}))
        (out / "vstar.json").write_text(json.dumps({"overall": {"mam": mam, "acc": 0.5, "chains": [
            {"viou": mam, "tiou": 0.0, "am": mam}]}}))
        (out / "predictions.jsonl").write_text(json.dumps(_prediction(2.5 if name == "plain-seed0" else 3.5)) + "\n")
    for arm, values in (("curriculum", [0.0, 0.1]), ("plain", [0.2, 0.4])):
        rd = root / f"{arm}-seed0"
        rd.mkdir()
        (rd / "config_rl.yaml").write_text(config_to_yaml(cfg))
        (rd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(values)))


def test_report_only_rebuilds_outputs_from_a_run_directory(tmp_path):
    import json

    _fake_ablation(tmp_path / "abl")
    r = _stgrl("ablate", "--report-only", "--run-dir", str(tmp_path / "abl"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert result["seeds"] == [0] and result["steps"] == 2
    assert result["arms"]["plain"]["stats"]["vstar/mam"]["mean"] == 0.75
    assert result["arms"]["curriculum"]["runs"]["0"]["eval"]["spatial/gated"] == 0.0  # claim outside the gate
    assert result["arms"]["plain"]["runs"]["0"]["eval"]["spatial/gated"] == pytest.approx(1.0)
    assert result["curves"]["plain"][TRAINED_SPATIAL_KEY]["mean"] == pytest.approx([0.2, 0.4])
    md = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| V-STAR mAM | 0.500 | 0.250 | 0.750 | +0.500 |" in md and "(spatial_reward.png)" in md
    assert (tmp_path / "abl" / "spatial_reward.png").read_bytes()[:4] == b"\x89PNG"


def test_report_only_without_runs_fails_clearly(tmp_path):
    r = _stgrl("ablate", "--report-only", "--run-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "run `stgrl ablate` first" in r.stderr
